"""Built-in methods and comparisons: what each method changes in the shared recipe, and why.

Every run of a comparison is the comparison's **shared recipe** (backend and learning rate, GRPO advantages,
``ppo_clip`` with its clip and no entropy bonus, the same budget, rewards, sampling and data) with the tables a
method defines merged in (:attr:`Method.tables`). :func:`differences` lists, per method, every recipe value
that differs from the comparison's baseline, next to the reason the method gives for it (:attr:`Method.reasons`);
a value that differs without a reason is printed as such, so an unfair budget cannot hide.

Rollouts, trained tokens and wall time are not equal by design (an SFT step samples nothing, a logit average
scores two models); the runner records them per run and the table prints them beside the scores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs

from lmix_core.recipe import merged

Tables = Mapping[str, Any]
#: What a method is evaluated as: ``default`` (the recipe's own deployment) or the named distribution.
Deployment = Literal["default", "combined", "policy"]

FORMAT_PATTERN = r"(?s).*\\boxed\{-?[0-9]+\}\s*"
"""The SFT format: the completion ends with ``\\boxed{N}`` (the corpus's ``Answer: N`` does not match)."""


def _no_schedule(steps: int) -> Tables:
    return {}


@attrs.frozen(kw_only=True)
class Method:
    """One compared method.

    Attributes:
        name: its folder name.
        label: what the table shows.
        tables: recipe tables merged over the shared recipe (``{"mixer": {"type": "sft"}}``).
        reasons: why a value differs from the comparison's baseline, by dotted key (``"loss.kl_coef"``).
        schedule: more tables computed from the run's step count (a switch step, a schedule length).
        deployments: evaluated deployments (``default``: the recipe's own; ``policy``: the trained policy alone).
    """

    name: str
    label: str
    tables: Tables = attrs.field(factory=dict)
    reasons: Mapping[str, str] = attrs.field(factory=dict)
    schedule: Callable[[int], Tables] = _no_schedule
    deployments: tuple[Deployment, ...] = ("default",)


def _switch_at(eighths: int) -> Callable[[int], Tables]:
    """The schedule of an SFT→RL run that switches after ``eighths``/8 of its steps."""

    def schedule(steps: int) -> Tables:
        return {"mixer": {"sft_steps": max(1, steps * eighths // 8)}}

    return schedule


_SFT = "imitates the demonstrations: the method itself"
_PREFIX = "the method: demonstration prefixes inside the group"

METHODS: Mapping[str, Method] = {
    m.name: m
    for m in (
        Method(name="grpo", label="GRPO"),
        Method(
            name="kl_grpo",
            label="KL-GRPO (k3, β = 0.04)",
            tables={"loss": {"kl_coef": 0.04, "kl_estimator": "k3"}},
            reasons={
                "loss.kl_coef": "the method: a KL anchor to the start model",
                "loss.kl_estimator": "idem",
            },
        ),
        Method(
            name="logit_average",
            label="GRPO + logit average",
            tables={"combiner": {"type": "logit_average", "alpha": 0.5, "deploy": "combined"}},
            reasons={
                "combiner.*": "the method: sample and train the average of policy and start-model logits"
            },
            deployments=("default", "policy"),
        ),
        Method(name="sft", label="SFT", tables={"mixer": {"type": "sft"}}, reasons={"mixer.type": _SFT}),
        Method(
            name="sft_then_rl",
            label="SFT→RL (switch at 1/2)",
            tables={"mixer": {"type": "sequential"}},
            reasons={"mixer.*": "the method: SFT steps, then GRPO"},
            schedule=lambda steps: {"mixer": {"sft_steps": steps // 2}},
        ),
        Method(
            name="parallel_average",
            label="parallel average (SFT and RL updates)",
            tables={"mixer": {"type": "parallel_average", "rl_weight": 0.5}},
            reasons={"mixer.*": "the method: average of separate SFT and RL updates"},
        ),
        *(
            Method(
                name=f"switch_{n}of8",
                label=f"SFT→RL (switch at {n}/8)",
                tables={"mixer": {"type": "sequential"}},
                reasons={"mixer.*": "a static schedule: SFT steps, then GRPO"},
                schedule=_switch_at(n),
            )
            for n in (1, 2, 4)
        ),
        *(
            Method(
                name=f"constant_{tag}",
                label=f"static mix (μ = {mu})",
                tables={"mixer": {"type": "constant", "mu": mu}},
                reasons={"mixer.*": "a static schedule: a constant share of SFT in every step"},
            )
            for tag, mu in (("0p1", 0.1), ("0p5", 0.5))
        ),
        Method(
            name="sasr",
            label="SASR",
            tables={"mixer": {"type": "sasr", "gamma": 1.0, "p_form": "ratio", "divergence_coef": 0.1}},
            reasons={"mixer.*": "the method: SFT warm-up, then SFT or GRPO by gradient norm and divergence"},
            schedule=lambda steps: {"mixer": {"warmup_steps": max(1, steps // 4)}},
        ),
        Method(
            name="luffy",
            label="LUFFY (1 demonstration per group)",
            tables={
                "combiner": {
                    "type": "prefix",
                    "ratio_start": 1.0,
                    "ratio_end": 1.0,
                    "schedule": "constant",
                    "num_prefixed": 1,
                    "length": "fixed",
                    "prefix_loss": "luffy",
                    "luffy_gamma": 0.1,
                    "entropy_top_fraction": 1.0,
                },
                "loss": {"type": "pg", "form": "ratio"},
            },
            reasons={
                "combiner.*": _PREFIX + " (whole demonstration, policy shaping)",
                "loss.type": "the method: LUFFY has no clip on the off-policy rollout",
                "loss.form": "idem",
                "loss.clip_eps": "idem (pg has no clip)",
            },
        ),
        Method(
            name="prefix_rft",
            label="Prefix-RFT",
            tables={
                "combiner": {
                    "type": "prefix",
                    "ratio_start": 0.95,
                    "ratio_end": 0.05,
                    "schedule": "cosine",
                    "num_prefixed": 1,
                    "length": "fixed",
                    "prefix_loss": "ratio",
                    "entropy_top_fraction": 0.2,
                    "entropy_scope": "batch",
                }
            },
            reasons={"combiner.*": _PREFIX + " (a decaying prefix of the demonstration)"},
            schedule=lambda steps: {"combiner": {"schedule_steps": steps}},
        ),
    )
}
"""Every built-in method by name."""


@attrs.frozen(kw_only=True)
class Comparison:
    """One comparison: a claim, the regime built to decide it, a baseline and the methods beside it.

    Attributes:
        name: its folder name (also its regime's, unless two comparisons share a regime).
        title: the heading of its section in the report.
        paper: the paper whose claim it tests, with its arXiv id.
        claim: the claim, in one sentence.
        regime: the testbed regime (:data:`lmix_core.testbed.regimes.REGIMES`).
        baseline: the method every paired difference is taken against.
        methods: the methods, baseline included.
        shared: tables that every method of this comparison shares beyond the default recipe (an estimator,
            several PPO epochs).
        gate_methods: the methods the regime's gate reads; they run first.
        metric: the headline metric: ``task`` (held-out pass@1), ``strict`` (correct and in the SFT format) or
            ``probe`` (exact match); the ``static_spread`` gate reads it.
    """

    name: str
    title: str
    paper: str
    claim: str
    regime: str
    baseline: str
    methods: tuple[str, ...]
    shared: Tables = attrs.field(factory=dict)
    gate_methods: tuple[str, ...] = ()
    metric: str = "task"

    def to_run(self, gate_passed: bool) -> tuple[str, ...]:
        """The methods that run: every one once the gate has passed, else the gate's own (which run first)."""
        return self.methods if gate_passed else tuple(m for m in self.methods if m in self.gate_methods)


COMPARISONS: Mapping[str, Comparison] = {
    c.name: c
    for c in (
        *(
            Comparison(
                name=regime,
                title=f"Logit averaging vs KL-GRPO and GRPO, from the SFT model{sft}",
                paper="Logit averaging inside GRPO (arXiv 2605.20555)",
                claim="GRPO on the logit average of the policy and the SFT model reaches comparable or higher "
                "accuracy than KL-GRPO and keeps SFT's answer format.",
                regime=regime,
                baseline="grpo",
                methods=("grpo", "kl_grpo", "logit_average"),
                shared={"train": {"ppo_epochs": 2, "minibatches": 2}},
                gate_methods=("grpo",),
            )
            for regime, sft in (("format", ""), ("format_worked", " trained on worked demonstrations"))
        ),
        *(
            Comparison(
                name=f"narrow_{when}",
                title=f"RL, SFT, SFT→RL and parallel averaging from the {when} checkpoint",
                paper="RL Excursions during Pre-Training (arXiv 2606.04272)",
                claim="Parallel averaging of SFT and RL updates keeps general capability (the probe) at the RL "
                "level while SFT-based recipes lose it, with the best pass@k.",
                regime=f"narrow_{when}",
                baseline="grpo",
                methods=("grpo", "sft", "sft_then_rl", "parallel_average"),
                shared={"backend": {"lr": 3e-4}},
                gate_methods=("sft",),
                metric="probe",
            )
            for when in ("early", "final")
        ),
        Comparison(
            name="switch",
            title="SASR vs static SFT/RL schedules",
            paper="SASR, step-wise adaptive SFT/GRPO (arXiv 2505.13026)",
            claim="Adaptive step-wise switching between SFT and GRPO beats SFT only, RL only and static "
            "schedules.",
            regime="switch",
            baseline="switch_2of8",
            methods=(
                "switch_1of8",
                "switch_2of8",
                "switch_4of8",
                "constant_0p1",
                "constant_0p5",
                "sft",
                "grpo",
                "sasr",
            ),
            shared={
                "rewards": [
                    {"type": "math", "weight": 1.0},
                    {"type": "format", "weight": 0.5, "pattern": FORMAT_PATTERN},
                ]
            },
            gate_methods=("switch_1of8", "switch_2of8", "switch_4of8", "constant_0p1", "constant_0p5"),
            metric="strict",
        ),
        Comparison(
            name="hard",
            title="Prefix-RFT and LUFFY vs SFT and GRPO on problems the start model cannot solve",
            paper="Prefix-RFT (arXiv 2507.01679) and LUFFY (arXiv 2504.14945)",
            claim="Guidance from demonstrations (Prefix-RFT, LUFFY) beats SFT alone and GRPO alone where "
            "on-policy sampling finds no reward.",
            regime="hard",
            baseline="grpo",
            methods=("grpo", "sft", "luffy", "prefix_rft"),
            shared={"advantage": {"type": "dr_grpo"}, "loss": {"agg": "token-sum-norm"}},
        ),
    )
}
"""Every built-in comparison by name."""


def _flat(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat(value, path + "."))
        elif isinstance(value, list) and value and all(isinstance(x, Mapping) for x in value):
            for i, item in enumerate(value):
                out.update(_flat(item, f"{path}[{i}]."))
        else:
            out[path] = value
    return out


_NOT_METHOD = ("backend.model", "data.", "train.seed", "mixer.seed", "logging.", "description")


def differences(
    recipes: Mapping[str, Mapping[str, Any]], baseline: str, reasons: Mapping[str, Mapping[str, str]]
) -> list[dict[str, str]]:
    """Every recipe value that differs from the baseline's, with the method's reason (or ``no reason given``).

    Args:
        recipes: each method's full recipe mapping, by method name.
        baseline: the baseline's name (a key of ``recipes``).
        reasons: each method's :attr:`Method.reasons` (a key ``table.*`` covers the whole table).

    Returns:
        Rows ``{"method", "key", "baseline", "value", "reason"}``.
    """
    base = _flat(recipes[baseline])
    rows: list[dict[str, str]] = []
    for name, recipe in recipes.items():
        if name == baseline:
            continue
        mine = _flat(recipe)
        why = reasons.get(name, {})
        for key in sorted(set(base) | set(mine)):
            if key.startswith(_NOT_METHOD) or base.get(key) == mine.get(key):
                continue
            table = key.split(".")[0]
            reason = why.get(key) or why.get(f"{table}.*") or "no reason given"
            rows.append(
                {
                    "method": name,
                    "key": key,
                    "baseline": "-" if key not in base else repr(base[key]),
                    "value": "-" if key not in mine else repr(mine[key]),
                    "reason": reason,
                }
            )
    return rows


__all__ = ["COMPARISONS", "METHODS", "Comparison", "Method", "differences", "merged"]

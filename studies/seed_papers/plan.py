"""The study matrix: which runs exist, what each starts from, and which rows each comparison's table shows.

A :class:`Run` is one ``lmix run`` of a recipe in ``studies/seed_papers/recipes/`` from a starting model:

* ``ck1``, ``ck2``, ``ck3``: the pretrained checkpoints (``ck3`` is the final pretrained model);
* ``sft``: the SFT model of the same seed (the ``sft@ck3`` run's ``model/``), comparison 1's starting point.

Runs are shared between comparisons where the seeds' set-ups coincide: the SFT and GRPO runs from ``ck3`` are
comparison 2's last checkpoint, comparison 3's "SFT only" and "RL only" and comparison 4's SFT and RL baselines;
``sft@ck3`` is also comparison 1's starting model. Every run from a pretrained checkpoint has the ``post`` budget and
every run from the SFT model the ``from_sft`` budget (:mod:`studies.seed_papers.sizes`), whatever its method.

A :class:`Row` of a comparison's table reads one run's result under one deployment (``combined``, the run's own
default, or ``policy``, the trained policy alone), or the evaluation of a starting model (``base@ck2``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import attrs

from studies.seed_papers.sizes import PostSizes

Start = Literal["ck1", "ck2", "ck3", "sft"]
CHECKPOINTS: tuple[Start, ...] = ("ck1", "ck2", "ck3")


@attrs.frozen(kw_only=True)
class Run:
    """One training run of the study.

    Attributes:
        recipe: file stem in ``studies/seed_papers/recipes/``.
        start: the starting model (``ck1``/``ck2``/``ck3`` or ``sft``).
        deployments: evaluated deployments; ``default`` is the recipe's own (``combined`` for logit averaging),
            ``policy`` the trained policy alone.
    """

    recipe: str
    start: Start
    deployments: tuple[str, ...] = ("default",)

    @property
    def name(self) -> str:
        """The run's directory name under ``seed<S>/``: ``<recipe>@<start>``."""
        return f"{self.recipe}@{self.start}"

    @property
    def budget(self) -> Literal["post", "from_sft"]:
        return "from_sft" if self.start == "sft" else "post"


@attrs.frozen(kw_only=True)
class Row:
    """One table row: a run (``source = "run"``) or a starting model (``source = "base"``) under one deployment.

    Attributes:
        label: what the table shows.
        key: ``<recipe>@<start>`` for a run, ``base@ck<i>`` for a pretrained checkpoint.
        deployment: ``default`` or ``policy``.
        group: the sub-table heading (comparison 2's checkpoint), or ``""``.
    """

    label: str
    key: str
    deployment: str = "default"
    group: str = ""

    @property
    def source(self) -> Literal["run", "base"]:
        return "base" if self.key.startswith("base@") else "run"


@attrs.frozen(kw_only=True)
class Comparison:
    """One comparison of the issue: its seed paper, the claim under test, its runs and its table rows."""

    number: int
    title: str
    paper: str
    claim: str
    rows: tuple[Row, ...]

    def runs(self) -> tuple[Run, ...]:
        """The runs this comparison's rows read (starting runs included: ``sft@ck3`` for comparison 1)."""
        out: list[Run] = []
        for row in self.rows:
            if row.source == "run":
                out.append(RUNS[row.key])
        if any(r.start == "sft" for r in out):
            out.insert(0, RUNS["sft@ck3"])
        return tuple(dict.fromkeys(out))

    def bases(self) -> tuple[str, ...]:
        """The pretrained checkpoints this comparison evaluates as rows (``ck1``, ...)."""
        return tuple(dict.fromkeys(row.key.split("@")[1] for row in self.rows if row.source == "base"))


def _runs() -> dict[str, Run]:
    runs = [
        Run(recipe=m, start=ck)
        for ck in CHECKPOINTS
        for m in ("rl", "sft", "sft_then_rl", "parallel_average")
    ]
    runs += [Run(recipe=m, start="ck3") for m in ("sasr", "constant", "prefix_rft", "luffy", "hpt", "chord")]
    runs.append(Run(recipe="grpo_logit_average", start="sft", deployments=("default", "policy")))
    runs += [Run(recipe=m, start="sft") for m in ("kl_grpo_beta_1e-3", "kl_grpo_beta_4e-2", "rl")]
    return {r.name: r for r in runs}


RUNS: dict[str, Run] = _runs()
"""Every run of the study by name (``<recipe>@<start>``)."""

COMPARISONS: tuple[Comparison, ...] = (
    Comparison(
        number=1,
        title="GRPO with logit averaging vs KL-GRPO and GRPO, from the SFT model",
        paper="logit averaging inside GRPO (Gan & Zhu, arXiv 2605.20555)",
        claim=(
            "GRPO on the logit average of the policy and the frozen SFT model reaches higher, or at least "
            "comparable, accuracy than KL-regularised GRPO, keeping SFT's formatting."
        ),
        rows=(
            Row(label="SFT model (start)", key="sft@ck3"),
            Row(label="GRPO + logit average, mix deployed", key="grpo_logit_average@sft"),
            Row(
                label="GRPO + logit average, policy alone", key="grpo_logit_average@sft", deployment="policy"
            ),
            Row(label="KL-GRPO k3, β = 0.001", key="kl_grpo_beta_1e-3@sft"),
            Row(label="KL-GRPO k3, β = 0.04", key="kl_grpo_beta_4e-2@sft"),
            Row(label="GRPO (no KL)", key="rl@sft"),
        ),
    ),
    Comparison(
        number=2,
        title="RL, SFT, SFT→RL and parallel averaging from 3 pretraining checkpoints",
        paper="RL Excursions during Pre-Training (Bansal et al., arXiv 2606.04272)",
        claim=(
            "Parallel averaging gives the best pass@k at every checkpoint and keeps general capability at the "
            "RL level, with a lower pass@1; SFT-based recipes lose general capability; RL works from early "
            "checkpoints."
        ),
        rows=tuple(
            row
            for ck in CHECKPOINTS
            for row in (
                Row(label="pretrained (no post-training)", key=f"base@{ck}", group=ck),
                Row(label="RL (GRPO)", key=f"rl@{ck}", group=ck),
                Row(label="SFT", key=f"sft@{ck}", group=ck),
                Row(label="SFT→RL (sequential)", key=f"sft_then_rl@{ck}", group=ck),
                Row(label="parallel average", key=f"parallel_average@{ck}", group=ck),
            )
        ),
    ),
    Comparison(
        number=3,
        title="SASR vs SFT only, RL only and a static mix",
        paper="SASR, step-wise adaptive SFT/GRPO (Chen et al., arXiv 2505.13026)",
        claim="Adaptive step-wise switching between SFT and GRPO beats SFT only, RL only and a static mix.",
        rows=(
            Row(label="pretrained (start)", key="base@ck3"),
            Row(label="SFT only", key="sft@ck3"),
            Row(label="RL only (GRPO)", key="rl@ck3"),
            Row(label="static mix (constant μ = 0.1)", key="constant@ck3"),
            Row(label="SASR", key="sasr@ck3"),
        ),
    ),
    Comparison(
        number=4,
        title="Prefix-RFT vs SFT, RL, LUFFY, HPT and CHORD",
        paper="Prefix-RFT (Huang et al., arXiv 2507.01679)",
        claim="Prefix-RFT outperforms standalone SFT and RFT and parallel mixed-policy RFT (LUFFY).",
        rows=(
            Row(label="pretrained (start)", key="base@ck3"),
            Row(label="SFT", key="sft@ck3"),
            Row(label="RL (GRPO)", key="rl@ck3"),
            Row(label="LUFFY (prefix ratio 1, 1 demo/group)", key="luffy@ck3"),
            Row(label="Prefix-RFT", key="prefix_rft@ck3"),
            Row(label="HPT", key="hpt@ck3"),
            Row(label="CHORD-μ", key="chord@ck3"),
        ),
    ),
)


def select(only: Iterable[int] | None) -> tuple[Comparison, ...]:
    """The comparisons numbered in ``only`` (all when None), in order; unknown numbers raise ValueError."""
    if only is None:
        return COMPARISONS
    wanted = set(only)
    known = {c.number for c in COMPARISONS}
    if not wanted or wanted - known:
        raise ValueError(f"'--only' must name comparisons among {sorted(known)} (got {sorted(wanted)})")
    return tuple(c for c in COMPARISONS if c.number in wanted)


def runs_for(comparisons: Sequence[Comparison]) -> tuple[Run, ...]:
    """The runs the comparisons need, each once, in an order that trains ``sft@ck3`` before runs from ``sft``."""
    runs = list(dict.fromkeys(r for c in comparisons for r in c.runs()))
    return tuple(sorted(runs, key=lambda r: (r.start == "sft", r.start, runs.index(r))))


def bases_for(comparisons: Sequence[Comparison]) -> tuple[str, ...]:
    """The pretrained checkpoints evaluated as rows by the comparisons."""
    return tuple(sorted({ck for c in comparisons for ck in c.bases()}))


def checkpoints_for(comparisons: Sequence[Comparison]) -> tuple[str, ...]:
    """The pretrained checkpoints the comparisons train from or evaluate (``sft`` runs need ``ck3``)."""
    starts = {("ck3" if r.start == "sft" else r.start) for r in runs_for(comparisons)}
    return tuple(sorted(starts | set(bases_for(comparisons))))


def schedule_overrides(recipe: str, budget: PostSizes) -> tuple[str, ...]:
    """Recipe fields that are fractions of the run's length, set from its ``steps``.

    The seeds' schedules are given in steps of much longer runs; the study keeps their shape by scaling them to
    the run: SFT→RL switches at half the run, SASR warms up for a quarter, Prefix-RFT's prefix fraction and
    CHORD's μ decay over the whole run.
    """
    steps = budget.steps
    return {
        "sft_then_rl": (f"mixer.sft_steps={steps // 2}",),
        "sasr": (f"mixer.warmup_steps={max(1, steps // 4)}",),
        "prefix_rft": (f"combiner.schedule_steps={steps}",),
        "chord": (f"mixer.decay_steps={steps}",),
    }.get(recipe, ())


__all__ = [
    "CHECKPOINTS",
    "COMPARISONS",
    "RUNS",
    "Comparison",
    "Row",
    "Run",
    "bases_for",
    "checkpoints_for",
    "runs_for",
    "schedule_overrides",
    "select",
]

"""The training loop: one explicit SFT/RL step, backend-agnostic, reaching components only through interfaces.

Each step:
    1. this step's questions (and demonstrations) from the data, in a seeded order;
    2. the mixer's plan (does this step sample rollouts?);
    3. the combiner's rollout plan (forced demonstration prefixes) and sampling;
    4. reward verifiers, in worker processes with time limits;
    5. the advantage estimator;
    6. the mixer's decision (coefficients, per-question gates, demonstrations to train on);
    7. the loss, as precomputed token weights and a per-micro-batch objective;
    8. the backend step (one per minibatch and PPO epoch), then the mixer's feedback.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from lmix_core.errors import BackendError, CheckpointError, LmixError, NonFiniteError, RunInterrupted
from lmix_core.interfaces.backend import TrainerBackend
from lmix_core.ops.aggregation import StepCounts
from lmix_core.ops.kl_reward import kl_penalised_rewards
from lmix_core.train import checkpoint
from lmix_core.train.batching import SFTRows, demonstration_batch, global_counts, local_counts, trim
from lmix_core.train.components import Components
from lmix_core.train.logging import FlatRewards, MetricsLog, Tracker, roll_back
from lmix_core.train.objective import StepObjective
from lmix_core.train.stop import StopSignals, agreed
from lmix_core.types import (
    AdvantageInputs,
    Generation,
    GenerationRequest,
    MicroBatch,
    MixDecision,
    MixerInputs,
    StepFeedback,
    TokenBatch,
)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


class Trainer:
    """Runs a recipe's components for ``train.steps`` steps, writing the run directory.

    Args:
        parts: the built components, data and settings (see :class:`Components`).
        run_dir: where metrics, checkpoints, evaluations and the final model go.
    """

    def __init__(self, parts: Components, run_dir: Path) -> None:
        self.parts = parts
        self.run_dir = run_dir
        self.backend: TrainerBackend = parts.backend
        self.tokenizer = self.backend.tokenizer
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.eos = self.tokenizer.eos_token or ""
        self._prompt_ids: dict[int, tuple[int, ...]] = {}
        self._demo_ids: dict[int, tuple[int, ...]] = {}
        self.nonfinite = 0
        self.start_step = 0
        self.flat_rewards = FlatRewards()

    # -- data ------------------------------------------------------------------------------------------------
    def question_ids(self, step: int) -> tuple[int, ...]:
        """Dataset indices of this rank's questions at ``step``: a seeded permutation per epoch, no state."""
        n = len(self.parts.train_examples)
        Q = self.parts.train.prompts_per_step
        W, r = self.backend.world_size, self.backend.rank
        start = (step * W + r) * Q
        out = []
        for pos in range(start, start + Q):
            epoch, i = divmod(pos, n)
            order = self._order(epoch)
            out.append(int(order[i]))
        return tuple(out)

    def _order(self, epoch: int) -> torch.Tensor:
        cache = getattr(self, "_order_cache", None)
        if cache is None or cache[0] != epoch:
            g = torch.Generator().manual_seed(derive_seed(self.parts.train.seed, 17, epoch))
            self._order_cache = (epoch, torch.randperm(len(self.parts.train_examples), generator=g))
        return self._order_cache[1]

    def prompt_ids(self, index: int, *, split: str = "train") -> tuple[int, ...]:
        key = index if split == "train" else -1 - index
        if key not in self._prompt_ids:
            ex = self.parts.examples(split)[index]
            text = self.parts.render_prompt(self.tokenizer, ex)
            self._prompt_ids[key] = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self._prompt_ids[key]

    def demo_ids(self, index: int) -> tuple[int, ...]:
        if index not in self._demo_ids:
            demo = self.parts.train_examples[index].demonstration or ""
            ids = self.tokenizer(demo, add_special_tokens=False)["input_ids"] if demo else []
            eos = self.tokenizer.eos_token_id
            self._demo_ids[index] = tuple(ids) + ((eos,) if ids and eos is not None else ())
        return self._demo_ids[index]

    # -- one step --------------------------------------------------------------------------------------------
    def step(self, step: int) -> dict[str, Any]:
        p = self.parts
        t0 = time.perf_counter()
        qids = self.question_ids(step)
        Q, G = len(qids), p.train.group_size
        plan = p.mixer.plan(step)
        record: dict[str, Any] = {"step": step}
        rl: dict[str, Any] | None = None
        if plan.rollouts:
            rl = self._rollouts(step, qids)
            record.update(rl["metrics"])
            self.flat_rewards.observe(step, rl["rewards"], main=self.backend.is_main)
        decision = p.mixer.mix(
            MixerInputs(
                step=step,
                question_ids=qids,
                rewards=None if rl is None else rl["rewards"].view(Q, G),
                correct=None if rl is None else rl["correct"].view(Q, G),
            )
        )
        reports = self._optimise(step, qids, rl, decision)
        grad_norms = [g for rep in reports for g in rep.grad_norms]
        skipped = any(rep.skipped for rep in reports)
        record["loss"] = sum(rep.loss for rep in reports) / max(len(reports), 1)
        record["grad_norm"] = max(grad_norms) if grad_norms else 0.0
        for k in sorted({k for rep in reports for k in rep.metrics}):
            vals = [rep.metrics[k] for rep in reports if k in rep.metrics]
            record[k] = sum(vals) / len(vals)
        record["decision"] = decision.label
        record["skipped"] = skipped
        p.mixer.observe(self._feedback(step, decision, reports, record))
        numbers = {k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        means = self.backend.all_mean(numbers)
        # every number a float, in one key order, whatever the number of processes (a lone process's means are
        # its own ints): metrics.jsonl has the same keys and types under any world size
        record = {k: float(means[k]) if k in means else v for k, v in record.items()}
        record["step"] = step
        record["step_time_s"] = time.perf_counter() - t0
        self._check_finite(step, skipped)
        return record

    def _rollouts(self, step: int, qids: Sequence[int]) -> dict[str, Any]:
        p = self.parts
        G = p.train.group_size
        max_new = p.sampling.max_new_tokens
        demo_len = torch.tensor([min(len(self.demo_ids(q)), max_new) for q in qids], dtype=torch.long)  # [Q]
        gen_plan = torch.Generator().manual_seed(derive_seed(p.train.seed, 23, step, self.backend.rank))
        prefix_len = p.combiner.plan_rollouts(
            step=step, demo_lengths=demo_len, group_size=G, generator=gen_plan
        )
        prompts, forced = [], []
        for qi, q in enumerate(qids):
            for g in range(G):
                prompts.append(self.prompt_ids(q))
                forced.append(self.demo_ids(q)[: int(prefix_len[qi, g])])
        request = GenerationRequest(
            prompt_ids=tuple(prompts),
            forced=tuple(forced),
            max_new_tokens=p.sampling.max_new_tokens,
            temperature=p.sampling.temperature,
            top_p=p.sampling.top_p,
            stop=p.sampling.stop,
            seed=derive_seed(p.train.seed, 29, step, self.backend.rank),
            distribution="combined",
            step=step,
        )
        gen: Generation = self.backend.generate(request)
        examples = [p.train_examples[q] for q in qids for _ in range(G)]
        lengths = gen.tokens.loss_mask.sum(-1)  # [N]
        scored = p.rewards.score(
            examples,
            [self.parts.render_prompt(self.tokenizer, e) for e in examples],
            gen.completions,
            lengths.tolist(),
        )
        group_ids = torch.arange(len(qids)).repeat_interleave(G)  # [N]
        mask = gen.tokens.loss_mask  # [N, S]
        reuse = p.train.ppo_epochs * p.train.minibatches > 1
        needs_entropy = p.combiner.needs_entropy
        with_ref = self.backend.context.num_references > 0
        sampled_kl = with_ref and gen.logp is not None and gen.ref_logp is not None
        stats = None
        if reuse or needs_entropy or (with_ref and not sampled_kl):
            stats = self.backend.score(
                gen.tokens,
                temperature=p.sampling.temperature,
                entropy=needs_entropy,
                ref_logp=with_ref,
                step=step,
            )
        masks = p.combiner.loss_masks(
            mask=mask,
            prefix_mask=gen.prefix_mask,
            entropy=None if stats is None else stats.entropy,
            step=step,
        )
        metrics = {
            "reward_mean": float(torch.nan_to_num(scored.rewards).mean()),
            "accuracy": float(scored.correct.float().mean()) if scored.has_correctness else float("nan"),
            "tokens": int(mask.sum()),
            "response_len": float(lengths.float().mean()),
            "truncated_frac": float(gen.truncated.float().mean()),
            "prefix_tokens": int(gen.prefix_mask.sum()),
        }
        if scored.format_rate is not None:
            metrics["format_rate"] = scored.format_rate
        rewards = scored.rewards  # [N]
        if p.train.kl_in_reward_coef > 0 and not with_ref:
            raise LmixError("train.kl_in_reward_coef > 0 needs a reference, but the backend loaded none")
        if with_ref:
            # KL of the sampled distribution to the reference, from the scoring pass or from the sampler's log-probs
            logp, ref_logp = (stats.logp, stats.ref_logp) if stats is not None else (gen.logp, gen.ref_logp)
            if logp is None or ref_logp is None:
                raise BackendError(
                    f"{type(self.backend).__name__}.score returned no ref_logp although the loop asked for it "
                    "(ref_logp=True with a reference loaded)"
                )
            m = mask.float()  # [N, S]
            metrics["kl_ref"] = float(((logp - ref_logp) * m).sum() / m.sum().clamp_min(1))
            if p.train.kl_in_reward_coef > 0:  # verl's use_kl_in_reward: r − β·Σ_t KL_t(π_old ‖ π_ref)
                rewards = kl_penalised_rewards(
                    scored.rewards,
                    logp,
                    ref_logp,
                    mask,
                    coef=p.train.kl_in_reward_coef,
                    estimator=p.train.kl_in_reward_estimator,
                )  # [N]
                metrics["reward_kl_penalty"] = float(torch.nan_to_num(scored.rewards - rewards).mean())
        # batch-level statistics (a batch std, a whitening) span every rank's groups, as in one process
        adv = p.advantage(
            AdvantageInputs(rewards=rewards, group_ids=group_ids, mask=mask, all_sum=self.backend.all_sum)
        )  # [N, S]
        return {
            "gen": gen,
            "rewards": scored.rewards,
            "correct": scored.correct,
            "advantages": adv,
            "old_logp": None if (stats is None or not reuse) else stats.logp,
            "masks": masks,
            "metrics": metrics,
        }

    def _optimise(
        self, step: int, qids: Sequence[int], rl: dict[str, Any] | None, decision: MixDecision
    ) -> list:
        p = self.parts
        G = p.train.group_size
        Q = len(qids)
        nmb = p.train.minibatches
        objective = StepObjective(
            loss=p.loss,
            mixer=p.mixer,
            temperature=p.sampling.temperature,
            offpolicy_gamma=None if rl is None else rl["masks"].offpolicy_gamma,
        )
        sft_items = [(q, w) for q, w in decision.sft if w > 0 and self.demo_ids(q)]
        # each minibatch's rows, then its counts summed over data-parallel ranks (one collective per step), so the
        # weights are those one process would compute for the global minibatch (train.dp_normalization)
        slices = [range(mb * Q // nmb, (mb + 1) * Q // nmb) for mb in range(nmb)]
        rl_rows = [self._rl_rows(rl, decision, q_slice, G) for q_slice in slices]
        sft_rows = [self._sft_rows(sft_items[mb::nmb], decision.sft_coef) for mb in range(nmb)]
        masks = []
        for rl_idx, sft in zip(rl_rows, sft_rows, strict=True):
            masks.append(self._rl_mask(rl, rl_idx))
            masks.append(None if sft is None else sft.tokens.loss_mask)
        total = global_counts(masks, self.backend)
        counts = total if p.train.dp_normalization == "global" else local_counts(masks)
        minibatches: list[list[list[MicroBatch]] | None] = []
        for mb, (rl_idx, sft) in enumerate(zip(rl_rows, sft_rows, strict=True)):
            groups: list[list[MicroBatch]] = [[] for _ in range(self.backend.context.num_optimizer_states)]
            if rl is not None and rl_idx is not None:
                groups[0].append(self._rl_microbatch(rl, decision, rl_idx, counts[2 * mb]))
            if sft is not None:
                groups[-1].append(self._sft_microbatch(sft, decision.sft_coef, counts[2 * mb + 1]))
            # a minibatch is skipped only when it has no rows on any rank: train_step's collectives need every
            # rank, so a rank with none still takes part
            empty = total[2 * mb].all_rows + total[2 * mb + 1].all_rows == 0
            minibatches.append(None if empty else groups)
        reports = []
        opt_step = step * p.train.ppo_epochs * nmb
        for _epoch in range(p.train.ppo_epochs):
            for mb_groups in minibatches:
                if mb_groups is None:
                    continue
                reports.append(self.backend.train_step(mb_groups, objective, step=step, lr_step=opt_step))
                opt_step += 1
        return reports

    def _rl_rows(
        self, rl: dict[str, Any] | None, decision: MixDecision, q_slice: range, G: int
    ) -> Tensor | None:
        """Indices of the minibatch's RL rows (questions with weight 0 dropped), or None when there are none."""
        if rl is None or decision.rl_coef <= 0:
            return None
        weights = decision.rl_weights or (1.0,) * (max(q_slice, default=-1) + 1)
        rows = [q * G + g for q in q_slice for g in range(G) if weights[q] > 0]
        return torch.tensor(rows, dtype=torch.long) if rows else None  # [n]

    def _rl_mask(self, rl: dict[str, Any] | None, idx: Tensor | None) -> Tensor | None:
        """``[n, S]`` bool: the response tokens of rows ``idx`` that the combiner keeps in the loss."""
        if rl is None or idx is None:
            return None
        gen: Generation = rl["gen"]
        return gen.tokens.loss_mask[idx] & (rl["masks"].token_weight[idx] > 0)  # [n, S]

    def _rl_microbatch(
        self, rl: dict[str, Any], decision: MixDecision, idx: Tensor, counts: StepCounts
    ) -> MicroBatch:
        G = self.parts.train.group_size
        weights = decision.rl_weights or (1.0,) * (int(idx.max()) // G + 1)
        gen: Generation = rl["gen"]
        tokens = gen.tokens.select(idx)
        masks = rl["masks"]
        keep = masks.token_weight[idx]  # [n, S]
        effective = gen.tokens.loss_mask[idx] & (keep > 0)  # [n, S] (as _rl_mask)
        row_w = torch.tensor([weights[int(r) // G] for r in idx], dtype=torch.float32)  # [n]
        agg = self.parts.loss.token_weights(
            effective, max_len=self.parts.sampling.max_new_tokens, counts=counts
        )  # [n, S]
        tensors = {
            "advantages": rl["advantages"][idx],  # [n, S]
            "token_weights": decision.rl_coef * row_w[:, None] * keep * agg,  # [n, S]
            "offpolicy": masks.offpolicy[idx],  # [n, S]
        }
        if rl["old_logp"] is not None:
            tensors["old_logp"] = rl["old_logp"][idx]  # [n, S]
        tokens = attrs.evolve(tokens, loss_mask=effective)
        tokens, tensors = trim(tokens, tensors)
        return MicroBatch(tokens=tokens, role="rl", tensors=tensors)

    def _sft_rows(self, items: Sequence[tuple[int, float]], sft_coef: float) -> SFTRows | None:
        """The minibatch's demonstration rows, or None when it trains on none."""
        if sft_coef <= 0 or not items:
            return None
        tokens: TokenBatch = demonstration_batch(
            [self.prompt_ids(q) for q, _ in items], [self.demo_ids(q) for q, _ in items], self.pad_id
        )
        return SFTRows(tokens=tokens, weights=tuple(wi for _, wi in items))

    def _sft_microbatch(self, rows: SFTRows, sft_coef: float, counts: StepCounts) -> MicroBatch:
        """Weighted token-mean NLL, ``sft_coef · W · w_i · m / T``: ``T`` the minibatch's demonstration tokens over
        the ``W = counts.ranks`` ranks whose gradients the backend averages (one rank's own with ``W = 1``)."""
        w = torch.tensor(rows.weights, dtype=torch.float32)  # [n]
        m = rows.tokens.loss_mask.float()  # [n, S]
        token_w = sft_coef * counts.ranks * w[:, None] * m / max(counts.tokens, 1.0)  # [n, S]
        return MicroBatch(tokens=rows.tokens, role="sft", tensors={"token_weights": token_w})

    def _feedback(
        self, step: int, decision: MixDecision, reports: list, record: dict[str, Any]
    ) -> StepFeedback:
        norms = [rep.grad_norms for rep in reports]
        rl_on = decision.rl_coef > 0 and "reward_mean" in record
        sft_on = decision.sft_coef > 0 and bool(decision.sft)
        g_rl = g_sft = None
        if norms and self.backend.context.num_optimizer_states == 2:
            g_rl, g_sft = norms[-1][0], norms[-1][-1]
        elif norms:
            whole = norms[-1][0]
            g_rl = whole if rl_on and not sft_on else None
            g_sft = whole if sft_on and not rl_on else None
        whole_norm = float(sum(g * g for g in norms[-1]) ** 0.5) if norms else None
        # KL to the first reference (the initial policy unless backend.references names another), measured on this
        # step's rollouts; its mean over ranks, so that every rank's mixer makes the same decisions
        kl = record.get("kl_ref")
        kl = None if kl is None else self.backend.all_mean({"kl_ref": kl})["kl_ref"]
        return StepFeedback(
            step=step,
            decision=decision,
            grad_norm_rl=g_rl,
            grad_norm_sft=g_sft,
            grad_norm=whole_norm,
            kl_to_initial=kl,
        )

    def _check_finite(self, step: int, skipped: bool) -> None:
        self.nonfinite = self.nonfinite + 1 if skipped else 0
        if self.nonfinite >= self.parts.train.max_nonfinite:
            path = self.save(step + 1)
            raise NonFiniteError(
                f"{self.nonfinite} consecutive steps had a non-finite loss or gradient (last: step {step}); "
                f"aborted with a checkpoint at {path}.\n  Lower backend.lr, check the rewards for NaN, or resume "
                f"with `lmix run ... --resume` after changing the recipe."
            )

    # -- persistence -----------------------------------------------------------------------------------------
    def trainer_state(self, step: int) -> dict[str, Any]:
        """The loop's own state: tensors and plain values only, so ``trainer.pt`` loads with ``weights_only``."""
        return {
            "step": step,
            "mixer": self.parts.mixer.state_dict(),
            "python_rng": random.getstate(),
            "torch_rng": torch.get_rng_state(),
            "nonfinite": self.nonfinite,
        }

    def save(self, step: int) -> Path:
        """Checkpoint after ``step`` completed steps: every rank writes its backend part, the main rank the rest."""
        main = self.backend.is_main
        if main:
            checkpoint.begin(self.run_dir, step)
        self.backend.barrier()
        self.backend.save_checkpoint(checkpoint.staging(self.run_dir, step) / "backend")
        self.backend.barrier()
        if main:
            checkpoint.commit(self.run_dir, step, self.trainer_state(step), self.parts.train.keep_checkpoints)
        self.backend.barrier()
        return checkpoint.step_dir(self.run_dir, step)

    def restore(self) -> int:
        """Load the newest complete checkpoint; returns the step to continue from (0 when there is none)."""
        path = checkpoint.latest(self.run_dir, warn=None if self.backend.is_main else _silent)
        if path is None:
            return 0
        file = path / "trainer.pt"
        state = checkpoint.load_trainer_state(path)
        self.backend.load_checkpoint(path / "backend")
        try:
            self.parts.mixer.load_state_dict(state["mixer"])
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            raise CheckpointError(
                f"cannot restore the mixer from {str(file)!r}: {type(exc).__name__}: {exc} (was it written by "
                "another mixer?)"
            ) from None
        try:
            random.setstate(state["python_rng"])
            torch.set_rng_state(state["torch_rng"])
        except (TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot restore the RNG states from {str(file)!r}: {exc}") from None
        self.nonfinite = state["nonfinite"]
        return state["step"]

    # -- the run ---------------------------------------------------------------------------------------------
    def run(
        self, *, resume: bool, evaluate: Callable[[int], dict[str, Any]], final_checkpoint: bool = True
    ) -> dict[str, Any]:
        """Train, evaluating and checkpointing on schedule; returns the last evaluation.

        ``evaluate(step) -> dict`` runs a held-out evaluation. On resume, the ``metrics.jsonl`` lines and
        ``eval.jsonl`` records the resumed run writes again are dropped first. ``final_checkpoint=False`` skips the
        end-of-run checkpoint. SIGTERM/SIGINT stop the run after the current step with a checkpoint
        (:mod:`lmix_core.train.stop`), raising :class:`~lmix_core.errors.RunInterrupted`.
        """
        tr = self.parts.train
        start = self.restore() if resume else 0
        self.start_step = start
        main = self.backend.is_main
        log = (
            MetricsLog(self.run_dir / "metrics.jsonl", resume_from=start if resume else None)
            if main
            else None
        )
        if main and resume:
            # evaluations at or before the checkpoint stay; the final one is redone after the final checkpoint
            roll_back(self.run_dir / "eval.jsonl", lambda s: s <= start and s != tr.steps)
        tracker = (
            Tracker(self.parts.logging, self.run_dir, self.parts.resolved, tr.steps, start) if main else None
        )
        with StopSignals(announce=main) as signals:
            try:
                for step in range(start, tr.steps):
                    record = self.step(step)
                    if log is not None:
                        log.write(record)
                    if tracker is not None:
                        tracker.log(record)
                    done = step + 1
                    if tr.eval_every and done % tr.eval_every == 0 and done < tr.steps:
                        evaluate(done)
                    saved = tr.save_every > 0 and done % tr.save_every == 0 and done < tr.steps
                    if saved:
                        self.save(done)
                    signum = agreed(signals.signum)
                    if signum:
                        self._stop(done, signum, saved=saved)
                if start < tr.steps and final_checkpoint:
                    self.save(tr.steps)
                signum = agreed(signals.signum)
                if signum:  # arrived during the final checkpoint: stop before the final evaluation
                    self._stop(tr.steps, signum, saved=final_checkpoint or start == tr.steps)
            finally:
                if tracker is not None:
                    tracker.close()
        return evaluate(tr.steps)

    def _stop(self, done: int, signum: int, *, saved: bool) -> None:
        """Write the checkpoint after ``done`` steps (unless it was just written) and raise RunInterrupted."""
        path = checkpoint.step_dir(self.run_dir, done) if saved else self.save(done)
        raise RunInterrupted(
            f"stopped by {signal.Signals(signum).name} after step {done} of {self.parts.train.steps}; checkpoint "
            f"{str(path)!r}",
            signum,
        )


def _silent(message: str) -> None:
    """A warning sink for ranks other than the main one."""

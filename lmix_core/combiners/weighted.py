"""Scheduled geometric mixture of the trainable policy with one or more frozen references."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import final

import attrs
from attrs import validators as v
from torch import Tensor

from lmix_core.interfaces.combiner import PolicyCombiner, deploy_field
from lmix_core.ops.mixed_logprobs import check_reference_logits, geometric_mix
from lmix_core.ops.schedules import Shape, interpolate
from lmix_core.types import Distribution


def _on_simplex(instance: object, attribute: attrs.Attribute, value: tuple[float, ...]) -> None:
    if len(value) == 0:
        raise ValueError(f"'{attribute.name}' must name at least one reference weight (got {value!r})")
    if any(not math.isfinite(w) or w < 0.0 for w in value):
        raise ValueError(f"'{attribute.name}' must hold finite weights >= 0 (got {value!r})")
    if abs(sum(value) - 1.0) > 1e-6:
        raise ValueError(f"'{attribute.name}' must sum to 1 (got {value!r}, sum {sum(value)!r})")


def _float_tuple(value: object) -> tuple[float, ...]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (float(value),)
    if not isinstance(value, list | tuple):
        raise TypeError(f"'ref_weights' must be an array of numbers (got {value!r})")
    if any(isinstance(w, bool) or not isinstance(w, int | float) for w in value):
        raise TypeError(f"'ref_weights' must be an array of numbers (got {value!r})")
    return tuple(float(w) for w in value)


@final
class Weighted(PolicyCombiner):
    r"""Geometric mixture with a scheduled policy weight and K weighted references.

    .. math::

        z_{mix} = α_t·z_θ + (1 − α_t)·Σ_k w_k·sg(z_k),\qquad
        π_{mix} ∝ π_θ^{α_t}·Π_k π_k^{(1 − α_t) w_k},\qquad w ∈ Δ^{K−1}

    with ``α_t = interpolate(schedule, alpha_start, alpha_end, t, schedule_steps)`` (``lmix_core.ops.schedules``:
    ``constant`` stays at ``alpha_start``; ``linear``; ``cosine`` ``α_end + (α_start − α_end)(1 + cos πp)/2``; held
    at ``alpha_end`` after ``schedule_steps``). It generalises ``logit_average`` (one reference, constant α), whose
    conventions it shares: sample and train the mix, PPO ratio on π_mix, temperature after mixing, gradient into z_θ
    only (``∂ log π_mix(a)/∂z_θ = α_t (e_a − π_mix)``).

    [U] choices, no paper fixes them: the defaults reproduce ``logit_average`` (α = 0.5 constant, one reference);
    reference weights must sum to 1 (within 1e-6) so that identical models combine to that model; evaluation
    deploys the mix at the current step's α by default (``deploy``).
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """Weighted mixture's parameters.

        Attributes:
            alpha_start: the policy's weight α at step 0.
            alpha_end: α from ``schedule_steps`` on (unused by ``constant``).
            schedule: how α moves from ``alpha_start`` to ``alpha_end``: ``constant``, ``linear`` or ``cosine``.
            schedule_steps: loop steps (what ``train.steps`` counts) over which α moves; every optimiser step of a
                loop step (PPO epochs × minibatches) trains at the α its rollouts were sampled at.
            ref_weights: weight of each reference, on the simplex; its length is the number of references.
            deploy: what evaluation samples from: ``combined`` (π_mix) or ``policy`` (π_θ alone).
        """

        alpha_start: float = attrs.field(default=0.5, validator=[v.ge(0.0), v.le(1.0)])
        alpha_end: float = attrs.field(default=0.5, validator=[v.ge(0.0), v.le(1.0)])
        schedule: Shape = attrs.field(default="constant", validator=v.in_(("constant", "linear", "cosine")))
        schedule_steps: int = attrs.field(default=0, validator=v.ge(0))
        ref_weights: tuple[float, ...] = attrs.field(
            default=(1.0,), converter=_float_tuple, validator=_on_simplex
        )
        deploy: Distribution = deploy_field()

    config: Config

    @property
    def deploy(self) -> Distribution:
        """Where evaluation samples from (``Config.deploy``)."""
        return self.config.deploy

    @property
    def num_references(self) -> int:
        return len(self.config.ref_weights)

    def alpha(self, step: int) -> float:
        """The policy's weight α_t at ``step``."""
        c = self.config
        return interpolate(c.schedule, c.alpha_start, c.alpha_end, step, c.schedule_steps)

    def mix_logits(self, z_policy: Tensor, z_refs: Sequence[Tensor], *, step: int = 0) -> Tensor:
        check_reference_logits("weighted", z_policy, z_refs, self.num_references)
        return geometric_mix(z_policy, z_refs, alpha=self.alpha(step), ref_weights=self.config.ref_weights)

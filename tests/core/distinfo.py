"""Real installed distributions for tests: a ``*.dist-info`` folder (METADATA + entry_points.txt) plus modules.

Put the folder's parent on ``sys.path`` (``monkeypatch.syspath_prepend``, or ``PYTHONPATH`` for a subprocess) and
``importlib.metadata`` finds the distribution exactly as it finds a pip-installed one; nothing is mocked.
"""

from __future__ import annotations

import importlib
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

from lmix_core.registries import KINDS
from lmix_core.registry import Kind, Registry


def write_dist(
    root: Path,
    name: str,
    version: str = "1.0",
    entry_points: Mapping[str, Mapping[str, str]] | None = None,
    modules: Mapping[str, str] | None = None,
) -> Path:
    """Write distribution ``name`` with its entry points and modules (dotted names become packages) under root."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, eps in (entry_points or {}).items():
        lines.append(f"[{group}]")
        lines += [f"{ep_name} = {value}" for ep_name, value in eps.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))
    for module, source in (modules or {}).items():
        parts = module.split(".")
        folder = root
        for pkg in parts[:-1]:
            folder = folder / pkg
            folder.mkdir(exist_ok=True)
            (folder / "__init__.py").touch()
        (folder / f"{parts[-1]}.py").write_text(textwrap.dedent(source))
    importlib.invalidate_caches()
    return info


def fresh_registries(prefix: str = "lmixtest") -> dict[str, Registry]:
    """New registries, one per kind with the real interfaces, reading the ``<prefix>.<kinds>`` groups."""
    return {k: Registry(Kind(k, f"{prefix}.{kind.plural}", kind.interface)) for k, kind in KINDS.items()}


#: Fake components: the real interfaces with trivial bodies and Configs that exercise every kind of check.
FAKES = '''
"""Fake lmix components for recipe tests."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Literal

import attrs
import torch
from attrs import validators as v

from lmix_core.interfaces import (
    AdvantageEstimator,
    Mixer,
    PolicyCombiner,
    PolicyLoss,
    RewardVerifier,
    RolloutEngine,
    TrainerBackend,
)
from lmix_core.types import Verdict


@typing.final
class ToyEngine(RolloutEngine):
    """A rollout engine that only has a Config."""

    @attrs.frozen(kw_only=True)
    class Config:
        decoder: Literal["fused", "transformers"] = "fused"

    def load_policy_weights(self, weights, /):
        raise NotImplementedError

    def generate(self, request, /):
        raise NotImplementedError


@typing.final
class ToyBackend(TrainerBackend):
    """A backend that only has a Config.

    Attributes:
        model: model directory or hub id.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """Toy backend settings.

        Attributes:
            model: model directory or hub id.
            references: reference model directories.
            lr: learning rate.
            dtype: parameter dtype.
            cache_dir: a scratch folder.
        """

        model: str
        references: tuple[str, ...] = ()
        lr: float = attrs.field(default=1e-5, validator=v.gt(0.0))
        dtype: Literal["float32", "bfloat16"] = "float32"
        cache_dir: Path | None = None

    native_format = "toy"

    @classmethod
    def convert(cls, src, dst, /, *, to_native, tp=1, pp=1):
        print(f"toy convert {src} {dst} to_native={to_native} tp={tp} pp={pp}")
        return 0

    @property
    def tokenizer(self):
        return None

    def generate(self, request, /):
        raise NotImplementedError

    def score(self, batch, /, *, temperature=1.0, entropy=False, ref_logp=False, step=0):
        raise NotImplementedError

    def train_step(self, groups, objective, /, *, step):
        raise NotImplementedError

    def save_checkpoint(self, path, /):
        raise NotImplementedError

    def load_checkpoint(self, path, /):
        raise NotImplementedError

    def save_pretrained(self, path, /):
        raise NotImplementedError


@typing.final
class Policy(PolicyCombiner):
    """The policy alone."""

    @attrs.frozen(kw_only=True)
    class Config:
        pass

    def mix_logits(self, z_policy, z_refs, *, step=0):
        return z_policy


@typing.final
class LogitAverage(PolicyCombiner):
    """alpha * z_policy + (1 - alpha) * z_ref."""

    @attrs.frozen(kw_only=True)
    class Config:
        alpha: float = attrs.field(default=0.5, validator=[v.ge(0.0), v.le(1.0)])

    @property
    def num_references(self):
        return 1

    def mix_logits(self, z_policy, z_refs, *, step=0):
        return self.config.alpha * z_policy + (1 - self.config.alpha) * z_refs[0].detach()


@typing.final
class Weighted(PolicyCombiner):
    """A scheduled alpha."""

    @attrs.frozen(kw_only=True)
    class Config:
        start: float = attrs.field(default=1.0, validator=[v.ge(0.0), v.le(1.0)])
        end: float = attrs.field(default=0.5, validator=[v.ge(0.0), v.le(1.0)])
        schedule: Literal["constant", "linear", "cosine"] = "linear"

    def mix_logits(self, z_policy, z_refs, *, step=0):
        return z_policy


@typing.final
class GRPO(AdvantageEstimator):
    """Group z-score."""

    @attrs.frozen(kw_only=True)
    class Config:
        eps: float = attrs.field(default=1e-6, validator=v.gt(0.0))
        std: Literal["unbiased", "population"] = "unbiased"

    def __call__(self, inputs, /):
        return torch.zeros(inputs.mask.shape)


@typing.final
class PPOClip(PolicyLoss):
    """Clipped surrogate."""

    @attrs.frozen(kw_only=True)
    class Config:
        clip_low: float = attrs.field(default=0.2, validator=v.ge(0.0))
        clip_high: float = attrs.field(default=0.2, validator=v.ge(0.0))

    def token_weights(self, mask, /, *, max_len):
        return mask.float()

    def __call__(self, inputs, /):
        raise NotImplementedError


@typing.final
class RL(Mixer):
    """Pure RL."""

    @attrs.frozen(kw_only=True)
    class Config:
        pass

    def plan(self, step):
        raise NotImplementedError

    def mix(self, inputs):
        raise NotImplementedError


@typing.final
class Constant(Mixer):
    """(1 - mu) RL + mu SFT."""

    @attrs.frozen(kw_only=True)
    class Config:
        mu: float = attrs.field(default=0.5, validator=[v.ge(0.0), v.le(1.0)])

    def plan(self, step):
        raise NotImplementedError

    def mix(self, inputs):
        raise NotImplementedError


@typing.final
class Math(RewardVerifier):
    """Final-answer equivalence."""

    @attrs.frozen(kw_only=True)
    class Config:
        fallback: Literal["none", "last_number"] = "none"

    def score_one(self, sample, /):
        return Verdict(score=0.0, reason="fake")


@typing.final
class Format(RewardVerifier):
    """A regex check."""

    @attrs.frozen(kw_only=True)
    class Config:
        pattern: str

    def score_one(self, sample, /):
        return Verdict(score=0.0, reason="fake")
'''

#: A plugin module whose import fails, as one with a missing dependency does.
BROKEN = '''
"""A plugin that needs a package nobody installed."""

import lmt_dependency_nobody_installed  # noqa: F401
'''


def fake_entry_points(
    group_prefix: str, name: Callable[[str], str] = lambda n: n
) -> dict[str, dict[str, str]]:
    """Entry points of the fake distribution, in groups ``<group_prefix>.<kinds>``, names mapped by ``name``."""
    return {
        f"{group_prefix}.backends": {name("toy"): "lmt_fakes:ToyBackend"},
        f"{group_prefix}.rollout_engines": {name("hf"): "lmt_fakes:ToyEngine"},
        f"{group_prefix}.combiners": {
            name("policy"): "lmt_fakes:Policy",
            name("logit_average"): "lmt_fakes:LogitAverage",
            name("weighted"): "lmt_fakes:Weighted",
        },
        f"{group_prefix}.advantages": {name("grpo"): "lmt_fakes:GRPO"},
        f"{group_prefix}.losses": {name("ppo_clip"): "lmt_fakes:PPOClip"},
        f"{group_prefix}.mixers": {name("rl"): "lmt_fakes:RL", name("constant"): "lmt_fakes:Constant"},
        f"{group_prefix}.rewards": {
            name("math"): "lmt_fakes:Math",
            name("format"): "lmt_fakes:Format",
            name("broken"): "lmt_broken:Broken",
        },
    }


def write_fakes(root: Path, group_prefix: str = "lmixtest", name: Callable[[str], str] = lambda n: n) -> Path:
    """The fake distribution ``lmix-fakes 0.3`` with its modules, under ``root``."""
    return write_dist(
        root,
        "lmix-fakes",
        "0.3",
        fake_entry_points(group_prefix, name),
        {"lmt_fakes": FAKES, "lmt_broken": BROKEN},
    )

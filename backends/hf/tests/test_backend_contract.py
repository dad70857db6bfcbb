"""The ``hf`` backend passes the backend contract suite (``lmix_core.testing.backend.check_backend``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmix_core.interfaces.backend import BackendContext
from lmix_core.testing.backend import check_backend
from lmix_hf.backend import HFBackend


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_hf_backend_passes_the_contract(model_dirs: dict[str, Path], tmp_path: Path, parallel: str) -> None:
    """Generate, score, train, export and checkpoint the tiny Qwen2 policy (a second model as the reference);
    replicated, and sharded by FSDP2 in a one-rank group."""

    def factory(context: BackendContext) -> HFBackend:
        config = HFBackend.Config(
            model=str(model_dirs["policy"]),
            references=(str(model_dirs["reference"]),),
            device="cpu",
            lr=1e-3,
            micro_batch_size=2,
            parallel=parallel,
        )
        return HFBackend(config, context)

    check_backend(factory, tmp_dir=tmp_path)


def test_the_suite_catches_a_backend_that_does_not_train(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    """A backend whose steps change nothing fails ``train_step_lowers_loss``."""

    def factory(context: BackendContext) -> HFBackend:
        # lr must be > 0: a tiny rate with a tiny clip leaves every float32 weight as it was
        config = HFBackend.Config(
            model=str(model_dirs["policy"]), device="cpu", lr=1e-30, grad_clip=1e-30, micro_batch_size=2
        )
        return HFBackend(config, context)

    with pytest.raises(AssertionError, match="train_step_lowers_loss"):
        check_backend(factory, tmp_dir=tmp_path)

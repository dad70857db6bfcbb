"""The megatron backend's own checkpoint files, damaged: one CheckpointError naming the file, never code run."""

from __future__ import annotations

import os

import pytest
import torch

from lmix_core.errors import BackendError, CheckpointError
from lmix_megatron.checkpoint import read_meta


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _checkpoint(tmp_path, meta_text):
    (tmp_path / "dist").mkdir()
    (tmp_path / "lmix_megatron.json").write_text(meta_text)
    return tmp_path


def test_corrupt_or_foreign_metadata_names_the_file(tmp_path):
    meta = tmp_path / "lmix_megatron.json"
    with pytest.raises(CheckpointError, match=f"cannot read '{meta}': JSONDecodeError"):
        read_meta(_checkpoint(tmp_path, '{"format": 1, "con'))
    meta.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=f"cannot read '{meta}': it holds a list, not an object"):
        read_meta(tmp_path)
    meta.write_text('{"format": 99}')
    with pytest.raises(BackendError, match="has checkpoint format 99; this lmix reads 1"):
        read_meta(tmp_path)
    meta.write_text('{"format": 1, "content": "model"}')
    assert read_meta(tmp_path)["content"] == "model"


def test_a_pickled_rng_file_is_refused_without_running_it(tmp_path):
    from lmix_core.train.checkpoint import read_torch

    rng = tmp_path / "rank0.pt"
    marker = tmp_path / "ran"
    torch.save({"cpu": _Payload(marker)}, rng)
    with pytest.raises(CheckpointError, match=r"holds a pickled object \(posix.mkdir\), refused"):
        read_torch(rng)
    assert not marker.exists()

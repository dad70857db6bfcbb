"""CPU compat layer for megatron-core 0.16.1: lets TP × PP × DP training run on CPU processes over gloo.

megatron-core hard-codes CUDA in four ways on the paths lmix uses (file:line of 0.16.1 in
``docs/megatron.md``):

(a) ``device=torch.cuda.current_device()`` for buffers (DDP grad/param buffers, p2p receive buffers, TP gathers,
    RoPE ``inv_freq``, the distributed optimizer's checkpoint gather);
(b) literal ``device="cuda"`` (schedules' token counters, the optimizer's overflow buffers, grad-norm scalars,
    the checkpoint saver's verification flag, the async writer's ``synchronize``) and ``Tensor.cuda()`` (tied embeddings under PP);
(c) ``tensor.type() == "torch.cuda.FloatTensor"`` string checks in the optimizers (CPU tensors say
    ``torch.FloatTensor``);
(d) the CUDA RNG tracker (``model_parallel_cuda_manual_seed``, ``get_cuda_rng_tracker().fork()``).

How it is fixed, without touching ``torch`` itself:

* (a), (b), (d): the listed megatron modules get a module-global ``torch`` proxy whose ``cuda`` namespace
  answers ``current_device() -> "cpu"``, maps the RNG calls to the CPU generator and makes ``synchronize`` a no-op,
  and whose tensor factories turn ``device="cuda"`` into ``"cpu"``. Every other attribute is the real ``torch``'s.
  Modules holding ``torch.compile``-d code are left alone (none of them is on a CUDA path lmix uses).
* (b') and (c): ``Tensor.cuda`` is the identity and ``Tensor.type()`` answers the CUDA type name *only when the
  caller is a megatron module* (one frame look-up); every other caller gets torch's own methods.

The layer is installed by :func:`install` only when no CUDA device is present (``torch.cuda.is_available()`` is
False), so a GPU run is unpatched. :func:`install` is idempotent. The CPU-safe core attention and norm that
replace TE/Apex kernels on CPU live in :mod:`lmix_megatron.model`; the distributed optimizer's checkpoint-loading
fixes (bugs of the torch-AdamW fallback, CPU or GPU) live in :mod:`lmix_megatron.checkpoint`.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

import torch

__all__ = ["install", "installed", "needed"]

#: megatron modules whose global ``torch`` is replaced by the CPU proxy (sites (a), (b), (d)).
PROXIED_MODULES: tuple[str, ...] = (
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.tensor_parallel.random",
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.utils",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
)

_FACTORIES = frozenset(
    {
        "zeros",
        "ones",
        "empty",
        "full",
        "tensor",
        "arange",
        "rand",
        "randn",
        "as_tensor",
        "zeros_like",
        "empty_like",
    }
)

_state: dict[str, Any] = {"installed": False}


def needed() -> bool:
    """Whether this process has no CUDA device, so megatron-core needs the compat layer."""
    return not torch.cuda.is_available()


def installed() -> bool:
    """Whether :func:`install` patched this process."""
    return bool(_state["installed"])


def _cpu_device(device: Any) -> Any:
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    if isinstance(device, int):
        return "cpu"
    return device


class _CudaOnCPU:
    """``torch.cuda`` as megatron sees it on a CPU process."""

    def current_device(self) -> str:
        return "cpu"

    def synchronize(self, *args: Any, **kwargs: Any) -> None:
        return None

    def get_rng_state(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(self, state: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        torch.set_rng_state(state)

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)


class _TorchOnCPU(types.ModuleType):
    """The ``torch`` module as the proxied megatron modules see it: ``cuda`` devices become ``cpu``."""

    def __init__(self) -> None:
        super().__init__("torch")
        self.cuda = _CudaOnCPU()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(torch, name)
        if name in _FACTORIES:

            def factory(*args: Any, _f: Any = attr, **kwargs: Any) -> Any:
                if "device" in kwargs:
                    kwargs["device"] = _cpu_device(kwargs["device"])
                return _f(*args, **kwargs)

            return factory
        return attr


def _caller_is_megatron(depth: int = 2) -> bool:
    name = sys._getframe(depth).f_globals.get("__name__", "")
    return name.startswith("megatron.core")


def _install_tensor_methods() -> None:
    original_cuda = torch.Tensor.cuda
    original_type = torch.Tensor.type

    def cuda(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if _caller_is_megatron():
            return self
        return original_cuda(self, *args, **kwargs)

    def type_(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        result = original_type(self, *args, **kwargs)
        if not args and not kwargs and _caller_is_megatron() and isinstance(result, str):
            return result.replace("torch.", "torch.cuda.", 1)
        return result

    # Reason for the ignores: these are deliberate patches of torch's methods with looser signatures ((b'), (c) above).
    torch.Tensor.cuda = cuda  # type: ignore[method-assign, assignment]
    torch.Tensor.type = type_  # type: ignore[method-assign, assignment]
    _state["tensor_methods"] = (original_cuda, original_type)


def _install_rng(random_module: types.ModuleType) -> None:
    def get_state(*args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.get_rng_state()

    def set_state(state: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        torch.set_rng_state(state)

    # Reason for the ignores: the patch replaces module functions that the module's annotations do not declare.
    random_module._get_cuda_rng_state = get_state  # type: ignore[attr-defined]
    random_module._set_cuda_rng_state = set_state  # type: ignore[attr-defined]


def install(*, force: bool = False) -> bool:
    """Patch megatron-core for CPU processes (no-op when a GPU is present, unless ``force``).

    Args:
        force: install even with a CUDA device visible (tests of the layer itself only).

    Returns:
        Whether the layer is installed after the call.
    """
    if _state["installed"]:
        return True
    if not (force or needed()):
        return False
    proxy = _TorchOnCPU()
    for name in PROXIED_MODULES:
        module = importlib.import_module(name)
        module.torch = proxy  # type: ignore[attr-defined]  # the module's global `torch`, replaced on purpose
    _install_rng(importlib.import_module("megatron.core.tensor_parallel.random"))
    _install_tensor_methods()
    _state["installed"] = True
    return True

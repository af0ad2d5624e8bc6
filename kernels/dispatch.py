"""The one place that chooses between the Triton kernels and their plain-torch twins.

Triton is probed once and imported lazily: importing ``kernels`` never imports Triton.
Automatic choice: the Triton kernel for CUDA tensors when Triton is usable on CUDA, the
torch reference otherwise (CPU tensors always get torch unless forced).
``MEGATRON_HDS_KERNELS=torch|triton`` (read at each call) forces one; forcing triton where
it cannot run raises instead of silently falling back.
"""

import functools
import importlib.util
import os
from typing import List, Sequence

import torch

from kernels import reference

__all__ = ["ENV_VAR", "available_backends", "choose_backend", "multi_tensor_sum_of_squares"]

ENV_VAR = "MEGATRON_HDS_KERNELS"
_CHOICES = ("torch", "triton")


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


@functools.lru_cache(maxsize=None)
def _triton_probe() -> tuple:
    """(usable, device type it runs on or None, reason when unusable). Probed once per process."""
    if importlib.util.find_spec("triton") is None:
        return False, None, "the triton package is not installed"
    if _interpret_requested():
        return True, "cpu", ""
    if torch.cuda.is_available():
        return True, "cuda", ""
    return False, None, "no CUDA device is visible and TRITON_INTERPRET=1 was not set before kernels/ was imported"


def available_backends() -> List[str]:
    """Backends usable in this process: always 'torch', plus 'triton' when it can run here."""
    return ["torch", "triton"] if _triton_probe()[0] else ["torch"]


def _requested() -> str:
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value and value not in _CHOICES:
        raise ValueError(f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not one of {', '.join(_CHOICES)} "
                         "(unset it for the automatic choice)")
    return value


def _norms():
    from kernels import norms  # Triton is imported here, on first use only

    return norms


def choose_backend(tensors: Sequence[torch.Tensor]) -> str:
    """'torch' or 'triton': what ``multi_tensor_sum_of_squares(tensors)`` would run."""
    requested = _requested()
    usable, device_type, reason = _triton_probe()
    devices = {t.device.type for t in tensors}
    if requested == "torch":
        return "torch"
    if requested == "triton":
        if not usable:
            raise RuntimeError(f"{ENV_VAR}=triton but Triton cannot run here: {reason}")
        if devices and devices != {device_type}:
            raise RuntimeError(f"{ENV_VAR}=triton but the tensors are on {sorted(devices)} and Triton runs on "
                               f"{device_type} in this process"
                               + (" (TRITON_INTERPRET=1 is set)" if device_type == "cpu" else ""))
        return "triton"
    if usable and device_type == "cuda" and devices == {"cuda"} and len(tensors) > 0 \
            and all(t.dtype in (torch.float32, torch.bfloat16, torch.float16) for t in tensors):
        return "triton"
    return "torch"


def multi_tensor_sum_of_squares(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """fp32 [n]: each tensor's sum of squares accumulated in fp32 (0 for an empty tensor),
    on the tensors' device. Local only: the caller all-reduces across ranks."""
    tensors = list(tensors)
    if choose_backend(tensors) == "triton":
        return _norms().multi_tensor_sum_of_squares(tensors)
    return reference.multi_tensor_sum_of_squares(tensors)

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
from typing import List, Optional, Sequence, Tuple

import torch

from megatron_hds.kernels import reference

__all__ = ["ENV_VAR", "available_backends", "choose_backend", "multi_tensor_sum_of_squares", "cross_entropy_partials",
           "cross_entropy_loss", "cross_entropy_backward", "count_sketch_add"]

ENV_VAR = "MEGATRON_HDS_KERNELS"
_CHOICES = ("torch", "triton")


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _version(text: str) -> Tuple[int, int]:
    major, minor = (text.split(".") + ["0"])[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def _interpreter_problem() -> str:
    """Why Triton's CPU interpreter cannot run these kernels correctly here ('' when it can).
    Found by running tests/kernels under each Triton release (docs/versions.md)."""
    import numpy
    from importlib.metadata import version

    triton_version = version("triton")
    if _version(triton_version) < (3, 2):
        return f"Triton {triton_version}'s interpreter computes these kernels wrongly; install triton>=3.2"
    if _version(triton_version) < (3, 7) and _version(numpy.__version__) >= (2, 4):
        return (f"Triton {triton_version}'s interpreter fails with numpy {numpy.__version__} (it converts "
                "1-element arrays to ints); install numpy<2.4 or triton>=3.7")
    return ""


@functools.lru_cache(maxsize=None)
def _triton_probe() -> tuple:
    """(usable, device type it runs on or None, reason when unusable). Probed once per process."""
    if importlib.util.find_spec("triton") is None:
        return False, None, "the triton package is not installed"
    if _interpret_requested():
        problem = _interpreter_problem()
        return not problem, None if problem else "cpu", problem
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
    from megatron_hds.kernels import norms  # Triton is imported here, on first use only

    return norms


def _sketch():
    from megatron_hds.kernels import sketch  # Triton is imported here, on first use only

    return sketch


def _cross_entropy():
    from megatron_hds.kernels import cross_entropy  # Triton is imported here, on first use only

    return cross_entropy


def choose_backend(tensors: Sequence[torch.Tensor]) -> str:
    """'torch' or 'triton': what a kernel over ``tensors`` would run (the same rule for all)."""
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


def _check_domains(domain_ids: Optional[torch.Tensor], domain_sums: Optional[torch.Tensor], num_rows: int) -> None:
    """The contract both backends share. The id range is checked only for ids in host memory:
    on a GPU the check would cost a host sync per call, and the trainer's ids come from the
    batch plan, valid by construction."""
    if (domain_ids is None) != (domain_sums is None):
        raise ValueError("domain_ids and domain_sums go together: pass both or neither")
    if domain_sums is None:
        return
    if domain_sums.dtype != torch.float32 or domain_sums.dim() != 1 or domain_sums.numel() % 2 \
            or not domain_sums.is_contiguous():
        raise ValueError(f"domain_sums must be a contiguous float32 [2 * num_domains] buffer (loss sums, then "
                         f"token counts), got {domain_sums.dtype} {tuple(domain_sums.shape)}")
    if domain_ids.dtype.is_floating_point or domain_ids.dtype == torch.bool or domain_ids.numel() != num_rows:
        raise ValueError(f"domain_ids must be {num_rows} integer ids (one per row), got {domain_ids.dtype} "
                         f"{tuple(domain_ids.shape)}")
    num_domains = domain_sums.numel() // 2
    if num_rows and domain_ids.device.type == "cpu":
        low, high = torch.stack([domain_ids.min(), domain_ids.max()]).tolist()
        if low < 0 or high >= num_domains:
            raise ValueError(f"domain id {low if low < 0 else high} is out of range: domain_sums holds "
                             f"{num_domains} domains (ids 0..{num_domains - 1})")


def cross_entropy_partials(logits: torch.Tensor, target: torch.Tensor, vocab_start: int,
                           ignore_index: int = -100) -> torch.Tensor:
    """fp32 [3, N] per row of this shard's ``logits`` [N, V_local]: (max, sum of exp(logit - max),
    target logit or 0 when the target is not in this shard). The caller combines them over TP."""
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [N, V_local] and target [N], got {tuple(logits.shape)} and "
                         f"{tuple(target.shape)}")
    if choose_backend([logits]) == "triton":
        return _cross_entropy().cross_entropy_partials(logits, target, vocab_start, ignore_index)
    return reference.cross_entropy_partials(logits, target, vocab_start, ignore_index)


def cross_entropy_loss(partials: torch.Tensor, target: torch.Tensor, ignore_index: int = -100,
                       loss_mask: Optional[torch.Tensor] = None, domain_ids: Optional[torch.Tensor] = None,
                       domain_sums: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(per-token loss fp32 [N], stats fp32 [2, N] = per-row (max, log(sum_exp)), what backward
    needs) from global partials; ignored (``ignore_index``) and
    masked (``loss_mask`` == 0) tokens get loss 0 and no count. Adds per-domain loss sums and
    token counts into ``domain_sums`` fp32 [2D] (ids ``domain_ids`` [N] in [0, D)) in the same pass."""
    num_rows = target.numel()
    if partials.shape != (3, num_rows) or (loss_mask is not None and loss_mask.numel() != num_rows):
        raise ValueError(f"partials must be [3, {num_rows}] and loss_mask [{num_rows}], got "
                         f"{tuple(partials.shape)} and {None if loss_mask is None else tuple(loss_mask.shape)}")
    _check_domains(domain_ids, domain_sums, num_rows)
    if choose_backend([partials]) == "triton":
        return _cross_entropy().cross_entropy_loss(partials, target, ignore_index, loss_mask, domain_ids, domain_sums)
    return reference.cross_entropy_loss(partials, target, ignore_index, loss_mask, domain_ids, domain_sums)


def cross_entropy_backward(logits: torch.Tensor, target: torch.Tensor, stats: torch.Tensor, grad_loss: torch.Tensor,
                           vocab_start: int, ignore_index: int = -100, loss_mask: Optional[torch.Tensor] = None,
                           out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Gradient of sum(grad_loss * loss) w.r.t. ``logits`` [N, V_local], in their dtype, written into
    ``out`` when given (``out`` may be the logits themselves: in-place backward)."""
    if choose_backend([logits]) == "triton":
        return _cross_entropy().cross_entropy_backward(logits, target, stats, grad_loss, vocab_start, ignore_index,
                                                       loss_mask, out)
    return reference.cross_entropy_backward(logits, target, stats, grad_loss, vocab_start, ignore_index, loss_mask,
                                            out)


def count_sketch_add(grad: torch.Tensor, out: torch.Tensor, key: int, row_offset: int = 0, col_offset: int = 0,
                     full_cols: Optional[int] = None) -> None:
    """out[bucket(j)] += sign(j) * grad[r, c] for the 2-D ``grad`` (a shard at (row_offset,
    col_offset) of a matrix with ``full_cols`` columns; j is the element's row-major index
    in the full matrix), bucket and sign hashed from (key, j) as in kernels/sketch.py.
    ``out`` is the fp32 [m] sketch, on grad's device."""
    if grad.dim() != 2 or out.dtype != torch.float32 or out.dim() != 1 or out.numel() < 1:
        raise ValueError(f"count_sketch_add takes a 2-D gradient and an fp32 [m] sketch, got "
                         f"{tuple(grad.shape)} and {out.dtype} {tuple(out.shape)}")
    if choose_backend([grad]) == "triton":
        return _sketch().count_sketch_add(grad, out, key, row_offset, col_offset, full_cols)
    return reference.count_sketch_add(grad, out, key, row_offset, col_offset, full_cols)

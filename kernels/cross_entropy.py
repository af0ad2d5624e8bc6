"""Triton fused cross entropy over rows of (local vocab shard) logits, with per-domain loss sums.

Imported only through ``kernels.dispatch`` (it imports Triton). Under ``TRITON_INTERPRET=1``
(set before this module is first imported) it runs on CPU tensors for tests.

One call of the vocab-parallel cross entropy is three steps; the caller (parallel/cross_entropy.py)
combines the partials over the TP group between steps 1 and 2:
1. ``cross_entropy_partials``: one program per row reads the row once, block by block (masked
   tail), keeping an online max and a sum of exp rescaled to it, and picks the target logit
   when the target lies in this shard. Out: fp32 [3, N] = (max, sum_exp, target_logit).
2. ``cross_entropy_loss``: programs of BLOCK_N rows turn (global) partials into the per-token
   loss ``(max - target_logit) + log(sum_exp)`` (0 for ignored / masked tokens) and the
   per-row stats (max, log(sum_exp)) kept for backward, and add each domain's loss sum and
   token count into an fp32 [2D] buffer with atomics (float atomics: sums may differ in the
   last bits from run to run).
3. ``cross_entropy_backward``: grad = (softmax - onehot) * grad_loss, the softmax
   ``exp((logit - max) - log(sum_exp))`` recomputed block by block, never stored; written
   into a buffer that may be the logits themselves.
The max and log(sum_exp) stay apart (not one logsumexp): logit - max is exact in fp32 when
they are close, while a rounded logsumexp of large logits (~1e3) would cost 1e-4 relative.
"""

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

__all__ = ["cross_entropy_partials", "cross_entropy_loss", "cross_entropy_backward", "SUPPORTED_DTYPES",
           "INTERPRETED"]

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

MAX_BLOCK_V = 4096  # vocab elements one program holds per iteration
BLOCK_N = 256  # rows per program of the loss step


@triton.jit
def _partials_kernel(logits, row_stride, target, partials, n_rows, n_cols, vocab_start, ignore_index,
                     BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits + row * row_stride
    lanes = tl.arange(0, BLOCK_V)
    m = float("-inf")
    s = 0.0
    for start in range(0, n_cols, BLOCK_V):
        cols = start + lanes
        x = tl.load(base + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        # Masked lanes are -inf and add exp(-inf) = 0; m is finite after the first block.
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    t = tl.load(target + row)
    local = t - vocab_start
    here = (local >= 0) & (local < n_cols) & (t != ignore_index)
    x_t = tl.load(base + local, mask=here, other=0.0).to(tl.float32)
    tl.store(partials + row, m)
    tl.store(partials + n_rows + row, s)
    tl.store(partials + 2 * n_rows + row, x_t)


@triton.jit
def _loss_kernel(partials, target, loss_mask, domain_ids, loss, stats, sums, n_rows, num_domains, ignore_index,
                 HAS_MASK: tl.constexpr, HAS_DOMAINS: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    inside = rows < n_rows
    m = tl.load(partials + rows, mask=inside, other=0.0)
    s = tl.load(partials + n_rows + rows, mask=inside, other=1.0)
    x_t = tl.load(partials + 2 * n_rows + rows, mask=inside, other=0.0)
    t = tl.load(target + rows, mask=inside, other=ignore_index)
    valid = inside & (t != ignore_index)
    if HAS_MASK:
        valid = valid & (tl.load(loss_mask + rows, mask=inside, other=0.0) != 0.0)
    log_s = tl.log(s)
    value = tl.where(valid, (m - x_t) + log_s, 0.0)
    tl.store(loss + rows, value, mask=inside)
    tl.store(stats + rows, m, mask=inside)
    tl.store(stats + n_rows + rows, log_s, mask=inside)
    if HAS_DOMAINS:
        # Reduce this block per domain first: 2 * BLOCK_D atomics per program, not 2 per token.
        d = tl.load(domain_ids + rows, mask=inside, other=-1)
        ids = tl.arange(0, BLOCK_D)
        hit = (d[:, None] == ids[None, :]) & valid[:, None]
        loss_sum = tl.sum(tl.where(hit, value[:, None], 0.0), axis=0)
        count = tl.sum(hit.to(tl.float32), axis=0)
        tl.atomic_add(sums + ids, loss_sum, mask=ids < num_domains)
        tl.atomic_add(sums + num_domains + ids, count, mask=ids < num_domains)


@triton.jit
def _backward_kernel(logits, row_stride, grad, grad_row_stride, target, loss_mask, stats, grad_loss, n_rows,
                     n_cols, vocab_start, ignore_index, HAS_MASK: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    inside = cols < n_cols
    t = tl.load(target + row)
    valid = t != ignore_index
    if HAS_MASK:
        valid = valid & (tl.load(loss_mask + row) != 0.0)
    x = tl.load(logits + row * row_stride + cols, mask=inside, other=0.0).to(tl.float32)
    p = tl.exp((x - tl.load(stats + row)) - tl.load(stats + n_rows + row))
    g = (p - tl.where(cols == t - vocab_start, 1.0, 0.0)) * tl.load(grad_loss + row)
    g = tl.where(valid, g, 0.0)
    tl.store(grad + row * grad_row_stride + cols, g.to(grad.dtype.element_ty), mask=inside)


INTERPRETED = type(_partials_kernel).__name__ == "InterpretedFunction"


def _new_buffer(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Uninitialised buffer (a seam for the tests, which poison it with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _check_device(*tensors: Optional[torch.Tensor]) -> None:
    device = tensors[0].device
    for t in tensors:
        if t is not None and t.device != device:
            raise ValueError(f"tensors on {t.device} and {device}: all must share one device")
    if INTERPRETED and device.type != "cpu":
        raise RuntimeError(f"TRITON_INTERPRET=1 runs the kernel on CPU tensors only, got {device} tensors")
    if not INTERPRETED and device.type != "cuda":
        raise RuntimeError(f"the compiled Triton kernel needs CUDA tensors, got {device} "
                           "(set TRITON_INTERPRET=1 before importing kernels/ to run it on CPU)")


def _check_rows(logits: torch.Tensor, name: str = "logits") -> None:
    if logits.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name} have dtype {logits.dtype}; the Triton kernel accepts "
                         f"{', '.join(str(d) for d in SUPPORTED_DTYPES)} (use the torch backend)")
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(f"{name} must be [rows, vocab] with contiguous rows, got shape {tuple(logits.shape)} "
                         f"strides {logits.stride()}")


def _block(n_cols: int, block: Optional[int]) -> int:
    if block is None:
        return min(MAX_BLOCK_V, triton.next_power_of_2(max(n_cols, 1)))
    if block <= 0 or block & (block - 1):
        raise ValueError(f"block={block} must be a power of two")
    return block


def _float_mask(loss_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if loss_mask is None else loss_mask.reshape(-1).to(torch.float32).contiguous()


def cross_entropy_partials(logits: torch.Tensor, target: torch.Tensor, vocab_start: int, ignore_index: int = -100,
                           *, block: Optional[int] = None) -> torch.Tensor:
    """fp32 [3, N]: per row of ``logits`` [N, V_local] (this shard's columns start at global id
    ``vocab_start``) the max, the sum of exp(logit - max), and the target logit (0 when the
    target is outside this shard or is ``ignore_index``)."""
    _check_rows(logits)
    _check_device(logits, target)
    n_rows, n_cols = logits.shape
    target = target.contiguous()
    partials = _new_buffer((3, n_rows), torch.float32, logits.device)
    if n_rows:
        block = _block(n_cols, block)
        _partials_kernel[(n_rows,)](logits, logits.stride(0), target, partials, n_rows, n_cols, vocab_start,
                                    ignore_index, BLOCK_V=block, num_warps=8 if block >= 2048 else 4)
    return partials


def cross_entropy_loss(partials: torch.Tensor, target: torch.Tensor, ignore_index: int = -100,
                       loss_mask: Optional[torch.Tensor] = None, domain_ids: Optional[torch.Tensor] = None,
                       domain_sums: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(loss fp32 [N], stats fp32 [2, N] = per-row (max, log(sum_exp)) for backward) from the
    global partials [3, N]. Tokens whose target is
    ``ignore_index`` or whose ``loss_mask`` is 0 get loss 0 and are not counted. With
    ``domain_ids`` [N] (ids in [0, D)) and ``domain_sums`` fp32 [2D], adds each domain's loss
    sum to ``domain_sums[:D]`` and its token count to ``domain_sums[D:]``."""
    _check_device(partials, target, loss_mask, domain_ids, domain_sums)
    n_rows = target.numel()
    has_domains = domain_sums is not None
    if has_domains and (domain_sums.dtype != torch.float32 or not domain_sums.is_contiguous()):
        raise ValueError(f"domain_sums must be a contiguous float32 tensor, got {domain_sums.dtype}")
    num_domains = domain_sums.numel() // 2 if has_domains else 0
    mask = _float_mask(loss_mask)
    ids = domain_ids.reshape(-1).contiguous() if has_domains else None
    loss = _new_buffer((n_rows,), torch.float32, partials.device)
    stats = _new_buffer((2, n_rows), torch.float32, partials.device)
    if n_rows:
        # Unused pointer arguments get `partials`: the constexpr flags keep them unread.
        _loss_kernel[(triton.cdiv(n_rows, BLOCK_N),)](
            partials.contiguous(), target.contiguous(), partials if mask is None else mask,
            ids if has_domains else partials, loss, stats, domain_sums if has_domains else partials,
            n_rows, num_domains, ignore_index, HAS_MASK=mask is not None, HAS_DOMAINS=has_domains,
            BLOCK_N=BLOCK_N, BLOCK_D=triton.next_power_of_2(max(num_domains, 1)))
    return loss, stats


def cross_entropy_backward(logits: torch.Tensor, target: torch.Tensor, stats: torch.Tensor, grad_loss: torch.Tensor,
                           vocab_start: int, ignore_index: int = -100, loss_mask: Optional[torch.Tensor] = None,
                           out: Optional[torch.Tensor] = None, *, block: Optional[int] = None) -> torch.Tensor:
    """d(sum_i grad_loss[i] * loss[i]) / d logits, [N, V_local] in the logits' dtype, written
    into ``out`` (a new tensor when None; may be ``logits`` itself: each element is read before
    it is overwritten, by the same program). Ignored / masked tokens get a zero row."""
    _check_rows(logits)
    _check_device(logits, target, stats, grad_loss, loss_mask, out)
    if out is None:
        out = _new_buffer(logits.shape, logits.dtype, logits.device)
    else:
        _check_rows(out, "out")
        if out.shape != logits.shape or out.dtype != logits.dtype:
            raise ValueError(f"out is {out.dtype} {tuple(out.shape)}, the logits {logits.dtype} "
                             f"{tuple(logits.shape)}: they must match")
    n_rows, n_cols = logits.shape
    mask = _float_mask(loss_mask)
    if n_rows:
        block = _block(n_cols, block)
        grad_loss = grad_loss.reshape(-1).to(torch.float32).contiguous()
        _backward_kernel[(n_rows, triton.cdiv(n_cols, block))](
            logits, logits.stride(0), out, out.stride(0), target.contiguous(), stats if mask is None else mask,
            stats.contiguous(), grad_loss, n_rows, n_cols, vocab_start, ignore_index, HAS_MASK=mask is not None,
            BLOCK_V=block, num_warps=8 if block >= 2048 else 4)
    return out

"""Triton multi-tensor sum of squares: one launch per dtype over a pointer table, then one
deterministic launch that folds the per-block partials into per-tensor fp32 results.

Imported only through ``kernels.dispatch`` (it imports Triton). Under ``TRITON_INTERPRET=1``
(set before this module is first imported) it runs on CPU tensors for tests.

Layout of one call over tensors t_0..t_{n-1}:
- every tensor is cut into chunks of ``BLOCK * ITERS`` elements; chunk b of the whole call
  belongs to tensor ``block_tensor[b]`` and starts at element ``block_start[b]`` of it;
  chunks are grouped by dtype, and a tensor's chunks are consecutive;
- pass 1 (one launch per dtype present): program b loads tensor ``block_tensor[b]``'s
  address from the pointer table, reduces its chunk in fp32 and writes ``partials[b]``;
- pass 2 (one launch): program t sums ``partials[seg_start[t]:seg_stop[t]]`` into ``out[t]``
  (zero for an empty tensor), so every output element is written.
Partials plus a fixed-order second pass instead of atomics: the result is bit-identical
from run to run, which keeps the scheduler's signals and grad norms reproducible.
"""

from typing import Dict, List, Sequence

import torch
import triton
import triton.language as tl

__all__ = ["multi_tensor_sum_of_squares", "SUPPORTED_DTYPES", "INTERPRETED"]

_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
SUPPORTED_DTYPES = tuple(_TL_DTYPES)

DEFAULT_BLOCK = 1024
DEFAULT_ITERS = 8


@triton.jit
def _chunk_sumsq_kernel(ptr_table, sizes, block_tensor, block_start, partials, first_block,
                        DTYPE: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    b = first_block + tl.program_id(0)
    t = tl.load(block_tensor + b)
    start = tl.load(block_start + b)
    n = tl.load(sizes + t)
    base = tl.load(ptr_table + t).to(tl.pointer_type(DTYPE))
    lanes = tl.arange(0, BLOCK).to(tl.int64)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(ITERS):
        offs = start + i * BLOCK + lanes
        x = tl.load(base + offs, mask=offs < n, other=0.0).to(tl.float32)
        acc += x * x
    tl.store(partials + b, tl.sum(acc, axis=0))


@triton.jit
def _segment_sum_kernel(partials, seg_start, seg_stop, out, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    lo = tl.load(seg_start + t)
    hi = tl.load(seg_stop + t)
    lanes = tl.arange(0, BLOCK).to(tl.int64)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for j in range(lo, hi, BLOCK):
        offs = j + lanes
        acc += tl.load(partials + offs, mask=offs < hi, other=0.0)
    tl.store(out + t, tl.sum(acc, axis=0))


INTERPRETED = type(_chunk_sumsq_kernel).__name__ == "InterpretedFunction"


def _dense_view(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor over the same elements: the tensor itself when its storage is dense
    in some dimension order (e.g. a transposed weight; the sum of squares ignores order),
    otherwise a contiguous COPY (one extra read and write of that tensor)."""
    t = t.detach()
    if t.is_contiguous():
        return t
    order = sorted(range(t.dim()), key=lambda d: t.stride(d), reverse=True)
    permuted = t.permute(order)
    if permuted.is_contiguous():
        return permuted
    return t.contiguous()


def _new_buffer(size: int, device: torch.device) -> torch.Tensor:
    """Uninitialised fp32 buffer (a seam for the tests, which poison it with NaN)."""
    return torch.empty(size, dtype=torch.float32, device=device)


def multi_tensor_sum_of_squares(tensors: Sequence[torch.Tensor], *, block: int = DEFAULT_BLOCK,
                                iters: int = DEFAULT_ITERS) -> torch.Tensor:
    """fp32 [n] on the tensors' device: each tensor's sum of squares, accumulated in fp32.

    Tensors may differ in size and dtype (fp32, bf16, fp16); all must share one device (CUDA,
    or CPU under the Triton interpreter). Non-contiguous tensors are read in place when their
    storage is dense (permuted/transposed views), otherwise copied with ``.contiguous()``.
    ``block`` (a power of two) and ``iters`` set the chunk one program reduces.
    """
    n = len(tensors)
    if n == 0:
        return torch.zeros(0, dtype=torch.float32)
    if block <= 0 or block & (block - 1) or iters < 1:
        raise ValueError(f"block={block} must be a power of two and iters={iters} at least 1")
    device = tensors[0].device
    for i, t in enumerate(tensors):
        if t.device != device:
            raise ValueError(f"tensor {i} is on {t.device}, tensor 0 on {device}: all must share one device")
        if t.dtype not in _TL_DTYPES:
            raise ValueError(f"tensor {i} has dtype {t.dtype}; the Triton kernel accepts "
                             f"{', '.join(str(d) for d in SUPPORTED_DTYPES)} (use the torch backend)")
    if INTERPRETED and device.type != "cpu":
        raise RuntimeError(f"TRITON_INTERPRET=1 runs the kernel on CPU tensors only, got {device} tensors")
    if not INTERPRETED and device.type != "cuda":
        raise RuntimeError(f"the compiled Triton kernel needs CUDA tensors, got {device} "
                           "(set TRITON_INTERPRET=1 before importing kernels/ to run it on CPU)")

    # Keep the dense views (and any copies) alive until the launches are queued.
    dense = [_dense_view(t) for t in tensors]
    chunk = block * iters
    by_dtype: Dict[torch.dtype, List[int]] = {}
    for i, t in enumerate(dense):
        by_dtype.setdefault(t.dtype, []).append(i)

    seg_start = [0] * n
    seg_stop = [0] * n
    block_tensor: List[int] = []
    block_start: List[int] = []
    launches = []  # (dtype, first chunk, number of chunks)
    for dtype, members in by_dtype.items():
        first = len(block_tensor)
        for i in members:
            starts = range(0, dense[i].numel(), chunk)
            seg_start[i] = len(block_tensor)
            block_tensor.extend([i] * len(starts))
            block_start.extend(starts)
            seg_stop[i] = len(block_tensor)
        launches.append((dtype, first, len(block_tensor) - first))
    num_blocks = len(block_tensor)

    # One host-to-device copy of all tables: [ptrs n | sizes n | starts n | ends n | block_tensor | block_start].
    table = torch.tensor([t.data_ptr() for t in dense] + [t.numel() for t in dense] + seg_start + seg_stop
                         + block_tensor + block_start, dtype=torch.int64).to(device)
    ptrs, sizes, starts, stops = table[:n], table[n:2 * n], table[2 * n:3 * n], table[3 * n:4 * n]
    blocks_t, blocks_s = table[4 * n:4 * n + num_blocks], table[4 * n + num_blocks:]

    partials = _new_buffer(max(num_blocks, 1), device)
    out = _new_buffer(n, device)
    for dtype, first, count in launches:
        if count:
            _chunk_sumsq_kernel[(count,)](ptrs, sizes, blocks_t, blocks_s, partials, first,
                                          DTYPE=_TL_DTYPES[dtype], BLOCK=block, ITERS=iters)
    _segment_sum_kernel[(n,)](partials, starts, stops, out, BLOCK=256)
    return out


"""Triton CountSketch accumulation for the gradient probes: out[h(j)] += s(j) * grad[j]
for every element j of a (shard of a) 2-D matrix, with the bucket h and sign s hashed
on the fly from the element's index in the FULL matrix.

Imported only through ``kernels.dispatch`` (it imports Triton). Under ``TRITON_INTERPRET=1``
(set before this module is first imported) it runs on CPU tensors for tests.

The hash is the gradient probes' (``count_sketch_hash`` in kernels/reference.py, used by
megatron_hds/mixing/probes.py):
    z = splitmix64(splitmix64(j) ^ key);  bucket = (z >> 33) mod m;  sign = +1 if z odd else -1
in wrap-around uint64 arithmetic. The torch path keeps a table of (bucket, sign) per
element, 5 bytes per probed element; computing them here instead keeps the probe's memory
independent of the matrix sizes and reads only the gradient. Buckets are summed with
atomics, so on a GPU the fp32 sum order (and the last bits) vary from run to run, as with
torch's index_add_ on CUDA.
"""

import torch
import triton
import triton.language as tl

__all__ = ["count_sketch_add", "SUPPORTED_DTYPES", "INTERPRETED"]

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DEFAULT_BLOCK = 1024
_UINT64 = (1 << 64) - 1


@triton.jit
def _splitmix64(x):
    z = x + 0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    return z ^ (z >> 31)


# No specialisation on the integer arguments: a value of 1 would otherwise become a constexpr.
@triton.jit(do_not_specialize=["n_elements", "n_cols", "row_offset", "col_offset", "full_cols", "key",
                               "sketch_size"])
def _count_sketch_kernel(grad, out, n_elements, n_cols, row_offset, col_offset, full_cols, key, sketch_size,
                         BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    row = offs // n_cols
    col = offs - row * n_cols
    index = (row + row_offset).to(tl.uint64) * full_cols.to(tl.uint64) + (col + col_offset).to(tl.uint64)
    z = _splitmix64(_splitmix64(index) ^ key.to(tl.uint64))
    bucket = ((z >> 33) % sketch_size.to(tl.uint64)).to(tl.int32)
    sign = (z & 1).to(tl.float32) * 2.0 - 1.0
    value = tl.load(grad + offs, mask=mask, other=0.0).to(tl.float32)
    tl.atomic_add(out + bucket, value * sign, mask=mask, sem="relaxed")  # no ordering needed: a sum


INTERPRETED = type(_count_sketch_kernel).__name__ == "InterpretedFunction"


def count_sketch_add(grad: torch.Tensor, out: torch.Tensor, key: int, row_offset: int = 0, col_offset: int = 0,
                     full_cols: int = None, block: int = DEFAULT_BLOCK) -> None:
    """out[bucket(j)] += sign(j) * grad[r, c] for the 2-D grad, j = (r + row_offset) * full_cols
    + (c + col_offset), key a 64-bit hash key (signed or unsigned); out is fp32 [m], m >= 1."""
    if grad.dim() != 2:
        raise ValueError(f"count_sketch_add takes a 2-D gradient, got shape {tuple(grad.shape)}")
    if grad.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"gradient dtype {grad.dtype} is not one of {SUPPORTED_DTYPES}")
    if out.dtype != torch.float32 or out.dim() != 1 or out.numel() < 1 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous non-empty fp32 vector, got {out.dtype} {tuple(out.shape)}")
    if grad.device != out.device or (INTERPRETED and grad.device.type != "cpu") \
            or (not INTERPRETED and grad.device.type != "cuda"):
        raise RuntimeError(f"the sketch kernel runs on {'CPU (TRITON_INTERPRET=1)' if INTERPRETED else 'CUDA'} "
                           f"tensors; got grad on {grad.device} and out on {out.device}")
    full_cols = grad.shape[1] if full_cols is None else full_cols
    if min(row_offset, col_offset) < 0 or full_cols < col_offset + grad.shape[1]:
        raise ValueError(f"offsets ({row_offset}, {col_offset}) and full_cols {full_cols} do not place a "
                         f"{tuple(grad.shape)} shard inside a matrix")
    n = grad.numel()
    if n == 0:
        return
    grad = grad.contiguous()
    _count_sketch_kernel[(triton.cdiv(n, block),)](
        grad, out, n, grad.shape[1], row_offset, col_offset, full_cols, key & _UINT64, out.numel(), BLOCK=block)

"""Plain-torch twins of the Triton kernels: same signatures, the test oracle and the CPU path."""

from typing import Optional, Sequence, Tuple

import torch

__all__ = ["multi_tensor_sum_of_squares", "cross_entropy_partials", "cross_entropy_loss", "cross_entropy_backward",
           "signed64", "splitmix64", "count_sketch_hash", "count_sketch_add"]


def multi_tensor_sum_of_squares(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """fp32 [n]: each tensor's sum of squares, accumulated in fp32 (an empty tensor gives 0).

    The result lives on the tensors' device (CPU for an empty list). Gradients are not tracked.
    """
    if len(tensors) == 0:
        return torch.zeros(0, dtype=torch.float32)
    with torch.no_grad():
        return torch.stack([t.detach().float().pow(2).sum() for t in tensors])


def _valid(target: torch.Tensor, ignore_index: int, loss_mask: Optional[torch.Tensor]) -> torch.Tensor:
    valid = target != ignore_index
    return valid if loss_mask is None else valid & (loss_mask.reshape(-1) != 0)


def _local_target(target: torch.Tensor, vocab_start: int, n_cols: int, ignore_index: int):
    """(column of the target in this shard, clamped into range; whether it is really here)."""
    local = target - vocab_start
    here = (local >= 0) & (local < n_cols) & (target != ignore_index)
    return local.clamp(0, n_cols - 1), here


def cross_entropy_partials(logits: torch.Tensor, target: torch.Tensor, vocab_start: int,
                           ignore_index: int = -100) -> torch.Tensor:
    """fp32 [3, N]: per row of ``logits`` [N, V_local] (this shard's columns start at global id
    ``vocab_start``) the max, the sum of exp(logit - max), and the target logit (0 when the
    target is outside this shard or is ``ignore_index``)."""
    with torch.no_grad():
        x = logits.detach().float()
        n_cols = x.shape[1]
        row_max = x.max(dim=1).values
        sum_exp = torch.sub(x, row_max.unsqueeze(1)).exp_().sum(dim=1)  # a new tensor: x may be the logits
        local, here = _local_target(target, vocab_start, n_cols, ignore_index)
        target_logit = x.gather(1, local.unsqueeze(1)).squeeze(1).masked_fill(~here, 0.0)
        return torch.stack([row_max, sum_exp, target_logit])


def cross_entropy_loss(partials: torch.Tensor, target: torch.Tensor, ignore_index: int = -100,
                       loss_mask: Optional[torch.Tensor] = None, domain_ids: Optional[torch.Tensor] = None,
                       domain_sums: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(loss fp32 [N], stats fp32 [2, N] = per-row (max, log(sum_exp)) for backward) from the
    global partials [3, N]. Tokens whose target is
    ``ignore_index`` or whose ``loss_mask`` is 0 get loss 0 and are not counted. With
    ``domain_ids`` [N] (ids in [0, D)) and ``domain_sums`` fp32 [2D], adds each domain's loss
    sum to ``domain_sums[:D]`` and its token count to ``domain_sums[D:]``."""
    with torch.no_grad():
        row_max, sum_exp, target_logit = partials
        log_sum_exp = sum_exp.log()
        valid = _valid(target, ignore_index, loss_mask)
        # max - target first: exact when they are close, whatever their magnitude.
        loss = torch.where(valid, (row_max - target_logit) + log_sum_exp, 0.0)
        if domain_sums is not None:
            num_domains = domain_sums.numel() // 2
            ids = domain_ids.reshape(-1)
            domain_sums[:num_domains].index_add_(0, ids, loss.to(domain_sums.dtype))
            domain_sums[num_domains:].index_add_(0, ids, valid.to(domain_sums.dtype))
        return loss, torch.stack([row_max, log_sum_exp])


def cross_entropy_backward(logits: torch.Tensor, target: torch.Tensor, stats: torch.Tensor, grad_loss: torch.Tensor,
                           vocab_start: int, ignore_index: int = -100, loss_mask: Optional[torch.Tensor] = None,
                           out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """d(sum_i grad_loss[i] * loss[i]) / d logits, [N, V_local] in the logits' dtype, written
    into ``out`` (a new tensor when None; may be ``logits`` itself). Ignored / masked tokens
    get a zero row."""
    with torch.no_grad():
        x = logits.detach().float()
        if out is not None and out.dtype == torch.float32:
            # fp32 output: the softmax is computed in the output's memory (no temporary; when out
            # is the logits this is the in-place backward, the CPU training path).
            grad = out.detach()  # detach: `out` may be a leaf that requires grad (the logits)
            if grad.data_ptr() != x.data_ptr():
                grad.copy_(x)
            grad.sub_(stats[0].unsqueeze(1)).sub_(stats[1].unsqueeze(1)).exp_()
        else:
            grad = torch.sub(x, stats[0].unsqueeze(1)).sub_(stats[1].unsqueeze(1)).exp_()  # softmax, a new tensor
        local, here = _local_target(target, vocab_start, x.shape[1], ignore_index)
        grad.scatter_add_(1, local.unsqueeze(1), -here.to(grad.dtype).unsqueeze(1))
        scale = torch.where(_valid(target, ignore_index, loss_mask), grad_loss.reshape(-1).float(), 0.0)
        grad.mul_(scale.unsqueeze(1))
        if out is None:
            return grad.to(logits.dtype)
        if grad.data_ptr() != out.data_ptr():
            out.detach().copy_(grad)
        return out


# ---- CountSketch on global element indices (the gradient probes; kernels/sketch.py) -----------
def signed64(value: int) -> int:
    """A 64-bit pattern as the signed int64 torch stores."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


_GAMMA = signed64(0x9E3779B97F4A7C15)
_MIX1 = signed64(0xBF58476D1CE4E5B9)
_MIX2 = signed64(0x94D049BB133111EB)


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser on int64 tensors (two's-complement wrap-around arithmetic)."""
    z = x + _GAMMA
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def count_sketch_hash(flat_index: torch.Tensor, key: int, sketch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(bucket int32 in [0, m), sign int8 in {-1, +1}) of each global index under `key`."""
    h = splitmix64(splitmix64(flat_index.reshape(-1)) ^ signed64(key))
    bucket = (_shr(h, 33) % sketch_size).to(torch.int32)
    sign = ((h & 1) * 2 - 1).to(torch.int8)
    return bucket, sign


def count_sketch_add(grad: torch.Tensor, out: torch.Tensor, key: int, row_offset: int = 0, col_offset: int = 0,
                     full_cols: Optional[int] = None) -> None:
    """out[bucket(j)] += sign(j) * grad[r, c] over the 2-D grad, j = (r + row_offset) * full_cols
    + (c + col_offset): the hash computed here for every element (the oracle; GradientProbe's
    torch path keeps a table of it instead)."""
    rows, cols = grad.shape
    full_cols = cols if full_cols is None else full_cols
    with torch.no_grad():
        r = torch.arange(rows, dtype=torch.int64, device=grad.device) + row_offset
        c = torch.arange(cols, dtype=torch.int64, device=grad.device) + col_offset
        bucket, sign = count_sketch_hash(r[:, None] * full_cols + c[None, :], key, out.numel())
        out.index_add_(0, bucket, grad.detach().reshape(-1).float() * sign)

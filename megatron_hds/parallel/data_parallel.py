"""Gradient averaging across data-parallel ranks (bucketed) and the global gradient norm.

Each DP rank's gradients are the mean over its micro-batches (see schedules), so the
average over DP is the gradient of the mean loss over the global batch. The global
norm sums squares over this rank's parameters, skipping copies that another rank of
the same model replica also holds (TP-replicated tensors off TP rank 0, and the last
stage's copy of tied embeddings), then all-reduces over the TP x PP group; DP ranks
hold identical gradients after averaging, so they are not summed again, unless each
holds a different slice of them (the distributed optimizer: ``sharded_over_dp``).
"""
from __future__ import annotations

import math
from typing import Iterable, List, Tuple

import torch
import torch.distributed as dist

import kernels
from megatron_hds.parallel.layers import is_tensor_parallel
from megatron_hds.parallel.mappings import group_size
from megatron_hds.parallel.state import ParallelState


class GradientAllReducer:
    """Averages .grad over the DP group in flat buckets of about `bucket_size_mb` (one all-reduce each)."""

    def __init__(self, params: Iterable[torch.nn.Parameter], dp_group, bucket_size_mb: float = 25.0):
        self.dp_group = dp_group
        self.buckets: List[List[torch.nn.Parameter]] = []
        limit = int(bucket_size_mb * 2 ** 20)
        current, current_bytes = [], 0
        # Same parameter order on every DP rank (same model), so buckets line up across ranks.
        for p in params:
            if not p.requires_grad:
                continue
            if current and (current_bytes + p.numel() * p.element_size() > limit or p.dtype != current[0].dtype):
                self.buckets.append(current)
                current, current_bytes = [], 0
            current.append(p)
            current_bytes += p.numel() * p.element_size()
        if current:
            self.buckets.append(current)

    @torch.no_grad()
    def allreduce(self) -> None:
        size = group_size(self.dp_group)
        if size == 1:
            return
        for bucket in self.buckets:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in bucket]
            flat = torch.cat([g.reshape(-1) for g in grads])
            flat.div_(size)
            dist.all_reduce(flat, group=self.dp_group)
            offset = 0
            for p, g in zip(bucket, grads):
                n = g.numel()
                chunk = flat[offset:offset + n].view_as(g)
                if p.grad is None:
                    p.grad = chunk.clone()
                else:
                    p.grad.copy_(chunk)
                offset += n


def _counts_towards_norm(param: torch.Tensor, state: ParallelState) -> bool:
    if getattr(param, "shared_embedding_duplicate", False):
        return False
    return is_tensor_parallel(param) or state.tp_rank == 0


@torch.no_grad()
def global_norm(pairs: Iterable[Tuple[torch.nn.Parameter, torch.Tensor]], state: ParallelState,
                sharded_over_dp: bool = False) -> float:
    """L2 norm over the whole model of (parameter, gradient) pairs, each distinct parameter
    counted once; the gradient may live elsewhere than .grad (e.g. fp32 master grads).
    ``sharded_over_dp``: each DP rank holds different pieces of the gradients (sum over DP too)."""
    grads = [grad for p, grad in pairs if grad is not None and _counts_towards_norm(p, state)]
    total = torch.zeros((), dtype=torch.float32, device=state.device)
    if grads:  # one multi-tensor launch on GPU (kernels/), the torch reference elsewhere
        total += kernels.multi_tensor_sum_of_squares(grads).sum().to(state.device)
    if group_size(state.model_parallel_group) > 1:
        dist.all_reduce(total, group=state.model_parallel_group)
    if sharded_over_dp and group_size(state.dp_group) > 1:
        dist.all_reduce(total, group=state.dp_group)
    return math.sqrt(total.item())


def global_grad_norm(params: Iterable[torch.nn.Parameter], state: ParallelState) -> float:
    """L2 norm of the full model's gradient (.grad), each distinct parameter counted once."""
    return global_norm(((p, p.grad) for p in params), state)


def clip_grad_norm_(params: Iterable[torch.nn.Parameter], max_norm: float, state: ParallelState) -> float:
    """Scale gradients so the global norm is at most max_norm; returns the norm before clipping."""
    params = [p for p in params if p.grad is not None]
    norm = global_grad_norm(params, state)
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for p in params:
            p.grad.mul_(scale)
    return norm

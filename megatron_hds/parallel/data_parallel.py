"""Gradient averaging across data-parallel ranks (bucketed) and the global gradient norm.

Each DP rank's gradients are the mean over its micro-batches (see schedules), so the
average over DP is the gradient of the mean loss over the global batch. The global
norm sums squares over this rank's parameters, skipping copies that another rank of
the same model replica also holds (TP-replicated tensors off TP rank 0, and the last
stage's copy of tied embeddings), then all-reduces over the TP x PP group; DP ranks
hold identical gradients after averaging, so they are not summed again, unless each
holds a different slice of them (the distributed optimizer: ``sharded_over_dp``).
Clipping by that norm is the optimizer's (optim/optimizer.py, ``clip_grads_by_norm_``).
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Tuple

import torch
import torch.distributed as dist

from megatron_hds import kernels
from megatron_hds.parallel.layers import is_tensor_parallel
from megatron_hds.parallel.mappings import group_size
from megatron_hds.parallel.state import ParallelState


class GradientAllReducer:
    """Averages .grad over the DP group in flat buckets of about `bucket_size_mb` (one all-reduce each).

    ``overlap`` (Megatron's --overlap-grad-reduce): buckets are filled from the last parameters
    backwards, and once ``arm()`` has been called (before the last micro-batch's backward), a
    bucket's asynchronous all-reduce starts as soon as all its gradients are final, while the
    backward of earlier layers continues. ``allreduce()`` then starts the buckets still
    waiting, waits for all, and writes the averages back. A gradient reduced during the
    backward is the one before ``finalize_model_grads``, so with overlap call ``allreduce()``
    first: both are sums, so either order gives the same gradient.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], dp_group, bucket_size_mb: float = 25.0,
                 overlap: bool = False):
        self.dp_group = dp_group
        self.overlap = overlap
        self.buckets: List[List[torch.nn.Parameter]] = []
        limit = int(bucket_size_mb * 2 ** 20)
        current, current_bytes = [], 0
        params = [p for p in params if p.requires_grad]
        # Same parameter order on every DP rank (same model), so buckets line up across ranks.
        # Backward produces the last layers' gradients first: with overlap, bucket from the end.
        for p in reversed(params) if overlap else params:
            if current and (current_bytes + p.numel() * p.element_size() > limit or p.dtype != current[0].dtype):
                self.buckets.append(current)
                current, current_bytes = [], 0
            current.append(p)
            current_bytes += p.numel() * p.element_size()
        if current:
            self.buckets.append(current)
        self._armed = False
        self._pending: List[int] = []
        self._in_flight: Dict[int, Tuple[torch.Tensor, object]] = {}
        if overlap and group_size(dp_group) > 1:
            self._bucket_of = {p: k for k, bucket in enumerate(self.buckets) for p in bucket}
            for p in params:
                p.register_post_accumulate_grad_hook(self._gradient_final)

    def arm(self) -> None:
        """The next backward is the step's last: reduce each bucket as soon as it is complete."""
        self._armed = True
        self._pending = [len(bucket) for bucket in self.buckets]

    def _gradient_final(self, param: torch.nn.Parameter) -> None:
        if not self._armed:
            return
        k = self._bucket_of[param]
        self._pending[k] -= 1
        if self._pending[k] == 0:
            self._start(k)

    @torch.no_grad()
    def _start(self, k: int) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.buckets[k]]
        flat = torch.cat([g.reshape(-1) for g in grads])
        flat.div_(group_size(self.dp_group))
        self._in_flight[k] = (flat, dist.all_reduce(flat, group=self.dp_group, async_op=True))

    @torch.no_grad()
    def allreduce(self) -> None:
        self._armed = False
        if group_size(self.dp_group) == 1:
            return
        # A bucket not started during backward is started and finished alone, so without overlap
        # only one bucket's flat copy exists at a time.
        for k in range(len(self.buckets)):
            if k not in self._in_flight:
                self._start(k)
            flat, handle = self._in_flight.pop(k)
            handle.wait()
            offset = 0
            for p in self.buckets[k]:
                n = p.numel()
                chunk = flat[offset:offset + n].view_as(p)
                if p.grad is None:
                    p.grad = chunk.clone()
                else:
                    p.grad.copy_(chunk)
                offset += n

    @property
    def buckets_started_in_backward(self) -> int:
        """Buckets whose all-reduce is already running (for tests and logs)."""
        return len(self._in_flight)


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

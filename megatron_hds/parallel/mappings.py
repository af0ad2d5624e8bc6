"""Autograd-aware collectives along the tensor-parallel group.

Activations are laid out [seq, batch, hidden] throughout the model. Tensor
parallelism splits the last (hidden) dimension; sequence parallelism splits the
first (seq) dimension. Each collective is a small autograd Function whose backward
is the adjoint collective. A None group or a group of one rank makes every
function the identity (single-process runs).

Under torch.compile (``--torch-compile``) the collectives are the functional,
out-of-place ones that dynamo traces as graph ops. The in-place c10d calls used in
eager mode are also traced, but under torch 2.11 (not 2.6 or 2.13) the graph dropped the
autograd edge of a Function whose forward ran one: the loss was right and every
gradient behind the collective was zero (tests/parallel/test_parity.py -k compiled).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as functional


def group_size(group: Optional[dist.ProcessGroup]) -> int:
    return 1 if group is None else dist.get_world_size(group)


def group_rank(group: Optional[dist.ProcessGroup]) -> int:
    return 0 if group is None else dist.get_rank(group)


def _tracing() -> bool:
    """True while torch.compile traces the caller (functional collectives are needed)."""
    return torch.compiler.is_compiling()


def _all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    if group_size(group) == 1:
        return x
    if _tracing():
        return functional.wait_tensor(functional.all_reduce(x.contiguous(), "sum", group))
    x = x.contiguous().clone()
    dist.all_reduce(x, group=group)
    return x


def _split_last(x: torch.Tensor, group) -> torch.Tensor:
    size = group_size(group)
    if size == 1:
        return x
    return x.chunk(size, dim=-1)[group_rank(group)].contiguous()


def _gather_last(x: torch.Tensor, group) -> torch.Tensor:
    size = group_size(group)
    if size == 1:
        return x
    if _tracing():
        return functional.wait_tensor(functional.all_gather_tensor(x.contiguous(), x.dim() - 1, group))
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=-1)


# Newer torch renames the single-tensor collectives; both spellings take (output, input, ..., group=).
reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _split_first(x: torch.Tensor, group) -> torch.Tensor:
    return x.chunk(group_size(group), dim=0)[group_rank(group)].contiguous()


def _gather_first(x: torch.Tensor, group) -> torch.Tensor:
    if _tracing():
        return functional.wait_tensor(functional.all_gather_tensor(x.contiguous(), 0, group))
    out = torch.empty((x.shape[0] * group_size(group), *x.shape[1:]), dtype=x.dtype, device=x.device)
    all_gather_single(out, x.contiguous(), group=group)
    return out


def _reduce_scatter_first(x: torch.Tensor, group) -> torch.Tensor:
    if _tracing():
        return functional.wait_tensor(functional.reduce_scatter_tensor(x.contiguous(), "sum", 0, group))
    out = torch.empty((x.shape[0] // group_size(group), *x.shape[1:]), dtype=x.dtype, device=x.device)
    reduce_scatter_single(out, x.contiguous(), group=group)
    return out


class _CopyToTP(torch.autograd.Function):
    """Forward: identity. Backward: sum the input gradient over TP (input of a column-parallel op)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad, ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    """Forward: sum partial results over TP. Backward: identity (output of a row-parallel op)."""

    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _ScatterToTP(torch.autograd.Function):
    """Forward: keep this rank's slice of the last dim. Backward: gather the slices."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split_last(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _gather_last(grad, ctx.group), None


class _GatherFromTP(torch.autograd.Function):
    """Forward: concatenate the TP slices of the last dim. Backward: keep this rank's slice."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _gather_last(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _split_last(grad, ctx.group), None


class _ScatterToSequence(torch.autograd.Function):
    """Forward: keep this rank's chunk of the sequence. Backward: gather the chunks."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split_first(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _gather_first(grad, ctx.group), None


class _GatherFromSequence(torch.autograd.Function):
    """Forward: all-gather the sequence (input of a column-parallel op). Backward: reduce-scatter."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _gather_first(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _reduce_scatter_first(grad, ctx.group), None


class _ReduceScatterToSequence(torch.autograd.Function):
    """Forward: sum partial results and keep this rank's sequence chunk (output of a row-parallel op).
    Backward: all-gather."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _reduce_scatter_first(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _gather_first(grad, ctx.group), None


def copy_to_tp(x: torch.Tensor, group) -> torch.Tensor:
    return _CopyToTP.apply(x, group) if group_size(group) > 1 else x


def reduce_from_tp(x: torch.Tensor, group) -> torch.Tensor:
    return _ReduceFromTP.apply(x, group) if group_size(group) > 1 else x


def scatter_to_tp(x: torch.Tensor, group) -> torch.Tensor:
    return _ScatterToTP.apply(x, group) if group_size(group) > 1 else x


def gather_from_tp(x: torch.Tensor, group) -> torch.Tensor:
    return _GatherFromTP.apply(x, group) if group_size(group) > 1 else x


def scatter_to_sequence(x: torch.Tensor, group) -> torch.Tensor:
    return _ScatterToSequence.apply(x, group) if group_size(group) > 1 else x


def gather_from_sequence(x: torch.Tensor, group) -> torch.Tensor:
    return _GatherFromSequence.apply(x, group) if group_size(group) > 1 else x


def reduce_scatter_to_sequence(x: torch.Tensor, group) -> torch.Tensor:
    return _ReduceScatterToSequence.apply(x, group) if group_size(group) > 1 else x

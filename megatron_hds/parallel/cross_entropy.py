"""Vocab-parallel cross entropy returning the per-token loss.

Each TP rank holds logits for a contiguous slice of the (padded) vocab. The loss is
computed without gathering the vocab: a max over TP for stability, then summed
exp and the target logit are all-reduced. Per-token output (not a mean) because
per-domain loss accounting needs it. ``vocab_parallel_cross_entropy`` is the one
entry point; fused kernels will be dispatched from it.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_hds.parallel.mappings import group_rank, group_size


def _all_reduce(x: torch.Tensor, group, op=dist.ReduceOp.SUM) -> None:
    if group_size(group) > 1:
        dist.all_reduce(x, op=op, group=group)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, group):
        ctx.input_dtype = logits.dtype
        logits = logits.float()
        vocab_local = logits.size(-1)
        start = group_rank(group) * vocab_local

        logits_max = logits.max(dim=-1).values
        _all_reduce(logits_max, group, dist.ReduceOp.MAX)
        shifted = logits - logits_max.unsqueeze(-1)

        # The target logit lives on exactly one rank; others contribute zero.
        outside = (target < start) | (target >= start + vocab_local)
        local_target = (target - start).masked_fill(outside, 0)
        target_logit = shifted.gather(-1, local_target.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
        _all_reduce(target_logit, group)

        exp = shifted.exp_()  # in place: `shifted` is not needed any more, and logits can be large
        sum_exp = exp.sum(dim=-1)
        _all_reduce(sum_exp, group)
        softmax = exp.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, local_target, outside)
        return sum_exp.log_().sub_(target_logit)

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        softmax, local_target, outside = ctx.saved_tensors
        # d loss / d logits = softmax - onehot(target), where the one-hot lives on this rank's slice.
        grad = softmax  # reused in place: this graph is not run backward twice (no retain_graph)
        onehot = (~outside).to(grad.dtype).unsqueeze(-1)
        grad.scatter_add_(-1, local_target.unsqueeze(-1), -onehot)
        grad.mul_(grad_loss.unsqueeze(-1))
        return grad.to(ctx.input_dtype), None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, tp_group=None) -> torch.Tensor:
    """Per-token loss (fp32, shape of `target`) from this rank's vocab slice of `logits`.

    logits: [..., vocab / TP] in any float dtype; target: [...] global token ids.
    """
    return _VocabParallelCrossEntropy.apply(logits, target, tp_group)

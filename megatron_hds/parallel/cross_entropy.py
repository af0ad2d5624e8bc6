"""Vocab-parallel cross entropy returning the per-token loss, with per-domain loss sums.

Each TP rank holds logits for a contiguous slice of the (padded) vocab. The loss is
computed without gathering the vocab: each rank reduces its slice to (max, sum of exp
relative to that max, target logit) per token, and two all-reduces combine them (MAX of
the maxima; then the rescaled sums of exp and the target logits, one SUM). Per-token output
(not a mean) because the schedule's loss function and the per-domain accounting need it.
``vocab_parallel_cross_entropy`` is the one entry point; the arithmetic runs in kernels/
(a fused Triton kernel on GPU, its torch twin otherwise), which also adds per-domain loss
sums and token counts in the same pass.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from megatron_hds import kernels
from megatron_hds.parallel.mappings import group_rank, group_size


def _combine_over_tp(partials: torch.Tensor, group) -> None:
    """Local (max, sum_exp, target_logit) [3, N] -> the same over the whole vocab, in place."""
    local_max = partials[0].clone()
    dist.all_reduce(partials[0], op=dist.ReduceOp.MAX, group=group)
    partials[1].mul_(torch.exp(local_max - partials[0]))
    # The target logit lives on exactly one rank (the others hold 0): one SUM for both rows.
    dist.all_reduce(partials[1:], group=group)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, group, domain_ids, domain_sums, loss_mask,
                ignore_index: int, inplace_backward: bool):
        vocab_local = logits.size(-1)
        vocab_start = group_rank(group) * vocab_local
        rows = logits.detach().reshape(-1, vocab_local)  # a view for our contiguous logits
        if rows.stride(-1) != 1:
            rows = rows.contiguous()
        flat_target = target.reshape(-1)
        mask = None if loss_mask is None else loss_mask.expand(target.shape).reshape(-1)
        ids = None if domain_ids is None else domain_ids.expand(target.shape).reshape(-1)

        partials = kernels.cross_entropy_partials(rows, flat_target, vocab_start, ignore_index)
        if group_size(group) > 1:
            _combine_over_tp(partials, group)
        loss, stats = kernels.cross_entropy_loss(partials, flat_target, ignore_index, mask, ids, domain_sums)

        ctx.save_for_backward(rows, flat_target, stats, mask)
        ctx.logits_shape, ctx.vocab_start = logits.shape, vocab_start
        ctx.ignore_index, ctx.inplace_backward = ignore_index, inplace_backward
        return loss.view(target.shape)

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        rows, target, stats, mask = ctx.saved_tensors
        out = rows if ctx.inplace_backward else None
        grad = kernels.cross_entropy_backward(rows, target, stats, grad_loss.reshape(-1), ctx.vocab_start,
                                              ctx.ignore_index, mask, out)
        if ctx.inplace_backward:
            # The kernel wrote the logits' memory behind autograd's back: a second backward
            # through this graph (retain_graph) must fail loudly, not use the gradient as logits.
            torch.autograd.graph.increment_version(rows)
        return grad.view(ctx.logits_shape), None, None, None, None, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, tp_group=None, *,
                                 domain_ids: Optional[torch.Tensor] = None,
                                 domain_sums: Optional[torch.Tensor] = None,
                                 loss_mask: Optional[torch.Tensor] = None, ignore_index: int = -100,
                                 inplace_backward: bool = False) -> torch.Tensor:
    """Per-token loss (fp32, shape of `target`) from this rank's vocab slice of `logits`.

    logits: [..., vocab / TP] in any float dtype (the Triton kernel takes fp32/bf16/fp16);
    target: [...] global token ids. Tokens whose target is ``ignore_index`` or whose
    ``loss_mask`` (broadcast to target's shape) is 0 get loss 0, no gradient and no count.
    domain_ids (integer ids broadcastable to target's shape, e.g. one per sample) and
    domain_sums (fp32 [2D]) go together: each domain's loss sum is added into
    ``domain_sums[:D]`` and its token count into ``domain_sums[D:]``, in the same pass.
    inplace_backward: write the logits gradient into the logits' memory (saves a logits-sized
    buffer); only for logits nothing else reads after this call, as in the model's head.
    """
    if logits.shape[:-1] != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be target {tuple(target.shape)} plus a vocab dimension")
    return _VocabParallelCrossEntropy.apply(logits, target, tp_group, domain_ids, domain_sums, loss_mask,
                                            ignore_index, inplace_backward)

"""Forward/backward schedules over micro-batches: no pipelining, and 1F1B across pipeline stages.

The 1F1B control flow (``run_1f1b``) is written once against a small communication
interface, so the same code both drives real training (with ``P2P``) and, with a
recording stub, yields the pure micro-batch order that the tests check. Stage r of
P with M micro-batches runs min(P-r-1, M) warmup forwards, then alternates one
forward and one backward, then drains the warmup backwards.

The loss exists only on the last stage. Each micro-batch's scalar loss is divided
by M, so accumulated gradients are those of the mean over this rank's micro-batches;
data_parallel then averages over DP, giving the mean over the global batch.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Dict, List, Optional, Sequence

import torch

from megatron_hds.parallel.p2p import P2P

MicroBatch = Dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, MicroBatch], torch.Tensor]


def masked_mean_loss(per_token_loss: torch.Tensor, micro_batch: MicroBatch) -> torch.Tensor:
    """Mean per-token loss over the micro-batch, honouring an optional 'loss_mask' [b, s]."""
    mask = micro_batch.get("loss_mask")
    if mask is None:
        return per_token_loss.mean()
    mask = mask.to(per_token_loss.dtype)
    return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)


def run_1f1b(num_stages: int, stage: int, num_microbatches: int, forward_step, backward_step, comm) -> None:
    """1F1B for one stage. forward_step(i, x) -> y; backward_step(i, x, y, grad_y) -> grad_x."""
    warmup = min(num_stages - stage - 1, num_microbatches)
    steady = num_microbatches - warmup
    inputs, outputs = deque(), deque()

    for i in range(warmup):
        x = comm.recv_forward()
        y = forward_step(i, x)
        comm.send_forward(y)
        inputs.append(x)
        outputs.append(y)

    x = comm.recv_forward() if steady > 0 else None
    for j in range(steady):
        y = forward_step(warmup + j, x)
        grad_y = comm.send_forward_recv_backward(y)
        inputs.append(x)
        outputs.append(y)
        grad_x = backward_step(j, inputs.popleft(), outputs.popleft(), grad_y)
        if j == steady - 1:
            comm.send_backward(grad_x)
        else:
            x = comm.send_backward_recv_forward(grad_x)

    for j in range(steady, num_microbatches):
        grad_y = comm.recv_backward()
        grad_x = backward_step(j, inputs.popleft(), outputs.popleft(), grad_y)
        comm.send_backward(grad_x)


def forward_backward(model, micro_batches: List[MicroBatch], *, loss_fn: LossFn = masked_mean_loss,
                     forward_only: bool = False,
                     before_last_backward: Optional[Callable[[], None]] = None,
                     grad_only_for: Optional[Sequence[torch.Tensor]] = None) -> List[torch.Tensor]:
    """Run every micro-batch through this rank's stage; accumulate gradients unless forward_only.

    Each micro-batch is a dict with 'tokens' and 'labels' [b, s], and optionally 'loss_mask' [b, s],
    'domains' [b] and 'domain_sums' (fp32 [2D], filled with per-domain loss sums and token counts
    by the loss pass); every stage receives the full list (only the first stage reads tokens, the
    last the rest).
    Returns the detached per-token losses [b, s] of each micro-batch on the last stage, [] elsewhere.
    ``before_last_backward`` runs just before the last micro-batch's backward, after which every
    gradient is final (GradientAllReducer.arm, for --overlap-grad-reduce).
    ``grad_only_for``: this stage's parameters whose gradients are wanted; the backward computes
    only those (and the gradient the pipeline sends upstream), skipping the others' weight
    gradients and, on the first stage, everything below the lowest of them.
    """
    state = model.state
    num_microbatches = len(micro_batches)
    last = state.is_last_stage()
    losses: List[torch.Tensor] = []

    def forward_step(i: int, x: Optional[torch.Tensor]) -> torch.Tensor:
        batch = micro_batches[i]
        if x is not None and not forward_only:
            x.requires_grad_()
        loss_inputs = {key: batch[key] for key in ("domains", "domain_sums", "loss_mask") if key in batch} \
            if last else {}
        out = model(tokens=batch["tokens"] if state.is_first_stage() else None, hidden=x,
                    labels=batch["labels"] if last else None, **loss_inputs)
        if not last:
            return out
        losses.append(out.detach())
        return loss_fn(out, batch) / num_microbatches

    def backward_step(i: int, x, y: torch.Tensor, grad_y: Optional[torch.Tensor]):
        if i == num_microbatches - 1 and before_last_backward is not None:
            before_last_backward()  # backwards run in micro-batch order: this one is the last
        if grad_only_for is None:
            torch.autograd.backward(y, grad_tensors=None if last else grad_y)
        elif grad_only_for or x is not None:
            wanted = [*grad_only_for, *([x] if x is not None else [])]
            torch.autograd.backward(y, grad_tensors=None if last else grad_y, inputs=wanted)
        return x.grad if x is not None else None

    seq_len, micro_batch_size = micro_batches[0]["tokens"].shape[1], micro_batches[0]["tokens"].shape[0]
    dtype = next(model.parameters()).dtype
    comm = P2P(state, state.activation_shape(seq_len, micro_batch_size, model.config.hidden_size), dtype)

    if forward_only:
        with torch.no_grad():
            for i in range(num_microbatches):
                comm.send_forward(forward_step(i, comm.recv_forward()))
    elif state.pp_size == 1:
        for i in range(num_microbatches):
            backward_step(i, None, forward_step(i, None), None)
    else:
        run_1f1b(state.pp_size, state.pp_rank, num_microbatches, forward_step, backward_step, comm)
    return losses

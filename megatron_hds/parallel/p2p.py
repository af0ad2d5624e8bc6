"""Point-to-point transfer of activations and their gradients between neighbouring pipeline stages.

Every exchange is one ``batch_isend_irecv`` (all operations posted before any wait,
grouped on NCCL), so a send paired with a receive in the other direction cannot
deadlock; this works the same on gloo (CPU) and nccl (GPU). Activations have a fixed shape [seq, micro-batch,
hidden] known to both sides, so no shape is exchanged.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist

from megatron_hds.parallel.state import ParallelState


class P2P:
    """Sends and receives for one stage; receive buffers have the given shape, dtype and device."""

    def __init__(self, state: ParallelState, tensor_shape: Sequence[int], dtype: torch.dtype):
        self.state = state
        self.shape = tuple(tensor_shape)
        self.dtype = dtype

    def _exchange(self, send_prev: Optional[torch.Tensor] = None, send_next: Optional[torch.Tensor] = None,
                  recv_prev: bool = False, recv_next: bool = False):
        state = self.state
        ops, from_prev, from_next = [], None, None
        if recv_prev:
            from_prev = torch.empty(self.shape, dtype=self.dtype, device=state.device)
            ops.append(dist.P2POp(dist.irecv, from_prev, state.prev_stage_rank()))
        if recv_next:
            from_next = torch.empty(self.shape, dtype=self.dtype, device=state.device)
            ops.append(dist.P2POp(dist.irecv, from_next, state.next_stage_rank()))
        if send_prev is not None:
            ops.append(dist.P2POp(dist.isend, send_prev.contiguous(), state.prev_stage_rank()))
        if send_next is not None:
            ops.append(dist.P2POp(dist.isend, send_next.contiguous(), state.next_stage_rank()))
        # One batch: on NCCL the ops are grouped, so a send and a receive with the same peer
        # cannot block each other on the stream; on gloo they are posted before any wait.
        for work in dist.batch_isend_irecv(ops):
            work.wait()
        return from_prev, from_next

    # Each method is a no-op at the pipeline end where there is no neighbour.
    def recv_forward(self) -> Optional[torch.Tensor]:
        return None if self.state.is_first_stage() else self._exchange(recv_prev=True)[0]

    def send_forward(self, activation: torch.Tensor) -> None:
        if not self.state.is_last_stage():
            self._exchange(send_next=activation.detach())

    def recv_backward(self) -> Optional[torch.Tensor]:
        return None if self.state.is_last_stage() else self._exchange(recv_next=True)[1]

    def send_backward(self, grad: Optional[torch.Tensor]) -> None:
        if not self.state.is_first_stage():
            self._exchange(send_prev=grad)

    def send_forward_recv_backward(self, activation: torch.Tensor) -> Optional[torch.Tensor]:
        if self.state.is_last_stage():
            return None
        return self._exchange(send_next=activation.detach(), recv_next=True)[1]

    def send_backward_recv_forward(self, grad: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if self.state.is_first_stage():
            return None
        return self._exchange(send_prev=grad, recv_prev=True)[0]

"""Plain-torch twins of the Triton kernels: same signatures, the test oracle and the CPU path."""

from typing import Sequence

import torch

__all__ = ["multi_tensor_sum_of_squares"]


def multi_tensor_sum_of_squares(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """fp32 [n]: each tensor's sum of squares, accumulated in fp32 (an empty tensor gives 0).

    The result lives on the tensors' device (CPU for an empty list). Gradients are not tracked.
    """
    if len(tensors) == 0:
        return torch.zeros(0, dtype=torch.float32)
    with torch.no_grad():
        return torch.stack([t.detach().float().pow(2).sum() for t in tensors])

"""Triton kernels with plain-torch twins and one dispatch point.

``kernels.reference`` holds the twins (the test oracle); ``kernels.dispatch`` chooses per
call; Triton is imported only when a Triton kernel is actually used.
"""

from megatron_hds.kernels.dispatch import (
    available_backends,
    choose_backend,
    count_sketch_add,
    cross_entropy_backward,
    cross_entropy_loss,
    cross_entropy_partials,
    multi_tensor_sum_of_squares,
)

__all__ = ["available_backends", "choose_backend", "count_sketch_add", "cross_entropy_backward", "cross_entropy_loss",
           "cross_entropy_partials", "multi_tensor_sum_of_squares"]

"""Triton kernels with plain-torch twins and one dispatch point.

``kernels.reference`` holds the twins (the test oracle); ``kernels.dispatch`` chooses per
call; Triton is imported only when a Triton kernel is actually used.

This folder installs as ``megatron_hds.kernels``. When the checkout's root is on ``sys.path``
(``python -m`` from the checkout, pytest, ``PYTHONPATH=checkout``) a plain ``import kernels``
would find it instead of the registry's ``kernels`` package that transformers imports; the
guard below hands such imports to the registry's package, or fails as if nothing were there.
"""

if __name__ == "kernels":
    import importlib
    import os
    import sys

    _checkout = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _path = sys.path[:]
    del sys.modules["kernels"]
    sys.path[:] = [entry for entry in _path if os.path.realpath(entry or os.curdir) != _checkout]
    try:
        # The import system returns whatever sys.modules["kernels"] holds once this file has run.
        sys.modules["kernels"] = importlib.import_module("kernels")
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("No module named 'kernels' (the checkout's kernels/ folder is "
                                  "megatron_hds.kernels)", name="kernels") from error
    finally:
        sys.path[:] = _path
else:
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

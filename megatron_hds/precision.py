"""The training precisions (fp32, and bf16/fp16 from --bf16/--fp16) as torch dtypes: the one map
between a precision's name and its dtype."""

from __future__ import annotations

import torch

from megatron_hds.config import PRECISIONS

# One entry per precision the command line accepts (config.PRECISIONS; tests/test_precision.py).
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def torch_dtype(precision: str) -> torch.dtype:
    """The dtype of a precision name ("fp32", "bf16" or "fp16")."""
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}; accepted: {', '.join(PRECISIONS)}")
    return DTYPES[precision]


def precision_of(dtype: torch.dtype) -> str | None:
    """The precision name of a dtype, None for a dtype no precision trains in."""
    return next((name for name, d in DTYPES.items() if d == dtype), None)

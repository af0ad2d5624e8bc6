"""The one precision -> dtype map covers every precision the command line accepts, both ways."""

import pytest
import torch

from megatron_hds.config import PRECISIONS
from megatron_hds.precision import DTYPES, precision_of, torch_dtype


def test_every_command_line_precision_has_its_dtype_and_back():
    assert tuple(DTYPES) == PRECISIONS
    assert [torch_dtype(p) for p in PRECISIONS] == [torch.float32, torch.bfloat16, torch.float16]
    assert [precision_of(torch_dtype(p)) for p in PRECISIONS] == list(PRECISIONS)
    assert precision_of(torch.float64) is None


def test_an_unknown_precision_is_named():
    with pytest.raises(ValueError, match="unknown precision 'fp8'; accepted: fp32, bf16, fp16"):
        torch_dtype("fp8")

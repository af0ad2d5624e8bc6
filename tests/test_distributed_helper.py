"""The multi-process helper returns per-rank results in order and surfaces a rank's traceback."""
import pytest
import torch
import torch.distributed as dist

from tests.distributed import run_distributed


def _sum_of_ranks():
    t = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(t)
    return dist.get_rank(), t.item()


def _rank_one_fails():
    if dist.get_rank() == 1:
        raise ValueError("boom on purpose")
    dist.barrier()  # rank 0 would wait forever: the helper must not


def test_results_and_failures():
    assert run_distributed(_sum_of_ranks, 2) == [(0, 1.0), (1, 1.0)]
    with pytest.raises(AssertionError, match=r"(?s)rank 1 failed.*_rank_one_fails.*ValueError: boom on purpose"):
        run_distributed(_rank_one_fails, 2, timeout=60)

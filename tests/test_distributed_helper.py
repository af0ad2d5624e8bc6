"""The multi-process helper returns per-rank results in order and surfaces a rank's traceback."""
import pickle

import pytest
import torch
import torch.distributed as dist

from tests import distributed
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


def _a_tensor():
    return torch.arange(1000.0)


def test_a_returned_tensor_outlives_its_rank():
    """A rank exits right after returning; the parent may read its result only afterwards. A tensor
    passed as a shared-memory handle would be lost with the process ("Connection reset by peer")."""
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.Queue()
    rank = ctx.Process(target=distributed._worker, args=(0, 1, distributed.free_port(), "gloo", results, _a_tensor, ()))
    rank.start()
    rank.join(timeout=120)
    assert rank.exitcode == 0
    _, ok, value = results.get(timeout=10)
    assert ok and torch.equal(pickle.loads(value), torch.arange(1000.0))

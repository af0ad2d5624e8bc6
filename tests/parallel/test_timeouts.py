"""--distributed-timeout-minutes reaches every process group: a collective on a group that
ParallelState made fails after the timeout when a peer never joins it (torch.distributed
would give such a group its own, much longer default)."""

import time

import pytest
import torch
import torch.distributed as dist

from megatron_hds.config import ParallelConfig
from megatron_hds.parallel.state import ParallelState
from tests.distributed import run_distributed

TIMEOUT_MINUTES = 0.05  # 3 s


def _stuck_peer():
    state = ParallelState.from_config(ParallelConfig(distributed_timeout_minutes=TIMEOUT_MINUTES))
    if dist.get_rank() == 1:  # a hung rank: alive, never reaching the collective
        time.sleep(60 * TIMEOUT_MINUTES + 1.5)
        return None
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="Timed out"):
        dist.all_reduce(torch.ones(1), group=state.dp_group)
    return time.monotonic() - start


def test_a_group_collective_times_out_when_a_peer_hangs():
    waited = run_distributed(_stuck_peer, 2, timeout=60)[0]
    assert 60 * TIMEOUT_MINUTES - 0.5 < waited < 60 * TIMEOUT_MINUTES + 5


def test_the_timeout_must_be_positive():
    with pytest.raises(ValueError, match="distributed_timeout_minutes=0"):
        ParallelConfig(distributed_timeout_minutes=0)

"""RNG tracker: forked streams are isolated from the default generator and checkpointable."""
import pytest
import torch

from megatron_hds.parallel.random import (TENSOR_PARALLEL_RNG, RNGStatesTracker, build_rng_tracker,
                                          seed_default_generator)

CPU = torch.device("cpu")


def test_fork_leaves_the_default_stream_untouched():
    seed_default_generator(5, pp_rank=0, device=CPU)
    expected = torch.rand(4)
    seed_default_generator(5, pp_rank=0, device=CPU)
    tracker = build_rng_tracker(5, tp_rank=0, pp_rank=0, device=CPU)
    with tracker.fork():
        inside = torch.rand(4)
    assert torch.equal(torch.rand(4), expected)
    assert not torch.equal(inside, expected)


def test_forked_stream_continues_and_restores_from_state_dict():
    tracker = build_rng_tracker(5, tp_rank=1, pp_rank=0, device=CPU)
    saved = tracker.state_dict()
    with tracker.fork(TENSOR_PARALLEL_RNG):
        first, second = torch.rand(3), torch.rand(3)
    with tracker.fork():
        third = torch.rand(3)
    assert not torch.equal(first, second) and not torch.equal(second, third)
    tracker.load_state_dict(saved)
    with tracker.fork():
        assert torch.equal(torch.rand(3), first)


def test_streams_differ_by_tp_rank_and_stage():
    draws = []
    for tp_rank, pp_rank in [(0, 0), (1, 0), (0, 1)]:
        with build_rng_tracker(5, tp_rank, pp_rank, CPU).fork():
            draws.append(torch.rand(3))
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_unknown_or_duplicate_stream_is_an_error():
    tracker = RNGStatesTracker(CPU)
    tracker.add("a", 1)
    with pytest.raises(ValueError, match="'a' already exists"):
        tracker.add("a", 2)
    with pytest.raises(ValueError, match="'b' was never added"):
        with tracker.fork("b"):
            pass

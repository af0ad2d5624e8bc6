"""HDS: state vectors, the holistic reward, and the scheduler's timeline (warm-up, NaN
signals, exact continuation, the overlapped update)."""

import threading

import numpy as np
import pytest
import torch

from megatron_hds.mixing.action_map import logits_for_weights, weights_from_logits
from megatron_hds.mixing.agent_base import AgentShape
from megatron_hds.mixing.base import StepSignals
from megatron_hds.mixing.config import RewardConfig
from megatron_hds.mixing.hds import HDSScheduler
from megatron_hds.mixing.rewards import HolisticReward
from megatron_hds.mixing.timeline import StateBuilder, zscore_clamped
from tests.mixing.agents import mixing_config

D, L = 4, 2


def _signals(iteration, loss, samples=(4, 4, 4, 4), weights=(0.25,) * 4, **extra):
    return StepSignals(iteration=iteration, train_iters=100, weights=np.asarray(weights), domain_loss=np.asarray(loss),
                   domain_tokens=np.asarray(samples) * 32.0, domain_samples=np.asarray(samples), loss=float(np.nanmean(loss)),
                   extra=extra)


def test_zscore_clamped():
    assert np.allclose(zscore_clamped([1.0, 2.0, 3.0]), [-1.2247449, 0.0, 1.2247449])
    assert zscore_clamped([5.0, 5.0]).tolist() == [0.0, 0.0]
    assert zscore_clamped([0.0] * 99 + [1e6]).max() == 3.0


def test_state_keeps_the_last_loss_of_undrawn_domains():
    builder = StateBuilder(D, L)
    assert builder.state_dim == 3 * D + 2 * L + 1
    first = builder.build(_signals(1, [1.0, 2.0, 3.0, 4.0], weight_norms=[1.0, 2.0], weight_change_norms=[0.1, 0.3]))
    assert first.shape == (builder.state_dim,) and first[-1] == pytest.approx(0.01)
    second = builder.build(_signals(2, [2.0, np.nan, 3.0, 4.0], samples=(8, 0, 4, 4)))
    assert np.allclose(second[:D], zscore_clamped([2.0, 2.0, 3.0, 4.0]))  # domain 1 keeps its last loss
    assert np.allclose(second[D:2 * D], zscore_clamped([1.0, 0.0, 0.0, 0.0]))  # change since the last step
    assert np.allclose(second[2 * D:3 * D], zscore_clamped([8, 0, 4, 4]))


def test_reward_components_by_hand():
    reward = HolisticReward(RewardConfig(mtld_min=2.0), mtld_max=102.0)
    weights = np.array([0.4, 0.3, 0.2, 0.1])
    parts = reward.components(_signals(50, [1, 1, 1, 1], weights=weights, alignment=np.array([1.0, -1.0, 0.5, 0.0]),
                                       quality=52.0, weight_norms=np.array([10.0, 20.0])))
    assert parts["align"] == pytest.approx(0.4 - 0.3 + 0.1)
    assert parts["quality"] == pytest.approx(0.5 * 0.5)  # (52 - 2) / 100, times progress 50/100
    assert parts["norm"] == 0.0  # no previous norms yet
    parts = reward.components(_signals(51, [1, 1, 1, 1], weight_norms=np.array([11.0, 19.5])))
    assert parts["norm"] == pytest.approx(1 / 1.5)  # |11 - 10| + |19.5 - 20|
    assert np.isnan(parts["align"]) and np.isnan(parts["quality"])
    parts = reward.components(_signals(52, [1, 1, 1, 1], weight_norms=np.array([11.0, 19.5])))
    assert parts["norm"] == 5.0  # no drift: capped
    total = HolisticReward(RewardConfig(components=("align", "norm")), mtld_max=128).total({"align": 0.2, "quality": np.nan, "norm": 3})
    assert total == pytest.approx(0.2 + 10 * 3)
    with pytest.raises(ValueError, match="bogus"):
        RewardConfig(components=("align", "bogus"))


def test_logits_for_weights_inverts_the_action_map():
    floor = 0.1 / D
    weights = np.array([0.5, 0.2, 0.2, 0.1])
    assert np.allclose(weights_from_logits(logits_for_weights(weights, floor), floor), weights)


def _scheduler(seed=0, overlap=False):
    torch.set_num_threads(1)
    mixing = mixing_config(batch_size=4, hidden_sizes=(16, 16), seed=seed, action_bound=None, warmup_fraction=0.05,
                           overlap_update=overlap)
    return HDSScheduler([0.4, 0.3, 0.2, 0.1], L, 100, mixing, AgentShape(3 * D + 2 * L + 1, D), seq_length=102)


def _signal_stream(steps, start=1, rng_seed=0):
    rng = np.random.default_rng(rng_seed + start)
    for t in range(start, start + steps):
        loss = rng.random(D) + 2
        yield _signals(t, loss, alignment=rng.standard_normal(D), quality=30.0,
                       weight_norms=rng.random(L) + 5, weight_change_norms=rng.random(L))


def _feed(scheduler, steps, start=1, rng_seed=0):
    return np.array([scheduler.observe(signals) for signals in _signal_stream(steps, start, rng_seed)])


def test_warmup_keeps_initial_weights_then_the_agent_acts():
    scheduler = _scheduler()
    weights = _feed(scheduler, 12)
    assert np.allclose(weights[:4], [0.4, 0.3, 0.2, 0.1])  # warm-up: 5% of 100 steps, observations 1..4
    assert not np.allclose(weights[5], weights[4])
    assert np.allclose(weights.sum(axis=1), 1.0) and (weights >= 0.1 / D - 1e-12).all()
    assert set(scheduler.last_reward()) >= {"align", "quality", "norm", "total", "alpha"}
    assert len(scheduler.agent.buffer) == 12


def test_nan_signals_never_reach_the_agent():
    scheduler = _scheduler()
    _feed(scheduler, 3)
    weights = scheduler.observe(_signals(4, [np.inf, 1, 1, 1], alignment=np.array([np.nan] * D)))
    assert scheduler.skipped_transitions == 1 and len(scheduler.agent.buffer) == 3  # the 3 finite ones
    assert np.isfinite(weights).all() and weights.sum() == pytest.approx(1.0)


def test_state_dict_continues_exactly():
    a, b = _scheduler(seed=3), _scheduler(seed=3)
    _feed(a, 10)
    _feed(b, 10)
    restored = _scheduler(seed=3)  # fresh: its networks, buffer and RNG are those of step 0
    restored.load_state_dict(b.state_dict())
    assert np.array_equal(_feed(a, 10, start=11), _feed(restored, 10, start=11))
    with pytest.raises(ValueError, match="hds"):
        restored.load_state_dict({"name": "odm"})


def test_overlapped_update_acts_first_and_otherwise_changes_nothing():
    """With overlap_update the scheduler equals an agent driven by hand in the order
    transition, act, update: the update no longer precedes the act of its step."""
    overlapped = _feed(_scheduler(seed=3, overlap=True), 20)
    reference = _scheduler(seed=3)  # only its state builder, reward and agent are used
    agent, state, action = reference.agent, reference.state, reference.logits
    expected = []
    for signals in _signal_stream(20):
        next_state = reference.states.build(signals)
        agent.add_transition(state, action, reference.reward.total(reference.reward.components(signals)), next_state)
        state = next_state
        if signals.iteration >= reference.warmup_steps:
            action, weights = agent.act(next_state)
            agent.update()
            expected.append(weights)
        else:
            expected.append(reference.initial_weights())
    assert np.array_equal(overlapped, np.array(expected))
    assert not np.array_equal(overlapped, _feed(_scheduler(seed=3), 20))  # the order does matter


def test_overlapped_update_runs_on_a_worker_thread_during_the_next_step():
    scheduler = _scheduler(overlap=True)
    _feed(scheduler, 4)  # warm-up: no update yet
    release, seen = threading.Event(), {}
    update = scheduler.agent.update

    def held_update():
        seen["thread"] = threading.current_thread()
        seen["released"] = release.wait(timeout=10)  # False if observe() waited for this call
        return update()

    scheduler.agent.update = held_update
    weights = _feed(scheduler, 1, start=5)  # returns while the update is held
    release.set()
    scheduler.wait_for_update()
    assert seen == {"thread": seen["thread"], "released": True} and seen["thread"] is not threading.main_thread()
    assert np.isfinite(weights).all() and scheduler.agent.updates == 1
    _feed(scheduler, 1, start=6)
    assert {"critic_loss", "actor_loss"} <= set(scheduler.last_reward())  # the held update's, logged a step later


def test_an_overlapped_update_that_fails_fails_the_next_observe():
    scheduler = _scheduler(overlap=True)

    def broken_update():
        raise RuntimeError("update exploded")

    scheduler.agent.update = broken_update
    _feed(scheduler, 5)  # the update of step 5 starts on the worker and fails there
    with pytest.raises(RuntimeError, match="update exploded"):
        _feed(scheduler, 1, start=6)


def test_overlapped_state_dict_continues_exactly():
    """state_dict() waits for the pending update, and keeps its losses for the next log."""
    a, b = _scheduler(seed=3, overlap=True), _scheduler(seed=3, overlap=True)
    _feed(a, 10)
    _feed(b, 10)
    restored = _scheduler(seed=3, overlap=True)
    restored.load_state_dict(b.state_dict())
    for signals in _signal_stream(10, start=11):
        assert np.array_equal(a.observe(signals), restored.observe(signals))
        assert a.last_reward() == restored.last_reward() and "critic_loss" in a.last_reward()

"""HDS: state vectors, the holistic reward (each component unbiased and informative), the base
mixture, the learnability (scaling laws of the training losses; slopes of the held-out ones),
and the scheduler's timeline (warm-up with behaviour
cloning, NaN signals, exact continuation, the overlapped update, the agent-free variant)."""

import math
import threading

import numpy as np
import pytest
import torch

from megatron_hds.mixing.base import StepSignals
from megatron_hds.mixing.base_mixture import BaseMixture, james_stein_keep
from megatron_hds.mixing.config import HDSConfig, RewardConfig
from megatron_hds.mixing.hds import HDSScheduler
from megatron_hds.mixing.influence import DomainGradients
from megatron_hds.mixing.learnability import HeldOutLearnability, Learnability, fit_power_law
from megatron_hds.mixing.rewards import HolisticReward
from megatron_hds.mixing.timeline import StateBuilder, zscore_clamped
from tests.mixing.agents import mixing_config

D, L = 4, 2
START = np.array([0.4, 0.3, 0.2, 0.1])


def _signals(iteration, loss, samples=(4, 4, 4, 4), weights=(0.25,) * 4, **extra):
    return StepSignals(iteration=iteration, train_iters=100, weights=np.asarray(weights), domain_loss=np.asarray(loss),
                       domain_tokens=np.asarray(samples) * 32.0, domain_samples=np.asarray(samples),
                       loss=float(np.nanmean(loss)), extra=extra)


def _gradients(rng):
    halves = rng.standard_normal((2 * D, 6))
    return DomainGradients(halves @ halves.T, np.ones(2 * D))


def test_zscore_clamped():
    assert np.allclose(zscore_clamped([1.0, 2.0, 3.0]), [-1.2247449, 0.0, 1.2247449])
    assert zscore_clamped([5.0, 5.0]).tolist() == [0.0, 0.0]
    assert zscore_clamped([0.0] * 99 + [1e6]).max() == 3.0


def test_state_keeps_the_last_loss_of_undrawn_domains_and_puts_domain_groups_first():
    builder = StateBuilder(D, L, extra_domain_groups=1)
    assert builder.state_dim == 4 * D + 2 * L + 1 and builder.domain_groups == 4
    first = builder.build(_signals(1, [1.0, 2.0, 3.0, 4.0], weight_norms=[1.0, 2.0], weight_change_norms=[0.1, 0.3]),
                          [np.array([0.0, 0.0, 1.0, 0.0])])
    assert first.shape == (builder.state_dim,) and first[-1] == pytest.approx(0.01)
    np.testing.assert_allclose(first[3 * D:4 * D], zscore_clamped([0.0, 0.0, 1.0, 0.0]))
    second = builder.build(_signals(2, [2.0, np.nan, 3.0, 4.0], samples=(8, 0, 4, 4)), [np.zeros(D)])
    assert np.allclose(second[:D], zscore_clamped([2.0, 2.0, 3.0, 4.0]))  # domain 1 keeps its last loss
    assert np.allclose(second[D:2 * D], zscore_clamped([1.0, 0.0, 0.0, 0.0]))  # change since the last step
    assert np.allclose(second[2 * D:3 * D], zscore_clamped([8, 0, 4, 4]))
    with pytest.raises(ValueError, match="extra per-domain groups"):
        builder.build(_signals(3, [1.0] * D))


def test_alignment_reward_pays_the_deviation_from_the_base_not_concentration():
    reward = HolisticReward(RewardConfig(), L)
    influence = np.array([1.0, -1.0, 0.5, -0.5])
    base = np.array([0.25, 0.25, 0.25, 0.25])
    at_base = reward.components(_signals(1, [1.0] * D, weights=base, influence=influence), base)
    assert at_base["align"] == 0.0  # playing the base earns nothing
    toward = reward.components(_signals(2, [1.0] * D, weights=(7 / 16, 1 / 16, 0.25, 0.25), influence=influence), base)
    assert toward["align"] == pytest.approx((7 / 16 - 0.25) * 1.0 + (1 / 16 - 0.25) * -1.0)


def test_quality_reward_responds_to_the_samples_drawn_within_a_domain():
    """Same domains and counts, other samples: the reward moves with their quality for their own
    domain. A domain drawn at its typical quality earns nothing, however high its MTLD."""
    reward = HolisticReward(RewardConfig(), L)
    base = np.full(D, 0.25)
    good = reward.components(_signals(1, [1.0] * D, quality=np.array([1.0, 0.5, 0.0, 0.0])), base)["quality"]
    poor = reward.components(_signals(2, [1.0] * D, quality=np.array([-1.0, -0.5, 0.0, 0.0])), base)["quality"]
    typical = reward.components(_signals(3, [1.0] * D, quality=np.zeros(D)), base)["quality"]
    assert good > 0 > poor and typical == 0.0
    one_domain = reward.components(_signals(4, [1.0] * D, samples=(16, 0, 0, 0), quality=np.array(
        [0.0, np.nan, np.nan, np.nan])), base)["quality"]
    assert one_domain == 0.0  # concentrating on a domain earns nothing by itself


def test_norm_reward_is_zero_for_ordinary_updates_and_penalises_abnormal_ones():
    """The old term sat at its cap (a constant +50 a step). Now: 0 while the update ratios are
    ordinary, negative when one is far above its running level."""
    reward = HolisticReward(RewardConfig(), L)
    rng = np.random.default_rng(0)
    values = []
    for step in range(1, 60):
        ratios = np.exp(rng.normal(size=L) * 0.05 - 6.0)
        if step == 50:
            ratios[0] *= 20.0  # a spike
        values.append(reward.components(_signals(step, [1.0] * D, update_ratios=ratios), np.full(D, 0.25))["norm"])
    assert values[49] < -1.0  # the spike
    assert sum(v != 0.0 for v in values[:49]) <= 3  # ordinary updates: a z above 2 now and then at most
    assert reward.norm_fired == sum(v != 0.0 for v in values)  # what the logs report as a share
    assert reward.norm_fired_share == pytest.approx(reward.norm_fired / 59)
    restored = HolisticReward(RewardConfig(), L)
    restored.load_state_dict(reward.state_dict())
    assert restored.norm_fired == reward.norm_fired


def test_total_normalises_each_component_by_its_running_scale():
    reward = HolisticReward(RewardConfig(components=("align", "quality")), L)
    totals = [reward.total({"align": 100.0 * s, "quality": 0.01 * s, "norm": 0.0}) for s in (1, -1, 1, -1)]
    assert all(abs(abs(t) - 2.0) < 1e-9 for t in totals[1:])  # both components at unit scale
    assert math.isnan(reward.total({"align": math.nan, "quality": 0.0, "norm": 0.0}))
    assert reward.total({"align": 1.0, "quality": 1.0, "norm": math.nan}) == pytest.approx(2.0, rel=0.5)


def test_a_component_at_rounding_level_pays_nothing_instead_of_unit_scale_noise():
    """The base mixture played as is (w = b up to rounding), or an influence estimate without spread,
    leave the alignment at ~1e-18: the normalisation must not rescale that residue to the size of the
    quality term. A small real alignment is still paid at unit scale."""
    rng = np.random.default_rng(0)
    residue, none = HolisticReward(RewardConfig(), L), HolisticReward(RewardConfig(), L)
    for _ in range(200):
        quality = float(rng.standard_normal())
        paid = residue.total({"align": 1e-18 * float(rng.standard_normal()), "quality": quality, "norm": 0.0})
        assert paid == none.total({"align": 0.0, "quality": quality, "norm": 0.0})
    real = HolisticReward(RewardConfig(components=("align",)), L)
    paid = [real.total({"align": 1e-11 * s, "quality": 0.0, "norm": 0.0}) for s in (1, -1, 1, -1)]
    assert all(abs(abs(t) - 1.0) < 1e-9 for t in paid)  # just above the floor: still a measurement


def test_power_law_fit_and_learnability_prefer_the_domain_still_learning():
    t = np.arange(1, 2001)
    eps, beta, alpha = fit_power_law(t, 2.0 + 3.0 * t ** -0.3)
    assert (eps, beta, alpha) == pytest.approx((2.0, 3.0, 0.3), rel=1e-6)
    learnability = Learnability([0.5, 0.5], fit_interval=200)
    rng = np.random.default_rng(0)
    for step in t:
        losses = np.array([2 + 3 * step ** -0.3, 3 + 0.2 * step ** -0.3]) + rng.normal(size=2) * 0.05
        learnability.observe(int(step), losses, np.array([0.5, 0.5]))
    assert learnability.scores[0] > 0 > learnability.scores[1]


def _memorised_and_learning(steps):
    """Domain 0's material repeats: its training loss keeps falling (memorised) while its held-out
    loss stalls from step 500 on; domain 1's training and held-out losses fall together."""
    train = np.stack([3 + 2 * steps ** -0.3 - 0.0004 * np.maximum(steps - 500, 0), 3 + 2 * steps ** -0.3], axis=1)
    held_out = np.stack([3.2 + 2 * np.minimum(steps, 500) ** -0.3, 3.2 + 2 * steps ** -0.3], axis=1)
    return train, held_out


def test_held_out_learnability_drops_a_memorised_domain_that_the_training_losses_favour():
    steps = np.arange(1, 2001)
    train, held_out = _memorised_and_learning(steps)
    from_train, from_held_out = Learnability([0.5, 0.5], fit_interval=200), HeldOutLearnability([0.5, 0.5])
    for step, train_loss, held_out_loss in zip(steps, train, held_out):
        from_train.observe(int(step), train_loss, np.array([0.5, 0.5]))
        from_held_out.observe(int(step), train_loss, np.array([0.5, 0.5]))
        if step % 50 == 0:
            from_train.observe_evaluation(int(step), held_out_loss)  # ignored: not its input
            from_held_out.observe_evaluation(int(step), held_out_loss)
    assert from_train.scores[0] > 0 > from_train.scores[1]  # the training losses reward memorising
    assert from_held_out.scores[0] < 0 < from_held_out.scores[1]
    # The slope is the fall of the held-out loss per step now: b / t of L = a - b log t.
    assert from_held_out.slopes[1] == pytest.approx(0.3 * 2 * 2000 ** -1.3, rel=0.1)
    assert from_held_out.slopes[0] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="step 1000 arrived after those of step 2000"):
        from_held_out.observe_evaluation(1000, held_out[0])


def test_held_out_learnability_continues_exactly_and_a_changed_source_is_refused():
    steps = np.arange(1, 1001)
    train, held_out = _memorised_and_learning(steps)
    config = HDSConfig(learnability_source="valid", ramp_fraction=0.0)
    a, b = BaseMixture(START[:2] / START[:2].sum(), config, 1000, 0.0), None
    for step in steps:
        if step == 500:
            b = BaseMixture(a.natural, config, 1000, 0.0)
            b.load_state_dict(a.state_dict())
        for mixture in (a, b) if b is not None else (a,):
            mixture.observe(_signals(int(step), train[step - 1], samples=(4, 4),
                                     weights=(0.5, 0.5)))
            if step % 50 == 0:
                mixture.observe_evaluation(int(step), held_out[step - 1])
    assert np.array_equal(a.mix(1000), b.mix(1000)) and a.learnability.scores[0] < 0
    with pytest.raises(ValueError, match="estimated from the valid losses; --hds-learnability-source train"):
        BaseMixture(a.natural, HDSConfig(), 1000, 0.0).load_state_dict(a.state_dict())


def test_held_out_influence_decays_by_the_steps_since_its_last_measurement():
    """Measured every few steps (a trainer's interval can exceed --hds-influence-interval): the running
    average decays by the steps elapsed, the first measurement by the interval; a resumed mixture
    takes the step of the last measurement from the checkpoint."""
    config = HDSConfig(influence_target="valid", influence_interval=4, score_smoothing=0.9)
    rng = np.random.default_rng(0)
    measured = {1: rng.standard_normal(D), 5: rng.standard_normal(D), 12: rng.standard_normal(D)}
    a, b, expected = BaseMixture(START, config, 100, 0.0), None, np.zeros(D)
    for step in range(1, 13):
        if step == 8:
            b = BaseMixture(START, config, 100, 0.0)
            b.load_state_dict(a.state_dict())
        extra = {"influence": measured[step], "gradients": _gradients(rng)} if step in measured else {}
        for mixture in (a, b) if b is not None else (a,):
            mixture.observe(_signals(step, rng.random(D) + 2, **extra))
    for elapsed, step in ((4, 1), (4, 5), (7, 12)):
        expected = 0.9 ** elapsed * expected + (1 - 0.9 ** elapsed) * measured[step]
    np.testing.assert_allclose(a.influence, expected, rtol=1e-13)
    assert np.array_equal(a.influence, b.influence)


def test_validation_pass_interval_keeps_the_passes_within_their_share():
    config = HDSConfig()  # at least 8 steps; one sample per domain at most 1.6% of the training samples
    assert config.validation_pass_interval(8, 64) == 8  # the experiments' shape: 8 / 512 = 1.6%
    assert config.validation_pass_interval(7, 64) == 8
    assert config.validation_pass_interval(7, 16) == 28  # the demo's: 7 / 448 = 1.56%
    assert config.validation_pass_interval(22, 1152) == 8
    assert HDSConfig(influence_max_share=1.0).validation_pass_interval(7, 8) == 8
    assert HDSConfig(influence_interval=1, influence_max_share=0.3).validation_pass_interval(7, 8) == 3
    with pytest.raises(ValueError, match=r"HDSConfig.influence_max_share=0.0 is invalid: expected \(0, 1\]"):
        HDSConfig(influence_max_share=0.0)


@pytest.mark.parametrize("shrinkage", ["james-stein", "none"])
def test_base_mixture_tilts_towards_influential_domains_and_stays_anchored(shrinkage):
    config = HDSConfig(ramp_fraction=0.0, mixture_smoothing=1.0, natural_anchor=0.0, score_smoothing=0.5,
                       influence_target="train", influence_shrinkage=shrinkage)
    base = BaseMixture(START, config, train_iters=100, floor=0.0)
    rng = np.random.default_rng(1)
    influence = np.array([2.0, 0.0, 0.0, -2.0])
    for step in range(1, 60):
        weights = base.update(_signals(step, rng.random(D) + 2, influence=influence, gradients=_gradients(rng)))
    # U = (2, 0, 0, -2). James-Stein keeps 1 - (4 - 3) v / 8 of it, v = 4/3 x (1 - 0.5)^2 / (1 - 0.5^2)
    # the variance about their mean of averages of 4 unit scores that sum to 0; none: z(U) = (1.41, 0,
    # 0, -1.41). Domain 0's weight against domain 1's grows by e^(0.3 x u_0).
    u0 = 2.0 * (1.0 - (4.0 / 9.0) / 8.0) if shrinkage == "james-stein" else math.sqrt(2)
    assert (weights[0] / weights[1]) / (START[0] / START[1]) == pytest.approx(math.exp(0.3 * u0), rel=1e-9)
    assert (weights[3] / weights[1]) / (START[3] / START[1]) == pytest.approx(math.exp(-0.3 * u0), rel=1e-9)
    # Anchored: however long the same evidence, the tilt is bounded (here e^(2 x 0.3 x 2) at most).
    assert np.max(np.abs(np.log(weights / START))) < 2 * 0.3 * 2 + 0.5 + 1e-9


@pytest.mark.parametrize("target", ["train", "valid"])
def test_influence_that_is_noise_leaves_the_natural_mixture(target):
    """Scores with no systematic part (each measurement z-scored noise, as on the real-text benchmark's
    held-out runs) must not tilt the mixture: the z-scored average gave them a full tilt, a different
    mixture for every seed."""
    natural = np.full(8, 1.0 / 8)
    config = HDSConfig(ramp_fraction=0.0, influence_target=target, influence_interval=8)
    shrunk = BaseMixture(natural, config, train_iters=3000, floor=0.0)
    rescaled = BaseMixture(natural, HDSConfig(ramp_fraction=0.0, influence_target=target, influence_interval=8,
                                              influence_shrinkage="none"), train_iters=3000, floor=0.0)
    rng = np.random.default_rng(3)
    halves = rng.standard_normal((16, 6))
    gradients = DomainGradients(halves @ halves.T, np.ones(16))
    largest, keeps = {"shrunk": 0.0, "rescaled": 0.0}, []
    for step in range(1, 3001):
        measured = target == "train" or step % 8 == 0
        noise = rng.standard_normal(8)
        extra = {"influence": (noise - noise.mean()) / noise.std(), "gradients": gradients} if measured else {}
        signals = StepSignals(iteration=step, train_iters=3000, weights=natural, domain_loss=rng.random(8) + 2,
                              domain_tokens=np.full(8, 256.0), domain_samples=np.full(8, 8), loss=2.5, extra=extra)
        for name, mixture in (("shrunk", shrunk), ("rescaled", rescaled)):
            weights = mixture.update(signals)
            if step > 500:
                largest[name] = max(largest[name], float(np.max(np.abs(np.log(weights / natural)))))
        keeps.append(shrunk.influence_keep)
    assert largest["rescaled"] > 0.5  # the old rule: noise tilted a domain by more than e^0.5
    assert largest["shrunk"] < 0.15
    # James-Stein keeps about 2 / (D - 1) of pure noise's spread on average (0 much of the time).
    assert 0.1 < np.mean(keeps[500:]) < 0.45 and np.mean(np.array(keeps[500:]) == 0.0) > 0.1


def test_influence_with_a_steady_ranking_keeps_it():
    """A systematic part under the noise of each measurement: kept (c near 1), and the tilt follows it."""
    natural = np.full(8, 1.0 / 8)
    base = BaseMixture(natural, HDSConfig(ramp_fraction=0.0, influence_target="train"), train_iters=3000, floor=0.0)
    rng = np.random.default_rng(4)
    halves = rng.standard_normal((16, 6))
    gradients = DomainGradients(halves @ halves.T, np.ones(16))
    systematic = np.linspace(-1.0, 1.0, 8)
    for step in range(1, 3001):
        score = systematic + rng.standard_normal(8)
        weights = base.update(StepSignals(
            iteration=step, train_iters=3000, weights=natural, domain_loss=rng.random(8) + 2,
            domain_tokens=np.full(8, 256.0), domain_samples=np.full(8, 8), loss=2.5,
            extra={"influence": (score - score.mean()) / score.std(), "gradients": gradients}))
    assert base.influence_keep > 0.9
    assert np.corrcoef(np.log(weights / natural), systematic)[0, 1] > 0.95


def test_a_checkpoint_of_the_zscored_tilt_continues_only_under_it():
    """Checkpoints from before the shrinkage hold U only, and were made under the z-scored tilt."""
    config = HDSConfig(influence_target="valid", influence_shrinkage="none")
    state = BaseMixture(START, config, 100, 0.0).state_dict()
    for key in ("influence_noise", "influence_shrinkage"):
        state.pop(key)
    BaseMixture(START, config, 100, 0.0).load_state_dict(state)
    with pytest.raises(ValueError, match="tilt was none .*--hds-influence-shrinkage james-stein cannot continue it"):
        BaseMixture(START, HDSConfig(influence_target="valid"), 100, 0.0).load_state_dict(state)


def test_james_stein_keeps_a_clear_ranking_and_drops_noise():
    assert james_stein_keep(np.array([1.0, -1.0, 0.5, -0.5]), 0.01) == pytest.approx(0.996)
    assert james_stein_keep(np.array([0.01, -0.01, 0.0, 0.0, 0.0]), 0.01) == 0.0  # spread below the noise
    assert james_stein_keep(np.array([3.0, 1.0, 2.0, 2.0]), 0.5) == pytest.approx(0.75)  # about the mean
    assert james_stein_keep(np.array([0.3, -0.3]), 1.0) == 1.0  # too few domains to shrink


def _scheduler(seed=0, overlap=False, agent="sac", **settings):
    torch.set_num_threads(1)
    mixing = mixing_config(batch_size=4, hidden_sizes=(16, 16), seed=seed, warmup_fraction=0.05,
                           overlap_update=overlap, agent=agent, **settings)
    return HDSScheduler(START, L, 100, mixing)


def _signal_stream(steps, start=1, rng_seed=0):
    rng = np.random.default_rng(rng_seed + start)
    for t in range(start, start + steps):
        loss = rng.random(D) + 2
        yield _signals(t, loss, influence=rng.standard_normal(D), gradients=_gradients(rng),
                       quality=rng.standard_normal(D), weight_norms=rng.random(L) + 5,
                       weight_change_norms=rng.random(L), update_ratios=rng.random(L) * 1e-3)


def _feed(scheduler, steps, start=1, rng_seed=0):
    return np.array([scheduler.observe(signals) for signals in _signal_stream(steps, start, rng_seed)])


def test_warmup_plays_small_residuals_around_the_base_and_clones_them():
    scheduler = _scheduler()
    np.testing.assert_allclose(scheduler.initial_weights(), START, rtol=1e-12)  # the base starts at the start
    weights = _feed(scheduler, 12)
    assert np.allclose(weights.sum(axis=1), 1.0) and (weights >= 0.1 / D - 1e-12).all()
    # Residuals stay inside the bound (warm-up: noise around the base; then the policy's mean plus noise).
    assert np.max(np.abs(scheduler.agent.buffer.actions[:4])) <= 0.999 * 0.5
    assert set(scheduler.last_reward()) >= {"align", "quality", "norm", "total", "alpha", "residual"}
    assert len(scheduler.agent.buffer) == 12 and scheduler.agent.updates > 0
    assert scheduler.bc_weight(2) == 1.0 and scheduler.bc_weight(7) == pytest.approx(0.6) and scheduler.bc_weight(20) == 0


def test_the_agent_free_variant_plays_the_base_mixture():
    with_agent, alone = _scheduler(seed=2), _scheduler(seed=2, agent="none")
    for signals in _signal_stream(30):
        weights = alone.observe(signals)
        np.testing.assert_allclose(weights, alone.base.weights, rtol=1e-12)
        with_agent.observe(signals)
    assert len(alone.agent.buffer) == 0 and {"align", "quality", "norm", "total"} <= set(alone.last_reward())
    np.testing.assert_allclose(with_agent.base.weights, alone.base.weights, rtol=1e-12)  # same signals, same base


def test_the_alignment_reward_pays_the_base_mixtures_influence_estimate():
    scheduler = _scheduler()
    _feed(scheduler, 20)
    signals = next(_signal_stream(1, start=21))
    base = scheduler._base_in_force.copy()
    scheduler.observe(signals)
    expected = float(np.dot(signals.weights - base, scheduler.base.influence_estimate))
    assert expected != 0.0 and scheduler.last_reward()["align"] == pytest.approx(expected, rel=1e-12)


def test_nan_signals_never_reach_the_agent():
    scheduler = _scheduler()
    _feed(scheduler, 3)
    weights = scheduler.observe(_signals(4, [np.inf, 1, 1, 1], influence=np.array([np.nan] * D),
                                         gradients=_gradients(np.random.default_rng(0)), update_ratios=np.ones(L)))
    assert scheduler.skipped_transitions == 1 and len(scheduler.agent.buffer) == 3  # the 3 finite ones
    assert np.isfinite(weights).all() and weights.sum() == pytest.approx(1.0)
    assert np.isfinite(scheduler.base.influence).all()  # a NaN score stays out of the running average


@pytest.mark.parametrize("overlap", [False, True])
def test_state_dict_continues_exactly(overlap):
    a, b = _scheduler(seed=3, overlap=overlap), _scheduler(seed=3, overlap=overlap)
    _feed(a, 10)
    _feed(b, 10)
    restored = _scheduler(seed=3, overlap=overlap)  # fresh: its networks, buffer and RNG are those of step 0
    restored.load_state_dict(b.state_dict())
    for signals in _signal_stream(10, start=11):
        assert np.array_equal(a.observe(signals), restored.observe(signals))
        assert a.last_reward() == restored.last_reward()
    with pytest.raises(ValueError, match="hds"):
        restored.load_state_dict({"name": "odm"})


def test_overlapped_update_acts_first_and_otherwise_changes_nothing():
    """With overlap_update the policy acts one update later; otherwise the run is as deterministic."""
    first, second = _feed(_scheduler(seed=3, overlap=True), 20), _feed(_scheduler(seed=3, overlap=True), 20)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, _feed(_scheduler(seed=3), 20))  # the order does matter


def test_overlapped_update_runs_on_a_worker_thread_during_the_next_step():
    scheduler = _scheduler(overlap=True)
    _feed(scheduler, 4)
    release, seen = threading.Event(), {}
    update = scheduler.agent.update

    def held_update(**kwargs):
        seen["thread"] = threading.current_thread()
        seen["released"] = release.wait(timeout=10)  # False if observe() waited for this call
        return update(**kwargs)

    scheduler.agent.update = held_update
    weights = _feed(scheduler, 1, start=5)  # returns while the update is held
    release.set()
    scheduler.wait_for_update()
    assert seen == {"thread": seen["thread"], "released": True} and seen["thread"] is not threading.main_thread()
    assert np.isfinite(weights).all()
    _feed(scheduler, 1, start=6)
    assert {"critic_loss", "actor_loss"} <= set(scheduler.last_reward())  # the held update's, logged a step later


def test_an_overlapped_update_that_fails_fails_the_next_observe():
    scheduler = _scheduler(overlap=True)

    def broken_update(**kwargs):
        raise RuntimeError("update exploded")

    scheduler.agent.update = broken_update
    _feed(scheduler, 1)  # the update of step 1 starts on the worker and fails there
    with pytest.raises(RuntimeError, match="update exploded"):
        _feed(scheduler, 1, start=2)

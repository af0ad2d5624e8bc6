"""ODM (EXP3) scheduler: hand-computed weights for both variants, warm-up, update
interval, NaN handling, the floor, exact resume, and upweighting of high-loss domains."""

import json
import math

import numpy as np
import pytest

from megatron_hds.mixing.config import ODMConfig
from megatron_hds.mixing.base import MixtureScheduler, StepSignals
from megatron_hds.mixing.odm import ODMScheduler

NAN = float("nan")
LN3 = math.log(3.0)


def odm(num_domains, **settings) -> ODMScheduler:
    """An ODMScheduler; ODMConfig's fields (variant, smoothing, warmup_steps) among the settings."""
    own = {name: settings.pop(name) for name in ("variant", "smoothing", "warmup_steps") if name in settings}
    return ODMScheduler(num_domains, ODMConfig(**own), **settings)


def signals(iteration, weights, losses, samples):
    samples = np.asarray(samples, dtype=np.int64)
    return StepSignals(iteration=iteration, train_iters=1000, weights=np.asarray(weights, dtype=np.float64),
                   domain_loss=np.asarray(losses, dtype=np.float64), domain_tokens=samples * 128,
                   domain_samples=samples, loss=2.0)


# The fixed sequence: three warm-up steps (ignored), then three bandit rounds at t = 4, 5, 6
# (with K = 3, eps_t = 1/3 for t <= 3, which would make the policy exactly uniform).
W0 = [0.5, 0.3, 0.2]
WARMUP = [([9.0, 9.0, 9.0], [4, 3, 1])] * 3
ROUNDS = [([2.0, 3.0, NAN], [5, 3, 0]),
          ([2.5, NAN, 4.0], [4, 0, 4]),
          ([1.0, 2.0, 3.0], [2, 3, 3])]


def run_sequence(scheduler, steps):
    weights = scheduler.initial_weights()
    out = []
    for it, (losses, samples) in enumerate(steps, start=1):
        weights = scheduler.observe(signals(it, weights, losses, samples))
        out.append(weights)
    return out


def test_protocol():
    assert isinstance(odm(3), MixtureScheduler)
    assert odm(3).name == "odm"
    np.testing.assert_array_equal(odm(4).initial_weights(), [0.25] * 4)


def test_paper_form_hand_computed():
    sched = odm(3, initial_weights=W0, variant="paper", smoothing=0.5, warmup_steps=3)
    got = run_sequence(sched, WARMUP + ROUNDS)
    for w in got[:3]:
        np.testing.assert_array_equal(w, W0)

    eps3 = 1.0 / 3.0  # sqrt(ln3 / 9) = 0.349 > 1/3
    eps4 = math.sqrt(LN3 / 12.0)
    eps5 = math.sqrt(LN3 / 15.0)
    eps6 = math.sqrt(LN3 / 18.0)

    # t = 4: drawn with W0; domain 2 drew nothing.
    r = [0.5 * 0.0 + 0.5 * 2.0 / 0.5, 0.5 * 0.0 + 0.5 * 3.0 / 0.3, 0.0]  # [2, 5, 0]
    e = [math.exp(eps3 * r[0]), math.exp(eps3 * r[1]), math.exp(eps3 * r[2])]
    pi4 = [(1 - 3 * eps4) * e[i] / (e[0] + e[1] + e[2]) + eps4 for i in range(3)]
    np.testing.assert_allclose(got[3], pi4, rtol=1e-12, atol=0)

    # t = 5: drawn with pi4; domain 1 drew nothing (NaN) and keeps R_1 = 5.
    r = [0.5 * r[0] + 0.5 * 2.5 / pi4[0], r[1], 0.5 * r[2] + 0.5 * 4.0 / pi4[2]]
    e = [math.exp(eps4 * r[0]), math.exp(eps4 * r[1]), math.exp(eps4 * r[2])]
    pi5 = [(1 - 3 * eps5) * e[i] / (e[0] + e[1] + e[2]) + eps5 for i in range(3)]
    np.testing.assert_allclose(got[4], pi5, rtol=1e-12, atol=0)

    # t = 6: drawn with pi5; every domain drew samples.
    r = [0.5 * r[0] + 0.5 * 1.0 / pi5[0], 0.5 * r[1] + 0.5 * 2.0 / pi5[1], 0.5 * r[2] + 0.5 * 3.0 / pi5[2]]
    e = [math.exp(eps5 * r[0]), math.exp(eps5 * r[1]), math.exp(eps5 * r[2])]
    pi6 = [(1 - 3 * eps6) * e[i] / (e[0] + e[1] + e[2]) + eps6 for i in range(3)]
    np.testing.assert_allclose(got[5], pi6, rtol=1e-12, atol=0)
    np.testing.assert_allclose(sched.state_dict()["rewards"], r, rtol=1e-12)
    assert sched.last_reward()["eps"] == pytest.approx(eps6)


def test_released_variant_hand_computed():
    sched = odm(3, initial_weights=W0, variant="released", smoothing=0.5, warmup_steps=3)
    got = run_sequence(sched, WARMUP + ROUNDS)
    for w in got[:3]:
        np.testing.assert_array_equal(w, W0)

    eps4 = math.sqrt(LN3 / 12.0)
    eps5 = math.sqrt(LN3 / 15.0)
    eps6 = math.sqrt(LN3 / 18.0)

    r = [0.5 * math.exp(2.0), 0.5 * math.exp(3.0), 0.0]
    pi4 = [(1 - 3 * eps4) * r[i] / (r[0] + r[1] + r[2]) + eps4 for i in range(3)]
    assert pi4[2] == pytest.approx(eps4)  # never drawn: exploration only
    np.testing.assert_allclose(got[3], pi4, rtol=1e-12, atol=0)

    r = [0.5 * r[0] + 0.5 * math.exp(2.5), r[1], 0.5 * r[2] + 0.5 * math.exp(4.0)]
    pi5 = [(1 - 3 * eps5) * r[i] / (r[0] + r[1] + r[2]) + eps5 for i in range(3)]
    np.testing.assert_allclose(got[4], pi5, rtol=1e-12, atol=0)

    r = [0.5 * r[0] + 0.5 * math.exp(1.0), 0.5 * r[1] + 0.5 * math.exp(2.0), 0.5 * r[2] + 0.5 * math.exp(3.0)]
    pi6 = [(1 - 3 * eps6) * r[i] / (r[0] + r[1] + r[2]) + eps6 for i in range(3)]
    np.testing.assert_allclose(got[5], pi6, rtol=1e-12, atol=0)


def test_early_rounds_explore_uniformly():
    # eps_t = 1/K while sqrt(ln K / (K t)) >= 1/K (t <= 3 for K = 3): (1 - K eps_t) = 0.
    sched = odm(3, initial_weights=W0)
    got = run_sequence(sched, ROUNDS)
    for w in got:
        np.testing.assert_allclose(w, [1 / 3] * 3, rtol=0, atol=1e-15)


def test_warmup_returns_initial_weights_and_learns_nothing():
    sched = odm(3, initial_weights=W0, warmup_steps=5)
    got = run_sequence(sched, [([1.0, 5.0, 9.0], [3, 3, 2])] * 5)
    for w in got:
        np.testing.assert_array_equal(w, W0)
    assert sched.state_dict()["rewards"] == [0.0, 0.0, 0.0]
    assert sched.state_dict()["updates"] == 0
    after = sched.observe(signals(6, W0, [1.0, 5.0, 9.0], [3, 3, 2]))
    assert not np.array_equal(after, W0)
    assert sched.state_dict()["updates"] == 1


def test_update_interval():
    sched = odm(3, initial_weights=W0, update_interval=3)
    rng = np.random.default_rng(0)
    steps = [(list(rng.uniform(1.0, 4.0, 3)), [2, 3, 3]) for _ in range(12)]
    got = run_sequence(sched, steps)
    np.testing.assert_array_equal(got[0], W0)
    np.testing.assert_array_equal(got[1], W0)
    for acted in (2, 5, 8, 11):  # observations 3, 6, 9, 12
        assert not np.array_equal(got[acted], got[acted - 1])
        if acted + 2 < len(got):
            np.testing.assert_array_equal(got[acted + 1], got[acted])
            np.testing.assert_array_equal(got[acted + 2], got[acted])
    assert sched.state_dict()["updates"] == 4
    # Reward estimates learn from every observation, not only acting ones.
    probe = odm(3, initial_weights=W0, update_interval=3)
    probe.observe(signals(1, W0, [2.0, 2.0, 2.0], [1, 1, 1]))
    assert all(r > 0 for r in probe.state_dict()["rewards"])


def test_nan_and_inf_losses_are_skipped_and_counted():
    sched = odm(3, warmup_steps=3)
    run_sequence(sched, WARMUP)
    w = sched.observe(signals(4, [1 / 3] * 3, [NAN, 2.0, math.inf], [2, 2, 2]))
    assert sched.skipped_signals == 2
    assert sched.state_dict()["rewards"] == [0.0, pytest.approx(0.5 * 2.0 * 3), 0.0]
    assert np.all(np.isfinite(w)) and w.sum() == pytest.approx(1.0)
    # NaN with no samples is "not drawn", not a bad signal.
    sched.observe(signals(5, w, [NAN, 2.0, NAN], [0, 4, 0]))
    assert sched.skipped_signals == 2
    # A step with nothing usable still returns a distribution.
    w = sched.observe(signals(6, w, [NAN, -math.inf, NAN], [1, 1, 1]))
    assert sched.skipped_signals == 5
    assert np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() == pytest.approx(1.0)
    assert sched.last_reward()["skipped_signals"] == 5
    assert all(isinstance(v, float) and math.isfinite(v) for v in sched.last_reward().values())
    # A released-variant reward that would overflow exp() is skipped too.
    rel = odm(3, variant="released")
    w = rel.observe(signals(1, [1 / 3] * 3, [1e4, 2.0, 2.0], [1, 1, 1]))
    assert rel.skipped_signals == 1 and np.all(np.isfinite(w))


def test_weight_floor():
    floor = 0.25
    sched = odm(3, initial_weights=[0.9, 0.05, 0.05], variant="released", weight_floor=floor,
                         warmup_steps=10)
    np.testing.assert_allclose(sched.initial_weights(), np.array([0.9, 0.25, 0.25]) / 1.4)
    got = run_sequence(sched, [([2.0, 2.0, 2.0], [1, 1, 1])] * 10 + [([12.0, 1.0, 1.0], [1, 1, 1])])
    eps = math.sqrt(LN3 / (3 * 11))
    r = [0.5 * math.exp(12.0), 0.5 * math.exp(1.0), 0.5 * math.exp(1.0)]
    pi = [(1 - 3 * eps) * r[i] / sum(r) + eps for i in range(3)]
    assert pi[1] < floor and pi[2] < floor
    floored = [pi[0], floor, floor]
    np.testing.assert_allclose(got[-1], [x / sum(floored) for x in floored], rtol=1e-12)
    assert got[-1].sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="weight_floor"):
        odm(3, weight_floor=0.4)


def test_state_round_trip_continues_exactly():
    rng = np.random.default_rng(1)
    steps = []
    for _ in range(40):
        samples = rng.multinomial(8, [0.5, 0.3, 0.2])
        losses = rng.uniform(1.0, 4.0, 3)
        losses[samples == 0] = NAN
        steps.append((list(losses), list(samples)))
    for variant in ("paper", "released"):
        kwargs = dict(initial_weights=W0, variant=variant, warmup_steps=2, update_interval=2, weight_floor=0.05)
        ref = odm(3, **kwargs)
        full = run_sequence(ref, steps)

        first = odm(3, **kwargs)
        w = first.initial_weights()
        for it, (losses, samples) in enumerate(steps[:17], start=1):
            w = first.observe(signals(it, w, losses, samples))
        state = json.loads(json.dumps(first.state_dict()))  # survives a text round trip

        resumed = odm(3, **kwargs)
        resumed.load_state_dict(state)
        assert resumed.last_reward() == first.last_reward()
        for it, (losses, samples) in enumerate(steps[17:], start=18):
            w = resumed.observe(signals(it, w, losses, samples))
            np.testing.assert_array_equal(w, full[it - 1])
        assert resumed.state_dict() == ref.state_dict()


def test_state_from_another_setup_is_refused():
    state = odm(3).state_dict()
    with pytest.raises(ValueError, match="3 domains.*4"):
        odm(4).load_state_dict(state)
    with pytest.raises(ValueError, match="variant"):
        odm(3, variant="released").load_state_dict(state)
    with pytest.raises(ValueError, match="not an ODM state"):
        odm(3).load_state_dict({"name": "static", "weights": [1 / 3] * 3})


def test_invalid_arguments():
    with pytest.raises(ValueError, match="variant"):
        odm(3, variant="exp4")
    with pytest.raises(ValueError, match="smoothing"):
        odm(3, smoothing=1.0)
    with pytest.raises(ValueError, match="update_interval"):
        odm(3, update_interval=0)
    with pytest.raises(ValueError, match="initial weights"):
        odm(3, initial_weights=[0.5, 0.5])


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_high_loss_domain_gains_weight(variant):
    # Domain 0 starts underweighted and always has the higher loss; batches are drawn
    # from the weights, so undrawn domains report NaN (the importance weights matter).
    rng = np.random.default_rng(0)
    sched = odm(3, initial_weights=[0.1, 0.45, 0.45], variant=variant, warmup_steps=20)
    w = sched.initial_weights()
    history = []
    for it in range(1, 401):
        samples = rng.multinomial(16, w)
        losses = np.array([3.0, 2.0, 2.0]) + rng.normal(0.0, 0.05, 3)
        losses[samples == 0] = NAN
        w = sched.observe(signals(it, w, losses, samples))
        assert np.all(np.isfinite(w)) and w.sum() == pytest.approx(1.0)
        history.append(w)
    late = np.mean(history[-100:], axis=0)
    assert late[0] > 1 / 3 > 0.1
    assert late[0] > late[1] + 0.01 and late[0] > late[2] + 0.01


def test_unusable_signal_weights_fall_back_to_the_last_answer():
    sched = odm(3, initial_weights=W0, warmup_steps=3)
    run_sequence(sched, WARMUP)
    sched.observe(signals(4, [NAN, NAN, NAN], [2.0, 3.0, 1.0], [1, 1, 1]))
    np.testing.assert_allclose(sched.state_dict()["rewards"], [0.5 * 2.0 / 0.5, 0.5 * 3.0 / 0.3, 0.5 * 1.0 / 0.2])


def test_full_information_is_not_importance_weighted():
    """Under the "hds" layout every domain is observed every step (observed = 1): the reward
    estimate is the loss itself, so the highest-loss domain gains weight. Dividing by the drawing
    probability instead credits the rarely drawn domains most and pulls the mixture away from it."""
    sched = odm(3, initial_weights=[0.7, 0.2, 0.1])
    weights = sched.initial_weights()
    for step in range(1, 200):
        sig = signals(step, weights, [3.0, 2.0, 1.0], [40, 15, 9])
        sig.observed = np.ones(3)
        weights = sched.observe(sig)
    assert weights[0] > weights[1] > weights[2]
    np.testing.assert_allclose(sched.state_dict()["rewards"], [3.0, 2.0, 1.0], rtol=1e-9)


def test_partial_observation_divides_by_the_probability_of_observing():
    sched = odm(3, initial_weights=[0.5, 0.3, 0.2], smoothing=0.0)
    sig = signals(1, [0.5, 0.3, 0.2], [2.0, 2.0, 2.0], [1, 1, 0])
    sig.observed = np.array([0.75, 0.5, 0.36])
    sched.observe(sig)
    np.testing.assert_allclose(sched.state_dict()["rewards"], [2.0 / 0.75, 2.0 / 0.5, 0.0], rtol=1e-12)

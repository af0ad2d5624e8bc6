"""The headroom estimate (tools/mixture_headroom.py) on runs whose losses follow its model
exactly, so its figures can be checked against brute force, and on runs that break the model
(transfer between domains), which its check must show."""

import math

import numpy as np
import pytest

import mixture_headroom
import scheduler_report
from scheduler_comparison import Curve

DOMAINS = ("A", "B", "C")
NATURAL = np.array([0.5, 0.3, 0.2])
SLOPES = np.array([0.30, 0.10, 0.45])
OFFSETS = np.array([6.0, 5.0, 7.0])
STATIC = np.array([0.45, 0.30, 0.25])  # not the natural weights, as the hds layout's forced draws make it


def _records(shares, steps=range(50, 1001, 50), noise=0.0, seed=0, transfer=None):
    """A run drawing ``shares`` whose validation losses are c_i - b_i ln(s_i t) (+ noise, the same
    at every step). ``transfer``: a matrix T; domain i's loss then follows ln(sum_j T_ij s_j t)."""
    shares = np.asarray(shares, dtype=float)
    effective = shares if transfer is None else np.asarray(transfer) @ shares
    offset = OFFSETS + np.random.default_rng(seed).normal(0, noise, 3)
    config = {"domains": list(DOMAINS), "natural_weights": NATURAL.tolist()}
    train = [{"iteration": t, "domain_samples": dict(zip(DOMAINS, (shares * 64 * 50).tolist()))} for t in steps]
    evals = [{"split": "valid", "iteration": t,
              "domain_loss": dict(zip(DOMAINS, (offset - SLOPES * np.log(effective * t)).tolist()))} for t in steps]
    return {"config": [config], "train": train, "eval": evals}


def test_the_best_shares_and_their_gain_beat_every_other_mixture():
    h = mixture_headroom.fit({1: _records(STATIC), 2: _records(STATIC)})
    assert h.domains == DOMAINS
    np.testing.assert_allclose(h.slopes, SLOPES, rtol=1e-9)
    np.testing.assert_allclose(h.shares, STATIC, rtol=1e-9)
    # Brute force: no mixture lowers the model's natural loss more than the best shares do, and
    # the best shares lower it by exactly the gain reported.
    gains = [-h.predicted_change(dict(zip(DOMAINS, w))) for w in np.random.default_rng(0).dirichlet(np.ones(3), 2000)]
    assert max(gains) <= h.best_gain + 1e-12
    assert -h.predicted_change(dict(zip(DOMAINS, h.best_shares))) == pytest.approx(h.best_gain, rel=1e-9)
    assert max(gains) > 0.98 * h.best_gain  # the search gets close: the optimum is a real maximum
    assert h.best_gain > 0.01
    assert len(h.window_gains) == 3  # exact logs: every window gives the same slopes
    assert list(h.window_gains.values()) == pytest.approx([h.best_gain] * 3)


def test_a_static_mixture_already_at_the_best_shares_has_no_headroom():
    best = NATURAL * SLOPES / (NATURAL * SLOPES).sum()
    assert mixture_headroom.fit({1: _records(best)}).best_gain == pytest.approx(0.0, abs=1e-12)


def test_the_check_pairs_seeds_and_matches_runs_that_follow_the_model():
    uniform = np.full(3, 1 / 3)
    static = {s: _records(STATIC, noise=0.02, seed=s) for s in (1, 2, 3)}
    other = {s: _records(uniform, noise=0.02, seed=s) for s in (1, 2, 3)}  # same seed, same offsets
    h = mixture_headroom.fit(static)
    c = mixture_headroom.check(h, static, other, "uniform")
    expected = -float(NATURAL @ (SLOPES * np.log(uniform / STATIC)))
    assert c.predicted == pytest.approx(expected, rel=1e-9)
    assert c.measured == pytest.approx(expected, rel=1e-6) and c.seeds == 3
    assert c.interval[0] == pytest.approx(expected, rel=1e-6) and c.interval[1] == pytest.approx(expected, rel=1e-6)
    shuffled = {1: other[2], 2: other[3], 3: other[1]}  # unpaired seeds: the offsets' noise shows
    assert mixture_headroom.check(h, static, shuffled, "uniform").interval[1] - expected > 1e-3


def test_the_check_shows_transfer_the_model_leaves_out():
    uniform = np.full(3, 1 / 3)
    shared = np.full((3, 3), 1 / 3)  # every domain learns from every domain's tokens alike
    h = mixture_headroom.fit({1: _records(STATIC, transfer=shared)})
    c = mixture_headroom.check(h, {1: _records(STATIC, transfer=shared)}, {1: _records(uniform, transfer=shared)}, "u")
    assert c.measured == pytest.approx(0.0, abs=1e-9)  # the mixture does not matter here...
    assert abs(c.predicted) > 0.01  # ...but the own-domain model says it does


def test_needed_gain_takes_the_last_step_within_the_ratio_on_statics_curve():
    steps = np.arange(50, 2351, 50)
    best = Curve(steps, 30.0 * (steps / 2350.0) ** -0.1)
    static = Curve(steps, best.values * 1.01)
    step, nats = mixture_headroom.needed_gain(static, best, 0.8)
    assert step == 1850  # 0.8 x 2350 = 1880: the nearest evaluation, 1900, would be past it
    assert nats == pytest.approx(math.log(static.values[list(steps).index(1850)] / 30.0))


def test_a_saturated_domain_gets_no_share_and_costs_nothing_to_cut():
    records = _records(STATIC)
    for r in records["eval"]:
        r["domain_loss"]["B"] = 5.0 + 1e-4 * r["iteration"] / 1000  # flat, or rising a little
    h = mixture_headroom.fit({1: records})
    assert h.slopes[1] == 0.0 and h.best_shares[1] == 0.0
    learning = np.array([True, False, True])
    best = NATURAL[learning] * SLOPES[learning] / (NATURAL[learning] * SLOPES[learning]).sum()
    np.testing.assert_allclose(h.best_shares[learning], best, rtol=1e-9)
    # B's static share is freed for A and C: the gain counts only what they win.
    expected = float(NATURAL[learning] @ (SLOPES[learning] * np.log(best / STATIC[learning])))
    assert h.best_gain == pytest.approx(expected, rel=1e-9) and h.best_gain > 0
    assert h.predicted_change({"A": 0.5, "B": 0.01, "C": 0.49}) < 0  # cutting B costs nothing


def test_bad_runs_are_named():
    records = _records(STATIC)
    for r in records["eval"]:
        r["domain_loss"] = {d: 5.0 for d in DOMAINS}
    with pytest.raises(ValueError, match="no domain's validation loss falls"):
        mixture_headroom.fit({1: records})
    records = _records(STATIC)
    del records["eval"][-1]["domain_loss"]["C"]
    with pytest.raises(ValueError, match="not finite for C"):
        mixture_headroom.fit({1: records})
    h = mixture_headroom.fit({1: _records(STATIC)})
    with pytest.raises(ValueError, match="no samples of C"):
        with np.errstate(divide="ignore"):  # the undrawn domain's model loss is infinite
            mixture_headroom.check(h, {1: _records(STATIC)}, {1: _records([0.5, 0.5, 0.0])}, "two")
    with pytest.raises(ValueError, match="ends at step 500"):
        mixture_headroom.check(h, {1: _records(STATIC)}, {1: _records(STATIC, steps=range(50, 501, 50))}, "short")


def test_the_report_section_states_the_need_the_gain_and_each_methods_check():
    static, uniform = _records(STATIC), _records(np.full(3, 1 / 3))
    by_seed = {"static": {1: static}, "uniform": {1: uniform}, "hds": {1: _records(STATIC)}}
    curves = {m: scheduler_report.sc.eval_curve(runs[1]) for m, runs in by_seed.items()}
    text = "\n".join(scheduler_report.headroom_section(curves, by_seed, "hds", ["static", "uniform"]))
    h = mixture_headroom.fit(by_seed["static"])
    assert f"gains {h.best_gain:.4f} nats" in text
    predicted = h.predicted_change(dict(zip(DOMAINS, [1 / 3] * 3)))
    assert f"| uniform | {predicted:+.4f} | {predicted:+.4f} (" in text  # predicted, then measured
    assert "| hds | " in text and "at step 800" in text

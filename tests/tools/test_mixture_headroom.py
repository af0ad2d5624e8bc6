"""The headroom estimate (tools/mixture_headroom.py) on runs whose losses follow its model
exactly, so every figure has a closed form to compare with."""

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


def _records(shares, steps=range(0, 1001, 50), samples_per_step=64):
    """A run drawing ``shares`` of each domain whose validation losses are c_i - b_i ln(s_i t)."""
    shares = np.asarray(shares, dtype=float)
    config = {"domains": list(DOMAINS), "natural_weights": NATURAL.tolist()}
    train = [{"iteration": t, "domain_samples": dict(zip(DOMAINS, (shares * samples_per_step * 50).tolist()))}
             for t in steps if t > 0]
    evals = [{"split": "valid", "iteration": t,
              "domain_loss": dict(zip(DOMAINS, (OFFSETS - SLOPES * np.log(shares * max(t, 1))).tolist()))}
             for t in steps]
    return {"config": [config], "train": train, "eval": evals}


def test_slopes_best_shares_and_gain_follow_the_model():
    static = NATURAL
    h = mixture_headroom.headroom({1: _records(static), 2: _records(static)})
    assert h.domains == DOMAINS
    np.testing.assert_allclose(h.slopes, SLOPES, rtol=1e-9)
    best = NATURAL * SLOPES / (NATURAL * SLOPES).sum()
    np.testing.assert_allclose(h.best_shares, best, rtol=1e-9)
    assert h.best_gain == pytest.approx(float(NATURAL @ (SLOPES * np.log(best / static))), rel=1e-9)
    assert h.best_gain > 0.01  # these slopes differ enough to leave real headroom


def test_a_static_mixture_already_at_the_best_shares_has_no_headroom():
    best = NATURAL * SLOPES / (NATURAL * SLOPES).sum()
    h = mixture_headroom.headroom({1: _records(best)})
    assert h.best_gain == pytest.approx(0.0, abs=1e-12)


def test_the_check_against_another_mixture_predicts_what_a_model_run_measures():
    uniform = np.full(3, 1 / 3)
    h = mixture_headroom.headroom({1: _records(NATURAL), 2: _records(NATURAL)},
                                  {1: _records(uniform), 2: _records(uniform)}, "uniform")
    expected = -float(NATURAL @ (SLOPES * np.log(uniform / NATURAL)))
    assert h.contrast == "uniform" and h.contrast_seeds == 2
    assert h.predicted_contrast == pytest.approx(expected, rel=1e-9)
    assert h.measured_contrast == pytest.approx(expected, rel=1e-6)
    assert h.contrast_sd == pytest.approx(0.0, abs=1e-9)


def test_needed_gain_reads_the_baseline_curve_at_the_ratio_of_its_steps():
    curve = Curve(np.array([500, 1000, 1500, 2000, 2500]), np.array([40.0, 35.0, 32.0, 31.0, 30.0]))
    step, nats = mixture_headroom.needed_gain(curve, 0.8)
    assert step == 2000 and nats == pytest.approx(math.log(31.0 / 30.0))


def test_a_domain_whose_loss_does_not_fall_is_named():
    records = _records(NATURAL)
    for r in records["eval"]:
        r["domain_loss"]["B"] = 5.0
    with pytest.raises(ValueError, match="'B'"):
        mixture_headroom.headroom({1: records})


def test_the_report_section_states_the_need_the_gain_and_the_check():
    static, uniform = _records(NATURAL), _records(np.full(3, 1 / 3))
    by_seed = {"static": {1: static}, "uniform": {1: uniform}, "hds": {1: _records(NATURAL)}}
    curves = {m: scheduler_report.sc.eval_curve(runs[1]) for m, runs in by_seed.items()}
    text = "\n".join(scheduler_report.headroom_section(curves, by_seed, "hds", ["static", "uniform"]))
    h = mixture_headroom.headroom(by_seed["static"], by_seed["uniform"], "uniform")
    assert f"gains {h.best_gain:.4f} nats" in text
    assert f"predicts uniform - static = {h.predicted_contrast:+.4f}" in text
    assert "at step 800" in text  # 0.8 of the 1000 steps static needed

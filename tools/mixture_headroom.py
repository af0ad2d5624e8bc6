"""How much a fixed data mixture could gain on a benchmark, estimated from the runs of the
natural mixture (static), and how well that estimate predicts the other methods' runs: the
headroom a scheduler has, measured before anyone argues about the scheduler. Pure functions
over read_metrics records, like ``scheduler_comparison``; the comparison report prints them.

The model (ours; a first-order version of the per-domain scaling laws of ADO and RegMix):
each domain's validation loss depends only on the tokens drawn from its own domain,

    L_i = c_i - b_i ln(s_i N),

s_i the domain's share of the samples, N the samples seen. b_i is read off the static runs'
seed-mean per-domain curves as the drop per e-fold of steps over a window of the run (0 for a
domain whose loss does not fall there: saturated, it gets no share and costs nothing to cut). The
natural mixture's loss sum_i pi_i L_i is then lowered most, at equal steps, by the shares
s* ∝ pi_i b_i (the maximiser of sum_i pi_i b_i ln s_i on the simplex), by

    gain = sum_i pi_i b_i ln(s*_i / s_i)   (nats of the natural mixture's loss).

What the model leaves out, and so what its figure cannot bound:
- transfer and competition between domains (a domain's loss responding to other domains'
  tokens, or to its own share more or less than to time);
- order: within the model no schedule that varies over time beats the best fixed mixture;
- the learning-rate schedule: the time slopes b_i mix the data's effect with the decay's, by
  an amount that differs between domains and cannot be separated with one schedule, so the
  gain is given for several windows of the run.
The check measures how much of this matters: the model predicts each method's change of the
natural loss against static from its realised shares alone, beside the measured change.

What the target asks is read off the curves: to reach the best baseline's final perplexity in
at most ``ratio`` of that baseline's steps, a method must at that step be ln(ppl_static /
ppl_best_final) nats below static's curve, the same footing as the model's gain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

import scheduler_comparison as sc

WINDOWS = ((0.25, 0.5), (0.5, 1.0), (0.8, 1.0))  # fractions of the run the slopes are read over
MAIN_WINDOW = (0.5, 1.0)


@dataclass(frozen=True)
class Headroom:
    """The model fitted to static's runs. Losses in nats of the natural mixture's loss."""

    domains: tuple
    natural: np.ndarray  # pi, renormalised over ``domains``
    slopes: np.ndarray  # b_i over MAIN_WINDOW; 0 for a domain whose loss did not fall (saturated)
    shares: np.ndarray  # static's realised sample shares
    best_shares: np.ndarray  # s*
    best_gain: float  # the best fixed mixture's gain over static at equal steps (MAIN_WINDOW)
    window_gains: dict  # (first step, last step) -> the same gain with slopes from that window

    def predicted_change(self, shares: Mapping[str, float]) -> float:
        """The model's natural-loss change from static's realised shares to ``shares``."""
        missing = [d for d in self.domains if shares.get(d, 0.0) <= 0]
        if missing:
            raise ValueError(f"no samples of {', '.join(missing)}: the model cannot predict their loss")
        other = np.array([shares[d] for d in self.domains])
        learning = self.slopes > 0
        ratio = other[learning] / other.sum() / self.shares[learning]
        return float(-(self.natural[learning] @ (self.slopes[learning] * np.log(ratio))))


@dataclass(frozen=True)
class Check:
    """A method's natural-loss change against static: predicted by the model, and measured
    (final validation, paired by seed; bootstrap 95% interval over the seeds)."""

    method: str
    predicted: float
    measured: float
    interval: tuple
    seeds: int


def realised_shares(records_by_seed: Sequence[Mapping[str, list]]) -> dict[str, float]:
    """Each domain's share of the samples the runs drew (every logged window, all seeds)."""
    counts: dict[str, float] = {}
    for records in records_by_seed:
        for r in records.get("train", []):
            for domain, n in (r.get("domain_samples") or {}).items():
                counts[domain] = counts.get(domain, 0.0) + float(n)
    total = sum(counts.values())
    if total <= 0:
        raise ValueError("the runs' train records carry no domain_samples")
    return {d: n / total for d, n in counts.items()}


def domain_losses_at(records_by_seed: Sequence[Mapping[str, list]], step: int, domains: Sequence[str]) -> np.ndarray:
    """Each domain's validation loss at an evaluated step, averaged over seeds."""
    per_seed = []
    for records in records_by_seed:
        found = [r for r in sc.eval_records(records) if r["iteration"] == step]
        if not found:
            raise ValueError(f"a run has no validation evaluation at step {step}")
        loss = found[0]["domain_loss"]
        bad = [d for d in domains if not isinstance(loss.get(d), (int, float)) or not math.isfinite(loss[d])]
        if bad:
            raise ValueError(f"the validation loss at step {step} is missing or not finite for {', '.join(bad)}")
        per_seed.append([loss[d] for d in domains])
    return np.mean(per_seed, axis=0)


def _step_at(steps: np.ndarray, at: float) -> int:
    """The largest evaluated step <= at (the first one when none is)."""
    below = steps[steps <= at + 1e-9]
    return int(below[-1] if below.size else steps[0])


def loss_slopes(records_by_seed: Sequence[Mapping[str, list]], domains: Sequence[str],
                window: tuple = MAIN_WINDOW) -> tuple[np.ndarray, tuple]:
    """(b_i, (first step, last step)): the drop of each domain's seed-mean validation loss per
    e-fold of steps between the evaluated steps at the window's fractions of the run."""
    steps = sc.mean_curve([sc.eval_curve(r) for r in records_by_seed])[0].steps
    first, last = _step_at(steps, window[0] * steps[-1]), _step_at(steps, window[1] * steps[-1])
    if first <= 0 or first >= last:
        raise ValueError(f"the runs need validation evaluations inside {window} of the run to measure slopes "
                         f"(evaluated steps {list(steps)})")
    early, late = domain_losses_at(records_by_seed, first, domains), domain_losses_at(records_by_seed, last, domains)
    return (early - late) / math.log(last / first), (first, last)


def _best(natural: np.ndarray, slopes: np.ndarray, shares: np.ndarray) -> tuple[np.ndarray, float]:
    best = natural * slopes / (natural * slopes).sum()
    learning = slopes > 0  # a saturated domain (b = 0) gets no share and its loss does not change
    return best, float(natural[learning] @ (slopes[learning] * np.log(best[learning] / shares[learning])))


def fit(static_by_seed: Mapping[int, Mapping[str, list]]) -> Headroom:
    """The model fitted to the static runs (seed -> records)."""
    runs = list(static_by_seed.values())
    natural = sc.natural_weights(runs[0])
    domains = tuple(natural)
    drawn = realised_shares(runs)
    missing = [d for d in domains if drawn.get(d, 0.0) <= 0]
    if missing:
        raise ValueError(f"static drew no samples of {', '.join(missing)}")
    pi = np.array([natural[d] for d in domains])
    pi = pi / pi.sum()
    shares = np.array([drawn[d] for d in domains])
    shares = shares / shares.sum()
    gains, main = {}, None
    for window in WINDOWS:
        slopes, steps = loss_slopes(runs, domains, window)
        if not np.all(np.isfinite(slopes)) or not np.any(slopes > 0):
            raise ValueError(f"no domain's validation loss falls over steps {steps[0]}..{steps[1]} of the static "
                             f"runs: {dict(zip(domains, slopes.round(4).tolist()))}")
        slopes = np.maximum(slopes, 0.0)  # a loss that does not fall: a saturated domain (noise around flat)
        best, gains[steps] = _best(pi, slopes, shares)
        if window == MAIN_WINDOW:
            main = (slopes, best, gains[steps])
    slopes, best, gain = main
    return Headroom(domains, pi, slopes, shares, best, gain, gains)


def check(headroom: Headroom, static_by_seed: Mapping[int, Mapping[str, list]],
          other_by_seed: Mapping[int, Mapping[str, list]], method: str) -> Check:
    """The model's prediction of ``method``'s natural-loss change against static, beside the
    measured one on the seeds both ran (their runs must end at the same step)."""
    predicted = headroom.predicted_change(realised_shares(list(other_by_seed.values())))
    changes = []
    for seed in (s for s in static_by_seed if s in other_by_seed):
        mine, theirs = sc.eval_curve(other_by_seed[seed]), sc.eval_curve(static_by_seed[seed])
        if mine.steps[-1] != theirs.steps[-1]:
            raise ValueError(f"{method} seed {seed} ends at step {mine.steps[-1]}, static at {theirs.steps[-1]}")
        changes.append(math.log(mine.final / theirs.final))
    measured = float(np.mean(changes)) if changes else math.nan
    return Check(method, predicted, measured, sc.bootstrap_interval(changes), len(changes))


def needed_gain(static: sc.Curve, best: sc.Curve, ratio: float = 0.8) -> tuple[int, float]:
    """(step, nats): the last evaluated step within ``ratio`` x the steps the best baseline needed
    to reach its final value, and how far below static's curve a method must be there to have
    reached that value."""
    at = _step_at(best.steps, ratio * sc.steps_to_reach(best, best.final))
    if at not in static.steps:
        raise ValueError(f"static's curve has no evaluation at step {at}")
    return at, math.log(float(static.values[list(static.steps).index(at)]) / best.final)

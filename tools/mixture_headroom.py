"""How much ANY fixed data mixture could gain on a benchmark, estimated from the runs of the
natural mixture (static) and, as a check, of one other mixture (uniform): the headroom a
scheduler has before it is tried. Pure functions over read_metrics records, like
``scheduler_comparison``; the comparison report prints them.

The model (ours; a first-order version of the per-domain scaling laws of ADO and RegMix):
each domain's validation loss falls by b_i per e-fold of the tokens of its own domain,

    L_i = c_i - b_i ln(s_i N),

s_i the share of the samples drawn from domain i, N the samples seen. b_i is read off the
static runs' seed-mean per-domain curve between half the run and its end. The natural mixture's
loss sum_i pi_i L_i is then maximally lowered, at equal steps, by the shares s* ∝ pi_i b_i
(the maximiser of sum_i pi_i b_i ln s_i on the simplex), by

    gain = sum_i pi_i b_i ln(s*_i / s_i)   (nats of the natural mixture's loss).

The learning-rate decay also lowers the loss over the second half, and it inflates every b_i
alike: that scales the gain up and leaves s* unchanged, so the estimate errs on the generous
side. Transfer between domains is not modelled; the check against a second mixture measures how
far that matters (its predicted change of the natural loss against the measured one).

What a method must achieve is read off the best baseline's curve: to reach its final
perplexity in at most ``ratio`` of its steps, a method must be ln(ppl(ratio T) / ppl(T)) nats
below the baseline's curve at ratio T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

import scheduler_comparison as sc


@dataclass(frozen=True)
class Headroom:
    """The estimates above. Losses in nats of the natural mixture's loss."""

    domains: tuple
    slopes: tuple  # b_i
    shares: tuple  # static's realised sample shares s_i
    best_shares: tuple  # s*
    best_gain: float  # the best fixed mixture's gain over static at equal steps
    contrast: Optional[str] = None  # the second mixture's method
    predicted_contrast: float = math.nan  # the model's natural-loss change, contrast - static
    measured_contrast: float = math.nan  # the measured one (mean over common seeds)
    contrast_sd: float = math.nan  # sample std over seeds of the paired change
    contrast_seeds: int = 0


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


def _domain_loss_at(records_by_seed: Sequence[Mapping[str, list]], step: int) -> dict[str, float]:
    """Per-domain validation loss at an evaluated step, averaged over seeds."""
    per_seed = []
    for records in records_by_seed:
        found = [r for r in sc.eval_records(records) if r["iteration"] == step]
        if not found:
            raise ValueError(f"a run has no validation evaluation at step {step}")
        per_seed.append(found[0]["domain_loss"])
    return {d: float(np.mean([loss[d] for loss in per_seed])) for d in per_seed[0]}


def loss_slopes(records_by_seed: Sequence[Mapping[str, list]]) -> dict[str, float]:
    """b_i: the drop of each domain's seed-mean validation loss per e-fold of steps, from the
    evaluated step nearest half the run to the last one common to all seeds."""
    steps = sc.mean_curve([sc.eval_curve(r) for r in records_by_seed])[0].steps
    last = int(steps[-1])
    half = int(steps[np.argmin(np.abs(steps - last / 2))])
    if half <= 0 or half >= last:
        raise ValueError(f"the runs need validation evaluations between step 1 and {last} to measure slopes")
    early, late = _domain_loss_at(records_by_seed, half), _domain_loss_at(records_by_seed, last)
    return {d: (early[d] - late[d]) / math.log(last / half) for d in late}


def needed_gain(baseline: sc.Curve, ratio: float = 0.8) -> tuple[int, float]:
    """(step, nats): how far below the baseline's curve a method must be at the evaluated step
    nearest ``ratio`` x the steps the baseline needed, to have reached its final value there."""
    steps = sc.steps_to_reach(baseline, baseline.final)
    at = int(baseline.steps[np.argmin(np.abs(baseline.steps - ratio * steps))])
    value = float(baseline.values[list(baseline.steps).index(at)])
    return at, math.log(value / baseline.final)


def headroom(static_by_seed: Mapping[int, Mapping[str, list]],
             contrast_by_seed: Optional[Mapping[int, Mapping[str, list]]] = None,
             contrast: Optional[str] = None) -> Headroom:
    """The model's estimates from the static runs (seed -> records), checked against the runs of
    another mixture on the same seeds when given."""
    static_runs = list(static_by_seed.values())
    natural = sc.natural_weights(static_runs[0])
    slopes, shares = loss_slopes(static_runs), realised_shares(static_runs)
    domains = tuple(d for d in natural if d in slopes and shares.get(d, 0) > 0)
    pi = np.array([natural[d] for d in domains])
    b = np.array([slopes[d] for d in domains])
    s = np.array([shares[d] for d in domains])
    s = s / s.sum()
    if np.any(b <= 0):
        falling = dict(zip(domains, b.round(4)))
        raise ValueError(f"every domain's validation loss must fall over the second half of the static runs: {falling}")
    best = pi * b / (pi * b).sum()
    result = dict(domains=domains, slopes=tuple(b), shares=tuple(s), best_shares=tuple(best),
                  best_gain=float(pi @ (b * np.log(best / s))))
    if contrast_by_seed:
        other = realised_shares(list(contrast_by_seed.values()))
        if any(other.get(d, 0) <= 0 for d in domains):
            raise ValueError(f"{contrast} drew no samples of some domain; the model cannot predict its loss")
        o = np.array([other[d] for d in domains])
        o = o / o.sum()
        seeds = [seed for seed in static_by_seed if seed in contrast_by_seed]
        changes = [math.log(sc.eval_curve(contrast_by_seed[seed]).final / sc.eval_curve(static_by_seed[seed]).final)
                   for seed in seeds]
        result.update(contrast=contrast, predicted_contrast=float(-(pi @ (b * np.log(o / s)))),
                      measured_contrast=float(np.mean(changes)) if changes else math.nan,
                      contrast_sd=float(np.std(changes, ddof=1)) if len(changes) > 1 else math.nan,
                      contrast_seeds=len(changes))
    return Headroom(**result)

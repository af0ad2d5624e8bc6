"""Comparing data-mixing methods from their runs' metrics logs: perplexity curves averaged
over seeds, the steps each method needs to reach a baseline's final perplexity (the
paper's "N% fewer iterations"), per-domain tables and the scheduler's cost per step.

Pure functions over the records of :func:`megatron_hds.training.metrics.read_metrics`;
``tools/compare_schedulers.py`` runs the trainings and writes the report.

Definitions (docs/results.md repeats them):

* A curve is a run's validation ``mean_ppl`` (the uniform mean over domains of each
  domain's perplexity) at each evaluated step; a method's curve is the mean over its
  seeds at the steps every seed evaluated.
* ``steps_to_reach(curve, target)``: the first evaluated step whose perplexity is
  <= target (equal counts as reached); None when it never gets there. No
  interpolation between evaluations, so the resolution is the evaluation interval.
* The best baseline is the method, other than the one under test, with the lowest
  final perplexity (ties: the first in the given order). Its final perplexity is the target.
* Saving of method m against baseline b: ``1 - steps_to_reach(m, final(b)) /
  steps_to_reach(b, final(b))``. For a baseline whose curve only falls, the denominator
  is its last step, which is the paper's definition ("reaches the final perplexity of
  AC-ODM with 44% fewer iterations"); for a noisy curve that touched its final value
  earlier, the earlier step is used, which makes the saving smaller, never larger.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class Curve:
    """Validation perplexity at evaluated steps (ascending, same length)."""

    steps: np.ndarray
    values: np.ndarray

    def __post_init__(self):
        if len(self.steps) != len(self.values):
            raise ValueError(f"a curve needs one value per step: {len(self.steps)} steps, {len(self.values)} values")
        if len(self.steps) == 0:
            raise ValueError("a curve needs at least one evaluated step")
        if np.any(np.diff(self.steps) <= 0):
            raise ValueError(f"curve steps must increase strictly: {list(self.steps)}")

    @property
    def final(self) -> float:
        return float(self.values[-1])

    @property
    def last_step(self) -> int:
        return int(self.steps[-1])


def eval_records(records: Mapping[str, list], split: str = "valid") -> list[dict]:
    return [r for r in records.get("eval", []) if r.get("split") == split]


def eval_curve(records: Mapping[str, list], split: str = "valid") -> Curve:
    """The run's mean-perplexity curve on ``split`` (records from read_metrics)."""
    evals = eval_records(records, split)
    if not evals:
        raise ValueError(f"the run has no {split!r} evaluation records")
    return Curve(np.array([r["iteration"] for r in evals]), np.array([float(r["mean_ppl"]) for r in evals]))


def mean_curve(curves: Sequence[Curve]) -> tuple[Curve, np.ndarray, np.ndarray]:
    """(mean curve, per-step min, per-step max) over seeds, at the steps all seeds evaluated."""
    if not curves:
        raise ValueError("no curves to average")
    common = sorted(set.intersection(*(set(c.steps.tolist()) for c in curves)))
    if not common:
        raise ValueError("the seeds' runs share no evaluated step")
    stacked = np.stack([[c.values[list(c.steps).index(s)] for s in common] for c in curves])
    return Curve(np.array(common), stacked.mean(axis=0)), stacked.min(axis=0), stacked.max(axis=0)


def steps_to_reach(curve: Curve, target: float) -> Optional[int]:
    """First evaluated step with perplexity <= target, or None."""
    reached = np.nonzero(curve.values <= target)[0]
    return int(curve.steps[reached[0]]) if reached.size else None


def saving(curve: Curve, baseline: Curve) -> Optional[float]:
    """Fraction of the baseline's steps that ``curve`` saves reaching the baseline's final
    perplexity (negative when it needs more); None when it never reaches it."""
    needed = steps_to_reach(curve, baseline.final)
    baseline_needed = steps_to_reach(baseline, baseline.final)  # <= its last step, by construction
    if needed is None:
        return None
    return 1.0 - needed / baseline_needed


def best_baseline(curves: Mapping[str, Curve], under_test: str) -> str:
    """The method other than ``under_test`` with the lowest final perplexity (first on ties)."""
    baselines = [m for m in curves if m != under_test]
    if not baselines:
        raise ValueError(f"no baseline to compare {under_test!r} with: the only method is {under_test!r}")
    return min(baselines, key=lambda m: (curves[m].final, baselines.index(m)))


@dataclass(frozen=True)
class TargetRow:
    method: str
    final_ppl: float
    steps_to_target: Optional[int]
    saving: Optional[float]


def steps_to_best_baseline(curves: Mapping[str, Curve], under_test: str) -> tuple[str, float, list[TargetRow]]:
    """(best baseline, its final perplexity, one row per method): the step at which each method
    first reaches the best baseline's final perplexity, and the saving against that baseline."""
    best = best_baseline(curves, under_test)
    target = curves[best].final
    rows = [TargetRow(m, c.final, steps_to_reach(c, target), saving(c, curves[best])) for m, c in curves.items()]
    return best, target, rows


def spread(values: Iterable[float]) -> tuple[float, float, float, float]:
    """(mean, sample std (0 for one value), min, max) of finite values; NaNs when there are none."""
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return math.nan, math.nan, math.nan, math.nan
    std = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    return float(finite.mean()), std, float(finite.min()), float(finite.max())


def final_domain_ppl(records_by_seed: Sequence[Mapping[str, list]], split: str = "valid") -> dict[str, float]:
    """Per-domain perplexity at the final evaluation, averaged over seeds."""
    finals = [eval_records(r, split)[-1]["domain_ppl"] for r in records_by_seed if eval_records(r, split)]
    domains = list(dict.fromkeys(d for f in finals for d in f))
    return {d: float(np.mean([f[d] for f in finals if d in f])) for d in domains}


def _window(train: list, first: float, last: float) -> list:
    """The records in the [first, last] fraction of a run's log records (at least one)."""
    start = min(int(math.floor(first * len(train))), max(len(train) - 1, 0))
    return train[start:max(int(math.ceil(last * len(train))), start + 1)]


def mean_weights(records_by_seed: Sequence[Mapping[str, list]], first: float = 0.0, last: float = 1.0
                 ) -> dict[str, float]:
    """Domain weights averaged over seeds and over the [first, last] fraction of each run's
    train records (e.g. 0.8..1.0: the last fifth; at least one record)."""
    picked = []
    for records in records_by_seed:
        train = [r for r in records.get("train", []) if r.get("domain_weights")]
        picked += [r["domain_weights"] for r in _window(train, first, last)]
    domains = list(dict.fromkeys(d for w in picked for d in w))
    return {d: float(np.mean([w.get(d, 0.0) for w in picked])) for d in domains}


def reward_means(records_by_seed: Sequence[Mapping[str, list]], first: float = 0.0, last: float = 1.0
                 ) -> dict[str, float]:
    """Reward components (align, quality, norm, total, ...) averaged like :func:`mean_weights`
    (non-finite values left out); empty for methods that log no reward."""
    picked = []
    for records in records_by_seed:
        train = [r for r in records.get("train", []) if isinstance(r.get("reward"), dict)]
        picked += [r["reward"] for r in _window(train, first, last)]
    keys = list(dict.fromkeys(k for r in picked for k in r))
    out = {}
    for key in keys:
        values = [float(r[key]) for r in picked if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if values:
            out[key] = float(np.mean(values))
    return out


def step_times(records_by_seed: Sequence[Mapping[str, list]]) -> tuple[float, float]:
    """(mean step time, mean scheduler time per step) in seconds over all train records of all
    seeds, leaving out each run's first record (start-up: allocations, caches, warm-up)."""
    steps, scheduler = [], []
    for records in records_by_seed:
        for r in records.get("train", [])[1:]:
            steps.append(float(r["step_time_s"]))
            scheduler.append(float(r.get("scheduler_time_s") or 0.0))
    if not steps:
        return math.nan, math.nan
    return float(np.mean(steps)), float(np.mean(scheduler))

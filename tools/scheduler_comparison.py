"""Comparing data-mixing methods from their runs' metrics logs: validation perplexity curves,
paired per-seed differences with bootstrap confidence intervals, the steps each method needs
to reach a baseline's final perplexity, per-domain tables and the scheduler's cost per step.

Pure functions over the records of :func:`megatron_hds.training.metrics.read_metrics`;
``tools/compare_schedulers.py`` runs the trainings and writes the report.

Definitions:

* Metrics of one evaluation, from its per-domain mean losses L_d (``METRICS``):
  ``natural``: exp(sum_d pi_d L_d), pi the natural (token-share) weights of the training data:
  the perplexity of the natural mixture, the paper's metric and the primary one;
  ``geometric``: exp(mean_d L_d), the geometric mean of the per-domain perplexities;
  ``arithmetic``: mean_d exp(L_d), their arithmetic mean (dominated by the hardest domains).
* A curve is a run's metric at each evaluated step; a method's curve is the mean over its
  seeds at the steps every seed evaluated.
* ``steps_to_reach(curve, target)``: the first evaluated step whose value is <= target;
  None when it never gets there. No interpolation: the resolution is the evaluation interval.
* The best baseline is the method, other than the one under test, with the lowest final
  value of the seed-mean curve (ties: the first in the given order); its final value is the
  target. ``step_ratio`` of a method against a baseline: steps_to_reach(method, final(baseline))
  / steps_to_reach(baseline, final(baseline)) (the paper's "reaches the final perplexity of
  AC-ODM with 44% fewer iterations" is a ratio of 0.56).
* Paired differences: for each seed both methods ran, final(method) - final(baseline); they
  share the seed's model initialisation, data order and evaluation samples. Their mean gets a
  bootstrap 95% interval (resampling seeds, percentile method, fixed generator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

METRICS = ("natural", "geometric", "arithmetic")


@dataclass(frozen=True)
class Curve:
    """A metric at evaluated steps (ascending, same length)."""

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


def natural_weights(records: Mapping[str, list]) -> dict[str, float]:
    """The run's natural weights by domain, from its config record."""
    config = records.get("config") or [{}]
    names, weights = config[0].get("domains"), config[0].get("natural_weights")
    if not names or not weights:
        raise ValueError("the run's metrics log has no config record with its domains and natural weights")
    return dict(zip(names, weights))


def metric(domain_loss: Mapping[str, float], natural: Mapping[str, float], name: str = "natural") -> float:
    """One evaluation's value of a metric (module docstring) over the evaluated domains."""
    domains = [d for d, v in domain_loss.items() if v is not None and math.isfinite(v)]
    if not domains:
        return math.nan
    losses = np.array([domain_loss[d] for d in domains], dtype=np.float64)
    if name == "natural":
        weights = np.array([natural[d] for d in domains], dtype=np.float64)
        return float(math.exp(float(weights @ losses) / weights.sum()))
    if name == "geometric":
        return float(math.exp(losses.mean()))
    if name == "arithmetic":
        return float(np.exp(losses).mean())
    raise ValueError(f"unknown metric {name!r}: choose from {', '.join(METRICS)}")


def eval_records(records: Mapping[str, list], split: str = "valid") -> list[dict]:
    return [r for r in records.get("eval", []) if r.get("split") == split]


def eval_curve(records: Mapping[str, list], split: str = "valid", name: str = "natural") -> Curve:
    """The run's curve of a metric on ``split`` (records from read_metrics)."""
    evals = eval_records(records, split)
    if not evals:
        raise ValueError(f"the run has no {split!r} evaluation records")
    natural = natural_weights(records)
    return Curve(np.array([r["iteration"] for r in evals]),
                 np.array([metric(r["domain_loss"], natural, name) for r in evals]))


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
    """First evaluated step with a value <= target, or None."""
    reached = np.nonzero(curve.values <= target)[0]
    return int(curve.steps[reached[0]]) if reached.size else None


def step_ratio(curve: Curve, baseline: Curve) -> Optional[float]:
    """Steps ``curve`` needs to reach the baseline's final value over the steps the baseline needs
    (<= 1: fewer); None when it never reaches it."""
    needed = steps_to_reach(curve, baseline.final)
    if needed is None:
        return None
    return needed / steps_to_reach(baseline, baseline.final)  # <= the baseline's last step, by construction


def best_baseline(curves: Mapping[str, Curve], under_test: str, candidates: Optional[Sequence[str]] = None) -> str:
    """The method other than ``under_test`` (among ``candidates``, default all) with the lowest
    final value (first on ties)."""
    baselines = [m for m in (candidates or curves) if m != under_test and m in curves]
    if not baselines:
        raise ValueError(f"no baseline to compare {under_test!r} with")
    return min(baselines, key=lambda m: (curves[m].final, baselines.index(m)))


def bootstrap_interval(values: Sequence[float], level: float = 0.95, resamples: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (resampling the values); (nan, nan) for none."""
    values = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


@dataclass(frozen=True)
class Paired:
    """Per-seed differences final(method) - final(baseline) and their summary."""

    seeds: tuple
    differences: tuple
    mean: float
    interval: tuple  # bootstrap 95%
    wins: int  # seeds where the method is lower


def paired(method_finals: Mapping[int, float], baseline_finals: Mapping[int, float]) -> Paired:
    seeds = tuple(s for s in method_finals if s in baseline_finals)
    diffs = tuple(float(method_finals[s] - baseline_finals[s]) for s in seeds)
    mean = float(np.mean(diffs)) if diffs else math.nan
    return Paired(seeds, diffs, mean, bootstrap_interval(diffs), sum(d < 0 for d in diffs))


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


def generalisation_gaps(records_by_seed: Sequence[Mapping[str, list]], last_fraction: float = 0.1
                        ) -> dict[str, float]:
    """Per domain, the final validation loss minus the training loss over the last
    ``last_fraction`` of the run (nats), averaged over seeds. Training losses are taken before
    each update, so on material the model has not seen they estimate the held-out loss; a large
    gap means the domain's training material is being memorised (it repeats), and its
    training-side signals (loss decrease, gradients) overstate what the domain teaches."""
    gaps: dict[str, list] = {}
    for records in records_by_seed:
        evals = eval_records(records, "valid")
        train = [r for r in records.get("train", []) if r.get("domain_loss")]
        if not evals or not train:
            continue
        late = _window(train, 1.0 - last_fraction, 1.0)
        for domain, valid_loss in evals[-1]["domain_loss"].items():
            losses = [r["domain_loss"][domain] for r in late
                      if math.isfinite(r["domain_loss"].get(domain, math.nan))]
            if losses:
                gaps.setdefault(domain, []).append(valid_loss - float(np.mean(losses)))
    return {d: float(np.mean(v)) for d, v in gaps.items()}


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

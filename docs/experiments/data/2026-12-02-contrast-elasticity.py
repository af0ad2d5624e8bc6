"""The real-text page's second headroom estimate (docs/experiments/2026-12-02-real-text.md):
each domain's elasticity of its validation loss to its own sample share, read off one measured
change of mixture (a near-uniform method against static, paired by seed) instead of off the
time slopes, and the best fixed mixture it implies. An extrapolation far beyond the shares
measured; the page says how far to trust it.

    python docs/experiments/data/2026-12-02-contrast-elasticity.py RUNS_DIR CONTRAST SEED [SEED ...]

RUNS_DIR holds <method>_seed<N>/checkpoints/metrics.jsonl (the page's archive, unpacked).
"""

import os
import sys

import numpy as np

sys.path[:0] = [os.path.join(os.path.dirname(__file__), "..", "..", "..", "tools")]
import mixture_headroom  # noqa: E402
import scheduler_comparison as sc  # noqa: E402
from megatron_hds.training.metrics import read_metrics  # noqa: E402

FLOOR = 1 / 64  # the hds layout draws every domain once per 64 micro-batches


def best_gain(static: dict, contrast: dict) -> float:
    h = mixture_headroom.fit(static)
    other = mixture_headroom.realised_shares(list(contrast.values()))
    ratio = np.log(np.array([other[d] for d in h.domains]) / h.shares)
    seeds = [s for s in static if s in contrast]
    final = lambda runs: np.mean([mixture_headroom.domain_losses_at([runs[s]], sc.eval_curve(runs[s]).steps[-1],
                                                                     h.domains) for s in seeds], axis=0)
    change = final(contrast) - final(static)
    moved = np.abs(ratio) >= 0.05  # domains whose share the contrast hardly moved get the median
    elasticity = np.where(moved, -change / np.where(moved, ratio, 1), 0)
    elasticity = np.where(moved, elasticity, np.median(elasticity[moved]))
    elasticity = np.maximum(elasticity, 1e-6)
    best = h.natural * elasticity / (h.natural * elasticity).sum()
    best = np.maximum(best, FLOOR)
    best /= best.sum()
    return float(h.natural @ (elasticity * np.log(best / h.shares)))


def main(runs_dir: str, contrast: str, seeds: list) -> None:
    load = lambda method: {s: read_metrics(os.path.join(runs_dir, f"{method}_seed{s}", "checkpoints")) for s in seeds}
    static, other = load("static"), load(contrast)
    print(f"best fixed mixture's gain over static, elasticities from {contrast}: {best_gain(static, other):.4f} nats")
    left_out = [best_gain({s: static[s] for s in seeds if s != o}, {s: other[s] for s in seeds if s != o})
                for o in seeds]
    print("leaving one seed out:", ", ".join(f"{g:.4f}" for g in left_out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3:]])

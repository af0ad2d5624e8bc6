#!/usr/bin/env python3
"""Draw a training run from its metrics.jsonl: validation perplexity per domain, the domain
weights over time (stacked area) and the training loss, as PNG files.

    python tools/plot_run.py runs/demo/metrics.jsonl
    python tools/plot_run.py runs/hds runs/odm --labels HDS ODM --output-dir plots/

Each argument is a metrics.jsonl or a run directory holding one. Per run it writes
<label>_valid_ppl.png, <label>_domain_weights.png and <label>_train_loss.png (no label
prefix for a single run); with several runs also compare_natural_ppl.png and
compare_train_loss.png. Default output directory: next to each run's metrics.jsonl
(comparisons next to the first run's). Prints the path of every file written.
"""

from __future__ import annotations

import argparse
import os
import re
import sys


from megatron_hds.training.metrics import METRICS_FILENAME, read_metrics

MATPLOTLIB_HINT = "plot_run.py needs matplotlib: pip install megatron_hds[plot] (or pip install matplotlib)"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(MATPLOTLIB_HINT) from None
    # Agg: files only, no display needed (clusters, CI, SSH sessions).
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _metrics_path(path: str) -> str:
    candidate = os.path.join(path, METRICS_FILENAME) if os.path.isdir(path) else path
    if not os.path.isfile(candidate):
        raise SystemExit(f"no metrics log at {candidate} (give a metrics.jsonl or the run directory holding it)")
    return candidate


def _label_for(path: str) -> str:
    return os.path.basename(os.path.dirname(os.path.abspath(path))) or "run"


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "run"


def _domain_order(records: list[dict], field: str) -> list[str]:
    """Domains in first-seen order, so colours stay stable across figures of one run."""
    names: dict[str, None] = {}
    for record in records:
        for name in record.get(field) or {}:
            names.setdefault(name, None)
    return list(names)


def _legend_outside(ax, count: int) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small" if count <= 12 else "x-small",
              ncol=1 if count <= 25 else 2, frameon=False)


def plot_valid_ppl(plt, evals: list[dict], title: str, out: str) -> bool:
    if not evals:
        return False
    domains = _domain_order(evals, "domain_ppl")
    fig, ax = plt.subplots(figsize=(10, 5.5))
    cmap = plt.get_cmap("tab20" if len(domains) > 10 else "tab10")
    for index, domain in enumerate(domains):
        xs = [r["iteration"] for r in evals if domain in r["domain_ppl"]]
        ys = [r["domain_ppl"][domain] for r in evals if domain in r["domain_ppl"]]
        ax.plot(xs, ys, marker=".", linewidth=1.2, color=cmap(index % cmap.N), label=domain)
    natural = [(r["iteration"], r["natural_ppl"]) for r in evals if "natural_ppl" in r]
    if natural:  # logs written before the field existed lack it
        ax.plot(*zip(*natural), color="black", linewidth=2.5, linestyle="--", label="natural mixture")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation perplexity (log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    _legend_outside(ax, len(domains) + 1)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def plot_domain_weights(plt, trains: list[dict], title: str, out: str) -> bool:
    trains = [r for r in trains if r.get("domain_weights")]
    if not trains:
        return False
    domains = _domain_order(trains, "domain_weights")
    iterations = [r["iteration"] for r in trains]
    stacks = [[float(r["domain_weights"].get(d, 0.0)) for r in trains] for d in domains]
    fig, ax = plt.subplots(figsize=(10, 5.5))
    cmap = plt.get_cmap("tab20" if len(domains) > 10 else "tab10")
    colors = [cmap(i % cmap.N) for i in range(len(domains))]
    if len(iterations) == 1:
        # One log point: a stacked bar, since an area needs two x values.
        bottom = 0.0
        for name, values, color in zip(domains, stacks, colors):
            ax.bar(iterations, values, bottom=bottom, color=color, label=name, width=1.0)
            bottom += values[0]
    else:
        ax.stackplot(iterations, stacks, labels=domains, colors=colors, linewidth=0.0)
        ax.set_xlim(iterations[0], iterations[-1])
    ax.set_ylim(0.0, max(1.0, max(sum(col) for col in zip(*stacks))))
    ax.set_xlabel("iteration")
    ax.set_ylabel("domain weight")
    ax.set_title(title)
    _legend_outside(ax, len(domains))
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def plot_train_loss(plt, trains: list[dict], title: str, out: str) -> bool:
    if not trains:
        return False
    fig, ax = plt.subplots(figsize=(9, 5))
    ax.plot([r["iteration"] for r in trains], [r["loss"] for r in trains], linewidth=1.5, label="train loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def plot_compare(plt, runs: list[tuple[str, dict]], kind: str, out: str, split: str) -> bool:
    fig, ax = plt.subplots(figsize=(9, 5))
    drawn = False
    for label, records in runs:
        if kind == "natural_ppl":
            evals = [r for r in records["eval"] if r.get("split") == split and "natural_ppl" in r]
            xs, ys = [r["iteration"] for r in evals], [r["natural_ppl"] for r in evals]
        else:
            xs, ys = [r["iteration"] for r in records["train"]], [r["loss"] for r in records["train"]]
        if xs:
            ax.plot(xs, ys, marker="." if kind == "natural_ppl" else None, label=label)
            drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xlabel("iteration")
    if kind == "natural_ppl":
        ax.set_yscale("log")
        ax.set_ylabel(f"{split} perplexity of the natural mixture (log scale)")
    else:
        ax.set_ylabel("training loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="metrics.jsonl files or run directories holding one")
    parser.add_argument("--output-dir", default=None,
                        help="where to write the PNGs (default: next to each metrics.jsonl)")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="one name per run (default: the directory holding its metrics.jsonl)")
    parser.add_argument("--split", default="valid", choices=("valid", "test"),
                        help="evaluation split to draw (default: valid)")
    args = parser.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.runs):
        parser.error(f"--labels got {len(args.labels)} names for {len(args.runs)} runs")
    return args


def main(argv: list[str] | None = None) -> list[str]:
    args = parse_args(argv)
    paths = [_metrics_path(p) for p in args.runs]
    plt = _pyplot()
    labels = args.labels or [_label_for(p) for p in paths]
    several = len(paths) > 1
    written: list[str] = []
    runs: list[tuple[str, dict]] = []
    for path, label in zip(paths, labels):
        records = read_metrics(path)
        runs.append((label, records))
        out_dir = args.output_dir or os.path.dirname(os.path.abspath(path))
        os.makedirs(out_dir, exist_ok=True)
        # Prefix with the run's label only when files of several runs could share a directory.
        prefix = f"{_safe(label)}_" if several else ""
        evals = [r for r in records["eval"] if r.get("split") == args.split]
        jobs = (
            ("valid_ppl", plot_valid_ppl, evals, f"{label}: {args.split} perplexity per domain"),
            ("domain_weights", plot_domain_weights, records["train"], f"{label}: domain weights"),
            ("train_loss", plot_train_loss, records["train"], f"{label}: training loss"),
        )
        for name, draw, data, title in jobs:
            out = os.path.join(out_dir, f"{prefix}{name}.png")
            if draw(plt, data, title, out):
                written.append(out)
            else:
                print(f"{path}: no records for {name}; not drawn", file=sys.stderr)
    if several:
        out_dir = args.output_dir or os.path.dirname(os.path.abspath(paths[0]))
        for kind, name in (("natural_ppl", "compare_natural_ppl.png"), ("loss", "compare_train_loss.png")):
            out = os.path.join(out_dir, name)
            if plot_compare(plt, runs, kind, out, args.split):
                written.append(out)
    if not written:
        raise SystemExit(f"nothing to draw: no train or {args.split} eval records in {', '.join(paths)}")
    for out in written:
        print(out)
    return written


if __name__ == "__main__":
    main()

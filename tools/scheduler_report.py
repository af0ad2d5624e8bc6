"""The scheduler comparison's report: scheduler_comparison.md (tables) and plots/*.png, from the
complete runs of tools/compare_schedulers.py. What the tables mean is defined in
tools/scheduler_comparison.py; this module only lays them out."""

from __future__ import annotations

import math
import os
import platform
import sys

import mixture_headroom
import scheduler_comparison as sc
from megatron_hds.atomic_io import write_text_atomic

HOW_READ = """How to read it: every method ran the seeds below with everything else identical (model
initialisation, data order and the evaluation samples of a seed are shared). Only the held-out
seeds enter these tables; the tuning seeds, used while the methods were developed, do not.
Primary metric: validation perplexity of the natural mixture, exp(sum_d pi_d L_d)."""


def _fmt(value, digits: int = 2, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return f"{100 * value:+.0f}%" if percent else f"{value:.{digits}f}"


def _table(header: list, rows: list) -> list:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        device = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    else:
        device = f"CPU only, {os.cpu_count()} cores ({platform.processor() or platform.machine()})"
    return f"{device}; Python {platform.python_version()}, torch {torch.__version__}"


def _finals(by_seed: dict, split: str, metric: str) -> dict:
    return {seed: sc.eval_curve(records, split, metric).final for seed, records in by_seed.items()}


def final_tables(by_seed: dict) -> list:
    """Final validation (and test) values per method: mean, std, min..max over the seeds."""
    lines = ["## Final perplexity, mean over held-out seeds", "",
             "natural: the natural mixture's perplexity (primary); geometric / arithmetic: the geometric / "
             "arithmetic mean of the per-domain perplexities.", ""]
    rows = []
    for method, runs in by_seed.items():
        cells = [method]
        for split, metric in (("valid", "natural"), ("valid", "geometric"), ("valid", "arithmetic"),
                              ("test", "natural")):
            try:
                mean, std, _, _ = sc.spread(_finals(runs, split, metric).values())
            except ValueError:  # no test evaluation
                mean, std = math.nan, math.nan
            cells.append(f"{_fmt(mean)} ± {_fmt(std)}")
        cells.append(str(len(runs)))
        rows.append(cells)
    return lines + _table(["method", "valid natural", "valid geometric", "valid arithmetic", "test natural", "seeds"],
                          rows)


def paired_table(by_seed: dict, reference: str, baselines: list) -> list:
    lines = [f"## {reference} minus each method, paired by seed (final validation natural perplexity)", "",
             "Negative: lower perplexity than that method. 95% interval: bootstrap over the seeds.", ""]
    mine = _finals(by_seed[reference], "valid", "natural")
    rows = []
    for other in by_seed:
        if other == reference:
            continue
        result = sc.paired(mine, _finals(by_seed[other], "valid", "natural"))
        low, high = result.interval
        rows.append([other, _fmt(result.mean, 3), f"{_fmt(low, 3)} .. {_fmt(high, 3)}",
                     f"{result.wins}/{len(result.seeds)}", ", ".join(f"{d:+.3f}" for d in result.differences)])
    return lines + _table(["method", "mean difference", "95% interval", "seeds lower", "per seed"], rows)


def target_section(curves: dict, by_seed: dict, reference: str, baselines: list) -> list:
    """Steps to the best baseline's final natural perplexity, and whether the target is met."""
    best = sc.best_baseline(curves, reference, baselines)
    target = curves[best].final
    lines = [f"## Steps to reach the best baseline's final perplexity ({best}: {target:.3f})", "",
             "On the seed-mean natural-perplexity curves; ratio = steps / the steps the baseline needed.", ""]
    rows = [[m, _fmt(c.final, 3), str(sc.steps_to_reach(c, target) or "never"),
             _fmt(sc.step_ratio(c, curves[best]), 3)] for m, c in curves.items()]
    lines += _table(["method", "final", "first step at target", "step ratio"], rows)
    per_seed = []
    for seed, records in by_seed[reference].items():
        if seed in by_seed[best]:
            ratio = sc.step_ratio(sc.eval_curve(records), sc.eval_curve(by_seed[best][seed]))
            per_seed.append(f"seed {seed}: {_fmt(ratio, 3)}")
    ratio = sc.step_ratio(curves[reference], curves[best])
    result = sc.paired(_finals(by_seed[reference], "valid", "natural"), _finals(by_seed[best], "valid", "natural"))
    met = ratio is not None and ratio <= 0.8 and result.interval[1] < 0
    lines += ["", f"Per seed ({reference} against {best} of the same seed): {', '.join(per_seed)}.", "",
              f"Target ({reference} reaches {best}'s final perplexity in at most 0.8x its steps, and the paired 95% "
              f"interval of {reference} - {best} lies below zero): **{'met' if met else 'not met'}** (step ratio "
              f"{_fmt(ratio, 3)}, interval {_fmt(result.interval[0], 3)} .. {_fmt(result.interval[1], 3)})."]
    return lines


def headroom_section(curves: dict, by_seed: dict, reference: str, baselines: list) -> list:
    """What the target asks of a mixture against what a fixed mixture could gain by the
    own-domain model of tools/mixture_headroom.py, and how well that model predicts each method."""
    lines = ["## Headroom: what a fixed mixture could gain here", "",
             "Losses in nats of the natural mixture's validation loss. The model, and what it leaves out "
             "(transfer between domains, order, the learning-rate decay): tools/mixture_headroom.py.", ""]
    best = sc.best_baseline(curves, reference, baselines)
    try:
        h = mixture_headroom.fit(by_seed["static"])
        step, needed = mixture_headroom.needed_gain(curves["static"], curves[best])
    except ValueError as why:
        return lines + [f"Not estimated: {why}"]
    windows = ", ".join(f"{g:.4f} (steps {a}..{b})" for (a, b), g in h.window_gains.items())
    shares = ", ".join(f"{d} {s:.3f} ({t:.3f})" for d, s, t in zip(h.domains, h.best_shares, h.shares))
    lines += [f"- The target asks {reference} to be {needed:.4f} nats ({_fmt(math.expm1(needed), percent=True)} "
              f"perplexity) below static's seed-mean curve at step {step}, to have reached {best}'s final value there.",
              f"- By the model fitted to static's runs, the best fixed mixture gains {h.best_gain:.4f} nats over "
              f"static at equal steps; with the slopes read over other windows: {windows}. Its sample shares "
              f"(static's in brackets): {shares}.", "",
              "The model's prediction of each method's change against static, from its realised sample shares "
              "alone, beside the measured change (final validation, paired by seed). Where the interval misses "
              "the prediction, the model leaves out something that matters, and its gain is no bound.", ""]
    rows = []
    for method, runs in by_seed.items():
        if method == "static":
            continue
        try:
            c = mixture_headroom.check(h, by_seed["static"], runs, method)
        except ValueError as why:
            rows.append([method, "n/a", str(why), ""])
            continue
        rows.append([method, f"{c.predicted:+.4f}", f"{c.measured:+.4f} ({_fmt(c.interval[0], 4)} .. "
                     f"{_fmt(c.interval[1], 4)})", str(c.seeds)])
    return lines + _table(["method", "predicted", "measured (95% interval)", "seeds"], rows)


def domain_tables(runs: dict) -> list:
    domains = list(dict.fromkeys(d for records in runs.values() for d in sc.final_domain_ppl(records)))
    per_domain = {m: sc.final_domain_ppl(records) for m, records in runs.items()}
    lines = ["## Final validation perplexity per domain (mean over seeds)", ""]
    lines += _table(["domain", *runs], [[d, *(_fmt(per_domain[m].get(d)) for m in runs)] for d in domains])
    early = {m: sc.mean_weights(r, 0.0, 0.1) for m, r in runs.items()}
    late = {m: sc.mean_weights(r, 0.8, 1.0) for m, r in runs.items()}
    lines += ["", "## Domain weights (mean over seeds): first tenth / last fifth of the run", ""]
    lines += _table(["domain", *runs], [[d, *(f"{early[m].get(d, 0):.3f} / {late[m].get(d, 0):.3f}" for m in runs)]
                                        for d in domains])
    return lines


def generalisation_table(runs: dict) -> list:
    gaps = {m: sc.generalisation_gaps(records) for m, records in runs.items()}
    domains = list(dict.fromkeys(d for g in gaps.values() for d in g))
    if not domains:
        return []
    lines = ["## Generalisation gap per domain (mean over seeds)", "",
             "Final validation loss minus the training loss of the run's last tenth, in nats. A gap that grows "
             "with a domain's weight means its training material repeats and is being memorised: the "
             "training-side signals of the learning schedulers then overstate what the domain teaches.", ""]
    return lines + _table(["domain", *runs], [[d, *(_fmt(gaps[m].get(d), 3) for m in runs)] for d in domains])


def reward_tables(runs: dict) -> list:
    rewards = {m: (sc.reward_means(r, 0.0, 0.1), sc.reward_means(r, 0.8, 1.0)) for m, r in runs.items()}
    rewards = {m: v for m, v in rewards.items() if v[0] or v[1]}
    if not rewards:
        return []
    lines = ["## What the learning schedulers logged (rewards, agent state): mean per logged step", ""]
    for method, (first, last) in rewards.items():
        keys = list(dict.fromkeys((*first, *last)))
        lines += [f"{method}:", ""] + _table(["quantity", "first tenth", "last fifth"],
                                             [[k, _fmt(first.get(k), 3), _fmt(last.get(k), 3)] for k in keys]) + [""]
    return lines[:-1]


def time_table(runs: dict, wall_minutes: dict) -> list:
    lines = ["## Time per step", "", "Mean over logged windows (each run's first left out); scheduler = signals, "
             "agent update and the weights' broadcast. Wall time: all seeds, start-up and evaluations included.", ""]
    rows = []
    for method, records in runs.items():
        step, scheduler = sc.step_times(records)
        rows.append([method, _fmt(1000 * step, 1), _fmt(1000 * scheduler, 2), _fmt(scheduler / step * 100, 2) + "%",
                     _fmt(wall_minutes.get(method), 1)])
    return lines + _table(["method", "step (ms)", "scheduler (ms)", "scheduler share", "wall time (min)"], rows)


REPORT_FILE = "scheduler_comparison.md"
PLOTS_DIR = "plots"


def write_report(output_dir: str, by_seed: dict, header: dict, reference: str, baselines: list,
                 wall_minutes: dict) -> str:
    """scheduler_comparison.md and the plots for the held-out runs ``by_seed`` (method -> seed -> records)."""
    runs = {method: list(seeds.values()) for method, seeds in by_seed.items()}
    curves, bands = {}, {}
    for method, records in runs.items():
        curves[method], low, high = sc.mean_curve([sc.eval_curve(r) for r in records])
        bands[method] = (low, high)
    methods = ", ".join(f"{m} (`{header['methods'][m]}`)" for m in runs)
    lines = ["# Scheduler comparison", "", HOW_READ, "", f"Command: `{header['command']}`", "",
             f"Hardware: {hardware()}", "",
             f"Held-out seeds: {', '.join(map(str, header['seeds']))}. Tuning seeds (not counted here): "
             f"{', '.join(map(str, header['tuning_seeds'])) or 'none given'}. Evaluation seed: {header['eval_seed']}. "
             f"{header['train_iters']} steps per run, validation every {header['eval_interval']} steps. "
             f"Methods: {methods}."]
    if header.get("missing"):
        lines += ["", f"Incomplete runs left out: {', '.join(header['missing'])}."]
    lines += ["", *final_tables(by_seed)]
    if reference in runs and any(b in runs for b in baselines):
        lines += ["", *paired_table(by_seed, reference, baselines), "",
                  *target_section(curves, by_seed, reference, baselines)]
        if "static" in by_seed:
            lines += ["", *headroom_section(curves, by_seed, reference, baselines)]
    lines += ["", *domain_tables(runs)]
    gaps = generalisation_table(runs)
    if gaps:
        lines += ["", *gaps]
    rewards = reward_tables(runs)
    if rewards:
        lines += ["", *rewards]
    lines += ["", *time_table(runs, wall_minutes)]
    plots = write_plots(output_dir, by_seed, curves, bands)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{os.path.basename(p)}](plots/{os.path.basename(p)})" for p in plots]
    path = os.path.join(output_dir, REPORT_FILE)
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def write_plots(output_dir: str, by_seed: dict, curves: dict, bands: dict) -> list:
    try:
        from plot_run import _pyplot
        plt = _pyplot()
    except SystemExit as missing:  # no matplotlib: tables only
        print(missing, file=sys.stderr)
        return []
    out_dir = os.path.join(output_dir, PLOTS_DIR)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    fig, ax = plt.subplots(figsize=(9, 5))
    for method, curve in curves.items():
        line, = ax.plot(curve.steps, curve.values, label=method)
        low, high = bands[method]
        if len(by_seed[method]) > 1:
            ax.fill_between(curve.steps, low, high, color=line.get_color(), alpha=0.12, linewidth=0)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation perplexity of the natural mixture (log scale)")
    ax.set_title("mean over held-out seeds (band: min..max)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    written.append(os.path.join(out_dir, "valid_ppl.png"))
    fig.savefig(written[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, axes = plt.subplots(1, len(by_seed), figsize=(3.2 * len(by_seed) + 2, 3.8), sharey=True, squeeze=False)
    for ax, (method, seeds) in zip(axes[0], by_seed.items()):
        seed, records = next(iter(seeds.items()))
        train = [r for r in records["train"] if r.get("domain_weights")]
        domains = list(train[0]["domain_weights"]) if train else []
        if train:
            ax.stackplot([r["iteration"] for r in train], [[r["domain_weights"].get(d, 0.0) for r in train]
                                                            for d in domains], labels=domains, linewidth=0)
        ax.set_title(f"{method} (seed {seed})")
        ax.set_xlabel("iteration")
    axes[0][0].set_ylabel("domain weight")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
    written.append(os.path.join(out_dir, "domain_weights.png"))
    fig.savefig(written[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return written

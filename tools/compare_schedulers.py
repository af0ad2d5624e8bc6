#!/usr/bin/env python3
"""Compare data-mixing methods (HDS against static, uniform, ODM, AC-ODM) with everything
else identical, and write a report: tables in scheduler_comparison.md, PNG plots.

    python tools/compare_schedulers.py --output-dir runs/compare \\
        --methods static,uniform,odm,acodm,hds --seeds 1,2 --train-iters 400 --eval-interval 25

Each (method, seed) is one run of examples/pretrain_gpt_hds.sh in
``<output-dir>/runs/<method>_seed<seed>/`` with ``--mixing <method> --seed <seed>
--hds-seed <seed>``; the runs of one seed share the model initialisation, the evaluation
set, the LR schedule and the token budget. Every other setting is the example script's
environment (MODEL, SEQ_LENGTH, GLOBAL_BATCH, MICRO_BATCH, LR, MIN_LR, PRECISION, TP, PP,
EVAL_ITERS, SAVE_INTERVAL, SPLIT, NPROC_PER_NODE, ...), read from this process's
environment, plus ``--extra-args``. Without ``--data-manifest`` (or DATA_MANIFEST) the demo
corpus is built in ``<output-dir>/data`` first.

Launchers: ``local`` runs the runs here, one after another, or ``--parallel N`` at a time
(a SLURM allocation is used when the tool runs inside one); ``sbatch`` submits one job per
run (``--sbatch-args`` are passed to sbatch) and, with ``--wait``, waits for them and writes
the report. With ``--parallel N`` and GPUs visible, each of the N concurrent runs gets its
own 1/N of them (CUDA_VISIBLE_DEVICES, its own MASTER_PORT); on CPU each gets
OMP_NUM_THREADS = cores / N. Concurrent runs share the machine, so their step times are not
each method's own cost.

Rerunning the same command resumes: finished runs (a checkpoint at --train-iters) are not
redone, unfinished ones resume from their last checkpoint (set SAVE_INTERVAL for that),
queued SLURM jobs are left alone. The per-run settings are recorded in
``<output-dir>/comparison_settings.json``; a rerun with different ones stops with the
difference instead of mixing incomparable runs. ``--report-only`` writes the report from
whatever runs are complete.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time


from megatron_hds.atomic_io import write_text_atomic
import scheduler_comparison
from megatron_hds.checkpoint.store import find_latest_iteration
from megatron_hds.training.metrics import read_metrics

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_SCRIPT = os.path.join(REPO_ROOT, "examples", "pretrain_gpt_hds.sh")
DEMO_DATA_SCRIPT = os.path.join(REPO_ROOT, "examples", "build_demo_data.sh")
METHODS = ("static", "uniform", "odm", "acodm", "hds")
# The example script's settings that change what a run computes: recorded, and must match on reruns.
SCRIPT_KNOBS = ("MODEL", "DEMO_MODEL_ARGS", "SEQ_LENGTH", "GLOBAL_BATCH", "MICRO_BATCH", "LR", "MIN_LR", "PRECISION",
                "TP", "PP", "EVAL_ITERS", "SPLIT", "NPROC_PER_NODE")
SETTINGS_FILE = "comparison_settings.json"
COMMAND_FILE = "comparison_command.txt"  # the last command that trained (a --report-only rerun keeps it)


# ---- the runs ------------------------------------------------------------------------
def run_name(method: str, seed: int) -> str:
    return f"{method}_seed{seed}"


def run_dir(output_dir: str, method: str, seed: int) -> str:
    return os.path.join(output_dir, "runs", run_name(method, seed))


def is_complete(path: str, train_iters: int) -> bool:
    latest = find_latest_iteration(os.path.join(path, "checkpoints"))
    return latest is not None and latest >= train_iters


def run_environment(args, manifest: str, method: str, seed: int) -> dict:
    env = dict(os.environ)
    extra = f"--seed {seed} --hds-seed {seed} {args.extra_args}".strip()
    env.update(DATA_MANIFEST=manifest, OUTPUT_DIR=run_dir(args.output_dir, method, seed), MIXING=method,
               TRAIN_ITERS=str(args.train_iters), EVAL_INTERVAL=str(args.eval_interval), EXTRA_ARGS=extra,
               PYTHON=env.get("PYTHON", sys.executable))
    return env


def settings(args, manifest: str) -> dict:
    return {"data_manifest": os.path.abspath(manifest), "train_iters": args.train_iters,
            "eval_interval": args.eval_interval, "extra_args": args.extra_args,
            "environment": {k: os.environ[k] for k in SCRIPT_KNOBS if k in os.environ}}


def check_settings(output_dir: str, current: dict) -> None:
    """Record the per-run settings, or stop when they differ from the recorded ones."""
    path = os.path.join(output_dir, SETTINGS_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            recorded = json.load(handle)
        changed = {k: (recorded.get(k), current.get(k)) for k in set(recorded) | set(current)
                   if recorded.get(k) != current.get(k)}
        if changed:
            lines = "\n".join(f"  {k}: recorded {old!r}, now {new!r}" for k, (old, new) in sorted(changed.items()))
            raise SystemExit(f"{output_dir} holds runs made with other settings:\n{lines}\n"
                             "use the same settings to resume, or a new --output-dir")
        return
    os.makedirs(output_dir, exist_ok=True)
    write_text_atomic(path, json.dumps(current, indent=2, sort_keys=True) + "\n")


def demo_manifest(output_dir: str) -> str:
    print(f"building the demo data in {output_dir}/data (skipped when it exists)", flush=True)
    proc = subprocess.run(["bash", DEMO_DATA_SCRIPT, output_dir], stdout=subprocess.PIPE, text=True, check=True)
    return proc.stdout.strip().splitlines()[-1]


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def slot_environments(parallel: int) -> list[dict]:
    """What each of `parallel` concurrent local runs adds to its environment: a disjoint share
    of the GPUs and its own rendezvous port, or on CPU its share of the cores."""
    if parallel == 1:
        return [{}]
    gpus = visible_gpus()
    if gpus:
        if len(gpus) < parallel:
            raise SystemExit(f"--parallel {parallel} needs at least {parallel} GPUs; {len(gpus)} are visible "
                             f"({','.join(gpus)})")
        share = len(gpus) // parallel
        return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[k * share:(k + 1) * share]),
                 "MASTER_PORT": str(29500 + 17 * (k + 1))} for k in range(parallel)]
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    return [{"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)} for _ in range(parallel)]


class LocalRun:
    """One (method, seed) training here, in the background; ``finish()`` waits and reports."""

    def __init__(self, args, manifest: str, method: str, seed: int, slot_env: dict):
        self.args, self.method, self.seed = args, method, seed
        self.path = run_dir(args.output_dir, method, seed)
        os.makedirs(self.path, exist_ok=True)
        self.log = os.path.join(self.path, "train.log")
        self.start = time.perf_counter()
        env = {**run_environment(args, manifest, method, seed), **slot_env}
        with open(self.log, "a", encoding="utf-8") as handle:
            self.proc = subprocess.Popen(["bash", TRAIN_SCRIPT], env=env, stdout=handle, stderr=subprocess.STDOUT,
                                         cwd=self.path)

    def finish(self) -> bool:
        code = self.proc.wait()
        seconds = time.perf_counter() - self.start
        with open(os.path.join(self.path, "wall_time_s"), "a", encoding="utf-8") as handle:
            handle.write(f"{seconds:.1f}\n")  # one line per attempt: a resumed run has several
        ok = code == 0 and is_complete(self.path, self.args.train_iters)
        print(f"  {run_name(self.method, self.seed)}: {'done' if ok else f'FAILED (exit code {code})'} in "
              f"{seconds / 60:.1f} min (log: {self.log})", flush=True)
        return ok


def run_local(args, manifest: str, pending: list[tuple[str, int]]) -> list[str]:
    """Train the pending runs, at most --parallel at a time; returns the names of failed ones."""
    free = slot_environments(args.parallel)
    running: dict[int, LocalRun] = {}  # slot -> run
    failed = []
    queue = list(enumerate(pending, 1))
    while queue or running:
        while queue and len(running) < args.parallel:
            index, (method, seed) = queue.pop(0)
            slot = next(k for k in range(args.parallel) if k not in running)
            print(f"[{index}/{len(pending)}] training {run_name(method, seed)}", flush=True)
            running[slot] = LocalRun(args, manifest, method, seed, free[slot])
        # The run that ends first frees its slot (polling: Popen offers no wait-for-any).
        while not (done := [k for k, run in running.items() if run.proc.poll() is not None]):
            time.sleep(1.0)
        for slot in done:
            run = running.pop(slot)
            if not run.finish():
                failed.append(run_name(run.method, run.seed))
    return failed


def queued_job(path: str):
    """The SLURM job id of this run when it is still pending or running, else None."""
    id_file = os.path.join(path, "slurm_job_id")
    if not os.path.exists(id_file):
        return None
    job_id = open(id_file, encoding="utf-8").read().strip()
    proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True)
    return job_id if proc.returncode == 0 and proc.stdout.strip() else None


def submit(args, manifest: str, method: str, seed: int) -> str:
    path = run_dir(args.output_dir, method, seed)
    os.makedirs(path, exist_ok=True)
    command = ["sbatch", "--parsable", f"--job-name=cmp_{run_name(method, seed)}",
               f"--output={os.path.join(path, 'slurm_%j.log')}", *shlex.split(args.sbatch_args), TRAIN_SCRIPT]
    proc = subprocess.run(command, env=run_environment(args, manifest, method, seed), capture_output=True,
                          text=True, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"sbatch failed for {run_name(method, seed)}: {proc.stderr.strip()}")
    job_id = proc.stdout.strip().split(";")[0]
    write_text_atomic(os.path.join(path, "slurm_job_id"), job_id + "\n")
    return job_id


def launch(args, manifest: str) -> list[str]:
    """Run or submit every unfinished run; returns the names of runs that failed (local)."""
    pending = [(m, s) for s in args.seeds for m in args.methods
               if not is_complete(run_dir(args.output_dir, m, s), args.train_iters)]
    done = len(args.methods) * len(args.seeds) - len(pending)
    print(f"{done} of {done + len(pending)} runs already complete", flush=True)
    if args.launcher == "local":
        return run_local(args, manifest, pending)
    for method, seed in pending:
        job = queued_job(run_dir(args.output_dir, method, seed))
        if job is None:
            job = submit(args, manifest, method, seed)
            print(f"submitted {run_name(method, seed)}: job {job}", flush=True)
        else:
            print(f"{run_name(method, seed)}: job {job} is still queued or running", flush=True)
    return []


def queued_runs(args) -> list[str]:
    return [run_name(m, s) for s in args.seeds for m in args.methods
            if queued_job(run_dir(args.output_dir, m, s)) is not None]


def wait_for_jobs(args, poll_s: float = 30.0) -> None:
    while True:
        queued = queued_runs(args)
        if not queued:
            return
        print(f"waiting for {len(queued)} job(s): {', '.join(queued)}", flush=True)
        time.sleep(poll_s)


# ---- the report ----------------------------------------------------------------------
def _fmt(value, digits: int = 2, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return f"{100 * value:+.0f}%" if percent else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def collect(args) -> dict[str, dict[int, dict]]:
    """Records of the complete runs: method -> seed -> records (methods with no complete run left out)."""
    runs = {}
    for method in args.methods:
        by_seed = {s: read_metrics(os.path.join(run_dir(args.output_dir, method, s), "checkpoints"))
                   for s in args.seeds if is_complete(run_dir(args.output_dir, method, s), args.train_iters)}
        if by_seed:
            runs[method] = by_seed
    return runs


def wall_minutes(args, method: str) -> float:
    total = 0.0
    for seed in args.seeds:
        path = os.path.join(run_dir(args.output_dir, method, seed), "wall_time_s")
        if os.path.exists(path):
            total += sum(float(line) for line in open(path, encoding="utf-8") if line.strip())
    return total / 60


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        device = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    else:
        device = f"CPU only, {os.cpu_count()} cores ({platform.processor() or platform.machine()})"
    return f"{device}; Python {platform.python_version()}, torch {torch.__version__}"


def write_report(args, command: str) -> str:
    by_seed = collect(args)
    runs = {method: list(seeds.values()) for method, seeds in by_seed.items()}
    if not runs:
        raise SystemExit(f"no complete run in {args.output_dir}/runs yet")
    curves = {}
    bands = {}
    for method, records in runs.items():
        curves[method], low, high = scheduler_comparison.mean_curve([scheduler_comparison.eval_curve(r) for r in records])
        bands[method] = (low, high)
    missing = [run_name(m, s) for m in args.methods for s in args.seeds
               if not is_complete(run_dir(args.output_dir, m, s), args.train_iters)]
    command_file = os.path.join(args.output_dir, COMMAND_FILE)
    trained_by = open(command_file, encoding="utf-8").read().strip() if os.path.exists(command_file) else command
    lines = ["# Scheduler comparison", "", f"Command: `{trained_by}`", "", f"Hardware: {hardware()}", "",
             f"Runs: methods {', '.join(runs)}; seeds {', '.join(map(str, args.seeds))}; {args.train_iters} steps "
             f"each, validation every {args.eval_interval} steps and after the last. Settings: `{SETTINGS_FILE}`."]
    if missing:
        lines += ["", f"Incomplete runs left out: {', '.join(missing)}."]

    lines += ["", "## Final validation perplexity (mean over domains)", ""]
    rows = []
    for method, records in runs.items():
        finals = [scheduler_comparison.eval_curve(r).final for r in records]
        mean, std, low, high = scheduler_comparison.spread(finals)
        rows.append([method, _fmt(mean), _fmt(std), f"{_fmt(low)} .. {_fmt(high)}", str(len(finals))])
    lines += _table(["method", "mean over seeds", "std", "min .. max", "seeds"], rows)

    if args.reference in curves and len(curves) > 1:
        best, target, target_rows = scheduler_comparison.steps_to_best_baseline(curves, args.reference)
        lines += ["", f"## Steps to reach the best baseline's final perplexity ({best}: {target:.2f})", "",
                  "On the seed-mean curves; saving = 1 - steps / steps the baseline needed (negative: more steps).",
                  ""]
        lines += _table(["method", "final ppl", "first step at target", f"saving vs {best}"],
                        [[r.method, _fmt(r.final_ppl), str(r.steps_to_target) if r.steps_to_target else "never",
                          _fmt(r.saving, percent=True)] for r in target_rows])
        lines += ["", f"## {args.reference} against each baseline", "",
                  "Saving in steps to reach that baseline's final perplexity: on the seed-mean curves, and per seed.",
                  ""]
        rows = []
        for baseline in curves:
            if baseline == args.reference:
                continue
            per_seed = [(seed, scheduler_comparison.saving(scheduler_comparison.eval_curve(by_seed[args.reference][seed]),
                                                 scheduler_comparison.eval_curve(by_seed[baseline][seed])))
                        for seed in by_seed[args.reference] if seed in by_seed[baseline]]
            rows.append([baseline, _fmt(scheduler_comparison.saving(curves[args.reference], curves[baseline]), percent=True),
                         ", ".join(f"seed {seed}: {_fmt(s, percent=True)}" for seed, s in per_seed)])
        lines += _table(["baseline", "saving (seed mean)", "per seed"], rows)

    domains = list(dict.fromkeys(d for records in runs.values() for d in scheduler_comparison.final_domain_ppl(records)))
    per_domain = {m: scheduler_comparison.final_domain_ppl(records) for m, records in runs.items()}
    lines += ["", "## Final validation perplexity per domain (mean over seeds)", ""]
    lines += _table(["domain", *runs], [[d, *(_fmt(per_domain[m].get(d)) for m in runs)] for d in domains])

    lines += ["", "## Domain weights (mean over seeds): first tenth / last fifth of the run", ""]
    early = {m: scheduler_comparison.mean_weights(r, 0.0, 0.1) for m, r in runs.items()}
    late = {m: scheduler_comparison.mean_weights(r, 0.8, 1.0) for m, r in runs.items()}
    lines += _table(["domain", *runs], [[d, *(f"{early[m].get(d, 0):.3f} / {late[m].get(d, 0):.3f}" for m in runs)]
                                        for d in domains])

    rewards = {m: (scheduler_comparison.reward_means(r, 0.0, 0.1), scheduler_comparison.reward_means(r, 0.8, 1.0))
               for m, r in runs.items()}
    rewards = {m: v for m, v in rewards.items() if v[0] or v[1]}
    if rewards:
        lines += ["", "## What the learning schedulers logged (rewards, agent state): mean per logged step", ""]
        for method, (first, last) in rewards.items():
            keys = list(dict.fromkeys((*first, *last)))
            lines += [f"{method}:", ""]
            lines += _table(["quantity", "first tenth", "last fifth"],
                            [[k, _fmt(first.get(k), 3), _fmt(last.get(k), 3)] for k in keys]) + [""]
        lines.pop()

    lines += ["", "## Time per step", "",
              "Mean over logged windows (each run's first left out); scheduler = signals, agent update and "
              "the weights' broadcast. Wall time: all seeds, start-up and evaluations included.", ""]
    rows = []
    for method, records in runs.items():
        step, scheduler = scheduler_comparison.step_times(records)
        rows.append([method, _fmt(1000 * step, 1), _fmt(1000 * scheduler, 2), _fmt(scheduler / step * 100, 2) + "%",
                     _fmt(wall_minutes(args, method), 1)])
    lines += _table(["method", "step (ms)", "scheduler (ms)", "scheduler share", "wall time (min)"], rows)

    plots = write_plots(args, by_seed, curves, bands)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{os.path.basename(p)}](plots/{os.path.basename(p)})" for p in plots]
    path = os.path.join(args.output_dir, "scheduler_comparison.md")
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def write_plots(args, by_seed: dict, curves: dict, bands: dict) -> list[str]:
    try:
        from plot_run import _pyplot
        plt = _pyplot()
    except SystemExit as missing:  # no matplotlib: tables only
        print(missing, file=sys.stderr)
        return []
    out_dir = os.path.join(args.output_dir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(9, 5))
    for method, curve in curves.items():
        line, = ax.plot(curve.steps, curve.values, marker=".", label=method)
        low, high = bands[method]
        if len(by_seed[method]) > 1:
            ax.fill_between(curve.steps, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation mean perplexity (log scale)")
    ax.set_title("validation perplexity: mean over seeds (band: min..max)")
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
        stacks = [[r["domain_weights"].get(d, 0.0) for r in train] for d in domains]
        if train:
            ax.stackplot([r["iteration"] for r in train], stacks, labels=domains, linewidth=0)
        ax.set_title(f"{method} (seed {seed})")
        ax.set_xlabel("iteration")
    axes[0][0].set_ylabel("domain weight")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
    written.append(os.path.join(out_dir, "domain_weights.png"))
    fig.savefig(written[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return written


# ---- the command ---------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown or text!r}: choose from {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise argparse.ArgumentTypeError(f"a method is listed twice in {text!r}")
    return methods


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--output-dir", required=True, help="runs, report and plots go here")
    parser.add_argument("--methods", type=_methods, default=list(METHODS), help="comma-separated --mixing methods")
    parser.add_argument("--seeds", type=_int_list, default=[1, 2], help="comma-separated seeds (default 1,2)")
    parser.add_argument("--train-iters", type=int, required=True, help="steps per run (the same for every method)")
    parser.add_argument("--eval-interval", type=int, required=True, help="steps between validations")
    parser.add_argument("--reference", default="hds", help="the method compared against the others (default hds)")
    parser.add_argument("--data-manifest", default=os.environ.get("DATA_MANIFEST"),
                        help="manifest from tools/preprocess_data.py (default: $DATA_MANIFEST, else the demo data)")
    parser.add_argument("--extra-args", default="",
                        help='more pretrain flags for every run, one string: --extra-args="--flag value"')
    parser.add_argument("--launcher", choices=("local", "sbatch"), default="local")
    parser.add_argument("--parallel", type=int, default=1,
                        help="local: runs at a time, each on its own share of the GPUs (or CPU cores)")
    parser.add_argument("--sbatch-args", default="",
                        help='sbatch options for every job, one string: --sbatch-args="--nodes 2 --time 4:00:00"')
    parser.add_argument("--wait", action="store_true", help="with sbatch: wait for the jobs, then write the report")
    parser.add_argument("--report-only", action="store_true", help="write the report from the complete runs")
    args = parser.parse_args(argv)
    if not args.seeds:
        parser.error("--seeds is empty")
    if args.train_iters <= 0 or args.eval_interval <= 0:
        parser.error(f"--train-iters ({args.train_iters}) and --eval-interval ({args.eval_interval}) must be positive")
    if args.parallel < 1 or (args.parallel > 1 and args.launcher != "local"):
        parser.error(f"--parallel {args.parallel} must be a positive count, and above 1 only with --launcher local")
    if args.reference not in args.methods:
        parser.error(f"--reference {args.reference!r} is not among --methods {','.join(args.methods)}")
    args.output_dir = os.path.abspath(args.output_dir)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python tools/compare_schedulers.py " + " ".join(shlex.quote(a) for a in
                                                               (sys.argv[1:] if argv is None else argv))
    failed = []
    if not args.report_only:
        manifest = args.data_manifest or demo_manifest(args.output_dir)
        if not os.path.isfile(manifest):
            raise SystemExit(f"--data-manifest {manifest!r} does not exist")
        check_settings(args.output_dir, settings(args, manifest))
        write_text_atomic(os.path.join(args.output_dir, COMMAND_FILE), command + "\n")
        start = time.perf_counter()
        failed = launch(args, manifest)
        if args.launcher == "sbatch":
            if not args.wait and queued_runs(args):
                print("jobs submitted; rerun with --wait (or --report-only when they are done) for the report")
                return 0
            wait_for_jobs(args)
        print(f"training took {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    report = write_report(args, command)
    print(f"report: {report}")
    if failed:
        print(f"failed runs (see their train.log): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

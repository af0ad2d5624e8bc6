#!/usr/bin/env python3
"""Compare data-mixing methods (HDS against static, uniform, ODM, AC-ODM, and HDS's own
ablations) with everything else identical, and write a report: scheduler_comparison.md and
PNG plots.

    python tools/compare_schedulers.py --output-dir runs/compare --seeds 11,12,13,14,15 \
        --tuning-seeds 1,2 --train-iters 2500 --eval-interval 50 \
        --data-manifest data/train/text_manifest.json --valid-data-manifest data/valid/text_manifest.json \
        --test-data-manifest data/test/text_manifest.json

Each (method, seed) is one run of examples/pretrain_gpt_hds.sh in
``<output-dir>/runs/<method>_seed<seed>/`` with the method's flags (METHODS) and
``--seed <seed> --hds-seed <seed> --eval-seed <--eval-seed>``: the runs of one seed share the
model initialisation, the data order, the LR schedule and the token budget, and every run is
evaluated on the same validation and test samples. Every other setting is the example
script's environment (MODEL, SEQ_LENGTH, GLOBAL_BATCH, MICRO_BATCH, LR, MIN_LR, PRECISION,
TP, PP, EVAL_ITERS, SAVE_INTERVAL, SPLIT, NPROC_PER_NODE, ...), read from this process's
environment, plus ``--extra-args``. Without ``--data-manifest`` (or DATA_MANIFEST) the demo
data is built in ``<output-dir>/data`` first.

The protocol the report follows (tools/scheduler_comparison.py defines its quantities): the
seeds it runs and counts are the held-out ones (``--seeds``); the seeds used while developing
or tuning a method are named with ``--tuning-seeds`` and never counted. Primary metric: the
natural mixture's validation perplexity; also its geometric and arithmetic means over domains
and per domain. Methods are compared by paired per-seed differences with bootstrap 95%
intervals, and by the steps they need to reach the best baseline's final perplexity.

Launchers: ``local`` runs the runs here, one after another, or ``--parallel N`` at a time
(a SLURM allocation is used when the tool runs inside one); ``sbatch`` submits one job per
run (``--sbatch-args`` are passed to sbatch) and, with ``--wait``, waits for them and writes
the report. With ``--parallel N`` and GPUs visible, each of the N concurrent runs gets its
own 1/N of them (CUDA_VISIBLE_DEVICES, its own MASTER_PORT); on CPU each gets
OMP_NUM_THREADS = cores / N. Concurrent runs share the machine, so their step times are not
each method's own cost.

Rerunning the same command resumes: finished runs (a checkpoint at --train-iters, or only
their checkpoints/metrics.jsonl with the final test evaluation once the checkpoints are
deleted) are not redone, unfinished ones resume from their last checkpoint (set SAVE_INTERVAL for that),
queued SLURM jobs are left alone. The per-run settings are recorded in
``<output-dir>/comparison_settings.json``; a rerun with different ones stops with the
difference instead of mixing incomparable runs. ``--report-only`` writes the report from
whatever runs are complete.

``--archive PATH.tar.gz`` keeps the results without the checkpoints: the settings, the command,
the report and plots, and each complete run's metrics.jsonl and wall_time_s, at their paths
under the output directory. Unpacked into an empty output directory, it is what a rerun or a
``--report-only`` needs: the runs in it count as complete and are not trained again.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time


import scheduler_report
from megatron_hds.atomic_io import atomic_path, write_text_atomic
from megatron_hds.checkpoint.layout import find_latest_iteration
from megatron_hds.training.metrics import read_metrics

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_SCRIPT = os.path.join(REPO_ROOT, "examples", "pretrain_gpt_hds.sh")
DEMO_DATA_SCRIPT = os.path.join(REPO_ROOT, "examples", "build_demo_data.sh")
ZSCORED = "--hds-influence-shrinkage none"  # the influence tilt of every run before the shrinkage (2026-12-03)
# Each method is a --mixing choice and the flags that make it: the baselines at full strength,
# HDS, "the same mixture without SAC", and HDS with one reward component (and its signal) left out.
METHODS = {
    "static": "--mixing static",
    "uniform": "--mixing uniform",
    "odm": "--mixing odm",
    "odm-released": "--mixing odm --odm-variant released",
    "acodm": "--mixing acodm",
    "hds": "--mixing hds",
    "hds-base": "--mixing hds --hds-agent none",
    "hds-no-align": "--mixing hds --hds-reward quality,norm",
    "hds-no-quality": "--mixing hds --hds-reward align,norm",
    "hds-no-norm": "--mixing hds --hds-reward align,quality",
    # Ablation of the shrinkage: the influence's running average z-scored, a full tilt whatever the
    # evidence (the default until the shrinkage, 2026-12-03).
    "hds-zscored": f"--mixing hds {ZSCORED}",
    "hds-base-zscored": f"--mixing hds --hds-agent none {ZSCORED}",
    # The default before 2026-12-03 (influence from training gradients, learnability from the training
    # losses), and what the designs tried since add to it or take from it, all with the z-scored tilt.
    "hds-previous": f"--mixing hds --hds-influence-target train --hds-learnability-step 0.5 {ZSCORED}",
    "hds-base-previous": f"--mixing hds --hds-agent none --hds-influence-target train --hds-learnability-step 0.5 "
                         f"{ZSCORED}",
    "hds-heldout": f"--mixing hds --hds-influence-target train --hds-learnability-step 0.5 "
                   f"--hds-learnability-source valid {ZSCORED}",
    "hds-with-learnability": f"--mixing hds --hds-learnability-step 0.5 {ZSCORED}",
    # Ablation of the held-out target: the influence read from the step's training gradients.
    "hds-train-gradients": f"--mixing hds --hds-influence-target train {ZSCORED}",
}
BASELINES = ("static", "uniform", "odm", "odm-released", "acodm")
DEFAULT_METHODS = ("static", "uniform", "odm", "odm-released", "acodm", "hds", "hds-base")
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
    """A run is finished when it has a checkpoint at ``train_iters`` or, its checkpoints deleted to
    save space, its metrics.jsonl still records the final test evaluation at ``train_iters``."""
    checkpoints = os.path.join(path, "checkpoints")
    latest = find_latest_iteration(checkpoints)
    if latest is not None and latest >= train_iters:
        return True
    if not os.path.exists(os.path.join(checkpoints, "metrics.jsonl")):
        return False
    return any(r.get("split") == "test" and r.get("iteration", -1) >= train_iters
               for r in read_metrics(checkpoints)["eval"])


def run_environment(args, manifests: tuple, method: str, seed: int) -> dict:
    """The example script's environment for one run: the data, the method's flags, the seed (the
    model's and the agent's) and the evaluation seed shared by every run."""
    env = dict(os.environ)
    flags = METHODS[method].split()
    extra = " ".join([*flags[2:], f"--mixing-batch-layout {args.batch_layout}",
                      f"--seed {seed} --hds-seed {seed} --eval-seed {args.eval_seed}", args.extra_args])
    train, valid, test = manifests
    env.update(DATA_MANIFEST=train, VALID_DATA_MANIFEST=valid or "", TEST_DATA_MANIFEST=test or "",
               OUTPUT_DIR=run_dir(args.output_dir, method, seed), MIXING=flags[1], TRAIN_ITERS=str(args.train_iters),
               EVAL_INTERVAL=str(args.eval_interval), EXTRA_ARGS=extra.strip(),
               PYTHON=env.get("PYTHON", sys.executable))
    return env


def settings(args, manifests: tuple) -> dict:
    return {"data_manifests": [m and os.path.abspath(m) for m in manifests], "train_iters": args.train_iters,
            "eval_interval": args.eval_interval, "eval_seed": args.eval_seed, "batch_layout": args.batch_layout,
            "extra_args": args.extra_args,
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


def demo_manifests(output_dir: str) -> tuple:
    """(train, valid, test) manifests of the demo data, built in output_dir/data when missing."""
    print(f"building the demo data in {output_dir}/data (skipped when it exists)", flush=True)
    proc = subprocess.run(["bash", DEMO_DATA_SCRIPT, output_dir], stdout=subprocess.PIPE, text=True, check=True)
    lines = proc.stdout.strip().splitlines()
    return tuple(lines[-3:]) if len(lines) >= 3 and lines[-3].endswith(".json") else (lines[-1], None, None)


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

    def __init__(self, args, manifests: tuple, method: str, seed: int, slot_env: dict):
        self.args, self.method, self.seed = args, method, seed
        self.path = run_dir(args.output_dir, method, seed)
        os.makedirs(self.path, exist_ok=True)
        self.log = os.path.join(self.path, "train.log")
        self.start = time.perf_counter()
        env = {**run_environment(args, manifests, method, seed), **slot_env}
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


def run_local(args, manifests: tuple, pending: list[tuple[str, int]]) -> list[str]:
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
            running[slot] = LocalRun(args, manifests, method, seed, free[slot])
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


def submit(args, manifests: tuple, method: str, seed: int) -> str:
    path = run_dir(args.output_dir, method, seed)
    os.makedirs(path, exist_ok=True)
    command = ["sbatch", "--parsable", f"--job-name=cmp_{run_name(method, seed)}",
               f"--output={os.path.join(path, 'slurm_%j.log')}", *shlex.split(args.sbatch_args), TRAIN_SCRIPT]
    proc = subprocess.run(command, env=run_environment(args, manifests, method, seed), capture_output=True,
                          text=True, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"sbatch failed for {run_name(method, seed)}: {proc.stderr.strip()}")
    job_id = proc.stdout.strip().split(";")[0]
    write_text_atomic(os.path.join(path, "slurm_job_id"), job_id + "\n")
    return job_id


def launch(args, manifests: tuple) -> list[str]:
    """Run or submit every unfinished run; returns the names of runs that failed (local)."""
    pending = [(m, s) for s in args.seeds for m in args.methods
               if not is_complete(run_dir(args.output_dir, m, s), args.train_iters)]
    done = len(args.methods) * len(args.seeds) - len(pending)
    print(f"{done} of {done + len(pending)} runs already complete", flush=True)
    if args.launcher == "local":
        return run_local(args, manifests, pending)
    for method, seed in pending:
        job = queued_job(run_dir(args.output_dir, method, seed))
        if job is None:
            job = submit(args, manifests, method, seed)
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
def collect(args) -> dict[str, dict[int, dict]]:
    """Records of the complete held-out runs: method -> seed -> records (methods with none left out)."""
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


def write_report(args, command: str) -> str:
    by_seed = collect(args)
    if not by_seed:
        raise SystemExit(f"no complete run in {args.output_dir}/runs yet")
    command_file = os.path.join(args.output_dir, COMMAND_FILE)
    header = {
        "command": open(command_file, encoding="utf-8").read().strip() if os.path.exists(command_file) else command,
        "seeds": args.seeds, "tuning_seeds": args.tuning_seeds, "eval_seed": args.eval_seed,
        "train_iters": args.train_iters, "eval_interval": args.eval_interval, "methods": METHODS,
        "missing": [run_name(m, s) for m in args.methods for s in args.seeds
                    if not is_complete(run_dir(args.output_dir, m, s), args.train_iters)],
    }
    return scheduler_report.write_report(args.output_dir, by_seed, header, args.reference, list(BASELINES),
                                         {m: wall_minutes(args, m) for m in by_seed})


def write_archive(args, path: str) -> list[str]:
    """A .tar.gz of what the report needs (module docstring), written atomically; returns its members."""
    root = args.output_dir
    members = [name for name in (SETTINGS_FILE, COMMAND_FILE, scheduler_report.REPORT_FILE)
               if os.path.isfile(os.path.join(root, name))]
    plots = os.path.join(root, scheduler_report.PLOTS_DIR)
    if os.path.isdir(plots):
        members += [os.path.join(scheduler_report.PLOTS_DIR, n) for n in sorted(os.listdir(plots))]
    for method in args.methods:
        for seed in args.seeds:
            run = os.path.relpath(run_dir(root, method, seed), root)
            if is_complete(os.path.join(root, run), args.train_iters):
                members += [n for n in (os.path.join(run, "checkpoints", "metrics.jsonl"), os.path.join(run, "wall_time_s"))
                            if os.path.isfile(os.path.join(root, n))]
    with atomic_path(os.path.abspath(path), suffix=".tar.gz") as tmp, tarfile.open(tmp, "w:gz") as tar:
        for name in members:
            tar.add(os.path.join(root, name), arcname=name, recursive=False)
    return members


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
    parser.add_argument("--methods", type=_methods, default=list(DEFAULT_METHODS),
                        help=f"comma-separated methods (default {','.join(DEFAULT_METHODS)}); each is --mixing and "
                             f"flags: " + "; ".join(f"{m}: {flags}" for m, flags in METHODS.items()))
    parser.add_argument("--seeds", type=_int_list, default=[11, 12, 13, 14, 15],
                        help="comma-separated held-out seeds: the runs the report counts (default 11,...,15)")
    parser.add_argument("--tuning-seeds", type=_int_list, default=[],
                        help="seeds used while developing or tuning the methods: named in the report, never run or "
                             "counted by it")
    parser.add_argument("--eval-seed", type=int, default=1234,
                        help="the evaluation samples' seed, the same for every run (--eval-seed of pretrain)")
    parser.add_argument("--train-iters", type=int, required=True, help="steps per run (the same for every method)")
    parser.add_argument("--eval-interval", type=int, required=True, help="steps between validations")
    parser.add_argument("--reference", default="hds", help="the method compared against the others (default hds)")
    parser.add_argument("--data-manifest", default=os.environ.get("DATA_MANIFEST"),
                        help="manifest from tools/preprocess_data.py (default: $DATA_MANIFEST, else the demo data)")
    parser.add_argument("--valid-data-manifest", default=os.environ.get("VALID_DATA_MANIFEST"),
                        help="validation datasets preprocessed apart (default: $VALID_DATA_MANIFEST)")
    parser.add_argument("--test-data-manifest", default=os.environ.get("TEST_DATA_MANIFEST"),
                        help="test datasets preprocessed apart (default: $TEST_DATA_MANIFEST)")
    parser.add_argument("--batch-layout", default="hds", choices=("hds", "single_domain", "mixed"),
                        help="--mixing-batch-layout of every run, baselines included, so that all methods draw "
                             "their batches alike (default: hds, the learning schedulers' default)")
    parser.add_argument("--extra-args", default="",
                        help='more pretrain flags for every run, one string: --extra-args="--flag value"')
    parser.add_argument("--launcher", choices=("local", "sbatch"), default="local")
    parser.add_argument("--parallel", type=int, default=1,
                        help="local: runs at a time, each on its own share of the GPUs (or CPU cores)")
    parser.add_argument("--sbatch-args", default="",
                        help='sbatch options for every job, one string: --sbatch-args="--nodes 2 --time 4:00:00"')
    parser.add_argument("--wait", action="store_true", help="with sbatch: wait for the jobs, then write the report")
    parser.add_argument("--report-only", action="store_true", help="write the report from the complete runs")
    parser.add_argument("--archive", metavar="PATH", help="after the report, write PATH (.tar.gz): the settings, "
                        "command, report and each complete run's metrics, without checkpoints (module docstring)")
    args = parser.parse_args(argv)
    if not args.seeds:
        parser.error("--seeds is empty")
    if args.train_iters <= 0 or args.eval_interval <= 0:
        parser.error(f"--train-iters ({args.train_iters}) and --eval-interval ({args.eval_interval}) must be positive")
    if args.parallel < 1 or (args.parallel > 1 and args.launcher != "local"):
        parser.error(f"--parallel {args.parallel} must be a positive count, and above 1 only with --launcher local")
    if args.reference not in METHODS:  # it may be left out of --methods: e.g. the baselines run first
        parser.error(f"--reference {args.reference!r} is not a method; choose from {', '.join(METHODS)}")
    if set(args.seeds) & set(args.tuning_seeds):
        parser.error(f"seeds {sorted(set(args.seeds) & set(args.tuning_seeds))} are both held out and tuning seeds")
    args.output_dir = os.path.abspath(args.output_dir)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python tools/compare_schedulers.py " + " ".join(shlex.quote(a) for a in
                                                               (sys.argv[1:] if argv is None else argv))
    failed = []
    if not args.report_only:
        manifests = ((args.data_manifest, args.valid_data_manifest, args.test_data_manifest) if args.data_manifest
                     else demo_manifests(args.output_dir))
        for manifest in manifests:
            if manifest and not os.path.isfile(manifest):
                raise SystemExit(f"manifest {manifest!r} does not exist")
        check_settings(args.output_dir, settings(args, manifests))
        write_text_atomic(os.path.join(args.output_dir, COMMAND_FILE), command + "\n")
        start = time.perf_counter()
        failed = launch(args, manifests)
        if args.launcher == "sbatch":
            if not args.wait and queued_runs(args):
                print("jobs submitted; rerun with --wait (or --report-only when they are done) for the report")
                return 0
            wait_for_jobs(args)
        print(f"training took {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    report = write_report(args, command)
    print(f"report: {report}")
    if args.archive:
        print(f"archive: {args.archive} ({len(write_archive(args, args.archive))} files)")
    if failed:
        print(f"failed runs (see their train.log): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

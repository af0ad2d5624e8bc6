"""tools/compare_schedulers.py and the metrics behind it (tools/scheduler_comparison.py): the
metrics from per-domain losses, the step-ratio arithmetic on synthetic curves (never reached,
ties, noisy baselines), paired differences with bootstrap intervals, seed averaging, and one
end-to-end comparison on a tiny demo that resumes instead of redoing runs."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import scheduler_comparison
from scheduler_comparison import Curve
from tests.conftest import REPO_ROOT

TOOL = os.path.join(REPO_ROOT, "tools", "compare_schedulers.py")


def curve(steps, values):
    return Curve(np.array(steps), np.array(values, dtype=float))


# ---- metrics on synthetic curves --------------------------------------------------------
def test_steps_to_reach_first_step_at_or_below_target():
    c = curve([10, 20, 30, 40], [50.0, 30.0, 20.0, 15.0])
    assert scheduler_comparison.steps_to_reach(c, 30.0) == 20  # equal counts as reached
    assert scheduler_comparison.steps_to_reach(c, 29.9) == 30
    assert scheduler_comparison.steps_to_reach(c, 100.0) == 10
    assert scheduler_comparison.steps_to_reach(c, 14.9) is None


def test_step_ratio_matches_the_papers_definition():
    # The baseline ends at 20 after 100 steps; the method gets there at step 56: 44% fewer, a ratio of 0.56.
    baseline = curve(list(range(4, 101, 4)), np.linspace(60, 20, 25))
    method = curve([8, 56, 100], [40.0, 20.0, 12.0])
    assert scheduler_comparison.step_ratio(method, baseline) == pytest.approx(0.56)
    assert scheduler_comparison.step_ratio(baseline, baseline) == 1.0
    slower = curve([50, 100], [30.0, 25.0])
    assert scheduler_comparison.step_ratio(slower, baseline) is None  # never reaches the target
    late = curve([50, 100, 150], [30.0, 25.0, 20.0])
    assert scheduler_comparison.step_ratio(late, baseline) == pytest.approx(1.5)  # needs 50% more steps


def test_noisy_baseline_that_touched_its_final_value_early_uses_that_step():
    baseline = curve([10, 20, 30, 40], [40.0, 19.0, 22.0, 20.0])  # reached 20 at step 20 already
    method = curve([10, 20, 30, 40], [30.0, 25.0, 20.0, 18.0])
    assert scheduler_comparison.step_ratio(method, baseline) == pytest.approx(30 / 20)


def test_best_baseline_excludes_the_method_under_test_and_breaks_ties_by_order():
    curves = {"static": curve([10], [20.0]), "odm": curve([10], [18.0]), "acodm": curve([10], [18.0]),
              "hds": curve([10], [10.0]), "hds-base": curve([10], [9.0])}
    assert scheduler_comparison.best_baseline(curves, "hds", ["static", "odm", "acodm"]) == "odm"  # tie: first
    assert scheduler_comparison.best_baseline(curves, "odm") == "hds-base"  # without candidates: every other
    with pytest.raises(ValueError, match="no baseline"):
        scheduler_comparison.best_baseline({"hds": curves["hds"]}, "hds")


def test_metrics_from_per_domain_losses():
    losses, natural = {"a": 1.0, "b": 3.0}, {"a": 0.75, "b": 0.25}
    assert scheduler_comparison.metric(losses, natural, "natural") == pytest.approx(math.exp(1.5))
    assert scheduler_comparison.metric(losses, natural, "geometric") == pytest.approx(math.exp(2.0))
    assert scheduler_comparison.metric(losses, natural, "arithmetic") == pytest.approx((math.e + math.e ** 3) / 2)
    # A domain not evaluated leaves the natural weights renormalised over the others.
    assert scheduler_comparison.metric({"a": 1.0, "b": math.nan}, natural) == pytest.approx(math.e)
    records = {"config": [{"domains": ["a", "b"], "natural_weights": [0.75, 0.25]}],
               "eval": [{"split": "valid", "iteration": 5, "domain_loss": losses}]}
    assert scheduler_comparison.eval_curve(records).final == pytest.approx(math.exp(1.5))


def test_paired_differences_and_their_bootstrap_interval():
    result = scheduler_comparison.paired({1: 10.0, 2: 11.0, 3: 12.0, 4: 13.0}, {1: 10.5, 2: 11.2, 3: 12.6, 5: 9.0})
    assert result.seeds == (1, 2, 3) and result.differences == pytest.approx((-0.5, -0.2, -0.6))
    assert result.mean == pytest.approx(-1.3 / 3) and result.wins == 3
    low, high = result.interval
    assert -0.6 - 1e-12 <= low < result.mean < high <= -0.2 + 1e-12  # within the values' range
    assert scheduler_comparison.bootstrap_interval([1.0, 1.0]) == (1.0, 1.0)
    assert all(math.isnan(v) for v in scheduler_comparison.bootstrap_interval([]))


def test_mean_curve_over_seeds_uses_common_steps():
    a = curve([10, 20, 30], [30.0, 20.0, 10.0])
    b = curve([10, 30, 40], [40.0, 14.0, 12.0])
    mean, low, high = scheduler_comparison.mean_curve([a, b])
    assert mean.steps.tolist() == [10, 30]
    assert mean.values.tolist() == [35.0, 12.0] and low.tolist() == [30.0, 10.0] and high.tolist() == [40.0, 14.0]
    with pytest.raises(ValueError, match="share no evaluated step"):
        scheduler_comparison.mean_curve([curve([10], [1.0]), curve([20], [1.0])])


def test_curve_rejects_malformed_input():
    with pytest.raises(ValueError, match="increase strictly"):
        curve([10, 10], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least one"):
        curve([], [])


def test_spread_and_windows():
    assert scheduler_comparison.spread([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)), 1.0, 3.0)
    assert scheduler_comparison.spread([5.0, None, math.nan]) == (5.0, 0.0, 5.0, 5.0)
    assert all(math.isnan(v) for v in scheduler_comparison.spread([]))
    train = [{"iteration": i, "domain_weights": {"a": w, "b": 1 - w}, "reward": {"total": t},
              "step_time_s": s, "scheduler_time_s": 0.01}
             for i, w, t, s in [(10, 0.5, math.nan, 9.0), (20, 0.6, 1.0, 1.0), (30, 0.7, 2.0, 1.0),
                                (40, 0.8, 3.0, 1.0), (50, 0.9, 4.0, 3.0)]]
    records = {"train": train}
    assert scheduler_comparison.mean_weights([records], 0.0, 0.1) == {"a": 0.5, "b": 0.5}  # at least the first record
    assert scheduler_comparison.mean_weights([records], 0.8, 1.0)["a"] == pytest.approx(0.9)
    assert scheduler_comparison.reward_means([records], 0.0, 0.1) == {}  # the only early value is NaN
    assert scheduler_comparison.reward_means([records], 0.6, 1.0) == {"total": 3.5}
    assert scheduler_comparison.step_times([records]) == (pytest.approx(1.5), pytest.approx(0.01))  # first record left out


def test_generalisation_gap_is_the_final_validation_loss_minus_the_late_training_loss():
    # Domain "a" is memorised: its training loss falls to 1.0 while validation stays at 3.0.
    train = [{"iteration": i, "domain_loss": {"a": 4.0 - 0.3 * k, "b": 3.0 if k % 2 else math.nan}}
             for k, i in enumerate(range(10, 110, 10))]
    evals = [{"split": "valid", "iteration": 50, "domain_loss": {"a": 3.5, "b": 3.5}},
             {"split": "valid", "iteration": 100, "domain_loss": {"a": 3.0, "b": 3.25}},
             {"split": "test", "iteration": 100, "domain_loss": {"a": 9.0, "b": 9.0}}]
    records = {"train": train, "eval": evals}
    gaps = scheduler_comparison.generalisation_gaps([records], last_fraction=0.2)
    assert gaps["a"] == pytest.approx(3.0 - np.mean([4.0 - 0.3 * 8, 4.0 - 0.3 * 9]))
    assert gaps["b"] == pytest.approx(0.25)  # an unsampled window (NaN) is left out, not read as 0
    other = {"train": [dict(r, domain_loss={"a": 2.0, "b": 3.0}) for r in train], "eval": evals}
    assert scheduler_comparison.generalisation_gaps([records, other], 0.2)["a"] == pytest.approx(
        np.mean([gaps["a"], 1.0]))  # the mean over seeds


# ---- the tool, end to end -----------------------------------------------------------------
TINY = {"SEQ_LENGTH": "32", "GLOBAL_BATCH": "4", "MICRO_BATCH": "2", "EVAL_ITERS": "2", "LOG_INTERVAL": "2",
        "DEMO_MODEL_ARGS": "--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 32",
        "DEMO_SIZE_MB": "0.4", "VOCAB_SIZE": "400", "TOKENIZER_DOCS": "300", "OMP_NUM_THREADS": "1"}


def run_tool(out, *extra, **env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "DATA_MANIFEST"}
    env.update(TINY, PYTHON=sys.executable, **env_extra)
    return subprocess.run([sys.executable, TOOL, "--output-dir", str(out), "--methods", "static,hds", "--seeds", "7",
                           "--tuning-seeds", "1", "--train-iters", "8", "--eval-interval", "4", *extra],
                          env=env, capture_output=True, text=True, cwd=out, timeout=600)


def test_end_to_end_builds_demo_data_compares_and_resumes(tmp_path):
    proc = run_tool(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "data" / "train" / "demo_manifest.json").is_file()  # built because none was given
    report = (tmp_path / "scheduler_comparison.md").read_text()
    for heading in ("Final perplexity, mean over held-out seeds", "Steps to reach the best baseline's final",
                    "hds minus each method, paired by seed", "per domain", "Domain weights", "Time per step",
                    "Held-out seeds: 7. Tuning seeds (not counted here): 1. Evaluation seed: 1234"):
        assert heading in report
    assert "| static |" in report and "| hds |" in report
    assert (tmp_path / "plots" / "valid_ppl.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "plots" / "domain_weights.png").is_file()
    configs = {}
    for method in ("static", "hds"):
        from megatron_hds.training.metrics import read_metrics

        records = read_metrics(tmp_path / "runs" / f"{method}_seed7" / "checkpoints")
        configs[method] = records["config"][0]
        assert [r["iteration"] for r in records["eval"] if r["split"] == "valid"] == [4, 8]
    # Everything but the method is the same: seed, model, schedule, budget.
    assert configs["static"]["mixing"]["method"] == "static" and configs["hds"]["mixing"]["method"] == "hds"
    for key in ("model", "optim", "train"):
        a, b = dict(configs["static"][key]), dict(configs["hds"][key])
        for path_key in ("save", "load"):
            a.pop(path_key, None), b.pop(path_key, None)
        assert a == b, key
    assert all(c["data"]["eval_seed"] == 1234 for c in configs.values())  # every run evaluates the same samples
    assert all(c["mixing"]["batch_layout"] == "hds" for c in configs.values())  # baselines draw batches alike
    # The table's numbers are the runs' own final natural-mixture perplexities.
    records = read_metrics(tmp_path / "runs" / "hds_seed7" / "checkpoints")
    final = scheduler_comparison.eval_curve(records).final
    assert f"| hds | {final:.2f} ± 0.00 |" in report

    # Rerunning redoes nothing; a finished run whose checkpoints were deleted but whose
    # metrics.jsonl was kept still counts; a run whose whole checkpoint directory vanished is run again.
    again = run_tool(tmp_path)
    assert again.returncode == 0 and "2 of 2 runs already complete" in again.stdout
    import shutil

    for entry in (tmp_path / "runs" / "static_seed7" / "checkpoints").iterdir():
        if entry.name != "metrics.jsonl":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    shutil.rmtree(tmp_path / "runs" / "hds_seed7" / "checkpoints")
    third = run_tool(tmp_path)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "1 of 2 runs already complete" in third.stdout and "training hds_seed7" in third.stdout

    # A report-only rerun names the command that trained the runs, not itself.
    archive = tmp_path.parent / f"{tmp_path.name}_results.tar.gz"
    assert run_tool(tmp_path, "--report-only", "--archive", str(archive)).returncode == 0
    command_line = next(line for line in (tmp_path / "scheduler_comparison.md").read_text().splitlines()
                        if line.startswith("Command:"))
    assert "--train-iters 8" in command_line and "--report-only" not in command_line

    # The archive keeps the results without checkpoints; unpacked elsewhere, the runs count as
    # complete and the report comes out the same.
    import tarfile

    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert "runs/hds_seed7/checkpoints/metrics.jsonl" in names and "comparison_settings.json" in names
        assert not any("iter_" in n for n in names) and "plots/valid_ppl.png" in names
        restored = tmp_path.parent / f"{tmp_path.name}_restored"
        tar.extractall(restored, filter="data")
    resumed = run_tool(restored, "--report-only")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Incomplete runs" not in (restored / "scheduler_comparison.md").read_text()
    tables = [(d / "scheduler_comparison.md").read_text().split("## Time per step")[0].split("Command:")[1]
              for d in (tmp_path, restored)]
    assert tables[0] == tables[1]

    # Other per-run settings in the same directory: refused, naming the difference.
    changed = run_tool(tmp_path, LR="1e-2")
    assert changed.returncode != 0 and "environment" in changed.stderr and "1e-2" in changed.stderr
    json.loads((tmp_path / "comparison_settings.json").read_text())


def _load_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_schedulers_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A stand-in for the example script: marks its start, waits (bounded) until both runs have
# started -- which only happens if they run at the same time -- and records its slot.
_BOTH_AT_ONCE = """#!/usr/bin/env bash
mkdir -p "$OUTPUT_DIR/checkpoints"
echo "${CUDA_VISIBLE_DEVICES:-}|${MASTER_PORT:-}|${OMP_NUM_THREADS:-}" > "$OUTPUT_DIR/slot"
touch "$OUTPUT_DIR/started"
for _ in $(seq 200); do
  [[ $(ls "$OUTPUT_DIR"/../*/started 2>/dev/null | wc -l) -ge 2 ]] && break
  sleep 0.05
done
[[ $(ls "$OUTPUT_DIR"/../*/started | wc -l) -ge 2 ]] || exit 7
echo "$TRAIN_ITERS" > "$OUTPUT_DIR/checkpoints/latest_checkpointed_iteration.txt"
"""


@pytest.mark.parametrize("gpus", ["0,1,2,3", None], ids=["gpus", "cpu"])
def test_parallel_runs_at_the_same_time_each_on_its_own_share(tmp_path, monkeypatch, gpus):
    tool = _load_tool()
    stub = tmp_path / "stub.sh"
    stub.write_text(_BOTH_AT_ONCE)
    monkeypatch.setattr(tool, "TRAIN_SCRIPT", str(stub))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    if gpus is None:
        monkeypatch.setattr(tool, "visible_gpus", lambda: [])
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", gpus)
    args = tool.parse_args(["--output-dir", str(tmp_path / "out"), "--methods", "static,hds", "--seeds", "1",
                            "--train-iters", "3", "--eval-interval", "1", "--parallel", "2"])
    assert tool.launch(args, ("unused.json", None, None)) == []  # a sequential launcher would fail both (exit 7)
    slots = sorted((tmp_path / "out" / "runs" / f"{m}_seed1" / "slot").read_text().strip() for m in ("static", "hds"))
    if gpus is None:
        assert slots == [f"||{max(1, os.cpu_count() // 2)}"] * 2
    else:
        assert [s.split("|")[0] for s in slots] == ["0,1", "2,3"] and len({s.split("|")[1] for s in slots}) == 2
    with pytest.raises(SystemExit, match="needs at least 8 GPUs"):
        monkeypatch.setattr(tool, "visible_gpus", lambda: ["0", "1"])
        tool.slot_environments(8)


def test_bad_arguments_are_named(tmp_path):
    def error(*argv):
        proc = subprocess.run([sys.executable, TOOL, "--output-dir", str(tmp_path), *argv],
                              capture_output=True, text=True)
        assert proc.returncode == 2
        return proc.stderr

    assert "'bogus'" in error("--train-iters", "8", "--eval-interval", "4", "--methods", "hds,bogus")
    assert "must be positive" in error("--train-iters", "0", "--eval-interval", "4")
    assert "--reference 'bogus' is not a method" in error("--train-iters", "8", "--eval-interval", "4",
                                                          "--reference", "bogus")
    assert "--parallel 0 must be" in error("--train-iters", "8", "--eval-interval", "4", "--parallel", "0")
    assert "only with --launcher local" in error("--train-iters", "8", "--eval-interval", "4", "--parallel", "2",
                                                 "--launcher", "sbatch")


def test_sbatch_launcher_submits_one_job_per_run_and_reports_after_waiting(slurm, demo_manifest, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PYTHON=sys.executable, MODEL="tiny", SEQ_LENGTH="32", GLOBAL_BATCH="4", MICRO_BATCH="2",
               EVAL_ITERS="2", LOG_INTERVAL="2", PRECISION="fp32", SPLIT="90,5,5", NPROC_PER_NODE="1",
               MASTER_PORT="29613", OMP_NUM_THREADS="1")
    command = [sys.executable, TOOL, "--output-dir", str(tmp_path), "--methods", "uniform,hds", "--seeds", "3",
               "--train-iters", "6", "--eval-interval", "3", "--data-manifest", demo_manifest,
               "--launcher", "sbatch", "--sbatch-args=--time=10"]
    proc = subprocess.run(command + ["--wait"], env=env, capture_output=True, text=True, cwd=REPO_ROOT, timeout=900)
    logs = "".join(p.read_text() for p in tmp_path.glob("runs/*/slurm_*.log"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs[-4000:]
    assert proc.stdout.count("submitted ") == 2
    for name in ("uniform_seed3", "hds_seed3"):
        job_id = (tmp_path / "runs" / name / "slurm_job_id").read_text().strip()
        log = (tmp_path / "runs" / name / f"slurm_{job_id}.log").read_text()
        assert "megatron_hds (slurm)" in log  # it ran as a SLURM job through the example script
    assert "| hds |" in (tmp_path / "scheduler_comparison.md").read_text()
    # Submitting again while nothing is left to do submits nothing.
    again = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert again.returncode == 0 and "2 of 2 runs already complete" in again.stdout
    assert "submitted" not in again.stdout and "report: " in again.stdout


def test_pile_recipe_passes_the_papers_settings(tmp_path):
    """examples/compare_schedulers_pile.sh, with python3 replaced by a stub that records what the
    tool would have been run with (its `python3 -c` arithmetic still runs for real)."""
    record = tmp_path / "call.json"
    stub = tmp_path / "python3"
    stub.write_text(f"""#!{sys.executable}
import json, os, subprocess, sys
if sys.argv[1] == "-c":
    sys.exit(subprocess.call([{sys.executable!r}, *sys.argv[1:]]))
keys = ("SEQ_LENGTH", "GLOBAL_BATCH", "MICRO_BATCH", "PRECISION", "LR", "MIN_LR", "MODEL", "EVAL_ITERS")
json.dump({{"argv": sys.argv[1:], "env": {{k: os.environ.get(k) for k in keys}}}}, open({str(record)!r}, "w"))
""")
    stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", DATA_MANIFEST="/data/pile_manifest.json",
               PRETRAIN_ARGS="--hds-action-bound none")
    subprocess.run(["bash", os.path.join(REPO_ROOT, "examples", "compare_schedulers_pile.sh")], env=env, check=True,
                   timeout=60)
    call = json.loads(record.read_text())
    argv = call["argv"]
    assert argv[0] == "tools/compare_schedulers.py"
    assert argv[argv.index("--train-iters") + 1] == "41667" and argv[argv.index("--eval-interval") + 1] == "417"
    assert argv[argv.index("--batch-layout") + 1] == "hds" and "--extra-args=--hds-action-bound none" in argv
    assert argv[argv.index("--methods") + 1] == "static,uniform,odm,acodm,hds" and "--wait" in argv
    assert "--nodes 4 --gpus-per-node 8" in next(a for a in argv if a.startswith("--sbatch-args="))
    assert call["env"] == {"SEQ_LENGTH": "1024", "GLOBAL_BATCH": "1152", "MICRO_BATCH": "4", "PRECISION": "bf16",
                           "LR": "2.5e-4", "MIN_LR": "2.5e-05", "MODEL": "pythia-1b", "EVAL_ITERS": "40"}


def test_text_recipe_passes_its_protocol_and_extra_arguments(tmp_path):
    """examples/compare_schedulers_text.sh, with $PYTHON a stub that records what the tool would
    have been run with; arguments after the script's name reach the tool (e.g. --report-only)."""
    record = tmp_path / "call.json"
    stub = tmp_path / "python_stub"
    stub.write_text(f"""#!{sys.executable}
import json, os, sys
keys = ("MODEL", "SEQ_LENGTH", "GLOBAL_BATCH", "MICRO_BATCH", "LR", "MIN_LR", "EVAL_ITERS", "SAVE_INTERVAL")
json.dump({{"argv": sys.argv[1:], "env": {{k: os.environ.get(k) for k in keys}}}}, open({str(record)!r}, "w"))
""")
    stub.chmod(0o755)
    data = tmp_path / "text"
    (data / "data" / "test").mkdir(parents=True)
    (data / "data" / "test" / "text_manifest.json").write_text("{}")  # the corpus counts as built
    env = dict(os.environ, PYTHON=str(stub), DATA_DIR=str(data), METHODS="static,hds", SEEDS="11,12")
    subprocess.run(["bash", os.path.join(REPO_ROOT, "examples", "compare_schedulers_text.sh"), "--report-only"],
                   env=env, check=True, timeout=60)
    call = json.loads(record.read_text())
    argv = call["argv"]
    assert argv[0].endswith("tools/compare_schedulers.py") and argv[-1] == "--report-only"
    assert argv[argv.index("--methods") + 1] == "static,hds" and argv[argv.index("--seeds") + 1] == "11,12"
    assert argv[argv.index("--tuning-seeds") + 1] == "1,2"
    assert argv[argv.index("--train-iters") + 1] == "2500" and argv[argv.index("--eval-interval") + 1] == "50"
    assert argv[argv.index("--valid-data-manifest") + 1] == f"{data}/data/valid/text_manifest.json"
    assert call["env"] == {"MODEL": "tiny", "SEQ_LENGTH": "64", "GLOBAL_BATCH": "64", "MICRO_BATCH": "1",
                           "LR": "6e-3", "MIN_LR": "6e-4", "EVAL_ITERS": "64", "SAVE_INTERVAL": "500"}

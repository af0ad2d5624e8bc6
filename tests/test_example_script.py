"""examples/pretrain_gpt_hds.sh, the main job: with plain bash (builds the demo data and
trains on CPU) and under a real single-node SLURM via sbatch (2 ranks through torchrun)."""

import json
import os
import subprocess
import sys

import pytest

from megatron_hds.training.metrics import read_metrics
from tests.conftest import REPO_ROOT

SCRIPT = os.path.join(REPO_ROOT, "examples", "pretrain_gpt_hds.sh")
SMALL_RUN = {
    "SEQ_LENGTH": "32", "GLOBAL_BATCH": "4", "MICRO_BATCH": "2", "TRAIN_ITERS": "12", "EVAL_INTERVAL": "6",
    "EVAL_ITERS": "2", "LOG_INTERVAL": "3", "LR": "3e-3", "MIN_LR": "3e-4",
}


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PYTHON=sys.executable, **extra)
    return env


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_job")
    env = _env(OUTPUT_DIR=str(out), DEMO_SIZE_MB="0.4", VOCAB_SIZE="400", TOKENIZER_DOCS="300", **SMALL_RUN,
               DEMO_MODEL_ARGS="--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 32")
    proc = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, cwd=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, env, proc


def test_plain_bash_builds_demo_data_trains_and_reports(demo_run):
    out, _, proc = demo_run
    manifest = json.load(open(out / "data" / "train" / "demo_manifest.json"))
    assert len(manifest["domains"]) == 7 and manifest["tokenizer"]["vocab_size"] == 400
    records = read_metrics(out / "checkpoints" / "metrics.jsonl")
    assert [r["iteration"] for r in records["train"]] == [3, 6, 9, 12]
    valid = [r for r in records["eval"] if r["split"] == "valid"]
    assert [r["iteration"] for r in valid] == [6, 12]
    assert valid[-1]["mean_ppl"] < valid[0]["mean_ppl"]  # it learns
    assert (out / "checkpoints" / "iter_0000012" / "mp_rank_00" / "model_optim_rng.pt").is_file()
    assert f"metrics: {out / 'checkpoints' / 'metrics.jsonl'}" in proc.stdout
    assert "domain weights chosen for iteration 12: " in proc.stdout
    assert records["config"][0]["mixing"]["method"] == "hds"  # the product is the default
    assert records["config"][0]["mixing"]["overlap_update"] is True  # its update off the step's path
    assert set(records["train"][-1]["reward"]) >= {"align", "quality", "norm", "total"}


def test_plain_bash_rerun_resumes_instead_of_restarting(demo_run):
    out, env, _ = demo_run
    proc = subprocess.run(["bash", SCRIPT], env=dict(env, TRAIN_ITERS="15", EXTRA_ARGS="--override-opt_param-scheduler"), capture_output=True, text=True, cwd=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "at iteration 12" in proc.stdout
    iterations = [r["iteration"] for r in read_metrics(out / "checkpoints" / "metrics.jsonl")["train"]]
    assert iterations[-1] == 15


def test_sbatch_runs_two_ranks_and_writes_checkpoint_and_metrics(slurm, demo_run, tmp_path):
    demo_out, _, _ = demo_run
    out = tmp_path / "slurm_run"
    log = tmp_path / "job.log"
    env = _env(DATA_MANIFEST=str(demo_out / "data" / "train" / "demo_manifest.json"), OUTPUT_DIR=str(out),
               NPROC_PER_NODE="2",
               MODEL="tiny", PRECISION="fp32", SPLIT="90,5,5", SAVE_INTERVAL="6", MASTER_PORT="29611",
               **SMALL_RUN)
    proc = subprocess.run(["sbatch", "--wait", "--time=10", f"--output={log}", SCRIPT], env=env,
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    job_log = log.read_text() if log.exists() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + job_log[-4000:]
    assert "megatron_hds (slurm)" in job_log and "2 rank(s) per node" in job_log
    records = read_metrics(out / "checkpoints" / "metrics.jsonl")
    assert [r["iteration"] for r in records["train"]][-1] == 12
    assert records["config"][0]["parallel"]["tensor_model_parallel_size"] == 1
    assert open(out / "checkpoints" / "latest_checkpointed_iteration.txt").read().strip() == "12"
    assert (out / "checkpoints" / "iter_0000006").is_dir()


@pytest.mark.parametrize("visible,ranks", [("0,1,2", 3), ("", 1)])
def test_ranks_follow_the_visible_gpus(tmp_path, visible, ranks):
    """Without SLURM, one rank per GPU this process may use (CUDA_VISIBLE_DEVICES), not per GPU
    of the node; none visible: one rank. PYTHON=true stands in for the training itself."""
    env = {**_env(OUTPUT_DIR=str(tmp_path), DATA_MANIFEST=str(tmp_path / "manifest.json"),
                  CUDA_VISIBLE_DEVICES=visible), "PYTHON": "true"}
    proc = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert f"{ranks} rank(s) per node" in proc.stdout, proc.stdout + proc.stderr

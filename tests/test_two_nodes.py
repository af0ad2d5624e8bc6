"""More than one node: examples/pretrain_gpt_hds.sh's SLURM path (node rank from the allocation,
MASTER_ADDR from its first node, one torchrun per node) trains across two "nodes" of one
rank each and matches the single-node run of the same layout (two ranks, DP=2) bit for bit.

The two nodes are two torchrun node agents on this machine, started by a stand-in for srun
(tests/slurm/two_nodes) with the environment srun gives each task (SLURM_NODEID, ...) in an
allocation whose SLURM_JOB_NODELIST is "localhost,127.0.0.2": they rendezvous over the
loopback address only. (A real two-node SLURM on one machine needs a slurmd built for
several nodes per host, which distributions do not ship.)"""

import json
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT
from tests.distributed import free_port

SCRIPT = os.path.join(REPO_ROOT, "examples", "pretrain_gpt_hds.sh")
STAND_INS = os.path.join(REPO_ROOT, "tests", "slurm", "two_nodes")
RUN = {"MODEL": "tiny", "SEQ_LENGTH": "32", "GLOBAL_BATCH": "8", "MICRO_BATCH": "2", "TRAIN_ITERS": "6",
       "EVAL_INTERVAL": "6", "EVAL_ITERS": "1", "LOG_INTERVAL": "1", "LR": "3e-3", "MIN_LR": "3e-4",
       "PRECISION": "fp32", "SPLIT": "90,5,5", "SAVE_INTERVAL": "3"}
COMPARED = ("iteration", "lr", "loss", "grad_norm", "domain_loss", "domain_weights", "batch_hash", "reward")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    # Loopback only, whatever this machine's hostname resolves to. One thread per rank in both
    # runs: pretrain otherwise splits the cores over the ranks of a node (2 per node here, 1 on
    # each of the two "nodes"), and other thread counts sum the same numbers in another order.
    env.update(PYTHON=sys.executable, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", **RUN, **extra)
    return env


def _train_records(out):
    with open(os.path.join(out, "checkpoints", "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [{k: r.get(k) for k in COMPARED} for r in records if r["kind"] == "train"]


def _run(env, out):
    proc = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def test_two_nodes_match_one_node(demo_manifest, tmp_path):
    one, two = str(tmp_path / "one_node"), str(tmp_path / "two_nodes")
    _run(_env(DATA_MANIFEST=demo_manifest, OUTPUT_DIR=one, NPROC_PER_NODE="2"), one)
    proc = _run(_env(DATA_MANIFEST=demo_manifest, OUTPUT_DIR=two, NPROC_PER_NODE="1", MASTER_PORT=str(free_port()),
                     PATH=f"{STAND_INS}:{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_NNODES="2",
                     SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="localhost,127.0.0.2",
                     SLURM_SUBMIT_DIR=REPO_ROOT), two)
    assert "megatron_hds (slurm)" in proc.stdout and "1 rank(s) per node" in proc.stdout
    with open(os.path.join(two, "checkpoints", "metrics.jsonl")) as f:
        config = json.loads(f.readline())
    assert config["kind"] == "config" and config["parallel"]["tensor_model_parallel_size"] == 1
    # Both nodes took part: each logs as its global rank (torchrun's RANK on node 1 is 1).
    assert "[rank 1]" in proc.stdout + proc.stderr
    one_node, two_nodes = _train_records(one), _train_records(two)
    assert [r["iteration"] for r in two_nodes] == list(range(1, 7))
    assert two_nodes == one_node
    assert os.path.isdir(os.path.join(two, "checkpoints", "iter_0000006"))

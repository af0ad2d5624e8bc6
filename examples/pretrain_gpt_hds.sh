#!/usr/bin/env bash
# megatron_hds main job: GPT pre-training with an online data-mixture scheduler.
#
#   sbatch examples/pretrain_gpt_hds.sh   # SLURM: multi-node, one srun task per node running torchrun,
#                                         # the paper's Pythia-1B settings on DATA_MANIFEST
#   bash examples/pretrain_gpt_hds.sh     # no SLURM: builds the demo data if missing and trains a
#                                         # small model on this machine's CPU (a few minutes)
#
# Every setting is an environment variable (defaults: SLURM / demo):
#   DATA_MANIFEST   manifest from tools/preprocess_data.py      (required / demo data, built if missing)
#   VALID_DATA_MANIFEST, TEST_DATA_MANIFEST  held-out datasets preprocessed apart (optional;
#                   without them --split takes the held-out documents from DATA_MANIFEST's)
#   MODEL           preset: tiny pythia-160m pythia-410m pythia-1b   (pythia-1b / unset: see DEMO_MODEL_ARGS)
#   SEQ_LENGTH      tokens per sample                           (1024 / 128)
#   GLOBAL_BATCH    samples per step                            (1152 / 16)
#   MICRO_BATCH     samples per forward pass per rank           (4 / 8)
#   TRAIN_ITERS     steps                                       (41667 / 150)
#   LR, MIN_LR      cosine schedule, 1% warm-up                 (2.5e-4, 2.5e-5 / 3e-3, 3e-4)
#   PRECISION       fp32 | bf16 | fp16                          (bf16 / fp32)
#   TP, PP          tensor / pipeline parallel sizes            (1, 1)
#   EVAL_INTERVAL, SAVE_INTERVAL, LOG_INTERVAL                  (417, 1000, 10 / 25, 0, 10)
#   MIXING          data-mixing method: hds odm static uniform  (hds)
#   NPROC_PER_NODE  ranks per node (default: the GPUs visible to this job -- CUDA_VISIBLE_DEVICES,
#                   else all of the node's -- or 1 without GPUs)
#   OUTPUT_DIR      checkpoints, metrics, plots                 ($SLURM_SUBMIT_DIR/runs/$SLURM_JOB_ID / ./demo_output)
#   EXTRA_ARGS      more pretrain flags, appended last (they win)
#   PYTHON          interpreter                                 (python3)
#   SPLIT           train,valid,test document shares            (969,30,1 / 90,5,5)
# Demo data only: DEMO_SIZE_MB (16), VOCAB_SIZE (4096), TOKENIZER_DOCS (1000), WORKERS (CPUs).
#
#SBATCH --job-name=megatron_hds
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --signal=TERM@300
#SBATCH --output=megatron_hds_%j.log
# SIGTERM 300 s before the time limit reaches torchrun, which passes it to every rank;
# the ranks agree, save a checkpoint and exit, and a resubmitted job resumes from it.
set -euo pipefail

if [[ -n "${SLURM_SUBMIT_DIR:-}" ]]; then
  REPO_DIR="${REPO_DIR:-$SLURM_SUBMIT_DIR}"  # sbatch runs a copy of this script; submit from the repo root
else
  REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fi
# megatron_hds is imported from its installation (pip install -e . or pip install .), never from
# REPO_DIR: a checkout on PYTHONPATH would shadow a non-editable install and lacks megatron_hds.kernels.
PYTHON="${PYTHON:-python3}"

gpus_on_node() {
  if [[ -n "${SLURM_GPUS_ON_NODE:-}" ]]; then echo "$SLURM_GPUS_ON_NODE"; return; fi
  # Only the GPUs this process may use (nvidia-smi lists every GPU of the node).
  if [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | grep -c . || true; return; fi
  if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L 2>/dev/null | wc -l; return; fi
  echo 0
}
GPUS=$(gpus_on_node)
NPROC_PER_NODE="${NPROC_PER_NODE:-$(( GPUS > 0 ? GPUS : 1 ))}"

if [[ -n "${SLURM_JOB_ID:-}" ]]; then
  MODE=slurm
  OUTPUT_DIR="${OUTPUT_DIR:-$SLURM_SUBMIT_DIR/runs/$SLURM_JOB_ID}"
  if [[ -z "${DATA_MANIFEST:-}" ]]; then
    echo "set DATA_MANIFEST to the manifest written by tools/preprocess_data.py" >&2
    exit 2
  fi
  # The paper's Pythia-1B setting (docs/method.md, "The paper's setting").
  MODEL_ARGS=(--model "${MODEL:-pythia-1b}" --seq-length "${SEQ_LENGTH:-1024}")
  GLOBAL_BATCH="${GLOBAL_BATCH:-1152}"; MICRO_BATCH="${MICRO_BATCH:-4}"; TRAIN_ITERS="${TRAIN_ITERS:-41667}"
  LR="${LR:-2.5e-4}"; MIN_LR="${MIN_LR:-2.5e-5}"; PRECISION="${PRECISION:-bf16}"
  EVAL_INTERVAL="${EVAL_INTERVAL:-417}"; SAVE_INTERVAL="${SAVE_INTERVAL:-1000}"; SPLIT="${SPLIT:-969,30,1}"
else
  MODE=demo
  OUTPUT_DIR="${OUTPUT_DIR:-$PWD/demo_output}"
  if [[ -z "${DATA_MANIFEST:-}" ]]; then
    # build_demo_data.sh prints the train, valid and test manifests last: train on the train split,
    # evaluate on the held-out splits built apart from it.
    mapfile -t DEMO_MANIFESTS < <(bash "$REPO_DIR/examples/build_demo_data.sh" "$OUTPUT_DIR" | tail -n 3)
    DATA_MANIFEST="${DEMO_MANIFESTS[0]}"
    VALID_DATA_MANIFEST="${VALID_DATA_MANIFEST:-${DEMO_MANIFESTS[1]}}"
    TEST_DATA_MANIFEST="${TEST_DATA_MANIFEST:-${DEMO_MANIFESTS[2]}}"
  fi
  if [[ -n "${MODEL:-}" ]]; then
    MODEL_ARGS=(--model "$MODEL" --seq-length "${SEQ_LENGTH:-128}")
  else
    read -r -a MODEL_ARGS <<< "${DEMO_MODEL_ARGS:---num-layers 2 --hidden-size 128 --num-attention-heads 4 --seq-length ${SEQ_LENGTH:-128} --position-embedding-type rope}"
  fi
  GLOBAL_BATCH="${GLOBAL_BATCH:-16}"; MICRO_BATCH="${MICRO_BATCH:-8}"; TRAIN_ITERS="${TRAIN_ITERS:-150}"
  LR="${LR:-3e-3}"; MIN_LR="${MIN_LR:-3e-4}"; PRECISION="${PRECISION:-fp32}"
  EVAL_INTERVAL="${EVAL_INTERVAL:-25}"; SAVE_INTERVAL="${SAVE_INTERVAL:-0}"; SPLIT="${SPLIT:-90,5,5}"
fi

SAVE_DIR="$OUTPUT_DIR/checkpoints"
mkdir -p "$SAVE_DIR"
PRECISION_ARGS=()
[[ "$PRECISION" == bf16 ]] && PRECISION_ARGS=(--bf16)
[[ "$PRECISION" == fp16 ]] && PRECISION_ARGS=(--fp16)
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"

DATA_ARGS=(--data-manifest "$DATA_MANIFEST")
[[ -n "${VALID_DATA_MANIFEST:-}" ]] && DATA_ARGS+=(--valid-data-manifest "$VALID_DATA_MANIFEST")
[[ -n "${TEST_DATA_MANIFEST:-}" ]] && DATA_ARGS+=(--test-data-manifest "$TEST_DATA_MANIFEST")

TRAIN_ARGS=(
  "${DATA_ARGS[@]}"
  "${MODEL_ARGS[@]}"
  --tensor-model-parallel-size "${TP:-1}" --pipeline-model-parallel-size "${PP:-1}"
  --global-batch-size "$GLOBAL_BATCH" --micro-batch-size "$MICRO_BATCH" --train-iters "$TRAIN_ITERS"
  --lr "$LR" --min-lr "$MIN_LR" --lr-decay-style cosine --lr-warmup-fraction 0.01
  --weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.95 --clip-grad 1.0 "${PRECISION_ARGS[@]}"
  --split "$SPLIT" --eval-interval "$EVAL_INTERVAL" --eval-iters "${EVAL_ITERS:-10}"
  --log-interval "${LOG_INTERVAL:-10}" --save "$SAVE_DIR" --load "$SAVE_DIR" --save-interval "$SAVE_INTERVAL"
  --mixing "${MIXING:-hds}"
  "${EXTRA[@]}"
)

echo "megatron_hds ($MODE): output in $OUTPUT_DIR, $NPROC_PER_NODE rank(s) per node"
if [[ "$MODE" == slurm ]]; then
  MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  export MASTER_ADDR MASTER_PORT="${MASTER_PORT:-29500}"
  NNODES="${SLURM_NNODES:-1}"
  # One task per node; each starts torchrun for its GPUs. The node rank is read inside
  # the task (SLURM_NODEID differs per node), hence the single quotes.
  srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c '
    exec "$0" -m torch.distributed.run --nnodes "$1" --node_rank "$SLURM_NODEID" --nproc_per_node "$2" \
      --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" -m megatron_hds.training.pretrain "${@:3}"
  ' "$PYTHON" "$NNODES" "$NPROC_PER_NODE" "${TRAIN_ARGS[@]}"
elif [[ "$NPROC_PER_NODE" -gt 1 ]]; then
  "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC_PER_NODE" \
    -m megatron_hds.training.pretrain "${TRAIN_ARGS[@]}"
else
  "$PYTHON" -m megatron_hds.training.pretrain "${TRAIN_ARGS[@]}"
fi

"$PYTHON" - "$SAVE_DIR" <<'PY'
import sys
from megatron_hds.training.metrics import read_metrics
train = read_metrics(sys.argv[1])["train"]
if train:
    last = train[-1]
    ranked = sorted(last["domain_weights"].items(), key=lambda kv: -kv[1])
    print(f"domain weights chosen for iteration {last['iteration']}: "
          + ", ".join(f"{name} {weight:.3f}" for name, weight in ranked))
PY
echo "metrics: $SAVE_DIR/metrics.jsonl"
echo "checkpoints: $SAVE_DIR"
if "$PYTHON" -c "import matplotlib" 2>/dev/null; then
  "$PYTHON" "$REPO_DIR/tools/plot_run.py" "$SAVE_DIR" --output-dir "$OUTPUT_DIR/plots" | sed 's/^/plot: /'
else
  echo "plots: pip install -e '.[plot]' then python tools/plot_run.py $SAVE_DIR"
fi

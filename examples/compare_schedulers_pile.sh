#!/usr/bin/env bash
# The paper's comparison at GPU scale (docs/method.md, "The paper's setting"):
# HDS against the Pile weights (static), uniform, ODM and AC-ODM on The Pile's 22 domains,
# one SLURM job per (method, seed), then the same report as the CPU demo comparison
# (scheduler_comparison.md with the tables, plots/*.png).
#
#   DATA_MANIFEST=/data/pile/pile_manifest.json MODEL=pythia-1b bash examples/compare_schedulers_pile.sh
#
# Run it on the login node from the repository root; it submits the jobs with sbatch and
# waits for them (keep it in tmux/screen, or set WAIT=0 and rerun later: a rerun resubmits
# only unfinished runs, which resume from their last checkpoint, then writes the report).
# Arguments go on to tools/compare_schedulers.py (e.g. --report-only).
#
# Settings (environment):
#   DATA_MANIFEST   manifest of tools/preprocess_data.py --domain-key meta.pile_set_name (required)
#   MODEL           pythia-160m | pythia-410m | pythia-1b                               (pythia-1b)
#   NODES           nodes per run; GPUS_PER_NODE GPUs each                              (4, 8)
#   MICRO_BATCH     per GPU; 1152 must be a multiple of MICRO_BATCH x data-parallel size (4)
#   SEEDS           comma-separated seeds                                                (1)
#   METHODS         comma-separated methods                          (static,uniform,odm,acodm,hds)
#   TIME_LIMIT      SLURM time per job; jobs save on SIGTERM and resume when resubmitted (48:00:00)
#   OUTPUT_DIR      runs and report                                   (runs/pile_compare_$MODEL)
#   SBATCH_EXTRA    more sbatch options (partition, account, ...)
#   LAYOUT          --mixing-batch-layout: hds is the reference (the first 22 micro-batches of
#                   a step one per domain, so every domain has a gradient and a loss each step)  (hds)
#   PRETRAIN_ARGS   more pretrain flags for every run, e.g. "--hds-action-bound none"           ()
# Every job runs examples/pretrain_gpt_hds.sh with the methods' defaults (HDS's and AC-ODM's
# update overlaps the next step).
set -euo pipefail
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_DIR"
: "${DATA_MANIFEST:?set DATA_MANIFEST to the manifest that tools/preprocess_data.py wrote for The Pile}"

export MODEL="${MODEL:-pythia-1b}"
case "$MODEL" in
  pythia-1b)   LR_DEFAULT=2.5e-4 ;;
  pythia-410m) LR_DEFAULT=3e-4 ;;
  pythia-160m) LR_DEFAULT=6e-4 ;;
  *) echo "MODEL=$MODEL: choose pythia-160m, pythia-410m or pythia-1b" >&2; exit 2 ;;
esac
NODES="${NODES:-4}"; GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
# The paper's schedule: global batch 1152 x 1024 tokens, 41,667 steps (~49B tokens), cosine
# to a tenth of the peak LR with 1% warm-up, bf16; validation every 417 steps on at most
# 5,000 samples per domain (EVAL_ITERS x MICRO_BATCH x data-parallel size).
export SEQ_LENGTH=1024 GLOBAL_BATCH=1152 MICRO_BATCH="${MICRO_BATCH:-4}" PRECISION=bf16
export LR="${LR:-$LR_DEFAULT}"
MIN_LR="${MIN_LR:-$(python3 -c "print($LR / 10)")}"
export MIN_LR SPLIT="${SPLIT:-969,30,1}" SAVE_INTERVAL="${SAVE_INTERVAL:-1000}"
export NPROC_PER_NODE="$GPUS_PER_NODE"
DP=$(( NODES * GPUS_PER_NODE ))
export EVAL_ITERS="${EVAL_ITERS:-$(( (5000 + MICRO_BATCH * DP - 1) / (MICRO_BATCH * DP) ))}"
if (( GLOBAL_BATCH % (MICRO_BATCH * DP) )); then
  echo "global batch $GLOBAL_BATCH is not a multiple of MICRO_BATCH ($MICRO_BATCH) x GPUs ($DP): change NODES or MICRO_BATCH" >&2
  exit 2
fi

WAIT_ARGS=(--wait)
[[ "${WAIT:-1}" == 0 ]] && WAIT_ARGS=()
exec python3 tools/compare_schedulers.py \
  --output-dir "${OUTPUT_DIR:-runs/pile_compare_$MODEL}" \
  --methods "${METHODS:-static,uniform,odm,acodm,hds}" --seeds "${SEEDS:-1}" \
  --train-iters 41667 --eval-interval 417 --data-manifest "$DATA_MANIFEST" \
  --batch-layout "${LAYOUT:-hds}" --extra-args="${PRETRAIN_ARGS:-}" \
  --launcher sbatch --sbatch-args="--nodes $NODES --gpus-per-node $GPUS_PER_NODE --time ${TIME_LIMIT:-48:00:00} ${SBATCH_EXTRA:-}" \
  "${WAIT_ARGS[@]}" "$@"

#!/usr/bin/env bash
# megatron_hds main job.
#
#   bash examples/pretrain_gpt_hds.sh      # no SLURM: the built-in demo on this machine's CPU
#   sbatch examples/pretrain_gpt_hds.sh    # SLURM: the same steps inside the allocation
#
# Steps (each skipped when its output already exists, so a rerun resumes):
#   1. the demo corpus: a Pile-shaped .jsonl.zst made offline (tools/make_demo_corpus.py)
#   2. a SentencePiece tokenizer trained on it (tools/train_tokenizer.py)
#   3. per-domain Megatron datasets + MTLD sidecars + manifest (tools/preprocess_data.py)
# Training on the manifest is added by the training-loop issue; until then the job
# stops after step 3 and prints the manifest path.
#
# Settings (environment variables):
#   OUTPUT_DIR   where everything is written              (default: ./demo_output)
#   DEMO_SIZE_MB size of the demo corpus in MB of text     (default: 32)
#   VOCAB_SIZE   SentencePiece vocabulary size             (default: 8000)
#   TOKENIZER_DOCS documents the tokenizer is trained on   (default: 2000)
#   WORKERS      preprocessing processes                   (default: CPUs available)
#   PYTHON       interpreter                               (default: python3)
#SBATCH --job-name=megatron_hds
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --output=megatron_hds_%j.log
set -euo pipefail

if [[ -n "${SLURM_SUBMIT_DIR:-}" ]]; then
  REPO_DIR="$SLURM_SUBMIT_DIR"  # sbatch runs a copy of this script; the repo is where it was submitted
else
  REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fi
PYTHON="${PYTHON:-python3}"
OUTPUT_DIR="${OUTPUT_DIR:-$PWD/demo_output}"
DEMO_SIZE_MB="${DEMO_SIZE_MB:-32}"
VOCAB_SIZE="${VOCAB_SIZE:-8000}"
TOKENIZER_DOCS="${TOKENIZER_DOCS:-2000}"
WORKERS="${WORKERS:-${SLURM_CPUS_PER_TASK:-$(nproc)}}"

CORPUS="$OUTPUT_DIR/demo.jsonl.zst"
TOKENIZER_PREFIX="$OUTPUT_DIR/demo_sp"
DATA_PREFIX="$OUTPUT_DIR/data/demo"
MANIFEST="${DATA_PREFIX}_manifest.json"

mkdir -p "$OUTPUT_DIR"
echo "megatron_hds demo: output in $OUTPUT_DIR (${SLURM_JOB_ID:+SLURM job $SLURM_JOB_ID, }$WORKERS worker(s))"

if [[ ! -f "$CORPUS" ]]; then
  echo "== 1/3 demo corpus ($DEMO_SIZE_MB MB)"
  "$PYTHON" "$REPO_DIR/tools/make_demo_corpus.py" --output "$CORPUS" --size-mb "$DEMO_SIZE_MB" --seed 1234
else
  echo "== 1/3 demo corpus: $CORPUS exists"
fi

if [[ ! -f "$TOKENIZER_PREFIX.model" ]]; then
  echo "== 2/3 tokenizer (vocab $VOCAB_SIZE, first $TOKENIZER_DOCS documents)"
  "$PYTHON" "$REPO_DIR/tools/train_tokenizer.py" --input "$CORPUS" --model-prefix "$TOKENIZER_PREFIX" \
    --vocab-size "$VOCAB_SIZE" --max-documents "$TOKENIZER_DOCS"
else
  echo "== 2/3 tokenizer: $TOKENIZER_PREFIX.model exists"
fi

if [[ ! -f "$MANIFEST" ]]; then
  echo "== 3/3 preprocessing into per-domain datasets"
  "$PYTHON" "$REPO_DIR/tools/preprocess_data.py" --input "$CORPUS" --output-prefix "$DATA_PREFIX" \
    --domain-key meta.pile_set_name --tokenizer-type GPTSentencePieceTokenizer \
    --tokenizer-model "$TOKENIZER_PREFIX.model" --append-eod --workers "$WORKERS"
else
  echo "== 3/3 preprocessing: $MANIFEST exists"
fi

echo "data ready: --data-manifest $MANIFEST --tokenizer-model $TOKENIZER_PREFIX.model"

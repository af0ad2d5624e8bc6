#!/usr/bin/env bash
# Build the built-in demo data (no downloads): a Pile-shaped corpus, a SentencePiece model
# trained on it, and the per-domain Megatron datasets with their manifest.
#
#   bash examples/build_demo_data.sh OUTPUT_DIR
#
# Writes OUTPUT_DIR/demo.jsonl.zst, OUTPUT_DIR/demo_sp.model and OUTPUT_DIR/data/demo_*
# and prints the manifest's path (OUTPUT_DIR/data/demo_manifest.json) as its last line.
# Steps whose output exists are skipped, so a rerun is cheap. Settings (environment):
# DEMO_SIZE_MB (16), VOCAB_SIZE (4096), TOKENIZER_DOCS (1000), WORKERS (CPUs), PYTHON (python3).
set -euo pipefail
if [[ $# -ne 1 ]]; then
  echo "usage: bash examples/build_demo_data.sh OUTPUT_DIR" >&2
  exit 2
fi
OUTPUT_DIR="$1"
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"

MANIFEST="$OUTPUT_DIR/data/demo_manifest.json"
if [[ ! -f "$MANIFEST" ]]; then
  CORPUS="$OUTPUT_DIR/demo.jsonl.zst"
  TOKENIZER_PREFIX="$OUTPUT_DIR/demo_sp"
  mkdir -p "$OUTPUT_DIR"
  [[ -f "$CORPUS" ]] || "$PYTHON" "$REPO_DIR/tools/make_demo_corpus.py" --output "$CORPUS" \
      --size-mb "${DEMO_SIZE_MB:-16}" --seed 1234 >&2
  [[ -f "$TOKENIZER_PREFIX.model" ]] || "$PYTHON" "$REPO_DIR/tools/train_tokenizer.py" --input "$CORPUS" \
      --model-prefix "$TOKENIZER_PREFIX" --vocab-size "${VOCAB_SIZE:-4096}" \
      --max-documents "${TOKENIZER_DOCS:-1000}" >&2
  # preprocess_data.py writes the manifest last (atomically), so its presence means complete data.
  "$PYTHON" "$REPO_DIR/tools/preprocess_data.py" --input "$CORPUS" --output-prefix "$OUTPUT_DIR/data/demo" \
      --domain-key meta.pile_set_name --tokenizer-model "$TOKENIZER_PREFIX.model" --append-eod \
      --workers "${WORKERS:-$(nproc)}" >&2
fi
echo "$MANIFEST"

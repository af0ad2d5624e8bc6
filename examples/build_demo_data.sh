#!/usr/bin/env bash
# Build the built-in demo data (no downloads): the Pile-shaped demo corpus with its train/valid/test
# splits (which share no text), a SentencePiece model trained on the train split only, and the
# per-domain Megatron datasets of each split with their manifests.
#
#   bash examples/build_demo_data.sh OUTPUT_DIR
#
# Writes OUTPUT_DIR/{train,valid,test}.jsonl.zst (+ corpus.json), OUTPUT_DIR/demo_sp.model and
# OUTPUT_DIR/data/{train,valid,test}/demo_*, and prints the three manifests' paths as its last
# lines, in the order train, valid, test (for --data-manifest, --valid-data-manifest and
# --test-data-manifest). Steps whose output exists are skipped, so a rerun is cheap. Settings
# (environment): DEMO_SIZE_MB (16, all splits together), VOCAB_SIZE (4096), TOKENIZER_DOCS (1000),
# WORKERS (CPUs), PYTHON (python3).
set -euo pipefail
if [[ $# -ne 1 ]]; then
  echo "usage: bash examples/build_demo_data.sh OUTPUT_DIR" >&2
  exit 2
fi
OUTPUT_DIR="$1"
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
SPLITS=(train valid test)
TOKENIZER_PREFIX="$OUTPUT_DIR/demo_sp"

# The single-file layout of earlier versions trained its tokenizer on text that is now held out.
if [[ -e "$OUTPUT_DIR/demo.jsonl.zst" || -e "$OUTPUT_DIR/data/demo_manifest.json" ]]; then
  echo "build_demo_data.sh: $OUTPUT_DIR holds demo data of the old single-file layout (demo.jsonl.zst," \
       "data/demo_manifest.json), whose tokenizer saw validation text; use another OUTPUT_DIR or delete" \
       "demo.jsonl.zst, demo_sp.model, demo_sp.vocab and data/ there" >&2
  exit 1
fi

# make_demo_corpus.py writes corpus.json last (after renaming the splits into place).
[[ -f "$OUTPUT_DIR/corpus.json" ]] || "$PYTHON" "$REPO_DIR/tools/make_demo_corpus.py" --output-dir "$OUTPUT_DIR" \
    --size-mb "${DEMO_SIZE_MB:-16}" --seed 1234 >&2

# The tokenizer sees the train split only: valid and test stay unseen text.
[[ -f "$TOKENIZER_PREFIX.model" ]] || "$PYTHON" "$REPO_DIR/tools/train_tokenizer.py" \
    --input "$OUTPUT_DIR/train.jsonl.zst" --model-prefix "$TOKENIZER_PREFIX" --vocab-size "${VOCAB_SIZE:-4096}" \
    --max-documents "${TOKENIZER_DOCS:-1000}" >&2

for split in "${SPLITS[@]}"; do
  # preprocess_data.py writes the manifest last (atomically), so its presence means complete data.
  [[ -f "$OUTPUT_DIR/data/$split/demo_manifest.json" ]] || "$PYTHON" "$REPO_DIR/tools/preprocess_data.py" \
      --input "$OUTPUT_DIR/$split.jsonl.zst" --output-prefix "$OUTPUT_DIR/data/$split/demo" \
      --domain-key meta.pile_set_name --tokenizer-model "$TOKENIZER_PREFIX.model" --append-eod \
      --workers "${WORKERS:-$(nproc)}" >&2
done
for split in "${SPLITS[@]}"; do
  echo "$OUTPUT_DIR/data/$split/demo_manifest.json"
done

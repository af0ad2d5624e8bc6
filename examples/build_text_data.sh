#!/usr/bin/env bash
# Build the real-text benchmark data from Debian packages (needs apt-get and dpkg-deb; see
# docs/text_corpus.md): the Pile-shaped corpus with its train/valid/test splits, a
# SentencePiece model trained on the train split only, and the per-domain Megatron datasets
# of each split with their manifests.
#
#   bash examples/build_text_data.sh OUTPUT_DIR
#
# Writes OUTPUT_DIR/{train,valid,test}.jsonl.zst (+ sources.json, source_ids.json),
# OUTPUT_DIR/text_sp.model and OUTPUT_DIR/data/{train,valid,test}/text_*, and prints the
# three manifests' paths as its last lines, in the order train, valid, test (for
# --data-manifest, --valid-data-manifest and --test-data-manifest). Steps whose output
# exists are skipped, so a rerun is cheap. Settings (environment): DEB_CACHE_DIR
# (OUTPUT_DIR/debcache), TEXT_SIZE_MB (5.5 per domain), VOCAB_SIZE (8192), TOKENIZER_DOCS
# (all train documents), TOKENIZER_THREADS and WORKERS (CPUs), PYTHON (python3).
set -euo pipefail
if [[ $# -ne 1 ]]; then
  echo "usage: bash examples/build_text_data.sh OUTPUT_DIR" >&2
  exit 2
fi
OUTPUT_DIR="$1"
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

SPLITS=(train valid test)
TOKENIZER_PREFIX="$OUTPUT_DIR/text_sp"

# make_text_corpus.py writes sources.json last (after renaming the splits into place).
[[ -f "$OUTPUT_DIR/sources.json" ]] || "$PYTHON" "$REPO_DIR/tools/make_text_corpus.py" --output "$OUTPUT_DIR" \
    --cache-dir "${DEB_CACHE_DIR:-$OUTPUT_DIR/debcache}" --size-mb "${TEXT_SIZE_MB:-5.5}" >&2

# The tokenizer sees the train split only: valid and test stay unseen text.
[[ -f "$TOKENIZER_PREFIX.model" ]] || "$PYTHON" "$REPO_DIR/tools/train_tokenizer.py" \
    --input "$OUTPUT_DIR/train.jsonl.zst" --model-prefix "$TOKENIZER_PREFIX" --vocab-size "${VOCAB_SIZE:-8192}" \
    ${TOKENIZER_DOCS:+--max-documents "$TOKENIZER_DOCS"} --num-threads "${TOKENIZER_THREADS:-$(nproc)}" >&2

for split in "${SPLITS[@]}"; do
  # preprocess_data.py writes the manifest last (atomically), so its presence means complete data.
  [[ -f "$OUTPUT_DIR/data/$split/text_manifest.json" ]] || "$PYTHON" "$REPO_DIR/tools/preprocess_data.py" \
      --input "$OUTPUT_DIR/$split.jsonl.zst" --output-prefix "$OUTPUT_DIR/data/$split/text" \
      --domain-key meta.pile_set_name --tokenizer-model "$TOKENIZER_PREFIX.model" --append-eod \
      --workers "${WORKERS:-$(nproc)}" >&2
done
for split in "${SPLITS[@]}"; do
  echo "$OUTPUT_DIR/data/$split/text_manifest.json"
done

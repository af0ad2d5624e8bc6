#!/usr/bin/env bash
# The real-text benchmark on CPU (docs/experiments/2026-12-02-real-text.md): every data
# scheduler on the 8-domain corpus built from Debian packages (docs/text_corpus.md), a small
# GPT, 64 micro-batches of one sample per step, held-out seeds, then the report
# (OUTPUT_DIR/scheduler_comparison.md and OUTPUT_DIR/plots/).
#
#   bash examples/compare_schedulers_text.sh
#
# Builds the corpus in DATA_DIR first when it is missing (apt-get downloads of Debian
# packages, about 4 minutes on 2 cores). Rerunning resumes: finished runs are kept, unfinished
# ones resume from their last checkpoint, and the report is rewritten. Arguments go on to
# tools/compare_schedulers.py: `bash examples/compare_schedulers_text.sh --report-only`
# rewrites the report from the finished runs without training.
#
# Settings (environment):
#   DATA_DIR      the corpus (examples/build_text_data.sh OUTPUT_DIR)       (data/text)
#   OUTPUT_DIR    runs and report                                          (runs/text_compare)
#   METHODS       comma-separated methods of tools/compare_schedulers.py   (all ten: the baselines,
#                 hds, hds-base and the three reward ablations)
#   SEEDS         held-out seeds, counted in the report                    (11,12,13,14,15)
#   TUNING_SEEDS  seeds used while developing the schedulers, named only   (1,2)
#   TRAIN_ITERS, EVAL_INTERVAL                                              (2500, 50)
#   PARALLEL      runs at a time; each gets cores / PARALLEL threads        (2)
# The model and optimiser settings below were chosen on the tuning seeds (LR: the static
# baseline's best of 3e-3, 6e-3 and 1e-2); every method runs with the same ones.
set -euo pipefail
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_DIR"
DATA_DIR="${DATA_DIR:-data/text}"
PYTHON="${PYTHON:-python3}"
export PYTHON

if [[ ! -f "$DATA_DIR/data/test/text_manifest.json" ]]; then
  VOCAB_SIZE="${VOCAB_SIZE:-2048}" TOKENIZER_DOCS="${TOKENIZER_DOCS:-6000}" bash examples/build_text_data.sh "$DATA_DIR"
fi

export MODEL=tiny SEQ_LENGTH=64 GLOBAL_BATCH=64 MICRO_BATCH=1 LR=6e-3 MIN_LR=6e-4 EVAL_ITERS=64 \
       LOG_INTERVAL=50 SAVE_INTERVAL=500
exec "$PYTHON" tools/compare_schedulers.py --output-dir "${OUTPUT_DIR:-runs/text_compare}" \
  --methods "${METHODS:-static,uniform,odm,odm-released,acodm,hds,hds-base,hds-no-align,hds-no-quality,hds-no-norm}" --seeds "${SEEDS:-11,12,13,14,15}" --tuning-seeds "${TUNING_SEEDS:-1,2}" \
  --train-iters "${TRAIN_ITERS:-2500}" --eval-interval "${EVAL_INTERVAL:-50}" \
  --data-manifest "$DATA_DIR/data/train/text_manifest.json" \
  --valid-data-manifest "$DATA_DIR/data/valid/text_manifest.json" \
  --test-data-manifest "$DATA_DIR/data/test/text_manifest.json" \
  --parallel "${PARALLEL:-2}" "$@"

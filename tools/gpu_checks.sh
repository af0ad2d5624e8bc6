#!/usr/bin/env bash
# The GPU checklist of the open issues (3: model MFU, 5: scheduler overhead, 6: kernels) as
# one command sized for one 10-minute call on a lent GPU machine (at most 9 minutes of checks).
#
#   OUT=/path/for/logs bash tools/gpu_checks.sh          # default OUT: ./gpu_checks_out
#
# The package is installed without its dependencies into a scratch directory (the machine's
# torch and triton are used as they are): the checkout itself cannot be imported, because its
# kernels/ folder becomes megatron_hds.kernels only when installed. Each
# check has its own time limit and writes OUT/<check>.log; OUT/summary.txt gets the versions,
# each check's exit status and the tail of its log. Eight files at most (7 logs and the summary), so they all fit a
# device call's return. The tests' and bench_scheduler's demo corpus needs `zstandard`, and
# the tokenizer `sentencepiece`: where one is missing (the script checks every runtime
# dependency first and exits 4 naming it), carry its wheel (.whl) and set WHEELS=.whl; the
# script installs what is there into /tmp/site first.
set -uo pipefail
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO_DIR/gpu_checks_out}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
cd "$REPO_DIR"
if [[ -n "${WHEELS:-}" && -d "$WHEELS" ]]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
SUMMARY="$OUT/summary.txt"
{
  date -u
  git -C "$REPO_DIR" log --oneline -1 2>/dev/null
  nvidia-smi -L 2>&1
  "$PYTHON" - <<'PY' 2>&1
import numpy, torch, triton
print("torch", torch.__version__, "triton", triton.__version__, "numpy", numpy.__version__)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
PY
} > "$SUMMARY"

check() {  # check NAME LIMIT_SECONDS COMMAND...
  local name="$1" limit="$2"
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  {
    echo
    echo "== $name: rc=$rc in $((SECONDS - start)) s (limit $limit s)"
    echo "\$ $*"
    tail -n 30 "$OUT/$name.log"
  } >> "$SUMMARY"
}

# setup.py's install_requires (and pytest): without one, pytest stops at collection.
DEPS_CHECK='
import importlib.util, sys
missing = [m for m in ("numpy", "sentencepiece", "zstandard", "tqdm", "triton", "pytest")
           if importlib.util.find_spec(m) is None]
sys.exit("missing: " + " ".join(missing) + " (carry the wheels and set WHEELS=.whl)" if missing else 0)'
if ! "$PYTHON" -c "$DEPS_CHECK" 2>&1 | tee -a "$SUMMARY"; then
  exit 4
fi
CUDA_CHECK='import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)'
if ! "$PYTHON" -c "$CUDA_CHECK"; then
  echo "no CUDA device visible: nothing to check" | tee -a "$SUMMARY"
  exit 3
fi
SITE=/tmp/megatron_hds_site
rm -rf "$SITE"
if ! "$PYTHON" -m pip install -q --no-deps --no-build-isolation --no-index --target "$SITE" "$REPO_DIR" \
    >> "$SUMMARY" 2>&1; then
  echo "pip could not install $REPO_DIR into $SITE (see above)" | tee -a "$SUMMARY"
  exit 5
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

# Issue 3/5/6 gpu-marked tests (Triton vs torch training losses, kernels on CUDA, NCCL paths).
# From another directory, with the tests' folder appended to sys.path, so that the installed
# package, not the checkout, is the one imported.
check pytest_gpu 90 bash -c 'cd /tmp && "$0" -m pytest -q -m gpu -p no:cacheprovider --import-mode=append \
    --rootdir "$1" -c "$1/setup.cfg" "$1/tests"' "$PYTHON" "$REPO_DIR"
# Issue 3: step time and MFU at the Pythia shapes in bf16 (goal: >= 45% MFU at 1B); at 1B also
# with --torch-compile (the warm-up steps pay the compilation).
check bench_model_410m 50 "$PYTHON" tools/bench_model.py --model pythia-410m --dtype bf16 --micro-batch-size 8 \
    --warmup 3 --steps 10 --no-plain
check bench_model_1b 120 bash -c "$PYTHON tools/bench_model.py --model pythia-1b --dtype bf16 --micro-batch-size 8 \
    --warmup 3 --steps 10 --no-plain && $PYTHON tools/bench_model.py --model pythia-1b --dtype bf16 \
    --micro-batch-size 8 --warmup 3 --steps 10 --no-plain --torch-compile"
# Issue 6: fused cross entropy at realistic shapes (vocab 50k over TP 2), and the norm kernel over Pythia-1B.
check bench_kernels_ce 100 "$PYTHON" tools/bench_kernels.py --kernels ce --tokens 16384 65536 131072 --vocab 50304 \
    --tp 2 --dtype bf16
check bench_kernels_norm 30 "$PYTHON" tools/bench_kernels.py --kernels norm --model pythia-1b
# Issue 5: the gradient probe's CountSketch (Triton, hash on the fly) against the table path.
check bench_kernels_sketch 25 "$PYTHON" tools/bench_kernels.py --kernels sketch --model pythia-1b
# Issue 5: the scheduler's added time per step at the Pythia-1B shape (goal: <= 0.5%); three
# 1B trainers (static, hds, hds-sync) share the GPU's memory. 12 timed steps take 4 blocks, so with
# their lead-ins each method runs the 18 steps it ran before the bench took turns in blocks.
check bench_scheduler 110 "$PYTHON" tools/bench_scheduler.py --cache-dir /tmp/bench_scheduler_data \
    --num-layers 16 --hidden-size 2048 --num-attention-heads 8 --seq-length 1024 --global-batch-size 32 \
    --micro-batch-size 8 --steps 12 --warmup-steps 2 --threads 8 --methods hds hds-sync \
    --extra-args="--bf16" --json /tmp/bench_scheduler.json
# Issue 17: HDS's added time per step at the demo shape (the default arguments; goal: <= 2% of the
# static step), where on a GPU the probes' scatters and the preconditioner stay on the training thread.
check bench_scheduler_demo 15 "$PYTHON" tools/bench_scheduler.py --cache-dir /tmp/bench_scheduler_data --steps 60
# The JSON goes into the log rather than OUT: an eighth file there would not come back.
cat /tmp/bench_scheduler.json >> "$OUT/bench_scheduler.log" 2>/dev/null
echo "logs in $OUT; summary: $SUMMARY"

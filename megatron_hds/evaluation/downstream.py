"""Downstream evaluation with lm-evaluation-harness: an exported checkpoint on a list of tasks, the
hook that starts one in the background every N checkpoint saves, and the command line
(``python -m megatron_hds.evaluation.downstream``, or ``megatron-hds-evaluate``):

    python -m megatron_hds.evaluation.downstream --load ckpt --tasks my_task --include-path tasks/
    python -m megatron_hds.evaluation.downstream --hf-model ckpt/hf --tasks my_task --include-path tasks/

With --load the latest checkpoint (or --iteration) is exported to
<load>/downstream_eval/iter_XXXXXXX/hf and the results go to lm_eval_results.json beside it;
with --hf-model they go into that directory; --output names another file. Datasets and
models are read offline unless --online.

Results land next to the checkpoint, in ``<save>/downstream_eval/iter_XXXXXXX/`` (the exported
model in ``hf/``, lm-eval's results in ``lm_eval_results.json``, the run's output in
``evaluate.log``). lm_eval is imported only when an evaluation runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from typing import Optional

from megatron_hds.atomic_io import write_text_atomic
from megatron_hds.config import DownstreamEvalConfig
from megatron_hds.checkpoint.layout import find_latest_iteration, iteration_dirname

logger = logging.getLogger(__name__)

RESULTS_FILENAME = "lm_eval_results.json"
OFFLINE_ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def eval_dir(save_dir: str, iteration: int) -> str:
    return os.path.join(save_dir, "downstream_eval", iteration_dirname(iteration))


def run_lm_eval(hf_dir: str, tasks, output_path: str, include_path: Optional[str] = None, batch_size: int = 8,
                limit: Optional[int] = None, num_fewshot: Optional[int] = None, device: str = "cpu") -> dict:
    """Evaluate a transformers model directory on `tasks` with lm-eval's HF backend; write the results JSON."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    tasks = list(tasks)
    # Indexing lm-eval's thousands of built-in tasks takes ~20 s: skip it when local tasks are all we need.
    manager = TaskManager(include_path=include_path, include_defaults=False) if include_path else None
    if manager is None or any(t not in manager.all_tasks for t in tasks):
        manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"unknown lm-eval tasks {unknown}" + (f" (local tasks read from {include_path})"
                                                               if include_path else " (give --include-path for local ones)"))
    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": hf_dir, "dtype": "float32"}, tasks=tasks, task_manager=manager,
        batch_size=batch_size, limit=limit, num_fewshot=num_fewshot, device=device)
    results.pop("samples", None)
    write_text_atomic(output_path, json.dumps(results, indent=2, default=handle_non_serializable) + "\n")
    logger.info("lm-eval results for %s written to %s", hf_dir, output_path)
    return results


def evaluate_checkpoint(load_dir: str, tasks, iteration: Optional[int] = None, output_path: Optional[str] = None,
                        **lm_eval_kwargs) -> str:
    """Export one checkpoint to ``downstream_eval/iter_XXXXXXX/hf`` and evaluate it; returns the results path
    (default: lm_eval_results.json beside the export)."""
    from megatron_hds.checkpoint.hf_model import export_checkpoint

    if iteration is None:
        iteration = find_latest_iteration(load_dir)
        if iteration is None:
            raise FileNotFoundError(f"no checkpoint in {load_dir}: latest_checkpointed_iteration.txt is missing")
    out = eval_dir(load_dir, iteration)
    hf_dir = export_checkpoint(load_dir, os.path.join(out, "hf"), iteration)
    path = output_path or os.path.join(out, RESULTS_FILENAME)
    run_lm_eval(hf_dir, tasks, path, **lm_eval_kwargs)
    return path


def maybe_evaluate_after_save(config: DownstreamEvalConfig, save_dir: str, iteration: int, save_count: int,
                              rank: int) -> Optional[subprocess.Popen]:
    """After a committed save: on global rank 0, every `interval`-th save, start this module's command
    line on it in the background (training does not wait; its output goes to evaluate.log). Returns the
    process or None."""
    if rank != 0 or not config.interval or save_count % config.interval:
        return None
    cmd = [sys.executable, "-m", __name__, "--load", save_dir, "--iteration", str(iteration),
           "--tasks", ",".join(config.tasks), "--batch-size", str(config.batch_size), "--device", config.device]
    if config.include_path:
        cmd += ["--include-path", config.include_path]
    if config.limit is not None:
        cmd += ["--limit", str(config.limit)]
    out = eval_dir(save_dir, iteration)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "evaluate.log"), "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE_ENV})
    logger.info("downstream evaluation of iteration %d started (pid %d): %s", iteration, proc.pid, out)
    return proc


# ---- command line
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m megatron_hds.evaluation.downstream", allow_abbrev=False,
                                     description="Run lm-evaluation-harness offline on a checkpoint or an exported model.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--load", help="checkpoint directory: export it (latest or --iteration), then evaluate")
    source.add_argument("--hf-model", help="a transformers model directory (tools/checkpoint/convert_to_hf.py)")
    parser.add_argument("--iteration", type=int, default=None, help="with --load (default: latest)")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    parser.add_argument("--include-path", default=None, help="directory of local lm-eval task YAMLs")
    parser.add_argument("--output", default=None, help="results JSON (default: lm_eval_results.json beside the model)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="documents per task (default: all)")
    parser.add_argument("--num-fewshot", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--online", action="store_true", help="allow downloads of datasets/models from the Hub")
    args = parser.parse_args(argv)
    if args.iteration is not None and args.load is None:
        parser.error("--iteration goes with --load")
    return args


def main(argv=None) -> str:
    """The command line; returns the results path."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    if not args.online:  # must be set before datasets / huggingface_hub are imported
        os.environ.update(OFFLINE_ENV)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    options = dict(include_path=args.include_path, batch_size=args.batch_size, limit=args.limit,
                   num_fewshot=args.num_fewshot, device=args.device)
    if args.load is not None:
        path = evaluate_checkpoint(args.load, tasks, args.iteration, args.output, **options)
    else:
        path = args.output or os.path.join(args.hf_model, RESULTS_FILENAME)
        run_lm_eval(args.hf_model, tasks, path, **options)
    print(f"wrote {path}")
    return path


def cli(argv=None) -> None:
    """Console entry point: main() with a one-line message instead of a traceback for bad input."""
    try:
        main(argv)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"evaluate: error: {error}")


if __name__ == "__main__":
    cli()

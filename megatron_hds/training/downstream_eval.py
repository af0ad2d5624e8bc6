"""Downstream evaluation with lm-evaluation-harness: an exported checkpoint on a list of tasks, and
the hook that starts one in the background every N checkpoint saves.

Results land next to the checkpoint, in ``<save>/downstream_eval/iter_XXXXXXX/`` (the exported
model in ``hf/``, lm-eval's results in ``lm_eval_results.json``, the run's output in
``evaluate.log``). lm_eval is imported only when an evaluation runs.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Optional

from megatron_hds.atomic_io import write_text_atomic
from megatron_hds.config import DownstreamEvalConfig
from megatron_hds.training.checkpointing import find_latest_iteration, iteration_dirname

logger = logging.getLogger(__name__)

RESULTS_FILENAME = "lm_eval_results.json"
EVALUATE_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               "tools", "evaluate.py")
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
    from megatron_hds.training.hf_format import export_checkpoint

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
    """After a committed save: on global rank 0, every `interval`-th save, start tools/evaluate.py on it in
    the background (training does not wait; its output goes to evaluate.log). Returns the process or None."""
    if rank != 0 or not config.interval or save_count % config.interval:
        return None
    if not os.path.isfile(EVALUATE_SCRIPT):
        raise FileNotFoundError(f"{EVALUATE_SCRIPT} not found: downstream evaluation needs a source checkout")
    cmd = [sys.executable, EVALUATE_SCRIPT, "--load", save_dir, "--iteration", str(iteration),
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

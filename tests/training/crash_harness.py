"""The pretrain entry point, with a crash planted for the kill-at-any-instant test.

    MEGATRON_HDS_CRASH=<point>:<n> python -m tests.training.crash_harness <pretrain flags>

runs ``megatron_hds.training.pretrain`` and, the n-th time this process reaches <point>,
SIGKILLs its whole process group (every rank of the job, as a node failure or the
scheduler would), leaving what a real crash there leaves: a file half written, a rename
done and the next one not. Points:

  cache        writing an index-cache array (a half-written temporary is left)
  backward     after a step's forward/backward, before its gradients are reduced
  observe      after the optimizer step, before the mixture scheduler sees the step
  shard_write  writing a checkpoint shard (half of it, under its temporary name)
  tracker      rewriting latest_checkpointed_iteration.txt (the new directory is in place,
               the tracker's temporary half written)
  metrics      writing a metrics.jsonl line (half of it reaches the file)
"""

from __future__ import annotations

import io
import os
import signal
import sys

import torch

from megatron_hds.atomic_io import atomic_path
from megatron_hds.checkpoint import store
from megatron_hds.data import gpt_dataset
from megatron_hds.training import pretrain, trainer
from megatron_hds.training.metrics import MetricsLogger, encode_record

POINTS = ("cache", "backward", "observe", "shard_write", "tracker", "metrics")


def _crash() -> None:
    sys.stdout.flush()
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _half_written(path: str, data: bytes, suffix: str = "") -> None:
    """What a writer killed half-way leaves: the temporary file, half full, never renamed."""
    with atomic_path(path, suffix=suffix) as tmp:
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        _crash()


def _plant(point: str, occurrence: int) -> None:
    calls = [0]

    def due() -> bool:
        calls[0] += 1
        return calls[0] == occurrence

    if point == "cache":
        save = gpt_dataset._save_atomic

        def save_atomic(path, array):
            if due():
                _half_written(path, array.tobytes(), suffix=".npy")
            save(path, array)

        gpt_dataset._save_atomic = save_atomic
    elif point == "backward":
        forward_backward = trainer.forward_backward

        def forward_backward_then_crash(*args, **kwargs):
            out = forward_backward(*args, **kwargs)
            if due():
                _crash()
            return out

        trainer.forward_backward = forward_backward_then_crash
    elif point == "observe":
        observe = trainer.Trainer.observe

        def crash_then_observe(self, *args, **kwargs):
            if due():
                _crash()
            return observe(self, *args, **kwargs)

        trainer.Trainer.observe = crash_then_observe
    elif point == "shard_write":
        torch_save = store._atomic_torch_save

        def atomic_torch_save(obj, path):
            if due():
                buffer = io.BytesIO()
                torch.save(obj, buffer)
                _half_written(path, buffer.getvalue())
            return torch_save(obj, path)

        store._atomic_torch_save = atomic_torch_save
    elif point == "tracker":
        write_text = store.write_text_atomic

        def write_text_atomic(path, text, durable=False):
            if path == store.tracker_path(os.path.dirname(path)) and due():
                _half_written(path, text.encode())
            return write_text(path, text, durable=durable)

        store.write_text_atomic = write_text_atomic
    elif point == "metrics":
        write = MetricsLogger._write

        def write_half_then_crash(self, record):
            if self._file is not None and due():
                line = encode_record(record) + "\n"
                self._file.write(line[: len(line) // 2])
                self._file.flush()
                _crash()
            return write(self, record)

        MetricsLogger._write = write_half_then_crash
    else:
        raise ValueError(f"unknown crash point {point!r}; known: {POINTS}")


if __name__ == "__main__":
    plan = os.environ.get("MEGATRON_HDS_CRASH")
    if plan:
        point, occurrence = plan.split(":")
        _plant(point, int(occurrence))
    pretrain.main(sys.argv[1:])

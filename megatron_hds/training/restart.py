"""What a restarted run does with the metrics log its killed attempt left: the lines written
after the checkpoint it resumes from (their steps are trained again) are cut off, so that
metrics.jsonl holds every iteration once, as an uninterrupted run would.

A checkpoint records the log's path and size when it was written (:func:`log_position`);
resuming from it cuts the log back to that size. A run that starts at iteration 0 over a
log whose last run has the same configuration (an attempt killed before its first
checkpoint) cuts the log back to where that attempt began. A last line cut short by a
kill is always dropped. Anything else is left alone: a log of another run, or one that
does not end where the checkpoint says it did.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping

from megatron_hds.training.metrics import METRICS_FILENAME, encode_record

logger = logging.getLogger(__name__)


def log_position(path: str | None) -> dict | None:
    """What a checkpoint records of the metrics log: its path and its size now (every record is
    flushed when written, so the size is the end of the last complete line)."""
    if path is None or not os.path.isfile(path):
        return None
    return {"path": os.path.abspath(path), "bytes": os.path.getsize(path)}


def _start_of_same_run(path: str, config_record: Mapping[str, Any]) -> int | None:
    """Offset of the last config record of ``path`` when it equals ``config_record`` (its time
    aside), else None."""
    wanted = json.loads(encode_record(config_record))
    start, offset = None, 0
    with open(path, "rb") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:  # a line cut by a kill
                record = None
            if isinstance(record, dict) and record.get("kind") == "config":
                same = {k: v for k, v in record.items() if k not in ("kind", "time")} == wanted
                start = offset if same else None
            offset += len(line)
    return start


def _end_of_last_line(path: str) -> int:
    """Size of ``path`` without a last line cut short by a kill (one not ending in a newline)."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        position = end
        while position > 0:
            step = min(position, 1 << 16)
            f.seek(position - step)
            block = f.read(step)
            newline = block.rfind(b"\n")
            if newline >= 0:
                return position - step + newline + 1
            position -= step
    return 0


def cut_metrics_log(log_dir: str, iteration: int, resumed_from: dict | None, config_record: Mapping[str, Any]) -> None:
    """Rank 0, before the log in ``log_dir`` is reopened: drop what a killed attempt wrote past
    the point this run starts from, and a last line cut short. ``iteration`` is where the run
    starts, ``resumed_from`` the checkpoint's :func:`log_position` (None for a checkpoint
    without one), ``config_record`` the run's configuration as the log's config record holds it."""
    path = os.path.join(log_dir, METRICS_FILENAME)
    if not os.path.isfile(path):
        return
    size = os.path.getsize(path)
    keep = _end_of_last_line(path)  # a cut line is no record, whoever wrote it
    if iteration > 0 and resumed_from and resumed_from.get("path") == os.path.abspath(path):
        recorded = int(resumed_from["bytes"])
        if recorded > keep:
            logger.warning("%s is shorter (%d complete bytes) than when the checkpoint of iteration %d was "
                           "written (%d); leaving its records as they are", path, keep, iteration, recorded)
        else:
            keep = recorded
    elif iteration == 0:
        start = _start_of_same_run(path, config_record)
        if start is not None:
            keep = min(keep, start)
    if keep == size:
        return
    with open(path, "rb+") as f:
        if keep > 0:
            f.seek(keep - 1)
            if f.read(1) != b"\n":
                logger.warning("%s does not end a line at byte %d, where the checkpoint of iteration %d says it "
                               "did; leaving it as it is", path, keep, iteration)
                return
        f.truncate(keep)
        os.fsync(f.fileno())
    logger.info("%s: dropped %d bytes written after iteration %d by an attempt that did not finish",
                path, size - keep, iteration)

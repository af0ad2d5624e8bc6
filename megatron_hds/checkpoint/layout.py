"""Where a checkpoint lives on disk, in Megatron's legacy layout:
``<save>/iter_XXXXXXX/mp_rank_XX[_XXX]/model_optim_rng.pt`` and ``<save>/latest_checkpointed_iteration.txt``."""

from __future__ import annotations

import logging
import os
import re

logger = logging.getLogger(__name__)

TRACKER_FILENAME = "latest_checkpointed_iteration.txt"
MODEL_FILENAME = "model_optim_rng.pt"
CHECKSUMS_FILENAME = "checksums.json"  # per committed checkpoint: every file's size and sha256
SHARD_CHECKSUM_FILENAME = "checksum.json"  # per shard, while the save is in progress
TMP_PREFIX = ".tmp_iter_"
STALE_PREFIX = ".stale_iter_"
ITER_DIR_RE = re.compile(r"^iter_(\d{7,})$")
SHARD_DIR_RE = re.compile(r"^mp_rank_(\d{2,})(?:_(\d{3,}))?$")  # (tp rank, pp rank or None when PP == 1)


def iteration_dirname(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def shard_dirname(tp_rank: int, pp_rank: int, pp_size: int) -> str:
    """Megatron's name: ``mp_rank_{tp:02d}`` when PP == 1, ``mp_rank_{tp:02d}_{pp:03d}`` otherwise."""
    if pp_size == 1:
        return f"mp_rank_{tp_rank:02d}"
    return f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"


def checkpoint_dir(save_dir: str, iteration: int) -> str:
    return os.path.join(save_dir, iteration_dirname(iteration))


def checkpoint_path(save_dir: str, iteration: int, tp_rank: int, pp_rank: int, pp_size: int) -> str:
    """Path of one shard's file inside a committed checkpoint."""
    return os.path.join(checkpoint_dir(save_dir, iteration), shard_dirname(tp_rank, pp_rank, pp_size), MODEL_FILENAME)


def tracker_path(save_dir: str) -> str:
    return os.path.join(save_dir, TRACKER_FILENAME)


def tmp_dir(save_dir: str, iteration: int) -> str:
    return os.path.join(save_dir, f"{TMP_PREFIX}{iteration:07d}")


def find_latest_iteration(load_dir: str) -> int | None:
    """The iteration named by ``latest_checkpointed_iteration.txt``, or None when there is none."""
    path = tracker_path(load_dir)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except FileNotFoundError:
        if os.path.isdir(load_dir):
            found = list_iterations(load_dir)
            if found:
                logger.warning(
                    "%s has checkpoint directories for iterations %s but no %s; treating it as empty",
                    load_dir,
                    found,
                    TRACKER_FILENAME,
                )
        return None
    try:
        iteration = int(text)
    except ValueError:
        raise ValueError(f"{path} should hold an iteration number, found {text!r}") from None
    if iteration < 0:
        raise ValueError(f"{path} holds a negative iteration {iteration}")
    return iteration


def list_iterations(save_dir: str) -> list[int]:
    """Iterations of the committed ``iter_*`` directories under save_dir, ascending."""
    if not os.path.isdir(save_dir):
        return []
    out = []
    for name in os.listdir(save_dir):
        m = ITER_DIR_RE.match(name)
        if m and os.path.isdir(os.path.join(save_dir, name)):
            out.append(int(m.group(1)))
    return sorted(out)


def layout_from_shard_names(names) -> tuple[int, int] | None:
    """(tp_size, pp_size) implied by a checkpoint's ``mp_rank_*`` directory names (the
    highest ranks present); None when there are none."""
    matches = [m for m in map(SHARD_DIR_RE.match, names) if m]
    if not matches:
        return None
    tp_size = max(int(m.group(1)) for m in matches) + 1
    pp_size = max((int(m.group(2)) for m in matches if m.group(2) is not None), default=0) + 1
    return tp_size, pp_size

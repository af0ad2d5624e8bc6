"""Checkpoints in Megatron's legacy layout (``iter_XXXXXXX/mp_rank_XX[_XXX]/model_optim_rng.pt``),
written so that a crash or a failed write mid-save never damages the last good checkpoint,
each with the sizes and checksums of its files so that a damaged one is told from an intact
one. Where files live is checkpoint/layout.py, their checksums checkpoint/integrity.py, the RNG
states checkpoint/rng.py.

The module knows neither the model nor the parallel layout's internals: callers pass their
rank coordinates, a barrier (or an ``agree`` collective) and process groups.

Save protocol (every rank calls :func:`save_checkpoint` with the same iteration):

1. global rank 0 removes leftovers of crashed saves (``.tmp_iter_*``, ``.stale_iter_*``,
   temporaries of ``latest_checkpointed_iteration.txt``) and creates
   ``<save>/.tmp_iter_XXXXXXX``; sync;
2. ranks with ``dp_rank == 0`` write their (tp, pp) shard into the temporary directory
   (temp file + fsync + ``os.replace``), hashing it as it is written, and a small
   ``checksum.json`` beside it; sync;
3. global rank 0 gathers the shards' checksums into ``checksums.json`` (refusing to commit
   if a shard is missing), renames the temporary directory to ``iter_XXXXXXX`` (moving a
   complete directory of the same iteration aside first), then atomically rewrites
   ``latest_checkpointed_iteration.txt``, then applies ``keep_last_n``; sync.

A crash before step 3's rename leaves only a ``.tmp_iter_*`` directory, which loading
ignores and the next save deletes; ``latest`` still names the previous checkpoint. A
write that fails (a full disk) is agreed over the ranks when ``agree`` is given: every
rank raises :class:`CheckpointSaveError`, rank 0 removes the partial save, and ``latest``
and the previous checkpoint are untouched.

Loading checks the recorded sizes of every file and the checksum of the shard it reads;
a damaged checkpoint raises :class:`CheckpointDamagedError`, naming what is wrong and the
newest intact checkpoint. All ranks must see the same ``save_dir`` (a shared filesystem on
multi-node runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from megatron_hds.atomic_io import atomic_path, fsync_dir, remove_stale_temporaries, write_text_atomic
from megatron_hds.checkpoint.integrity import (
    CheckpointDamagedError,
    HashingWriter,
    file_problems,
    newest_intact_iteration,
    read_checksums,
)
from megatron_hds.checkpoint.layout import (
    CHECKSUMS_FILENAME,
    MODEL_FILENAME,
    SHARD_CHECKSUM_FILENAME,
    SHARD_DIR_RE,
    STALE_PREFIX,
    TMP_PREFIX,
    checkpoint_dir,
    checkpoint_path,
    find_latest_iteration,
    layout_from_shard_names,
    list_iterations,
    shard_dirname,
    tmp_dir,
    tracker_path,
)
from megatron_hds.checkpoint.rng import capture_rng_state

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 3.0

# Top-level keys this module owns; ``extra`` may not overwrite them.
RESERVED_KEYS = frozenset(
    {
        "args",
        "checkpoint_version",
        "iteration",
        "model",
        "optimizer",
        "opt_param_scheduler",
        "rng_state",
        "data_sampler",
        "mixture_scheduler",
        "parallel",
    }
)

class CheckpointSaveError(RuntimeError):
    """A save that could not be completed; the previous checkpoint and ``latest`` are untouched."""


# --------------------------------------------------------------------------- saving


def _to_cpu(obj: Any) -> Any:
    """Tensors moved to CPU (detached) inside nested dicts/lists/tuples."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        out = {k: _to_cpu(v) for k, v in obj.items()}
        if type(obj) is OrderedDict:
            out = OrderedDict(out)
            # Module.state_dict() carries per-module versions here; load_state_dict reads them.
            if hasattr(obj, "_metadata"):
                out._metadata = obj._metadata
        return out
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_to_cpu(v) for v in obj)
    return obj


def _state_of(obj: Any) -> Any:
    """A state dict: objects with ``state_dict()`` are asked for theirs, anything else is kept."""
    if obj is None:
        return None
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        obj = obj.state_dict()
    return _to_cpu(obj)


def _plain_args(args: Any) -> dict:
    if args is None:
        return {}
    if dataclasses.is_dataclass(args) and not isinstance(args, type):
        return dataclasses.asdict(args)
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, Mapping):
        return dict(args)
    raise TypeError(f"args must be a dataclass, argparse.Namespace, mapping or None, got {type(args).__name__}")


def _atomic_torch_save(obj: Any, path: str) -> dict:
    """torch.save to ``path`` atomically and durably; returns the file's size and sha256."""
    with atomic_path(path, durable=True) as tmp, open(tmp, "wb") as f:
        writer = HashingWriter(f)
        try:
            torch.save(obj, writer)
        except Exception:
            if writer.error is not None:
                raise writer.error from None
            raise
    return {"bytes": writer.bytes, "sha256": writer.sha256.hexdigest()}


def _default_barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _remove_leftovers(save_dir: str) -> None:
    """Delete what earlier, interrupted saves left: temporary and moved-aside directories, and
    temporaries of the tracker file (the save directory belongs to one run, so all are stale)."""
    for name in os.listdir(save_dir):
        if name.startswith((TMP_PREFIX, STALE_PREFIX)):
            path = os.path.join(save_dir, name)
            logger.info("removing %s left by an interrupted save", path)
            shutil.rmtree(path, ignore_errors=True)
    for path in remove_stale_temporaries(tracker_path(save_dir)):
        logger.info("removed %s left by an interrupted save", path)


def _prepare(save_dir: str, iteration: int) -> str:
    """Rank 0, before anyone writes: a fresh, empty temporary directory for this save."""
    os.makedirs(save_dir, exist_ok=True)
    _remove_leftovers(save_dir)
    tmp = tmp_dir(save_dir, iteration)
    os.makedirs(tmp)
    return tmp


def _write_shard(save_dir: str, iteration: int, state: dict, tp_rank: int, pp_rank: int, pp_size: int) -> str:
    """One (tp, pp) shard into the temporary directory, with its checksum beside it; returns
    the file's path."""
    shard_dir = os.path.join(tmp_dir(save_dir, iteration), shard_dirname(tp_rank, pp_rank, pp_size))
    os.makedirs(shard_dir, exist_ok=True)
    path = os.path.join(shard_dir, MODEL_FILENAME)
    record = _atomic_torch_save(state, path)
    write_text_atomic(os.path.join(shard_dir, SHARD_CHECKSUM_FILENAME), json.dumps(record) + "\n", durable=True)
    return path


def _gather_checksums(tmp: str, iteration: int, tp_size: int, pp_size: int) -> dict:
    """checksums.json's content from every shard's checksum.json; refuses a save that lacks
    a shard (a writer that failed), so that ``latest`` never names an incomplete checkpoint."""
    files, missing = {}, []
    for pp_rank in range(pp_size):
        for tp_rank in range(tp_size):
            shard = shard_dirname(tp_rank, pp_rank, pp_size)
            try:
                with open(os.path.join(tmp, shard, SHARD_CHECKSUM_FILENAME), encoding="utf-8") as f:
                    files[f"{shard}/{MODEL_FILENAME}"] = json.load(f)
            except (OSError, ValueError):
                missing.append(shard)
    if missing:
        raise CheckpointSaveError(f"checkpoint iteration {iteration}: shards {missing} of a TP={tp_size}/PP={pp_size} "
                                  f"checkpoint were not written to {tmp}; not committing it")
    return {"iteration": iteration, "tp_size": tp_size, "pp_size": pp_size, "files": files}


def _commit(save_dir: str, iteration: int, tp_size: int = 1, pp_size: int = 1) -> str:
    """Rank 0, after every shard is written: record the checksums, rename into place, then point
    ``latest`` at it. A failure leaves ``latest`` and the previous checkpoint as they were."""
    tmp = tmp_dir(save_dir, iteration)
    if not os.path.isdir(tmp):
        raise FileNotFoundError(f"cannot commit checkpoint iteration {iteration}: {tmp} does not exist")
    record = _gather_checksums(tmp, iteration, tp_size, pp_size)
    write_text_atomic(os.path.join(tmp, CHECKSUMS_FILENAME), json.dumps(record, indent=1) + "\n", durable=True)
    for name in record["files"]:
        os.remove(os.path.join(tmp, os.path.dirname(name), SHARD_CHECKSUM_FILENAME))
    final = checkpoint_dir(save_dir, iteration)
    stale = None
    if os.path.exists(final):
        # A directory cannot be renamed over a non-empty one; the old copy goes aside and
        # is deleted only once the new one is in place.
        stale = os.path.join(save_dir, f"{STALE_PREFIX}{iteration:07d}")
        logger.warning("%s already exists; replacing it with the new save", final)
        if os.path.exists(stale):
            shutil.rmtree(stale)
        os.replace(final, stale)
    os.replace(tmp, final)
    fsync_dir(save_dir)
    try:
        write_text_atomic(tracker_path(save_dir), f"{iteration}\n", durable=True)
    except BaseException:
        # ``latest`` still names the previous checkpoint: put everything back as it was.
        os.replace(final, tmp)
        if stale is not None:
            os.replace(stale, final)
        raise
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _apply_retention(save_dir: str, iteration: int, keep_last_n: int) -> list[int]:
    """Delete committed checkpoints older than the newest ``keep_last_n`` (this one included).
    Directories with a higher iteration than the one just saved (an abandoned run's future)
    are left alone."""
    older = [it for it in list_iterations(save_dir) if it < iteration]
    newer = [it for it in list_iterations(save_dir) if it > iteration]
    if newer:
        logger.warning(
            "%s holds checkpoints %s newer than the one just saved (%d); retention leaves them",
            save_dir,
            newer,
            iteration,
        )
    doomed = older[: max(0, len(older) - (keep_last_n - 1))]
    for it in doomed:
        path = checkpoint_dir(save_dir, it)
        logger.info("keep_last_n=%d: removing %s", keep_last_n, path)
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def _check_coords(tp_rank: int, pp_rank: int, dp_rank: int, tp_size: int, pp_size: int, dp_size: int) -> None:
    for name, r, n in (("tp", tp_rank, tp_size), ("pp", pp_rank, pp_size), ("dp", dp_rank, dp_size)):
        if n < 1 or not 0 <= r < n:
            raise ValueError(f"invalid {name} coordinates: {name}_rank={r}, {name}_size={n}")


def _check_save_arguments(iteration: int, keep_last_n: int | None, extra: Mapping[str, Any] | None) -> None:
    if not isinstance(iteration, int) or iteration < 0:
        raise ValueError(f"iteration must be a non-negative int, got {iteration!r}")
    if keep_last_n is not None and (not isinstance(keep_last_n, int) or keep_last_n < 1):
        raise ValueError(f"keep_last_n must be None (keep all) or an int >= 1, got {keep_last_n!r}")
    clash = sorted(RESERVED_KEYS.intersection(extra or {}))
    if clash:
        raise ValueError(f"extra checkpoint entries {clash} collide with reserved keys {sorted(RESERVED_KEYS)}")


def _save_failed(save_dir: str, iteration: int, what: str, error: BaseException | None) -> CheckpointSaveError:
    cause = f"{type(error).__name__}: {error}" if error is not None else "another rank failed (see its error)"
    try:
        previous = find_latest_iteration(save_dir)
    except (OSError, ValueError):
        previous = None
    kept = (f"{tracker_path(save_dir)} still names iteration {previous}, which is untouched"
            if previous is not None else f"No earlier checkpoint is named by {tracker_path(save_dir)}")
    return CheckpointSaveError(f"could not save checkpoint iteration {iteration} to {save_dir} ({what}): {cause}. "
                               f"{kept}; the partial save was removed")


def save_checkpoint(
    save_dir: str,
    iteration: int,
    *,
    model: Any,
    optimizer: Any = None,
    opt_param_scheduler: Any = None,
    data_sampler: Any = None,
    mixture_scheduler: Any = None,
    args: Any = None,
    rng_tracker_states: Any = None,
    extra: Mapping[str, Any] | None = None,
    tp_rank: int = 0, pp_rank: int = 0, dp_rank: int = 0,
    tp_size: int = 1, pp_size: int = 1, dp_size: int = 1,
    rank: int = 0,
    barrier: Callable[[], None] | None = None,
    agree: Callable[[bool], bool] | None = None,
    keep_last_n: int | None = None,
) -> str:
    """Save one checkpoint; every rank calls this with the same ``iteration``.

    ``model``, ``optimizer``, ``opt_param_scheduler``, ``data_sampler`` and
    ``mixture_scheduler`` are state dicts or objects with ``state_dict()``; tensors are
    moved to CPU. ``rank`` is the global rank (rank 0 commits); only ``dp_rank == 0``
    writes its (tp, pp) shard. ``agree(failed)`` is a collective returning True on every
    rank when ``failed`` is True on any (an all-reduce MAX): with it, a write that fails
    on one rank (a full disk) makes every rank raise :class:`CheckpointSaveError` after
    rank 0 removed the partial save. Without it, ``barrier`` synchronises the ranks
    (default ``dist.barrier()`` when a process group is initialised, else nothing) and
    only the failing rank, and rank 0 when it refuses to commit, raise. Returns the
    committed ``iter_XXXXXXX`` directory.
    """
    _check_save_arguments(iteration, keep_last_n, extra)
    _check_coords(tp_rank, pp_rank, dp_rank, tp_size, pp_size, dp_size)
    sync = _SaveSync(rank, iteration, barrier or _default_barrier, agree)
    start = time.perf_counter()

    error = sync.attempt(lambda: _prepare(save_dir, iteration)) if rank == 0 else None
    if sync.failed_anywhere(error):
        raise _save_failed(save_dir, iteration, "preparing its directory", error) from error

    state = {
        "args": _plain_args(args),
        "checkpoint_version": CHECKPOINT_VERSION,
        "iteration": iteration,
        "parallel": {"tp_size": tp_size, "pp_size": pp_size, "dp_size": dp_size, "tp_rank": tp_rank,
                     "pp_rank": pp_rank},
        "model": model, "optimizer": optimizer, "opt_param_scheduler": opt_param_scheduler,
        "data_sampler": data_sampler, "mixture_scheduler": mixture_scheduler,
    }

    def write() -> None:
        shard = {key: value if key in ("args", "checkpoint_version", "iteration", "parallel") else _state_of(value)
                 for key, value in state.items()}
        shard["rng_state"] = _to_cpu(capture_rng_state(rng_tracker_states))
        shard.update({key: _to_cpu(value) for key, value in (extra or {}).items()})
        _write_shard(save_dir, iteration, shard, tp_rank, pp_rank, pp_size)

    error = sync.attempt(write) if dp_rank == 0 else None
    if sync.failed_anywhere(error):
        if rank == 0:
            shutil.rmtree(tmp_dir(save_dir, iteration), ignore_errors=True)
        raise _save_failed(save_dir, iteration, "writing the shards", error) from error

    error = None
    if rank == 0:
        error = sync.attempt(lambda: _commit(save_dir, iteration, tp_size, pp_size))
        if error is not None:
            shutil.rmtree(tmp_dir(save_dir, iteration), ignore_errors=True)
        elif keep_last_n is not None:
            _apply_retention(save_dir, iteration, keep_last_n)
    if sync.failed_anywhere(error):
        raise _save_failed(save_dir, iteration, "committing it", error) from error
    final = checkpoint_dir(save_dir, iteration)
    if rank == 0:
        logger.info("saved checkpoint iteration %d to %s in %.2fs", iteration, final, time.perf_counter() - start)
    return final


class _SaveSync:
    """How the ranks of a save learn of a failure on any of them: ``agree`` (an all-reduce MAX)
    when given, else a barrier after which only the failing rank knows."""

    def __init__(self, rank: int, iteration: int, barrier: Callable[[], None], agree: Callable[[bool], bool] | None):
        self.rank, self.iteration, self.barrier, self.agree = rank, iteration, barrier, agree

    def attempt(self, step: Callable[[], Any]) -> BaseException | None:
        """Run one part of the save; its error (logged), or None."""
        try:
            step()
        except Exception as error:  # noqa: BLE001 - reported to every rank, then raised
            logger.error("rank %d: checkpoint iteration %d failed: %s: %s", self.rank, self.iteration,
                         type(error).__name__, error)
            return error
        return None

    def failed_anywhere(self, error: BaseException | None) -> bool:
        if self.agree is not None:
            return bool(self.agree(error is not None))
        self.barrier()
        return error is not None


# --------------------------------------------------------------------------- loading


def _read_parallel_sizes(state: Mapping) -> tuple[int, int] | None:
    """(tp_size, pp_size) recorded in a checkpoint dict: ours under ``parallel``, a
    Megatron-LM file's in its args; None when neither says."""
    parallel = state.get("parallel")
    if parallel is not None:
        return int(parallel["tp_size"]), int(parallel["pp_size"])
    saved_args = state.get("args") or {}
    if isinstance(saved_args, argparse.Namespace):
        saved_args = vars(saved_args)
    if "tensor_model_parallel_size" in saved_args or "pipeline_model_parallel_size" in saved_args:
        return (
            int(saved_args.get("tensor_model_parallel_size", 1)),
            int(saved_args.get("pipeline_model_parallel_size", 1)),
        )
    return None


def _saved_layout(iter_dir: str) -> tuple[int, int] | None:
    """(tp_size, pp_size) of a checkpoint directory whose shard we could not find: read from
    another shard's file (memory-mapped, so tensors are not read), else implied by the
    shard directory names; None when the directory has no shards."""
    names = sorted(n for n in os.listdir(iter_dir) if SHARD_DIR_RE.match(n))
    for name in names:
        path = os.path.join(iter_dir, name, MODEL_FILENAME)
        try:
            sizes = _read_parallel_sizes(torch.load(path, map_location="cpu", weights_only=False, mmap=True))
        except Exception:  # an unreadable neighbour only costs us the better message
            continue
        if sizes is not None:
            return sizes
    return layout_from_shard_names(names)


def _layout_mismatch(path: str, saved: tuple[int, int], current: tuple[int, int]) -> ValueError:
    diffs = [
        f"{name} saved {s} vs current {c}" for name, s, c in zip(("TP size", "PP size"), saved, current) if s != c
    ]
    return ValueError(
        f"checkpoint {path} was saved with tensor/pipeline parallel sizes TP={saved[0]}, PP={saved[1]} "
        f"but this run uses TP={current[0]}, PP={current[1]} ({'; '.join(diffs)}). Resume with the same "
        "TP and PP sizes (the data-parallel size may differ) or convert the checkpoint first."
    )


def _damaged(load_dir: str, iteration: int, problems: list[str]) -> CheckpointDamagedError:
    iter_dir = checkpoint_dir(load_dir, iteration)
    newest, verified = newest_intact_iteration(load_dir, below=iteration)
    if newest is None:
        advice = f"no older intact checkpoint is left in {load_dir}"
    else:
        note = "" if verified else " (saved without checksums, so not verified)"
        advice = (f"the newest intact checkpoint is iteration {newest}{note}, {checkpoint_dir(load_dir, newest)}: "
                  f"to resume from it, move {iter_dir} aside and write {newest} into {tracker_path(load_dir)}")
    return CheckpointDamagedError(f"checkpoint iteration {iteration} in {load_dir} is damaged: "
                                  f"{'; '.join(problems)}. {advice[0].upper()}{advice[1:]}")


def load_checkpoint(
    load_dir: str,
    tp_rank: int,
    pp_rank: int,
    tp_size: int,
    pp_size: int,
    iteration: int | None = None,
) -> dict:
    """Read this (tp, pp) shard of the latest (or the given) checkpoint to CPU and return its
    dict. Refuses a checkpoint saved with other TP/PP sizes; the DP size may differ.
    Refuses a damaged one (:class:`CheckpointDamagedError`, naming the newest intact one):
    every recorded file must have its saved size, and this shard its saved checksum.
    Files are unpickled (``weights_only=False``): load only checkpoints you trust."""
    if iteration is None:
        iteration = find_latest_iteration(load_dir)
        if iteration is None:
            raise FileNotFoundError(f"no checkpoint to load in {load_dir}: {tracker_path(load_dir)} does not exist")
    iter_dir = checkpoint_dir(load_dir, iteration)
    if not os.path.isdir(iter_dir):
        if os.path.exists(tmp_dir(load_dir, iteration)) or list_iterations(load_dir):
            raise _damaged(load_dir, iteration, [f"its directory {iter_dir} does not exist"])
        raise FileNotFoundError(
            f"checkpoint directory {iter_dir} for iteration {iteration} does not exist "
            f"(committed iterations in {load_dir}: {list_iterations(load_dir)})"
        )
    path = checkpoint_path(load_dir, iteration, tp_rank, pp_rank, pp_size)
    try:
        record = read_checksums(iter_dir)
    except CheckpointDamagedError as error:
        raise _damaged(load_dir, iteration, [str(error)]) from None
    saved = (int(record["tp_size"]), int(record["pp_size"])) if record is not None else None
    if saved is None and not os.path.isfile(path):
        saved = _saved_layout(iter_dir)
    if saved is not None and saved != (tp_size, pp_size):
        raise _layout_mismatch(iter_dir, saved, (tp_size, pp_size))
    own = os.path.relpath(path, iter_dir).replace(os.sep, "/")
    if record is not None:
        problems = file_problems(iter_dir, record, lambda name: name == own)
        if own not in record["files"]:
            problems.insert(0, f"{own} is not among the files it records")
        if problems:
            raise _damaged(load_dir, iteration, problems)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"checkpoint shard {path} (tp_rank={tp_rank}, pp_rank={pp_rank}) does not exist; "
            f"{iter_dir} holds {sorted(os.listdir(iter_dir))}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a zip/pickle error deep in torch says nothing about which file
        raise _damaged(load_dir, iteration, [f"{own} cannot be read ({type(error).__name__}: {error})"]) from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a checkpoint dict (found {type(state).__name__})")
    saved = _read_parallel_sizes(state)
    if saved is None:
        raise ValueError(f"{path} does not record its TP/PP sizes (no 'parallel' entry, no parallel sizes in args)")
    if saved != (tp_size, pp_size):
        raise _layout_mismatch(path, saved, (tp_size, pp_size))
    if state.get("iteration") != iteration:
        raise ValueError(f"{path} holds iteration {state.get('iteration')!r}, expected {iteration}")
    logger.info("loaded checkpoint %s (iteration %d)", path, iteration)
    return state

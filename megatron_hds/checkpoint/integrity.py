"""Checkpoint integrity: every committed checkpoint records each file's size and sha256
(checksums.json), so that a damaged checkpoint is told from an intact one; the writer that hashes a
shard as it is written; the newest intact checkpoint when the latest is damaged."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable

from megatron_hds.checkpoint.layout import CHECKSUMS_FILENAME, checkpoint_dir, list_iterations

_HASH_CHUNK = 16 << 20


class CheckpointDamagedError(RuntimeError):
    """A committed checkpoint whose files are missing, truncated or do not match their checksums."""


class HashingWriter:
    """A binary file that hashes what is written through it (torch.save writes sequentially).
    It keeps the file's own error (a full disk): torch.save reports it as a bare stream error."""

    def __init__(self, file):
        self.file = file
        self.sha256 = hashlib.sha256()
        self.bytes = 0
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            written = self.file.write(data)
        except OSError as error:
            self.error = error
            raise
        self.sha256.update(data)
        self.bytes += len(data)
        return written

    def flush(self) -> None:
        self.file.flush()


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checksums(iter_dir: str) -> dict | None:
    """The checksums.json of a committed checkpoint; None for one saved without it (older
    versions, Megatron-LM). An unreadable record is damage."""
    path = os.path.join(iter_dir, CHECKSUMS_FILENAME)
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise CheckpointDamagedError(f"{path} cannot be read: {error}") from None
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        raise CheckpointDamagedError(f"{path} does not list the checkpoint's files")
    return record


def file_problems(iter_dir: str, record: dict, hashed: Callable[[str], bool]) -> list[str]:
    """What is wrong with the files ``record`` lists: missing, of another size, or (for the
    files ``hashed`` selects) of another content."""
    problems = []
    for name, expected in sorted(record["files"].items()):
        path = os.path.join(iter_dir, name)
        try:
            size = os.path.getsize(path)
        except OSError:
            problems.append(f"{name} is missing")
            continue
        if size != expected["bytes"]:
            how = "truncated" if size < expected["bytes"] else "grown"
            problems.append(f"{name} is {size} bytes but was saved with {expected['bytes']} ({how})")
        elif hashed(name) and file_sha256(path) != expected["sha256"]:
            problems.append(f"{name} does not match its recorded sha256 (corrupted)")
    return problems


def verify_checkpoint(load_dir: str, iteration: int) -> list[str] | None:
    """What is wrong with a committed checkpoint (every file's size and checksum): [] when it is
    intact, None when it cannot be told (saved without checksums.json)."""
    iter_dir = checkpoint_dir(load_dir, iteration)
    if not os.path.isdir(iter_dir):
        return [f"{iter_dir} does not exist"]
    try:
        record = read_checksums(iter_dir)
    except CheckpointDamagedError as error:
        return [str(error)]
    if record is None:
        return None
    return file_problems(iter_dir, record, lambda name: True)


def newest_intact_iteration(load_dir: str, below: int | None = None) -> tuple[int | None, bool]:
    """(the newest committed iteration under load_dir, below ``below``, whose files are intact,
    whether it could be verified); (None, False) when there is none. A checkpoint saved
    without checksums counts as intact but unverified."""
    for iteration in reversed(list_iterations(load_dir)):
        if below is not None and iteration >= below:
            continue
        problems = verify_checkpoint(load_dir, iteration)
        if not problems:
            return iteration, problems is not None
    return None, False

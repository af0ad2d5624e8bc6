"""Atomic file writes: a file appears under its final name only once complete.

Everything the project writes for others to read (datasets' sidecars, index caches,
manifests, tokenizer models, checkpoints) goes through ``atomic_path``: the content is
written to a unique temporary name in the same directory and renamed over the target
(atomic on POSIX), and the temporary file is removed if writing fails.
"""

from __future__ import annotations

import os
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

# Temporary names are "<target>.tmp-<pid>-<random>[suffix]"; a writer killed with SIGKILL
# never reaches its clean-up, so its temporary stays until remove_stale_temporaries.
_TMP_MARK = ".tmp-"


def fsync_dir(path: str) -> None:
    """Make a rename in directory `path` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str, suffix: str = "", durable: bool = False) -> Iterator[str]:
    """Yield a temporary path to write; on success it replaces `path`.

    ``suffix`` is appended to the temporary name for writers that insist on an
    extension (np.save adds ``.npy`` otherwise). ``durable`` fsyncs the file and its
    directory, for checkpoints that must survive a machine crash.
    """
    tmp = f"{path}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(os.path.dirname(os.path.abspath(path)))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes_atomic(path: str, data: bytes, durable: bool = False) -> None:
    with atomic_path(path, durable=durable) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text_atomic(path: str, text: str, durable: bool = False) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), durable=durable)


def remove_stale_temporaries(path: str, older_than_s: float | None = None) -> list[str]:
    """Delete the temporaries that killed writers of ``path`` left behind; returns their paths.

    ``older_than_s``: only those not modified for that long, where another process may be
    writing ``path`` right now (a cache directory shared by jobs): a live writer keeps
    its temporary fresh, and it exists only while one file is being written.
    """
    directory, name = os.path.split(os.path.abspath(path))
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    removed = []
    for entry in names:
        if not entry.startswith(name + _TMP_MARK):
            continue
        tmp = os.path.join(directory, entry)
        try:
            if older_than_s is not None and time.time() - os.path.getmtime(tmp) < older_than_s:
                continue
            os.remove(tmp)
        except FileNotFoundError:  # its writer finished (or another cleaner came first)
            continue
        removed.append(tmp)
    return removed

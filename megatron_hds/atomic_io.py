"""Atomic file writes: a file appears under its final name only once complete.

Everything the project writes for others to read (datasets' sidecars, index caches,
manifests, tokenizer models, checkpoints) goes through ``atomic_path``: the content is
written to a unique temporary name in the same directory and renamed over the target
(atomic on POSIX), and the temporary file is removed if writing fails.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

# Temporary names are "<target>.tmp-<host>-<pid>-<random>[suffix]"; a writer killed with
# SIGKILL never reaches its clean-up, so its temporary stays until remove_stale_temporaries.
_TMP_MARK = ".tmp-"
_HOST = socket.gethostname().replace("/", "_")


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
    tmp = f"{path}{_TMP_MARK}{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"
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


def _writer_is_gone(name: str) -> bool:
    """Whether the temporary ``name`` (after its ".tmp-") was written on this host by a process
    that no longer exists."""
    try:
        host, pid = name.rsplit("-", 2)[:2]
        pid = int(pid)
    except ValueError:
        return False
    if host != _HOST:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_stale_temporaries(*paths: str, older_than_s: float | None = None) -> list[str]:
    """Delete the temporaries that killed writers of ``paths`` left behind; returns their paths.

    ``older_than_s`` None: every temporary is stale (a directory that only this process
    writes). Otherwise, where other processes may be writing the same files right now (a
    cache directory that jobs share), only those of a writer that is gone: one on this host
    whose process no longer exists, or one not modified for ``older_than_s`` seconds (a live
    writer keeps its temporary fresh, and it exists only while one file is being written).
    """
    removed = []
    by_directory: dict[str, set[str]] = {}
    for path in paths:
        directory, name = os.path.split(os.path.abspath(path))
        by_directory.setdefault(directory, set()).add(name + _TMP_MARK)
    for directory, marks in by_directory.items():
        try:
            entries = os.listdir(directory)
        except FileNotFoundError:
            continue
        for entry in entries:
            mark = next((m for m in marks if entry.startswith(m)), None)
            if mark is None:
                continue
            tmp = os.path.join(directory, entry)
            try:
                stale = older_than_s is None or _writer_is_gone(entry[len(mark):]) or \
                    time.time() - os.path.getmtime(tmp) >= older_than_s
                if not stale:
                    continue
                os.remove(tmp)
            except FileNotFoundError:  # its writer finished (or another cleaner came first)
                continue
            removed.append(tmp)
    return removed

"""The one multi-process test helper: spawn N ranks (gloo on CPU, or nccl on GPUs), always tear down.

``run_distributed(fn, world_size, *args)`` runs ``fn(*args)`` on each rank with the
default process group initialised (gloo by default, free localhost port; with
backend="nccl" rank r uses GPU r). Output is tagged
``[rank N]``; a rank's exception fails the test with the tracebacks of every failed rank;
a hung rank fails the test after `timeout` seconds instead of hanging pytest. The
return value is the list of each rank's return value (which must be picklable).
``fn`` must be a module-level function so spawned processes can import it.
"""
from __future__ import annotations

import pickle
import queue
import socket
import sys
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _RankTagged:
    """Prefix each output line with the rank so interleaved logs stay readable."""

    def __init__(self, stream, rank: int):
        self.stream, self.prefix, self.at_line_start = stream, f"[rank {rank}] ", True

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            if self.at_line_start:
                self.stream.write(self.prefix)
            self.stream.write(piece)
            self.at_line_start = piece.endswith("\n")
        return len(text)

    def flush(self):
        self.stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding... of the real stream
        return getattr(self.stream, name)


def _worker(rank: int, world_size: int, port: int, backend: str, results, fn, args) -> None:
    sys.stdout, sys.stderr = _RankTagged(sys.stdout, rank), _RankTagged(sys.stderr, rank)
    # Ranks share 2 cores: one intra-op thread each avoids oversubscription stalls.
    torch.set_num_threads(1)
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
        # Pickled by value here: a tensor put on the queue as is travels as a shared-memory file
        # descriptor that the parent can only open while this process is alive, and ranks exit
        # right after (seen as "Connection reset by peer" under load).
        results.put((rank, True, pickle.dumps(fn(*args))))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(fn, world_size: int, *args, backend: str = "gloo", timeout: float = 240.0):
    """Run fn(*args) on `world_size` ranks; return the per-rank results in rank order."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(rank, world_size, port, backend, results, fn, args), daemon=True)
             for rank in range(world_size)]
    for p in procs:
        p.start()
    outcome, failures = {}, []
    try:
        wait = timeout
        for _ in range(world_size):
            rank, ok, value = results.get(timeout=wait)
            if ok:
                outcome[rank] = pickle.loads(value)
            else:
                failures.append((rank, value))
                # Peers blocked in a collective with the failed rank may fail soon after (or hang):
                # give them a moment so every traceback is reported, then stop waiting.
                wait = 3.0
    except queue.Empty:
        if not failures:
            failures.append((-1, f"timed out after {timeout}s; finished ranks: {sorted(outcome)}"))
    finally:
        for p in procs:
            p.join(timeout=5 if not failures else 0.5)
            if p.is_alive():
                p.kill()
                p.join()
    if failures:
        raise AssertionError("\n".join(f"rank {rank} failed:\n{text}" for rank, text in sorted(failures)))
    return [outcome[r] for r in range(world_size)]

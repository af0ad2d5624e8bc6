"""Start the ranks of a real training command as separate processes, with the environment torchrun
gives its workers (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT on the
loopback address), for tests that kill them: all ranks share one process group of their own,
so a test (or a rank) can kill the whole job at once, as a cluster does, without touching
anything else. Each rank's output goes to ``<log_dir>/rank<r>.log``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO_ROOT
from tests.distributed import free_port


class Ranks:
    """The processes of one launch; ``kill()`` SIGKILLs them all (and only them)."""

    def __init__(self, argv: list[str], world_size: int, log_dir: str, env: dict | None = None):
        port = free_port()
        self.log_paths = [os.path.join(log_dir, f"rank{r}.log") for r in range(world_size)]
        self.procs: list[subprocess.Popen] = []
        os.makedirs(log_dir, exist_ok=True)
        for rank in range(world_size):
            rank_env = {**os.environ, **(env or {}), "RANK": str(rank), "LOCAL_RANK": str(rank),
                        "WORLD_SIZE": str(world_size), "LOCAL_WORLD_SIZE": str(world_size),
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo",
                        "OMP_NUM_THREADS": "1"}
            group = {"process_group": 0 if rank == 0 else self.procs[0].pid}
            with open(self.log_paths[rank], "w") as log:
                self.procs.append(subprocess.Popen([sys.executable, *argv], cwd=REPO_ROOT, env=rank_env, stdout=log,
                                                   stderr=subprocess.STDOUT, **group))
        self.pgid = self.procs[0].pid

    def kill(self) -> None:
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for proc in self.procs:
            proc.wait()

    def poll(self) -> list[int | None]:
        return [proc.poll() for proc in self.procs]

    def wait(self, timeout: float) -> list[int]:
        """Every rank's exit status; kills them all and fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"ranks still running after {timeout}s:\n{self.logs()}") from None
        return [proc.returncode for proc in self.procs]

    def log(self, rank: int) -> str:
        with open(self.log_paths[rank], errors="replace") as f:
            return f.read()

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- rank {r} ---\n{self.log(r)[-tail:]}" for r in range(len(self.procs)))

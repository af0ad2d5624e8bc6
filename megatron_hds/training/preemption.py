"""Pre-emption: SIGTERM / SIGUSR1 (SLURM's warning before a time limit or a pre-emption)
recorded by a handler, and agreed across ranks so that every rank saves and exits at the
same iteration."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def agree(flag: bool, group: Any = None, device: torch.device | str = "cpu") -> bool:
    """True on every rank of ``group`` when it is True on any (all-reduce MAX); the flag
    itself when no process group is initialised. Collective: all ranks must call it.
    ``device`` is the one the group's backend reduces on (the parallel state's)."""
    if not (dist.is_available() and dist.is_initialized()):
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item())


class SignalSaveHandler:
    """Records SIGTERM / SIGUSR1 (SLURM pre-emption, ``--signal=USR1@N``) so the training
    loop can save and exit at the next iteration boundary.

    The handler only sets a flag; the loop calls :meth:`should_save_and_exit` each
    iteration, which agrees across ``group`` (all-reduce MAX) when a process group is
    initialised, so every rank saves and exits at the same iteration. ``group`` must span
    every rank that takes part in the save (normally the world). Use as a context manager
    or call :meth:`close` to restore the previous handlers.
    """

    def __init__(self, signals: Iterable[int] = DEFAULT_SIGNALS, group: Any = None,
                 device: torch.device | str = "cpu", install: bool = True):
        self.signals = tuple(signals)
        self.group = group
        self.device = device
        self._received: int | None = None
        self._previous: dict[int, Any] = {}
        if install:
            self.install()

    def install(self) -> "SignalSaveHandler":
        if self._previous:
            return self
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("SignalSaveHandler must be installed from the main thread (Python signal rule)")
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        logger.debug("pre-emption handler installed for %s", [signal.Signals(s).name for s in self.signals])
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        # No I/O or locks here: the interrupted code may hold them.
        if self._received is None:
            self._received = signum

    @property
    def received_signal(self) -> int | None:
        """The first signal received on this rank, or None."""
        return self._received

    def signal_received(self) -> bool:
        """This rank's own flag, without communication."""
        return self._received is not None

    def should_save_and_exit(self, also: bool = False) -> bool:
        """Whether any rank got a signal (or has ``also`` set: another local reason to stop, agreed
        in the same collective). Collective when a process group is initialised: every rank of
        ``group`` must call it at the same iteration."""
        decision = agree(self._received is not None or also, self.group, self.device)
        if decision and self._received is not None:
            logger.warning(
                "received %s: saving a checkpoint and exiting", signal.Signals(self._received).name
            )
        return decision

    def close(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self._previous.clear()

    def __enter__(self) -> "SignalSaveHandler":
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.close()

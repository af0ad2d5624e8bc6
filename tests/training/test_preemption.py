"""The pre-emption handler: a signal is recorded, the previous handlers come back on exit.
(Agreement across ranks is checked in tests/checkpoint/test_store.py's multi-rank spawn.)"""

import os
import signal
import time

from megatron_hds.training import preemption


def test_signal_handler_records_and_restores(monkeypatch):
    seen = []

    def previous(signum, frame):
        seen.append(signum)

    old_usr1 = signal.signal(signal.SIGUSR1, previous)
    old_term = signal.getsignal(signal.SIGTERM)
    try:
        with preemption.SignalSaveHandler() as handler:
            assert not handler.should_save_and_exit()
            os.kill(os.getpid(), signal.SIGUSR1)
            deadline = time.monotonic() + 5
            while not handler.signal_received() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert handler.received_signal == signal.SIGUSR1
            assert handler.should_save_and_exit()
            assert seen == []  # the previous handler is replaced, not called
        assert signal.getsignal(signal.SIGUSR1) is previous
        assert signal.getsignal(signal.SIGTERM) is old_term
    finally:
        signal.signal(signal.SIGUSR1, old_usr1)

"""A background thread that runs jobs one at a time in the order they were submitted: what
ThreadPoolExecutor(max_workers=1) does, at a fraction of its cost per job (a put on a C queue,
no Future), for jobs submitted from inside the training step (the probes' backward hooks)."""

from __future__ import annotations

import queue
import threading
import weakref
from typing import Optional


class OrderedWorker:
    """submit(fn, *args) -> a ticket; wait(ticket) returns once that job (default: every job
    submitted so far) has run, re-raising the first error of a job that failed since the last
    wait. The thread starts with the first job. It is a daemon, but stopped and joined when its
    owner is garbage-collected or at the interpreter's exit (weakref.finalize's atexit hook), so a
    job is never killed halfway through (inside torch)."""

    def __init__(self, name: str, owner: object):
        self.name = name
        self._owner = weakref.ref(owner)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._submitted = 0
        self._finished = 0  # written by the worker thread only
        self._error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None

    def submit(self, fn, *args) -> int:
        if self._thread is None:
            self._thread = threading.Thread(target=_run, args=(self._queue, self), name=self.name, daemon=True)
            self._thread.start()
            weakref.finalize(self._owner(), _stop, self._queue, self._thread)
        self._submitted += 1
        self._queue.put((fn, args, self._submitted))
        return self._submitted

    def wait(self, ticket: Optional[int] = None) -> None:
        ticket = self._submitted if ticket is None else ticket
        if self._finished < ticket:
            with self._cond:
                while self._finished < ticket:
                    self._cond.wait()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _done(self, ticket: int, error: Optional[BaseException]) -> None:
        with self._cond:
            if error is not None and self._error is None:
                self._error = error
            self._finished = ticket
            self._cond.notify_all()


def _run(jobs: queue.SimpleQueue, worker: OrderedWorker) -> None:
    while True:
        job = jobs.get()
        if job is None:
            return
        fn, args, ticket = job
        error = None
        try:
            fn(*args)
        except BaseException as caught:  # noqa: BLE001 - handed to the waiting thread
            error = caught
        worker._done(ticket, error)
        del job, fn, args  # drop the job's tensors before waiting for the next


def _stop(jobs: queue.SimpleQueue, thread: threading.Thread) -> None:
    jobs.put(None)
    if thread is not threading.current_thread():
        thread.join()

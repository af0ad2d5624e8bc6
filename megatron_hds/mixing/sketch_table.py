"""The torch path of GradientProbe's CountSketch (probes.py): per-element hash tables, built once.

Per probed parameter the table holds each element's bucket and sign and, refreshed by
``set_scales`` once per step, the sign times the element's scale (the Adam preconditioner), so
a backward costs one multiply (grad x scale x sign, into a scratch buffer kept across steps)
and one scatter-add into the domain's row. scatter_add_ adds in index order, like index_add_,
so the sketch is the same bit for bit; it is faster on CPU.

On CPU the work runs on a worker thread while the backward goes on, one job per micro-batch,
the jobs one at a time in the order of the hooks, so every row adds up its terms in the same
order as inline; ``drain()`` waits for them before anything reads the sketch. The worker also
multiplies where it can read the gradient without a copy: a gradient autograd adds into an
existing .grad is left untouched; one that becomes .grad (a parameter's first backward of the
step) is read from .grad after accumulation, and the parameter's next backward waits for that
read before autograd adds into .grad (it assumes no other hook changes gradients in place).
The hook itself multiplies only a gradient that is its parameter's first and last of the step
(one micro-batch), into a buffer of its own (two per parameter, used in turn, each reused once
its scatter has finished), and everything off CPU. A ``set_scales`` given a function runs it on
the same worker, after the step's scatters, and the next backward waits for it: the collector
applies its per-step preconditioner (computed on its own worker during the step) that way.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from megatron_hds.mixing.worker import OrderedWorker

Scales = Optional[Sequence[torch.Tensor]]


class SketchTables:
    """Hash tables, scaled signs and scratch buffers of the probed parameters (module docstring)."""

    def __init__(self, named: Sequence[Tuple[str, nn.Parameter]], hashes: Sequence[Tuple[torch.Tensor, torch.Tensor]]):
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.buckets = [bucket.long() for bucket, _ in hashes]  # scatter_add_ takes int64 indices
        self.signs = [sign.view(p.shape) for p, (_, sign) in zip(self.params, hashes)]
        self.multipliers = [sign.to(p.dtype) for p, sign in zip(self.params, self.signs)]
        self.scratch = [self._pair(p.dtype, p) for p in self.params]
        self.offload = bool(self.params) and all(p.device.type == "cpu" for p in self.params)
        self.scales: Scales = None  # the scales in force (None: none)
        self._signs_in_force = True  # the multipliers are the plain signs
        self._turn = [0] * len(self.params)  # which scratch buffer the next product goes to
        self._users: List[List[int]] = [[0, 0] for _ in self.params]  # the scatter reading each (a ticket)
        self._scales_job = 0  # the ticket of a pending scales function (0: none)
        self._batch: List[tuple] = []  # not yet handed to the worker: (slot, turn or None if raw, row, tensor)
        self._own: List[Optional[torch.Tensor]] = [None] * len(self.params)  # the worker's product buffers
        self._queued = [False] * len(self.params)  # which parameters have a product in the batch
        self._deferred: List[Optional[torch.Tensor]] = [None] * len(self.params)  # rows awaiting .grad
        self._reads_grad = [False] * len(self.params)  # a queued job reads the parameter's .grad
        self._reading = [0] * len(self.params)  # the ticket of a job reading the parameter's .grad
        self._worker = OrderedWorker("probe-sketch", self)

    @staticmethod
    def _pair(dtype: torch.dtype, p: torch.Tensor) -> List[torch.Tensor]:
        return [torch.empty(p.shape, dtype=dtype, device=p.device) for _ in range(2)]

    # -- scales
    def set_scales(self, scales, check: Callable[[Sequence[torch.Tensor]], Sequence[torch.Tensor]]) -> None:
        """Apply `scales` (a list, None, or a function returning either) from the next backward on;
        a function runs on the worker thread where there is one. `check` validates a list."""
        self.wait_for_scales()  # a previous function may still be reading its inputs
        if callable(scales) and self.offload:
            self._flush()  # the queued raw gradients of this step are multiplied by this step's multipliers
            self._scales_job = self._worker.submit(lambda: self._apply(scales(), check))
            return
        if self.offload:
            self.drain()  # queued multiplies read the multipliers this replaces
        self._apply(scales() if callable(scales) else scales, check)

    def wait_for_scales(self) -> None:
        if self._scales_job:
            job, self._scales_job = self._scales_job, 0
            self._worker.wait(job)

    def _apply(self, scales: Scales, check) -> None:
        """multiplier = scale x sign (exact: x +-1), in grad x scale's dtype, as before the sign was folded in."""
        scales = None if scales is None else list(check(scales))
        if scales is None and self.scales is None and self._signs_in_force:
            return  # the multipliers are the signs already
        self._signs_in_force = scales is None
        for slot, p in enumerate(self.params):
            dtype = p.dtype if scales is None else torch.promote_types(p.dtype, scales[slot].dtype)
            if self.multipliers[slot].dtype != dtype:
                self.multipliers[slot] = torch.empty(p.shape, dtype=dtype, device=p.device)
                self.scratch[slot] = self._pair(dtype, p)  # (no scatter is pending: drained first)
            if scales is None:
                self.multipliers[slot].copy_(self.signs[slot])
            else:
                torch.mul(scales[slot], self.signs[slot], out=self.multipliers[slot])
        self.scales = scales

    # -- one backward
    def add(self, slot: int, row: torch.Tensor, grad: torch.Tensor, more: bool = False) -> None:
        """row[bucket(j)] += grad_j x scale_j x sign_j over parameter `slot`'s elements j (called by
        the parameter's gradient hook; `more`: another backward of it follows in this step)."""
        self.wait_for_scales()
        if self._queued[slot]:  # a new backward before the batch filled up
            self._flush()
        if self.offload and self.params[slot].grad is not None:
            # Autograd adds this gradient into .grad without touching it (it would reuse it as .grad,
            # without a copy, only while .grad is unset): the worker may read it, multiply included.
            self._batch.append((slot, None, row, grad))
        elif self.offload and more:
            # Autograd is about to make this gradient .grad itself (holding it would cost a copy):
            # after_accumulate hands .grad to the worker, and the next backward's hook waits for it.
            self._deferred[slot] = row
            return
        else:
            turn = self._turn[slot]
            self._turn[slot] ^= 1
            if self._users[slot][turn]:  # the scatter of the product two backwards ago (long finished)
                self._worker.wait(self._users[slot][turn])
            product = torch.mul(grad, self.multipliers[slot], out=self.scratch[slot][turn]).view(-1).float()
            if not self.offload:
                row.scatter_add_(0, self.buckets[slot], product)
                return
            self._batch.append((slot, turn, row, product))
        # One job per micro-batch (a backward gives every probed parameter one gradient): waking the
        # worker costs the hook more than queueing.
        self._queued[slot] = True
        if len(self._batch) == len(self.params):
            self._flush()

    def before_accumulate(self, slot: int) -> None:
        """Every backward's gradient hook calls this first (probed or not): a job still reading the
        parameter's .grad must finish before autograd adds this gradient into it."""
        if self._reads_grad[slot]:
            self._flush()
        if self._reading[slot]:
            self._worker.wait(self._reading[slot])
            self._reading[slot] = 0

    def after_accumulate(self, slot: int) -> None:
        """The post-accumulate-grad hook: queue a deferred gradient, now the parameter's .grad."""
        row, self._deferred[slot] = self._deferred[slot], None
        if row is not None:
            self._batch.append((slot, None, row, self.params[slot].grad))
            self._reads_grad[slot] = True
            self._queued[slot] = True
            if len(self._batch) == len(self.params):
                self._flush()

    def _flush(self) -> None:
        """Hand the queued scatters (and multiplies) to the worker, in hook order."""
        if self._batch:
            batch, self._batch = self._batch, []
            self._queued = [False] * len(self.params)
            ticket = self._worker.submit(self._scatter, [(slot, row, x, turn is None) for slot, turn, row, x in batch])
            for slot, turn, _, _ in batch:
                if turn is not None:
                    self._users[slot][turn] = ticket
                elif self._reads_grad[slot]:
                    self._reading[slot], self._reads_grad[slot] = ticket, False

    def _scatter(self, jobs) -> None:
        """On the worker: the queued scatters; `raw` ones are gradients still to multiply."""
        for slot, row, x, raw in jobs:
            if raw:
                x = torch.mul(x, self.multipliers[slot], out=self._worker_scratch(slot)).view(-1).float()
            row.scatter_add_(0, self.buckets[slot], x)

    def _worker_scratch(self, slot: int) -> torch.Tensor:
        """The worker's product buffer of parameter `slot` (one: its jobs run one at a time)."""
        mult = self.multipliers[slot]
        if self._own[slot] is None or self._own[slot].dtype != mult.dtype:
            self._own[slot] = torch.empty_like(mult)
        return self._own[slot]

    def end_backwards(self) -> None:
        """The step's backwards are done: wait for the jobs still reading a .grad, which the gradient
        all-reduce and clipping change next. A gradient still deferred means a parameter got fewer
        backwards than the step has micro-batches: its .grad would be read after those changes."""
        late = [self.names[slot] for slot, row in enumerate(self._deferred) if row is not None]
        if late:
            raise RuntimeError(f"the gradient probe expected one backward per micro-batch, but {', '.join(late)} "
                               "got fewer this step")
        if any(self._reads_grad):
            self._flush()
        for slot, ticket in enumerate(self._reading):
            if ticket:
                self._worker.wait(ticket)
                self._reading[slot] = 0

    def run_after_scatters(self, fn):
        """Run fn on the worker after the scatters submitted so far; returns a function waiting for it."""
        self._flush()
        ticket = self._worker.submit(fn)
        return lambda: self._worker.wait(ticket)

    def drain(self) -> None:
        """Wait for every job (re-raising a job's error): the rows are then complete."""
        self._flush()
        self._deferred = [None] * len(self.params)  # (an aborted step's: never to be read)
        self._reads_grad = [False] * len(self.params)
        self._scales_job = 0
        self._users = [[0, 0] for _ in self.params]
        self._reading = [0] * len(self.params)
        self._worker.wait()

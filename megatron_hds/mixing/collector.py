"""What the learning schedulers measure each step, behind one small interface for the training
loop: per-domain gradient probes, the weight-norm tracker and the quality sidecars.

The loop calls, on every rank:
  begin_step(plan, dp_rank)        before the forward/backward passes (the probes' hooks attribute
                                   each backward to its domain and half); with a validation
                                   gradient pass first, end_backwards() after its backwards too;
  before_optimizer_step(optimizer) right before the optimizer step (the norm tracker's W_{t-1});
  local_share(reserve)             this rank's share of the step's one world all-reduce;
  finish(reduced share, plan, ok)  the scheduler's extra inputs (StepSignals.extra).
Schedulers that learn nothing from these (static, uniform, ODM) get ``NoSignals``, whose share
is empty, so the loop has no special cases.

The signals, in StepSignals.extra (arrays have one entry per domain):
  gradients            DomainGradients: inner products of per-domain MEAN gradients (influence.py)
  alignment            the reference alignment scores (AC-ODM's reward)
  influence            z-scored first-order drop of the natural-mixture loss per unit of weight (with
                       held_out_rows: of its validation loss, only on steps with a validation pass)
  weight_norms, weight_change_norms, update_ratios   ||W_l||, ||W_l - W_l^prev||, their ratio
  quality              per domain, the mean within-domain z-score of the MTLD of the samples drawn
                       (NaN where none): how good the drawn samples were for their domain, so a
                       domain is never ranked by its typical MTLD (that only says what it is)
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from megatron_hds.data.quality import load_quality
from megatron_hds.mixing.config import ProbeConfig
from megatron_hds.mixing.influence import (DomainGradients, alignment_scores, held_out_influence_scores,
                                           influence_scores)
from megatron_hds.mixing.probes import GradientProbe, WeightNormTracker, select_matrices, selected_names
from megatron_hds.mixing.worker import OrderedWorker
from megatron_hds.parallel.state import ParallelState

QUALITY_REFERENCE_SAMPLES = 1024  # samples per domain behind its quality mean and spread


class NoSignals:
    """The collector of schedulers that read only the per-domain losses."""

    num_matrices = 0

    def begin_step(self, plan, dp_rank: int, held_out=None) -> None:
        pass

    def end_backwards(self) -> None:
        pass

    def before_optimizer_step(self, optimizer) -> None:
        pass

    def local_share(self, reserve: int = 0) -> Optional[torch.Tensor]:
        return None

    def finish(self, reduced_share, plan, step_ok: bool) -> dict:
        return {}


def adam_preconditioners(moments, params) -> list:
    """P^(1/2) = (sqrt(v_hat) + eps)^(-1/2) per parameter, in its dtype, from (v, bias correction,
    eps) (Optimizer.adam_second_moment), computed in place after the first division."""
    out = []
    for (v, correction, eps), p in zip(moments, params):
        denominator = torch.div(v, correction).sqrt_().add_(eps).to(p.device).view_as(p)
        out.append(denominator.rsqrt_().to(p.dtype))
    return out


def half_rows(plan) -> np.ndarray:
    """The probe row of every global micro-batch: 2 d + h for a micro-batch of domain d that is
    the domain's k-th of the step (h = k mod 2, so the halves hold disjoint samples), -1 for a
    micro-batch that mixes domains (not probed). The same on every rank: it comes from the plan."""
    domains = plan.micro_batch_domains
    rows = np.full(domains.size, -1, dtype=np.int64)
    seen = np.zeros(plan.weights.size, dtype=np.int64)
    for k, d in enumerate(domains):
        if d >= 0:
            rows[k] = 2 * d + seen[d] % 2
            seen[d] += 1
    return rows


class SignalCollector:
    """Gradient influence, weight norms and sample quality for HDS and AC-ODM.

    Gradients of ``probe.probe_matrices`` late MLP output projections per domain and half
    (sketched or exact; multiplied elementwise by P^(1/2), P = 1 / (sqrt(v) + eps) from Adam's
    second moments as the step starts, so inner products are <P g_i, g_j>: a function of the
    checkpointed optimizer state, so a resumed run measures what the straight one did), Frobenius
    norms of ``probe.norm_matrices`` MLP output projections spread over depth and of their change
    in the step, and (global rank 0, where the scheduler lives) the within-domain quality of the
    step's samples.
    """

    def __init__(self, model, state: ParallelState, probe: ProbeConfig, natural_weights, seed: int,
                 train_sets=None, held_out_rows: bool = False, optimizer=None):
        num_layers = model.config.num_layers
        self.natural_weights = np.asarray(natural_weights, dtype=np.float64)
        num_domains = self.natural_weights.size
        self.num_domains = num_domains
        self.num_matrices = min(probe.norm_matrices, num_layers)
        self.state = state
        probed = selected_names(num_layers, count=min(probe.probe_matrices, num_layers), placement="late")
        # Rows 2d, 2d+1: domain d's training halves; with held_out_rows, row 2D + d: its validation
        # samples' gradient (a step that begins with a validation pass, begin_step(held_out=...)).
        self.held_out_rows = held_out_rows
        rows = (3 if held_out_rows else 2) * num_domains
        self.probe = GradientProbe(select_matrices(model, probed), rows, mode=probe.mode,
                                   sketch_size=probe.sketch_size, seed=seed, state=state)
        names = selected_names(num_layers, count=self.num_matrices, placement="spread")
        self.norm_tracker = WeightNormTracker(select_matrices(model, names), state, names=names)
        self.train_sets = train_sets
        self.quality = None
        if state.rank == 0 and train_sets is not None:
            try:
                self.quality = [load_quality(d.indexed.path_prefix, d.indexed.num_documents) for d in train_sets]
            except FileNotFoundError as error:
                raise FileNotFoundError(f"the learning schedulers need each dataset's MTLD sidecar: {error}") from None
            self.quality_reference = [self._reference(d, q, seed) for d, q in zip(train_sets, self.quality)]
        self._counts = np.zeros(rows)
        self._local_micro_batches = 1
        # What needs only the step's start (its plan; the weights and Adam's moments the last optimizer
        # step left) is computed on a worker thread while the step's passes run: the same numbers.
        self._worker = OrderedWorker("mixing-signals", self)
        self._optimizer = optimizer  # whose second moments precondition (else: the last before_optimizer_step's)
        self._prepared = None  # this step's _before_step: its worker ticket, 0 if done already, None if not begun
        self._step_scales = None  # the preconditioner _before_step computed for this step
        self._quality_job = None  # (plan, ticket, result holder) of this step's quality job
        self._reserve = 2 * num_domains  # the entries the training loop reserves (loss sums, token counts)
        self._export = None  # (share, wait) with the sketch being copied into it
        self._share = None  # the share's buffer (local_share's result is valid until the next step's)

    # -- the step ----------------------------------------------------------------------------
    def begin_step(self, plan, dp_rank: int, held_out=None) -> None:
        """held_out (with held_out_rows): (per-domain counts of the step's validation micro-batches over
        the world, the domains of this rank's in order); their backwards run before the step's own."""
        rows = half_rows(plan)
        self._counts = np.bincount(rows[rows >= 0], minlength=self._counts.size).astype(np.float64)
        first = plan.micro_batches_for(dp_rank).first
        self._local_micro_batches = plan.num_micro_batches // plan.data_parallel_size
        local = [None if r < 0 else int(r) for r in rows[first:first + self._local_micro_batches]]
        if held_out is not None:
            if not self.held_out_rows:
                raise ValueError("a validation gradient pass needs a collector built with held_out_rows=True")
            counts, local_domains = held_out
            self._counts[2 * self.num_domains:] = counts
            local = [2 * self.num_domains + int(d) for d in local_domains] + local
        self.probe.begin_step(local)
        self._export = None  # a copy of an earlier sketch
        # Nothing changes the weights or Adam's moments before this step's optimizer step: the step's
        # preconditioner and W_{t-1} are taken from them on the worker while the forward passes run
        # (on CPU; on a GPU it is a few kernel launches, left in order on the training thread's
        # stream). The probes apply the preconditioner from this step's first backward on (with the
        # torch tables the function runs on their worker, which waits for this job).
        self._prepared = None
        if self._optimizer is not None:
            if self.norm_tracker.device.type == "cpu":
                ticket = self._prepared = self._worker.submit(self._before_step, self._optimizer)
                self.probe.set_scales(lambda: (self._worker.wait(ticket), self._step_scales)[1])
            else:
                self._before_step(self._optimizer)
                self._prepared = 0
                self.probe.set_scales(self._step_scales)
        if self.quality is not None:
            result = []
            self._quality_job = (plan, self._worker.submit(lambda: result.append(self._domain_quality(plan))), result)

    def end_backwards(self) -> None:
        """The step's backwards (or a validation pass's) are done: the probe's reads of gradients
        finish before the gradient all-reduce and clipping, or zero_grad, change them."""
        self.probe.end_backwards()

    def _before_step(self, optimizer) -> None:
        """W_{t-1} for the norms; this step's preconditioner from the optimizer's second moments as
        the step starts; None before the first optimizer step, or with a sharded optimizer."""
        self.norm_tracker.snapshot()
        params = [p for _, p in self.probe.named]
        moments = [optimizer.adam_second_moment(p) for p in params]
        self._step_scales = None if any(m is None for m in moments) else adam_preconditioners(moments, params)

    def before_optimizer_step(self, optimizer) -> None:
        """What the optimizer step overwrites, W_{t-1}: taken at begin_step (on CPU by the worker,
        waited for here), or now if begin_step did not know the optimizer yet (then the preconditioner
        starts with the next step)."""
        prepared, self._prepared = self._prepared, None
        if prepared:
            self._worker.wait(prepared)
        if prepared is None or optimizer is not self._optimizer:
            self._before_step(optimizer)
        self._optimizer = optimizer
        self._export = None
        if self.probe.mode == "sketch":  # the backwards are done: the sketch's part of the share can be copied
            sketch = self.probe.num_domains * (self.probe.width + 1)
            size = self._reserve + sketch + 2 * len(self.norm_tracker.names)
            if self._share is None or self._share.numel() != size:
                # Kept across steps (the step is done with it by the next one): a fresh one cost a
                # fresh mapping of its pages every step.
                self._share = torch.empty(size, dtype=torch.float64, device=self.norm_tracker.device)
            share = self._share
            self._export = (share, self.probe.export_sketch(share[self._reserve:self._reserve + sketch]))

    def local_share(self, reserve: int = 0) -> torch.Tensor:
        """float64 [sketch buffer (sketch mode only) | norm squares], summed over the world by the
        loop, after `reserve` uninitialised entries (room for the loss sums that share the all-reduce,
        so the share is not copied again behind them)."""
        squares = self.norm_tracker.local_squares(world_share=True)
        export, self._export = self._export, None
        if export is not None and reserve == self._reserve:  # the sketch, copied by before_optimizer_step
            share, wait = export
            wait()
        else:
            sketch = self.probe.local_sketch().reshape(-1) if self.probe.mode == "sketch" else squares[:0]
            share = torch.empty(reserve + sketch.numel() + squares.numel(), dtype=torch.float64,
                                device=squares.device)
            share[reserve:reserve + sketch.numel()].copy_(sketch)  # converted to float64 by the copy
        share[share.numel() - squares.numel():].copy_(squares)
        return share

    def finish(self, reduced_share: torch.Tensor, plan, step_ok: bool) -> dict:
        """The scheduler's extra inputs from the world-reduced share (module docstring)."""
        split = reduced_share.numel() - 2 * len(self.norm_tracker.names)
        # The hooks see the gradients of loss / (micro-batches per rank): undo that common factor,
        # so the Gram is of per-micro-batch gradients (fp16's loss scale stays in: the scores are
        # invariant to a common factor).
        scale = float(self._local_micro_batches)
        if self.probe.mode == "sketch":
            gram = self.probe.gram_from_reduced(reduced_share[:split], scale=scale)
        else:
            gram = self.probe.alignment_matrix(scale=scale)
        norms, change = self.norm_tracker.norms_from_squares(reduced_share[split:])
        ratios = np.zeros_like(norms)
        np.divide(change, norms, out=ratios, where=norms > 0)  # (no division by 0: no warning to silence)
        extra = {"weight_norms": norms, "weight_change_norms": change, "update_ratios": ratios}
        if step_ok and np.all(np.isfinite(gram)):
            train = 2 * self.num_domains
            gradients = DomainGradients(gram[:train, :train], self._counts[:train])
            extra["gradients"] = gradients
            extra["alignment"] = alignment_scores(gradients.mean_gram, gradients.present)
            if not self.held_out_rows:
                extra["influence"] = influence_scores(gradients, self.natural_weights)
            elif self._counts[train:].any():  # (a step with a validation pass)
                extra["influence"] = held_out_influence_scores(gradients, gram[:train, train:], self._counts[train:],
                                                               self.natural_weights)
        if self.quality is not None:
            extra["quality"] = self._step_quality(plan)
        return extra

    def _step_quality(self, plan) -> np.ndarray:
        """The quality begin_step started computing for this plan (computed here if it was not)."""
        pending, self._quality_job = self._quality_job, None
        if pending is not None and pending[0] is plan:
            self._worker.wait(pending[1])
            return pending[2][0]
        return self._domain_quality(plan)

    # -- quality -------------------------------------------------------------------------------
    @staticmethod
    def _reference(dataset, quality: np.ndarray, seed: int) -> tuple:
        """(mean, std) of the sample-level MTLD of a domain, from a fixed random set of its samples."""
        if len(dataset) == 0:
            return 0.0, 1.0
        rng = np.random.default_rng([seed, len(dataset)])
        picked = rng.integers(0, len(dataset), size=min(QUALITY_REFERENCE_SAMPLES, len(dataset)))
        values = dataset.samples_quality(picked, quality)
        return float(values.mean()), float(max(values.std(), 1e-6))

    def _domain_quality(self, plan) -> np.ndarray:
        """Per domain, the mean within-domain z-score of the MTLD of the step's samples (NaN: none)."""
        pairs = np.asarray(plan.pairs())
        out = np.full(len(self.quality), np.nan)
        for d in np.unique(pairs[:, 0]):
            values = self.train_sets[d].samples_quality(pairs[pairs[:, 0] == d, 1], self.quality[d])
            mean, std = self.quality_reference[d]
            out[d] = float(((values - mean) / std).mean())
        return out

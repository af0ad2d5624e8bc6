"""What the learning schedulers measure each step, behind one small interface for the training
loop: per-domain gradient probes, the weight-norm tracker and the quality sidecars.

The loop calls, on every rank:
  begin_step(micro-batch domains)  before the forward/backward passes (the probes' hooks attribute
                                   each backward to its domain);
  before_optimizer_step()          right before the optimizer step (the norm tracker's W_{t-1});
  local_share()                    this rank's share of the step's one world all-reduce;
  finish(reduced share, plan, ok)  the scheduler's extra inputs (StepSignals.extra).
Schedulers that learn nothing from these (static, uniform, ODM) get ``NoSignals``, whose share
is empty, so the loop has no special cases.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from megatron_hds.data.quality import load_quality
from megatron_hds.mixing.config import ProbeConfig
from megatron_hds.mixing.probes import (
    GradientProbe,
    WeightNormTracker,
    alignment_scores,
    micro_batch_domain,
    select_matrices,
    selected_names,
)
from megatron_hds.parallel.state import ParallelState


class NoSignals:
    """The collector of schedulers that read only the per-domain losses."""

    num_matrices = 0

    def begin_step(self, micro_batch_domains) -> None:
        pass

    def before_optimizer_step(self) -> None:
        pass

    def local_share(self) -> Optional[torch.Tensor]:
        return None

    def finish(self, reduced_share, plan, step_ok: bool) -> dict:
        return {}


class SignalCollector:
    """Gradient alignment, weight norms and sample quality for HDS and AC-ODM.

    Gradients of ``probe.probe_matrices`` late MLP output projections per domain (sketched or
    exact), Frobenius norms of ``probe.norm_matrices`` MLP output projections spread over depth
    and of their change in the step, and (global rank 0, where the scheduler lives) the MTLD of
    the step's samples from the datasets' quality sidecars.
    """

    def __init__(self, model, state: ParallelState, probe: ProbeConfig, num_domains: int, seed: int,
                 train_sets=None):
        num_layers = model.config.num_layers
        self.num_matrices = min(probe.norm_matrices, num_layers)
        probed = selected_names(num_layers, count=min(probe.probe_matrices, num_layers), placement="late")
        self.probe = GradientProbe(select_matrices(model, probed), num_domains, mode=probe.mode,
                                   sketch_size=probe.sketch_size, seed=seed, state=state)
        names = selected_names(num_layers, count=self.num_matrices, placement="spread")
        self.norm_tracker = WeightNormTracker(select_matrices(model, names), state, names=names)
        self.train_sets = train_sets
        self.quality = None
        if state.rank == 0:
            try:
                self.quality = [load_quality(d.indexed.path_prefix, d.indexed.num_documents) for d in train_sets]
            except FileNotFoundError as error:
                raise FileNotFoundError(f"the learning schedulers need each dataset's MTLD sidecar: {error}") from None

    def begin_step(self, micro_batch_domains) -> None:
        """micro_batch_domains: each of this rank's micro-batches' domain tensor, in order."""
        self.probe.begin_step([micro_batch_domain(domains) for domains in micro_batch_domains])

    def before_optimizer_step(self) -> None:
        self.norm_tracker.snapshot()

    def local_share(self) -> torch.Tensor:
        """[sketch buffer (sketch mode only) | norm squares], summed over the world by the loop."""
        shares = []
        if self.probe.mode == "sketch":
            shares.append(self.probe.local_sketch().reshape(-1))
        shares.append(self.norm_tracker.local_squares(world_share=True))
        return torch.cat([s.double() for s in shares])

    def finish(self, reduced_share: torch.Tensor, plan, step_ok: bool) -> dict:
        """The scheduler's extra inputs from the world-reduced share: alignment scores (when the
        step was taken and the Gram is finite), weight norms and their change, batch quality."""
        split = reduced_share.numel() - 2 * len(self.norm_tracker.names)
        if self.probe.mode == "sketch":
            gram = self.probe.gram_from_reduced(reduced_share[:split])
        else:
            gram = self.probe.alignment_matrix()
        norms, change = self.norm_tracker.norms_from_squares(reduced_share[split:])
        extra = {"weight_norms": norms, "weight_change_norms": change}
        if step_ok and np.all(np.isfinite(gram)):
            extra["alignment"] = alignment_scores(gram, self.probe.present)
        if self.quality is not None:
            extra["quality"] = self._batch_quality(plan)
        return extra

    def _batch_quality(self, plan) -> float:
        """Mean MTLD of the step's samples, each weighted by its tokens (all samples are equally long)."""
        pairs = np.asarray(plan.pairs())
        values = [self.train_sets[d].samples_quality(pairs[pairs[:, 0] == d, 1], self.quality[d])
                  for d in np.unique(pairs[:, 0])]
        return float(np.concatenate(values).mean())

"""Held-out evaluation: per-domain mean loss on fixed validation or test samples (the same
samples for every run with the same data and seed, independent of the mixture weights)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from megatron_hds.parallel.schedules import forward_backward
from megatron_hds.parallel.state import ParallelState
from megatron_hds.training.step import all_reduce_domain_sums, micro_batch_from_samples, split_means

logger = logging.getLogger(__name__)


@dataclass
class HeldOutSet:
    """The fixed evaluation samples of one split: per domain, the first ``count`` samples."""

    split: str
    datasets: list  # one GPTDataset per domain
    counts: list  # samples evaluated per domain (a multiple of micro_batch_size * dp)


def build_held_out_set(split: str, datasets: list, names: list, eval_iters: int, micro_batch_size: int,
                       dp_size: int) -> HeldOutSet:
    """Per domain, eval_iters micro-batches per DP rank (fewer when the split is smaller)."""
    unit = micro_batch_size * dp_size
    counts = []
    for name, dataset in zip(names, datasets):
        count = min(eval_iters * unit, len(dataset) // unit * unit)
        if count == 0 and eval_iters > 0:
            logger.warning("domain %r: its %s split has %d samples, fewer than one micro-batch per DP rank (%d); "
                           "it is not evaluated", name, split, len(dataset), unit)
        counts.append(count)
    return HeldOutSet(split, datasets, counts)


@torch.no_grad()
def evaluate(model, held_out: HeldOutSet, state: ParallelState, micro_batch_size: int) -> np.ndarray:
    """Mean per-token loss of each domain on the held-out samples (NaN for a domain not
    evaluated). Every rank runs the same micro-batch sequence (pipeline-safe)."""
    num_domains = len(held_out.datasets)
    domain_sums = torch.zeros(2 * num_domains, dtype=torch.float32, device=state.device)
    was_training = model.training
    model.eval()
    try:
        for domain, (dataset, count) in enumerate(zip(held_out.datasets, held_out.counts)):
            if count == 0:
                continue
            per_rank = count // state.dp_size
            first = state.dp_rank * per_rank
            domain_ids = torch.full((micro_batch_size,), domain, dtype=torch.long, device=state.device)
            micro_batches = []
            for start in range(first, first + per_rank, micro_batch_size):
                samples = np.stack([dataset[i] for i in range(start, start + micro_batch_size)])
                batch = micro_batch_from_samples(samples, state.device)
                micro_batches.append(dict(batch, domains=domain_ids, domain_sums=domain_sums))
            forward_backward(model, micro_batches, forward_only=True)
    finally:
        model.train(was_training)
    # Reduced in float64, like the training sums (the fp32 buffer holds one rank's share).
    means, _ = split_means(all_reduce_domain_sums(domain_sums.double(), state)[0])
    return means

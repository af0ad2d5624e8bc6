"""Per-domain losses: micro-batches that carry the buffer the fused cross entropy fills with
per-domain loss sums and token counts, the one small all-reduce that combines those over all
ranks, and the held-out evaluation (the same samples for every run with the same data and
seed, independent of the mixture weights)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from megatron_hds.parallel.schedules import forward_backward
from megatron_hds.parallel.state import ParallelState

logger = logging.getLogger(__name__)


def micro_batch_from_samples(samples: np.ndarray, device: torch.device) -> dict:
    """tokens/labels [b, s] from samples of seq_length + 1 tokens [b, s + 1]."""
    tensor = torch.from_numpy(samples).to(device)
    return {"tokens": tensor[:, :-1], "labels": tensor[:, 1:]}


def load_micro_batch(datasets, domains, indices, device: torch.device, domain_sums: torch.Tensor) -> dict:
    """The micro-batch of samples (domains[k], indices[k]) of per-domain datasets; its loss pass
    adds per-domain loss sums and token counts into ``domain_sums`` (fp32 [2D])."""
    samples = np.stack([datasets[d][i] for d, i in zip(domains.tolist(), indices.tolist())])
    batch = micro_batch_from_samples(samples, device)
    batch["domains"] = torch.tensor(domains, dtype=torch.long, device=device)
    batch["domain_sums"] = domain_sums
    return batch


def all_reduce_domain_sums(sums: torch.Tensor, state: ParallelState, extra: torch.Tensor | None = None):
    """Sum the per-domain (loss, tokens) vectors over the world; every rank gets the total.
    Returns (sums as float64 numpy, the world sum of `extra` or None).

    Only one TP rank of the last stage of each DP replica contributes (the others hold
    the same losses or none), so each token is counted once. `extra` (every rank's share
    of another world sum, e.g. the gradient-probe sketches) rides in the same all-reduce.
    """
    if not (state.is_last_stage() and state.tp_rank == 0):
        sums.zero_()
    flat = sums if extra is None else torch.cat([sums, extra.reshape(-1).to(sums.dtype)])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flat)
    reduced_extra = None if extra is None else flat[sums.numel():].view(extra.shape)
    return flat[:sums.numel()].double().cpu().numpy(), reduced_extra


def split_means(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean loss per domain with NaN where no tokens, tokens per domain) from reduced sums."""
    num_domains = sums.size // 2
    loss, tokens = sums[:num_domains], sums[num_domains:]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(tokens > 0, loss / np.maximum(tokens, 1), np.nan)
    return means, tokens


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

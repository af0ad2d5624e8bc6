"""One training step's data plumbing: the micro-batches it loads (each carries the buffer the
fused cross entropy fills with per-domain loss sums and token counts), and the one small
all-reduce that combines those sums, and any other signal riding along, over all ranks."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from megatron_hds.parallel.state import ParallelState


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


def all_reduce_domain_sums(sums: torch.Tensor, state: ParallelState, extra: torch.Tensor | None = None,
                           extra_after_sums: bool = False):
    """Sum the per-domain (loss, tokens) vectors over the world; every rank gets the total.
    Returns (sums as float64 numpy, the world sum of `extra` or None).

    Only one TP rank of the last stage of each DP replica contributes (the others hold
    the same losses or none), so each token is counted once. `extra` (every rank's share
    of another world sum, e.g. the gradient-probe sketches) rides in the same all-reduce.
    ``extra_after_sums``: `extra` is 1-D, of sums' dtype, and its first sums.numel() entries
    are room for the sums (SignalCollector.local_share(reserve=...)): they are written there
    and `extra` is reduced in place instead of being copied after them.
    """
    if not (state.is_last_stage() and state.tp_rank == 0):
        sums.zero_()
    if extra is None:
        flat = sums
    elif extra_after_sums:
        flat = extra
        flat[:sums.numel()].copy_(sums)
    else:
        flat = torch.cat([sums, extra.reshape(-1).to(sums.dtype)])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flat)
    reduced_extra = None if extra is None else (flat[sums.numel():] if extra_after_sums
                                                else flat[sums.numel():].view(extra.shape))
    # (a copy: `flat` may be the collector's share, reused next step)
    return flat[:sums.numel()].double().cpu().numpy().copy(), reduced_extra


def split_means(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean loss per domain with NaN where no tokens, tokens per domain) from reduced sums."""
    num_domains = sums.size // 2
    loss, tokens = sums[:num_domains], sums[num_domains:]
    means = np.full(num_domains, np.nan)
    np.divide(loss, np.maximum(tokens, 1), out=means, where=tokens > 0)  # (the divisor is >= 1: no warning)
    return means, tokens

"""Inter-domain influence, from the per-domain gradient probes: what a step on one domain does
to the loss of the others.

The collector (collector.py) accumulates each domain's micro-batch gradients in two disjoint
halves, A and B, so the reduced probe holds 2D sums. ``DomainGradients`` turns their Gram
matrix (inner products of the sums, sketched or exact, optionally Adam-preconditioned) into
inner products of per-domain MEAN gradients: a domain's score must not grow with how often it
was drawn (summed gradients paid the alignment reward for concentrating the mixture).

Two scores:
- ``alignment_scores``: the reference (HDS/AC-ODM code) loss-driven alignment, r_i = sum_{j != i}
  <g_i, g_j> / mean ||g||, z-scored over the present domains. AC-ODM's reward.
- ``influence_scores``: the first-order drop of the natural-mixture loss per unit of weight on
  domain i, u_i = <P g_i, sum_k pi_k g_k> (DoGE's generalisation estimate with the natural
  mixture as the target, Adam's preconditioner P included through the probes' scaling). The
  domain's own term is kept: training on a domain lowers its own loss. Its product
  <g_i, g_i> is taken across the two halves, so the noise of a few samples does not inflate it
  (E <g_i^A, g_i^B> = ||E g_i||^2, whereas E ||g_i||^2 adds the sampling variance).
- ``held_out_influence_scores``: the same drop measured on the natural mixture's VALIDATION loss,
  u_i = <P g_i, sum_k pi_k h_k> with h_k the gradient of domain k's validation samples (DoGE's
  estimate with a held-out target, --hds-influence-target valid): a domain whose training
  samples are memorised gains no credit for lowering their own loss.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


class DomainGradients:
    """Inner products of per-domain mean gradients from the Gram of the half sums.

    gram: [2D, 2D] inner products of the reduced half sums (rows 2i: domain i's half A, 2i+1:
    half B); counts: [2D] micro-batches summed into each row (from the batch plan)."""

    def __init__(self, gram: np.ndarray, counts: np.ndarray):
        gram = np.asarray(gram, dtype=np.float64)
        counts = np.asarray(counts, dtype=np.float64)
        if gram.shape != (counts.size, counts.size) or counts.size % 2:
            raise ValueError(f"gram of shape {gram.shape} does not match {counts.size} half counts (2 per domain)")
        self.num_domains = counts.size // 2
        pair = counts.reshape(self.num_domains, 2)
        self.counts = pair.sum(axis=1)
        # Sum of both halves: the domain's whole sum; divided by its count, its mean gradient.
        whole = gram.reshape(self.num_domains, 2, self.num_domains, 2).sum(axis=(1, 3))
        with np.errstate(invalid="ignore", divide="ignore"):
            self.mean_gram = whole / np.outer(self.counts, self.counts)
            halves = pair[:, 0] * pair[:, 1]
            self.cross_self = np.diag(gram.reshape(self.num_domains, 2, self.num_domains, 2)[:, 0, :, 1]) / halves
        drawn = self.counts > 0  # (an undrawn domain's column is 0 / 0: it must not hide the drawn ones)
        finite = np.isfinite(self.mean_gram[:, drawn]).all(axis=1) & np.isfinite(np.diag(self.mean_gram))
        self.present = drawn & finite
        self.split = self.present & (halves > 0) & np.isfinite(self.cross_self)  # both halves observed


def alignment_scores(gram: np.ndarray, present: Optional[np.ndarray] = None, eps: float = 1e-6,
                     clip: float = 3.0) -> np.ndarray:
    """The reference alignment per domain from S = G G^T (mean gradients).

    Over the present domains P: r_i = sum_{j in P, j != i} S_ij / (mean_{k in P} ||g_k|| + eps),
    z-scored over P, clamped to [-clip, clip]. Absent domains (no gradient this step, or a
    non-finite row/column in S) score 0. With two present domains r_1 = r_2 in exact
    arithmetic, so both score 0 (S is symmetrised first and a spread within rounding of the
    scores' size counts as none). Invariant to a positive common scale of the gradients.
    """
    gram = np.asarray(gram, dtype=np.float64)
    gram = 0.5 * (gram + gram.T)
    num = gram.shape[0]
    mask = np.ones(num, dtype=bool) if present is None else np.asarray(present, dtype=bool).copy()
    finite = np.isfinite(gram)
    mask &= np.diag(finite)
    # A non-finite entry between two present domains drops both (a NaN row of an absent one does not).
    mask &= ~(~finite & mask[None, :]).any(axis=1) & ~(~finite & mask[:, None]).any(axis=0)
    scores = np.zeros(num)
    idx = np.flatnonzero(mask)
    if idx.size < 2:
        return scores
    sub = gram[np.ix_(idx, idx)]
    norms = np.sqrt(np.clip(np.diag(sub), 0.0, None))
    raw = (sub.sum(axis=1) - np.diag(sub)) / (norms.mean() + eps)
    return _zscore(raw, idx, num, clip)


def influence_scores(gradients: DomainGradients, target_weights: np.ndarray, clip: float = 3.0) -> np.ndarray:
    """z-scored u_i = sum_k pi_k <g_i, g_k> over the domains with both halves observed (0 elsewhere),
    with the self term <g_i^A, g_i^B> and pi the target mixture (the natural weights)."""
    num = gradients.num_domains
    idx = np.flatnonzero(gradients.split)
    scores = np.zeros(num)
    if idx.size < 2:
        return scores
    products = gradients.mean_gram[np.ix_(idx, idx)].copy()
    products[np.diag_indices(idx.size)] = gradients.cross_self[idx]
    weights = np.asarray(target_weights, dtype=np.float64)[idx]
    raw = products @ (weights / weights.sum())
    return _zscore(raw, idx, num, clip)


def held_out_influence_scores(gradients: DomainGradients, cross: np.ndarray, held_out_counts: np.ndarray,
                              target_weights: np.ndarray, clip: float = 3.0) -> np.ndarray:
    """z-scored u_i = sum_k pi_k <g_i, h_k> over the domains drawn this step (0 elsewhere): h_k the mean
    gradient of domain k's validation samples, pi the target mixture renormalised over the domains
    with one. Training material that repeats is memorised: its gradients keep a component that
    fits those very samples, which the two training halves share (they inflate the self term of
    ``influence_scores``) and held-out samples do not.

    cross: [2D, D] inner products of the training half sums (rows as in DomainGradients) with the
    validation sums; held_out_counts: [D] micro-batches summed into each validation sum."""
    num = gradients.num_domains
    cross = np.asarray(cross, dtype=np.float64)
    counts = np.asarray(held_out_counts, dtype=np.float64)
    if cross.shape != (2 * num, num) or counts.shape != (num,):
        raise ValueError(f"cross products of shape {cross.shape} and validation counts of shape {counts.shape} do "
                         f"not match {num} domains (expected ({2 * num}, {num}) and ({num},))")
    whole = cross.reshape(num, 2, num).sum(axis=1)  # a domain's training sum x each validation sum
    targets = np.flatnonzero((counts > 0) & np.isfinite(whole).all(axis=0))
    idx = np.flatnonzero(gradients.present)
    if idx.size < 2 or targets.size == 0:
        return np.zeros(num)
    means = whole[np.ix_(idx, targets)] / np.outer(gradients.counts[idx], counts[targets])
    weights = np.asarray(target_weights, dtype=np.float64)[targets]
    raw = means @ (weights / weights.sum())
    return _zscore(raw, idx, num, clip)


def _zscore(raw: np.ndarray, idx: np.ndarray, num: int, clip: float) -> np.ndarray:
    """Scores of length num: (raw - mean) / std at idx, clamped; zeros when the spread of raw is
    zero or lost in rounding (relative to its size), or not finite."""
    scores = np.zeros(num)
    std = raw.std()
    scale = np.abs(raw).max()
    if not np.isfinite(std) or std <= 1e-9 * scale or scale == 0:
        return scores
    scores[idx] = np.clip((raw - raw.mean()) / std, -clip, clip)
    return scores

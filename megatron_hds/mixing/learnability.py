"""Per-domain learnability from online-fitted scaling laws (after ADO, Jiang et al. 2024).

Each domain's training loss is recorded per step (averaged in bins of ``bin_steps``) and,
every ``fit_interval`` steps, fitted with L(t) = eps + beta * t^(-alpha): alpha on a grid,
eps and beta by non-negative least squares for each alpha. The fitted slope
-dL/dt = alpha * (L(t) - eps) / t says how much a domain's loss still falls per step: its
reducible loss times its learning speed. A domain's preference is

    rho_k = pi_k * slope_k * sqrt(h_k)

(pi the natural weights, h an average of the domain's realised share: ADO's credit
assignment, a domain trained on more owes more of its slope to its own samples), and its
learnability score is log(rho_k / sum rho / pi_k): positive for domains that deserve more
than their natural share. Pure numpy; the state is a few arrays, checkpointed exactly.
"""

from __future__ import annotations

import numpy as np

ALPHAS = np.round(np.arange(0.05, 0.801, 0.05), 2)  # the exponents tried (ADO's range is [0, 0.8])


def fit_power_law(steps: np.ndarray, losses: np.ndarray) -> tuple[float, float, float]:
    """(eps, beta, alpha) minimising sum (eps + beta t^-alpha - L)^2 with eps, beta >= 0."""
    steps = np.asarray(steps, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    best = (float(losses.min()), 0.0, float(ALPHAS[0]))
    best_error = np.inf
    for alpha in ALPHAS:
        x = steps ** -alpha
        design = np.stack([np.ones_like(x), x], axis=1)
        (eps, beta), *_ = np.linalg.lstsq(design, losses, rcond=None)
        if beta < 0:  # a rising curve: no decrease to fit
            eps, beta = losses.mean(), 0.0
        elif eps < 0:  # the floor must be a loss: refit beta with eps = 0
            eps, beta = 0.0, float(x @ losses / (x @ x))
        error = float(((eps + beta * x - losses) ** 2).sum())
        if error < best_error:
            best, best_error = (float(eps), float(beta), float(alpha)), error
    return best


class Learnability:
    """Binned loss histories, periodic power-law fits, and the learnability scores."""

    def __init__(self, natural_weights, bin_steps: int = 10, fit_interval: int = 200, share_decay: float = 0.9):
        self.natural = np.asarray(natural_weights, dtype=np.float64)
        num = self.natural.size
        self.bin_steps, self.fit_interval, self.share_decay = bin_steps, fit_interval, share_decay
        self.bins: list = []  # [steps, D] sums of the binned losses, and counts below
        self.bin_counts: list = []
        self.shares = self.natural.copy()  # h: average realised share
        self.fits = np.full((num, 3), np.nan)  # (eps, beta, alpha) per domain, NaN before the first fit
        self.scores = np.zeros(num)

    def observe(self, step: int, losses: np.ndarray, shares: np.ndarray) -> None:
        """Record step ``step``'s per-domain training losses (NaN: not drawn) and realised shares;
        refit every fit_interval steps."""
        losses = np.asarray(losses, dtype=np.float64)
        index = (step - 1) // self.bin_steps
        while len(self.bins) <= index:
            self.bins.append(np.zeros(self.natural.size))
            self.bin_counts.append(np.zeros(self.natural.size))
        seen = np.isfinite(losses)
        self.bins[index][seen] += losses[seen]
        self.bin_counts[index][seen] += 1
        self.shares = self.share_decay * self.shares + (1.0 - self.share_decay) * np.asarray(shares, dtype=np.float64)
        if step % self.fit_interval == 0:
            self._fit(step)

    def _fit(self, step: int) -> None:
        """Fit every domain on its complete bins (the last, partial one left out), then score."""
        complete = len(self.bins) - 1 if len(self.bins) * self.bin_steps > step else len(self.bins)
        if complete < 4:
            return
        sums, counts = np.array(self.bins[:complete]), np.array(self.bin_counts[:complete])
        centres = (np.arange(complete) + 0.5) * self.bin_steps
        slopes = np.zeros(self.natural.size)
        for k in range(self.natural.size):
            ok = counts[:, k] > 0
            if ok.sum() < 4:
                continue
            eps, beta, alpha = fit_power_law(centres[ok], sums[ok, k] / counts[ok, k])
            self.fits[k] = (eps, beta, alpha)
            slopes[k] = alpha * beta * float(step) ** (-alpha - 1.0)  # -dL/dt at the current step
        preference = self.natural * slopes * np.sqrt(self.shares)
        if preference.sum() > 0:
            with np.errstate(divide="ignore"):
                self.scores = np.log(np.maximum(preference / preference.sum(), 1e-12) / self.natural)

    def state_dict(self) -> dict:
        return {"bins": [b.tolist() for b in self.bins], "bin_counts": [c.tolist() for c in self.bin_counts],
                "shares": self.shares.tolist(), "fits": self.fits.tolist(), "scores": self.scores.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.bins = [np.asarray(b, dtype=np.float64) for b in state["bins"]]
        self.bin_counts = [np.asarray(c, dtype=np.float64) for c in state["bin_counts"]]
        self.shares = np.asarray(state["shares"], dtype=np.float64)
        self.fits = np.asarray(state["fits"], dtype=np.float64)
        self.scores = np.asarray(state["scores"], dtype=np.float64)

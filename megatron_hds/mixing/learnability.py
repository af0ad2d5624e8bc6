"""Per-domain learnability: how much each domain's loss still falls, scored against its
natural share. Two estimates of the fall, one score (``scores_from_slopes``):

- ``Learnability`` (after ADO, Jiang et al. 2024): online-fitted scaling laws of the
  training losses.
- ``HeldOutLearnability``: the recent slope of the held-out (validation) losses of the
  trainer's periodic evaluation. A domain whose training material repeats is memorised: its
  training loss keeps falling while its held-out loss stalls, and a scheduler reading the
  training loss gives it ever more weight (measured on the demo corpus,
  docs/experiments/2026-12-02-demo.md). The held-out loss cannot be lowered that way.

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

MIN_POINTS = 4  # loss points a fit needs
ALPHAS = np.round(np.arange(0.05, 0.801, 0.05), 2)  # the exponents tried (ADO's range is [0, 0.8])


def scores_from_slopes(natural: np.ndarray, slopes: np.ndarray, shares: np.ndarray) -> np.ndarray | None:
    """log(rho_k / sum rho / pi_k), rho_k = pi_k * slope_k * sqrt(h_k); None when no domain's
    loss falls (nothing to prefer)."""
    preference = natural * np.maximum(slopes, 0.0) * np.sqrt(shares)
    if not preference.sum() > 0:
        return None
    with np.errstate(divide="ignore"):
        return np.log(np.maximum(preference / preference.sum(), 1e-12) / natural)


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
        if complete < MIN_POINTS:
            return
        sums, counts = np.array(self.bins[:complete]), np.array(self.bin_counts[:complete])
        centres = (np.arange(complete) + 0.5) * self.bin_steps
        slopes = np.zeros(self.natural.size)
        for k in range(self.natural.size):
            ok = counts[:, k] > 0
            if ok.sum() < MIN_POINTS:
                continue
            eps, beta, alpha = fit_power_law(centres[ok], sums[ok, k] / counts[ok, k])
            self.fits[k] = (eps, beta, alpha)
            slopes[k] = alpha * beta * float(step) ** (-alpha - 1.0)  # -dL/dt at the current step
        scores = scores_from_slopes(self.natural, slopes, self.shares)
        if scores is not None:
            self.scores = scores

    def observe_evaluation(self, step: int, losses: np.ndarray) -> None:
        """Held-out losses are not this estimate's input."""

    def state_dict(self) -> dict:
        return {"bins": [b.tolist() for b in self.bins], "bin_counts": [c.tolist() for c in self.bin_counts],
                "shares": self.shares.tolist(), "fits": self.fits.tolist(), "scores": self.scores.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.bins = [np.asarray(b, dtype=np.float64) for b in state["bins"]]
        self.bin_counts = [np.asarray(c, dtype=np.float64) for c in state["bin_counts"]]
        self.shares = np.asarray(state["shares"], dtype=np.float64)
        self.fits = np.asarray(state["fits"], dtype=np.float64)
        self.scores = np.asarray(state["scores"], dtype=np.float64)


class HeldOutLearnability:
    """Learnability from the held-out losses of the periodic evaluation: at every evaluation,
    each domain's loss over the last ``window`` fraction of the steps so far is regressed on
    log(step), L = a - b log t (the small-exponent limit of a power law; two parameters, so a
    few points fit stably), and -dL/dt = b / t is its slope. The evaluation samples are the same
    every time, so differences between evaluations carry little sampling noise."""

    def __init__(self, natural_weights, window: float = 0.4, share_decay: float = 0.9):
        self.natural = np.asarray(natural_weights, dtype=np.float64)
        self.window, self.share_decay = window, share_decay
        self.steps: list = []  # evaluation steps and their per-domain losses (NaN: not evaluated)
        self.losses: list = []
        self.shares = self.natural.copy()
        self.slopes = np.zeros(self.natural.size)
        self.scores = np.zeros(self.natural.size)

    def observe(self, step: int, losses: np.ndarray, shares: np.ndarray) -> None:
        """A training step: only its realised shares count here."""
        self.shares = self.share_decay * self.shares + (1.0 - self.share_decay) * np.asarray(shares, dtype=np.float64)

    def observe_evaluation(self, step: int, losses: np.ndarray) -> None:
        """The per-domain held-out losses after ``step`` steps (NaN: not evaluated); refit."""
        if self.steps and step <= self.steps[-1]:
            raise ValueError(f"held-out losses of step {step} arrived after those of step {self.steps[-1]}")
        self.steps.append(int(step))
        self.losses.append(np.asarray(losses, dtype=np.float64).copy())
        steps = np.asarray(self.steps, dtype=np.float64)
        recent = steps >= (1.0 - self.window) * step
        history = np.array(self.losses)[recent]
        log_steps = np.log(steps[recent])
        for k in range(self.natural.size):
            ok = np.isfinite(history[:, k])
            if ok.sum() < MIN_POINTS:
                continue
            x = log_steps[ok] - log_steps[ok].mean()
            self.slopes[k] = -float(x @ history[ok, k] / (x @ x)) / step  # -dL/dt = b / t (x != 0: distinct steps)
        scores = scores_from_slopes(self.natural, self.slopes, self.shares)
        if scores is not None:
            self.scores = scores

    def state_dict(self) -> dict:
        return {"steps": list(self.steps), "losses": [row.tolist() for row in self.losses], "shares": self.shares.tolist(),
                "slopes": self.slopes.tolist(), "scores": self.scores.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.steps = [int(s) for s in state["steps"]]
        self.losses = [np.asarray(row, dtype=np.float64) for row in state["losses"]]
        self.shares = np.asarray(state["shares"], dtype=np.float64)
        self.slopes = np.asarray(state["slopes"], dtype=np.float64)
        self.scores = np.asarray(state["scores"], dtype=np.float64)

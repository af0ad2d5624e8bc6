"""HDS's base mixture: anchored exponentiated gradient around the natural weights, from the
three perspectives' signals. HDS's agent acts as a bounded residual around it (hds.py).

Each step, from the signals of the step just taken:
    U  <- running average of the influence z-scores (mixing/influence.py: first-order drop of the
          natural-mixture loss per unit of weight, Adam-preconditioned, mean gradients; with
          --hds-influence-target valid, of its validation loss, every few steps: see the trainer). One
          step's scores are mostly sampling noise (measured on the real-text benchmark: a
          systematic part of about 0.1 standard deviations, with a lag-1 autocorrelation of
          about 0.1), so the average spans hundreds of steps (decay 0.995).
    u  = the estimate the tilt (and the agent's reward) uses: U shrunk towards its mean by
          positive-part James-Stein, k = max(0, 1 - (D - 3) v / sum (U - mean U)^2), with v the
          variance U would have, about its mean, if every score were noise: each measurement's
          z-scores have variance 1 and sum to 0, so v = V D / (D - 1), V the sum of the squared
          weights the running average gave them. Not rescaled: the tilt is per unit of U, the
          scores' own scale, so noise (U's spread about 0.14 on the real-text benchmark) tilts
          little, k averaging about 2 / (D - 1) on top; a ranking that holds measurement after
          measurement keeps k near 1 and tilts by U, up to a full tilt when it never varies; a
          weak steady signal tilts in proportion to its size. (--hds-influence-shrinkage none:
          u = z(U), which rescales any spread to a full tilt, noise included: at the real-text
          benchmark's end U's spread was that of noise, and the mixtures differed from seed to
          seed.) D counts the domains measured.
    Q  <- running average of the within-domain quality z-scores of the drawn samples
    lam = learnability scores (mixing/learnability.py): scaling laws fitted online to the
          training losses, or (--hds-learnability-source valid) the recent slope of the
          validation losses, which repeated, memorised material cannot lower
    target = softmax(log pi + r * (eta_u clip(u, -2, 2) + eta_l clip(lam, -1, 1) + eta_q clip(z(Q), -2, 2)))
    b  <- (1 - s) b + s target                       (smoothing in time)
    base = floor((1 - a) b + a pi)                    (a share of pi always in)
with r ramping from 0 to 1 over the first ramp_fraction of the run. Anchored, not cumulative:
the target is always a bounded tilt of pi (at most e^(2 eta_u + eta_l + 2 eta_q) between two
domains), so estimation noise cannot integrate into a drift towards one domain, the failure of
cumulative updates (DoReMi's one-hot weights, the free-logit agents here).
A component switched off (an ablation) has no step.
"""

from __future__ import annotations

import numpy as np

from megatron_hds.mixing.base import StepSignals, lift_to_floor
from megatron_hds.mixing.config import HDSConfig
from megatron_hds.mixing.learnability import HeldOutLearnability, Learnability
from megatron_hds.mixing.timeline import clamp, mean_and_std


def zscore(values: np.ndarray) -> np.ndarray:
    """(x - mean) / std across the domains; zeros when they do not differ."""
    mean, std = mean_and_std(values)
    return np.zeros_like(values) if not std > 1e-12 else (values - mean) / std


def james_stein_keep(values: np.ndarray, noise_variance: float) -> float:
    """The share k (the keep factor) of the spread of ``values`` about their mean that positive-part James-Stein
    keeps, given the variance of each one's noise about the mean (1 for fewer than 4 values,
    which it cannot shrink)."""
    values = np.asarray(values, dtype=np.float64)
    centred = values - values.mean()
    spread = float(centred @ centred)
    if values.size <= 3 or noise_variance <= 0.0:
        return 1.0
    return max(0.0, 1.0 - (values.size - 3) * noise_variance / spread) if spread > 0 else 0.0


class BaseMixture:
    """The base mixture and the running averages behind it."""

    def __init__(self, natural_weights, config: HDSConfig, train_iters: int, floor: float,
                 components=("align", "quality", "norm")):
        self.natural = np.asarray(natural_weights, dtype=np.float64)
        self.config = config
        self.floor = floor
        self.ramp_steps = max(1.0, config.ramp_fraction * train_iters)
        self.steps = {"align": config.influence_step if "align" in components else 0.0,
                      "quality": config.quality_step if "quality" in components else 0.0,
                      "learnability": config.learnability_step}
        self.influence = np.zeros(self.natural.size)  # U
        self.influence_noise = np.zeros(self.natural.size)  # V: sum of the squared weights of U's scores
        self.influence_estimate = np.zeros(self.natural.size)  # u, from U and V after each observe
        self.influence_keep = 1.0  # its keep factor k (logged)
        self._influenced_at = None  # the iteration of the last held-out influence measured
        self.quality = np.zeros(self.natural.size)  # Q
        if config.learnability_source == "valid":
            self.learnability = HeldOutLearnability(self.natural, window=config.learnability_window)
        else:
            self.learnability = Learnability(self.natural, fit_interval=config.fit_interval)
        self.smoothed = self.natural.copy()  # b
        self._log_natural = np.log(self.natural)
        self.weights = self.output()

    def output(self) -> np.ndarray:
        anchor = self.config.natural_anchor
        return lift_to_floor((1.0 - anchor) * self.smoothed + anchor * self.natural, self.floor)

    def update(self, signals: StepSignals) -> np.ndarray:
        """Take in the step's signals; return the base mixture of the next step."""
        self.observe(signals)
        return self.mix(signals.iteration)

    def observe(self, signals: StepSignals) -> None:
        """Fold the step's signals into the running scores and the loss histories."""
        decay = self.config.score_smoothing
        influence = signals.extra.get("influence")
        gradients = signals.extra.get("gradients")
        if influence is not None and gradients is not None:
            if self.config.influence_target == "valid":
                # Measured every few steps only: decayed by the steps since the last measurement, so
                # the average spans the same steps whatever the interval (the first by the shortest).
                elapsed = (self.config.influence_interval if self._influenced_at is None
                           else signals.iteration - self._influenced_at)
                self._influenced_at = signals.iteration
                seen, step_decay = gradients.present, decay ** elapsed
            else:
                seen, step_decay = gradients.split, decay
            seen = seen & np.isfinite(influence)  # (a non-finite score would stay in the average for good)
            self.influence[seen] = step_decay * self.influence[seen] + (1.0 - step_decay) * influence[seen]
            self.influence_noise[seen] = step_decay ** 2 * self.influence_noise[seen] + (1.0 - step_decay) ** 2
            self._estimate_influence()
        quality = np.asarray(signals.extra.get("quality", np.full(self.natural.size, np.nan)), dtype=np.float64)
        seen = np.isfinite(quality)
        self.quality[seen] = decay * self.quality[seen] + (1.0 - decay) * quality[seen]
        shares = np.asarray(signals.domain_samples, dtype=np.float64)
        self.learnability.observe(signals.iteration, signals.domain_loss, shares / max(shares.sum(), 1.0))

    def observe_evaluation(self, iteration: int, domain_loss: np.ndarray) -> None:
        """The trainer's periodic validation losses per domain (NaN: not evaluated)."""
        self.learnability.observe_evaluation(iteration, domain_loss)

    def _estimate_influence(self) -> None:
        """u (and its keep factor k) from the running average U and its noise V (module docstring): the
        influence scores the tilt and the agent's reward use."""
        if self.config.influence_shrinkage == "none":
            self.influence_estimate = zscore(self.influence)
            return
        measured = self.influence_noise > 0
        self.influence_estimate = np.zeros_like(self.influence)
        if measured.any():
            scores, count = self.influence[measured], int(measured.sum())
            # About their mean, the noise of D z-scores that sum to 0 has variance D / (D - 1) each.
            noise = float(self.influence_noise[measured].mean()) * count / max(count - 1, 1)
            self.influence_keep = james_stein_keep(scores, noise)
            self.influence_estimate[measured] = scores.mean() + self.influence_keep * (scores - scores.mean())

    def mix(self, iteration: int) -> np.ndarray:
        """The base mixture of the next step from the running scores."""
        ramp = min(1.0, iteration / self.ramp_steps)
        tilt = (self.steps["align"] * clamp(self.influence_estimate, 2.0)
                + self.steps["learnability"] * clamp(self.learnability.scores, 1.0)
                + self.steps["quality"] * clamp(zscore(self.quality), 2.0))
        logits = self._log_natural + ramp * tilt
        target = np.exp(logits - logits.max())
        target /= target.sum()
        mix = self.config.mixture_smoothing
        self.smoothed = (1.0 - mix) * self.smoothed + mix * target
        self.weights = self.output()
        return self.weights.copy()

    def state_dict(self) -> dict:
        return {"influence": self.influence.tolist(), "influence_noise": self.influence_noise.tolist(),
                "quality": self.quality.tolist(),
                "smoothed": self.smoothed.tolist(), "learnability": self.learnability.state_dict(),
                "learnability_source": self.config.learnability_source,
                "influence_target": self.config.influence_target, "influenced_at": self._influenced_at,
                "influence_shrinkage": self.config.influence_shrinkage}

    def load_state_dict(self, state: dict) -> None:
        self.influence = np.asarray(state["influence"], dtype=np.float64)
        self.influence_noise = np.asarray(state.get("influence_noise", np.zeros_like(self.influence)), dtype=np.float64)
        self.quality = np.asarray(state["quality"], dtype=np.float64)
        self.smoothed = np.asarray(state["smoothed"], dtype=np.float64)
        saved = state.get("learnability_source", "train")
        if saved != self.config.learnability_source:
            raise ValueError(f"the checkpoint's HDS learnability was estimated from the {saved} losses; "
                             f"--hds-learnability-source {self.config.learnability_source} cannot continue it")
        saved = state.get("influence_target", "train")
        if saved != self.config.influence_target:
            raise ValueError(f"the checkpoint's HDS influence was measured against the {saved} gradients; "
                             f"--hds-influence-target {self.config.influence_target} cannot continue it")
        saved = state.get("influence_shrinkage", "none")  # (older checkpoints: the z-scored tilt)
        if saved != self.config.influence_shrinkage:
            raise ValueError(f"the checkpoint's HDS influence tilt was {saved} (--hds-influence-shrinkage); "
                             f"--hds-influence-shrinkage {self.config.influence_shrinkage} cannot continue it")
        self._influenced_at = state.get("influenced_at")  # (older checkpoints: the next decays by the interval)
        self.learnability.load_state_dict(state["learnability"])
        self._estimate_influence()
        self.weights = self.output()

"""What the learning agents are paid.

HDS's holistic reward has three components, one per perspective, each measured so that
it is informative and cannot be earned by concentrating the mixture (p = the realised
sample shares of the step, b = the base mixture the agent acted around):
- align:   sum_i (w_i - b_i) u_i, w the weights the step was drawn with, u the influence
           scores (mixing/influence.py; HDS pays the base mixture's estimate from their running
           average, which one step's noise does not drown: base_mixture.py): the first-order
           gain on the natural-mixture loss of the agent's deviation from the base. Zero when
           the agent plays the base.
- quality: sum_i p_i q_i, q_i the mean within-domain z-score of the MTLD of domain i's drawn
           samples: how good the samples were for their domains. Zero in expectation for any
           mixture (each domain is measured against itself; up to the error of its reference
           sample, ~0.03 sd), so no domain earns it by what it is.
- norm:    -sum_l max(0, z_l - threshold), z_l the running z-score of layer l's update ratio
           log(||dW_l|| / ||W_l||): a penalty on abnormally large updates (instability), zero
           otherwise; never a bonus for not learning.
Each component is divided by a running estimate of its scale (the root of a decayed mean of its
squares), so the weights (--hds-lambda-*) compare like with like; one whose scale is at rounding
level (SCALE_FLOOR) pays 0.

AC-ODM's reward is the reference alignment alone: sum_i p_i r_i, r the alignment z-scores.
"""

from __future__ import annotations

import math

import numpy as np

from megatron_hds.mixing.base import StepSignals
from megatron_hds.mixing.config import RewardConfig

WARMUP_OBSERVATIONS = 10  # update ratios seen before the norm component can call one abnormal
# A component whose running scale is below this is rounding residue, not a measurement, and pays 0.
# Without it the normalisation rescales residue to unit size: the base mixture alone plays w = b up
# to rounding, so its alignment was ~1e-18 per step and came out as large as the quality term; and
# HDS's first step, drawn at the base itself, paid its residue as a full unit (the running scale of
# one value is that value). Real components are many orders above it (align ~1e-4..1e-2).
SCALE_FLOOR = 1e-12


def realised_shares(signals: StepSignals) -> np.ndarray:
    samples = np.asarray(signals.domain_samples, dtype=np.float64)
    return samples / max(samples.sum(), 1.0)


class RunningScale:
    """sqrt of a decayed, bias-corrected mean of squares."""

    def __init__(self, decay: float):
        self.decay, self.second, self.count = decay, 0.0, 0

    def update(self, value: float) -> float:
        self.count += 1
        self.second = self.decay * self.second + (1.0 - self.decay) * value * value
        return math.sqrt(self.second / (1.0 - self.decay ** self.count))

    def state_dict(self) -> dict:
        return {"second": self.second, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.second, self.count = float(state["second"]), int(state["count"])


class HolisticReward:
    """HDS's reward of the action that drew a step (module docstring)."""

    def __init__(self, config: RewardConfig, num_matrices: int):
        self.config = config
        self.scales = {name: RunningScale(config.scale_decay) for name in ("align", "quality", "norm")}
        self.ratio_mean = np.zeros(num_matrices)  # running mean and variance of log update ratios
        self.ratio_var = np.zeros(num_matrices)
        self.ratio_count = 0
        self.norm_fired = 0  # steps whose norm penalty was not 0 (logged as a share: is the component alive?)

    def components(self, signals: StepSignals, base: np.ndarray, influence=None) -> dict:
        """Every component (also the ones not paid, for logging), before normalisation; NaN where
        unmeasured. ``influence``: the estimate of the influence scores to pay (default: the
        step's own), paid on every step whose gradients were measured (a step without a validation
        pass included, under --hds-influence-target valid)."""
        shares = realised_shares(signals)
        if influence is None or signals.extra.get("gradients") is None:
            influence = signals.extra.get("influence")
        deviation = np.asarray(signals.weights, dtype=np.float64) - base
        out = {"align": float(np.dot(deviation, influence)) if influence is not None else math.nan}
        quality = signals.extra.get("quality")
        out["quality"] = math.nan if quality is None else float(np.dot(shares, np.nan_to_num(quality)))
        out["norm"] = self._norm_penalty(signals.extra.get("update_ratios"))
        return out

    def _norm_penalty(self, ratios) -> float:
        if ratios is None:
            return math.nan
        logs = np.log(np.maximum(np.asarray(ratios, dtype=np.float64), 1e-12))
        penalty = 0.0
        decay = self.config.scale_decay
        if self.ratio_count >= WARMUP_OBSERVATIONS:
            variance = self.ratio_var / (1.0 - decay ** (self.ratio_count - 1))  # bias-corrected
            z = (logs - self.ratio_mean) / np.sqrt(np.maximum(variance, 1e-12))
            penalty = -float(np.maximum(0.0, z - self.config.norm_threshold).sum())
            self.norm_fired += penalty != 0.0
        self.ratio_count += 1
        if self.ratio_count == 1:
            self.ratio_mean = logs.copy()
        else:  # exponentially weighted mean and variance
            delta = logs - self.ratio_mean
            self.ratio_mean = self.ratio_mean + (1.0 - decay) * delta
            self.ratio_var = decay * (self.ratio_var + (1.0 - decay) * delta * delta)
        return penalty

    @property
    def norm_fired_share(self) -> float:
        """The share of the steps so far whose norm penalty fired (0: the component never paid)."""
        return self.norm_fired / max(self.ratio_count, 1)

    def total(self, components: dict) -> float:
        """Sum of the paid components, each over its running scale, times its weight; NaN if a paid
        one is unmeasured. Every component's scale follows it, paid or not (ablations compare)."""
        cfg = self.config
        weights = {"align": cfg.lambda_align, "quality": cfg.lambda_quality, "norm": cfg.lambda_norm}
        total = 0.0
        for name, scale in self.scales.items():
            value = components[name]
            if not math.isfinite(value):
                if name in cfg.components:
                    return math.nan
                continue
            size = scale.update(value)
            if name in cfg.components:
                total += weights[name] * (value / size if size > SCALE_FLOOR else 0.0)
        return total

    def state_dict(self) -> dict:
        return {"scales": {k: v.state_dict() for k, v in self.scales.items()}, "ratio_mean": self.ratio_mean.tolist(),
                "ratio_var": self.ratio_var.tolist(), "ratio_count": self.ratio_count, "norm_fired": self.norm_fired}

    def load_state_dict(self, state: dict) -> None:
        for name, scale in self.scales.items():
            scale.load_state_dict(state["scales"][name])
        self.ratio_mean = np.asarray(state["ratio_mean"], dtype=np.float64)
        self.ratio_var = np.asarray(state["ratio_var"], dtype=np.float64)
        self.ratio_count = int(state["ratio_count"])
        self.norm_fired = int(state.get("norm_fired", 0))  # (not counted before 2026-12-03: from the resume on)


def alignment_reward(signals: StepSignals) -> float:
    """AC-ODM's reward: the realised shares times the reference alignment scores (NaN: unmeasured)."""
    scores = signals.extra.get("alignment")
    return float(np.dot(realised_shares(signals), scores)) if scores is not None else math.nan

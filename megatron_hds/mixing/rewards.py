"""What the learning schedulers (HDS, AC-ODM) see and are paid: the state vector built
from a step's Signals, and the three reward components of HDS with their combination.

State (METHOD.md "State"): per-domain mean training loss, its change since the previous
step, per-domain sample count, Frobenius norms of L selected matrices, the norms of
their change, and training progress t/T. Each group is z-scored across its elements
and clamped to [-3, 3]; a domain that drew no sample this step keeps its last loss.

Rewards (METHOD.md "Rewards"), each a float, all finite or the step is skipped:
- align:   sum_i w_i r_i, r_i = the alignment score of domain i (inter-domain influence)
- quality: token-weighted normalised MTLD of the drawn samples, times progress t/T
- norm:    min(cap, 1 / (sum_l | ||W_l^t|| - ||W_l^{t-1}|| | + 1e-8))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_hds.mixing.base import Signals

REWARD_COMPONENTS = ("align", "quality", "norm")


def zscore_clamped(values: np.ndarray, clip: float = 3.0) -> np.ndarray:
    """(x - mean) / std over the group, clamped; a constant group maps to zeros."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values
    std = values.std()
    if not np.isfinite(std) or std < 1e-12:
        return np.zeros_like(values)
    return np.clip((values - values.mean()) / std, -clip, clip)


class StateBuilder:
    """Turns consecutive Signals into state vectors of length 3D + 2L + 1."""

    def __init__(self, num_domains: int, num_matrices: int):
        self.num_domains = num_domains
        self.num_matrices = num_matrices
        self.last_loss = np.full(num_domains, np.nan)

    @property
    def state_dim(self) -> int:
        return 3 * self.num_domains + 2 * self.num_matrices + 1

    def initial_state(self) -> np.ndarray:
        """The state before any step: nothing measured yet, progress 0."""
        return np.zeros(self.state_dim)

    def build(self, signals: Signals) -> np.ndarray:
        loss = np.asarray(signals.domain_loss, dtype=np.float64)
        drawn = np.isfinite(loss)
        previous = self.last_loss.copy()
        current = np.where(drawn, loss, previous)
        # Domains never seen yet take the mean of the seen ones, so they sit at z = 0.
        known = np.isfinite(current)
        fill = current[known].mean() if known.any() else 0.0
        current = np.where(known, current, fill)
        change = current - np.where(np.isfinite(previous), previous, current)
        self.last_loss = np.where(drawn, loss, self.last_loss)
        norms = np.asarray(signals.extra.get("weight_norms", np.zeros(self.num_matrices)), dtype=np.float64)
        change_norms = np.asarray(signals.extra.get("weight_change_norms", np.zeros(self.num_matrices)),
                                  dtype=np.float64)
        parts = [
            zscore_clamped(current),
            zscore_clamped(change),
            zscore_clamped(np.asarray(signals.domain_samples, dtype=np.float64)),
            zscore_clamped(norms),
            zscore_clamped(change_norms),
            np.array([signals.progress]),
        ]
        return np.concatenate(parts)

    def state_dict(self) -> dict:
        return {"last_loss": self.last_loss.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.last_loss = np.asarray(state["last_loss"], dtype=np.float64)


@dataclass(frozen=True)
class RewardConfig:
    """Which reward components count and with what coefficient (reference defaults 1, 10, 10)."""

    components: tuple = REWARD_COMPONENTS  # --hds-reward align,quality,norm (ablations drop some)
    lambda_align: float = 1.0
    lambda_quality: float = 10.0
    lambda_norm: float = 10.0
    norm_cap: float = 5.0  # the norm reward never exceeds this
    mtld_min: float = 2.0  # MTLD normalisation: (mtld - min) / (max - min), clamped to [0, 1]
    mtld_max: float = 1024.0  # the paper uses the sequence length

    def __post_init__(self):
        unknown = set(self.components) - set(REWARD_COMPONENTS)
        if unknown or not self.components:
            raise ValueError(f"reward components {list(self.components)} are invalid: choose from "
                             f"{', '.join(REWARD_COMPONENTS)}")
        if not self.mtld_max > self.mtld_min:
            raise ValueError(f"mtld_max={self.mtld_max} must exceed mtld_min={self.mtld_min}")


class HolisticReward:
    """The reward of the action whose batch produced these Signals."""

    def __init__(self, config: RewardConfig):
        self.config = config
        self.previous_norms = None

    def components(self, signals: Signals) -> dict:
        """Every component (also the ones not counted, for logging); NaN where unmeasured."""
        cfg = self.config
        out = {}
        scores = signals.extra.get("alignment")
        out["align"] = float(np.dot(signals.weights, scores)) if scores is not None else float("nan")
        quality = signals.extra.get("quality")
        if quality is None:
            out["quality"] = float("nan")
        else:
            normalised = np.clip((quality - cfg.mtld_min) / (cfg.mtld_max - cfg.mtld_min), 0.0, 1.0)
            out["quality"] = float(normalised * signals.progress)
        norms = signals.extra.get("weight_norms")
        if norms is None:
            out["norm"] = float("nan")
        else:
            norms = np.asarray(norms, dtype=np.float64)
            if self.previous_norms is None or self.previous_norms.shape != norms.shape:
                out["norm"] = 0.0  # nothing to compare with on the first step
            else:
                drift = float(np.abs(norms - self.previous_norms).sum())
                out["norm"] = float(min(cfg.norm_cap, 1.0 / (drift + 1e-8)))
            self.previous_norms = norms
        return out

    def total(self, components: dict) -> float:
        """The combined reward; NaN if a counted component is unmeasured or non-finite."""
        cfg = self.config
        coefficient = {"align": cfg.lambda_align, "quality": cfg.lambda_quality, "norm": cfg.lambda_norm}
        return float(sum(coefficient[name] * components[name] for name in cfg.components))

    def state_dict(self) -> dict:
        return {"previous_norms": None if self.previous_norms is None else self.previous_norms.tolist()}

    def load_state_dict(self, state: dict) -> None:
        norms = state.get("previous_norms")
        self.previous_norms = None if norms is None else np.asarray(norms, dtype=np.float64)

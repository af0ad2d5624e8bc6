"""What the learning schedulers (HDS, AC-ODM) are paid: the three reward components of HDS
and their combination (RewardConfig in mixing/config.py says which count, with what weight).

Components, each a float, all finite or the step is skipped:
- align:   sum_i w_i r_i, r_i = the alignment score of domain i (inter-domain influence)
- quality: token-weighted normalised MTLD of the drawn samples, times progress t/T
- norm:    min(cap, 1 / (sum_l | ||W_l^t|| - ||W_l^{t-1}|| | + 1e-8))
"""

from __future__ import annotations

import numpy as np

from megatron_hds.mixing.base import StepSignals
from megatron_hds.mixing.config import RewardConfig


class HolisticReward:
    """The reward of the action whose batch produced these StepSignals."""

    def __init__(self, config: RewardConfig, mtld_max: float):
        if not mtld_max > config.mtld_min:
            raise ValueError(f"the MTLD normalisation's maximum {mtld_max} (the sequence length) must exceed "
                             f"--hds-mtld-min {config.mtld_min}")
        self.config = config
        self.mtld_max = float(mtld_max)  # the paper normalises by the sequence length
        self.previous_norms = None

    def components(self, signals: StepSignals) -> dict:
        """Every component (also the ones not counted, for logging); NaN where unmeasured."""
        cfg = self.config
        out = {}
        scores = signals.extra.get("alignment")
        out["align"] = float(np.dot(signals.weights, scores)) if scores is not None else float("nan")
        quality = signals.extra.get("quality")
        if quality is None:
            out["quality"] = float("nan")
        else:
            normalised = np.clip((quality - cfg.mtld_min) / (self.mtld_max - cfg.mtld_min), 0.0, 1.0)
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

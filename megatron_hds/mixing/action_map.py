"""What a learning agent's action means: D logits (or a bounded adjustment of the starting
mixture's logits) mapped onto the floored simplex of domain weights. Shared by SAC and DDPG.

The map is part of the environment, so the MDP's action space is all of R^D (or the box
[-c, c]^D when bounded) and the agents apply unchanged; see ActionMap.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F


def effective_floor(num_domains: int, weight_floor: Optional[float]) -> float:
    """The weight floor in effect: weight_floor, or 0.1 / D when it is None."""
    return 0.1 / num_domains if weight_floor is None else float(weight_floor)


def weights_from_logits(logits, floor: float) -> np.ndarray:
    """floor + (1 - D*floor) * softmax(logits) over the last axis, in float64: every entry
    is >= floor (adding a non-negative number to floor cannot round below it) and each
    row sums to 1 up to rounding."""
    u = np.asarray(logits, dtype=np.float64)
    z = np.exp(u - u.max(axis=-1, keepdims=True))
    p = z / z.sum(axis=-1, keepdims=True)
    return floor + (1.0 - u.shape[-1] * floor) * p


def logits_for_weights(weights, floor: float) -> np.ndarray:
    """A logit vector u with floor + (1 - D*floor) * softmax(u) == weights (weights >= floor),
    centred to mean 0."""
    weights = np.asarray(weights, dtype=np.float64)
    share = (weights - floor) / (1.0 - weights.shape[-1] * floor)
    logits = np.log(np.clip(share, 1e-12, None))
    return logits - logits.mean(axis=-1, keepdims=True)


def torch_weights_from_logits(logits: torch.Tensor, floor: float) -> torch.Tensor:
    return floor + (1.0 - logits.shape[-1] * floor) * torch.softmax(logits, dim=-1)



class ActionMap:
    """What an agent's action means.

    logits = center + a, weights = floor + (1 - D*floor) * softmax(logits). With bound None
    the action a is any vector in R^D and center is 0: a are the logits. Runs default to
    bound 2 (--hds-action-bound). With
    bound c the action lives in the box [-c, c]^D: the policy draws an unbounded u and acts
    a = c * tanh(u) (squash), and center is the initial weights' logits, so the action is a
    bounded adjustment of the starting mixture, each domain's share moving by at most a
    factor e^(2c) against another's. Why the bound: with unbounded logits nothing opposes a
    drift of the mean logits when the reward barely depends on the action, and both learned
    schedulers drifted to one domain (docs/experiments/). Squashed, SAC's entropy carries the
    tanh Jacobian, which pulls the policy back from the box's faces, and a deterministic
    actor can never leave the box."""

    def __init__(self, num_domains: int, floor: float, bound: Optional[float] = None,
                 center: Optional[tuple] = None):
        self.floor, self.bound = float(floor), bound
        self.center = np.zeros(num_domains) if center is None else np.asarray(center, dtype=np.float64)
        self._torch_center: dict = {}

    def weights(self, action) -> np.ndarray:
        """Floored simplex weights (float64) of actions [..., D]."""
        return weights_from_logits(self.center + np.asarray(action, dtype=np.float64), self.floor)

    def torch_weights(self, action: torch.Tensor) -> torch.Tensor:
        """The same map in torch, differentiable in the action."""
        key = (action.device, action.dtype)
        if key not in self._torch_center:
            self._torch_center[key] = torch.as_tensor(self.center, device=action.device, dtype=action.dtype)
        return torch_weights_from_logits(self._torch_center[key] + action, self.floor)

    def action_for_weights(self, weights) -> np.ndarray:
        """The action whose weights are ``weights`` (each >= floor); inside the box when bounded."""
        action = logits_for_weights(weights, self.floor) - self.center
        if self.bound is not None:
            worst = float(np.max(np.abs(action)))
            if worst >= self.bound:
                raise ValueError(f"weights {np.round(weights, 6).tolist()} need an action of size {worst:.4g}, "
                                 f"outside the action bound {self.bound} around the initial weights")
        return action

    def squash(self, u: torch.Tensor) -> torch.Tensor:
        """The action for an unbounded policy sample u: c * tanh(u), or u itself when unbounded."""
        return u if self.bound is None else self.bound * torch.tanh(u)

    def squash_log_det(self, u: torch.Tensor) -> torch.Tensor:
        """log |d squash / du| summed over the last axis: sum log(c * (1 - tanh(u)^2)), written
        as log c + 2 (log 2 - u - softplus(-2u)) so it stays finite for large |u|."""
        if self.bound is None:
            return torch.zeros(u.shape[:-1], dtype=u.dtype, device=u.device)
        per = math.log(self.bound) + 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
        return per.sum(-1)

    def unsquash(self, action: torch.Tensor) -> torch.Tensor:
        """The u with squash(u) == action (actions on the box's faces are pulled just inside)."""
        if self.bound is None:
            return action
        return torch.atanh((action / self.bound).clamp(-1.0 + 1e-6, 1.0 - 1e-6))

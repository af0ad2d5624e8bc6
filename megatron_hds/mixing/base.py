"""The scheduler interface: a MixtureScheduler sees one StepSignals record per step and answers
with the domain weights of the next step. Schedulers live on global rank 0 and know
nothing of torch.distributed; the training loop gathers the signals and broadcasts the
weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol, runtime_checkable

import numpy as np


@dataclass
class StepSignals:
    """What the training loop measured in the step just taken (arrays have one entry per domain)."""

    iteration: int  # steps completed, this one included
    train_iters: int  # the run's length, for progress-dependent schedulers
    weights: np.ndarray  # the weights this step's batch was drawn with
    domain_loss: np.ndarray  # mean per-token training loss of each domain's samples (NaN: none drawn)
    domain_tokens: np.ndarray  # loss tokens of each domain in the step
    domain_samples: np.ndarray  # samples of each domain in the step
    loss: float  # mean per-token loss over the whole global batch
    extra: dict = field(default_factory=dict)  # further signals (gradient alignment, norms, quality)
    # probability that the step observed each domain (drew a sample of it), given the weights and the
    # batch layout (MixtureSampler.observation_probabilities); None: the weights themselves
    observed: Optional[np.ndarray] = None

    @property
    def progress(self) -> float:
        return self.iteration / self.train_iters


@runtime_checkable
class MixtureScheduler(Protocol):
    """Chooses domain weights online."""

    name: str

    def initial_weights(self) -> np.ndarray:
        """The weights of the first step."""

    def observe(self, signals: StepSignals) -> np.ndarray:
        """Learn from the step just taken; return the next step's weights."""

    def last_reward(self) -> dict | None:
        """Reward components of the last observation (learning schedulers), for logging."""

    # Optional: observe_evaluation(iteration, domain_loss) receives the per-domain validation
    # losses of each periodic evaluation (HDS with --hds-learnability-source valid).

    def state_dict(self) -> dict:
        """Everything needed to continue exactly after a resume."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned."""


def normalized(weights, num_domains: int, what: str = "weights") -> np.ndarray:
    """float64 weights summing to 1; ValueError naming the vector when it cannot be."""
    array = np.asarray(weights, dtype=np.float64).reshape(-1)
    if array.size != num_domains:
        raise ValueError(f"{what} {list(array)} has {array.size} entries, expected one per domain ({num_domains})")
    if not np.all(np.isfinite(array)) or np.any(array < 0) or not array.sum() > 0:
        raise ValueError(f"{what} {list(array)} must be finite, non-negative and sum to a positive value")
    return array / array.sum()


def lift_to_floor(weights: np.ndarray, floor: float) -> np.ndarray:
    """The weights with every entry >= floor, still summing to 1: entries below the floor
    are raised to it and the others scaled down together, repeated until none falls
    below (a single clip-and-renormalise can push a raised entry under the floor again).
    Weights already on the floored simplex come back unchanged."""
    weights = np.asarray(weights, dtype=np.float64)
    pinned = np.zeros(weights.size, dtype=bool)
    while True:
        low = ~pinned & (weights < floor)
        if not low.any():
            return weights
        pinned |= low
        free = weights[~pinned]
        weights = np.where(pinned, floor, 0.0)
        weights[~pinned] = free * (1.0 - pinned.sum() * floor) / free.sum()

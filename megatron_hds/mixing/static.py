"""Fixed mixtures: the natural token shares (or user weights), and uniform."""

from __future__ import annotations

import numpy as np

from megatron_hds.mixing.base import StepSignals, normalized


class StaticScheduler:
    """The same weights every step."""

    def __init__(self, weights, name: str = "static"):
        self.name = name
        self._weights = normalized(weights, len(weights), f"{name} weights")

    def initial_weights(self) -> np.ndarray:
        return self._weights.copy()

    def observe(self, signals: StepSignals) -> np.ndarray:
        return self._weights.copy()

    def last_reward(self) -> dict | None:
        return None

    def state_dict(self) -> dict:
        return {"name": self.name, "weights": self._weights.tolist()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name or not np.allclose(state.get("weights"), self._weights):
            raise ValueError(
                f"checkpoint's mixture scheduler {state.get('name')!r} with weights {state.get('weights')} "
                f"differs from this run's {self.name!r} with weights {self._weights.tolist()}")

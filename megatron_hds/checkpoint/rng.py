"""Random-number-generator state in checkpoints: Python, numpy, torch CPU, the accelerator's, and
the TP RNG tracker's, captured and restored together so a resumed run draws the same numbers."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


def _accelerator() -> tuple[str | None, Any]:
    """(device type, torch device module) of the visible accelerator, or (None, None)."""
    acc = getattr(torch, "accelerator", None)
    if acc is not None and acc.is_available():
        dev = acc.current_accelerator()
        if dev is not None:
            return dev.type, torch.get_device_module(dev.type)
    if torch.cuda.is_available():
        return "cuda", torch.cuda
    return None, None


def capture_rng_state(tracker_states: Any = None) -> dict:
    """Python, numpy, torch CPU and (when present) accelerator RNG states; ``tracker_states``
    is the TP RNG tracker's own state, stored as given under ``rng_tracker``."""
    dev_type, dev_mod = _accelerator()
    return {
        "random_rng_state": random.getstate(),
        "np_rng_state": np.random.get_state(),
        "torch_rng_state": torch.get_rng_state(),
        "accelerator_type": dev_type,
        "accelerator_rng_state": dev_mod.get_rng_state() if dev_mod is not None else None,
        "rng_tracker": tracker_states,
    }


def restore_rng_state(state: Mapping) -> Any:
    """Restore what :func:`capture_rng_state` captured; returns the ``rng_tracker`` entry
    (None when absent) for the caller to hand back to its tracker."""
    missing = [k for k in ("random_rng_state", "np_rng_state", "torch_rng_state") if k not in state]
    if missing:
        raise KeyError(f"RNG state lacks {missing}; found keys {sorted(state)}")
    random.setstate(state["random_rng_state"])
    np.random.set_state(state["np_rng_state"])
    torch.set_rng_state(state["torch_rng_state"].cpu())
    saved_type = state.get("accelerator_type")
    saved_acc = state.get("accelerator_rng_state")
    if saved_acc is not None:
        dev_type, dev_mod = _accelerator()
        if dev_type == saved_type:
            dev_mod.set_rng_state(saved_acc.cpu())
        else:
            logger.warning(
                "checkpoint holds a %s RNG state but this process has %s; not restoring it",
                saved_type,
                dev_type or "no accelerator",
            )
    return state.get("rng_tracker")

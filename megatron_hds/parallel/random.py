"""Device-agnostic RNG tracker for TP-consistent dropout.

Two streams: the device's default generator, seeded identically on all TP ranks
of a stage, drives dropout on replicated activations (so the TP copies stay equal);
the "tensor-parallel" stream, seeded differently per TP rank, drives dropout on
TP-sharded activations (attention probabilities of this rank's heads). ``fork``
swaps a named stream into the default generator for the duration of a block, so
any op that draws from the default generator (F.dropout, SDPA's dropout) uses it.

``checkpoint`` is activation recompute that replays both streams: the recomputed
forward in backward draws the same dropout masks as the original one.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict

import torch
import torch.utils.checkpoint

TENSOR_PARALLEL_RNG = "tensor-parallel"

# Offsets as in Megatron, so seeds differ per pipeline stage and per TP rank.
_PP_SEED_OFFSET = 100
_TP_SEED_OFFSET = 2718


def _get_state(device: torch.device) -> torch.Tensor:
    if device.type == "cpu":
        return torch.get_rng_state()
    return getattr(torch, device.type).get_rng_state(device)


def _set_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cpu":
        torch.set_rng_state(state)
    else:
        getattr(torch, device.type).set_rng_state(state, device)


def _seed_default(device: torch.device, seed: int) -> None:
    if device.type == "cpu":
        torch.manual_seed(seed)
    else:
        with getattr(torch, device.type).device(device):
            getattr(torch, device.type).manual_seed(seed)


class RNGStatesTracker:
    """Named RNG states for one device; ``fork(name)`` runs a block under that state."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.states: Dict[str, torch.Tensor] = {}

    def add(self, name: str, seed: int) -> None:
        if name in self.states:
            raise ValueError(f"RNG state {name!r} already exists")
        saved = _get_state(self.device)
        _seed_default(self.device, seed)
        self.states[name] = _get_state(self.device)
        _set_state(self.device, saved)

    @contextlib.contextmanager
    def fork(self, name: str = TENSOR_PARALLEL_RNG):
        if name not in self.states:
            raise ValueError(f"RNG state {name!r} was never added; known: {sorted(self.states)}")
        saved = _get_state(self.device)
        _set_state(self.device, self.states[name])
        try:
            yield
        finally:
            self.states[name] = _get_state(self.device)
            _set_state(self.device, saved)

    @contextlib.contextmanager
    def replay(self, states: Dict[str, torch.Tensor]):
        """Run a block with the streams at ``states``, then put back the states they had."""
        current = self.states
        self.states = {name: state.clone() for name, state in states.items()}
        try:
            yield
        finally:
            self.states = current

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {name: state.clone() for name, state in self.states.items()}

    def load_state_dict(self, states: Dict[str, torch.Tensor]) -> None:
        self.states = {name: state.clone() for name, state in states.items()}


def seed_default_generator(seed: int, pp_rank: int, device: torch.device) -> None:
    """Seed the device's default generator identically on all TP ranks of a pipeline stage."""
    _seed_default(torch.device(device), seed + _PP_SEED_OFFSET * pp_rank)


def build_rng_tracker(seed: int, tp_rank: int, pp_rank: int, device: torch.device) -> RNGStatesTracker:
    """A tracker holding the tensor-parallel stream (distinct per TP rank and per stage)."""
    tracker = RNGStatesTracker(device)
    tracker.add(TENSOR_PARALLEL_RNG, seed + _TP_SEED_OFFSET + _PP_SEED_OFFSET * pp_rank + tp_rank)
    return tracker


def checkpoint(function: Callable, rng_tracker: RNGStatesTracker, *args):
    """``function(*args)`` keeping only its inputs; backward recomputes the rest.

    torch's non-reentrant checkpoint replays the default generator; the tracker's streams
    are snapshotted at forward time and replayed the same way, so dropout inside the
    recomputed block (replicated or per TP rank) draws the masks the forward drew.
    Collectives inside ``function`` run again in backward, on every rank of the group alike.
    """
    def contexts():  # called once, when the forward starts
        snapshot = rng_tracker.state_dict()
        return contextlib.nullcontext(), rng_tracker.replay(snapshot)

    return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False, context_fn=contexts,
                                             preserve_rng_state=True)

"""The one place that turns the --mixing choice into a scheduler object."""

from __future__ import annotations

import numpy as np

from megatron_hds.mixing.action_map import effective_floor, logits_for_weights
from megatron_hds.mixing.agent_base import AgentShape
from megatron_hds.mixing.base import lift_to_floor, normalized
from megatron_hds.mixing.config import MixingConfig
from megatron_hds.mixing.static import StaticScheduler
from megatron_hds.mixing.timeline import StateBuilder

# Schedulers that need gradient probes, weight norms and sample quality every step.
LEARNING_METHODS = ("hds", "acodm")


def starting_weights(mixing: MixingConfig, natural_weights) -> np.ndarray:
    """The weights a run starts from: --mixing-weights (numbers or 'uniform'), else the natural ones."""
    num_domains = len(natural_weights)
    given = np.ones(num_domains) if mixing.weights == "uniform" else mixing.weights
    return normalized(given if given is not None else natural_weights, num_domains,
                      "--mixing-weights" if given is not None else "natural weights")


def agent_shape(mixing: MixingConfig, start: np.ndarray, num_matrices: int) -> AgentShape:
    """The learning agents' sizes; a bounded action adjusts the starting mixture, so its zero
    action means the (floored) starting weights."""
    num_domains = start.size
    center = None
    if mixing.agent.action_bound is not None:
        floor = effective_floor(num_domains, mixing.agent.weight_floor)
        center = tuple(logits_for_weights(lift_to_floor(start, floor), floor))
    return AgentShape(StateBuilder(num_domains, num_matrices).state_dim, num_domains, center)


def build_scheduler(mixing: MixingConfig, natural_weights, num_matrices: int, train_iters: int):
    """The scheduler for MixingConfig.method, starting from the natural (or given) weights."""
    num_domains = len(natural_weights)
    start = starting_weights(mixing, natural_weights)
    if mixing.method == "uniform":
        return StaticScheduler(np.full(num_domains, 1.0 / num_domains), name="uniform")
    if mixing.method == "static":
        return StaticScheduler(start)
    if mixing.method == "odm":
        from megatron_hds.mixing.odm import ODMScheduler

        return ODMScheduler(num_domains, mixing.odm, initial_weights=start, update_interval=mixing.update_interval,
                            weight_floor=mixing.weight_floor)
    if mixing.method == "acodm":
        from megatron_hds.mixing.acodm import ACODMScheduler

        return ACODMScheduler(start, num_matrices, train_iters, mixing, agent_shape(mixing, start, num_matrices))
    if mixing.method == "hds":
        from megatron_hds.mixing.hds import HDSScheduler

        return HDSScheduler(start, num_matrices, train_iters, mixing)
    raise ValueError(f"unknown mixing method {mixing.method!r}")

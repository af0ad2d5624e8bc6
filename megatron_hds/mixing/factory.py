"""The one place that turns the --mixing choice into a scheduler object."""

from __future__ import annotations

import numpy as np

from megatron_hds.config import MixingConfig
from megatron_hds.mixing.base import lift_to_floor, normalized
from megatron_hds.mixing.sac import effective_floor, logits_for_weights
from megatron_hds.mixing.static import StaticScheduler

# Schedulers that need gradient probes, weight norms and sample quality every step.
LEARNING_METHODS = ("hds", "acodm")


def build_scheduler(mixing: MixingConfig, natural_weights, num_matrices: int, train_iters: int, seq_length: int):
    """The scheduler for MixingConfig.method, starting from the natural (or given) weights."""
    num_domains = len(natural_weights)
    given = np.ones(num_domains) if mixing.weights == "uniform" else mixing.weights
    start = normalized(given if given is not None else natural_weights, num_domains,
                       "--mixing-weights" if given is not None else "natural weights")
    if mixing.method == "uniform":
        return StaticScheduler(np.full(num_domains, 1.0 / num_domains), name="uniform")
    if mixing.method == "static":
        return StaticScheduler(start)
    if mixing.method == "odm":
        from megatron_hds.mixing.odm import ODMScheduler

        return ODMScheduler(num_domains, initial_weights=start, variant=mixing.odm_variant,
                            smoothing=mixing.odm_smoothing, warmup_steps=mixing.odm_warmup_steps,
                            update_interval=mixing.update_interval, weight_floor=mixing.weight_floor)
    state_dim = 3 * num_domains + 2 * num_matrices + 1
    bound = mixing.agent_action_bound
    floor = effective_floor(num_domains, mixing.agent_weight_floor)
    # A bounded action adjusts the starting mixture: the zero action means the initial weights.
    center = None if bound is None else tuple(logits_for_weights(lift_to_floor(start, floor), floor))
    if mixing.method == "acodm":
        from megatron_hds.mixing.acodm import ACODMScheduler, DDPGConfig

        ddpg = DDPGConfig(
            state_dim=state_dim, num_domains=num_domains, gamma=mixing.agent_gamma, tau=mixing.agent_tau,
            buffer_size=mixing.agent_buffer_size, batch_size=mixing.agent_batch_size, actor_lr=mixing.agent_lr,
            critic_lr=mixing.agent_lr, hidden_sizes=tuple(mixing.agent_hidden_sizes),
            noise_std=mixing.acodm_noise_std, weight_floor=mixing.agent_weight_floor, seed=mixing.agent_seed,
            action_bound=bound, action_center=center)
        return ACODMScheduler(start, num_matrices, train_iters, ddpg, mixing.warmup_fraction, mixing.update_interval,
                              mixing.overlap_update)
    if mixing.method == "hds":
        from megatron_hds.mixing.hds import HDSConfig, HDSScheduler
        from megatron_hds.mixing.rewards import RewardConfig
        from megatron_hds.mixing.sac import SACConfig

        sac = SACConfig(
            state_dim=state_dim, num_domains=num_domains, gamma=mixing.agent_gamma,
            tau=mixing.agent_tau, buffer_size=mixing.agent_buffer_size, batch_size=mixing.agent_batch_size,
            actor_lr=mixing.agent_lr, critic_lr=mixing.agent_lr, alpha_lr=mixing.agent_lr,
            hidden_sizes=tuple(mixing.agent_hidden_sizes), encoder=mixing.hds_encoder,
            weight_floor=mixing.agent_weight_floor, action_bound=bound, action_center=center,
            seed=mixing.agent_seed, log_std_max=mixing.agent_log_std_max,
            log_alpha_init=mixing.agent_log_alpha_init, target_entropy=mixing.agent_target_entropy)
        reward = RewardConfig(components=tuple(mixing.hds_reward), lambda_align=mixing.hds_lambda_align,
                              lambda_quality=mixing.hds_lambda_quality, lambda_norm=mixing.hds_lambda_norm,
                              mtld_max=float(seq_length))
        return HDSScheduler(start, num_matrices, train_iters, sac, reward,
                            HDSConfig(mixing.warmup_fraction, mixing.update_interval, mixing.overlap_update))
    raise ValueError(f"unknown mixing method {mixing.method!r}")

"""HDS: the Holistic Data Scheduler. Its three perspectives (data quality, inter-domain
influence, model weight norms) are measured every step (collector.py) and act twice:

1. The base mixture (base_mixture.py): an anchored exponentiated-gradient tilt of the natural
   weights by the influence, learnability (and, optionally, quality) scores. Principled on its
   own: `--hds-agent none` runs it alone, "the same mixture without SAC".
2. A SAC agent (sac.py) acting as a bounded residual around it: the weights are
   floor(softmax(log base + a)), a in [-c, c]^D (c = --hds-residual-bound), paid the holistic
   reward (rewards.py), whose components are zero-mean for the base itself, so the agent is
   paid only for deviations that help. It plays its policy's mean with small exploration noise.
   Its warm-up plays the base with small random residuals, and the agent is cloned to them
   (AgentTimeline), so it starts at the base.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from megatron_hds.mixing.action_map import effective_floor, weights_from_logits
from megatron_hds.mixing.agent_base import AgentShape
from megatron_hds.mixing.base import StepSignals, lift_to_floor, normalized
from megatron_hds.mixing.base_mixture import BaseMixture
from megatron_hds.mixing.config import MixingConfig
from megatron_hds.mixing.rewards import HolisticReward
from megatron_hds.mixing.sac import SACAgent
from megatron_hds.mixing.timeline import AgentTimeline, StateBuilder, clamp

# Per-domain state groups HDS adds to the reference ones: influence, learnability, quality, log(base / natural).
HDS_DOMAIN_GROUPS = 4


def hds_state_builder(num_domains: int, num_matrices: int) -> StateBuilder:
    return StateBuilder(num_domains, num_matrices, extra_domain_groups=HDS_DOMAIN_GROUPS)


def residual_shape(num_domains: int, num_matrices: int) -> AgentShape:
    """The residual agent's sizes: its action is relative to the base mixture (no centre)."""
    builder = hds_state_builder(num_domains, num_matrices)
    return AgentShape(builder.state_dim, num_domains, domain_features=builder.domain_groups)


class HDSScheduler(AgentTimeline):
    """HDS on rank 0: the base mixture and, unless --hds-agent none, the SAC residual."""

    name = "hds"
    reweigh_every_step = True

    def __init__(self, initial_weights, num_matrices: int, train_iters: int, mixing: MixingConfig):
        num_domains = len(initial_weights)
        # The base mixture's anchor: the natural weights, or --mixing-weights.
        self.natural = normalized(initial_weights, num_domains, "HDS initial weights")
        self.floor = effective_floor(num_domains, mixing.agent.weight_floor)
        self.bound = mixing.hds.residual_bound
        self.config = mixing.hds
        self.reward = HolisticReward(mixing.reward, num_matrices)
        self.base = BaseMixture(self.natural, mixing.hds, train_iters, self.floor, mixing.reward.components)
        self.weights = self.base.weights.copy()
        self._base_in_force = self.base.weights.copy()
        # The residual agent: bound c, no centre, no floor of its own (the mixture's floor is applied here).
        agent_config = dataclasses.replace(mixing.agent, action_bound=self.bound, weight_floor=0.0)
        agent = SACAgent(agent_config, mixing.sac, residual_shape(num_domains, num_matrices))
        self.rng = np.random.default_rng([mixing.agent.seed, 7])  # warm-up residuals
        self.uses_agent = mixing.hds.agent == "sac"
        super().__init__(self.natural, train_iters, agent, hds_state_builder(num_domains, num_matrices), mixing)
        self.weights = self._weights(self.action)

    def initial_weights(self) -> np.ndarray:
        return self.weights.copy()

    # ---- the timeline's hooks ------------------------------------------------------------------
    def _initial_action(self) -> np.ndarray:
        return np.zeros(len(self.natural))  # the base itself

    def _reward(self, signals: StepSignals) -> tuple[dict, float]:
        self.base.observe(signals)
        # The step's influence scores are mostly noise: the base mixture's estimate from their running
        # average is the one paid.
        parts = self.reward.components(signals, self._base_in_force, self.base.influence_estimate)
        return parts, self.reward.total(parts)

    def _next_state(self, signals: StepSignals) -> np.ndarray:
        base = self.base.mix(signals.iteration)
        self._base_in_force = base
        groups = (self.base.influence, self.base.learnability.scores, self.base.quality, np.log(base / self.natural))
        return self.states.build(signals, groups)

    def _explore(self, action: np.ndarray) -> np.ndarray:
        """action plus small Gaussian noise (std --hds-exploration x the bound), kept inside the box."""
        noise = self.rng.normal(size=len(self.natural)) * self.config.exploration * self.bound
        return clamp(action + noise, 0.999 * self.bound)

    def _warmup_action(self, state) -> np.ndarray:
        return self._explore(self._initial_action()) if self.uses_agent else self._initial_action()

    def _policy_action(self, state) -> np.ndarray:
        """The policy's mean with small exploration: SAC's own samples would spread the residual
        over its whole box while the entropy term is large, and every step trains the model."""
        if not self.uses_agent:
            return self._initial_action()
        return self._explore(self.agent.act(state, deterministic=True, weights=False)[0])

    def _weights(self, action) -> np.ndarray:
        """floor(softmax(log base + action)): the base mixture adjusted by the residual."""
        logits = np.log(self._base_in_force) + np.asarray(action, dtype=np.float64)
        return lift_to_floor(weights_from_logits(logits, 0.0), self.floor)

    def observe(self, signals: StepSignals) -> np.ndarray:
        if self.uses_agent:
            return super().observe(signals)
        # The base mixture alone: the same signals and reward (logged), no agent.
        parts, total = self._reward(signals)
        self._next_state(signals)
        self.weights = self._weights(self.action)
        self._last = {**parts, "total": total, **self._diagnostics()}
        return self.weights.copy()

    def observe_evaluation(self, iteration: int, domain_loss: np.ndarray) -> None:
        """The trainer's validation losses per domain after ``iteration`` steps."""
        self.base.observe_evaluation(iteration, domain_loss)

    def _log_fields(self) -> dict:
        # An update's losses carry the temperature it left, which is the agent's still: no tensor op to read it.
        alpha = self._losses["alpha"] if self._losses and "alpha" in self._losses else self.agent.alpha
        return {"alpha": alpha, "residual": float(np.abs(self.action).mean()), **self._diagnostics()}

    def _diagnostics(self) -> dict:
        """What the logs say about the signals, with or without the agent."""
        return {"influence_keep": self.base.influence_keep, "norm_fired": self.reward.norm_fired_share}

    def _extra_state(self) -> dict:
        return {"base": self.base.state_dict(), "base_in_force": self._base_in_force.tolist(),
                "reward": self.reward.state_dict(), "rng": self.rng.bit_generator.state}

    def _load_extra_state(self, state: dict) -> None:
        self.base.load_state_dict(state["base"])
        self._base_in_force = np.asarray(state["base_in_force"], dtype=np.float64)
        self.reward.load_state_dict(state["reward"])
        self.rng.bit_generator.state = state["rng"]

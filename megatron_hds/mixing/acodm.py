"""AC-ODM (arXiv 2505.23878), the actor-critic baseline of HDS: a deterministic actor
trained by DDPG with Gaussian exploration noise and no entropy term, on the same state
(mixing/timeline.py StateBuilder) and the same loss-driven alignment reward as HDS.

Parameterisation: as in mixing/sac.py. By default the DDPG action is the vector of D logits
u; the weights the run uses are w(u) = floor + (1 - D * floor) * softmax(u), a map treated as
part of the environment, so the action space is all of R^D. With action_bound c (ActionMap)
the actor's output is squashed by c * tanh, added to the initial logits, and noisy actions
are clipped to the box. The actor outputs mu(s); exploration adds N(0, sigma^2 I) to it,
sigma = max(noise_std_min, noise_std * noise_decay^n) after n explored actions. The critic
reads the action through the weights it produces, Q(s, a) = f(s, D * w(a)), exactly as the
SAC critics do.

DDPG (Lillicrap et al. 2016): critic target y = r + gamma Q'(s', mu'(s')) with no
terminal cut (continuing task), critic loss (Q(s, u) - y)^2, actor loss -Q(s, mu(s)),
then Polyak updates of both targets by tau after every update.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from megatron_hds.mixing.action_map import ActionMap, logits_for_weights
from megatron_hds.mixing.agent_base import AgentShape, ReplayAgent, behaviour_cloned, mlp
from megatron_hds.mixing.base import lift_to_floor
from megatron_hds.mixing.config import AgentConfig, DDPGConfig, MixingConfig, ODMConfig
from megatron_hds.mixing.odm import ODMScheduler
from megatron_hds.mixing.rewards import alignment_reward
from megatron_hds.mixing.timeline import AgentTimeline, StateBuilder

AGENT_FORMAT = "megatron_hds.ddpg"
AGENT_VERSION = 2  # 2: the configuration is recorded as agent / ddpg / shape


class DeterministicActor(nn.Module):
    """state -> mu(s), the D-long action (squashed into the box when the action is bounded)."""

    def __init__(self, agent: AgentConfig, shape: AgentShape, action_map: ActionMap):
        super().__init__()
        self.action_map = action_map
        self.net = mlp([shape.state_dim, *agent.hidden_sizes, shape.num_domains])

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.action_map.squash(self.net(state))


class DDPGCritic(nn.Module):
    """Q(s, a), reading the action a through the weights it produces (scaled by D)."""

    def __init__(self, agent: AgentConfig, shape: AgentShape, action_map: ActionMap):
        super().__init__()
        self.num_domains = shape.num_domains
        self.action_map = action_map
        self.net = mlp([shape.state_dim + shape.num_domains, *agent.hidden_sizes, 1])

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        scaled = self.num_domains * self.action_map.torch_weights(action)
        return self.net(torch.cat([state, scaled], dim=-1)).squeeze(-1)


class DDPGAgent(ReplayAgent):
    """DDPG over mixture logits.

    ``act`` picks logits and weights for a state (plus exploration noise unless
    explore=False); ``add_transition`` stores what the environment answered; ``update``
    takes one gradient step. Randomness comes only from the agent's own numpy Generator
    (minibatches) and torch Generator (noise), so the global RNGs are untouched and
    ``state_dict`` captures everything a resume needs."""

    def __init__(self, agent: AgentConfig, ddpg: DDPGConfig, shape: AgentShape, device: str | torch.device = "cpu"):
        super().__init__(agent, shape, device)
        self.ddpg_config = ddpg
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(agent.seed)
            self.actor = DeterministicActor(agent, shape, self.action_map).to(self.device)
            self.critic = DDPGCritic(agent, shape, self.action_map).to(self.device)
        self.actor_target, self.critic_target = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        for p in [*self.actor_target.parameters(), *self.critic_target.parameters()]:
            p.requires_grad_(False)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=agent.lr, foreach=True)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=agent.lr, foreach=True)
        self.explored_actions = 0  # act(explore=True) calls, the clock of the noise decay
        self.skipped_steps = {"critic": 0, "actor": 0}  # optimizer steps withheld for a NaN/Inf loss

    def _config_record(self) -> dict:
        return {**super()._config_record(), "ddpg": dataclasses.asdict(self.ddpg_config)}

    # ----- acting ---------------------------------------------------------------------
    @property
    def noise_std(self) -> float:
        """The exploration std the next explored action uses."""
        cfg = self.ddpg_config
        return max(cfg.noise_std_min, cfg.noise_std * cfg.noise_decay ** self.explored_actions)

    @torch.no_grad()
    def act(self, state, explore: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(action a, weights w) for a state [state_dim] or a batch [B, state_dim]. a = mu(s)
        plus N(0, noise_std^2) noise when explore, clipped to the box when bounded (float32,
        what add_transition expects); w in float64 (ActionMap). explore=False draws no noise."""
        s, single = self._state_tensor(state)
        a = self.actor(s)
        if explore:
            std = self.noise_std
            if std > 0:
                a = a + std * torch.randn(a.shape, generator=self.generator, device=self.device, dtype=a.dtype)
                if self.action_map.bound is not None:
                    a = a.clamp(-self.action_map.bound, self.action_map.bound)
            self.explored_actions += 1
        return self._action(a, single)

    # ----- learning -------------------------------------------------------------------
    def update(self, bc_weight: float = 0.0) -> Optional[dict[str, float]]:
        """One critic and one actor step on a minibatch, then the Polyak target updates.
        None while the buffer holds fewer than batch_size transitions; else losses for logging.
        bc_weight > 0 mixes behaviour cloning of the stored actions into the actor's loss
        (agent_base.behaviour_cloned): during AC-ODM's warm-up those are ODM's."""
        cfg = self.agent_config
        if len(self.buffer) < cfg.batch_size:
            return None
        dev = self.device
        s, u, r, s2 = (torch.as_tensor(x, device=dev) for x in self.buffer.sample(self.rng, cfg.batch_size))

        with torch.no_grad():
            target = r + cfg.gamma * self.critic_target(s2, self.actor_target(s2))  # no terminal cut
        q = self.critic(s, u)
        critic_value = self._step("critic", F.mse_loss(q, target), self.critic_optimizer)

        critic_params = list(self.critic.parameters())
        for p in critic_params:  # the actor's loss must not leave gradients on the critic
            p.requires_grad_(False)
        action = self.actor(s)
        q_new = self.critic(s, action)
        actor_loss = -q_new.mean()
        if bc_weight > 0:
            actor_loss = behaviour_cloned(actor_loss, F.mse_loss(action, u), q_new, bc_weight)
        actor_value = self._step("actor", actor_loss, self.actor_optimizer)
        for p in critic_params:
            p.requires_grad_(True)

        self._polyak()
        self.updates += 1
        return {"critic_loss": critic_value, "actor_loss": actor_value, "q": float(q_new.detach().mean())}

    def _target_pairs(self):
        return ((self.actor, self.actor_target), (self.critic, self.critic_target))

    # ----- checkpointing --------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Networks, targets, optimizers, replay buffer, both RNGs and counters; tensors and
        plain Python values only (torch.load(weights_only=True) safe)."""
        return {
            "format": AGENT_FORMAT,
            "version": AGENT_VERSION,
            "config": self._config_record(),
            "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
            "actor_target": self.actor_target.state_dict(), "critic_target": self.critic_target.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "buffer": self.buffer.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": self.generator.get_state(),
            "updates": self.updates,
            "explored_actions": self.explored_actions,
            "rejected_transitions": self.rejected_transitions,
            "skipped_steps": dict(self.skipped_steps),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``; refuses another format/version or a different config,
        naming the fields that differ."""
        self._check_state(state, AGENT_FORMAT, AGENT_VERSION, "DDPG")
        for name in ("actor", "critic", "actor_target", "critic_target"):
            getattr(self, name).load_state_dict(state[name])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.buffer.load_state_dict(state["buffer"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.generator.set_state(state["torch_rng"].cpu())  # generator states are CPU byte tensors on any device
        self.updates = int(state["updates"])
        self.explored_actions = int(state["explored_actions"])
        self.rejected_transitions = int(state["rejected_transitions"])
        self.skipped_steps = dict(state["skipped_steps"])


class ACODMScheduler(AgentTimeline):
    """The AC-ODM data scheduler on rank 0: the learning schedulers' timeline (mixing/timeline.py)
    with a DDPG agent acting with exploration noise, paid the alignment reward alone.

    Warm-up as in the reference code: ODM's smoothed-mean weighter (exp(loss) averaged with
    smoothing 0.5, normalised linearly: the released variant) chooses the weights, the actor is
    cloned to them and the critic trained on the transitions (the timeline's behaviour-cloning
    term), so the agent takes over from where ODM brought the mixture."""

    name = "acodm"
    log_all_components = False
    WARMUP_ODM = ODMConfig(variant="released", smoothing=0.5, warmup_steps=0)

    def __init__(self, initial_weights, num_matrices: int, train_iters: int, mixing: MixingConfig,
                 shape: AgentShape):
        agent = DDPGAgent(mixing.agent, mixing.ddpg, shape)
        super().__init__(initial_weights, train_iters, agent, StateBuilder(shape.num_domains, num_matrices), mixing)
        self.warmup_odm = ODMScheduler(shape.num_domains, self.WARMUP_ODM, initial_weights=self._initial)
        self._odm_weights = self._initial.copy()

    def _reward(self, signals) -> tuple[dict, float]:
        if signals.iteration <= self.warmup_steps:
            self._odm_weights = self.warmup_odm.observe(signals)
        align = alignment_reward(signals)
        return {"align": align}, align

    def _warmup_action(self, state) -> np.ndarray:
        """The action nearest ODM's weights inside the action box."""
        floor = self.agent.action_map.floor
        action = logits_for_weights(lift_to_floor(self._odm_weights, floor), floor) - self.agent.action_map.center
        bound = self.agent.action_map.bound
        return action if bound is None else np.clip(action, -0.999 * bound, 0.999 * bound)

    def _policy_action(self, state) -> np.ndarray:
        return self.agent.act(state, explore=True)[0]

    def _log_fields(self) -> dict:
        return {"noise_std": self.agent.noise_std}

    def _extra_state(self) -> dict:
        return {"warmup_odm": self.warmup_odm.state_dict(), "odm_weights": self._odm_weights.tolist()}

    def _load_extra_state(self, state: dict) -> None:
        self.warmup_odm.load_state_dict(state["warmup_odm"])
        self._odm_weights = np.asarray(state["odm_weights"], dtype=np.float64)

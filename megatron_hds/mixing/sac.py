"""The SAC core of the Holistic Data Scheduler: Gaussian policy over domain logits, twin
critics with targets, automatic temperature. The replay buffer and what SAC shares with
AC-ODM's DDPG are in agent_base.py, the action's meaning in action_map.py. No training loop,
no torch.distributed."""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from megatron_hds.mixing.action_map import ActionMap
from megatron_hds.mixing.agent_base import AgentShape, ReplayAgent, behaviour_cloned, mlp
from megatron_hds.mixing.config import AgentConfig, SACConfig

STATE_FORMAT = "megatron_hds.sac"
STATE_VERSION = 2  # 2: the configuration is recorded as agent / sac / shape
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

# Parameterisation. The SAC action is the vector of D logits
# u ~ N(mean(s), diag(std(s)^2)), reparameterised as u = mean + std * eps. The mixture weights
# the run uses are the deterministic, state-independent image w(u) = floor + (1 - D*floor) *
# softmax(u). That map is treated as part of the environment, so the MDP's action space is all
# of R^D and SAC applies unchanged: log pi(u|s) and the entropy are exactly those of the
# diagonal Gaussian over u, with no change-of-variables term. Standard SAC squashes with tanh
# only to fit a Gaussian into a bounded box of actions; here the softmax already maps every u
# in R^D onto the floored simplex, so no squashing and no tanh correction. Probabilities are
# never taken over w: softmax is many-to-one (flat along the all-ones direction of u), so w has
# no density to correct to. The spread of u along that flat direction never reaches w, so the
# entropy over u overstates the spread of w by a bounded amount, absorbed by the target -D.
#
# Bounded option (AgentConfig.action_bound, ActionMap): the action becomes a = c * tanh(u) with u
# the Gaussian draw, added to the initial weights' logits; log pi(a|s) then carries the usual
# SAC tanh correction, and the entropy bonus pulls the policy back from the box's faces.
#
# The critics are functions of the action u, Q(s, u) = f(s, D * w(u)): they read u through the
# weights it produces, scaled by D to mean 1. This restricts the critic's function class
# exactly, since reward and next state depend on u only through w; it keeps the critic's input
# bounded and blind to the reward-free shift of the logits. Every critic evaluation (TD
# target, critic loss, actor loss) takes logits and goes through the same map.


class _TokenEncoder(nn.Module):
    """Tokens: one global token (the state's tail after the per-domain groups) followed by
    D domain tokens (domain i's features across the groups, plus optional extra per-domain
    inputs, plus a learned embedding of i), through a small pre-norm transformer encoder."""

    def __init__(self, sac: SACConfig, shape: AgentShape, extra_per_domain: int):
        super().__init__()
        d, f = shape.num_domains, shape.domain_features
        if shape.state_dim < f * d:
            raise ValueError(f"--hds-encoder domain_tokens needs a state that starts with {f} x {d} per-domain "
                             f"numbers; the state has {shape.state_dim}")
        self.num_domains, self.domain_features = d, f
        self.global_dim = shape.state_dim - f * d
        self.domain_in = nn.Linear(f + extra_per_domain, sac.token_dim)
        self.domain_embedding = nn.Parameter(torch.randn(d, sac.token_dim) * 0.02)
        self.global_in = nn.Linear(self.global_dim, sac.token_dim) if self.global_dim else None
        self.global_token = nn.Parameter(torch.zeros(sac.token_dim))
        layer = nn.TransformerEncoderLayer(sac.token_dim, sac.token_heads, dim_feedforward=2 * sac.token_dim,
                                           dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, sac.token_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(sac.token_dim)

    def forward(self, state: torch.Tensor, per_domain_extra: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, d, f = state.shape[0], self.num_domains, self.domain_features
        per_domain = state[:, : f * d].reshape(b, f, d).transpose(1, 2)  # [b, D, features]
        if per_domain_extra is not None:
            per_domain = torch.cat([per_domain, per_domain_extra], dim=-1)
        domain_tokens = self.domain_in(per_domain) + self.domain_embedding
        global_token = self.global_token.expand(b, -1)
        if self.global_in is not None:
            global_token = global_token + self.global_in(state[:, f * d:])
        tokens = torch.cat([global_token.unsqueeze(1), domain_tokens], dim=1)  # [b, 1 + D, width]
        return self.norm(self.encoder(tokens))


class Actor(nn.Module):
    """state -> (mean, log_std) of the Gaussian over the D logits."""

    def __init__(self, agent: AgentConfig, sac: SACConfig, shape: AgentShape):
        super().__init__()
        self.encoder = sac.encoder
        self.log_std_range = (sac.log_std_min, sac.log_std_max)
        if sac.encoder == "mlp":
            self.net = mlp([shape.state_dim, *agent.hidden_sizes, 2 * shape.num_domains])
        else:
            self.tokens = _TokenEncoder(sac, shape, extra_per_domain=0)
            self.head = nn.Linear(sac.token_dim, 2)  # shared across domain tokens

    def mean(self, state: torch.Tensor) -> torch.Tensor:
        """forward(state)[0] without the log-std (deterministic acting)."""
        if self.encoder == "mlp":
            x = state
            for layer in self.net:  # the layers' own forward, without the module-call machinery (no hooks here)
                x = layer.forward(x)
            return x.chunk(2, dim=-1)[0]
        return self.head(self.tokens(state)[:, 1:])[..., 0]

    def forward(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.encoder == "mlp":
            mean, raw = self.net(state).chunk(2, dim=-1)
        else:
            mean, raw = self.head(self.tokens(state)[:, 1:]).unbind(-1)
        # Smooth squash instead of a hard clamp: the gradient never dies at a bound.
        lo, hi = self.log_std_range
        log_std = lo + 0.5 * (hi - lo) * (torch.tanh(raw) + 1.0)
        return mean, log_std


class Critic(nn.Module):
    """Q(s, a), reading the action a through the weights it produces (scaled by D)."""

    def __init__(self, agent: AgentConfig, sac: SACConfig, shape: AgentShape, action_map: ActionMap):
        super().__init__()
        self.encoder = sac.encoder
        self.num_domains = shape.num_domains
        self.action_map = action_map
        if sac.encoder == "mlp":
            self.net = mlp([shape.state_dim + shape.num_domains, *agent.hidden_sizes, 1])
        else:
            self.tokens = _TokenEncoder(sac, shape, extra_per_domain=1)
            self.head = mlp([sac.token_dim, sac.token_dim, 1])

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        scaled = self.num_domains * self.action_map.torch_weights(action)
        if self.encoder == "mlp":
            return self.net(torch.cat([state, scaled], dim=-1)).squeeze(-1)
        return self.head(self.tokens(state, scaled.unsqueeze(-1))[:, 0]).squeeze(-1)


def gaussian_log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Log-density of a diagonal Gaussian, summed over the last axis."""
    z = (u - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - _HALF_LOG_2PI).sum(-1)


class SACAgent(ReplayAgent):
    """Soft Actor-Critic over mixture logits.

    ``act`` picks logits and weights for a state; ``add_transition`` stores what the
    environment answered; ``update`` takes one gradient step. Randomness comes only from
    the agent's own numpy Generator (minibatches) and torch Generator (action noise), so
    the global RNGs are untouched and ``state_dict`` captures everything a resume needs."""

    def __init__(self, agent: AgentConfig, sac: SACConfig, shape: AgentShape, device: str | torch.device = "cpu"):
        super().__init__(agent, shape, device)
        self.sac_config = sac
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(agent.seed)
            self.actor = Actor(agent, sac, shape)
            self.q1, self.q2 = Critic(agent, sac, shape, self.action_map), Critic(agent, sac, shape, self.action_map)
        for net in ("actor", "q1", "q2"):
            setattr(self, net, getattr(self, net).to(self.device))
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        for p in [*self.q1_target.parameters(), *self.q2_target.parameters()]:
            p.requires_grad_(False)
        self.log_alpha = torch.tensor(float(sac.log_alpha_init), device=self.device, requires_grad=True)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=agent.lr, foreach=True)
        self.critic_optimizer = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=agent.lr,
                                                 foreach=True)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=agent.lr, foreach=True)
        self.skipped_steps = {"critic": 0, "actor": 0, "alpha": 0}  # optimizer steps withheld for a NaN/Inf loss

    @property
    def entropy_target(self) -> float:
        """The entropy the temperature steers to (--hds-target-entropy, or -D)."""
        target = self.sac_config.target_entropy
        return -float(self.shape.num_domains) if target is None else float(target)

    def _config_record(self) -> dict:
        return {**super()._config_record(), "sac": dataclasses.asdict(self.sac_config)}

    # ----- acting ---------------------------------------------------------------------
    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    def _sample(self, state: torch.Tensor, generator: Optional[torch.Generator] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised actions and their log-probability: u ~ N(mean, std^2), a = squash(u),
        log pi(a) = log N(u) - log |da/du| (zero correction when unbounded)."""
        mean, log_std = self.actor(state)
        eps = torch.randn(mean.shape, generator=generator or self.generator, device=self.device, dtype=mean.dtype)
        u = mean + torch.exp(log_std) * eps
        return self.action_map.squash(u), gaussian_log_prob(u, mean, log_std) - self.action_map.squash_log_det(u)

    @torch.no_grad()
    def act(self, state, deterministic: bool = False, weights: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(action a, weights w) for a state [state_dim] or a batch [B, state_dim]. a is the
        SAC action (float32, what add_transition expects: the logits, or the bounded
        adjustment of the initial logits, ActionMap); w in float64 (None with weights=False,
        for a caller that maps the action itself). deterministic=True returns squash(mean), no
        noise drawn."""
        s, single = self._state_tensor(state)
        if deterministic:
            a = self.action_map.squash(self.actor.mean(s))
        else:
            a, _ = self._sample(s)
        return self._action(a, single, weights)

    @torch.no_grad()
    def log_prob(self, state, actions) -> np.ndarray:
        """log pi(a | s), per state (float64): the Gaussian's density, with the tanh change of
        variables when the action is bounded."""
        s, single = self._state_tensor(state)
        a = self._action_tensor(actions, s.shape[0])
        mean, log_std = self.actor(s)
        u = self.action_map.unsquash(a)
        out = (gaussian_log_prob(u, mean, log_std) - self.action_map.squash_log_det(u)).double().cpu().numpy()
        return out[0] if single else out

    @torch.no_grad()
    def entropy(self, state, samples: int = 4096) -> np.ndarray:
        """Differential entropy of the policy over actions, per state (float64): exact for the
        unbounded Gaussian; for a bounded action the Monte Carlo mean of -log pi over
        ``samples`` draws from a private, fixed-seed generator (the agent's RNG is untouched)."""
        s, single = self._state_tensor(state)
        if self.action_map.bound is None:
            _, log_std = self.actor(s)
            out = (log_std + 0.5 + _HALF_LOG_2PI).sum(-1)
        else:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(0)
            repeated = s.repeat_interleave(samples, dim=0)
            out = -self._sample(repeated, generator)[1].view(s.shape[0], samples).mean(-1)
        out = out.double().cpu().numpy()
        return out[0] if single else out

    # ----- learning -------------------------------------------------------------------
    def update(self, bc_weight: float = 0.0) -> Optional[dict[str, float]]:
        """One gradient step on a minibatch, then the Polyak target update. None while the
        buffer holds fewer than batch_size transitions; else losses and alpha for logging.
        bc_weight > 0 mixes behaviour cloning of the stored actions into the actor's loss
        (agent_base.behaviour_cloned; the mean action is the one cloned)."""
        cfg = self.agent_config
        if len(self.buffer) < cfg.batch_size:
            return None
        dev = self.device
        s, u, r, s2 = (torch.as_tensor(x, device=dev) for x in self.buffer.sample(self.rng, cfg.batch_size))
        alpha = self.log_alpha.detach().exp()

        with torch.no_grad():
            u2, logp2 = self._sample(s2)
            q_next = torch.min(self.q1_target(s2, u2), self.q2_target(s2, u2)) - alpha * logp2
            target = r + cfg.gamma * q_next  # continuing task: never cut at a terminal
        q1, q2 = self.q1(s, u), self.q2(s, u)
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        critic_value = self._step("critic", critic_loss, self.critic_optimizer)

        critics = [*self.q1.parameters(), *self.q2.parameters()]
        for p in critics:  # the actor's loss must not leave gradients on the critics
            p.requires_grad_(False)
        u_new, logp = self._sample(s)
        q_new = torch.min(self.q1(s, u_new), self.q2(s, u_new))
        actor_loss = (alpha * logp - q_new).mean()
        if bc_weight > 0:
            mean_action = self.action_map.squash(self.actor(s)[0])
            actor_loss = behaviour_cloned(actor_loss, F.mse_loss(mean_action, u), q_new, bc_weight)
        actor_value = self._step("actor", actor_loss, self.actor_optimizer)
        for p in critics:
            p.requires_grad_(True)

        alpha_loss = -(self.log_alpha * (logp.detach() + self.entropy_target)).mean()
        alpha_value = self._step("alpha", alpha_loss, self.alpha_optimizer)

        self._polyak()
        self.updates += 1
        return {
            "critic_loss": critic_value,
            "actor_loss": actor_value,
            "alpha_loss": alpha_value,
            "alpha": self.alpha,
            "entropy": float(-logp.detach().mean()),
            "q": float(q_new.detach().mean()),
        }

    def _target_pairs(self):
        return ((self.q1, self.q1_target), (self.q2, self.q2_target))

    # ----- checkpointing --------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Networks, targets, optimizers, temperature, replay buffer, both RNGs and
        counters; tensors and plain Python values only (torch.load(weights_only=True) safe)."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "config": self._config_record(),
            "actor": self.actor.state_dict(),
            "q1": self.q1.state_dict(), "q2": self.q2.state_dict(),
            "q1_target": self.q1_target.state_dict(), "q2_target": self.q2_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
            "buffer": self.buffer.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": self.generator.get_state(),
            "updates": self.updates,
            "rejected_transitions": self.rejected_transitions,
            "skipped_steps": dict(self.skipped_steps),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``; refuses another format/version or a different config,
        naming the fields that differ."""
        self._check_state(state, STATE_FORMAT, STATE_VERSION, "SAC")
        for name in ("actor", "q1", "q2", "q1_target", "q2_target"):
            getattr(self, name).load_state_dict(state[name])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        self.buffer.load_state_dict(state["buffer"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.generator.set_state(state["torch_rng"].cpu())  # generator states are CPU byte tensors on any device
        self.updates = int(state["updates"])
        self.rejected_transitions = int(state["rejected_transitions"])
        self.skipped_steps = dict(state["skipped_steps"])

"""The SAC core of the Holistic Data Scheduler: Gaussian policy over domain logits, twin
critics with targets, automatic temperature, replay buffer. No training loop, no torch.distributed."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

STATE_FORMAT = "megatron_hds.sac"
STATE_VERSION = 1
ENCODERS = ("mlp", "domain_tokens")
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

# Parameterisation (METHOD.md "Action"). The SAC action is the vector of D logits
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
# Bounded option (SACConfig.action_bound, ActionMap): the action becomes a = c * tanh(u) with u
# the Gaussian draw, added to the initial weights' logits; log pi(a|s) then carries the usual
# SAC tanh correction, and the entropy bonus pulls the policy back from the box's faces.
#
# The critics are functions of the action u, Q(s, u) = f(s, D * w(u)): they read u through the
# weights it produces, scaled by D to mean 1. This restricts the critic's function class
# exactly, since reward and next state depend on u only through w; it keeps the critic's input
# bounded and blind to the reward-free shift of the logits. Every critic evaluation (TD
# target, critic loss, actor loss) takes logits and goes through the same map.


def effective_floor(num_domains: int, weight_floor: Optional[float]) -> float:
    """The weight floor in effect: weight_floor, or 0.1 / D (METHOD.md) when it is None."""
    return 0.1 / num_domains if weight_floor is None else float(weight_floor)


def validate_agent_config(cfg, learning_rates: tuple, more_positive_ints: tuple = ()) -> None:
    """Checks shared by the agents' configs (SACConfig, acodm.DDPGConfig); errors name the
    class, the field, the value and what is accepted. Turns hidden_sizes into a tuple."""
    kind = type(cfg).__name__
    for name in ("state_dim", "num_domains", "buffer_size", "batch_size", *more_positive_ints):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{kind}.{name}={value!r} is invalid: expected a positive integer")
    if cfg.num_domains < 2:
        raise ValueError(f"{kind}.num_domains={cfg.num_domains} is invalid: a mixture needs at least 2 domains")
    if not 0.0 <= cfg.gamma < 1.0:
        raise ValueError(f"{kind}.gamma={cfg.gamma!r} is invalid: expected 0 <= gamma < 1 (continuing task)")
    if not 0.0 < cfg.tau <= 1.0:
        raise ValueError(f"{kind}.tau={cfg.tau!r} is invalid: expected 0 < tau <= 1")
    if cfg.batch_size > cfg.buffer_size:
        raise ValueError(f"{kind}.batch_size={cfg.batch_size} exceeds buffer_size={cfg.buffer_size}: "
                         f"expected batch_size <= buffer_size")
    for name in learning_rates:
        value = getattr(cfg, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{kind}.{name}={value!r} is invalid: expected a positive finite number")
    hidden = tuple(cfg.hidden_sizes)
    if not hidden or any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in hidden):
        raise ValueError(f"{kind}.hidden_sizes={cfg.hidden_sizes!r} is invalid: "
                         f"expected a non-empty sequence of positive integers")
    object.__setattr__(cfg, "hidden_sizes", hidden)  # lists from argv become hashable tuples
    if not 0.0 <= cfg.floor < 1.0 / cfg.num_domains:
        raise ValueError(f"{kind}.weight_floor={cfg.weight_floor!r} is invalid: expected "
                         f"0 <= floor < 1/num_domains = {1.0 / cfg.num_domains:.6g}")
    bound = cfg.action_bound
    if bound is not None and not (isinstance(bound, (int, float)) and math.isfinite(bound) and bound > 0):
        raise ValueError(f"{kind}.action_bound={bound!r} is invalid: expected None (unbounded logits) "
                         f"or a positive finite number")
    if cfg.action_center is not None:
        center = tuple(float(x) for x in cfg.action_center)
        if len(center) != cfg.num_domains or not all(math.isfinite(x) for x in center):
            raise ValueError(f"{kind}.action_center={cfg.action_center!r} is invalid: expected "
                             f"num_domains={cfg.num_domains} finite logits")
        object.__setattr__(cfg, "action_center", center)


class ActionMap:
    """What an agent's action means (METHOD.md "Action"; shared by SAC and DDPG).

    logits = center + a, weights = floor + (1 - D*floor) * softmax(logits). With bound None
    (the agent configs' default) the action a is any vector in R^D and center is 0: a are the
    logits. Runs default to bound 2 (--hds-action-bound, mixing/factory.py). With
    bound c the action lives in the box [-c, c]^D: the policy draws an unbounded u and acts
    a = c * tanh(u) (squash), and center is the initial weights' logits, so the action is a
    bounded adjustment of the starting mixture, each domain's share moving by at most a
    factor e^(2c) against another's. Why the bound: with unbounded logits nothing opposes a
    drift of the mean logits when the reward barely depends on the action, and both learned
    schedulers drifted to one domain (docs/results.md). Squashed, SAC's entropy carries the
    tanh Jacobian, which pulls the policy back from the box's faces, and a deterministic
    actor can never leave the box."""

    def __init__(self, num_domains: int, floor: float, bound: Optional[float] = None,
                 center: Optional[tuple] = None):
        self.floor, self.bound = float(floor), bound
        self.center = np.zeros(num_domains) if center is None else np.asarray(center, dtype=np.float64)
        self._torch_center: dict = {}

    @classmethod
    def of(cls, cfg) -> "ActionMap":
        """The map an agent config (SACConfig, acodm.DDPGConfig) describes."""
        return cls(cfg.num_domains, cfg.floor, cfg.action_bound, cfg.action_center)

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


@dataclass(frozen=True)
class SACConfig:
    """Hyperparameters of the HDS agent; defaults are METHOD.md's reference values."""

    state_dim: int  # length of the state vector (reference: 3D + 2L + 1 = 85 for D=22, L=9)
    num_domains: int  # D: the action is D logits, the weights D numbers
    gamma: float = 0.95  # discount of the continuing task (no terminal states)
    tau: float = 0.001  # Polyak rate: target <- (1 - tau) * target + tau * online, after every update
    buffer_size: int = 10_000  # replay buffer capacity (a ring: the oldest transition is overwritten)
    batch_size: int = 32  # minibatch per update; no update until the buffer holds this many
    actor_lr: float = 1e-4  # Adam learning rate of the actor
    critic_lr: float = 1e-4  # Adam learning rate of the twin critics
    alpha_lr: float = 1e-4  # Adam learning rate of log(alpha), the entropy temperature
    target_entropy: Optional[float] = None  # entropy the temperature steers to; default -D
    log_alpha_init: float = 0.0  # initial log(alpha)
    hidden_sizes: tuple = (256, 256)  # hidden layers of the MLP actor and of each MLP critic
    log_std_min: float = -5.0  # the actor's log-std is squashed smoothly into [min, max]
    # Our choice: logit noise of std <= 1. With e^2 (the usual SAC bound) the entropy bonus
    # drives the std up until softmax(u) is nearly one-hot and the weights jump between
    # vertices of the simplex (seen in the CPU demo); std 1 keeps every draw a real mixture.
    log_std_max: float = 0.0
    weight_floor: Optional[float] = None  # least weight of any domain; default 0.1 / D
    action_bound: Optional[float] = None  # None: actions are free logits; c: c*tanh-squashed (ActionMap)
    action_center: Optional[tuple] = None  # logits of the zero action (ActionMap); default 0
    seed: int = 0  # seeds network init, minibatch sampling and action noise
    encoder: str = "mlp"  # mlp, or domain_tokens: a tiny transformer over per-domain tokens
    domain_features: int = 3  # domain_tokens: the state starts with this many D-long per-domain groups
    token_dim: int = 64  # domain_tokens: model width of the token encoder
    token_layers: int = 2  # domain_tokens: transformer encoder layers
    token_heads: int = 4  # domain_tokens: attention heads

    def __post_init__(self):
        validate_agent_config(self, ("actor_lr", "critic_lr", "alpha_lr"),
                              ("domain_features", "token_dim", "token_layers", "token_heads"))
        for name in ("target_entropy", "log_alpha_init", "log_std_min", "log_std_max"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"SACConfig.{name}={value!r} is invalid: expected a finite number")
        if not self.log_std_min < self.log_std_max:
            raise ValueError(f"SACConfig.log_std_min={self.log_std_min} must be below "
                             f"log_std_max={self.log_std_max}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"SACConfig.encoder={self.encoder!r} is invalid: "
                             f"accepted values are {', '.join(ENCODERS)}")
        if self.encoder == "domain_tokens":
            if self.token_dim % self.token_heads:
                raise ValueError(f"SACConfig.token_dim={self.token_dim} is not divisible by "
                                 f"token_heads={self.token_heads}")
            if self.state_dim < self.domain_features * self.num_domains:
                raise ValueError(
                    f"SACConfig.state_dim={self.state_dim} is too small for encoder=domain_tokens: the state must "
                    f"start with domain_features * num_domains = {self.domain_features * self.num_domains} "
                    f"per-domain numbers")

    @property
    def floor(self) -> float:
        """The weight floor in effect (weight_floor, or 0.1 / D)."""
        return effective_floor(self.num_domains, self.weight_floor)

    @property
    def entropy_target(self) -> float:
        """The target entropy in effect (target_entropy, or -D)."""
        return -float(self.num_domains) if self.target_entropy is None else float(self.target_entropy)


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


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class _TokenEncoder(nn.Module):
    """Tokens: one global token (the state's tail after the per-domain groups) followed by
    D domain tokens (domain i's features across the groups, plus optional extra per-domain
    inputs, plus a learned embedding of i), through a small pre-norm transformer encoder."""

    def __init__(self, cfg: SACConfig, extra_per_domain: int):
        super().__init__()
        d, f = cfg.num_domains, cfg.domain_features
        self.num_domains, self.domain_features = d, f
        self.global_dim = cfg.state_dim - f * d
        self.domain_in = nn.Linear(f + extra_per_domain, cfg.token_dim)
        self.domain_embedding = nn.Parameter(torch.randn(d, cfg.token_dim) * 0.02)
        self.global_in = nn.Linear(self.global_dim, cfg.token_dim) if self.global_dim else None
        self.global_token = nn.Parameter(torch.zeros(cfg.token_dim))
        layer = nn.TransformerEncoderLayer(cfg.token_dim, cfg.token_heads, dim_feedforward=2 * cfg.token_dim,
                                           dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.token_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.token_dim)

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

    def __init__(self, cfg: SACConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.encoder == "mlp":
            self.net = mlp([cfg.state_dim, *cfg.hidden_sizes, 2 * cfg.num_domains])
        else:
            self.tokens = _TokenEncoder(cfg, extra_per_domain=0)
            self.head = nn.Linear(cfg.token_dim, 2)  # shared across domain tokens

    def forward(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.encoder == "mlp":
            mean, raw = self.net(state).chunk(2, dim=-1)
        else:
            mean, raw = self.head(self.tokens(state)[:, 1:]).unbind(-1)
        # Smooth squash instead of a hard clamp: the gradient never dies at a bound.
        lo, hi = self.cfg.log_std_min, self.cfg.log_std_max
        log_std = lo + 0.5 * (hi - lo) * (torch.tanh(raw) + 1.0)
        return mean, log_std


class Critic(nn.Module):
    """Q(s, a), reading the action a through the weights it produces (scaled by D)."""

    def __init__(self, cfg: SACConfig):
        super().__init__()
        self.cfg = cfg
        self.action_map = ActionMap.of(cfg)
        if cfg.encoder == "mlp":
            self.net = mlp([cfg.state_dim + cfg.num_domains, *cfg.hidden_sizes, 1])
        else:
            self.tokens = _TokenEncoder(cfg, extra_per_domain=1)
            self.head = mlp([cfg.token_dim, cfg.token_dim, 1])

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        scaled = self.cfg.num_domains * self.action_map.torch_weights(action)
        if self.cfg.encoder == "mlp":
            return self.net(torch.cat([state, scaled], dim=-1)).squeeze(-1)
        return self.head(self.tokens(state, scaled.unsqueeze(-1))[:, 0]).squeeze(-1)


def gaussian_log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Log-density of a diagonal Gaussian, summed over the last axis."""
    z = (u - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - _HALF_LOG_2PI).sum(-1)


class ReplayBuffer:
    """A numpy ring buffer of (s, u, r, s') in float32."""

    def __init__(self, capacity: int, state_dim: int, action_dim: int):
        self.capacity = capacity
        self.states = np.zeros((capacity, state_dim), dtype=np.float32)
        self.actions = np.zeros((capacity, action_dim), dtype=np.float32)
        self.rewards = np.zeros((capacity,), dtype=np.float32)
        self.next_states = np.zeros((capacity, state_dim), dtype=np.float32)
        self.position = 0  # where the next transition goes
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, s: np.ndarray, u: np.ndarray, r: float, s2: np.ndarray) -> None:
        i = self.position
        self.states[i], self.actions[i], self.rewards[i], self.next_states[i] = s, u, r, s2
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
        idx = rng.integers(0, self.size, size=n)
        return self.states[idx], self.actions[idx], self.rewards[idx], self.next_states[idx]

    def state_dict(self) -> dict[str, Any]:
        n = self.size
        return {
            "capacity": self.capacity, "position": self.position, "size": n,
            "states": torch.from_numpy(self.states[:n].copy()),
            "actions": torch.from_numpy(self.actions[:n].copy()),
            "rewards": torch.from_numpy(self.rewards[:n].copy()),
            "next_states": torch.from_numpy(self.next_states[:n].copy()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"replay buffer capacity {state['capacity']} in the checkpoint differs from "
                             f"this agent's {self.capacity}")
        n = int(state["size"])
        for name in ("states", "actions", "rewards", "next_states"):
            array = getattr(self, name)
            array[:] = 0
            array[:n] = state[name].numpy()
        self.size, self.position = n, int(state["position"])


class ReplayAgent:
    """What the replay-buffer agents (SAC here, DDPG in acodm.py) share: non-finite
    transitions and optimizer steps are refused and counted, never applied, and the
    Polyak update of the target networks. Subclasses have ``config`` (state_dim,
    num_domains, tau), ``buffer``, ``rejected_transitions``, ``skipped_steps`` and
    ``_target_pairs()`` (the (online, target) networks)."""

    def _state_tensor(self, state) -> tuple[torch.Tensor, bool]:
        """The state(s) as a [B, state_dim] float32 tensor, and whether one unbatched state came in."""
        s = torch.as_tensor(np.asarray(state, dtype=np.float32), device=self.device)
        if s.dim() not in (1, 2) or s.shape[-1] != self.config.state_dim:
            raise ValueError(f"state has shape {tuple(s.shape)}, expected [state_dim] or [batch, state_dim] "
                             f"with state_dim={self.config.state_dim}")
        return (s.unsqueeze(0), True) if s.dim() == 1 else (s, False)

    def _action_tensor(self, actions, batch: int) -> torch.Tensor:
        """Given actions as a [batch, D] float32 tensor (for log-probabilities and Q values)."""
        return torch.as_tensor(np.asarray(actions, dtype=np.float32), device=self.device).reshape(batch, -1)

    def _action(self, a: torch.Tensor, single: bool) -> tuple[np.ndarray, np.ndarray]:
        """(action, floored simplex weights) as act() returns them, unbatched when one state came in."""
        a = a.cpu().numpy()
        a = a[0] if single else a
        return a, self.action_map.weights(a)

    def add_transition(self, state, logits, reward, next_state) -> bool:
        """Store (s, u, r, s'); refuse (return False, count) one with a NaN/Inf anywhere."""
        cfg = self.config
        s = np.asarray(state, dtype=np.float64).reshape(-1)
        u = np.asarray(logits, dtype=np.float64).reshape(-1)
        s2 = np.asarray(next_state, dtype=np.float64).reshape(-1)
        r = np.asarray(reward, dtype=np.float64)
        if s.size != cfg.state_dim or s2.size != cfg.state_dim or u.size != cfg.num_domains or r.size != 1:
            raise ValueError(f"transition shapes s={s.shape} u={u.shape} r={r.shape} s'={s2.shape} do not match "
                             f"state_dim={cfg.state_dim}, num_domains={cfg.num_domains} and a scalar reward")
        finite32 = np.finfo(np.float32).max  # what overflows to inf in the float32 buffer is refused too
        if not all(np.all(np.isfinite(x)) and np.all(np.abs(x) <= finite32) for x in (s, u, r, s2)):
            self.rejected_transitions += 1
            return False
        self.buffer.add(s, u, float(r), s2)
        return True

    def _step(self, name: str, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> float:
        """Backward and step unless the loss or a gradient is NaN/Inf (then count and skip)."""
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        if math.isfinite(value):
            loss.backward()
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):  # one device sync
                optimizer.step()
                return value
            optimizer.zero_grad(set_to_none=True)
        self.skipped_steps[name] += 1
        return value

    @torch.no_grad()
    def _polyak(self) -> None:
        """target <- (1 - tau) * target + tau * online, for every (online, target) network pair."""
        tau = self.config.tau
        for online, target in self._target_pairs():
            t = list(target.parameters())
            torch._foreach_mul_(t, 1.0 - tau)
            torch._foreach_add_(t, list(online.parameters()), alpha=tau)

    def _check_state(self, state, expected_format: str, expected_version: int, kind: str) -> None:
        """Refuse a checkpointed agent state of another format, version or configuration,
        naming the fields that differ."""
        if not isinstance(state, dict) or state.get("format") != expected_format:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"not a {kind} agent state (format {found!r}, expected {expected_format!r})")
        if state.get("version") != expected_version:
            raise ValueError(f"{kind} agent state version {state.get('version')!r} is not supported "
                             f"(this code reads version {expected_version})")
        mine = dataclasses.asdict(self.config)
        theirs = dict(state["config"])
        theirs["hidden_sizes"] = tuple(theirs.get("hidden_sizes", ()))
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if differ:
            detail = ", ".join(f"{k}: checkpoint {theirs.get(k)!r} vs this run {mine.get(k)!r}" for k in differ)
            raise ValueError(f"{kind} agent checkpoint was made with a different configuration ({detail})")


class SACAgent(ReplayAgent):
    """Soft Actor-Critic over mixture logits.

    ``act`` picks logits and weights for a state; ``add_transition`` stores what the
    environment answered; ``update`` takes one gradient step. Randomness comes only from
    the agent's own numpy Generator (minibatches) and torch Generator (action noise), so
    the global RNGs are untouched and ``state_dict`` captures everything a resume needs."""

    def __init__(self, config: SACConfig, device: str | torch.device = "cpu"):
        self.config = cfg = config
        self.device = torch.device(device)
        self.action_map = ActionMap.of(cfg)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(cfg.seed)
            self.actor = Actor(cfg)
            self.q1, self.q2 = Critic(cfg), Critic(cfg)
        for net in ("actor", "q1", "q2"):
            setattr(self, net, getattr(self, net).to(self.device))
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        for p in [*self.q1_target.parameters(), *self.q2_target.parameters()]:
            p.requires_grad_(False)
        self.log_alpha = torch.tensor(float(cfg.log_alpha_init), device=self.device, requires_grad=True)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, foreach=True)
        self.critic_optimizer = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()],
                                                 lr=cfg.critic_lr, foreach=True)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr, foreach=True)
        self.buffer = ReplayBuffer(cfg.buffer_size, cfg.state_dim, cfg.num_domains)
        self.rng = np.random.Generator(np.random.PCG64(cfg.seed))
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(cfg.seed + 1)
        self.updates = 0  # gradient steps taken
        self.rejected_transitions = 0  # transitions refused for NaN/Inf
        self.skipped_steps = {"critic": 0, "actor": 0, "alpha": 0}  # optimizer steps withheld for a NaN/Inf loss

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
    def act(self, state, deterministic: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(action a, weights w) for a state [state_dim] or a batch [B, state_dim]. a is the
        SAC action (float32, what add_transition expects: the logits, or the bounded
        adjustment of the initial logits, ActionMap); w in float64. deterministic=True
        returns squash(mean), no noise drawn."""
        s, single = self._state_tensor(state)
        if deterministic:
            a = self.action_map.squash(self.actor(s)[0])
        else:
            a, _ = self._sample(s)
        return self._action(a, single)

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
    def update(self) -> Optional[dict[str, float]]:
        """One gradient step on a minibatch, then the Polyak target update. None while the
        buffer holds fewer than batch_size transitions; else losses and alpha for logging."""
        cfg = self.config
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
        actor_value = self._step("actor", actor_loss, self.actor_optimizer)
        for p in critics:
            p.requires_grad_(True)

        alpha_loss = -(self.log_alpha * (logp.detach() + cfg.entropy_target)).mean()
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
            "config": dataclasses.asdict(self.config),
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

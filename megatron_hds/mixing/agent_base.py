"""What the replay-buffer agents (HDS's SAC, AC-ODM's DDPG) share: their shape, the replay
buffer, the guarded optimizer steps and target updates, checkpoint checks, and the MLP they
build their networks from. No training loop, no torch.distributed."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from megatron_hds.mixing.action_map import ActionMap, effective_floor
from megatron_hds.mixing.config import AgentConfig


_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class AgentShape:
    """What an agent depends on besides its configuration: sizes that come from the run."""

    state_dim: int  # length of the state vector (mixing/timeline.py StateBuilder)
    num_domains: int  # D: the action has D entries, the weights D numbers
    action_center: Optional[tuple] = None  # logits of the zero action (ActionMap); default 0
    domain_features: int = 3  # per-domain groups at the head of the state (the domain_tokens encoder reads them)

    def __post_init__(self):
        for name in ("state_dim", "num_domains"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"AgentShape.{name}={value!r} is invalid: expected a positive integer")
        if self.num_domains < 2:
            raise ValueError(f"AgentShape.num_domains={self.num_domains} is invalid: a mixture needs 2 domains")
        if self.action_center is not None:
            center = tuple(float(x) for x in self.action_center)
            if len(center) != self.num_domains or not all(math.isfinite(x) for x in center):
                raise ValueError(f"AgentShape.action_center={self.action_center!r} is invalid: expected "
                                 f"num_domains={self.num_domains} finite logits")
            object.__setattr__(self, "action_center", center)


def check_floor(agent: AgentConfig, num_domains: int) -> float:
    """The weight floor in effect, refused when D of them would not fit on the simplex."""
    floor = effective_floor(num_domains, agent.weight_floor)
    if not 0.0 <= floor < 1.0 / num_domains:
        raise ValueError(f"--hds-weight-floor {agent.weight_floor!r} is invalid for {num_domains} domains: "
                         f"expected 0 <= floor < 1/num_domains = {1.0 / num_domains:.6g}")
    return floor


def _flatten(record: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}, lists as tuples (checkpoints store tuples as lists)."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = tuple(value) if isinstance(value, list) else value
    return out


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


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


def behaviour_cloned(policy_loss: torch.Tensor, cloning_loss: torch.Tensor, q: torch.Tensor,
                     weight: float) -> torch.Tensor:
    """(1 - w) x the policy loss + w x the squared distance of the actor's action from the stored
    one, the latter scaled by mean |Q| + 1 so the two are comparable: w = 1 clones the behaviour
    policy alone (the warm-up), and as w fades the agent's own objective takes over."""
    scale = q.detach().abs().mean() + 1.0
    return (1.0 - weight) * policy_loss + weight * scale * cloning_loss


class ReplayAgent:
    """What the replay-buffer agents (SAC in sac.py, DDPG in acodm.py) share: their shape and
    action map, the replay buffer and private random generators, non-finite transitions and
    optimizer steps refused and counted (never applied), the Polyak update of the target
    networks, and the check that a checkpointed state belongs to the same configuration.
    Subclasses build their networks and optimizers, and define ``_target_pairs()`` (the
    (online, target) network pairs) and ``_config_record()`` (their settings, for the check)."""

    def __init__(self, agent: AgentConfig, shape: AgentShape, device: str | torch.device = "cpu"):
        self.agent_config = agent
        self.shape = shape
        self.device = torch.device(device)
        self.action_map = ActionMap(shape.num_domains, check_floor(agent, shape.num_domains), agent.action_bound,
                                    shape.action_center)
        self.buffer = ReplayBuffer(agent.buffer_size, shape.state_dim, shape.num_domains)
        self.rng = np.random.Generator(np.random.PCG64(agent.seed))  # minibatches
        self.generator = torch.Generator(device=self.device)  # action noise
        self.generator.manual_seed(agent.seed + 1)
        self.updates = 0  # gradient steps taken
        self.rejected_transitions = 0  # transitions refused for NaN/Inf

    def _config_record(self) -> dict:
        """Everything that must match for a checkpointed state to be loaded."""
        return {"agent": dataclasses.asdict(self.agent_config), "shape": dataclasses.asdict(self.shape)}

    def _state_tensor(self, state) -> tuple[torch.Tensor, bool]:
        """The state(s) as a [B, state_dim] float32 tensor, and whether one unbatched state came in."""
        s = torch.as_tensor(np.asarray(state, dtype=np.float32), device=self.device)
        if s.dim() not in (1, 2) or s.shape[-1] != self.shape.state_dim:
            raise ValueError(f"state has shape {tuple(s.shape)}, expected [state_dim] or [batch, state_dim] "
                             f"with state_dim={self.shape.state_dim}")
        return (s.unsqueeze(0), True) if s.dim() == 1 else (s, False)

    def _action_tensor(self, actions, batch: int) -> torch.Tensor:
        """Given actions as a [batch, D] float32 tensor (for log-probabilities and Q values)."""
        return torch.as_tensor(np.asarray(actions, dtype=np.float32), device=self.device).reshape(batch, -1)

    def _action(self, a: torch.Tensor, single: bool, weights: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(action, floored simplex weights, or None if not `weights`) as act() returns them,
        unbatched when one state came in."""
        a = a.cpu().numpy()
        a = a[0] if single else a
        return a, self.action_map.weights(a) if weights else None

    def add_transition(self, state, logits, reward, next_state) -> bool:
        """Store (s, u, r, s'); refuse (return False, count) one with a NaN/Inf anywhere."""
        shape = self.shape
        s = np.asarray(state, dtype=np.float64).reshape(-1)
        u = np.asarray(logits, dtype=np.float64).reshape(-1)
        s2 = np.asarray(next_state, dtype=np.float64).reshape(-1)
        r = np.asarray(reward, dtype=np.float64)
        if s.size != shape.state_dim or s2.size != shape.state_dim or u.size != shape.num_domains or r.size != 1:
            raise ValueError(f"transition shapes s={s.shape} u={u.shape} r={r.shape} s'={s2.shape} do not match "
                             f"state_dim={shape.state_dim}, num_domains={shape.num_domains} and a scalar reward")
        # Finite and not overflowing to inf in the float32 buffer (NaN and inf fail the comparison), in one pass.
        if not np.all(np.abs(np.concatenate([s, u, r.reshape(1), s2])) <= _FLOAT32_MAX):
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
        tau = self.agent_config.tau
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
        mine = _flatten(self._config_record())
        theirs = _flatten(state["config"])
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if differ:
            detail = ", ".join(f"{k}: checkpoint {theirs.get(k)!r} vs this run {mine.get(k)!r}" for k in differ)
            raise ValueError(f"{kind} agent checkpoint was made with a different configuration ({detail})")

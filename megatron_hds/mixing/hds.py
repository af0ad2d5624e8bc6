"""HDS: the Holistic Data Scheduler. A SAC agent (mixing/sac.py) observes the training
state after every step, is paid the holistic reward (mixing/rewards.py) for the weights
it chose, and picks the next weights.

Timeline of one observe(signals of step t):
  1. s_{t+1} = state built from the signals; r_t = reward of the action u_t that drew step t's batch.
  2. The transition (s_t, u_t, r_t, s_{t+1}) goes to the replay buffer (refused and
     counted if anything in it is NaN/Inf).
  3. During warm-up (the first warmup_fraction of the run) the weights stay at the
     initial ones and the agent does not update; afterwards it updates and acts every
     update_interval steps (between, the last weights stay).
The action of warm-up steps is the one whose weights are the initial weights,
so the stored transitions describe what was really done.

With overlap_update the order of step 3 is act, then update, and the update runs on a
worker thread while the training loop computes the next step; the next observe() (or
state_dict()) waits for it before touching the agent. The agent thus acts with a policy
one update older than without overlap, and nothing else changes: the agent's randomness
is its own and nothing reads or writes it while the update runs, so a run is as
deterministic, and resumes as exactly, as without overlap.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from megatron_hds.mixing.base import Signals, lift_to_floor, normalized
from megatron_hds.mixing.rewards import HolisticReward, RewardConfig, StateBuilder
from megatron_hds.mixing.sac import SACAgent, SACConfig

STATE_VERSION = 1


@dataclass(frozen=True)
class HDSConfig:
    """When the agent acts; the agent's and the reward's own settings are SACConfig / RewardConfig."""

    warmup_fraction: float = 0.02  # first 2% of steps at the initial weights (transitions stored)
    update_interval: int = 1  # act and update every this many steps
    overlap_update: bool = False  # run the agent's update on a worker thread during the next step

    def __post_init__(self):
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction={self.warmup_fraction!r} is invalid: expected a value in [0, 1)")
        if not isinstance(self.update_interval, int) or self.update_interval < 1:
            raise ValueError(f"update_interval={self.update_interval!r} is invalid: expected a positive integer")


class AgentScheduler:
    """The timeline shared by the learning schedulers (HDS, AC-ODM): an agent with
    act / add_transition / update / state_dict, a reward, and the state builder."""

    name = "agent"
    log_all_components = True  # log every reward component, also ones not paid (ablations)

    def __init__(self, initial_weights, num_matrices: int, train_iters: int, agent, reward: HolisticReward,
                 config: HDSConfig):
        self.num_domains = agent.config.num_domains
        self.config = config
        if isinstance(train_iters, bool) or not isinstance(train_iters, (int, np.integer)) or train_iters < 1:
            raise ValueError(f"train_iters={train_iters!r} is invalid: expected a positive integer")
        self.train_iters = int(train_iters)
        self.states = StateBuilder(self.num_domains, num_matrices)
        if agent.config.state_dim != self.states.state_dim:
            raise ValueError(f"{self.name}: agent state_dim {agent.config.state_dim} does not match the state's "
                             f"{self.states.state_dim} (3 x {self.num_domains} domains + 2 x {num_matrices} "
                             f"matrices + 1)")
        self.agent = agent
        self.reward = reward
        weights = normalized(initial_weights, self.num_domains, f"{self.name} initial weights")
        self._initial = lift_to_floor(weights, agent.action_map.floor)  # the agent's weights never go below the floor
        self._initial_action = agent.action_map.action_for_weights(self._initial)
        self.warmup_steps = int(math.ceil(config.warmup_fraction * self.train_iters))
        self.state = self.states.initial_state()
        self.logits = self._initial_action.copy()  # the action (logits when unbounded)
        self.weights = self._initial.copy()
        self.skipped_transitions = 0
        self._last = None
        self._pending = None  # the overlapped update still running (a Future), if any
        # One worker thread for every overlapped update, started on first use: starting a thread per
        # step cost the step about 0.4 ms of host time. Its thread is not a daemon, so the
        # interpreter's exit waits for a running update instead of killing it inside torch.
        self._worker = None
        self._update_losses = None  # losses of the last finished overlapped update, not yet logged

    def _act(self, state):
        return self.agent.act(state)

    def _log_fields(self) -> dict:
        return {}

    def initial_weights(self) -> np.ndarray:
        return self._initial.copy()

    def wait_for_update(self) -> None:
        """Let an overlapped update finish (re-raising its error); the agent is then idle."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._update_losses = pending.result()

    def observe(self, signals: Signals) -> np.ndarray:
        self.wait_for_update()
        losses, self._update_losses = self._update_losses, None
        next_state = self.states.build(signals)
        parts = self.reward.components(signals)
        total = self.reward.total(parts)
        stored = math.isfinite(total) and self.agent.add_transition(self.state, self.logits, total, next_state)
        if not stored:
            self.skipped_transitions += 1
        self.state = next_state
        step = signals.iteration
        acting = step >= self.warmup_steps and (step - self.warmup_steps) % self.config.update_interval == 0
        if acting and not self.config.overlap_update:
            losses = self.agent.update()
        if acting:
            self.logits, self.weights = self._act(next_state)
        logged = parts if self.log_all_components else {k: parts[k] for k in self.reward.config.components}
        # Read the agent for the log before an overlapped update starts changing it.
        self._last = {**logged, "total": total, **self._log_fields(),
                      "skipped_transitions": float(self.skipped_transitions),
                      **({k: float(v) for k, v in losses.items()} if losses else {})}
        if acting and self.config.overlap_update:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mixing-agent-update")
            self._pending = self._worker.submit(self.agent.update)
        return np.asarray(self.weights, dtype=np.float64).copy()

    def last_reward(self) -> dict | None:
        return None if self._last is None else dict(self._last)

    def state_dict(self) -> dict:
        self.wait_for_update()
        return {
            "name": self.name,
            "version": STATE_VERSION,
            "warmup_steps": self.warmup_steps,
            "update_interval": self.config.update_interval,
            "agent": self.agent.state_dict(),
            "states": self.states.state_dict(),
            "reward": self.reward.state_dict(),
            "state": self.state.tolist(),
            "logits": np.asarray(self.logits).tolist(),
            "weights": np.asarray(self.weights).tolist(),
            "skipped_transitions": self.skipped_transitions,
            "update_losses": self._update_losses,
        }

    def load_state_dict(self, state: dict) -> None:
        name, version = (state.get("name"), state.get("version")) if isinstance(state, dict) else (None, None)
        if name != self.name or version != STATE_VERSION:
            raise ValueError(f"checkpoint's mixture scheduler is {name!r} (version {version}), "
                             f"not {self.name!r} version {STATE_VERSION}")
        schedule = (state["warmup_steps"], state["update_interval"])
        if schedule != (self.warmup_steps, self.config.update_interval):
            raise ValueError(f"{self.name} checkpoint has warm-up {schedule[0]} steps and update interval "
                             f"{schedule[1]}; this run has {self.warmup_steps} and {self.config.update_interval}")
        self.wait_for_update()
        self.agent.load_state_dict(state["agent"])
        self.states.load_state_dict(state["states"])
        self.reward.load_state_dict(state["reward"])
        self.state = np.asarray(state["state"], dtype=np.float64)
        self.logits = np.asarray(state["logits"], dtype=np.float64)
        self.weights = np.asarray(state["weights"], dtype=np.float64)
        self.skipped_transitions = int(state["skipped_transitions"])
        self._update_losses = state.get("update_losses")  # absent in checkpoints from before overlap_update


class HDSScheduler(AgentScheduler):
    """The SAC data scheduler on rank 0, paid the holistic reward."""

    name = "hds"

    def __init__(self, initial_weights, num_matrices: int, train_iters: int, sac: SACConfig,
                 reward: RewardConfig = RewardConfig(), config: HDSConfig = HDSConfig()):
        super().__init__(initial_weights, num_matrices, train_iters, SACAgent(sac), HolisticReward(reward), config)

    def _log_fields(self) -> dict:
        return {"alpha": self.agent.alpha}

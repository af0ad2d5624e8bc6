"""The timeline shared by the learning schedulers (HDS and AC-ODM): the state they observe,
and when their agent stores a transition, updates and acts.

Timeline of one observe(signals of step t):
  1. r_t = reward of the action u_t that drew step t's batch; s_{t+1} = state built from the signals.
  2. The transition (s_t, u_t, r_t, s_{t+1}) goes to the replay buffer (refused and
     counted if anything in it is NaN/Inf).
  3. During warm-up (the first warmup_fraction of the run) the scheduler's warm-up policy acts
     (AC-ODM: ODM's weights; HDS: the base mixture with small random residuals) and the agent
     learns from those transitions with a behaviour-cloning term (it starts its own acting from
     what was played, and its critic has seen the actions around it); afterwards the agent
     updates and acts every update_interval steps (between, the last action stays), the
     behaviour-cloning term fading out over as many steps as the warm-up had.
The stored action is always the one that was played, so transitions describe what was really done.

With overlap_update the order of step 3 is act, then update, and the update runs on a
worker thread while the training loop computes the next step; the next observe() (or
state_dict()) waits for it before touching the agent. The agent thus acts with a policy
one update older than without overlap, and nothing else changes: the agent's randomness
is its own and nothing reads or writes it while the update runs, so a run is as
deterministic, and resumes as exactly, as without overlap.

State: per-domain mean training loss, its change since the previous step, per-domain
sample count (and, for HDS, more per-domain groups its scheduler adds), Frobenius norms of
L selected matrices, the norms of their change, and training progress t/T. Each group is
z-scored across its elements and clamped to [-3, 3]; a domain that drew no sample this step
keeps its last loss.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

from megatron_hds.mixing.base import StepSignals, lift_to_floor, normalized
from megatron_hds.mixing.config import MixingConfig
from megatron_hds.mixing.worker import OrderedWorker

STATE_VERSION = 3  # 3: the redesigned HDS (base mixture, residual agent) and AC-ODM warm-up


def mean_and_std(values: np.ndarray) -> tuple:
    """(values.mean(), values.std()) of a float64 array, bit for bit: numpy's own operations
    (pairwise sum / n; sqrt of the mean squared deviation), without its generic reduction
    wrappers, which cost more than the arithmetic on a scheduler's few numbers."""
    n = values.size
    mean = np.add.reduce(values, axis=None) / n
    deviations = np.subtract(values, mean)
    np.square(deviations, out=deviations)
    return mean, np.sqrt(np.add.reduce(deviations, axis=None) / n)


def clamp(values: np.ndarray, bound: float) -> np.ndarray:
    """np.clip(values, -bound, bound) (the same ufunc loop: min(max(x, lo), hi), NaN kept)."""
    return np.minimum(np.maximum(values, -bound), bound)


def zscore_clamped(values: np.ndarray, clip: float = 3.0) -> np.ndarray:
    """(x - mean) / std over the group, clamped; a constant group maps to zeros."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values
    mean, std = mean_and_std(values)
    if not np.isfinite(std) or std < 1e-12:
        return np.zeros_like(values)
    return clamp((values - mean) / std, clip)


class StateBuilder:
    """Turns consecutive StepSignals into state vectors: the per-domain groups first (loss, its
    change, samples, then ``extra_domain_groups`` more), then the L weight norms, the L norms of
    their change, and progress: (3 + extra) D + 2 L + 1 numbers."""

    def __init__(self, num_domains: int, num_matrices: int, extra_domain_groups: int = 0):
        self.num_domains = num_domains
        self.num_matrices = num_matrices
        self.domain_groups = 3 + extra_domain_groups
        self.last_loss = np.full(num_domains, np.nan)

    @property
    def state_dim(self) -> int:
        return self.domain_groups * self.num_domains + 2 * self.num_matrices + 1

    def initial_state(self) -> np.ndarray:
        """The state before any step: nothing measured yet, progress 0."""
        return np.zeros(self.state_dim)

    def build(self, signals: StepSignals, extra_domain_groups=()) -> np.ndarray:
        loss = np.asarray(signals.domain_loss, dtype=np.float64)
        drawn = np.isfinite(loss)
        previous = self.last_loss.copy()
        current = np.where(drawn, loss, previous)
        # Domains never seen yet take the mean of the seen ones, so they sit at z = 0.
        known = np.isfinite(current)
        fill = current[known].mean() if known.any() else 0.0
        current = np.where(known, current, fill)
        change = current - np.where(np.isfinite(previous), previous, current)
        self.last_loss = np.where(drawn, loss, self.last_loss)
        norms = np.asarray(signals.extra.get("weight_norms", np.zeros(self.num_matrices)), dtype=np.float64)
        change_norms = np.asarray(signals.extra.get("weight_change_norms", np.zeros(self.num_matrices)),
                                  dtype=np.float64)
        if len(extra_domain_groups) != self.domain_groups - 3:
            raise ValueError(f"{len(extra_domain_groups)} extra per-domain groups, expected {self.domain_groups - 3}")
        domain_parts = [current, change, np.asarray(signals.domain_samples, dtype=np.float64), *extra_domain_groups]
        parts = [zscore_clamped(part) for part in domain_parts]
        parts += [zscore_clamped(norms), zscore_clamped(change_norms), np.array([signals.progress])]
        return np.concatenate(parts)

    def state_dict(self) -> dict:
        return {"last_loss": self.last_loss.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.last_loss = np.asarray(state["last_loss"], dtype=np.float64)


class AgentTimeline(ABC):
    """The timeline shared by the learning schedulers (HDS, AC-ODM): an agent with
    act / add_transition / update(bc_weight) / state_dict, a reward, and the state builder.

    Subclasses say what differs: ``_reward(signals)`` (the components and the total),
    ``_next_state(signals)``, ``_warmup_action(state)`` (the action played during warm-up),
    ``_policy_action(state)``, ``_weights(action)`` (the mixture an action means) and
    ``_extra_state()`` / ``_load_extra_state()`` (their own checkpointed state)."""

    name = "agent"
    log_all_components = True  # log every reward component, also ones not paid (ablations)
    reweigh_every_step = False  # True: the action's weights change between actions (HDS: the base moves)

    def __init__(self, initial_weights, train_iters: int, agent, states: StateBuilder, mixing: MixingConfig):
        self.num_domains = agent.shape.num_domains
        self.update_interval = mixing.update_interval
        self.overlap_update = mixing.overlap_update
        if isinstance(train_iters, bool) or not isinstance(train_iters, (int, np.integer)) or train_iters < 1:
            raise ValueError(f"train_iters={train_iters!r} is invalid: expected a positive integer")
        self.train_iters = int(train_iters)
        self.states = states
        if agent.shape.state_dim != self.states.state_dim:
            raise ValueError(f"{self.name}: agent state_dim {agent.shape.state_dim} does not match the state's "
                             f"{self.states.state_dim} ({self.states.domain_groups} x {self.num_domains} domains "
                             f"+ 2 x {self.states.num_matrices} matrices + 1)")
        self.agent = agent
        weights = normalized(initial_weights, self.num_domains, f"{self.name} initial weights")
        self._initial = lift_to_floor(weights, agent.action_map.floor)  # the agent's weights never go below the floor
        self.warmup_steps = int(math.ceil(mixing.warmup_fraction * self.train_iters))
        self.state = self.states.initial_state()
        self.action = self._initial_action()
        self.weights = self._initial.copy()
        self.skipped_transitions = 0
        self._last = None
        self._pending = None  # (ticket, result holder) of the overlapped update still running, if any
        # One worker thread for every overlapped update, started on first use: starting a thread per
        # step cost the step about 0.4 ms of host time, a ThreadPoolExecutor's submit still ~0.05 ms.
        # The interpreter's exit waits for a running update instead of killing it inside torch (worker.py).
        self._worker = OrderedWorker("mixing-agent-update", self)
        self._update_losses = None  # losses of the last finished overlapped update, not yet logged
        self._losses = None  # the update losses this observe logs (what _log_fields may reuse)

    # ---- what subclasses define ------------------------------------------------------------
    def _initial_action(self) -> np.ndarray:
        return self.agent.action_map.action_for_weights(self._initial)

    @abstractmethod
    def _reward(self, signals: StepSignals) -> tuple[dict, float]:
        """(every component for the log, the total paid) for the step whose batch the last action drew."""

    def _next_state(self, signals: StepSignals) -> np.ndarray:
        return self.states.build(signals)

    def _warmup_action(self, state: np.ndarray) -> np.ndarray:
        return self._initial_action()

    def _policy_action(self, state: np.ndarray) -> np.ndarray:
        return self.agent.act(state)[0]

    def _weights(self, action: np.ndarray) -> np.ndarray:
        return self.agent.action_map.weights(action)

    def _log_fields(self) -> dict:
        return {}

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict) -> None:
        pass

    # ---- the timeline ------------------------------------------------------------------------
    def initial_weights(self) -> np.ndarray:
        return self._initial.copy()

    def wait_for_update(self) -> None:
        """Let an overlapped update finish (re-raising its error); the agent is then idle."""
        if self._pending is not None:
            (ticket, result), self._pending = self._pending, None
            self._worker.wait(ticket)
            self._update_losses = result[0]

    def bc_weight(self, step: int) -> float:
        """Weight of the behaviour-cloning term: 1 through warm-up, then fading to 0 over as many steps."""
        if self.warmup_steps == 0:
            return 0.0
        return float(np.clip(2.0 - step / self.warmup_steps, 0.0, 1.0))

    def observe(self, signals: StepSignals) -> np.ndarray:
        self.wait_for_update()
        losses, self._update_losses = self._update_losses, None
        parts, total = self._reward(signals)
        next_state = self._next_state(signals)
        stored = math.isfinite(total) and self.agent.add_transition(self.state, self.action, total, next_state)
        if not stored:
            self.skipped_transitions += 1
        self.state = next_state
        step = signals.iteration
        warm = step < self.warmup_steps
        acting = warm or (step - self.warmup_steps) % self.update_interval == 0
        update = (lambda: self.agent.update(bc_weight=self.bc_weight(step))) if acting else None
        if update is not None and not self.overlap_update:
            losses = update()
        if acting:
            self.action = self._warmup_action(next_state) if warm else self._policy_action(next_state)
        if acting or self.reweigh_every_step:
            self.weights = self._weights(self.action)
        # Read the agent for the log before an overlapped update starts changing it.
        self._losses = losses
        self._last = {**parts, "total": total, **self._log_fields(),
                      "skipped_transitions": float(self.skipped_transitions),
                      **({k: float(v) for k, v in losses.items()} if losses else {})}
        if update is not None and self.overlap_update:
            result = []
            self._pending = (self._worker.submit(lambda: result.append(update())), result)
        return np.asarray(self.weights, dtype=np.float64).copy()

    def last_reward(self) -> dict | None:
        return None if self._last is None else dict(self._last)

    def state_dict(self) -> dict:
        self.wait_for_update()
        return {
            "name": self.name,
            "version": STATE_VERSION,
            "warmup_steps": self.warmup_steps,
            "update_interval": self.update_interval,
            "agent": self.agent.state_dict(),
            "states": self.states.state_dict(),
            "state": self.state.tolist(),
            "action": np.asarray(self.action).tolist(),
            "weights": np.asarray(self.weights).tolist(),
            "skipped_transitions": self.skipped_transitions,
            "update_losses": self._update_losses,
            "scheduler": self._extra_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        name, version = (state.get("name"), state.get("version")) if isinstance(state, dict) else (None, None)
        if name != self.name or version != STATE_VERSION:
            raise ValueError(f"checkpoint's mixture scheduler is {name!r} (version {version}), "
                             f"not {self.name!r} version {STATE_VERSION}")
        schedule = (state["warmup_steps"], state["update_interval"])
        if schedule != (self.warmup_steps, self.update_interval):
            raise ValueError(f"{self.name} checkpoint has warm-up {schedule[0]} steps and update interval "
                             f"{schedule[1]}; this run has {self.warmup_steps} and {self.update_interval}")
        self.wait_for_update()
        self.agent.load_state_dict(state["agent"])
        self.states.load_state_dict(state["states"])
        self.state = np.asarray(state["state"], dtype=np.float64)
        self.action = np.asarray(state["action"], dtype=np.float64)
        self.weights = np.asarray(state["weights"], dtype=np.float64)
        self.skipped_transitions = int(state["skipped_transitions"])
        self._update_losses = state["update_losses"]
        self._load_extra_state(state["scheduler"])

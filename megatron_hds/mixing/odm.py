"""ODM (Albalak et al. 2023, "Efficient Online Data Mixing For Language Model
Pre-Training"): an EXP3 bandit with one arm per domain whose reward is that domain's
training loss, in the paper's form and, as an option, the released code's variant.

Definitions (K domains; R the per-domain reward estimates, zero at the start; a the
smoothing; "observation" = one call to ``observe``, i.e. one training step)

    t          the scheduler's step clock: the number of observations so far, this one
               included (warm-up and in-between steps count). With no warm-up and
               ``update_interval=1`` the first update has t = 1. The released code
               passes the training iteration here too, so after a 2000-step warm-up
               its first update already uses eps_2001, not eps_1.
    eps_t      min(1/K, sqrt(ln K / (K t))); eps_0 := eps_1 (= 1/K for every K >= 2),
               so the temperature of the first round is defined.
    reward     paper:    R_i <- a R_i + (1 - a) L_i / o_i
               released: R_i <- a R_i + (1 - a) exp(L_i)
               for every domain i the step drew samples from and whose loss is finite;
               o_i is the probability that the step observed domain i, the importance
               weight of an estimate that only sees drawn domains (``signals.observed``:
               1 for every domain under the "hds" layout, whose probe micro-batches draw
               every domain every step, so the update is then the full-information one
               without importance weights; 1 - (1 - p_i)^n for n independent draws; the
               paper's one-arm-per-step p_i when the loop gives none). Dividing by p_i
               when every domain is observed over-credits rarely drawn domains and pulls
               the mixture to uniform. Domains that drew nothing keep R_i.
    policy     paper:    pi_t = (1 - K eps_t) softmax(eps_{t-1} R) + eps_t
               released: pi_t = (1 - K eps_t) R / sum(R) + eps_t
               The released code computes ``R_i eps_{t-1} * (1 - K eps_t) /
               sum_j(R_j eps_{t-1}) + eps_t``: eps_{t-1} cancels, which is the "smooth
               exp(L) without importance weights and normalise linearly" of docs/method.md,
               still mixed with eps_t exploration. Domains never drawn have R_i = 0 and
               get eps_t alone, as there; with sum(R) = 0 the exploitation part is uniform.
    floor      w = max(pi, floor) / sum(max(pi, floor)), the sampler's rule.

Schedule: the first ``warmup_steps`` observations return the (floored) initial weights
and do not touch R (the released code's default: no internal updates during warm-up,
its estimates start from the first post-warm-up loss). After warm-up every observation
updates R (the weights in force are known, so the importance weights stay right) and
every ``update_interval``-th one, counted from the end of warm-up, recomputes the
weights; in between the last weights are returned. The released code instead skips the
R update on steps that do not change the weights; with the reference interval 1 the two
agree.

A domain whose loss is NaN/Inf although it drew samples (or whose reward would not be
finite) is left out of the update and counted in ``skipped_signals``; a NaN loss with
no samples is the normal "not drawn" and not counted.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from megatron_hds.mixing.base import StepSignals, normalized
from megatron_hds.mixing.config import ODMConfig

logger = logging.getLogger(__name__)

STATE_FORMAT = "megatron_hds.mixing.odm"
STATE_VERSION = 1


def exploration_rate(num_domains: int, t: int) -> float:
    """eps_t = min(1/K, sqrt(ln K / (K t))), with eps_0 := eps_1."""
    t = max(int(t), 1)
    return min(1.0 / num_domains, math.sqrt(math.log(num_domains) / (num_domains * t)))


class ODMScheduler:
    """EXP3 over domains; reward = the domain's mean training loss of the step."""

    name = "odm"

    def __init__(self, num_domains: int, config: ODMConfig, initial_weights=None, update_interval: int = 1,
                 weight_floor: float = 0.0):
        if isinstance(num_domains, bool) or not isinstance(num_domains, (int, np.integer)) or num_domains < 1:
            raise ValueError(f"num_domains={num_domains!r} is invalid: expected a positive integer")
        self.num_domains = int(num_domains)
        self.variant = config.variant
        self.smoothing = float(config.smoothing)
        self.warmup_steps = int(config.warmup_steps)
        if isinstance(update_interval, bool) or not isinstance(update_interval, (int, np.integer)) \
                or update_interval < 1:
            raise ValueError(f"ODM update_interval={update_interval!r} is invalid: expected an integer >= 1")
        self.update_interval = int(update_interval)
        if not (isinstance(weight_floor, (int, float)) and 0.0 <= weight_floor <= 1.0 / self.num_domains):
            raise ValueError(f"ODM weight_floor={weight_floor!r} is invalid: expected a value in "
                             f"[0, 1/K] = [0, {1.0 / self.num_domains:.6g}] for K={self.num_domains} domains")
        self.weight_floor = float(weight_floor)
        if initial_weights is None:
            initial_weights = np.full(self.num_domains, 1.0 / self.num_domains)
        self._initial = self._floored(normalized(initial_weights, self.num_domains, "ODM initial weights"))

        self._rewards = np.zeros(self.num_domains)  # R
        self._steps = 0  # t: observations so far
        self._updates = 0  # times the weights were recomputed
        self._eps = 1.0 / self.num_domains  # eps of the last update (eps_0 before any)
        self._weights = self._initial.copy()  # the last weights returned (pi_{t-1} after the floor)
        self.skipped_signals = 0
        self._last_reward: dict | None = None

    # ---- MixtureScheduler --------------------------------------------------------------
    def initial_weights(self) -> np.ndarray:
        return self._initial.copy()

    def observe(self, signals: StepSignals) -> np.ndarray:
        self._steps += 1
        t = self._steps
        observed = 0
        if t > self.warmup_steps:
            observed = self._update_rewards(signals)
            if (t - self.warmup_steps) % self.update_interval == 0:
                self._update_weights(t)
        self._last_reward = {
            "eps": float(self._eps),
            "reward_estimate_mean": float(self._rewards.mean()),
            "reward_estimate_min": float(self._rewards.min()),
            "reward_estimate_max": float(self._rewards.max()),
            "observed_domains": float(observed),
            "skipped_signals": float(self.skipped_signals),
        }
        return self._weights.copy()

    def last_reward(self) -> dict | None:
        return None if self._last_reward is None else dict(self._last_reward)

    def state_dict(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "name": self.name,
            "variant": self.variant,
            "num_domains": self.num_domains,
            "hyperparameters": self._hyperparameters(),
            "rewards": self._rewards.tolist(),
            "steps": self._steps,
            "updates": self._updates,
            "eps": self._eps,
            "weights": self._weights.tolist(),
            "skipped_signals": self.skipped_signals,
            "last_reward": None if self._last_reward is None else dict(self._last_reward),
        }

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            found = state.get("name") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"checkpoint's mixture scheduler state ({found!r}) is not an ODM state; "
                             f"this run uses --mixing odm")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"ODM state version {state.get('version')!r} is not supported (expected {STATE_VERSION})")
        if state["num_domains"] != self.num_domains:
            raise ValueError(f"checkpoint's ODM state has {state['num_domains']} domains, this run has "
                             f"{self.num_domains}; resume with the same domains")
        if state["variant"] != self.variant:
            raise ValueError(f"checkpoint's ODM variant is {state['variant']!r}, this run's is {self.variant!r}; "
                             f"resume with the same variant")
        saved = state.get("hyperparameters", {})
        if saved != self._hyperparameters():
            logger.warning("ODM hyperparameters changed on resume: checkpoint %s, now %s (the new ones apply)",
                           saved, self._hyperparameters())
        rewards = np.asarray(state["rewards"], dtype=np.float64)
        weights = np.asarray(state["weights"], dtype=np.float64)
        if rewards.shape != (self.num_domains,) or weights.shape != (self.num_domains,) \
                or not np.all(np.isfinite(rewards)) or not np.all(np.isfinite(weights)):
            raise ValueError("checkpoint's ODM state holds malformed reward estimates or weights")
        self._rewards = rewards.copy()
        self._weights = weights.copy()
        self._steps = int(state["steps"])
        self._updates = int(state["updates"])
        self._eps = float(state["eps"])
        self.skipped_signals = int(state["skipped_signals"])
        last = state.get("last_reward")
        self._last_reward = None if last is None else dict(last)

    # ---- internals ---------------------------------------------------------------------
    def _hyperparameters(self) -> dict:
        return {"smoothing": self.smoothing, "warmup_steps": self.warmup_steps,
                "update_interval": self.update_interval, "weight_floor": self.weight_floor,
                "initial_weights": self._initial.tolist()}

    def _floored(self, weights: np.ndarray) -> np.ndarray:
        if self.weight_floor > 0.0:
            weights = np.maximum(weights, self.weight_floor)
        return weights / weights.sum()

    def _drawn_with(self, signals: StepSignals) -> np.ndarray:
        """The probability that the step observed each domain: the sampler's, given the batch
        layout (with every domain observed every step, 1: full information, no importance
        weights); else the weights the batch was drawn with; else our last answer."""
        if signals.observed is not None:
            observed = np.asarray(signals.observed, dtype=np.float64).reshape(-1)
            if observed.size == self.num_domains and np.all(np.isfinite(observed)):
                return observed
        try:
            return normalized(signals.weights, self.num_domains, "signals.weights")
        except (TypeError, ValueError):
            return self._weights

    def _update_rewards(self, signals: StepSignals) -> int:
        losses = np.asarray(signals.domain_loss, dtype=np.float64).reshape(-1)
        if losses.size != self.num_domains:
            raise ValueError(f"domain_loss has {losses.size} entries, expected one per domain ({self.num_domains})")
        samples = None if signals.domain_samples is None else np.asarray(signals.domain_samples).reshape(-1)
        if samples is not None and samples.size != self.num_domains:
            raise ValueError(f"domain_samples has {samples.size} entries, expected one per domain "
                             f"({self.num_domains})")
        drawn_with = self._drawn_with(signals)
        a = self.smoothing
        observed = 0
        for i in range(self.num_domains):
            drew = bool(samples[i] > 0) if samples is not None else bool(np.isfinite(losses[i]))
            if not drew:
                continue
            loss = losses[i]
            if not math.isfinite(loss):
                self.skipped_signals += 1
                continue
            if self.variant == "paper":
                p = drawn_with[i]
                reward = loss / p if p > 0 else math.inf
            else:
                reward = math.exp(loss) if loss < 700.0 else math.inf
            value = a * self._rewards[i] + (1.0 - a) * reward
            if not math.isfinite(value):
                self.skipped_signals += 1
                continue
            self._rewards[i] = value
            observed += 1
        return observed

    def _update_weights(self, t: int) -> None:
        k = self.num_domains
        eps = exploration_rate(k, t)
        if self.variant == "paper":
            z = exploration_rate(k, t - 1) * self._rewards
            z = np.exp(z - z.max())
            exploit = z / z.sum()
        else:
            total = self._rewards.sum()
            exploit = self._rewards / total if total > 0 else np.full(k, 1.0 / k)
        policy = (1.0 - k * eps) * exploit + eps
        if not (np.all(np.isfinite(policy)) and np.all(policy >= 0) and policy.sum() > 0):
            self.skipped_signals += 1
            logger.warning("ODM policy %s is not a distribution; keeping the previous weights", policy)
            return
        self._eps = eps
        self._updates += 1
        self._weights = self._floored(policy / policy.sum())

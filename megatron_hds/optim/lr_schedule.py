"""Learning-rate schedule with Megatron's OptimizerParamScheduler semantics, in iterations.

The schedule, for ``n`` = optimizer steps already taken (0 before the first step):

- warm-up (``n <= W`` and ``W > 0``): ``lr * n / W``, i.e. linear from 0, so the very
  first step runs at lr 0 exactly as in Megatron;
- ``constant`` style: ``lr`` for every ``n > W`` (Megatron never lowers a constant
  schedule, not even after ``lr_decay_iters``);
- after the decay window (``n > lr_decay_iters``): ``min_lr``;
- otherwise, with ``r = (n - W) / (lr_decay_iters - W)``:
  ``linear``: ``min_lr + (lr - min_lr) * (1 - r)``;
  ``cosine``: ``min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * r))``.

``W`` is ``lr_warmup_iters``, or ``lr_warmup_fraction * lr_decay_iters`` (Megatron's
``--lr-warmup-fraction``; it may be fractional, as in Megatron). ``lr_decay_iters``
defaults to ``train_iters``. Weight decay is constant: the scheduler writes
``weight_decay * group["wd_mult"]`` into each parameter group (the optimizer builder
puts ``wd_mult`` 1 on decayed and 0 on exempt groups), as Megatron's constant
``--weight-decay-incr-style`` does.

Resume: ``load_state_dict`` refuses a checkpoint whose schedule differs from the
configured one and names every differing field; ``override=True`` keeps the new
configuration and takes only the step count from the checkpoint (Megatron's
``--override-opt_param-scheduler``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from megatron_hds.config import LR_DECAY_STYLES as DECAY_STYLES
from megatron_hds.config import OptimConfig

# Version of the state_dict layout below; bump on incompatible changes.
SCHEDULER_STATE_VERSION = 1


@dataclass(frozen=True)
class LRScheduleConfig:
    """One run's learning-rate and weight-decay schedule, resolved from OptimConfig (whose fields
    are the flags and hold the defaults) and the run's length; see ``from_config``."""

    lr: float  # peak learning rate, reached at the end of warm-up
    train_iters: int  # the run's length; the default decay length
    min_lr: float  # the floor the decay ends at
    lr_decay_style: str  # constant, linear or cosine
    weight_decay: float  # constant weight decay of the decayed parameter group
    lr_decay_iters: int | None = None  # None: train_iters
    lr_warmup_iters: int | None = None  # linear warm-up length in iterations
    lr_warmup_fraction: float | None = None  # warm-up as a fraction of the decay length (exclusive with the above)

    @classmethod
    def from_config(cls, optim: OptimConfig, train_iters: int) -> "LRScheduleConfig":
        """The schedule that --lr, --min-lr, --lr-decay-*, --lr-warmup-* and --weight-decay describe."""
        return cls(lr=optim.lr, train_iters=train_iters, min_lr=optim.min_lr, lr_decay_style=optim.lr_decay_style,
                   weight_decay=optim.weight_decay, lr_decay_iters=optim.lr_decay_iters,
                   lr_warmup_iters=optim.lr_warmup_iters, lr_warmup_fraction=optim.lr_warmup_fraction)

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"lr must be a finite number >= 0, got {self.lr!r}")
        if not (isinstance(self.min_lr, (int, float)) and math.isfinite(self.min_lr) and self.min_lr >= 0):
            raise ValueError(f"min_lr must be a finite number >= 0, got {self.min_lr!r}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if self.lr_decay_style not in DECAY_STYLES:
            raise ValueError(
                f"unknown lr_decay_style {self.lr_decay_style!r}; accepted: {', '.join(DECAY_STYLES)}"
            )
        _check_int("train_iters", self.train_iters, minimum=1)
        if self.lr_decay_iters is not None:
            _check_int("lr_decay_iters", self.lr_decay_iters, minimum=1)
        if self.lr_warmup_iters is not None and self.lr_warmup_fraction is not None:
            raise ValueError(
                f"give lr_warmup_iters ({self.lr_warmup_iters}) or lr_warmup_fraction "
                f"({self.lr_warmup_fraction}), not both"
            )
        if self.lr_warmup_iters is not None:
            _check_int("lr_warmup_iters", self.lr_warmup_iters, minimum=0)
        if self.lr_warmup_fraction is not None and not (0.0 <= self.lr_warmup_fraction <= 1.0):
            raise ValueError(f"lr_warmup_fraction must be in [0, 1], got {self.lr_warmup_fraction!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        # Megatron asserts warm-up < decay length: the decay ratio divides by their difference.
        if self.warmup_iters >= self.decay_iters and self.lr_decay_style != "constant":
            raise ValueError(
                f"warm-up ({self.warmup_iters} iterations) must be shorter than lr_decay_iters "
                f"({self.decay_iters}) for the {self.lr_decay_style} style"
            )

    @property
    def decay_iters(self) -> int:
        """Resolved decay length: lr_decay_iters, else train_iters."""
        return self.lr_decay_iters if self.lr_decay_iters is not None else self.train_iters

    @property
    def warmup_iters(self) -> float:
        """Resolved warm-up length (may be fractional when given as a fraction, as in Megatron)."""
        if self.lr_warmup_fraction is not None:
            return self.lr_warmup_fraction * self.decay_iters
        return float(self.lr_warmup_iters or 0)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def lr_at(config: LRScheduleConfig, iteration: int) -> float:
    """Learning rate of the optimizer step taken after ``iteration`` completed steps."""
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    warmup = config.warmup_iters
    if warmup > 0 and iteration <= warmup:
        return config.lr * float(iteration) / float(warmup)
    if config.lr_decay_style == "constant":
        return config.lr
    decay = config.decay_iters
    if iteration > decay:
        return config.min_lr
    ratio = (iteration - warmup) / (decay - warmup)
    if config.lr_decay_style == "linear":
        coeff = 1.0 - ratio
    else:  # cosine
        coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
    return config.min_lr + coeff * (config.lr - config.min_lr)


class LRScheduler:
    """Sets lr (and constant weight decay) on an optimizer's param groups, one step at a time.

    ``optimizer`` is anything with ``param_groups`` (torch optimizers and the wrappers of
    ``megatron_hds.optim.optimizer``). Construction applies the lr of step 0; call
    ``step()`` once after every optimizer step, skipped fp16 steps included (as Megatron
    does: the schedule follows iterations, not successful updates).
    """

    def __init__(self, optimizer: Any, config: LRScheduleConfig, num_steps: int = 0) -> None:
        self.optimizer = optimizer
        self.config = config
        self.num_steps = int(num_steps)
        self._apply()

    def get_lr(self, iteration: int | None = None) -> float:
        """lr for the step after ``iteration`` completed steps (default: the current one)."""
        return lr_at(self.config, self.num_steps if iteration is None else iteration)

    def step(self, increment: int = 1) -> float:
        """Advance by ``increment`` iterations, write the new lr into the optimizer, return it."""
        if increment < 0:
            raise ValueError(f"increment must be >= 0, got {increment}")
        self.num_steps += increment
        return self._apply()

    def _apply(self) -> float:
        lr = self.get_lr()
        for group in _param_groups(self.optimizer):
            group["lr"] = lr * group.get("lr_mult", 1.0)
            group["weight_decay"] = self.config.weight_decay * group.get("wd_mult", 1.0)
        return lr

    # Keys follow Megatron's OptimizerParamScheduler.state_dict (in iterations, not samples).
    def state_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "version": SCHEDULER_STATE_VERSION,
            "max_lr": c.lr,
            "min_lr": c.min_lr,
            "lr_decay_style": c.lr_decay_style,
            "lr_decay_steps": c.decay_iters,
            "lr_warmup_steps": c.warmup_iters,
            "num_steps": self.num_steps,
            "start_wd": c.weight_decay,
            "end_wd": c.weight_decay,
            "wd_incr_style": "constant",
            "train_iters": c.train_iters,
        }

    def load_state_dict(self, state: dict[str, Any], override: bool = False) -> None:
        """Restore the step count; refuse a different schedule unless ``override``.

        With ``override=True`` the configured schedule wins and only ``num_steps`` is
        taken from the checkpoint (Megatron's --override-opt_param-scheduler).
        """
        version = state.get("version", SCHEDULER_STATE_VERSION)
        if version != SCHEDULER_STATE_VERSION:
            raise ValueError(
                f"LR scheduler state version {version} is not supported (this code reads "
                f"version {SCHEDULER_STATE_VERSION})"
            )
        if "num_steps" not in state:
            raise ValueError(f"LR scheduler state has no num_steps; keys: {sorted(state)}")
        if not override:
            mine = self.state_dict()
            compared = ("max_lr", "min_lr", "lr_decay_style", "lr_decay_steps", "lr_warmup_steps", "start_wd")
            diffs = [
                f"{key}: checkpoint {state[key]!r} vs configured {mine[key]!r}"
                for key in compared
                if key in state and not _same(state[key], mine[key])
            ]
            if diffs:
                raise ValueError(
                    "the checkpoint's LR schedule differs from the configured one ("
                    + "; ".join(diffs)
                    + "); use the checkpoint's values, or load with override=True "
                    "(--override-opt_param-scheduler) to keep the new schedule"
                )
        self.num_steps = int(state["num_steps"])
        self._apply()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a == b


def _param_groups(optimizer: Any) -> Iterable[dict]:
    groups = getattr(optimizer, "param_groups", None)
    if groups is None:
        raise TypeError(f"optimizer {type(optimizer).__name__} has no param_groups")
    return groups


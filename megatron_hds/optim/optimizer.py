"""AdamW for training: weight-decay parameter groups, fp32 master weights for bf16/fp16
models, the fp16 dynamic loss scaler, and gradient clipping by a given global norm.

Who computes what: the optimizer never reduces across ranks. The training loop passes
``grad_norm_fn`` (the global norm across TP/PP/DP, computed by the parallel code over
the pairs this module hands it) and ``found_inf_reduce`` (a MAX all-reduce over the
model-parallel group so every rank skips an fp16 overflow step together). Without them
the local fallbacks are used, which are exact for a single process and for pure DP
after the gradient all-reduce.

Weight-decay rule (Megatron's): a parameter gets NO weight decay when its name ends in
``bias``, when it has fewer than 2 dimensions (LayerNorm/RMSNorm weights and biases are
1-D), or, when a module is given, when it belongs to a normalisation module (class name
containing ``Norm``). Everything else (linear weights, embeddings) is decayed.
Groups carry ``wd_mult`` (1 / 0) so the LR scheduler can set the constant weight decay.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from megatron_hds import kernels

# Version of the optimizer state_dict layout written below.
OPTIMIZER_STATE_VERSION = 1

# Megatron's guard against dividing by a zero norm when clipping.
CLIP_EPS = 1.0e-6

GradPairs = list[tuple[nn.Parameter, torch.Tensor]]
"""(model parameter, fp32 gradient the optimizer steps on) pairs, for the global norm."""


@dataclass(frozen=True)
class LossScalerConfig:
    """fp16 dynamic loss scaling, Megatron's defaults (--initial-loss-scale, --min-loss-scale,
    --loss-scale-window, --hysteresis)."""

    initial_scale: float = 2.0**32
    min_scale: float = 1.0
    growth_interval: int = 1000
    """Consecutive overflow-free steps before the scale grows."""
    hysteresis: int = 2
    """Overflows tolerated (since the last growth) before the scale backs off."""
    backoff_factor: float = 0.5
    growth_factor: float = 2.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial_scale) and self.initial_scale > 0):
            raise ValueError(f"initial_scale must be a finite number > 0, got {self.initial_scale!r}")
        if not (math.isfinite(self.min_scale) and 0 < self.min_scale <= self.initial_scale):
            raise ValueError(f"min_scale must be in (0, initial_scale={self.initial_scale}], got {self.min_scale!r}")
        if isinstance(self.growth_interval, bool) or not isinstance(self.growth_interval, int) or self.growth_interval < 1:
            raise ValueError(f"growth_interval must be an integer >= 1, got {self.growth_interval!r}")
        if isinstance(self.hysteresis, bool) or not isinstance(self.hysteresis, int) or self.hysteresis < 1:
            raise ValueError(f"hysteresis must be an integer >= 1, got {self.hysteresis!r}")
        if not (0 < self.backoff_factor < 1):
            raise ValueError(f"backoff_factor must be in (0, 1), got {self.backoff_factor!r}")
        if not self.growth_factor > 1:
            raise ValueError(f"growth_factor must be > 1, got {self.growth_factor!r}")


class DynamicLossScaler:
    """Megatron's DynamicGradScaler: back off after ``hysteresis`` overflows, grow after
    ``growth_interval`` clean steps."""

    def __init__(self, config: LossScalerConfig | None = None) -> None:
        self.config = config or LossScalerConfig()
        self.scale = float(self.config.initial_scale)
        self.growth_tracker = 0
        self.hysteresis_tracker = self.config.hysteresis

    @property
    def inv_scale(self) -> float:
        return 1.0 / self.scale

    def update(self, found_inf: bool) -> None:
        c = self.config
        if found_inf:
            self.growth_tracker = 0
            self.hysteresis_tracker -= 1
            if self.hysteresis_tracker <= 0:
                self.scale = max(self.scale * c.backoff_factor, c.min_scale)
        else:
            self.growth_tracker += 1
            if self.growth_tracker == c.growth_interval:
                self.growth_tracker = 0
                self.hysteresis_tracker = c.hysteresis
                self.scale = self.scale * c.growth_factor

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "growth_tracker": self.growth_tracker, "hysteresis_tracker": self.hysteresis_tracker}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"scale", "growth_tracker", "hysteresis_tracker"} - set(state)
        if missing:
            raise ValueError(f"loss scaler state lacks {sorted(missing)}")
        scale = state["scale"]
        self.scale = float(scale.item() if torch.is_tensor(scale) else scale)
        self.growth_tracker = int(state["growth_tracker"])
        self.hysteresis_tracker = int(state["hysteresis_tracker"])


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step did, for logging."""

    skipped: bool
    """True when no update was applied (fp16 overflow, or a non-finite grad norm)."""
    grad_norm: float | None
    """Global grad norm before clipping (None when the step was skipped for overflow)."""
    loss_scale: float
    """Loss scale after this step's update (1.0 without a scaler)."""


# ---------------------------------------------------------------------------
# Parameter groups


def _named_params(model_or_named_params: nn.Module | Iterable[tuple[str, nn.Parameter]]):
    """(name, param, in_norm_module) for trainable params, each shared param once."""
    if isinstance(model_or_named_params, nn.Module):
        norm_params: set[int] = set()
        for module in model_or_named_params.modules():
            if "norm" in type(module).__name__.lower():
                norm_params.update(id(p) for p in module.parameters(recurse=False))
        items = [(n, p, id(p) in norm_params) for n, p in model_or_named_params.named_parameters()]
    else:
        items = []
        for entry in model_or_named_params:
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)):
                raise TypeError(f"expected an nn.Module or (name, parameter) pairs, got an item {entry!r:.80}")
            items.append((entry[0], entry[1], False))
    seen: set[int] = set()
    out = []
    for name, param, in_norm in items:
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        out.append((name, param, in_norm))
    return out


def no_weight_decay(name: str, param: torch.Tensor, in_norm_module: bool = False) -> bool:
    """The weight-decay exemption rule (see the module docstring)."""
    return name.endswith("bias") or param.dim() < 2 or in_norm_module


def weight_decay_groups(
    model_or_named_params: nn.Module | Iterable[tuple[str, nn.Parameter]], weight_decay: float
) -> list[dict[str, Any]]:
    """Two param groups: decayed matrices (wd_mult 1) and exempt biases/norms (wd_mult 0).

    Each group also lists ``param_names`` for checks and debugging. Empty groups are dropped.
    """
    decay, exempt = [], []
    for name, param, in_norm in _named_params(model_or_named_params):
        (exempt if no_weight_decay(name, param, in_norm) else decay).append((name, param))
    if not decay and not exempt:
        raise ValueError("no trainable parameters (requires_grad=True) to optimize")
    groups = []
    for label, members, mult in (("decay", decay, 1.0), ("no_decay", exempt, 0.0)):
        if members:
            groups.append({
                "params": [p for _, p in members],
                "param_names": [n for n, _ in members],
                "name": label,
                "wd_mult": mult,
                "weight_decay": weight_decay * mult,
            })
    return groups


def adamw_impl_kwargs(params: Sequence[torch.Tensor], fused: bool | None = None) -> dict[str, bool]:
    """fused=True when every param is on CUDA and this torch's AdamW has ``fused``; foreach otherwise.

    The device is read from the parameters, never from torch.cuda, so CPU-only hosts
    and GPU hosts run the same code.
    """
    supports_fused = "fused" in inspect.signature(torch.optim.AdamW.__init__).parameters
    on_cuda = bool(params) and all(p.device.type == "cuda" for p in params)
    if fused is None:
        fused = supports_fused and on_cuda
    elif fused and not supports_fused:
        raise ValueError(f"fused AdamW requested but torch {torch.__version__} has no fused AdamW")
    return {"fused": True} if fused else {"foreach": True}


# ---------------------------------------------------------------------------
# Gradient norm and clipping


def local_grad_norm(grads: Sequence[torch.Tensor]) -> float:
    """L2 norm over this process's gradients (the single-process / pure-DP fallback)."""
    grads = [g for g in grads if g is not None]
    if not grads:
        return 0.0
    return math.sqrt(float(kernels.multi_tensor_sum_of_squares(grads).sum()))


def clip_grads_by_norm_(grads: Sequence[torch.Tensor], max_norm: float, total_norm: float) -> float:
    """Scale ``grads`` in place by ``max_norm / (total_norm + 1e-6)`` when that is < 1.

    ``total_norm`` is the ALREADY reduced global norm. This is Megatron's rule: the
    coefficient's ``+1e-6`` means a norm equal to ``max_norm`` is scaled by a factor
    just below 1. Returns the factor applied (1.0 when nothing was scaled). A
    non-finite norm leaves the grads alone (the caller skips such steps).
    """
    if max_norm <= 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm!r}")
    if not math.isfinite(total_norm):
        return 1.0
    coeff = max_norm / (total_norm + CLIP_EPS)
    grads = [g for g in grads if g is not None]
    if coeff < 1.0 and grads:
        torch._foreach_mul_(grads, coeff)
        return coeff
    return 1.0


def unscale_and_check_(grads: Sequence[torch.Tensor], inv_scale: float) -> torch.Tensor:
    """Multiply fp32 ``grads`` by ``inv_scale`` in place; a one-element tensor, 1.0 if any is inf/NaN."""
    found_inf = torch.zeros(1, dtype=torch.float32, device=grads[0].device)
    inv = torch.full((1,), inv_scale, dtype=torch.float32, device=grads[0].device)
    try:
        # The fused unscale+check (one kernel on GPU; implemented on CPU in recent torch).
        torch._amp_foreach_non_finite_check_and_unscale_(list(grads), found_inf, inv)
    except (RuntimeError, NotImplementedError, AttributeError):
        torch._foreach_mul_(list(grads), inv_scale)
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
        found_inf.fill_(0.0 if bool(finite) else 1.0)
    return found_inf


# ---------------------------------------------------------------------------
# Optimizers


def _model_grad(param: nn.Parameter) -> torch.Tensor | None:
    # DP code may accumulate into an fp32 ``main_grad`` buffer (Megatron's layout); prefer it.
    main_grad = getattr(param, "main_grad", None)
    return main_grad if main_grad is not None else param.grad


class TrainingOptimizer(ABC):
    """Common interface of the fp32 and mixed-precision optimizers.

    Per iteration: ``zero_grad()``; ``scale_loss(loss).backward()`` per micro-batch; DP
    all-reduce of the model grads; ``step(clip_grad, grad_norm_fn, found_inf_reduce)``.
    """

    precision: str
    optimizer: torch.optim.AdamW
    scaler: DynamicLossScaler | None = None
    """fp16's dynamic loss scaler (None for fp32 and bf16)."""
    sharded_over_dp = False
    """True when each DP rank holds a different part of the grads it steps on (the
    distributed optimizer): norms then sum over DP too, and every rank takes part in
    state_dict()."""

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def loss_scale(self) -> float:
        return self.scaler.scale if self.scaler is not None else 1.0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        # Scale in fp32: an fp16 loss times 2**32 would overflow before backward starts.
        return loss.float() * self.scaler.scale if self.scaler is not None else loss

    def model_params(self) -> list[nn.Parameter]:
        return [p for group in self._model_groups for p in group]

    @abstractmethod
    def grad_pairs(self) -> GradPairs:
        """(model param, grad the optimizer steps on) for params that have a grad."""

    @abstractmethod
    def _prepare_grads(self, found_inf_reduce: Callable[[torch.Tensor], Any] | None) -> bool:
        """Make the grads the inner optimizer steps on; True when an inf/NaN was found."""

    def _after_step(self) -> None:
        """Hook run after a successful inner step (copy masters back)."""

    def _default_grad_norm(self, pairs: GradPairs) -> float:
        """The norm used without ``grad_norm_fn``: exact for one process and for pure DP."""
        return local_grad_norm([g for _, g in pairs])

    def state_bytes(self) -> int:
        """Bytes of optimizer state held by this rank: Adam moments and any fp32 weight copies
        (the moments appear at the first step)."""
        tensors = [t for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        tensors += list(self._weight_copies())
        return sum(t.numel() * t.element_size() for t in tensors)

    def _weight_copies(self) -> Iterable[torch.Tensor]:
        """The optimizer's own copies of the weights (none when it steps the model params)."""
        return ()

    def _stepped(self, param: nn.Parameter) -> torch.Tensor:
        """The tensor the inner AdamW steps for a model param (the param, or its fp32 master)."""
        return param

    def adam_second_moment(self, param: nn.Parameter) -> tuple[torch.Tensor, float, float] | None:
        """(exp_avg_sq, its bias correction 1 - beta2^step, eps) of a model param's Adam state, or
        None before its first step, or where this rank does not hold the param's whole state (the
        distributed optimizer). exp_avg_sq is the live tensor: the next step overwrites it."""
        if self.sharded_over_dp:
            return None
        stepped = self._stepped(param)
        state = self.optimizer.state.get(stepped)
        if not state or "exp_avg_sq" not in state:
            return None
        group = next(g for g in self.optimizer.param_groups if any(p is stepped for p in g["params"]))
        return state["exp_avg_sq"], 1.0 - group["betas"][1] ** float(state["step"]), group["eps"]

    def reload_model_params(self) -> None:
        """Make the optimizer's copies of the weights (masters) equal the model params again,
        after model weights were loaded without optimizer state. No-op without copies."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.model_params():
            if getattr(param, "main_grad", None) is not None:
                param.main_grad.zero_()
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.zero_()
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(
        self,
        clip_grad: float = 0.0,
        grad_norm_fn: Callable[[GradPairs], float] | None = None,
        found_inf_reduce: Callable[[torch.Tensor], Any] | None = None,
    ) -> StepResult:
        """Unscale/check grads, measure the global norm, clip, update; or skip.

        ``grad_norm_fn(pairs)`` returns the global L2 norm of the given fp32 grads across
        all ranks (default: ``local_grad_norm``). ``found_inf_reduce(t)`` all-reduces a
        one-element float tensor with MAX in place (default: none). ``clip_grad <= 0``
        disables clipping; the norm is still computed and returned for logging.
        """
        found_inf = self._prepare_grads(found_inf_reduce)
        if self.scaler is not None:
            self.scaler.update(found_inf)
        if found_inf:
            return StepResult(skipped=True, grad_norm=None, loss_scale=self.loss_scale)
        pairs = self.grad_pairs()
        if grad_norm_fn is None:
            grad_norm = self._default_grad_norm(pairs)
        else:
            grad_norm = float(grad_norm_fn(pairs))
        if not math.isfinite(grad_norm):
            # Megatron would write NaN into fp32/bf16 weights here; skipping keeps the run alive.
            return StepResult(skipped=True, grad_norm=grad_norm, loss_scale=self.loss_scale)
        if clip_grad > 0:
            clip_grads_by_norm_([g for _, g in pairs], clip_grad, grad_norm)
        self.optimizer.step()
        self._after_step()
        return StepResult(skipped=False, grad_norm=grad_norm, loss_scale=self.loss_scale)

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit for bit (inner state, masters, loss scale)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned."""

    def _check_state_header(self, state: dict[str, Any]) -> None:
        version = state.get("version")
        if version != OPTIMIZER_STATE_VERSION:
            raise ValueError(
                f"optimizer state version {version!r} is not supported (this code reads {OPTIMIZER_STATE_VERSION})"
            )
        if state.get("precision") != self.precision:
            raise ValueError(
                f"checkpoint optimizer precision {state.get('precision')!r} does not match the "
                f"configured {self.precision!r}; resume with the same --bf16/--fp16 setting, or "
                "skip loading the optimizer state"
            )


class FP32Optimizer(TrainingOptimizer):
    """Plain AdamW on fp32 model params (no master copies, no loss scaling)."""

    precision = "fp32"

    def __init__(self, groups: list[dict[str, Any]], lr: float, betas, eps: float, fused: bool | None = None):
        self._model_groups = [list(g["params"]) for g in groups]
        params = [p for g in self._model_groups for p in g]
        self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **adamw_impl_kwargs(params, fused))

    def _prepare_grads(self, found_inf_reduce) -> bool:
        for param in self.model_params():
            main_grad = getattr(param, "main_grad", None)
            if main_grad is not None:
                param.grad = main_grad
        return False

    def grad_pairs(self) -> GradPairs:
        return [(p, p.grad) for p in self.model_params() if p.grad is not None]

    def state_dict(self) -> dict[str, Any]:
        return {"version": OPTIMIZER_STATE_VERSION, "precision": self.precision, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_state_header(state)
        self.optimizer.load_state_dict(state["optimizer"])


class MixedPrecisionOptimizer(TrainingOptimizer):
    """AdamW on fp32 master copies of bf16/fp16 model params.

    Model grads are copied into the masters' fp32 grads (and, for fp16, unscaled and
    checked for inf/NaN), AdamW steps the masters, and the masters are copied back into
    the model params. fp16 uses the dynamic loss scaler and skips overflow steps; bf16
    has the fp32 exponent range and needs no scaler (as in Megatron).
    """

    def __init__(
        self,
        groups: list[dict[str, Any]],
        lr: float,
        betas,
        eps: float,
        precision: str,
        loss_scaler: LossScalerConfig | None = None,
        fused: bool | None = None,
    ):
        if precision not in ("bf16", "fp16"):
            raise ValueError(f"MixedPrecisionOptimizer precision must be bf16 or fp16, got {precision!r}")
        if precision == "bf16" and loss_scaler is not None:
            raise ValueError("loss scaling is for fp16 only; bf16 trains without a loss scaler")
        self.precision = precision
        self._model_groups = [list(g["params"]) for g in groups]
        master_groups = []
        for group in groups:
            masters = [p.detach().clone().float() for p in group["params"]]
            master_groups.append({**group, "params": masters})
        self._master_groups = [g["params"] for g in master_groups]
        masters = [m for g in self._master_groups for m in g]
        self.optimizer = torch.optim.AdamW(
            master_groups, lr=lr, betas=betas, eps=eps, **adamw_impl_kwargs(masters, fused)
        )
        self.scaler = DynamicLossScaler(loss_scaler) if precision == "fp16" else None

    def master_params(self) -> list[torch.Tensor]:
        return [m for g in self._master_groups for m in g]

    def _stepped(self, param: nn.Parameter) -> torch.Tensor:
        for model, master in zip(self.model_params(), self.master_params()):
            if model is param:
                return master
        raise KeyError("the parameter is not one of this optimizer's")

    def _weight_copies(self) -> Iterable[torch.Tensor]:
        return self.master_params()

    def _pairs_with_masters(self):
        for model_group, master_group in zip(self._model_groups, self._master_groups):
            yield from zip(model_group, master_group)

    def grad_pairs(self) -> GradPairs:
        return [(p, m.grad) for p, m in self._pairs_with_masters() if m.grad is not None]

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for master in self.master_params():
            master.grad = None

    def _prepare_grads(self, found_inf_reduce) -> bool:
        for param, master in self._pairs_with_masters():
            grad = _model_grad(param)
            master.grad = None if grad is None else grad.detach().float()
        if self.scaler is None:
            return False
        grads = [m.grad for m in self.master_params() if m.grad is not None]
        if not grads:
            return False
        found_inf = unscale_and_check_(grads, self.scaler.inv_scale)
        if found_inf_reduce is not None:
            found_inf_reduce(found_inf)
        return bool(found_inf.item() > 0)

    def _after_step(self) -> None:
        with torch.no_grad():
            for param, master in self._pairs_with_masters():
                param.copy_(master)

    def reload_model_params(self) -> None:
        """Copy model params into the masters, after loading model weights WITHOUT optimizer
        state (otherwise the masters would still hold the initial weights)."""
        with torch.no_grad():
            for param, master in self._pairs_with_masters():
                master.copy_(param)

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": OPTIMIZER_STATE_VERSION,
            "precision": self.precision,
            "optimizer": self.optimizer.state_dict(),
            "master_params": [m.detach().clone() for m in self.master_params()],
            "loss_scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_state_header(state)
        saved = state["master_params"]
        mine = self.master_params()
        if len(saved) != len(mine):
            raise ValueError(f"checkpoint has {len(saved)} master params, this model has {len(mine)}")
        for index, (src, dst) in enumerate(zip(saved, mine)):
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError(
                    f"master param {index} has shape {tuple(src.shape)} in the checkpoint, "
                    f"{tuple(dst.shape)} in this model"
                )
        self.optimizer.load_state_dict(state["optimizer"])
        with torch.no_grad():
            for src, dst in zip(saved, mine):
                dst.copy_(src)
        if self.scaler is not None:
            if state.get("loss_scaler") is None:
                raise ValueError("fp16 optimizer state has no loss_scaler entry")
            self.scaler.load_state_dict(state["loss_scaler"])

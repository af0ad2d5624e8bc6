"""Optimisation: AdamW with fp32 master weights and loss scaling (optimizer.py), the distributed
optimizer (distributed_optimizer.py), the LR schedule (lr_schedule.py), and here the factory
that picks one of the optimizers for a model."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import nn

from megatron_hds.optim.distributed_optimizer import DistributedOptimizer
from megatron_hds.optim.optimizer import (FP32Optimizer, LossScalerConfig, MixedPrecisionOptimizer, TrainingOptimizer,
                                          weight_decay_groups)
from megatron_hds.precision import PRECISIONS, precision_of


def _infer_precision(params: Sequence[torch.Tensor]) -> str:
    dtypes = {p.dtype for p in params}
    precision = precision_of(next(iter(dtypes))) if len(dtypes) == 1 else None
    if precision is None:
        raise ValueError(
            f"model params have dtypes {sorted(str(d) for d in dtypes)}; expected all float32, "
            "all bfloat16 or all float16"
        )
    return precision


def build_optimizer(
    model_or_named_params: nn.Module | Iterable[tuple[str, nn.Parameter]],
    lr: float,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    *,
    precision: str | None = None,
    loss_scaler: LossScalerConfig | None = None,
    fused: bool | None = None,
    distributed: bool = False,
    dp_group=None,
) -> TrainingOptimizer:
    """AdamW with decay / no-decay groups; fp32 master weights for bf16/fp16 params.

    ``precision`` (fp32, bf16, fp16) must match the params' dtype; None infers it.
    ``loss_scaler`` configures fp16's dynamic scaler (Megatron defaults when None).
    ``fused`` None picks fused AdamW on CUDA params when available, foreach otherwise.
    ``distributed`` shards the state over ``dp_group`` (--use-distributed-optimizer; see
    megatron_hds.optim.distributed_optimizer); its step replaces the gradient all-reduce.
    Betas default to torch's (0.9, 0.999), as Megatron's --adam-beta1/2.
    """
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    groups = weight_decay_groups(model_or_named_params, weight_decay)
    params = [p for g in groups for p in g["params"]]
    found = _infer_precision(params)
    if precision is None:
        precision = found
    elif precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; accepted: {', '.join(PRECISIONS)}")
    elif precision != found:
        raise ValueError(f"precision {precision!r} requested but the model params are {found}; cast the model first")
    betas = (float(betas[0]), float(betas[1]))
    if distributed:
        return DistributedOptimizer(groups, lr, betas, eps, precision, dp_group,
                                    loss_scaler=loss_scaler, fused=fused)
    if precision == "fp32":
        if loss_scaler is not None:
            raise ValueError("loss scaling is for fp16 only; fp32 trains without a loss scaler")
        return FP32Optimizer(groups, lr, betas, eps, fused=fused)
    return MixedPrecisionOptimizer(groups, lr, betas, eps, precision, loss_scaler=loss_scaler, fused=fused)

"""``--use-distributed-optimizer``: AdamW state and fp32 master weights sharded over the DP
group (Megatron's distributed optimizer, ZeRO stage 1).

Layout: each parameter group's parameters are laid end to end in one flat range, padded
to a multiple of DP; DP rank r owns the r-th contiguous slice of that range, which may
start or end inside a parameter. A step:
  1. gradients are averaged over DP with one reduce-scatter per group (instead of the
     all-reduce), so each rank receives only its slice of the mean gradient;
  2. fp16: the slice is unscaled and checked, and the overflow flag is MAX-reduced over DP;
  3. the global norm sums squares over the slices of every DP rank (each element counted
     once) and clips the slice;
  4. AdamW steps the rank's fp32 master slice. AdamW is elementwise, so this is the
     update of the unsharded optimizer;
  5. the updated slices are all-gathered over DP into the model parameters.
Per rank, optimizer state falls from 12 bytes per parameter (bf16: fp32 master, exp_avg,
exp_avg_sq) or 8 (fp32 model: exp_avg, exp_avg_sq, plus this optimizer's fp32 slice) to
about 12/DP; the price is a reduce-scatter plus an all-gather per step instead of one
all-reduce (the same bytes on the wire).

A parameter without a gradient (possible only with DP = 1, where no reducer fills in
zeros) steps with a zero gradient, which the unsharded AdamW would skip.

Checkpoints: ``state_dict()`` gathers the slices onto DP rank 0 in the unsharded
optimizers' layout (same keys, full tensors per parameter), so a checkpoint does not
depend on this flag or on DP; ``load_state_dict()`` takes this rank's slice of such a
state. Both are collective over DP: every DP rank calls them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from megatron_hds.optim.optimizer import (OPTIMIZER_STATE_VERSION, DynamicLossScaler, GradPairs, LossScalerConfig,
                                          TrainingOptimizer, _model_grad, adamw_impl_kwargs, local_grad_norm,
                                          unscale_and_check_)
from megatron_hds.parallel.mappings import all_gather_single, group_rank, group_size, reduce_scatter_single
from megatron_hds.precision import PRECISIONS

_MOMENTS = ("exp_avg", "exp_avg_sq")


@dataclass(frozen=True)
class _Piece:
    """The part of one parameter that falls in this rank's slice."""

    param: nn.Parameter
    begin: int  # first element within the flattened parameter
    end: int  # one past the last
    at: int  # where it starts within the slice

    def of_slice(self, slice_: torch.Tensor) -> torch.Tensor:
        """This piece's elements of a slice-sized tensor (a view)."""
        return slice_[self.at:self.at + self.end - self.begin]

    def of_param(self) -> torch.Tensor:
        """This piece's elements of the parameter (a view)."""
        return self.param.detach().reshape(-1)[self.begin:self.end]


class _GroupShard:
    """One parameter group's flat layout and this DP rank's slice of it."""

    def __init__(self, params: Sequence[nn.Parameter], dp_size: int, dp_rank: int):
        self.params = list(params)
        self.sizes = [p.numel() for p in self.params]
        total = sum(self.sizes)
        self.padded = -(-total // dp_size) * dp_size
        self.size = self.padded // dp_size
        self.begin = dp_rank * self.size
        self.pieces = []
        offset = 0
        for param, n in zip(self.params, self.sizes):
            lo, hi = max(offset, self.begin), min(offset + n, self.begin + self.size)
            if lo < hi:
                self.pieces.append(_Piece(param, lo - offset, hi - offset, lo - self.begin))
            offset += n

    def flat(self, tensors: Sequence[torch.Tensor], dtype: torch.dtype, device) -> torch.Tensor:
        """The tensors (one per parameter, any shape of the right size) end to end, zero-padded."""
        out = torch.zeros(self.padded, dtype=dtype, device=device)
        offset = 0
        for t, n in zip(tensors, self.sizes):
            out[offset:offset + n].copy_(t.reshape(-1))
            offset += n
        return out

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """A full flat tensor back into one view per parameter, shaped like it."""
        out, offset = [], 0
        for param, n in zip(self.params, self.sizes):
            out.append(flat[offset:offset + n].view(param.shape))
            offset += n
        return out

    def mine(self, flat: torch.Tensor) -> torch.Tensor:
        return flat[self.begin:self.begin + self.size]


class DistributedOptimizer(TrainingOptimizer):
    """AdamW whose state and fp32 master weights are split over the DP group (see the module docstring).

    Use in place of the gradient all-reduce: ``step`` reduce-scatters the model grads itself.
    """

    sharded_over_dp = True

    def __init__(self, groups: list[dict[str, Any]], lr: float, betas, eps: float, precision: str, dp_group,
                 loss_scaler: LossScalerConfig | None = None, fused: bool | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; accepted: {', '.join(PRECISIONS)}")
        if precision != "fp16" and loss_scaler is not None:
            raise ValueError(f"loss scaling is for fp16 only; {precision} trains without a loss scaler")
        self.precision = precision
        self.dp_group = dp_group
        self.dp_size, self.dp_rank = group_size(dp_group), group_rank(dp_group)
        self._model_groups = [list(g["params"]) for g in groups]
        self._shards = [_GroupShard(params, self.dp_size, self.dp_rank) for params in self._model_groups]
        self._masters = []
        for shard in self._shards:
            device = shard.params[0].device
            self._masters.append(torch.zeros(shard.size, dtype=torch.float32, device=device))
        self.reload_model_params()
        master_groups = [{**group, "params": [master]} for group, master in zip(groups, self._masters)]
        self.optimizer = torch.optim.AdamW(master_groups, lr=lr, betas=betas, eps=eps,
                                           **adamw_impl_kwargs(self._masters, fused))
        self.scaler = DynamicLossScaler(loss_scaler) if precision == "fp16" else None

    # ---- the step ---------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for master in self._masters:
            master.grad = None

    @torch.no_grad()
    def _prepare_grads(self, found_inf_reduce) -> bool:
        for shard, master in zip(self._shards, self._masters):
            params = shard.params
            grads = [_model_grad(p) for p in params]
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
            # Averaged in the grads' dtype, as the all-reduce path does.
            flat = shard.flat(grads, grads[0].dtype, master.device)
            if self.dp_size > 1:
                flat.div_(self.dp_size)
                mine = torch.empty(shard.size, dtype=flat.dtype, device=flat.device)
                reduce_scatter_single(mine, flat, group=self.dp_group)
            else:
                mine = flat
            master.grad = mine.float()
        if self.scaler is None:
            return False
        found_inf = unscale_and_check_([m.grad for m in self._masters], self.scaler.inv_scale)
        if self.dp_size > 1:  # each rank checked only its slice
            dist.all_reduce(found_inf, op=dist.ReduceOp.MAX, group=self.dp_group)
        if found_inf_reduce is not None:
            found_inf_reduce(found_inf)
        return bool(found_inf.item() > 0)

    def grad_pairs(self) -> GradPairs:
        """(parameter, its piece of this rank's gradient slice): each element on one DP rank only."""
        pairs = []
        for shard, master in zip(self._shards, self._masters):
            if master.grad is None:
                continue
            pairs.extend((piece.param, piece.of_slice(master.grad)) for piece in shard.pieces)
        return pairs

    def _default_grad_norm(self, pairs: GradPairs) -> float:
        squares = local_grad_norm([g for _, g in pairs]) ** 2
        if self.dp_size > 1:  # each rank holds different pieces: sum their squares over DP
            total = torch.tensor([squares], dtype=torch.float32, device=self._masters[0].device)
            dist.all_reduce(total, group=self.dp_group)
            squares = total.item()
        return math.sqrt(squares)

    @torch.no_grad()
    def _after_step(self) -> None:
        """All-gather the updated slices into the model parameters."""
        for shard, master in zip(self._shards, self._masters):
            dtype = shard.params[0].dtype
            mine = master.to(dtype)
            if self.dp_size > 1:
                full = torch.empty(shard.padded, dtype=dtype, device=master.device)
                all_gather_single(full, mine, group=self.dp_group)
            else:
                full = mine
            for param, value in zip(shard.params, shard.split(full)):
                param.copy_(value)

    def _weight_copies(self):
        return self._masters

    @torch.no_grad()
    def reload_model_params(self) -> None:
        for shard, master in zip(self._shards, self._masters):
            for piece in shard.pieces:
                piece.of_slice(master).copy_(piece.of_param())

    # ---- checkpoints ------------------------------------------------------------------
    def _gather_to_first(self, shard: _GroupShard, mine: torch.Tensor) -> list[torch.Tensor] | None:
        """This slice from every DP rank, as one full tensor per parameter on DP rank 0 (None elsewhere)."""
        if self.dp_size == 1:
            return [t.clone() for t in shard.split(mine)]
        parts = [torch.empty_like(mine) for _ in range(self.dp_size)] if self.dp_rank == 0 else None
        dist.gather(mine.contiguous(), parts, dst=dist.get_global_rank(self.dp_group, 0), group=self.dp_group)
        if parts is None:
            return None
        return [t.clone() for t in shard.split(torch.cat(parts))]

    def state_dict(self) -> dict[str, Any] | None:
        """The unsharded optimizers' state layout, complete on DP rank 0; None on the other DP
        ranks. Collective: every DP rank must call it."""
        inner = self.optimizer.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        groups, masters, index = [], [], 0
        for g, (shard, master) in enumerate(zip(self._shards, self._masters)):
            moments = {key: self._gather_to_first(shard, inner["state"][g][key])
                       for key in _MOMENTS if g in inner["state"]}
            full_masters = self._gather_to_first(shard, master.detach()) if self.precision != "fp32" else None
            indices = list(range(index, index + len(shard.params)))
            index += len(shard.params)
            if self.dp_rank != 0:
                continue
            for k, i in enumerate(indices):
                if moments:
                    state[i] = {"step": inner["state"][g]["step"].clone(),
                                **{key: moments[key][k] for key in _MOMENTS}}
            groups.append({**{k: v for k, v in inner["param_groups"][g].items() if k != "params"},
                           "params": indices})
            if full_masters is not None:
                masters.extend(full_masters)
        if self.dp_rank != 0:
            return None
        out = {"version": OPTIMIZER_STATE_VERSION, "precision": self.precision,
               "optimizer": {"state": state, "param_groups": groups}}
        if self.precision != "fp32":
            out["master_params"] = masters
            out["loss_scaler"] = self.scaler.state_dict() if self.scaler is not None else None
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take this rank's slice of an unsharded-layout state (from either optimizer, any DP).
        Load the model weights first: with fp32 the masters are taken from them."""
        self._check_state_header(state)
        saved = state["optimizer"]
        if len(saved["param_groups"]) != len(self._shards):
            raise ValueError(f"checkpoint optimizer has {len(saved['param_groups'])} parameter groups, this model "
                             f"{len(self._shards)}")
        saved_masters = state.get("master_params") if self.precision != "fp32" else None
        inner_state, inner_groups = {}, []
        for g, (shard, master, group) in enumerate(zip(self._shards, self._masters, saved["param_groups"])):
            indices = list(group["params"])
            if len(indices) != len(shard.params):
                raise ValueError(f"checkpoint parameter group {g} has {len(indices)} params, this model "
                                 f"{len(shard.params)}")
            for i, param in zip(indices, shard.params):
                for key in _MOMENTS:
                    if i in saved["state"] and tuple(saved["state"][i][key].shape) != tuple(param.shape):
                        raise ValueError(f"optimizer state {key} of param {i} has shape "
                                         f"{tuple(saved['state'][i][key].shape)} in the checkpoint, "
                                         f"{tuple(param.shape)} in this model")
            stepped = [i for i in indices if i in saved["state"]]
            if stepped:
                if len(stepped) != len(indices):
                    raise ValueError(f"checkpoint parameter group {g}: {len(indices) - len(stepped)} of "
                                     f"{len(indices)} params have no optimizer state; the distributed "
                                     "optimizer steps a group's params together")
                steps = {float(saved["state"][i]["step"]) for i in indices}
                if len(steps) != 1:
                    raise ValueError(f"checkpoint parameter group {g} has params at different Adam steps "
                                     f"{sorted(steps)}; the distributed optimizer needs one step per group")
                inner_state[g] = {"step": saved["state"][indices[0]]["step"]}
                for key in _MOMENTS:
                    full = shard.flat([saved["state"][i][key] for i in indices], torch.float32, "cpu")
                    inner_state[g][key] = shard.mine(full).clone()
            inner_groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": [g]})
            if saved_masters is not None:
                if len(saved_masters) <= max(indices):
                    raise ValueError(f"checkpoint has {len(saved_masters)} master params, this model needs "
                                     f"{max(indices) + 1}")
                full = shard.flat([saved_masters[i] for i in indices], torch.float32, "cpu")
                with torch.no_grad():
                    master.copy_(shard.mine(full))
        if self.precision == "fp32":
            self.reload_model_params()
        elif saved_masters is None:
            raise ValueError(f"{self.precision} optimizer state has no master_params entry")
        self.optimizer.load_state_dict({"state": inner_state, "param_groups": inner_groups})
        if self.scaler is not None:
            if state.get("loss_scaler") is None:
                raise ValueError("fp16 optimizer state has no loss_scaler entry")
            self.scaler.load_state_dict(state["loss_scaler"])

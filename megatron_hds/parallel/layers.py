"""Tensor-parallel layers whose parameters are created directly in their shard.

Initialisation is layout-independent: along the partition dimension (output rows
of a column-parallel weight, input columns of a row-parallel weight, vocab rows of
an embedding) a weight is cut into fixed blocks of INIT_BLOCK slices, and each block
is drawn from its own generator seeded by (seed, parameter key, block index). A rank
draws only the blocks its shard overlaps, so the shard equals the matching slice of
the single-process initialisation without any rank ever holding the full weight.
"""
from __future__ import annotations

import hashlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megatron_hds.parallel.mappings import (copy_to_tp, gather_from_sequence, gather_from_tp, group_rank,
                                            group_size, reduce_from_tp, reduce_scatter_to_sequence,
                                            scatter_to_tp)

# Slices per generator block: large enough to amortise per-block overhead, small enough
# that a shard boundary inside a block wastes little.
INIT_BLOCK = 64


def _block_seed(seed: int, key: str, block: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{key}/{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@torch.no_grad()
def sharded_normal_(param: torch.Tensor, std: float, seed: int, key: str,
                    partition_dim: int = 0, start: int = 0) -> torch.Tensor:
    """Fill `param` (a shard starting at global index `start` along `partition_dim`) with N(0, std^2).

    Blocks are drawn on CPU in fp32 so every device and dtype sees the same values.
    """
    moved = param.movedim(partition_dim, 0)
    end = start + moved.shape[0]
    generator = torch.Generator(device="cpu")
    for block in range(start // INIT_BLOCK, (end - 1) // INIT_BLOCK + 1):
        generator.manual_seed(_block_seed(seed, key, block))
        values = torch.randn((INIT_BLOCK, *moved.shape[1:]), generator=generator).mul_(std)
        lo, hi = max(start, block * INIT_BLOCK), min(end, (block + 1) * INIT_BLOCK)
        moved[lo - start:hi - start].copy_(values[lo - block * INIT_BLOCK:hi - block * INIT_BLOCK])
    return param


def mark_tensor_parallel(param: nn.Parameter, partition_dim: int) -> None:
    """Tag a parameter as one TP shard of a larger tensor, split along `partition_dim`."""
    param.tensor_model_parallel = True
    param.partition_dim = partition_dim


def mark_sequence_parallel(param: nn.Parameter, sequence_parallel: bool) -> None:
    """Tag a TP-replicated parameter that, under sequence parallelism, sees only this rank's
    part of the sequence: its gradient is partial and must be summed over TP."""
    if sequence_parallel:
        param.sequence_parallel = True


def is_sequence_parallel(param: torch.Tensor) -> bool:
    return getattr(param, "sequence_parallel", False)


def is_tensor_parallel(param: torch.Tensor) -> bool:
    return getattr(param, "tensor_model_parallel", False)


def _divide(total: int, parts: int, what: str) -> int:
    if total % parts:
        raise ValueError(f"{what}={total} is not divisible by tensor-model-parallel size {parts}")
    return total // parts


class ColumnParallelLinear(nn.Module):
    """y = x A^T + b with A split by output rows across TP; input replicated, output split.

    With sequence_parallel the input arrives split along the sequence and is all-gathered first.
    """

    def __init__(self, in_features: int, out_features: int, tp_group, *, init_std: float, seed: int,
                 init_key: str, bias: bool = True, gather_output: bool = False, sequence_parallel: bool = False,
                 device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.tp_group = tp_group
        self.gather_output = gather_output
        self.sequence_parallel = sequence_parallel
        self.out_per_partition = _divide(out_features, group_size(tp_group), "out_features")
        start = group_rank(tp_group) * self.out_per_partition
        self.weight = nn.Parameter(torch.empty(self.out_per_partition, in_features, device=device, dtype=dtype))
        sharded_normal_(self.weight, init_std, seed, init_key, partition_dim=0, start=start)
        mark_tensor_parallel(self.weight, 0)
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.out_per_partition, device=device, dtype=dtype))
            mark_tensor_parallel(self.bias, 0)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = gather_from_sequence(x, self.tp_group) if self.sequence_parallel else copy_to_tp(x, self.tp_group)
        y = F.linear(x, self.weight, self.bias)
        return gather_from_tp(y, self.tp_group) if self.gather_output else y


class RowParallelLinear(nn.Module):
    """y = x A^T + b with A split by input columns across TP; partial sums reduced over TP.

    The bias is replicated and added once, after the reduction. With sequence_parallel the
    reduction is a reduce-scatter, so the output is split along the sequence.
    """

    def __init__(self, in_features: int, out_features: int, tp_group, *, init_std: float, seed: int,
                 init_key: str, bias: bool = True, input_is_parallel: bool = True, sequence_parallel: bool = False,
                 device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.tp_group = tp_group
        self.input_is_parallel = input_is_parallel
        self.sequence_parallel = sequence_parallel
        self.in_per_partition = _divide(in_features, group_size(tp_group), "in_features")
        start = group_rank(tp_group) * self.in_per_partition
        self.weight = nn.Parameter(torch.empty(out_features, self.in_per_partition, device=device, dtype=dtype))
        sharded_normal_(self.weight, init_std, seed, init_key, partition_dim=1, start=start)
        mark_tensor_parallel(self.weight, 1)
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype))
            mark_sequence_parallel(self.bias, sequence_parallel)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if group_size(self.tp_group) == 1:  # nothing to reduce: let the bias fuse into the matmul
            return F.linear(x, self.weight, self.bias)
        if not self.input_is_parallel:
            x = scatter_to_tp(x, self.tp_group)
        reduce = reduce_scatter_to_sequence if self.sequence_parallel else reduce_from_tp
        y = reduce(F.linear(x, self.weight), self.tp_group)
        return y + self.bias if self.bias is not None else y


class VocabParallelEmbedding(nn.Module):
    """Embedding table split by vocab rows across TP; each rank looks up the ids it owns."""

    def __init__(self, num_embeddings: int, embedding_dim: int, tp_group, *, init_std: float, seed: int,
                 init_key: str, device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.tp_group = tp_group
        self.rows_per_partition = _divide(num_embeddings, group_size(tp_group), "padded vocab size")
        self.vocab_start = group_rank(tp_group) * self.rows_per_partition
        self.vocab_end = self.vocab_start + self.rows_per_partition
        self.weight = nn.Parameter(torch.empty(self.rows_per_partition, embedding_dim, device=device, dtype=dtype))
        sharded_normal_(self.weight, init_std, seed, init_key, partition_dim=0, start=self.vocab_start)
        mark_tensor_parallel(self.weight, 0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if group_size(self.tp_group) == 1:
            return F.embedding(ids, self.weight)
        outside = (ids < self.vocab_start) | (ids >= self.vocab_end)
        local_ids = (ids - self.vocab_start).masked_fill(outside, 0)
        out = F.embedding(local_ids, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tp(out, self.tp_group)

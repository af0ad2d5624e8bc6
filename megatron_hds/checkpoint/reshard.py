"""Merge a TP/PP-sharded model checkpoint into one full state dict, and split a full one for any layout.

The full form is the state dict of a TP=1/PP=1 ``GPTModel`` with the vocabulary padding
removed (rows beyond ``ModelConfig.vocab_size``); splitting pads again for the target TP.
Which dimension a tensor is split along follows from its name (``partition_dim``), the
same choice the parallel layers make (a test checks the two agree). QKV rows are grouped
per head and SwiGLU fc1 rows per (gate, up) pair, so TP shards concatenate as they are.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional, Tuple

import torch

from megatron_hds.config import ModelConfig
from megatron_hds.checkpoint.layout import checkpoint_dir, find_latest_iteration, layout_from_shard_names, list_iterations
from megatron_hds.checkpoint.store import load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]
Shards = Dict[Tuple[int, int], StateDict]  # (tp_rank, pp_rank) -> that shard's model state dict

# Name suffix -> dimension split over TP; anything else is replicated on every TP rank.
_PARTITION_DIMS = (
    ("word_embeddings.weight", 0),
    ("output_layer.weight", 0),
    ("self_attention.query_key_value.weight", 0),
    ("self_attention.query_key_value.bias", 0),
    ("self_attention.dense.weight", 1),
    ("mlp.dense_h_to_4h.weight", 0),
    ("mlp.dense_h_to_4h.bias", 0),
    ("mlp.dense_4h_to_h.weight", 1),
)
WORD_EMBEDDINGS = "embedding.word_embeddings.weight"
OUTPUT_LAYER = "output_layer.weight"
_LAYER_RE = re.compile(r"^layers\.(\d+)\.")


def partition_dim(name: str) -> Optional[int]:
    """The dimension along which parameter `name` is split over TP, or None when it is replicated."""
    for suffix, dim in _PARTITION_DIMS:
        if name.endswith(suffix):
            return dim
    return None


def check_layout(config: ModelConfig, tp: int, pp: int) -> None:
    """Refuse a layout the model cannot be split into, naming the size that does not divide."""
    for what, total, parts, flag in (("num_attention_heads", config.num_attention_heads, tp, "tensor"),
                                     ("ffn_hidden_size", config.ffn_hidden_size, tp, "tensor"),
                                     ("num_layers", config.num_layers, pp, "pipeline")):
        if parts < 1 or total % parts:
            raise ValueError(f"{what}={total} is not divisible by {flag}-model-parallel size {parts}: "
                             f"choose a size that divides it")


def _layer_index(name: str) -> Optional[int]:
    match = _LAYER_RE.match(name)
    return int(match.group(1)) if match else None


def merge_shards(shards: Shards, config: ModelConfig, tp: int, pp: int) -> StateDict:
    """One full state dict from every (tp, pp) shard; vocabulary padding removed."""
    missing = [(t, p) for t in range(tp) for p in range(pp) if (t, p) not in shards]
    if missing:
        raise ValueError(f"shards {missing} (tp_rank, pp_rank) are missing from a TP={tp}/PP={pp} checkpoint")
    full: StateDict = OrderedDict()
    for p in range(pp):
        for name, first in shards[(0, p)].items():
            if name in full:  # the last stage's copy of tied word embeddings
                continue
            dim = partition_dim(name)
            tensor = first if dim is None else torch.cat([shards[(t, p)][name] for t in range(tp)], dim=dim)
            if name in (WORD_EMBEDDINGS, OUTPUT_LAYER):
                tensor = tensor[:config.vocab_size]
            full[name] = tensor.clone()
    layers = {_layer_index(n) for n in full} - {None}
    if layers != set(range(config.num_layers)):
        raise ValueError(f"the checkpoint holds layers {sorted(layers)}, expected 0..{config.num_layers - 1}")
    return full


def _pad_vocab(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Zero rows up to the padded vocabulary (no token id reaches them; their logits are 0)."""
    if tensor.shape[0] > rows:
        raise ValueError(f"vocabulary tensor has {tensor.shape[0]} rows, more than the padded size {rows}")
    return torch.cat([tensor, tensor.new_zeros(rows - tensor.shape[0], *tensor.shape[1:])])


def split_full(full: StateDict, config: ModelConfig, tp: int, pp: int) -> Shards:
    """The (tp, pp) shards of a full state dict, laid out as GPTModel builds them for that layout."""
    check_layout(config, tp, pp)
    rows = config.padded_vocab_size(tp)
    per_stage = config.num_layers // pp
    tied = not config.untie_embeddings_and_output_weights
    shards: Shards = {}
    for p in range(pp):
        first, last = p == 0, p == pp - 1
        stage_layers = range(p * per_stage, (p + 1) * per_stage)
        for t in range(tp):
            shard: StateDict = OrderedDict()
            for name, tensor in full.items():
                layer = _layer_index(name)
                if layer is not None:
                    keep = layer in stage_layers
                elif name == WORD_EMBEDDINGS:
                    keep = first or (last and tied)
                elif name.startswith("embedding."):
                    keep = first
                else:  # final norm and output layer
                    keep = last
                if not keep:
                    continue
                if name in (WORD_EMBEDDINGS, OUTPUT_LAYER):
                    tensor = _pad_vocab(tensor, rows)
                dim = partition_dim(name)
                if dim is not None:
                    tensor = tensor.chunk(tp, dim=dim)[t]
                shard[name] = tensor.clone().contiguous()
            shards[(t, p)] = shard
    return shards


def saved_layout(load_dir: str, iteration: int) -> Tuple[int, int]:
    """(tp, pp) of a committed checkpoint, from its shard directory names."""
    iter_dir = checkpoint_dir(load_dir, iteration)
    if not os.path.isdir(iter_dir):
        raise FileNotFoundError(f"checkpoint directory {iter_dir} does not exist "
                                f"(committed iterations in {load_dir}: {list_iterations(load_dir)})")
    layout = layout_from_shard_names(os.listdir(iter_dir))
    if layout is None:
        raise FileNotFoundError(f"{iter_dir} holds no mp_rank_* shard directories")
    return layout


def model_config_from_args(args: dict, where: str) -> ModelConfig:
    """The ModelConfig recorded in a checkpoint's ``args`` (``PretrainConfig.to_dict()``)."""
    model = args.get("model") if isinstance(args, dict) else None
    if not isinstance(model, dict):
        raise ValueError(f"{where} records no model configuration (args['model']); only megatron_hds "
                         "checkpoints can be converted")
    return ModelConfig(**model)


@dataclasses.dataclass
class ModelCheckpoint:
    """The model part of a checkpoint, merged: what conversions need."""

    config: ModelConfig
    state: StateDict  # full, unpadded
    iteration: int
    args: dict  # the run's configuration as saved (PretrainConfig.to_dict())


def read_model_checkpoint(load_dir: str, iteration: Optional[int] = None) -> ModelCheckpoint:
    """The merged model of the latest (or given) checkpoint under load_dir, any TP/PP layout."""
    if iteration is None:
        iteration = find_latest_iteration(load_dir)
        if iteration is None:
            raise FileNotFoundError(f"no checkpoint in {load_dir}: latest_checkpointed_iteration.txt is missing")
    tp, pp = saved_layout(load_dir, iteration)
    shards, args = {}, None
    for p in range(pp):
        for t in range(tp):
            state = load_checkpoint(load_dir, t, p, tp, pp, iteration=iteration)
            args = args if args is not None else state.get("args") or {}
            shards[(t, p)] = state["model"]
    config = model_config_from_args(args, checkpoint_dir(load_dir, iteration))
    logger.info("merging TP=%d/PP=%d checkpoint %s", tp, pp, checkpoint_dir(load_dir, iteration))
    return ModelCheckpoint(config, merge_shards(shards, config, tp, pp), iteration, args)


def write_model_checkpoint(save_dir: str, config: ModelConfig, full: StateDict, tp: int, pp: int,
                           iteration: int = 0, extra_args: Optional[dict] = None) -> str:
    """Write `full` as a TP/PP checkpoint (weights only) with the checkpointing module's save protocol.

    Each shard is saved by its own thread acting as one rank of a TP*PP world, so the
    temporary directory, the rename into place and ``latest_checkpointed_iteration.txt``
    are exactly those of a training run's save. Returns the committed directory.
    """
    shards = split_full(full, config, tp, pp)
    args = {"model": dataclasses.asdict(config),
            "parallel": {"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp},
            **(extra_args or {})}
    barrier = threading.Barrier(tp * pp, timeout=600)

    def save_rank(t: int, p: int) -> str:
        try:
            return save_checkpoint(save_dir, iteration, model=shards[(t, p)], args=args, tp_rank=t, pp_rank=p,
                                   tp_size=tp, pp_size=pp, rank=t + tp * p, barrier=barrier.wait)
        except BaseException:
            barrier.abort()  # the other "ranks" fail instead of waiting for this one
            raise

    with ThreadPoolExecutor(max_workers=tp * pp) as pool:
        futures = [pool.submit(save_rank, t, p) for p in range(pp) for t in range(tp)]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:  # the failing rank's error, not the broken barrier the others saw
        raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
    return futures[0].result()

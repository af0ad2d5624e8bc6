"""The GPT model as one pipeline stage: embeddings (first stage), layers, final norm and head (last stage).

A rank builds only its own stage and only its TP shards. Layers keep their global
index in parameter names (``layers.7....``) so names do not depend on the layout.
With tied embeddings and more than one stage, the last stage holds its own copy of
the word embeddings (initialised identically); ``allreduce_embedding_grads`` keeps
the copies equal by summing their gradients over the embedding group. With sequence
parallelism the residual stream is split along the sequence over TP, so norm weights
and row-parallel biases see part of the sequence and their gradients are summed over
TP. ``finalize_model_grads`` does both after backward.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from megatron_hds.config import ModelConfig
from megatron_hds.model.backends import build_norm
from megatron_hds.model.transformer import RotaryEmbedding, TransformerLayer, hidden_dropout
from megatron_hds.parallel.cross_entropy import vocab_parallel_cross_entropy
from megatron_hds.parallel.layers import (ColumnParallelLinear, VocabParallelEmbedding, is_sequence_parallel,
                                          mark_sequence_parallel, sharded_normal_)
from megatron_hds.parallel.mappings import copy_to_tp, gather_from_sequence, scatter_to_sequence
from megatron_hds.parallel.random import RNGStatesTracker, build_rng_tracker, checkpoint
from megatron_hds.parallel.state import ParallelState


class Embedding(nn.Module):
    """Word embeddings (vocab-parallel) plus optional learned absolute positions."""

    def __init__(self, config: ModelConfig, state: ParallelState, seed: int, dtype: torch.dtype,
                 with_positions: bool, rng_tracker: RNGStatesTracker):
        super().__init__()
        self.tp_group = state.tp_group
        self.sequence_parallel = state.sequence_parallel
        self.rng_tracker = rng_tracker
        self.word_embeddings = VocabParallelEmbedding(
            config.padded_vocab_size(state.tp_size), config.hidden_size, state.tp_group,
            init_std=config.init_method_std, seed=seed, init_key="embedding.word_embeddings",
            device=state.device, dtype=dtype)
        if with_positions:
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size,
                                                    device=state.device, dtype=dtype)
            sharded_normal_(self.position_embeddings.weight, config.init_method_std, seed,
                            "embedding.position_embeddings")
        else:
            self.position_embeddings = None
        self.dropout = config.hidden_dropout

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [b, s] -> [s, b, h] ([s/TP, b, h] with sequence parallelism)."""
        x = self.word_embeddings(tokens.t())
        if self.position_embeddings is not None:
            positions = torch.arange(tokens.shape[1], device=tokens.device)
            x = x + self.position_embeddings(positions).unsqueeze(1)
        if self.sequence_parallel:
            x = scatter_to_sequence(x, self.tp_group)
        return hidden_dropout(x, self.dropout, self.training, self.sequence_parallel, self.rng_tracker)


class GPTModel(nn.Module):
    """This rank's pipeline stage of a GPT model.

    forward(tokens, hidden, labels, domains, domain_sums, loss_mask):
      first stage reads tokens [b, s]; other stages read hidden [s, b, h] from the previous stage.
      last stage returns the per-token loss [b, s] (fp32) when labels [b, s] are given, else this
      rank's vocab slice of the logits [b, s, vocab/TP]; other stages return hidden [s, b, h].
      With domains ([b] per sample or [b, s] per token) and domain_sums (fp32 [2D]) the loss
      pass also adds per-domain loss sums and token counts; loss_mask [b, s] zeroes tokens.
    """

    def __init__(self, config: ModelConfig, state: ParallelState, seed: int = 1234,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        state.check_model(config.num_layers, config.num_attention_heads)
        state.check_sequence(config.seq_length)
        self.config = config
        self.state = state
        self.pre_process = state.is_first_stage()
        self.post_process = state.is_last_stage()
        self.tied = not config.untie_embeddings_and_output_weights
        self.rng_tracker = build_rng_tracker(seed, state.tp_rank, state.pp_rank, state.device)

        self.embedding = None
        if self.pre_process or (self.post_process and self.tied):
            with_positions = self.pre_process and config.position_embedding_type == "learned_absolute"
            self.embedding = Embedding(config, state, seed, dtype, with_positions, self.rng_tracker)
            if not self.pre_process:
                # The head's copy of the tied weight: counted once in norms (on the first stage).
                self.embedding.word_embeddings.weight.shared_embedding_duplicate = True
        self.rotary = (RotaryEmbedding(config.rotary_dim, config.rotary_base, state.device)
                       if config.position_embedding_type == "rope" else None)
        self.layers = nn.ModuleDict({
            str(i): TransformerLayer(config, state, i, seed, self.rng_tracker, dtype)
            for i in state.layers_of_stage(config.num_layers)})
        if config.recompute_granularity == "full" and config.recompute_num_layers > len(self.layers):
            raise ValueError(
                f"recompute_num_layers={config.recompute_num_layers} is more than the {len(self.layers)} layers "
                f"of this pipeline stage (num_layers={config.num_layers} over PP={state.pp_size}): it counts "
                "layers per stage")
        if config.torch_compile:
            # In place (Module.compile): parameter names, hooks and checkpoints stay as in eager
            # mode. The layers share their code, so one compiled graph serves them all.
            for layer in self.layers.values():
                layer.compile()
        self.final_layernorm = None
        self.output_layer = None
        if self.post_process:
            self.final_layernorm = build_norm(config.normalization, config.hidden_size, config.norm_epsilon,
                                              config.transformer_impl, state.device, dtype)
            for param in self.final_layernorm.parameters():
                mark_sequence_parallel(param, state.sequence_parallel)
            if not self.tied:
                self.output_layer = ColumnParallelLinear(
                    config.hidden_size, config.padded_vocab_size(state.tp_size), state.tp_group,
                    init_std=config.init_method_std, seed=seed, init_key="output_layer", bias=False,
                    device=state.device, dtype=dtype)

    def _run_layers(self, x: torch.Tensor, rotary) -> torch.Tensor:
        """The stage's layers in order; with full recompute, the checkpointed ones keep only their input."""
        layers: List[TransformerLayer] = list(self.layers.values())
        config = self.config
        if config.recompute_granularity != "full" or not (self.training and torch.is_grad_enabled()):
            for layer in layers:
                x = layer(x, rotary)
            return x
        n = config.recompute_num_layers
        if config.recompute_method == "uniform":  # chunks of n layers, each recomputed as one block
            for start in range(0, len(layers), n):
                x = checkpoint(_layer_chunk(layers[start:start + n]), self.rng_tracker, x, rotary)
            return x
        for i, layer in enumerate(layers):  # "block": the first n layers one by one, the rest kept
            x = checkpoint(layer, self.rng_tracker, x, rotary) if i < n else layer(x, rotary)
        return x

    def output_weight(self) -> torch.Tensor:
        return self.embedding.word_embeddings.weight if self.tied else self.output_layer.weight

    def forward(self, tokens: Optional[torch.Tensor] = None, hidden: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, domains: Optional[torch.Tensor] = None,
                domain_sums: Optional[torch.Tensor] = None, loss_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.embedding(tokens) if self.pre_process else hidden
        seq_len = x.shape[0] * (self.state.tp_size if self.state.sequence_parallel else 1)
        rotary = self.rotary(seq_len) if self.rotary is not None else None
        x = self._run_layers(x, rotary)
        if not self.post_process:
            return x
        x = self.final_layernorm(x)
        tp_group = self.state.tp_group
        x = gather_from_sequence(x, tp_group) if self.state.sequence_parallel else copy_to_tp(x, tp_group)
        logits = F.linear(x, self.output_weight())  # [s, b, v/TP]
        if labels is None:
            return logits.transpose(0, 1)
        # The logits are a temporary here, so their memory takes the gradient (inplace_backward).
        return vocab_parallel_cross_entropy(
            logits, labels.t(), self.state.tp_group, domain_ids=None if domains is None else domains.t(),
            domain_sums=domain_sums, loss_mask=None if loss_mask is None else loss_mask.t(),
            inplace_backward=True).t()


def _layer_chunk(layers: List[TransformerLayer]):
    def run(x: torch.Tensor, rotary) -> torch.Tensor:
        for layer in layers:
            x = layer(x, rotary)
        return x
    return run


def allreduce_embedding_grads(model: GPTModel) -> None:
    """Sum the tied word-embedding gradients of the first and last stage (no-op unless PP>1 and tied)."""
    state = model.state
    if not model.tied or state.pp_size == 1 or model.embedding is None:
        return
    weight = model.embedding.word_embeddings.weight
    if weight.grad is None:  # both ends must join the collective even if one saw no gradient
        weight.grad = torch.zeros_like(weight)
    dist.all_reduce(weight.grad, group=state.embedding_group)


@torch.no_grad()
def allreduce_sequence_parallel_grads(model: GPTModel) -> None:
    """Sum over TP the partial gradients of norm weights and row-parallel biases (sequence parallelism)."""
    state = model.state
    if not state.sequence_parallel:
        return
    grads = [p.grad for p in model.parameters() if is_sequence_parallel(p) and p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=state.tp_group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def finalize_model_grads(model: GPTModel) -> None:
    """Make each rank's gradients those of the full model: call after backward, before the DP all-reduce."""
    allreduce_sequence_parallel_grads(model)
    allreduce_embedding_grads(model)

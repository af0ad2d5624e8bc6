"""The pre-norm decoder layer: causal self-attention (SDPA), GeLU or SwiGLU MLP, rotary embeddings.

Activations are [seq, batch, hidden] (the seq dimension split over TP when sequence
parallelism is on: norms and dropout then work on this rank's chunk). Linear layers are the TP layers from
megatron_hds.parallel.layers, so a layer only ever holds its TP shard; nothing here
talks to process groups directly.
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from megatron_hds.config import ModelConfig
from megatron_hds.model.backends import build_norm
from megatron_hds.parallel.layers import ColumnParallelLinear, RowParallelLinear, mark_sequence_parallel
from megatron_hds.parallel.random import RNGStatesTracker, checkpoint
from megatron_hds.parallel.state import ParallelState

Rotary = Tuple[torch.Tensor, torch.Tensor]


class RotaryEmbedding(nn.Module):
    """cos/sin tables for GPT-NeoX-style rotary on the first `rotary_dim` dims of each head."""

    def __init__(self, rotary_dim: int, base: int, device: torch.device):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=device) / rotary_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

        self._cache: dict = {}

    def forward(self, seq_len: int) -> Rotary:
        # Tables depend only on the length; computing them once keeps them out of every step.
        if seq_len not in self._cache:
            t = torch.arange(seq_len, dtype=torch.float32, device=self.inv_freq.device)
            freqs = torch.outer(t, self.inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)[:, None, None, :]  # [s, 1, 1, rotary_dim]
            self._cache[seq_len] = (emb.cos(), emb.sin())
        return self._cache[seq_len]


def apply_rotary(x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
    """Rotate the first rotary_dim dims of x [s, b, heads, head_dim]; the rest pass through."""
    cos, sin = rotary
    rot_dim = cos.shape[-1]
    x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    half1, half2 = x_rot.chunk(2, dim=-1)
    rotated = torch.cat((-half2, half1), dim=-1)
    x_rot = x_rot * cos.to(x.dtype) + rotated * sin.to(x.dtype)
    return torch.cat((x_rot, x_pass), dim=-1)


def hidden_dropout(x: torch.Tensor, p: float, training: bool, sequence_parallel: bool,
                   rng_tracker: RNGStatesTracker) -> torch.Tensor:
    """Dropout on the residual stream, with masks consistent with how it is laid out over TP."""
    if p == 0 or not training:
        return x
    if sequence_parallel:  # each TP rank holds different positions: masks come from its own stream
        with rng_tracker.fork():
            return F.dropout(x, p, True)
    return F.dropout(x, p, True)  # replicated: the default generator is seeded alike on all TP ranks


def _output_std(config: ModelConfig) -> float:
    """Megatron's scaled init for layers that write into the residual stream."""
    return config.init_method_std / math.sqrt(2.0 * config.num_layers)


class SelfAttention(nn.Module):
    """Causal multi-head attention over this rank's heads; QKV rows are grouped per head."""

    def __init__(self, config: ModelConfig, state: ParallelState, layer: int, seed: int,
                 rng_tracker: RNGStatesTracker, dtype: torch.dtype):
        super().__init__()
        self.heads_local = config.num_attention_heads // state.tp_size
        self.head_dim = config.head_dim
        self.dropout = config.attention_dropout
        self.rng_tracker = rng_tracker
        self.recompute_core = config.recompute_granularity == "selective"
        prefix = f"layers.{layer}.self_attention"
        common = dict(seed=seed, bias=config.add_bias_linear, sequence_parallel=state.sequence_parallel,
                      device=state.device, dtype=dtype)
        # Output rows are laid out [head, (q, k, v), head_dim] so a TP shard is whole heads.
        self.query_key_value = ColumnParallelLinear(
            config.hidden_size, 3 * config.hidden_size, state.tp_group, init_std=config.init_method_std,
            init_key=f"{prefix}.query_key_value", **common)
        self.dense = RowParallelLinear(
            config.hidden_size, config.hidden_size, state.tp_group, init_std=_output_std(config),
            init_key=f"{prefix}.dense", **common)

    def forward(self, x: torch.Tensor, rotary: Optional[Rotary]) -> torch.Tensor:
        qkv = self.query_key_value(x)  # full sequence even when x is a sequence-parallel chunk
        s, b = qkv.shape[:2]
        qkv = qkv.view(s, b, self.heads_local, 3, self.head_dim)
        q, k, v = qkv.unbind(dim=3)
        if rotary is not None:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))  # [b, heads, s, head_dim] for SDPA
        if self.recompute_core and self.training and torch.is_grad_enabled():
            out = checkpoint(self._core_attention, self.rng_tracker, q, k, v)
        else:
            out = self._core_attention(q, k, v)
        out = out.permute(2, 0, 1, 3).reshape(s, b, self.heads_local * self.head_dim)
        return self.dense(out)

    def _core_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v, causal, with attention dropout: [b, heads, s, head_dim]."""
        dropout = self.dropout if self.training else 0.0
        # Heads differ per TP rank, so their dropout masks come from the per-rank stream.
        fork = self.rng_tracker.fork() if dropout > 0 else contextlib.nullcontext()
        with fork:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)


class MLP(nn.Module):
    """GeLU MLP, or SwiGLU with fc1 rows interleaved (gate_i, up_i) so TP shards hold whole pairs."""

    def __init__(self, config: ModelConfig, state: ParallelState, layer: int, seed: int, dtype: torch.dtype):
        super().__init__()
        if config.ffn_hidden_size % state.tp_size:
            raise ValueError(f"ffn_hidden_size={config.ffn_hidden_size} is not divisible by tensor-model-parallel "
                             f"size {state.tp_size}")
        self.swiglu = config.swiglu
        prefix = f"layers.{layer}.mlp"
        common = dict(seed=seed, bias=config.add_bias_linear, sequence_parallel=state.sequence_parallel,
                      device=state.device, dtype=dtype)
        fc1_out = 2 * config.ffn_hidden_size if config.swiglu else config.ffn_hidden_size
        self.dense_h_to_4h = ColumnParallelLinear(
            config.hidden_size, fc1_out, state.tp_group, init_std=config.init_method_std,
            init_key=f"{prefix}.dense_h_to_4h", **common)
        self.dense_4h_to_h = RowParallelLinear(
            config.ffn_hidden_size, config.hidden_size, state.tp_group, init_std=_output_std(config),
            init_key=f"{prefix}.dense_4h_to_h", **common)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dense_h_to_4h(x)
        if self.swiglu:
            pairs = h.unflatten(-1, (-1, 2))
            h = F.silu(pairs[..., 0]) * pairs[..., 1]
        else:
            h = F.gelu(h)
        return self.dense_4h_to_h(h)


class TransformerLayer(nn.Module):
    """Pre-norm decoder layer, sequential or parallel (GPT-NeoX) residual."""

    def __init__(self, config: ModelConfig, state: ParallelState, layer: int, seed: int,
                 rng_tracker: RNGStatesTracker, dtype: torch.dtype = torch.float32):
        super().__init__()
        norm = dict(normalization=config.normalization, hidden_size=config.hidden_size, eps=config.norm_epsilon,
                    transformer_impl=config.transformer_impl, device=state.device, dtype=dtype)
        self.parallel_residual = config.parallel_residual
        self.hidden_dropout = config.hidden_dropout
        self.sequence_parallel = state.sequence_parallel
        self.rng_tracker = rng_tracker
        self.input_layernorm = build_norm(**norm)
        self.self_attention = SelfAttention(config, state, layer, seed, rng_tracker, dtype)
        self.post_attention_layernorm = build_norm(**norm)
        self.mlp = MLP(config, state, layer, seed, dtype)
        for norm_layer in (self.input_layernorm, self.post_attention_layernorm):
            for param in norm_layer.parameters():
                mark_sequence_parallel(param, state.sequence_parallel)

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        return hidden_dropout(x, self.hidden_dropout, self.training, self.sequence_parallel, self.rng_tracker)

    def forward(self, x: torch.Tensor, rotary: Optional[Rotary] = None) -> torch.Tensor:
        if self.parallel_residual:
            attn = self._dropout(self.self_attention(self.input_layernorm(x), rotary))
            mlp = self._dropout(self.mlp(self.post_attention_layernorm(x)))
            return x + attn + mlp
        x = x + self._dropout(self.self_attention(self.input_layernorm(x), rotary))
        return x + self._dropout(self.mlp(self.post_attention_layernorm(x)))

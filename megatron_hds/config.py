"""Typed, validated configuration dataclasses (the model and parallel layout so far).

Each field's comment is its user-facing help; the Megatron flag of the same meaning
is named where one exists. Validation happens in ``__post_init__`` so a bad value is
reported where it is set, naming the value and what is accepted. Data, optimizer,
training and mixing configs join this module in later issues.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

POSITION_EMBEDDING_TYPES = ("learned_absolute", "rope")
NORMALIZATIONS = ("LayerNorm", "RMSNorm")
TRANSFORMER_IMPLS = ("local", "transformer_engine")


def _positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid: expected a positive integer")


def _probability(name: str, value: float) -> None:
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name}={value!r} is invalid: expected a probability in [0, 1)")


def _choice(name: str, value: str, accepted: tuple) -> None:
    if value not in accepted:
        raise ValueError(f"{name}={value!r} is invalid: accepted values are {', '.join(accepted)}")


@dataclass
class ModelConfig:
    """Shape and numerics of the GPT model (Megatron model flags)."""

    num_layers: int  # --num-layers: transformer layers in the whole model
    hidden_size: int  # --hidden-size
    num_attention_heads: int  # --num-attention-heads
    vocab_size: int  # tokenizer vocabulary; padded up, see padded_vocab_size()
    seq_length: int  # --seq-length: tokens per training sample
    ffn_hidden_size: Optional[int] = None  # --ffn-hidden-size; default 4*hidden (GeLU) or 8/3*hidden rounded to 64 (SwiGLU)
    max_position_embeddings: Optional[int] = None  # --max-position-embeddings; default seq_length
    position_embedding_type: str = "learned_absolute"  # --position-embedding-type {learned_absolute,rope}
    rotary_percent: float = 1.0  # --rotary-percent: fraction of each head's dims that rotary touches (Pythia: 0.25)
    rotary_base: int = 10000  # rotary frequency base
    normalization: str = "LayerNorm"  # --normalization {LayerNorm,RMSNorm}
    norm_epsilon: float = 1e-5  # epsilon of the norm layers
    swiglu: bool = False  # --swiglu: gated SiLU MLP instead of GeLU
    parallel_residual: bool = False  # x + attn(ln1(x)) + mlp(ln2(x)) as in GPT-NeoX / Pythia
    untie_embeddings_and_output_weights: bool = False  # --untie-embeddings-and-output-weights
    add_bias_linear: bool = True  # biases in the linear layers (Megatron --disable-bias-linear turns them off)
    attention_dropout: float = 0.0  # --attention-dropout
    hidden_dropout: float = 0.0  # --hidden-dropout (embeddings and residual branches)
    init_method_std: float = 0.02  # --init-method-std; output layers use std/sqrt(2*num_layers)
    make_vocab_size_divisible_by: int = 128  # --make-vocab-size-divisible-by (times TP)
    transformer_impl: str = "local"  # --transformer-impl {local,transformer_engine}

    def __post_init__(self):
        for name in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size", "seq_length",
                     "rotary_base", "make_vocab_size_divisible_by"):
            _positive(name, getattr(self, name))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                f"{self.num_attention_heads}: each head needs an equal share of the hidden size")
        if self.ffn_hidden_size is None:
            if self.swiglu:
                # Keeps the parameter count of a 4h GeLU MLP; rounded for matmul-friendly shapes.
                self.ffn_hidden_size = ((8 * self.hidden_size // 3) + 63) // 64 * 64
            else:
                self.ffn_hidden_size = 4 * self.hidden_size
        _positive("ffn_hidden_size", self.ffn_hidden_size)
        if self.max_position_embeddings is None:
            self.max_position_embeddings = self.seq_length
        _positive("max_position_embeddings", self.max_position_embeddings)
        if self.max_position_embeddings < self.seq_length:
            raise ValueError(
                f"max_position_embeddings={self.max_position_embeddings} is smaller than seq_length="
                f"{self.seq_length}: expected at least seq_length")
        _choice("position_embedding_type", self.position_embedding_type, POSITION_EMBEDDING_TYPES)
        _choice("normalization", self.normalization, NORMALIZATIONS)
        _choice("transformer_impl", self.transformer_impl, TRANSFORMER_IMPLS)
        if not 0.0 < self.rotary_percent <= 1.0:
            raise ValueError(f"rotary_percent={self.rotary_percent!r} is invalid: expected a value in (0, 1]")
        if self.position_embedding_type == "rope" and self.rotary_dim % 2:
            raise ValueError(
                f"rotary_percent={self.rotary_percent} gives an odd rotary dimension {self.rotary_dim} "
                f"for head size {self.head_dim}: expected an even number of rotated dims")
        _probability("attention_dropout", self.attention_dropout)
        _probability("hidden_dropout", self.hidden_dropout)
        if not self.init_method_std > 0:
            raise ValueError(f"init_method_std={self.init_method_std!r} is invalid: expected a positive float")
        if not self.norm_epsilon > 0:
            raise ValueError(f"norm_epsilon={self.norm_epsilon!r} is invalid: expected a positive float")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_percent)

    def padded_vocab_size(self, tensor_parallel_size: int) -> int:
        """Vocab padded up to a multiple of make_vocab_size_divisible_by * TP (Megatron's rule)."""
        multiple = self.make_vocab_size_divisible_by * tensor_parallel_size
        return -(-self.vocab_size // multiple) * multiple

    def num_parameters(self, tensor_parallel_size: int = 1) -> int:
        """Parameter count of the whole (unsharded) model, tied embeddings counted once."""
        h, f, L = self.hidden_size, self.ffn_hidden_size, self.num_layers
        v = self.padded_vocab_size(tensor_parallel_size)
        bias = 1 if self.add_bias_linear else 0
        norm = 2 * h if self.normalization == "LayerNorm" else h
        fc1_out = 2 * f if self.swiglu else f
        attn = h * 3 * h + 3 * h * bias + h * h + h * bias
        mlp = h * fc1_out + fc1_out * bias + f * h + h * bias
        layer = attn + mlp + 2 * norm
        emb = v * h + (self.max_position_embeddings * h if self.position_embedding_type == "learned_absolute" else 0)
        head = v * h if self.untie_embeddings_and_output_weights else 0
        return L * layer + emb + head + norm


@dataclass
class ParallelConfig:
    """How the world is split: TP fastest, then DP, then PP (Megatron's rank layout)."""

    tensor_model_parallel_size: int = 1  # --tensor-model-parallel-size
    pipeline_model_parallel_size: int = 1  # --pipeline-model-parallel-size
    # --sequence-parallel: split norms/dropout/residual activations along the sequence across TP
    # (less activation memory; no effect when TP is 1)
    sequence_parallel: bool = False
    # data parallel size is derived: world / (TP * PP)

    def __post_init__(self):
        _positive("tensor_model_parallel_size", self.tensor_model_parallel_size)
        _positive("pipeline_model_parallel_size", self.pipeline_model_parallel_size)


# Pythia shapes (GPT-NeoX): rotary on 25% of head dims, parallel residual, untied
# embeddings, LayerNorm, GeLU, vocab 50277 padded to 50304.
_PYTHIA = dict(position_embedding_type="rope", rotary_percent=0.25, parallel_residual=True,
               untie_embeddings_and_output_weights=True, vocab_size=50277, seq_length=2048)

MODEL_PRESETS = {
    "tiny": dict(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=512, seq_length=64,
                 position_embedding_type="rope", rotary_percent=0.25, parallel_residual=True,
                 untie_embeddings_and_output_weights=True, make_vocab_size_divisible_by=64),
    "pythia-160m": dict(num_layers=12, hidden_size=768, num_attention_heads=12, **_PYTHIA),
    "pythia-410m": dict(num_layers=24, hidden_size=1024, num_attention_heads=16, **_PYTHIA),
    "pythia-1b": dict(num_layers=16, hidden_size=2048, num_attention_heads=8, **_PYTHIA),
}


def model_preset(name: str, **overrides) -> ModelConfig:
    """A ModelConfig from a named preset, with any field overridden."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}: accepted presets are {', '.join(MODEL_PRESETS)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise ValueError(f"unknown ModelConfig fields {sorted(unknown)} in overrides for preset {name!r}")
    return ModelConfig(**{**MODEL_PRESETS[name], **overrides})

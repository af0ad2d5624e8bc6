"""Our model in Hugging Face ``transformers`` form and back: GPT-NeoX/Pythia and Llama shapes.

Works on full (unsharded, unpadded) state dicts from ``reshard``. GPT-NeoX
keeps our fused QKV layout ([head, (q, k, v), head_dim] rows) and names; Llama gets
separate q/k/v projections and gate/up from our interleaved SwiGLU fc1. Rotary is
GPT-NeoX style (rotate halves) in both, as ours. The tokenizer files come from
hf_tokenizer.py. transformers and safetensors are imported only when used.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import torch

from megatron_hds.checkpoint.hf_tokenizer import import_tokenizer, run_tokenizer, save_hf_tokenizer
from megatron_hds.checkpoint.reshard import (OUTPUT_LAYER, WORD_EMBEDDINGS, StateDict, read_model_checkpoint,
                                             write_model_checkpoint)
from megatron_hds.config import ModelConfig

NEOX = "GPTNeoXForCausalLM"
LLAMA = "LlamaForCausalLM"
# Buffers older transformers versions saved with the weights; they carry no parameters.
_IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq", "attention.bias", "attention.masked_bias")


# --------------------------------------------------------------------------- architecture


def _blockers(config: ModelConfig) -> Dict[str, list]:
    """For each supported architecture, the options of `config` it cannot express."""
    common = []
    if config.position_embedding_type != "rope":
        common.append(f"position_embedding_type={config.position_embedding_type!r} (needs 'rope')")
    neox, llama = list(common), list(common)
    if config.normalization != "LayerNorm":
        neox.append(f"normalization={config.normalization!r} (needs 'LayerNorm')")
    if config.swiglu:
        neox.append("swiglu=True (needs the GeLU MLP)")
    if not config.add_bias_linear:
        neox.append("add_bias_linear=False (--disable-bias-linear; GPT-NeoX linear layers have biases)")
    if config.normalization != "RMSNorm":
        llama.append(f"normalization={config.normalization!r} (needs 'RMSNorm')")
    if not config.swiglu:
        llama.append("swiglu=False (needs --swiglu)")
    if config.parallel_residual:
        llama.append("parallel_residual=True (needs the sequential residual)")
    if config.rotary_percent != 1.0:
        llama.append(f"rotary_percent={config.rotary_percent} (needs 1.0)")
    return {NEOX: neox, LLAMA: llama}


def hf_architecture(config: ModelConfig) -> str:
    """The transformers architecture our model maps onto exactly; ValueError naming the blocking options."""
    blockers = _blockers(config)
    for arch, reasons in blockers.items():
        if not reasons:
            return arch
    detail = "; ".join(f"{arch} is blocked by {', '.join(reasons)}" for arch, reasons in blockers.items())
    raise ValueError(f"this model maps to no supported Hugging Face architecture: {detail}")


def to_hf_config(config: ModelConfig, special_ids: Optional[dict] = None, dtype: torch.dtype = torch.float32):
    """The transformers config of our model (special token ids from the tokenizer, when known)."""
    import transformers

    arch = hf_architecture(config)
    common = dict(
        architectures=[arch], vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_attention_heads,
        intermediate_size=config.ffn_hidden_size, max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=not config.untie_embeddings_and_output_weights,
        attention_dropout=config.attention_dropout, initializer_range=config.init_method_std,
        dtype=str(dtype).removeprefix("torch."), **(special_ids or {}))
    if arch == NEOX:
        return transformers.GPTNeoXConfig(
            hidden_act="gelu", layer_norm_eps=config.norm_epsilon, use_parallel_residual=config.parallel_residual,
            rotary_pct=config.rotary_percent, rotary_emb_base=config.rotary_base, attention_bias=True,
            hidden_dropout=config.hidden_dropout, **common)
    return transformers.LlamaConfig(
        hidden_act="silu", rms_norm_eps=config.norm_epsilon, rope_theta=config.rotary_base,
        num_key_value_heads=config.num_attention_heads, attention_bias=config.add_bias_linear,
        mlp_bias=config.add_bias_linear, **common)


def _hf_field(hf_config, name: str):
    value = getattr(hf_config, name, None)
    if value is None:
        raise ValueError(f"Hugging Face config lacks {name!r}")
    return value


def from_hf_config(hf_config, seq_length: Optional[int] = None, make_vocab_size_divisible_by: int = 128
                   ) -> ModelConfig:
    """Our ModelConfig for a transformers GPT-NeoX or Llama config; ValueError naming what we cannot express."""
    model_type = getattr(hf_config, "model_type", None)
    rope = dict(getattr(hf_config, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(f"rope_type={rope_type!r} (rope scaling) is not supported: only plain rotary is")
    theta = float(rope.get("rope_theta", 10000.0))
    if not theta.is_integer():
        raise ValueError(f"rope_theta={theta} is not an integer, which our rotary_base must be")
    heads, hidden = _hf_field(hf_config, "num_attention_heads"), _hf_field(hf_config, "hidden_size")
    head_dim = getattr(hf_config, "head_dim", None) or hidden // heads
    if head_dim * heads != hidden:
        raise ValueError(f"head_dim={head_dim} with {heads} heads does not give hidden_size={hidden}")
    act = getattr(hf_config, "hidden_act", None)
    if model_type == "gpt_neox":
        if act != "gelu":
            raise ValueError(f"hidden_act={act!r} is not supported for GPT-NeoX: only exact 'gelu' is")
        if not getattr(hf_config, "attention_bias", True):
            raise ValueError("attention_bias=False is not supported for GPT-NeoX (its MLP keeps biases; "
                             "ours has one bias switch for all linear layers)")
        shape = dict(normalization="LayerNorm", norm_epsilon=_hf_field(hf_config, "layer_norm_eps"), swiglu=False,
                     parallel_residual=bool(getattr(hf_config, "use_parallel_residual", True)),
                     rotary_percent=float(rope.get("partial_rotary_factor", 1.0)), add_bias_linear=True)
    elif model_type == "llama":
        if act != "silu":
            raise ValueError(f"hidden_act={act!r} is not supported for Llama: only 'silu' (SwiGLU) is")
        kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
        if kv_heads != heads:
            raise ValueError(f"num_key_value_heads={kv_heads} != num_attention_heads={heads}: grouped-query "
                             "attention is not supported")
        bias = bool(getattr(hf_config, "attention_bias", False))
        if bias != bool(getattr(hf_config, "mlp_bias", False)):
            raise ValueError(f"attention_bias={bias} with mlp_bias={not bias} is not supported: ours has one bias "
                             "switch for all linear layers")
        shape = dict(normalization="RMSNorm", norm_epsilon=_hf_field(hf_config, "rms_norm_eps"), swiglu=True,
                     parallel_residual=False, rotary_percent=1.0, add_bias_linear=bias)
    else:
        raise ValueError(f"Hugging Face model_type={model_type!r} is not supported: expected 'gpt_neox' or 'llama'")
    max_positions = _hf_field(hf_config, "max_position_embeddings")
    shape["attention_dropout"] = float(getattr(hf_config, "attention_dropout", 0.0) or 0.0)
    shape["hidden_dropout"] = float(getattr(hf_config, "hidden_dropout", 0.0) or 0.0)
    shape["init_method_std"] = float(getattr(hf_config, "initializer_range", 0.02))
    return ModelConfig(
        num_layers=_hf_field(hf_config, "num_hidden_layers"), hidden_size=hidden, num_attention_heads=heads,
        vocab_size=_hf_field(hf_config, "vocab_size"), seq_length=seq_length or max_positions,
        ffn_hidden_size=_hf_field(hf_config, "intermediate_size"), max_position_embeddings=max_positions,
        position_embedding_type="rope", rotary_base=int(theta),
        untie_embeddings_and_output_weights=not getattr(hf_config, "tie_word_embeddings", False),
        make_vocab_size_divisible_by=make_vocab_size_divisible_by, **shape)


# --------------------------------------------------------------------------- weights

# Our layer-local names -> GPT-NeoX's, suffixes .weight/.bias both.
_NEOX_LAYER = (("input_layernorm", "input_layernorm"), ("post_attention_layernorm", "post_attention_layernorm"),
               ("self_attention.query_key_value", "attention.query_key_value"),
               ("self_attention.dense", "attention.dense"),
               ("mlp.dense_h_to_4h", "mlp.dense_h_to_4h"), ("mlp.dense_4h_to_h", "mlp.dense_4h_to_h"))
_LLAMA_LAYER = (("input_layernorm", "input_layernorm"), ("post_attention_layernorm", "post_attention_layernorm"),
                ("self_attention.dense", "self_attn.o_proj"), ("mlp.dense_4h_to_h", "mlp.down_proj"))


def _renames(config: ModelConfig, arch: str) -> list:
    """(our name, HF name) of every tensor that is copied unchanged."""
    if arch == NEOX:
        pairs = [(WORD_EMBEDDINGS, "gpt_neox.embed_in.weight"), ("final_layernorm", "gpt_neox.final_layer_norm"),
                 (OUTPUT_LAYER, "embed_out.weight")]
        layer_pairs, hf_prefix = _NEOX_LAYER, "gpt_neox.layers"
    else:
        pairs = [(WORD_EMBEDDINGS, "model.embed_tokens.weight"), ("final_layernorm", "model.norm"),
                 (OUTPUT_LAYER, "lm_head.weight")]
        layer_pairs, hf_prefix = _LLAMA_LAYER, "model.layers"
    for i in range(config.num_layers):
        pairs += [(f"layers.{i}.{ours}", f"{hf_prefix}.{i}.{theirs}") for ours, theirs in layer_pairs]
    out = []
    for ours, theirs in pairs:
        if ours.endswith(".weight"):
            out.append((ours, theirs))
        else:
            out += [(f"{ours}.weight", f"{theirs}.weight"), (f"{ours}.bias", f"{theirs}.bias")]
    return out


def _llama_fused(i: int, suffix: str) -> Tuple[str, list, str, list]:
    """(our QKV name, HF q/k/v names, our fc1 name, HF gate/up names) of layer i."""
    ours, theirs = f"layers.{i}.", f"model.layers.{i}."
    return (f"{ours}self_attention.query_key_value.{suffix}",
            [f"{theirs}self_attn.{p}_proj.{suffix}" for p in "qkv"],
            f"{ours}mlp.dense_h_to_4h.{suffix}",
            [f"{theirs}mlp.gate_proj.{suffix}", f"{theirs}mlp.up_proj.{suffix}"])


def to_hf_state_dict(full: StateDict, config: ModelConfig) -> StateDict:
    """transformers' state dict (its names and layout) of our full state dict."""
    arch = hf_architecture(config)
    out: StateDict = OrderedDict()
    for ours, theirs in _renames(config, arch):
        if ours in full:  # biases and the untied head are optional
            out[theirs] = full[ours]
    if arch == LLAMA:
        heads, head_dim = config.num_attention_heads, config.head_dim
        for i in range(config.num_layers):
            for suffix in ("weight", "bias"):
                qkv, qkv_hf, fc1, fc1_hf = _llama_fused(i, suffix)
                if qkv not in full:
                    continue
                grouped = full[qkv].view(heads, 3, head_dim, -1)  # trailing dim: hidden (weight) or 1 (bias)
                for j, name in enumerate(qkv_hf):
                    out[name] = grouped[:, j].reshape(heads * head_dim, *full[qkv].shape[1:])
                pairs = full[fc1].view(config.ffn_hidden_size, 2, -1)  # rows interleaved (gate_i, up_i)
                for j, name in enumerate(fc1_hf):
                    out[name] = pairs[:, j].reshape(config.ffn_hidden_size, *full[fc1].shape[1:])
    unused = set(full) - set(dict(_renames(config, arch)))
    if arch == LLAMA:
        unused -= {n for i in range(config.num_layers) for s in ("weight", "bias")
                   for n in _llama_fused(i, s)[::2]}
    if unused:
        raise ValueError(f"tensors {sorted(unused)} have no place in {arch}")
    return out


def from_hf_state_dict(hf_state: StateDict, config: ModelConfig) -> StateDict:
    """Our full state dict from transformers' GPT-NeoX or Llama state dict (the inverse of to_hf_state_dict)."""
    arch = hf_architecture(config)
    hf_state = dict(hf_state)
    if arch == NEOX and "lm_head.weight" in hf_state:  # transformers >= 5 saves GPT-NeoX's head under this name
        hf_state.setdefault("embed_out.weight", hf_state.pop("lm_head.weight"))
    used, full = set(), OrderedDict()

    def take(name: str) -> torch.Tensor:
        used.add(name)
        return hf_state[name]

    biases = config.add_bias_linear
    for ours, theirs in _renames(config, arch):
        if ours == OUTPUT_LAYER and not config.untie_embeddings_and_output_weights:
            used.add(theirs)  # a tied model may still list the head; the embedding is the weight
            continue
        if ours.endswith(".bias") and not (config.normalization == "LayerNorm" if "layernorm" in ours else biases):
            continue
        if theirs not in hf_state:
            raise ValueError(f"the Hugging Face weights lack {theirs!r} (needed for our {ours!r})")
        full[ours] = take(theirs)
    if arch == LLAMA:
        heads, head_dim = config.num_attention_heads, config.head_dim
        for i in range(config.num_layers):
            for suffix in ("weight", "bias") if biases else ("weight",):
                qkv, qkv_hf, fc1, fc1_hf = _llama_fused(i, suffix)
                missing = [n for n in qkv_hf + fc1_hf if n not in hf_state]
                if missing:
                    raise ValueError(f"the Hugging Face weights lack {missing}")
                q, k, v = (take(n) for n in qkv_hf)
                full[qkv] = torch.stack([t.reshape(heads, head_dim, -1) for t in (q, k, v)], dim=1).reshape(
                    3 * heads * head_dim, *q.shape[1:])
                gate, up = (take(n) for n in fc1_hf)
                full[fc1] = torch.stack([gate, up], dim=1).reshape(2 * config.ffn_hidden_size, *gate.shape[1:])
    unexpected = [n for n in hf_state if n not in used and not n.endswith(_IGNORED_HF_SUFFIXES)]
    if unexpected:
        raise ValueError(f"Hugging Face tensors {sorted(unexpected)[:8]} have no place in our {arch}-shaped model")
    return full


# --------------------------------------------------------------------------- directories


def _replace_dir(tmp: str, final: str) -> None:
    """Rename a finished directory into place; an existing one is moved aside first, then deleted."""
    stale = None
    if os.path.exists(final):
        stale = f"{final}.stale-{uuid.uuid4().hex[:8]}"
        os.replace(final, stale)
    os.replace(tmp, final)
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


def save_hf_model(out_dir: str, config: ModelConfig, full: StateDict, tokenizer_model: Optional[str] = None,
                  tokenizer_type: str = "GPTSentencePieceTokenizer", dtype: torch.dtype = torch.float32) -> str:
    """Write a transformers model directory (config, model.safetensors, tokenizer files) atomically:
    everything goes to a temporary sibling directory renamed into place at the end."""
    from safetensors.torch import save_file

    hf_state = to_hf_state_dict(full, config)
    out_dir = os.path.abspath(out_dir)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    tmp = f"{out_dir}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp)
    try:
        special_ids = save_hf_tokenizer(tokenizer_model, tokenizer_type, tmp) if tokenizer_model else {}
        to_hf_config(config, special_ids, dtype).save_pretrained(tmp)
        # Own, contiguous storage per tensor: safetensors refuses views of one buffer.
        tensors = {name: t.detach().to(dtype).contiguous().clone() for name, t in hf_state.items()}
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def load_hf_state_dict(hf_dir: str) -> StateDict:
    """Every tensor of a local transformers model directory (safetensors, sharded or not; else pytorch_model.bin)."""
    from safetensors.torch import load_file

    for index_name, single, loader in (
            ("model.safetensors.index.json", "model.safetensors", load_file),
            ("pytorch_model.bin.index.json", "pytorch_model.bin",
             lambda p: torch.load(p, map_location="cpu", weights_only=True))):
        index = os.path.join(hf_dir, index_name)
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        elif os.path.isfile(os.path.join(hf_dir, single)):
            files = [single]
        else:
            continue
        state: StateDict = {}
        for name in files:
            state.update(loader(os.path.join(hf_dir, name)))
        return state
    raise FileNotFoundError(f"{hf_dir} holds no model.safetensors(.index.json) or pytorch_model.bin(.index.json)")


def load_hf_model(hf_dir: str, seq_length: Optional[int] = None, make_vocab_size_divisible_by: int = 128
                  ) -> Tuple[ModelConfig, StateDict]:
    """(our ModelConfig, our full fp32 state dict) of a local transformers GPT-NeoX or Llama directory."""
    import transformers

    hf_config = transformers.AutoConfig.from_pretrained(hf_dir)
    config = from_hf_config(hf_config, seq_length, make_vocab_size_divisible_by)
    full = from_hf_state_dict(load_hf_state_dict(hf_dir), config)
    return config, OrderedDict((name, t.float()) for name, t in full.items())


# --------------------------------------------------------------------------- whole conversions


def export_checkpoint(load_dir: str, out_dir: str, iteration: Optional[int] = None,
                      tokenizer_model: Optional[str] = None, tokenizer_type: Optional[str] = None,
                      dtype: torch.dtype = torch.float32) -> str:
    """Our checkpoint (any TP/PP) -> a transformers model directory; the tokenizer defaults to the run's."""
    ckpt = read_model_checkpoint(load_dir, iteration)
    hf_architecture(ckpt.config)  # fail before anything is written
    run_model, run_type = run_tokenizer(ckpt.args)
    tokenizer_model = tokenizer_model or run_model
    if tokenizer_model is not None and not os.path.exists(tokenizer_model):
        raise FileNotFoundError(f"tokenizer model {tokenizer_model!r} not found: pass --tokenizer-model")
    return save_hf_model(out_dir, ckpt.config, ckpt.state, tokenizer_model, tokenizer_type or run_type, dtype)


def import_hf_model(hf_dir: str, save_dir: str, tp: int = 1, pp: int = 1, seq_length: Optional[int] = None,
                    make_vocab_size_divisible_by: int = 128) -> Tuple[ModelConfig, str, Optional[dict]]:
    """A transformers directory -> our checkpoint (iteration 0, weights only) at TP/PP, with a copy of its
    SentencePiece model when it has one; returns (config, committed dir, tokenizer args or None)."""
    config, full = load_hf_model(hf_dir, seq_length, make_vocab_size_divisible_by)
    tokenizer = import_tokenizer(hf_dir, save_dir)
    extra = {"converted_from": os.path.abspath(hf_dir), **({"data": tokenizer} if tokenizer else {})}
    written = write_model_checkpoint(save_dir, config, full, tp, pp, iteration=0, extra_args=extra)
    return config, written, tokenizer


def pretrain_flags(config: ModelConfig) -> list:
    """The pretrain flags that build this model shape (the vocabulary comes from --tokenizer-model)."""
    flags = ["--num-layers", config.num_layers, "--hidden-size", config.hidden_size,
             "--ffn-hidden-size", config.ffn_hidden_size, "--num-attention-heads", config.num_attention_heads,
             "--seq-length", config.seq_length, "--max-position-embeddings", config.max_position_embeddings,
             "--position-embedding-type", config.position_embedding_type,
             "--rotary-percent", config.rotary_percent, "--normalization", config.normalization,
             "--make-vocab-size-divisible-by", config.make_vocab_size_divisible_by]
    for on, flag in ((config.swiglu, "--swiglu"), (config.parallel_residual, "--use-parallel-residual"),
                     (config.untie_embeddings_and_output_weights, "--untie-embeddings-and-output-weights"),
                     (not config.add_bias_linear, "--disable-bias-linear")):
        if on:
            flags.append(flag)
    return [str(f) for f in flags]

"""Throughput of one forward+backward training step: tokens/s and model FLOPs utilisation (MFU).

Single process (CPU or one GPU):
    python tools/bench_model.py --model tiny --micro-batch-size 8
Several ranks (TP/PP/DP), e.g. on 4 GPUs:
    torchrun --nproc_per_node 4 tools/bench_model.py --model pythia-1b --tp 2 --pp 2 --num-micro-batches 8

In a single process the same run also times a plain single-file PyTorch GPT of identical
shape (nn.Linear/nn.Embedding, F.cross_entropy, no parallel plumbing), loaded with the
same weights, and prints both figures: the overhead of our parallel layers at TP=PP=1.

MFU = achieved model FLOPs / (ranks x peak), with the trainer's formula and peak table
(megatron_hds/training/flops.py): MFU counts matmul FLOPs only; embedding lookups,
position tables, norms and biases are left out. A CPU has no datasheet figure, so its
"peak" is the measured throughput of a large fp32 matmul on this machine (whatever the
run's dtype), stated in the output; --peak-tflops overrides either.

Memory: the activations one micro-batch's forward keeps for backward (what activation
recompute, --recompute-granularity, trades for time), on any device; on a GPU also the
peak memory allocated during one of our steps.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn


from megatron_hds.config import (MODEL_PRESETS, RECOMPUTE_GRANULARITIES, RECOMPUTE_METHODS,
                                 ModelConfig, model_preset)
from megatron_hds.model.gpt import GPTModel
from megatron_hds.parallel.schedules import forward_backward
from megatron_hds.parallel.state import ParallelState, init_distributed
from megatron_hds.precision import DTYPES
from megatron_hds.training.flops import device_name, mfu, model_flops_per_token, peak_flops


def measured_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e12


def device_peak(device: torch.device, dtype_name: str, override: float | None) -> tuple[float, str]:
    """(peak TFLOP/s of one rank, where the figure comes from)."""
    if override:
        return override, "given by --peak-tflops"
    if device.type == "cpu":
        # fp32 whatever the run's dtype: CPUs without bf16 matmul units emulate it far below the fp32 rate.
        return measured_matmul_tflops(device, torch.float32), "measured 2048^3 fp32 matmul on this CPU"
    name = device_name(device)
    peak = peak_flops(name, dtype_name)
    if peak is None:
        raise SystemExit(f"no peak for device {name!r} in megatron_hds/training/flops.py: pass --peak-tflops")
    return peak / 1e12, f"datasheet dense {dtype_name} peak of {name}"


class PlainGPT(nn.Module):
    """A plain single-file GPT of the same shape and parameter names as GPTModel at TP=PP=1."""

    def __init__(self, c: ModelConfig, device, dtype):
        super().__init__()
        self.c = c
        vocab = c.padded_vocab_size(1)
        norm = (lambda: nn.LayerNorm(c.hidden_size, eps=c.norm_epsilon, device=device, dtype=dtype)) \
            if c.normalization == "LayerNorm" else \
            (lambda: nn.RMSNorm(c.hidden_size, eps=c.norm_epsilon, device=device, dtype=dtype))
        linear = lambda i, o: nn.Linear(i, o, bias=c.add_bias_linear, device=device, dtype=dtype)  # noqa: E731
        self.embedding = nn.Module()
        self.embedding.word_embeddings = nn.Embedding(vocab, c.hidden_size, device=device, dtype=dtype)
        if c.position_embedding_type == "learned_absolute":
            self.embedding.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size,
                                                              device=device, dtype=dtype)
        self.layers = nn.ModuleDict()
        for i in range(c.num_layers):
            layer = nn.Module()
            layer.input_layernorm, layer.post_attention_layernorm = norm(), norm()
            layer.self_attention = nn.Module()
            layer.self_attention.query_key_value = linear(c.hidden_size, 3 * c.hidden_size)
            layer.self_attention.dense = linear(c.hidden_size, c.hidden_size)
            layer.mlp = nn.Module()
            layer.mlp.dense_h_to_4h = linear(c.hidden_size, (2 if c.swiglu else 1) * c.ffn_hidden_size)
            layer.mlp.dense_4h_to_h = linear(c.ffn_hidden_size, c.hidden_size)
            self.layers[str(i)] = layer
        self.final_layernorm = norm()
        if c.untie_embeddings_and_output_weights:
            self.output_layer = nn.Linear(c.hidden_size, vocab, bias=False, device=device, dtype=dtype)
        rot = c.rotary_dim
        inv_freq = 1.0 / (c.rotary_base ** (torch.arange(0, rot, 2, device=device).float() / rot))
        freqs = torch.outer(torch.arange(c.seq_length, device=device).float(), inv_freq)
        self.register_buffer("cos", torch.cat((freqs, freqs), -1).cos().to(dtype), persistent=False)
        self.register_buffer("sin", torch.cat((freqs, freqs), -1).sin().to(dtype), persistent=False)

    def _rope(self, x):  # x [b, heads, s, head_dim]
        rot = self.c.rotary_dim
        xr, xp = x[..., :rot], x[..., rot:]
        x1, x2 = xr.chunk(2, -1)
        return torch.cat((xr * self.cos + torch.cat((-x2, x1), -1) * self.sin, xp), -1)

    def _attention(self, attn, x):
        b, s, h = x.shape
        heads = self.c.num_attention_heads
        q, k, v = attn.query_key_value(x).view(b, s, heads, 3, h // heads).permute(3, 0, 2, 1, 4)
        if self.c.position_embedding_type == "rope":
            q, k = self._rope(q), self._rope(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return attn.dense(y.transpose(1, 2).reshape(b, s, h))

    def _mlp(self, mlp, x):
        y = mlp.dense_h_to_4h(x)
        if self.c.swiglu:
            y = y.unflatten(-1, (-1, 2))
            y = F.silu(y[..., 0]) * y[..., 1]
        else:
            y = F.gelu(y)
        return mlp.dense_4h_to_h(y)

    def forward(self, tokens, labels):  # [b, s] batch-first, the layout a plain GPT would use
        x = self.embedding.word_embeddings(tokens)
        if self.c.position_embedding_type == "learned_absolute":
            x = x + self.embedding.position_embeddings.weight[: tokens.shape[1]]
        for layer in self.layers.values():
            if self.c.parallel_residual:
                x = x + self._attention(layer.self_attention, layer.input_layernorm(x)) \
                    + self._mlp(layer.mlp, layer.post_attention_layernorm(x))
            else:
                x = x + self._attention(layer.self_attention, layer.input_layernorm(x))
                x = x + self._mlp(layer.mlp, layer.post_attention_layernorm(x))
        x = self.final_layernorm(x)
        weight = self.output_layer.weight if self.c.untie_embeddings_and_output_weights \
            else self.embedding.word_embeddings.weight
        logits = F.linear(x, weight)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())


def activation_bytes(model: GPTModel, micro_batch: dict) -> int:
    """Bytes one training forward of ``micro_batch`` keeps for backward: the tensors autograd
    saves plus the inputs activation checkpoints hold for their recompute, each storage once,
    parameters excluded. The forward runs under the grad mode the caller has; nothing is kept."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def keep(t) -> None:
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    def pack(t):
        keep(t)
        return t

    original = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(function, *args, **kwargs):
        for arg in args:
            keep(arg)
        return original(function, *args, **kwargs)

    torch.utils.checkpoint.checkpoint = counting_checkpoint
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(**micro_batch)
    finally:
        torch.utils.checkpoint.checkpoint = original
    return sum(kept.values())


def _recompute_text(config: ModelConfig) -> str:
    if config.recompute_granularity is None:
        return ""
    if config.recompute_granularity == "selective":
        return "; recompute selective"
    return f"; recompute full/{config.recompute_method}/{config.recompute_num_layers}"


def synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        torch.get_device_module(device.type).synchronize(device)


def timed(step, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", choices=sorted(MODEL_PRESETS), help="model size preset")
    parser.add_argument("--seq-length", type=int, default=None, help="override the preset's sequence length")
    parser.add_argument("--tp", type=int, default=1, help="tensor-model-parallel size")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-model-parallel size")
    parser.add_argument("--sequence-parallel", action="store_true", help="split the sequence across TP")
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--num-micro-batches", type=int, default=1, help="micro-batches per step per DP rank")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="parameter/activation dtype")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=50,
                        help="timed steps, alternating with the plain GPT's (median per-step time is reported)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak per rank, overrides the table")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain-PyTorch comparison")
    parser.add_argument("--torch-compile", action="store_true",
                        help="compile our transformer layers (--torch-compile) and the plain GPT (Module.compile); "
                             "the warm-up steps pay the compilation")
    parser.add_argument("--recompute-granularity", choices=list(RECOMPUTE_GRANULARITIES), default=None,
                        help="activation recompute of our model (the plain GPT keeps everything)")
    parser.add_argument("--recompute-method", choices=list(RECOMPUTE_METHODS), default=None)
    parser.add_argument("--recompute-num-layers", type=int, default=None)
    return parser.parse_args(argv)


def plain_step_of(model: GPTModel, config: ModelConfig, args, tokens, labels, device, dtype):
    """The plain GPT's training step, after checking that it reproduces our model's loss."""
    plain = PlainGPT(config, device, dtype)
    plain.load_state_dict(model.state_dict())
    if args.torch_compile:
        plain.compile()
    with torch.no_grad():  # same weights, same math: the two losses must agree
        ours_loss = model(tokens=tokens, labels=labels).mean().item()
        plain_loss = plain(tokens, labels).item()
    if abs(ours_loss - plain_loss) > 1e-3 * abs(plain_loss):
        raise SystemExit(f"plain GPT does not reproduce our loss ({plain_loss} vs {ours_loss}): not comparable")

    def plain_step():
        plain.zero_grad(set_to_none=True)
        for _ in range(args.num_micro_batches):
            (plain(tokens, labels) / args.num_micro_batches).backward()
    return plain_step


def memory_line(model: GPTModel, our_step, micro_batch: dict, device: torch.device, pp: int) -> str:
    """Activations one micro-batch keeps for backward and, on an accelerator, one step's peak memory.
    Activations need the whole model in this process's forward (a pipeline stage's input comes
    from another rank), so not with PP > 1."""
    memory = [f"activations kept for backward {activation_bytes(model, micro_batch) / 2**20:,.1f} MiB per "
              "micro-batch" if pp == 1 else "activations per micro-batch: not measured with PP > 1"]
    if device.type != "cpu":
        accelerator = torch.get_device_module(device.type)
        accelerator.reset_peak_memory_stats(device)
        our_step()
        synchronize(device)
        memory.append(f"peak allocated in one step {accelerator.max_memory_allocated(device) / 2**30:,.2f} GiB")
    return "megatron_hds memory (rank 0): " + "; ".join(memory)


def main(argv=None) -> None:
    args = parse_args(argv)
    if "WORLD_SIZE" in os.environ:
        init_distributed()
    state = ParallelState.build(args.tp, args.pp, sequence_parallel=args.sequence_parallel)
    device, dtype = state.device, DTYPES[args.dtype]
    overrides = {"seq_length": args.seq_length} if args.seq_length else {}
    config = model_preset(args.model, torch_compile=args.torch_compile, recompute_granularity=args.recompute_granularity,
                          recompute_method=args.recompute_method, recompute_num_layers=args.recompute_num_layers,
                          **overrides)
    torch.manual_seed(0)
    model = GPTModel(config, state, seed=0, dtype=dtype)
    world = state.layout.world_size
    tokens, labels = torch.randint(0, config.vocab_size, (2, args.micro_batch_size, config.seq_length),
                                   device=device)
    micro = [dict(tokens=tokens, labels=labels)] * args.num_micro_batches

    def our_step():
        model.zero_grad(set_to_none=True)
        forward_backward(model, micro)

    plain_step = None
    if world == 1 and not args.no_plain:
        plain_step = plain_step_of(model, config, args, tokens, labels, device, dtype)
    steps = {"megatron_hds GPTModel": our_step, "plain PyTorch GPT": plain_step}
    steps = {name: step for name, step in steps.items() if step is not None}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    # Steps of the two models alternate, so load from other processes hits both alike.
    times = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            times[name].append(timed(step, device))
    memory = memory_line(model, our_step, micro[0], device, args.pp)  # after the timing: it cannot disturb it

    tokens_per_step = args.micro_batch_size * config.seq_length * args.num_micro_batches * state.dp_size
    flops_per_token = model_flops_per_token(config, args.tp)
    peak, peak_source = device_peak(device, args.dtype, args.peak_tflops)
    if state.rank == 0:
        print(f"model {args.model}: {config.num_parameters(args.tp) / 1e6:.2f}M params, layers {config.num_layers}, "
              f"hidden {config.hidden_size}, seq {config.seq_length}; layout TP={args.tp} PP={args.pp} "
              f"DP={state.dp_size}{' +SP' if state.sequence_parallel else ''}"
              f"{'; torch.compile' if args.torch_compile else ''}{_recompute_text(config)}; "
              f"micro-batch {args.micro_batch_size} x {args.num_micro_batches}; {args.dtype} on "
              f"{device}; {torch.get_num_threads()} threads")
        print(f"peak {peak:.3f} TFLOP/s per rank ({peak_source}); "
              f"{flops_per_token * tokens_per_step / 1e9:.3f} GFLOP per step; "
              f"median of {args.steps} steps")
        throughput = {}
        for name, step_times in times.items():
            step = statistics.median(step_times)
            throughput[name] = tokens_per_step / step
            utilisation = mfu(throughput[name], flops_per_token, peak * 1e12, world)
            print(f"{name:<26} step {step * 1e3:9.2f} ms   {throughput[name]:12,.0f} tokens/s   "
                  f"MFU {100 * utilisation:6.2f}%")
            if name == "megatron_hds GPTModel":
                print(memory)
        if len(throughput) == 2:
            ours, plain = throughput.values()
            print(f"megatron_hds / plain throughput: {ours / plain:.3f}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""Our kernels against plain torch: time, peak memory and achieved bandwidth.

    python tools/bench_kernels.py --tokens 16384 65536 131072 --vocab 50304 --tp 2 --dtype bf16
    python tools/bench_kernels.py --kernels norm --model pythia-1b --tp 2
    python tools/bench_kernels.py --kernels sketch --model pythia-1b

Fused cross entropy (forward + backward of one micro-batch's logits shard [tokens, vocab/TP],
including per-domain loss sums and token counts): ours (Triton through kernels/, gradient
into a preallocated buffer) against torch ``F.cross_entropy(reduction='none')`` + index_add
+ autograd backward, the same under ``torch.compile``, and liger-kernel's fused cross entropy
when it is installed. Multi-tensor norm: ``multi_tensor_sum_of_squares`` over the parameter
shards of a preset model (default pythia-1b) against a per-parameter
``torch.linalg.vector_norm`` loop and ``torch._foreach_norm``. CountSketch (the HDS gradient
probe of one micro-batch: the gradients of 3 MLP output projections of a preset model into
a 4096-bucket sketch): ours (Triton, hash computed on the fly, no table) against the torch
path (index_add with the probe's per-element table of buckets and signs, 5 bytes/element).

The device is CUDA when visible, else CPU, where only the torch paths are timed (ours is
then the torch twin: the Triton kernels run on CPU only through the slow interpreter).
Bandwidth is reported against this device's measured copy bandwidth (a large
``Tensor.copy_``). For CE the floor is the issue's "logits read once + gradient written
once"; ours moves one more read by design (the softmax normaliser must be complete, and
combined over TP, before any gradient is written), so its best case is 1.5x that floor.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from megatron_hds import kernels
from megatron_hds.config import MODEL_PRESETS, ModelConfig, model_preset
from megatron_hds.kernels import dispatch
from megatron_hds.precision import DTYPES

KERNELS = ("ce", "norm", "sketch")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kernels", default="ce,norm,sketch", help="comma-separated: ce, norm, sketch")
    p.add_argument("--tokens", type=int, nargs="+", default=[16384, 65536, 131072],
                   help="CE rows (tokens of one micro-batch); several values give several rows of the table")
    p.add_argument("--vocab", type=int, default=50304, help="global (padded) vocab; each rank holds vocab / tp")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size the shapes are sharded for")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="logits / parameter dtype")
    p.add_argument("--domains", type=int, default=22, help="number of data domains (The Pile: 22)")
    p.add_argument("--model", choices=sorted(MODEL_PRESETS), default="pythia-1b", help="norm: parameter shapes")
    p.add_argument("--iters", type=int, default=20, help="timed iterations (after 3 warm-up ones)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    args = p.parse_args(argv)
    args.kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    bad = [k for k in args.kernels if k not in KERNELS]
    if bad:
        p.error(f"--kernels: {', '.join(bad)} not among {', '.join(KERNELS)}")
    if args.vocab % args.tp:
        p.error(f"--vocab {args.vocab} is not divisible by --tp {args.tp}")
    return args


# ---- measuring ------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device: torch.device, iters: int, warmup: int = 3):
    """(median ms, peak memory above the starting allocation in MiB, or None on CPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else None
    return statistics.median(times), peak


def copy_bandwidth(device: torch.device, iters: int) -> float:
    """GB/s of a large device-to-device copy (read + write counted), the practical peak."""
    n = (1 << 28) if device.type == "cuda" else (1 << 25)  # 1 GiB / 128 MiB of fp32
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms, _ = measure(lambda: dst.copy_(src), device, iters)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def _row(name: str, ms: float, peak, nbytes: int, bandwidth: float, floor_ms: float) -> str:
    gbs = nbytes / (ms * 1e-3) / 1e9
    peak_text = f"{peak:9.1f}" if peak is not None else "      n/a"
    return (f"  {name:<28} {ms:10.3f} {peak_text} {gbs:9.1f} {100 * gbs / bandwidth:6.1f}% "
            f"{ms / floor_ms:8.2f}x")


HEADER = f"  {'variant':<28} {'ms':>10} {'peak MiB':>9} {'GB/s':>9} {'of BW':>7} {'vs floor':>9}"


# ---- cross entropy --------------------------------------------------------------------


def _ce_ours(logits, target, domains, num_domains, grad):
    """kernels/ end to end: partials, loss + domain sums, backward with a mean's grad_loss."""
    sums = torch.zeros(2 * num_domains, device=logits.device)
    grad_loss = torch.full((logits.shape[0],), 1.0 / logits.shape[0], device=logits.device)

    def step():
        sums.zero_()
        partials = kernels.cross_entropy_partials(logits, target, 0)
        _, stats = kernels.cross_entropy_loss(partials, target, -100, None, domains, sums)
        kernels.cross_entropy_backward(logits, target, stats, grad_loss, 0, -100, None, grad)
    return step


def _reference_loss(logits, target, domains, sums):
    num_domains = sums.numel() // 2
    loss = F.cross_entropy(logits, target, reduction="none")
    sums[:num_domains].index_add_(0, domains, loss.detach().float())
    sums[num_domains:].index_add_(0, domains, torch.ones_like(loss, dtype=torch.float32))
    return loss


def _ce_autograd(loss_fn, logits, target, domains, num_domains):
    """A torch-side baseline: loss_fn(leaf, target, domains, sums) -> per-token loss, then backward."""
    leaf = logits.detach().requires_grad_()
    sums = torch.zeros(2 * num_domains, device=logits.device)

    def step():
        sums.zero_()
        leaf.grad = None
        loss_fn(leaf, target, domains, sums).mean().backward()
    return step


def _liger_loss():
    """liger-kernel's fused CE (reduction='none') + index_add, or None when not installed."""
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss
    except ImportError:
        return None
    ce = LigerCrossEntropyLoss(reduction="none")

    def loss_fn(logits, target, domains, sums):
        num_domains = sums.numel() // 2
        loss = ce(logits, target)
        sums[:num_domains].index_add_(0, domains, loss.detach().float())
        sums[num_domains:].index_add_(0, domains, torch.ones_like(loss, dtype=torch.float32))
        return loss
    return loss_fn


def bench_cross_entropy(args, device: torch.device, bandwidth: float) -> None:
    dtype = DTYPES[args.dtype]
    vocab_local = args.vocab // args.tp
    ours = "Triton" if device.type == "cuda" and "triton" in kernels.available_backends() else "torch twin"
    os.environ[dispatch.ENV_VAR] = "triton" if ours == "Triton" else "torch"
    print(f"\nfused cross entropy, fwd+bwd with {args.domains} domain sums: logits [tokens, {vocab_local}] "
          f"({args.vocab} / TP={args.tp}) {dtype}")
    print("  floor = logits read once + gradient written once at the copy bandwidth")
    compiled = None
    if not args.no_compile:
        compiled = torch.compile(_reference_loss)
    liger = _liger_loss() if device.type == "cuda" else None
    for tokens in args.tokens:
        gen = torch.Generator(device=device).manual_seed(0)
        logits = torch.randn(tokens, vocab_local, device=device, dtype=dtype, generator=gen)
        # Targets inside this shard, so the torch baselines (which see only the shard) accept them.
        target = torch.randint(0, vocab_local, (tokens,), device=device, generator=gen)
        domains = torch.randint(0, args.domains, (tokens,), device=device, generator=gen)
        grad = torch.empty_like(logits)
        nbytes = 2 * logits.numel() * logits.element_size()
        floor_ms = nbytes / (bandwidth * 1e9) * 1e3
        print(f"tokens {tokens} (logits {logits.numel() * logits.element_size() / 2**20:.0f} MiB, "
              f"floor {floor_ms:.3f} ms)")
        print(HEADER)
        variants = [(f"ours ({ours}), 3 passes", _ce_ours(logits, target, domains, args.domains, grad),
                     3 * logits.numel() * logits.element_size()),
                    ("torch CE + index_add", _ce_autograd(_reference_loss, logits, target, domains, args.domains),
                     nbytes)]
        if compiled is not None:
            variants.append(("torch.compile(same)", _ce_autograd(compiled, logits, target, domains, args.domains),
                             nbytes))
        if liger is not None:
            variants.append(("liger-kernel CE + index_add", _ce_autograd(liger, logits, target, domains,
                                                                         args.domains), nbytes))
        for name, step, moved in variants:
            try:
                ms, peak = measure(step, device, args.iters)
            except Exception as exc:  # e.g. torch.compile without a working compiler toolchain
                print(f"  {name:<28} skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
                continue
            print(_row(name, ms, peak, moved, bandwidth, floor_ms))
        del logits, grad
    if liger is None:
        print("  (liger-kernel " + ("is not installed)" if device.type == "cuda" else "needs CUDA)"))


# ---- multi-tensor norm ----------------------------------------------------------------


def parameter_shapes(config: ModelConfig, tp: int) -> list:
    """Shapes of one TP rank's parameters of the whole model (all stages), Megatron layout."""
    h, f, v = config.hidden_size, config.ffn_hidden_size, config.padded_vocab_size(tp)
    fc1_out = 2 * f if config.swiglu else f
    norm = [(h,), (h,)] if config.normalization == "LayerNorm" else [(h,)]
    bias = config.add_bias_linear
    layer = [*norm, (3 * h // tp, h), *([(3 * h // tp,)] if bias else []), (h, h // tp), *([(h,)] if bias else []),
             *norm, (fc1_out // tp, h), *([(fc1_out // tp,)] if bias else []), (h, f // tp),
             *([(h,)] if bias else [])]
    shapes = [(v // tp, h)] + layer * config.num_layers + norm
    if config.position_embedding_type == "learned_absolute":
        shapes.append((config.max_position_embeddings, h))
    if config.untie_embeddings_and_output_weights:
        shapes.append((v // tp, h))
    return shapes


def bench_norm(args, device: torch.device, bandwidth: float) -> None:
    dtype = DTYPES[args.dtype]
    config = model_preset(args.model)
    shapes = parameter_shapes(config, args.tp)
    if args.tp == 1:  # the shape list must describe the model our config counts
        assert sum(torch.Size(s).numel() for s in shapes) == config.num_parameters(1), args.model
    params = [torch.randn(s, device=device, dtype=dtype) for s in shapes]
    nbytes = sum(p.numel() * p.element_size() for p in params)
    floor_ms = nbytes / (bandwidth * 1e9) * 1e3
    ours = "Triton" if device.type == "cuda" and "triton" in kernels.available_backends() else "torch twin"
    os.environ[dispatch.ENV_VAR] = "triton" if ours == "Triton" else "torch"
    print(f"\nmulti-tensor sum of squares: {args.model} rank shard at TP={args.tp}, {len(params)} tensors, "
          f"{nbytes / 2**20:.0f} MiB {dtype} (floor = read once: {floor_ms:.3f} ms)")
    print(HEADER)
    variants = [(f"ours ({ours})", lambda: kernels.multi_tensor_sum_of_squares(params)),
                ("vector_norm loop", lambda: [torch.linalg.vector_norm(p, dtype=torch.float32) for p in params]),
                ("torch._foreach_norm", lambda: torch._foreach_norm(params))]
    for name, fn in variants:
        ms, peak = measure(fn, device, args.iters)
        print(_row(name, ms, peak, nbytes, bandwidth, floor_ms))


# ---- CountSketch (gradient probe) ------------------------------------------------------


def bench_sketch(args, device: torch.device, bandwidth: float) -> None:
    from megatron_hds.mixing.config import ProbeConfig
    from megatron_hds.mixing.probes import count_sketch_hash, global_flat_index, name_key

    dtype = DTYPES[args.dtype]
    config = model_preset(args.model)
    shape = (config.hidden_size, config.ffn_hidden_size // args.tp)  # dense_4h_to_h, a row-parallel shard
    probed = ProbeConfig().probe_matrices
    grads = [torch.randn(shape, device=device, dtype=dtype) for _ in range(probed)]
    keys = [name_key(0, f"layers.{i}.mlp.dense_4h_to_h.weight") for i in range(probed)]
    m = ProbeConfig().sketch_size
    tables = [count_sketch_hash(global_flat_index(g, 0, 1), k, m) for g, k in zip(grads, keys)]
    table_mib = sum(b.numel() * b.element_size() + s.numel() * s.element_size() for b, s in tables) / 2**20
    nbytes = sum(g.numel() * g.element_size() for g in grads)
    floor_ms = nbytes / (bandwidth * 1e9) * 1e3
    out = torch.zeros(m, device=device)
    ours = "Triton" if device.type == "cuda" and "triton" in kernels.available_backends() else "torch twin"
    os.environ[dispatch.ENV_VAR] = "triton" if ours == "Triton" else "torch"

    def fused():
        for g, k in zip(grads, keys):
            kernels.count_sketch_add(g, out, k)

    def table_path():
        for g, (bucket, sign) in zip(grads, tables):
            out.index_add_(0, bucket, g.reshape(-1).float() * sign)

    print(f"\nCountSketch of one micro-batch's probe: {probed} x {args.model} dense_4h_to_h {shape} at TP="
          f"{args.tp}, {dtype}, {m} buckets ({nbytes / 2**20:.0f} MiB of gradients, floor = read once: "
          f"{floor_ms:.3f} ms; the torch path's tables hold {table_mib:.0f} MiB)")
    print(HEADER)
    for name, fn in [(f"ours ({ours}, on the fly)", fused), ("torch index_add + table", table_path)]:
        ms, peak = measure(fn, device, args.iters)
        print(_row(name, ms, peak, nbytes, bandwidth, floor_ms))


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; kernel backends here: {', '.join(kernels.available_backends())}")
    if device.type == "cpu":
        print("no CUDA device: only the torch paths are timed (ours = the torch twin); GPU figures need a GPU run")
    bandwidth = copy_bandwidth(device, args.iters)
    print(f"measured copy bandwidth: {bandwidth:.1f} GB/s (read + write)")
    if "ce" in args.kernels:
        bench_cross_entropy(args, device, bandwidth)
    if "norm" in args.kernels:
        bench_norm(args, device, bandwidth)
    if "sketch" in args.kernels:
        bench_sketch(args, device, bandwidth)


if __name__ == "__main__":
    main()

"""TP/PP/DP runs (with and without sequence parallelism) against a single-process reference.

Tolerance policy (fp32 on CPU): the parallel run reorders sums (TP partial sums,
micro-batch accumulation, DP averaging), so values agree to rounding, not bitwise:
  loss:      |loss - ref| <= 1e-5 * |ref|
  gradients: max|g - g_ref| <= 1e-4 * max|g_ref|, per parameter, gathered to full shape
  grad norm: |norm - ref| <= 1e-5 * ref
The same bounds hold for the losses after 3 SGD steps.
"""
import dataclasses

import pytest
import torch
import torch.distributed as dist

from megatron_hds.config import ModelConfig
from megatron_hds.model.gpt import GPTModel, finalize_model_grads
from megatron_hds.parallel.data_parallel import GradientAllReducer, global_grad_norm
from megatron_hds.parallel.layers import is_tensor_parallel
from megatron_hds.parallel.schedules import forward_backward
from megatron_hds.parallel.state import ParallelState
from tests.distributed import run_distributed

LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-4
GLOBAL_BATCH, MICRO_BATCH, STEPS, LR = 4, 1, 3, 0.5  # 4 micro-batches per DP rank at DP=1
SEED = 7

_TINY = dict(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=96, seq_length=16,
             make_vocab_size_divisible_by=16)
CONFIGS = {
    # Megatron GPT-2 style: learned positions, LayerNorm, GeLU, tied embeddings (tied across PP stages).
    "gpt2": dict(_TINY),
    # Pythia/Llama-ish mix: partial rotary, RMSNorm, SwiGLU, parallel residual, untied head, no biases.
    "neox": dict(_TINY, position_embedding_type="rope", rotary_percent=0.5, normalization="RMSNorm",
                 swiglu=True, parallel_residual=True, untie_embeddings_and_output_weights=True,
                 add_bias_linear=False),
}
LAYOUTS = [(tp, pp, dp) for tp in (1, 2) for pp in (1, 2) for dp in (1, 2) if tp * pp * dp <= 4]


def _cases():
    """Each layout on gloo (CPU); and on nccl where the box has a GPU per rank (`gpu` marker)."""
    for tp, pp, dp in LAYOUTS:
        world, name = tp * pp * dp, f"tp{tp}-pp{pp}-dp{dp}"
        enough = torch.cuda.is_available() and torch.cuda.device_count() >= world
        yield pytest.param(tp, pp, dp, "gloo", id=f"{name}-gloo")
        yield pytest.param(tp, pp, dp, "nccl", id=f"{name}-nccl", marks=[
            pytest.mark.gpu, pytest.mark.skipif(not enough, reason=f"needs {world} CUDA devices")])


def _data(config: ModelConfig, steps: int, global_batch: int):
    g = torch.Generator().manual_seed(SEED)
    seqs = torch.randint(0, config.vocab_size, (steps + 1, global_batch, config.seq_length + 1), generator=g)
    return [(s[:, :-1], s[:, 1:]) for s in seqs]


_REFERENCES = {}


def _reference(config: ModelConfig, steps: int, global_batch: int):
    """Single process, whole global batch in one forward: losses per step, first-step grads and norm.

    Cached per process: the sequence-parallel pass reuses it.
    """
    key = (repr(config), steps, global_batch)
    if key not in _REFERENCES:
        _REFERENCES[key] = _run_reference(config, steps, global_batch)
    return _REFERENCES[key]


def _run_reference(config: ModelConfig, steps: int, global_batch: int):
    model = GPTModel(config, ParallelState.single("cpu"), seed=SEED)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    losses, grads, norm = [], None, None
    for step, (tokens, labels) in enumerate(_data(config, steps, global_batch)):
        opt.zero_grad()
        loss = model(tokens=tokens, labels=labels).mean()
        losses.append(loss.item())
        if step == steps:
            break
        loss.backward()
        if step == 0:
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values())).item()
        opt.step()
    return losses, grads, norm


def _full(tensor: torch.Tensor, param, state: ParallelState) -> torch.Tensor:
    if not is_tensor_parallel(param) or state.tp_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(state.tp_size)]
    dist.all_gather(parts, tensor.contiguous(), group=state.tp_group)
    return torch.cat(parts, dim=param.partition_dim)


def _max_rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a - ref).abs().max() / ref.abs().max().clamp(min=1e-30)).item()


def _check_against_reference(state: ParallelState, config: ModelConfig, global_batch: int, micro_batch: int):
    """Train STEPS steps on this layout; assert parity with the reference; return the names checked."""
    ref_losses, ref_grads, ref_norm = _reference(config, STEPS, global_batch)
    model = GPTModel(config, state, seed=SEED)
    params = dict(model.named_parameters())
    # A tiny bucket size so several buckets (and the bucket boundaries) are exercised.
    reducer = GradientAllReducer(params.values(), state.dp_group, bucket_size_mb=0.01)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    per_rank = micro_batch * state.micro_batches_per_step(global_batch, micro_batch)
    losses, grad_errors, norm = [], {}, None
    for step, (tokens, labels) in enumerate(_data(config, STEPS, global_batch)):
        rows = slice(state.dp_rank * per_rank, (state.dp_rank + 1) * per_rank)
        micro = [dict(tokens=t.to(state.device), labels=l.to(state.device)) for t, l in
                 zip(tokens[rows].split(micro_batch), labels[rows].split(micro_batch))]
        opt.zero_grad(set_to_none=True)
        per_token = forward_backward(model, micro, forward_only=step == STEPS)
        if state.is_last_stage():
            loss = torch.stack([t.mean() for t in per_token]).mean()
            if state.dp_size > 1:
                dist.all_reduce(loss, group=state.dp_group)
                loss /= state.dp_size
            losses.append(loss.item())
        if step == STEPS:
            break
        finalize_model_grads(model)
        reducer.allreduce()
        if step == 0:
            norm = global_grad_norm(params.values(), state)
            for pname, p in params.items():
                grad_errors[pname] = _max_rel(_full(p.grad, p, state).cpu(), ref_grads[pname])
        opt.step()

    if state.is_last_stage():
        assert len(losses) == STEPS + 1
        for got, want in zip(losses, ref_losses):
            assert abs(got - want) <= LOSS_RTOL * abs(want), (losses, ref_losses)
    bad = {n: e for n, e in grad_errors.items() if e > GRAD_RTOL}
    assert not bad, bad
    assert abs(norm - ref_norm) <= LOSS_RTOL * ref_norm, (norm, ref_norm)
    return sorted(grad_errors), sorted(ref_grads)


def _parity_worker(tp: int, pp: int):
    state = ParallelState.build(tp, pp)
    report = {name: _check_against_reference(state, ModelConfig(**kwargs), GLOBAL_BATCH, MICRO_BATCH)
              for name, kwargs in CONFIGS.items()}
    if tp > 1:  # the same layout again with sequence parallelism (same groups)
        sp_state = dataclasses.replace(state, sequence_parallel=True)
        report.update({f"{name}+sp": _check_against_reference(sp_state, ModelConfig(**kwargs), GLOBAL_BATCH,
                                                               MICRO_BATCH)
                       for name, kwargs in CONFIGS.items()})
    return report


def _compiled_worker():
    """TP=2 with every layer compiled (--torch-compile), with and without sequence parallelism,
    against the eager single-process reference."""
    torch.set_num_threads(1)
    state = ParallelState.build(2, 1)
    report = {}
    for name, sequence_parallel in (("gpt2", False), ("neox", False), ("neox", True)):
        torch._dynamo.reset()  # one model's graphs at a time (the recompile limit counts them all)
        layout = dataclasses.replace(state, sequence_parallel=sequence_parallel)
        report[name + ("+sp" if sequence_parallel else "")] = _check_against_reference(
            layout, ModelConfig(**CONFIGS[name], torch_compile=True), GLOBAL_BATCH, MICRO_BATCH)
    return report


def _deep_pipeline_worker():
    state = ParallelState.build(1, 4)
    config = ModelConfig(**dict(CONFIGS["gpt2"], num_layers=4))
    # M=2 < P (warmup capped at M) and M=6 > P (long steady state), micro-batches of 1 and 2.
    return [_check_against_reference(state, config, global_batch, micro)
            for global_batch, micro in ((2, 1), (12, 2))]


@pytest.mark.parametrize("tp,pp,dp,backend", list(_cases()))
def test_parallel_matches_single_process(tp, pp, dp, backend):
    reports = run_distributed(_parity_worker, tp * pp * dp, tp, pp, backend=backend)
    assert len(reports[0]) == len(CONFIGS) * (2 if tp > 1 else 1)
    for name in reports[0]:
        checked = set().union(*(set(r[name][0]) for r in reports))
        # Every reference parameter was checked on some rank, and no rank invented one.
        assert checked == set(reports[0][name][1]), name


def test_four_stage_pipeline_matches_single_process():
    reports = run_distributed(_deep_pipeline_worker, 4)
    for case in range(2):
        assert set().union(*(set(r[case][0]) for r in reports)) == set(reports[0][case][1])


@pytest.mark.slow
def test_compiled_layers_under_tensor_parallelism_match_single_process():
    reports = run_distributed(_compiled_worker, 2)
    for name in reports[0]:
        assert set().union(*(set(r[name][0]) for r in reports)) == set(reports[0][name][1]), name


def _grad_only_for_worker(tp: int, pp: int, sequence_parallel: bool):
    """The last layer's MLP output projection (on the stage that holds it) alone: the same gradient
    as the full backward, bit for bit, and no gradient of any other parameter; the pipeline's
    backward still reaches the first stage (whose parameters get none either)."""
    torch.set_num_threads(1)
    state = dataclasses.replace(ParallelState.build(tp, pp), sequence_parallel=sequence_parallel)
    config = ModelConfig(**dict(CONFIGS["neox"], num_layers=4))
    model = GPTModel(config, state, seed=SEED)
    wanted = [p for n, p in model.named_parameters() if n == "layers.3.mlp.dense_4h_to_h.weight"]
    tokens, labels = _data(config, 1, 4)[0]
    micro = [dict(tokens=t, labels=l) for t, l in zip(tokens.split(2), labels.split(2))]
    forward_backward(model, micro)
    full = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    forward_backward(model, micro, grad_only_for=wanted)
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(got) == ({"layers.3.mlp.dense_4h_to_h.weight"} if wanted else set()), sorted(got)
    assert all(torch.equal(g, full[n]) for n, g in got.items())
    return sorted(got)


@pytest.mark.parametrize("tp,pp,sequence_parallel", [(1, 1, False), (2, 2, True)], ids=["single", "tp2pp2sp"])
def test_a_backward_for_some_parameters_gives_them_the_full_backwards_gradients(tp, pp, sequence_parallel):
    reports = run_distributed(_grad_only_for_worker, tp * pp, tp, pp, sequence_parallel)
    assert sum(len(r) for r in reports) == tp  # each TP rank of the last stage holds a shard

"""Activation recompute (--recompute-granularity full|selective): the same numbers as keeping
every activation, bit for bit, with dropout on (both RNG streams are replayed), fewer
activations kept for backward, gradient-probe hooks that still fire once per micro-batch,
and the same under TP=2 with sequence parallelism and a 2-stage 1F1B pipeline."""
import dataclasses
import importlib.util
import pathlib

import pytest
import torch

from megatron_hds.config import ModelConfig
from megatron_hds.mixing.probes import GradientProbe, select_matrices
from megatron_hds.model.gpt import GPTModel
from megatron_hds.parallel.random import seed_default_generator
from megatron_hds.parallel.schedules import forward_backward
from megatron_hds.parallel.state import ParallelState
from tests.distributed import run_distributed

_PATH = pathlib.Path(__file__).resolve().parents[2] / "tools" / "bench_model.py"
_spec = importlib.util.spec_from_file_location("bench_model", _PATH)
bench_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_model)

CONFIG = dict(num_layers=4, hidden_size=32, num_attention_heads=4, vocab_size=96, seq_length=16,
              make_vocab_size_divisible_by=16, position_embedding_type="rope", rotary_percent=0.5,
              attention_dropout=0.2, hidden_dropout=0.1)
MODES = {
    "full-uniform-1": dict(recompute_granularity="full", recompute_method="uniform"),
    "full-uniform-3": dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=3),
    "full-block-2": dict(recompute_granularity="full", recompute_method="block", recompute_num_layers=2),
    "selective": dict(recompute_granularity="selective"),
}
SEED = 11


def _micro_batches(steps: int, micro: int, batch: int = 2):
    g = torch.Generator().manual_seed(SEED)
    seqs = torch.randint(0, CONFIG["vocab_size"], (steps, micro, batch, CONFIG["seq_length"] + 1), generator=g)
    return [[dict(tokens=m[:, :-1], labels=m[:, 1:]) for m in step] for step in seqs]


def _train(state: ParallelState, config: ModelConfig, steps: int = 2, micro: int = 2):
    """Losses and gradients of each of ``steps`` forward/backward passes (no optimizer: the second
    step shows the RNG streams advanced exactly as without recompute)."""
    seed_default_generator(SEED, state.pp_rank, state.device)
    model = GPTModel(config, state, seed=SEED)
    out = []
    for batch in _micro_batches(steps, micro):
        model.zero_grad(set_to_none=True)
        losses = forward_backward(model, batch)
        out.append(([t.clone() for t in losses], {n: p.grad.clone() for n, p in model.named_parameters()}))
    return out


def _assert_identical(run, reference):
    for (losses, grads), (ref_losses, ref_grads) in zip(run, reference, strict=True):
        assert len(losses) == len(ref_losses)
        for loss, ref in zip(losses, ref_losses):
            assert torch.equal(loss, ref)
        assert grads.keys() == ref_grads.keys()
        for name, grad in grads.items():
            assert torch.equal(grad, ref_grads[name]), name


@pytest.mark.parametrize("mode", MODES)
def test_recompute_reproduces_losses_and_gradients_exactly(mode):
    state = ParallelState.single("cpu")
    reference = _train(state, ModelConfig(**CONFIG))
    _assert_identical(_train(state, ModelConfig(**CONFIG, **MODES[mode])), reference)


def test_dropout_masks_really_differ_between_steps():
    """Guards the test above: with dropout the two steps' masks differ, so a recompute that
    replayed the wrong stream state could not match by accident."""
    state = ParallelState.single("cpu")
    config = ModelConfig(**CONFIG)
    model = GPTModel(config, state, seed=SEED)
    batch = _micro_batches(1, 1)[0][0]
    first, second = model(**batch), model(**batch)
    assert not torch.equal(first, second)


def _kept(config: ModelConfig, micro_batch_size: int = 4) -> int:
    model = GPTModel(config, ParallelState.single("cpu"), seed=SEED)
    tokens = torch.randint(0, CONFIG["vocab_size"], (micro_batch_size, CONFIG["seq_length"]))
    return bench_model.activation_bytes(model, dict(tokens=tokens, labels=tokens))


def test_recompute_keeps_fewer_activations():
    kept = {mode: _kept(ModelConfig(**CONFIG, **MODES[mode])) for mode in MODES}
    none = _kept(ModelConfig(**CONFIG))
    one_chunk = _kept(ModelConfig(**CONFIG, recompute_granularity="full", recompute_method="uniform",
                                  recompute_num_layers=4))
    # Checkpointing more of the stack keeps less: all four layers as one chunk, one layer per
    # chunk (each layer's input kept), the first two layers only, nothing.
    assert one_chunk < kept["full-uniform-1"] < kept["full-block-2"] < none
    # Selective: with attention dropout the attention core keeps (at least) its fp32 s x s
    # probabilities per head, which recompute drops.
    b, heads, s, layers = 4, CONFIG["num_attention_heads"], CONFIG["seq_length"], CONFIG["num_layers"]
    assert none - kept["selective"] >= layers * b * heads * s * s * 4


def test_gradient_probe_sees_each_micro_batch_once_under_recompute():
    """The HDS gradient probe's hooks fire when a parameter's gradient is computed, once per
    micro-batch's backward however often the forward runs."""
    state = ParallelState.single("cpu")
    buffers = []
    for extra in ({}, MODES["full-uniform-1"]):
        model = GPTModel(ModelConfig(**CONFIG, **extra), state, seed=SEED)
        probe = GradientProbe(select_matrices(model, ["layers.3.mlp.dense_4h_to_h.weight"]), 2, mode="sketch",
                              sketch_size=64)
        probe.begin_step([0, 1, 0])
        seed_default_generator(SEED, 0, state.device)
        forward_backward(model, _micro_batches(1, 3)[0])
        buffers.append(probe.buffer.clone())
    assert buffers[1][:, -1].tolist() == [2.0, 1.0]
    assert torch.equal(buffers[1], buffers[0])


def _parallel_worker():
    state = dataclasses.replace(ParallelState.build(2, 2), sequence_parallel=True)
    reference = _train(state, ModelConfig(**CONFIG), micro=3)
    outcome = {}
    for mode, extra in MODES.items():
        if mode == "full-uniform-3":
            continue  # two layers per stage here
        run = _train(state, ModelConfig(**CONFIG, **extra), micro=3)
        try:
            _assert_identical(run, reference)
            outcome[mode] = "identical"
        except AssertionError as error:
            outcome[mode] = f"differs: {error}"
    return outcome


def test_recompute_under_tensor_sequence_and_pipeline_parallelism():
    reports = run_distributed(_parallel_worker, 4)
    for rank, report in enumerate(reports):
        assert report == {mode: "identical" for mode in MODES if mode != "full-uniform-3"}, rank


@pytest.mark.parametrize("flags, message", [
    (dict(recompute_method="uniform"), "need recompute_granularity='full'"),
    (dict(recompute_num_layers=2), "need recompute_granularity='full'"),
    (dict(recompute_granularity="full"), "needs recompute_method"),
    (dict(recompute_granularity="full", recompute_method="chunks"), "recompute_method='chunks' is invalid"),
    (dict(recompute_granularity="full", recompute_method="block", recompute_num_layers=0),
     "recompute_num_layers=0 is invalid"),
    (dict(recompute_granularity="partial"), "recompute_granularity='partial' is invalid"),
    (dict(recompute_granularity="selective", recompute_method="uniform"), "apply to recompute_granularity='full'"),
    (dict(recompute_granularity="selective", torch_compile=True), "does not work with torch_compile"),
])
def test_bad_recompute_settings_are_refused(flags, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**CONFIG, **flags)


def test_recompute_num_layers_counts_layers_per_stage():
    config = ModelConfig(**CONFIG, recompute_granularity="full", recompute_method="block", recompute_num_layers=5)
    with pytest.raises(ValueError, match="recompute_num_layers=5 is more than the 4 layers"):
        GPTModel(config, ParallelState.single("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["full-uniform-1", "selective"])
def test_recompute_on_cuda_replays_the_cuda_generators(mode):
    """On a GPU the dropout masks come from the CUDA generator (and SDPA's own kernels in bf16):
    recompute must still reproduce them. Losses must match bit for bit (the second step's show
    the generators advanced alike). Gradients may differ in rounding only: flash attention's
    backward and the embedding's accumulate with atomics. A wrong mask moves them by O(1)."""
    state = ParallelState.single("cuda")

    def run(extra):
        seed_default_generator(SEED, 0, state.device)
        model = GPTModel(ModelConfig(**CONFIG, **extra), state, seed=SEED, dtype=torch.bfloat16)
        out = []
        for batch in _micro_batches(2, 2):
            model.zero_grad(set_to_none=True)
            batch = [{k: v.cuda() for k, v in b.items()} for b in batch]
            losses = forward_backward(model, batch)
            out.append(([t.clone() for t in losses], {n: p.grad.clone() for n, p in model.named_parameters()}))
        return out

    for (losses, grads), (ref_losses, ref_grads) in zip(run(MODES[mode]), run({}), strict=True):
        assert all(torch.equal(a, b) for a, b in zip(losses, ref_losses))
        for name, grad in grads.items():
            ref = ref_grads[name].float()
            assert (grad.float() - ref).abs().max() <= 2e-2 * ref.abs().max(), name

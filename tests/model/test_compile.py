"""--torch-compile: each transformer layer through torch.compile, in place. Against the eager
model with the same weights: losses and gradients agree to fp32 rounding (|loss - ref| <=
1e-5 |ref|, max|g - g_ref| <= 1e-4 max|g_ref|), parameter names are unchanged, and the
gradient probes' hooks still see every micro-batch's gradient. TP=2 parity of the compiled
model: tests/parallel/test_parity.py."""

import pytest
import torch

from megatron_hds.config import ModelConfig
from megatron_hds.mixing.probes import GradientProbe, select_matrices
from megatron_hds.model.gpt import GPTModel
from megatron_hds.parallel.schedules import forward_backward
from megatron_hds.parallel.state import ParallelState

CONFIG = dict(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=96, seq_length=16,
              make_vocab_size_divisible_by=16, position_embedding_type="rope", rotary_percent=0.5)


@pytest.mark.slow
def test_compiled_layers_match_eager_and_keep_names_and_hooks():
    torch.set_num_threads(1)
    torch._dynamo.reset()
    state = ParallelState.single("cpu")
    eager = GPTModel(ModelConfig(**CONFIG), state, seed=3)
    compiled = GPTModel(ModelConfig(**CONFIG, torch_compile=True), state, seed=3)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert all(layer._compiled_call_impl is not None for layer in compiled.layers.values())  # Module.compile ran
    assert all(layer._compiled_call_impl is None for layer in eager.layers.values())
    compiled.load_state_dict(eager.state_dict())
    g = torch.Generator().manual_seed(5)
    seqs = torch.randint(0, 96, (3, 2, 17), generator=g)
    micro = [dict(tokens=s[:, :-1], labels=s[:, 1:]) for s in seqs]
    probes = []
    for model in (eager, compiled):
        probe = GradientProbe(select_matrices(model, ["layers.1.mlp.dense_4h_to_h.weight"]), 2, mode="sketch",
                              sketch_size=64)
        probe.begin_step([0, 1, 0])
        losses = forward_backward(model, micro)
        probes.append((torch.stack([t.mean() for t in losses]), probe.buffer.clone()))
    (loss, sketch), (loss_c, sketch_c) = probes
    torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=0)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        assert (q.grad - p.grad).abs().max() <= 1e-4 * p.grad.abs().max(), name
    assert sketch_c[:, -1].tolist() == [2.0, 1.0]  # the hook ran for each micro-batch's backward
    assert (sketch_c - sketch).abs().max() <= 1e-4 * sketch.abs().max()


@pytest.mark.slow
def test_full_recompute_around_compiled_layers_reproduces_them_exactly():
    """--recompute-granularity full checkpoints around the compiled layers; with dropout on, the
    recomputed forward draws the same masks, so losses and gradients are bitwise those of the
    compiled model that keeps its activations."""
    torch.set_num_threads(1)
    state = ParallelState.single("cpu")
    g = torch.Generator().manual_seed(5)
    seqs = torch.randint(0, 96, (2, 2, 17), generator=g)
    micro = [dict(tokens=s[:, :-1], labels=s[:, 1:]) for s in seqs]
    runs = []
    for recompute in ({}, dict(recompute_granularity="full", recompute_method="uniform")):
        # One model's graphs at a time, as in a training process: on torch 2.6 the second model
        # reusing the first one's cached graphs drew other dropout masks (a different stream).
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = GPTModel(ModelConfig(**CONFIG, torch_compile=True, attention_dropout=0.2, hidden_dropout=0.1,
                                     **recompute), state, seed=3)
        losses = forward_backward(model, micro)
        runs.append((torch.stack(losses), [p.grad for p in model.parameters()]))
    (loss, grads), (loss_r, grads_r) = runs
    assert torch.equal(loss_r, loss)
    assert all(torch.equal(a, b) for a, b in zip(grads_r, grads))


def test_torch_compile_refuses_transformer_engine():
    with pytest.raises(ValueError, match="transformer_impl='local'"):
        ModelConfig(**CONFIG, torch_compile=True, transformer_impl="transformer_engine")

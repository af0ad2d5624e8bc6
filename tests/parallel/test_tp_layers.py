"""Tensor-parallel building blocks on 2 gloo ranks against their single-process twins.

One spawn runs all checks (process start-up dominates the cost). Policy: shards of
the initialisation must be bitwise equal to slices of the single-process init (no
reduction involved); outputs and gradients that went through TP reductions must
agree to 1e-5 relative.
"""
import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_hds.config import ModelConfig
from megatron_hds.model.gpt import GPTModel
from megatron_hds.parallel.cross_entropy import vocab_parallel_cross_entropy
from megatron_hds.parallel.layers import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                                          is_tensor_parallel)
from megatron_hds.parallel.random import seed_default_generator
from megatron_hds.parallel.state import ParallelState
from tests.distributed import run_distributed

RTOL = 1e-5


def _close(a, b, rtol=RTOL):
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * b.abs().max().item())


def _rank_slice(full: torch.Tensor, dim: int, state: ParallelState) -> torch.Tensor:
    return full.chunk(state.tp_size, dim=dim)[state.tp_rank]


def _check_cross_entropy(state):
    g = torch.Generator().manual_seed(0)
    # Large offsets: a naive exp would overflow in fp32; the TP max subtraction must prevent it.
    logits = torch.randn(5, 3, 12, generator=g) * 4 + 1000.0
    target = torch.randint(0, 12, (5, 3), generator=g)
    weight = torch.rand(5, 3, generator=g)  # a non-uniform upstream gradient

    full = logits.clone().requires_grad_()
    expected = F.cross_entropy(full.reshape(-1, 12), target.reshape(-1), reduction="none").view(5, 3)
    (expected * weight).sum().backward()

    local = _rank_slice(logits, -1, state).clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(local, target, state.tp_group)
    (loss * weight).sum().backward()
    assert loss.shape == target.shape and torch.isfinite(loss).all()
    _close(loss, expected.detach())
    _close(local.grad, _rank_slice(full.grad, -1, state))


def _check_layers(state):
    single = ParallelState.single("cpu")
    kw = dict(init_std=0.5, seed=3)
    col_ref = ColumnParallelLinear(8, 6, single.tp_group, init_key="c", **kw)
    row_ref = RowParallelLinear(6, 8, single.tp_group, init_key="r", **kw)
    emb_ref = VocabParallelEmbedding(10, 8, single.tp_group, init_key="e", **kw)
    col = ColumnParallelLinear(8, 6, state.tp_group, init_key="c", **kw)
    row = RowParallelLinear(6, 8, state.tp_group, init_key="r", **kw)
    emb = VocabParallelEmbedding(10, 8, state.tp_group, init_key="e", **kw)
    # Created in the shard, yet equal to the slice of the full init.
    assert col.weight.shape == (3, 8) and torch.equal(col.weight, _rank_slice(col_ref.weight, 0, state))
    assert row.weight.shape == (8, 3) and torch.equal(row.weight, _rank_slice(row_ref.weight, 1, state))
    assert emb.weight.shape == (5, 8) and torch.equal(emb.weight, _rank_slice(emb_ref.weight, 0, state))
    with torch.no_grad():  # non-zero biases so their gradients and placement are exercised
        col_ref.bias.uniform_(-1, 1, generator=torch.Generator().manual_seed(1))
        row_ref.bias.uniform_(-1, 1, generator=torch.Generator().manual_seed(2))
        col.bias.copy_(_rank_slice(col_ref.bias, 0, state))
        row.bias.copy_(row_ref.bias)

    ids = torch.tensor([[0, 9, 4], [5, 6, 1]])

    def run(e, c, r):
        out = r(F.gelu(c(e(ids))))
        out.pow(2).sum().backward()
        return out.detach()

    _close(run(emb, col, row), run(emb_ref, col_ref, row_ref))
    _close(emb.weight.grad, _rank_slice(emb_ref.weight.grad, 0, state))
    _close(col.weight.grad, _rank_slice(col_ref.weight.grad, 0, state))
    _close(col.bias.grad, _rank_slice(col_ref.bias.grad, 0, state))
    _close(row.weight.grad, _rank_slice(row_ref.weight.grad, 1, state))
    _close(row.bias.grad, row_ref.bias.grad)


def _check_dropout_consistency(state):
    config = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=64, seq_length=8,
                         make_vocab_size_divisible_by=16, hidden_dropout=0.3, attention_dropout=0.3)
    seed_default_generator(11, state.pp_rank, state.device)
    model = GPTModel(config, state, seed=11)
    captured = []
    model.final_layernorm.register_forward_hook(lambda mod, args, out: captured.append(args[0].detach()))
    tokens = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    model.train()
    model(tokens=tokens, labels=tokens)
    model.eval()
    model(tokens=tokens, labels=tokens)
    train_hidden, eval_hidden = captured
    assert not torch.allclose(train_hidden, eval_hidden), "dropout had no effect"
    # The residual stream is replicated across TP: its dropout masks must agree on every TP rank.
    gathered = [torch.empty_like(train_hidden) for _ in range(state.tp_size)]
    dist.all_gather(gathered, train_hidden, group=state.tp_group)
    assert torch.equal(gathered[0], gathered[1])
    # The per-rank stream (attention dropout on this rank's heads) differs between TP ranks.
    states = [torch.empty_like(model.rng_tracker.states["tensor-parallel"]) for _ in range(state.tp_size)]
    dist.all_gather(states, model.rng_tracker.states["tensor-parallel"], group=state.tp_group)
    assert not torch.equal(states[0], states[1])


def _check_model_holds_only_its_shards(state):
    config = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=64, seq_length=8,
                         make_vocab_size_divisible_by=16, swiglu=True, untie_embeddings_and_output_weights=True)
    model = GPTModel(config, state)
    sharded = sum(p.numel() for p in model.parameters() if is_tensor_parallel(p))
    replicated = sum(p.numel() for p in model.parameters() if not is_tensor_parallel(p))
    assert sharded * state.tp_size + replicated == config.num_parameters(state.tp_size)
    assert replicated < 0.05 * config.num_parameters(state.tp_size)  # only norms and row-parallel biases
    qkv = model.layers["0"].self_attention.query_key_value.weight
    assert qkv.shape == (3 * 32 // state.tp_size, 32)


def _check_compiled_collectives_equal_eager(state):
    """The functional collectives the mappings use while torch.compile traces (mappings.py says
    why) compute what the eager in-place ones do, forward and backward, for every mapping."""
    from megatron_hds.parallel import mappings

    group, original = state.tp_group, mappings._tracing
    x = torch.randn(4, 3, 6, generator=torch.Generator().manual_seed(state.tp_rank))
    try:
        for fn in (mappings.copy_to_tp, mappings.reduce_from_tp, mappings.scatter_to_tp, mappings.gather_from_tp,
                   mappings.scatter_to_sequence, mappings.gather_from_sequence,
                   mappings.reduce_scatter_to_sequence):
            results = []
            for tracing in (False, True):
                mappings._tracing = lambda tracing=tracing: tracing
                leaf = x.clone().requires_grad_()
                out = fn(leaf, group)
                (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
                results.append((out.detach(), leaf.grad))
            for eager, functional in zip(*results):
                assert torch.equal(eager, functional), fn.__name__
    finally:
        mappings._tracing = original


def _tp2_worker():
    state = ParallelState.build(tensor_model_parallel_size=2)
    _check_cross_entropy(state)
    _check_layers(state)
    _check_model_holds_only_its_shards(state)
    _check_dropout_consistency(state)
    _check_compiled_collectives_equal_eager(state)
    return True


def test_tensor_parallel_blocks_on_two_ranks():
    assert run_distributed(_tp2_worker, 2) == [True, True]


def test_cross_entropy_single_process_matches_torch():
    logits = torch.randn(7, 2, 33, dtype=torch.float64).requires_grad_()
    target = torch.randint(0, 33, (7, 2))
    loss = vocab_parallel_cross_entropy(logits, target)
    expected = F.cross_entropy(logits.reshape(-1, 33), target.reshape(-1), reduction="none").view(7, 2)
    torch.testing.assert_close(loss, expected.float(), rtol=1e-6, atol=1e-6)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-6)

"""--use-distributed-optimizer: the DP-sharded AdamW steps like the all-reduce path with
the unsharded optimizer (fp32, bf16 and fp16, with clipping, under DP=2, TP=2 x DP=2 and
PP=2 x DP=2), keeps 1/DP of the state per rank, skips fp16 overflow steps on every rank, and
reads and writes the unsharded optimizers' checkpoint layout, so checkpoints move between
the two and between DP sizes.

Tolerance: the two paths' gradients are equal (with two DP ranks a sum over DP is one
addition), but the global norm sums squares in another order (per slice, not per
parameter), so it agrees to 1e-6 relative and the clipped gradients to a few ulps. Adam
amplifies such ulps where an element's gradient is near zero (m / sqrt(v) of a tiny
value), so after three steps at lr 1e-2 the parameters agree to ATOL = 1e-5 (a thousandth
of a step); a wrong slice or a missing weight decay moves them by 5e-5 to 1e-2."""
import copy

import pytest
import torch

from megatron_hds.config import ModelConfig
from megatron_hds.model.gpt import GPTModel
from megatron_hds.parallel.data_parallel import GradientAllReducer, global_norm
from megatron_hds.parallel.schedules import forward_backward
from megatron_hds.parallel.state import ParallelState
from megatron_hds.optim.distributed_optimizer import DistributedOptimizer
from megatron_hds.optim import build_optimizer
from megatron_hds.optim.optimizer import FP32Optimizer
from megatron_hds.precision import torch_dtype
from tests.distributed import run_distributed

CONFIG = dict(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=96, seq_length=16,
              make_vocab_size_divisible_by=16)
CLIP = 0.05  # well below the first steps' norms: clipping is active
RTOL = 1e-6
ATOL = 1e-5


def _batches(state: ParallelState, steps: int):
    """Different data per DP rank, the same on the TP ranks of a replica."""
    out = []
    for step in range(steps):
        g = torch.Generator().manual_seed(100 * step + state.dp_rank)
        seqs = torch.randint(0, CONFIG["vocab_size"], (2, 2, CONFIG["seq_length"] + 1), generator=g)
        out.append([dict(tokens=s[:, :-1], labels=s[:, 1:]) for s in seqs])
    return out


class _Run:
    """One model and its optimizer, stepped the trainer's way."""

    def __init__(self, state: ParallelState, distributed: bool):
        self.state = state
        self.model = GPTModel(ModelConfig(**CONFIG), state, seed=5)
        self.optimizer = build_optimizer(self.model, lr=1e-2, weight_decay=0.1, distributed=distributed,
                                         dp_group=state.dp_group)
        self.reducer = None if distributed else GradientAllReducer(self.model.parameters(), state.dp_group)

    def step(self, micro_batches):
        self.optimizer.zero_grad()
        forward_backward(self.model, micro_batches)
        if self.reducer is not None:
            self.reducer.allreduce()
        sharded = self.optimizer.sharded_over_dp
        return self.optimizer.step(CLIP, grad_norm_fn=lambda pairs: global_norm(pairs, self.state, sharded))


def _assert_same_params(a: GPTModel, b: GPTModel):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=ATOL, msg=name)


def _assert_close_to(tensor, reference):
    """Within 1e-5 of the reference's largest entry (Adam moments; see the tolerance note)."""
    assert tensor.shape == reference.shape
    assert (tensor - reference).abs().max() <= 1e-5 * reference.abs().max()


def _parity_worker(tp: int, pp: int):
    state = ParallelState.build(tp, pp)
    plain, sharded = _Run(state, distributed=False), _Run(state, distributed=True)
    norms = []
    for batch in _batches(state, 3):
        a, b = plain.step(batch), sharded.step(batch)
        assert not a.skipped and not b.skipped
        norms.append((a.grad_norm, b.grad_norm))
        _assert_same_params(plain.model, sharded.model)
        if tp == pp == 1:  # the default norm (no grad_norm_fn) sums over DP: the clipped slices' norm is CLIP
            clipped = sharded.optimizer._default_grad_norm(sharded.optimizer.grad_pairs())
            assert clipped == pytest.approx(CLIP * b.grad_norm / (b.grad_norm + 1e-6), rel=1e-5)
    # Each rank holds 1/DP of the state: one fp32 slice each of master, exp_avg and exp_avg_sq per
    # group (padded to a multiple of DP), plus one step counter per group. The unsharded fp32
    # optimizer: both moments of every parameter and a step counter per parameter, no master copy.
    dp, groups = state.dp_size, sharded.optimizer.param_groups
    slices = [-(-sum(p.numel() for p in g["params"]) // dp) for g in plain.optimizer.param_groups]
    assert sharded.optimizer.state_bytes() == 12 * sum(slices) + 4 * len(groups)
    params = list(plain.model.parameters())
    assert plain.optimizer.state_bytes() == 8 * sum(p.numel() for p in params) + 4 * len(params)
    return norms


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2)], ids=["dp2", "tp2-dp2", "pp2-dp2"])
def test_sharded_steps_equal_the_all_reduce_path(tp, pp):
    """DP=2; TP=2 x DP=2 (TP-replicated norms and biases counted once in the norm); PP=2 x DP=2
    (1F1B, and the last stage's copy of the tied embeddings counted once)."""
    reports = run_distributed(_parity_worker, 2 * tp * pp, tp, pp)
    for norms in reports:
        for plain, sharded in norms:
            assert sharded == pytest.approx(plain, rel=RTOL)
        assert norms[0][0] > 4 * CLIP  # clipping was active
    flat = [[n for pair in norms for n in pair] for norms in reports]
    for other in flat[1:]:  # the norm is global: every rank sees the same one
        assert other == pytest.approx(flat[0], rel=RTOL)


def _checkpoint_worker():
    state = ParallelState.build(1, 1)
    batches = _batches(state, 4)
    plain, sharded = _Run(state, distributed=False), _Run(state, distributed=True)
    for batch in batches[:2]:
        plain.step(batch)
        sharded.step(batch)
    plain_state = copy.deepcopy(plain.optimizer.state_dict())
    sharded_state = sharded.optimizer.state_dict()  # collective: both ranks call it
    if state.dp_rank == 0:
        # The unsharded layout: same groups, same per-parameter tensors.
        assert sharded_state["optimizer"]["param_groups"] == plain_state["optimizer"]["param_groups"]
        assert sharded_state["optimizer"]["state"].keys() == plain_state["optimizer"]["state"].keys()
        for i, entry in plain_state["optimizer"]["state"].items():
            for key, value in entry.items():
                _assert_close_to(sharded_state["optimizer"]["state"][i][key], value)
    else:
        assert sharded_state is None
    # Cross-load: a sharded optimizer from the plain state, a plain one from the sharded state
    # (which only DP rank 0 has; every rank of a real run reads it from the checkpoint file).
    shared = [sharded_state]
    torch.distributed.broadcast_object_list(shared, src=0)
    from_plain, from_sharded = _Run(state, distributed=True), _Run(state, distributed=False)
    for run in (from_plain, from_sharded):
        run.model.load_state_dict(plain.model.state_dict())
    from_plain.optimizer.load_state_dict(plain_state)
    from_sharded.optimizer.load_state_dict(shared[0])
    for batch in batches[2:]:
        for run in (plain, from_plain, from_sharded):
            run.step(batch)
        _assert_same_params(plain.model, from_plain.model)
        _assert_same_params(plain.model, from_sharded.model)
    return True


def test_checkpoint_layout_is_the_unsharded_one_and_moves_both_ways():
    assert run_distributed(_checkpoint_worker, 2) == [True, True]


def _fake_grads(model, seed: int, dtype: torch.dtype, poison: bool = False):
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = (torch.randn(p.shape, generator=g) * 1e3).to(dtype)
    if poison:  # one element on one rank: whichever rank owns its slice sees the inf
        next(model.parameters()).grad.view(-1)[3] = float("inf")


def _mixed_precision_worker(precision: str):
    dtype = torch_dtype(precision)
    state = ParallelState.build(1, 1)
    models = [GPTModel(ModelConfig(**CONFIG), state, seed=5, dtype=dtype) for _ in range(2)]
    plain = build_optimizer(models[0], lr=1e-2, weight_decay=0.1)
    sharded = build_optimizer(models[1], lr=1e-2, weight_decay=0.1, distributed=True, dp_group=state.dp_group)
    reducer = GradientAllReducer(models[0].parameters(), state.dp_group)
    skipped = []
    for step in range(3):
        poison = precision == "fp16" and step == 1 and state.dp_rank == 1
        for model, optimizer in ((models[0], plain), (models[1], sharded)):
            optimizer.zero_grad()
            _fake_grads(model, 10 * step + state.dp_rank, dtype, poison)
        reducer.allreduce()
        a = plain.step(CLIP, grad_norm_fn=lambda pairs: global_norm(pairs, state))
        b = sharded.step(CLIP, grad_norm_fn=lambda pairs: global_norm(pairs, state, True))
        assert (a.skipped, a.loss_scale) == (b.skipped, b.loss_scale)
        skipped.append(b.skipped)
        if not a.skipped:
            assert b.grad_norm == pytest.approx(a.grad_norm, rel=RTOL)
        for p, q in zip(models[0].parameters(), models[1].parameters()):
            assert torch.equal(p, q)
    return skipped


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_masters_and_fp16_overflow(precision):
    reports = run_distributed(_mixed_precision_worker, 2, precision)
    expected = [False, True, False] if precision == "fp16" else [False, False, False]
    assert reports == [expected, expected]  # an overflow on one rank skips the step on both


def test_single_process_is_the_plain_optimizer():
    """DP = 1 (no process group): one slice holding everything; same steps, same state layout."""
    state = ParallelState.single("cpu")
    plain, sharded = _Run(state, distributed=False), _Run(state, distributed=True)
    assert isinstance(plain.optimizer, FP32Optimizer) and isinstance(sharded.optimizer, DistributedOptimizer)
    for batch in _batches(state, 2):
        plain.step(batch)
        sharded.step(batch)
        _assert_same_params(plain.model, sharded.model)
    a, b = plain.optimizer.state_dict(), sharded.optimizer.state_dict()
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for i, entry in a["optimizer"]["state"].items():
        for key, value in entry.items():
            _assert_close_to(b["optimizer"]["state"][i][key], value)


def test_load_refuses_a_state_of_another_model():
    state = ParallelState.single("cpu")
    run = _Run(state, distributed=True)
    run.step(_batches(state, 1)[0])
    saved = run.optimizer.state_dict()
    other = GPTModel(ModelConfig(**dict(CONFIG, hidden_size=64)), state, seed=5)
    optimizer = build_optimizer(other, lr=1e-2, distributed=True)
    with pytest.raises(ValueError, match="has shape"):
        optimizer.load_state_dict(saved)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_fused_adamw_steps_like_the_mixed_precision_optimizer():
    """One GPU (DP = 1): bf16 model, fused AdamW on the fp32 slices, against the unsharded
    bf16 optimizer; and the state survives a state_dict round trip."""
    state = ParallelState.single("cuda")
    models = [GPTModel(ModelConfig(**CONFIG), state, seed=5, dtype=torch.bfloat16) for _ in range(2)]
    plain = build_optimizer(models[0], lr=1e-2, weight_decay=0.1)
    sharded = build_optimizer(models[1], lr=1e-2, weight_decay=0.1, distributed=True)
    assert sharded.optimizer.defaults["fused"] is True
    for step in range(2):
        for model, optimizer in zip(models, (plain, sharded)):
            optimizer.zero_grad()
            _fake_grads(model, step, torch.bfloat16)
            for p in model.parameters():
                p.grad = p.grad.cuda()
            optimizer.step(CLIP)
        for p, q in zip(models[0].parameters(), models[1].parameters()):
            torch.testing.assert_close(q, p, rtol=0, atol=1e-2)  # a bf16 ulp at most
    reloaded = build_optimizer(models[1], lr=1e-2, weight_decay=0.1, distributed=True)
    reloaded.load_state_dict(sharded.state_dict())
    for a, b in zip(reloaded._masters, sharded._masters):
        assert torch.equal(a, b)

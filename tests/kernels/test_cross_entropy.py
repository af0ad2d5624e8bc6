"""Fused cross entropy with per-domain loss sums (kernels/cross_entropy.py, kernels/reference.py,
kernels/dispatch.py, megatron_hds/parallel/cross_entropy.py).

The Triton kernels run on CPU tensors under TRITON_INTERPRET=1 (tests/conftest.py sets it
before kernels/ is imported when CUDA is absent) and compiled on CUDA tensors otherwise.
Tolerance policy: results are compared with float64 math on the SAME input values (bf16/fp16
logits upcast exactly). Loss, domain sums and fp32 gradients: relative error (max abs error
over max abs value) < 1e-5, since everything accumulates in fp32. bf16 / fp16 gradients are
rounded to the logits' dtype on output: < 1e-2 / 1e-3. Token counts must be exact.
"""
import os

import pytest
import torch
import torch.nn.functional as F

from megatron_hds import kernels
from megatron_hds.kernels import dispatch, reference
from megatron_hds.parallel.cross_entropy import vocab_parallel_cross_entropy
from tests.distributed import run_distributed
from tests.kernels.conftest import backends_for_cpu_tensors, compile_for_gpu_target

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
REL = 1e-5
GRAD_REL = {torch.float64: 1e-5, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-3}
IGNORE = -100
# (rows, vocab, block): a tail block, a vocab not a multiple of the block, a block wider than the vocab.
SHAPES = ((19, 1031, 256), (16, 1000, 256), (5, 300, 512))


@pytest.fixture(params=["torch", "triton"])
def forced(request, monkeypatch):
    """Each backend forced through MEGATRON_HDS_KERNELS; returns the device its tensors live on."""
    monkeypatch.setenv(dispatch.ENV_VAR, request.param)
    if request.param == "triton":
        return request.getfixturevalue("device")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _case(rows, vocab, dtype, device, seed, num_domains=4, with_mask=True):
    """Logits with an offset (a naive exp would overflow), targets with ignored tokens, a loss
    mask, and domain ids that leave domain 1 empty."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, vocab, generator=gen) * 3 + 40).to(dtype)
    target = torch.randint(0, vocab, (rows,), generator=gen)
    target[torch.rand(rows, generator=gen) < 0.2] = IGNORE
    mask = (torch.rand(rows, generator=gen) < 0.8).float() if with_mask else None
    present = torch.tensor([d for d in range(num_domains) if d != 1])
    domains = present[torch.randint(0, len(present), (rows,), generator=gen)]
    grad_loss = torch.rand(rows, generator=gen) + 0.5
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return dict(logits=logits.to(device), target=to(target), mask=to(mask), domains=to(domains),
                grad_loss=to(grad_loss), num_domains=num_domains)


def _expected(c):
    """float64: per-token loss (0 where ignored / masked), [2D] domain sums, logits gradient."""
    x = c["logits"].detach().cpu().double().requires_grad_()
    target = c["target"].cpu()
    valid = target != IGNORE
    if c["mask"] is not None:
        valid &= c["mask"].cpu() != 0
    loss = F.cross_entropy(x, target, ignore_index=IGNORE, reduction="none") * valid
    (loss * c["grad_loss"].cpu().double()).sum().backward()
    d = c["num_domains"]
    sums = torch.zeros(2 * d, dtype=torch.float64)
    sums[:d].index_add_(0, c["domains"].cpu(), loss.detach())
    sums[d:].index_add_(0, c["domains"].cpu(), valid.double())
    return loss.detach(), sums, x.grad


def _rel_error(got, want):
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    assert torch.isfinite(got).all(), got
    return ((got - want).abs().max() / want.abs().max().clamp(min=1e-30)).item()


def _run(module, c, out=None, **block):
    """The three steps of one unsharded call through `module` (kernel or twin)."""
    sums = torch.zeros(2 * c["num_domains"], dtype=torch.float32, device=c["logits"].device)
    partials = module.cross_entropy_partials(c["logits"], c["target"], 0, IGNORE, **block)
    loss, stats = module.cross_entropy_loss(partials, c["target"], IGNORE, c["mask"], c["domains"], sums)
    grad = module.cross_entropy_backward(c["logits"], c["target"], stats, c["grad_loss"], 0, IGNORE, c["mask"], out,
                                         **block)
    return loss, sums, grad


def _assert_matches(c, loss, sums, grad):
    want_loss, want_sums, want_grad = _expected(c)
    d = c["num_domains"]
    assert loss.dtype == torch.float32 and grad.dtype == c["logits"].dtype and grad.shape == c["logits"].shape
    assert _rel_error(loss, want_loss) < REL
    assert _rel_error(sums[:d], want_sums[:d]) < REL
    assert torch.equal(sums[d:].cpu().double(), want_sums[d:])  # counts are exact
    assert sums[1].item() == 0.0 and sums[d + 1].item() == 0.0  # the empty domain
    assert _rel_error(grad, want_grad) < GRAD_REL[c["logits"].dtype]
    ignored = c["target"] == IGNORE
    assert (loss[ignored] == 0).all() and (grad[ignored] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,vocab,block", SHAPES, ids=["tail", "odd-vocab", "wide-block"])
def test_kernel_matches_float64(ce, device, dtype, rows, vocab, block):
    c = _case(rows, vocab, dtype, device, seed=rows + vocab)
    _assert_matches(c, *_run(ce, c, block=block))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reference_matches_float64(dtype):
    for rows, vocab, _ in SHAPES:
        c = _case(rows, vocab, dtype, "cpu", seed=rows + vocab)
        _assert_matches(c, *_run(reference, c))


def test_reference_accepts_float64_logits():
    """The torch path keeps serving dtypes the Triton kernel does not take."""
    c = _case(9, 33, torch.float64, "cpu", seed=1)
    _assert_matches(c, *_run(reference, c))


def test_one_domain_with_all_tokens_and_no_mask(forced):
    c = _case(33, 515, torch.bfloat16, forced, seed=5, num_domains=3, with_mask=False)
    c["target"][:] = torch.arange(33) * 15  # none ignored, targets spread over the vocab
    c["domains"][:] = 2
    loss, sums, grad = _run(kernels, c)
    _assert_matches(c, loss, sums, grad)
    assert sums.tolist()[3:] == [0.0, 0.0, 33.0] and sums[:2].tolist() == [0.0, 0.0]
    assert sums[2].item() == pytest.approx(loss.double().sum().item(), rel=REL)


def test_poisoned_buffers_are_fully_overwritten(ce, device, monkeypatch):
    """Every buffer the kernels allocate starts as NaN: an element they skip would show."""
    made = []

    def poisoned(shape, dtype, dev):
        buf = torch.full(shape, float("nan"), dtype=dtype, device=dev)
        made.append(buf)
        return buf

    monkeypatch.setattr(ce, "_new_buffer", poisoned)
    c = _case(19, 301, torch.float16, device, seed=7)
    _assert_matches(c, *_run(ce, c, block=64))
    assert [tuple(b.shape) for b in made] == [(3, 19), (19,), (2, 19), (19, 301)]


def test_backward_into_the_logits_and_into_a_preallocated_buffer(forced):
    c = _case(21, 259, torch.bfloat16, forced, seed=8)
    buffer = torch.full_like(c["logits"], float("nan"))
    _, _, grad = _run(kernels, c, out=buffer)
    assert grad.data_ptr() == buffer.data_ptr()
    _assert_matches(c, *_run(kernels, c)[:2], grad)
    in_place = dict(c, logits=c["logits"].clone())
    _, _, grad = _run(kernels, in_place, out=in_place["logits"])
    assert grad.data_ptr() == in_place["logits"].data_ptr()
    _assert_matches(c, *_run(kernels, c)[:2], grad)


def test_layer_per_sample_domains_and_inplace_backward(forced):
    """[s, b] targets with one domain id per sample [b], through the autograd layer; the
    in-place backward hands back the logits' own memory and refuses a second backward."""
    device = forced
    s, b, vocab, num_domains = 6, 3, 257, 3
    c = _case(s * b, vocab, torch.float32, device, seed=9, num_domains=num_domains)
    per_sample = torch.tensor([2, 0, 2], device=device)
    c["domains"] = per_sample.repeat(s)  # row r = (position r // b, sample r % b)
    logits = c["logits"].view(s, b, vocab).clone().requires_grad_()
    head = logits * 1.0  # a temporary, like the model's logits
    sums = torch.zeros(2 * num_domains, device=device)
    loss = vocab_parallel_cross_entropy(head, c["target"].view(s, b), domain_ids=per_sample, domain_sums=sums,
                                        loss_mask=c["mask"].view(s, b), ignore_index=IGNORE, inplace_backward=True)
    (loss * c["grad_loss"].view(s, b)).sum().backward(retain_graph=True)
    want_loss, want_sums, want_grad = _expected(c)
    assert _rel_error(loss.reshape(-1), want_loss) < REL and _rel_error(sums, want_sums) < REL
    assert _rel_error(logits.grad.reshape(-1, vocab), want_grad) < REL
    assert torch.equal(head.detach(), logits.grad)  # the gradient was written into the logits' memory
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.sum().backward()


# --- dispatch ---------------------------------------------------------------------------


def test_dispatch_forced_torch_uses_reference(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    monkeypatch.setattr(dispatch, "_cross_entropy", lambda: pytest.fail("the Triton kernel was used"))
    c = _case(7, 40, torch.bfloat16, "cpu", seed=10)
    _assert_matches(c, *_run(kernels, c))


def test_dispatch_auto_on_cpu_tensors_is_torch(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    monkeypatch.setattr(dispatch, "_cross_entropy", lambda: pytest.fail("the Triton kernel was used"))
    c = _case(4, 10, torch.float32, "cpu", seed=11)
    _assert_matches(c, *_run(kernels, c))


def test_dispatch_forced_triton_uses_kernel(ce, device, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    calls = []
    for name in ("cross_entropy_partials", "cross_entropy_loss", "cross_entropy_backward"):
        real = getattr(ce, name)
        monkeypatch.setattr(ce, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    c = _case(6, 70, torch.float16, device, seed=12)
    _assert_matches(c, *_run(kernels, c))
    assert calls == ["cross_entropy_partials", "cross_entropy_loss", "cross_entropy_backward"]


def test_bad_domain_arguments_are_named():
    partials = reference.cross_entropy_partials(torch.randn(4, 9), torch.arange(4), 0)
    target, sums = torch.arange(4), torch.zeros(6)
    with pytest.raises(ValueError, match=r"domain id 3 is out of range: domain_sums holds 3 domains \(ids 0..2\)"):
        kernels.cross_entropy_loss(partials, target, IGNORE, None, torch.tensor([0, 1, 3, 2]), sums)
    with pytest.raises(ValueError, match="domain id -1 is out of range"):
        kernels.cross_entropy_loss(partials, target, IGNORE, None, torch.tensor([0, -1, 0, 2]), sums)
    with pytest.raises(ValueError, match="contiguous float32 .* got torch.float64"):
        kernels.cross_entropy_loss(partials, target, IGNORE, None, torch.zeros(4, dtype=torch.long), sums.double())
    with pytest.raises(ValueError, match="pass both or neither"):
        kernels.cross_entropy_loss(partials, target, IGNORE, None, torch.zeros(4, dtype=torch.long), None)
    with pytest.raises(ValueError, match=r"logits \(2, 4, 9\) must be target \(2, 3\)"):
        vocab_parallel_cross_entropy(torch.randn(2, 4, 9), torch.zeros(2, 3, dtype=torch.long))


def test_kernel_rejects_unsupported_dtype(ce, device):
    with pytest.raises(ValueError, match="float64.*use the torch backend"):
        ce.cross_entropy_partials(torch.ones(2, 3, dtype=torch.float64, device=device), torch.zeros(2, device=device,
                                                                                                    dtype=torch.long), 0)


# --- TP=2 -------------------------------------------------------------------------------


def _sharded_worker(backend):
    """Each rank holds half the vocab; the sharded call must equal the unsharded one."""
    import torch.distributed as dist

    os.environ[dispatch.ENV_VAR] = backend
    rank = dist.get_rank()
    group = dist.new_group([0, 1])
    s, b, vocab, num_domains = 5, 4, 2 * 151, 3
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(s, b, vocab, generator=gen) * 4 + 1000.0).to(torch.bfloat16)
    target = torch.randint(0, vocab, (s, b), generator=gen)
    target[0, :2] = IGNORE
    target[3, 1] = 0  # the first column of rank 0's shard
    target[4, 2] = vocab - 1  # the last column of rank 1's shard
    mask = (torch.rand(s, b, generator=gen) < 0.8).float()
    domains = torch.tensor([0, 2, 2, 0])  # per sample; domain 1 empty
    weight = torch.rand(s, b, generator=gen)

    def run(x, tp_group):
        x = x.clone().requires_grad_()
        sums = torch.zeros(2 * num_domains)
        loss = vocab_parallel_cross_entropy(x, target, tp_group, domain_ids=domains, domain_sums=sums,
                                            loss_mask=mask, ignore_index=IGNORE)
        (loss * weight).sum().backward()
        return loss.detach(), sums, x.grad

    full_loss, full_sums, full_grad = run(logits, None)
    loss, sums, grad = run(logits.chunk(2, dim=-1)[rank], group)
    assert _rel_error(loss, full_loss) < REL
    assert _rel_error(sums, full_sums) < REL and torch.equal(sums[num_domains:], full_sums[num_domains:])
    assert sums[1] == 0 and sums[num_domains + 1] == 0
    assert _rel_error(grad, full_grad.chunk(2, dim=-1)[rank]) < GRAD_REL[torch.bfloat16]
    return True


def test_tp2_sharded_equals_unsharded():
    for backend in backends_for_cpu_tensors():  # gloo: CPU tensors
        assert run_distributed(_sharded_worker, 2, backend) == [True, True], backend


# --- compiled kernels -------------------------------------------------------------------

_COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from megatron_hds.kernels import cross_entropy as ce
assert not ce.INTERPRETED
common = {"target": "*i64", "loss_mask": "*fp32", "vocab_start": "i32", "ignore_index": "i32"}
cases = [
    (ce._partials_kernel, {"logits": "*bf16", "row_stride": "i64", "target": "*i64", "partials": "*fp32",
                           "n_rows": "i32", "n_cols": "i32", "vocab_start": "i32", "ignore_index": "i32",
                           "BLOCK_V": "constexpr"}, {"BLOCK_V": 4096}),
    (ce._loss_kernel, {"partials": "*fp32", "target": "*i64", "loss_mask": "*fp32", "domain_ids": "*i64",
                       "loss": "*fp32", "stats": "*fp32", "sums": "*fp32", "n_rows": "i32", "num_domains": "i32",
                       "ignore_index": "i32", "HAS_MASK": "constexpr", "HAS_DOMAINS": "constexpr",
                       "BLOCK_N": "constexpr", "BLOCK_D": "constexpr"},
     {"HAS_MASK": True, "HAS_DOMAINS": True, "BLOCK_N": 256, "BLOCK_D": 32}),
    (ce._backward_kernel, {"logits": "*fp16", "row_stride": "i64", "grad": "*fp16", "grad_row_stride": "i64",
                           "target": "*i64", "loss_mask": "*fp32", "stats": "*fp32", "grad_loss": "*fp32",
                           "n_rows": "i32", "n_cols": "i32", "vocab_start": "i32", "ignore_index": "i32",
                           "HAS_MASK": "constexpr", "BLOCK_V": "constexpr"}, {"HAS_MASK": True, "BLOCK_V": 4096}),
]
for fn, signature, constants in cases:
    triton.compile(ASTSource(fn, signature, constants), target=GPUTarget("cuda", 90, 32))
"""


@pytest.mark.slow
def test_kernels_compile_for_a_gpu_target():
    """The interpreter accepts code the compiler rejects: compile all three kernels to sm_90
    cubin (no GPU needed), so a type error in the compiled path shows up here."""
    compile_for_gpu_target(_COMPILE)


# --- GPU --------------------------------------------------------------------------------


@pytest.mark.gpu
def test_triton_on_cuda_tensors_at_a_realistic_shape(monkeypatch):
    """Compiled kernels, automatic dispatch: 4096 tokens x 25,216 columns (50k vocab / TP=2) in bf16."""
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    c = _case(4096, 25216, torch.bfloat16, "cuda", seed=13, num_domains=22)
    assert kernels.choose_backend([c["logits"]]) == "triton"
    _assert_matches(c, *_run(kernels, c))


@pytest.mark.gpu
def test_training_losses_match_between_triton_and_torch(demo_manifest, tmp_path, monkeypatch):
    """The whole training step on CUDA with each backend: the same per-step and per-domain losses."""
    from tests.training.test_pretrain import _argv, _records, _train

    runs = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv(dispatch.ENV_VAR, backend)
        save = str(tmp_path / backend)
        _train(_argv(demo_manifest, "--hidden-dropout", "0", "--attention-dropout", "0", "--train-iters", "6",
                     "--mixing", "uniform", "--save", save), builtin_scheduler=True)
        runs[backend] = _records(save)
    for it in range(1, 7):
        a, b = runs["torch"][it], runs["triton"][it]
        assert a["batch_hash"] == b["batch_hash"], it
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), it
        for name, value in a["domain_loss"].items():
            assert b["domain_loss"][name] == pytest.approx(value, rel=1e-4, nan_ok=True), (it, name)

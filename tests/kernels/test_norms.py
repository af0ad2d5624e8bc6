"""Multi-tensor sum of squares (kernels/norms.py, kernels/reference.py, kernels/dispatch.py).

The Triton kernel runs on CPU tensors under TRITON_INTERPRET=1 (tests/conftest.py sets it
before kernels/ is imported when CUDA is absent) and compiled on CUDA tensors otherwise.
Tolerance policy: every result is compared with float64 sums of squares of the SAME input
values (bf16/fp16 inputs upcast exactly), relative error < 1e-5 since accumulation is fp32;
empty tensors must give exactly 0.
"""
import subprocess
import sys

import pytest
import torch

from megatron_hds import kernels
from megatron_hds.kernels import dispatch, reference
from tests.kernels.conftest import compile_for_gpu_target

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SHAPES = ((1,), (7,), (1023,), (4097,), (0,), (33, 65), (3, 5, 7), (2, 0, 3), ())
REL = 1e-5


def _random(shape, dtype, device, gen, scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * scale).to(dtype).to(device)


def _expected(tensors):
    return torch.tensor([t.detach().cpu().double().pow(2).sum().item() for t in tensors], dtype=torch.float64)


def _assert_close(got, tensors):
    want = _expected(tensors)
    assert got.dtype == torch.float32 and got.shape == (len(tensors),)
    got = got.detach().cpu().double()
    assert torch.isfinite(got).all(), got
    for i, (g, w) in enumerate(zip(got.tolist(), want.tolist())):
        if w == 0.0:
            assert g == 0.0, f"tensor {i} {tuple(tensors[i].shape)}: {g} != 0"
        else:
            assert abs(g - w) <= REL * w, f"tensor {i} {tuple(tensors[i].shape)} {tensors[i].dtype}: {g} vs {w}"


def test_reference_matches_float64():
    gen = torch.Generator().manual_seed(0)
    tensors = [_random(s, d, "cpu", gen) for d in DTYPES for s in SHAPES]
    _assert_close(reference.multi_tensor_sum_of_squares(tensors), tensors)
    assert reference.multi_tensor_sum_of_squares([]).shape == (0,)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("block,iters", [(1024, 8), (16, 1)], ids=["default", "small-chunks"])
def test_kernel_matches_float64(norms, device, dtype, block, iters):
    """Odd sizes, 2-D/3-D, empty and 0-d tensors; small chunks give a tensor 257 partials,
    so the second pass loops over more than one block of partials."""
    gen = torch.Generator().manual_seed(1)
    tensors = [_random(s, dtype, device, gen, scale=3.0) for s in SHAPES]
    _assert_close(norms.multi_tensor_sum_of_squares(tensors, block=block, iters=iters), tensors)


def test_mixed_dtypes_and_many_tensors_in_one_call(norms, device):
    gen = torch.Generator().manual_seed(2)
    sizes = torch.randint(0, 300, (50,), generator=gen).tolist()
    tensors = [_random((n,), DTYPES[i % 3], device, gen, scale=0.1 + i) for i, n in enumerate(sizes)]
    got = norms.multi_tensor_sum_of_squares(tensors, block=64, iters=2)
    _assert_close(got, tensors)
    # results come back in the caller's order, whatever the dtype grouping did
    _assert_close(norms.multi_tensor_sum_of_squares(tensors[::-1], block=64, iters=2), tensors[::-1])


def test_poisoned_buffers_are_fully_overwritten(norms, device, monkeypatch):
    """Output and partials start as NaN: any element the kernels skip would show."""
    made = []

    def poisoned(size, dev):
        buf = torch.full((size,), float("nan"), dtype=torch.float32, device=dev)
        made.append(buf)
        return buf

    monkeypatch.setattr(norms, "_new_buffer", poisoned)
    gen = torch.Generator().manual_seed(3)
    tensors = [_random(s, d, device, gen) for s, d in [((0,), torch.float32), ((5, 3), torch.bfloat16),
                                                        ((0, 4), torch.float16), ((1023,), torch.float32)]]
    out = norms.multi_tensor_sum_of_squares(tensors, block=32, iters=1)
    assert len(made) == 2 and made[-1] is out
    _assert_close(out, tensors)


def test_deterministic(norms, device):
    gen = torch.Generator().manual_seed(4)
    tensors = [_random((n,), torch.float32, device, gen) for n in (4097, 100, 2049)]
    first = norms.multi_tensor_sum_of_squares(tensors, block=64, iters=2)
    assert torch.equal(first, norms.multi_tensor_sum_of_squares(tensors, block=64, iters=2))


def test_non_contiguous_inputs(norms, device):
    gen = torch.Generator().manual_seed(5)
    base = _random((33, 65), torch.bfloat16, device, gen)
    cube = _random((4, 6, 8), torch.float32, device, gen)
    tensors = [base.t(), base[:, ::3], cube.permute(2, 0, 1), cube[1:3, :, 2:5]]
    assert norms._dense_view(base.t()).data_ptr() == base.data_ptr()  # dense permutation: read in place
    _assert_close(norms.multi_tensor_sum_of_squares(tensors), tensors)


def test_kernel_rejects_unsupported_dtype(norms, device):
    with pytest.raises(ValueError, match="float64"):
        norms.multi_tensor_sum_of_squares([torch.ones(3, dtype=torch.float64, device=device)])


# --- dispatch ---------------------------------------------------------------------------


def test_dispatch_forced_torch_uses_reference(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    monkeypatch.setattr(dispatch, "_norms", lambda: pytest.fail("the Triton kernel was used"))
    tensors = [torch.randn(7), torch.randn(3, 4).to(torch.bfloat16)]
    assert kernels.choose_backend(tensors) == "torch"
    _assert_close(kernels.multi_tensor_sum_of_squares(tensors), tensors)


def test_dispatch_auto_on_cpu_tensors_is_torch(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert kernels.choose_backend([torch.randn(7)]) == "torch"
    assert "torch" in kernels.available_backends()


def test_dispatch_forced_triton_uses_kernel(norms, device, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    calls = []
    real = norms.multi_tensor_sum_of_squares
    monkeypatch.setattr(norms, "multi_tensor_sum_of_squares", lambda ts: calls.append(len(ts)) or real(ts))
    gen = torch.Generator().manual_seed(6)
    tensors = [_random((n,), torch.float16, device, gen) for n in (1, 4097)]
    assert kernels.choose_backend(tensors) == "triton"
    _assert_close(kernels.multi_tensor_sum_of_squares(tensors), tensors)
    assert calls == [2]


def test_dispatch_bogus_value_errors(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "cuda-please")
    with pytest.raises(ValueError, match=r"MEGATRON_HDS_KERNELS='cuda-please' is not one of torch, triton"):
        kernels.multi_tensor_sum_of_squares([torch.ones(2)])


def test_dispatch_forced_triton_without_triton_errors(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    monkeypatch.setattr(dispatch, "_triton_probe", lambda: (False, None, "the triton package is not installed"))
    with pytest.raises(RuntimeError, match="MEGATRON_HDS_KERNELS=triton but Triton cannot run here: the triton"):
        kernels.multi_tensor_sum_of_squares([torch.ones(2)])
    assert kernels.available_backends() == ["torch"]


@pytest.mark.parametrize("triton_version,numpy_version,problem", [
    ("3.1.0", "1.26.4", "interpreter computes these kernels wrongly; install triton>=3.2"),
    ("3.6.0", "2.4.6", "fails with numpy 2.4.6 (it converts 1-element arrays to ints); install numpy<2.4"),
    ("3.6.0", "2.3.5", ""),
    ("3.7.1", "2.4.6", ""),
    ("3.10.0rc1", "3.0.0", ""),
])
def test_interpreter_refused_where_it_computes_wrongly(triton_version, numpy_version, problem, monkeypatch):
    """Older interpreters gave garbage (3.0, 3.1) or crashed under numpy 2.4 (up to 3.6) when the
    suite ran against them; the probe names the fix instead of running them."""
    import importlib.metadata

    import numpy

    monkeypatch.setattr(importlib.metadata, "version", lambda name: {"triton": triton_version}[name])
    monkeypatch.setattr(numpy, "__version__", numpy_version)
    got = dispatch._interpreter_problem()
    assert (problem in got and got.startswith(f"Triton {triton_version}'s")) if problem else got == ""


def test_importing_kernels_does_not_import_triton():
    code = ("import sys, torch; from megatron_hds import kernels; "
            "kernels.multi_tensor_sum_of_squares([torch.ones(3)]); assert 'triton' not in sys.modules, 'triton imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path), "MEGATRON_HDS_KERNELS": ""})
    assert proc.returncode == 0, proc.stderr


_COMPILE = """
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from megatron_hds.kernels import norms
assert not norms.INTERPRETED
tables = {"ptr_table": "*i64", "sizes": "*i64", "block_tensor": "*i64", "block_start": "*i64", "partials": "*fp32",
          "first_block": "i32", "DTYPE": "constexpr", "BLOCK": "constexpr", "ITERS": "constexpr"}
for dtype in (tl.float32, tl.bfloat16, tl.float16):
    triton.compile(ASTSource(norms._chunk_sumsq_kernel, tables, {"DTYPE": dtype, "BLOCK": 1024, "ITERS": 8}),
                   target=GPUTarget("cuda", 90, 32))
segments = {"partials": "*fp32", "seg_start": "*i64", "seg_stop": "*i64", "out": "*fp32", "BLOCK": "constexpr"}
triton.compile(ASTSource(norms._segment_sum_kernel, segments, {"BLOCK": 256}), target=GPUTarget("cuda", 90, 32))
"""


@pytest.mark.slow
def test_kernels_compile_for_a_gpu_target():
    """The pointer table (int64 addresses cast to typed pointers) must pass the real compiler,
    not only the interpreter: sm_90 cubin for each dtype, no GPU needed."""
    compile_for_gpu_target(_COMPILE)


@pytest.mark.gpu
def test_triton_on_cuda_tensors(monkeypatch):
    """Compiled kernel, automatic dispatch, realistic sizes (a few million elements)."""
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    gen = torch.Generator().manual_seed(7)
    shapes = [(4097, 1023), (1,), (0,), (3, 5, 7), (1 << 20) + 3, (2048, 768)]
    tensors = [_random(s, DTYPES[i % 3], "cuda", gen) for i, s in enumerate(shapes)]
    assert kernels.choose_backend(tensors) == "triton"
    got = kernels.multi_tensor_sum_of_squares(tensors)
    assert got.device.type == "cuda"
    _assert_close(got, tensors)

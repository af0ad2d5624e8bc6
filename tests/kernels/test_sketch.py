"""CountSketch accumulation for the gradient probes (kernels/sketch.py, kernels/reference.py,
kernels/dispatch.py).

The Triton kernel hashes each element's global index on the fly; it must give the buckets
and signs of the probe's table (megatron_hds/mixing/probes.py) bit for bit, so the
sketches of the two paths agree to fp32 summation order: relative error < 1e-6 against a
float64 sketch built from the table.
"""

import pytest
import torch

from megatron_hds import kernels
from megatron_hds.kernels import reference
from megatron_hds.mixing.probes import count_sketch_hash, global_flat_index, name_key, shard_placement
from megatron_hds.parallel.layers import mark_tensor_parallel
from tests.kernels.conftest import compile_for_gpu_target

REL = 1e-6
KEYS = (0, 12345, -7, name_key(0, "layers.5.mlp.dense_4h_to_h.weight"), (1 << 63) - 1)


def _table_sketch(grad: torch.Tensor, index: torch.Tensor, key: int, m: int) -> torch.Tensor:
    """float64 sketch through the probe's table path (count_sketch_hash on global indices)."""
    bucket, sign = count_sketch_hash(index, key, m)
    return torch.zeros(m, dtype=torch.float64).index_add_(0, bucket, grad.reshape(-1).double() * sign)


def _assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    got = got.detach().cpu().double()
    assert (got - want).abs().max() <= REL * max(want.abs().max(), 1e-30), (got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,m", [((1, 1), 1), ((3, 5), 7), ((64, 96), 4096), ((37, 1000), 64)])
def test_kernel_gives_the_sketch_of_the_probe_table(sketch, device, dtype, shape, m):
    gen = torch.Generator().manual_seed(shape[0] * 1000 + m)
    grad = torch.randn(shape, generator=gen).to(dtype)
    index = torch.arange(grad.numel()).reshape(shape)
    for key in KEYS:
        out = torch.zeros(m, device=device)
        sketch.count_sketch_add(grad.to(device), out, key)
        _assert_close(out, _table_sketch(grad, index, key, m))


@pytest.mark.parametrize("partition_dim", [0, 1])
def test_tensor_parallel_shards_sum_to_the_full_sketch(sketch, device, partition_dim):
    """Each TP shard sketched at its placement; the shards' sketches add up to the full one."""
    full = torch.randn(8, 12, generator=torch.Generator().manual_seed(3))
    key, m, tp = name_key(1, "w"), 16, 2
    total = torch.zeros(m, device=device)
    for rank, piece in enumerate(full.chunk(tp, dim=partition_dim)):
        shard = torch.nn.Parameter(piece.clone())
        mark_tensor_parallel(shard, partition_dim)
        sketch.count_sketch_add(piece.contiguous().to(device), total, key, *shard_placement(shard, rank, tp))
        own = torch.zeros(m, device=device)
        sketch.count_sketch_add(piece.contiguous().to(device), own, key, *shard_placement(shard, rank, tp))
        _assert_close(own, _table_sketch(piece, global_flat_index(shard, rank, tp), key, m))
    _assert_close(total, _table_sketch(full, torch.arange(full.numel()), key, m))


def test_reference_twin_and_dispatch(monkeypatch):
    grad = torch.randn(9, 11, generator=torch.Generator().manual_seed(4))
    want = _table_sketch(grad[:, 3:], (torch.arange(9)[:, None] * 11 + torch.arange(3, 11)[None, :]), 5, 32)
    out = torch.zeros(32)
    reference.count_sketch_add(grad[:, 3:], out, 5, 0, 3, 11)
    _assert_close(out, want)
    monkeypatch.setenv(kernels.dispatch.ENV_VAR, "torch")
    out = torch.zeros(32)
    kernels.count_sketch_add(grad[:, 3:], out, 5, 0, 3, 11)
    _assert_close(out, want)
    with pytest.raises(ValueError, match=r"2-D gradient"):
        kernels.count_sketch_add(grad.reshape(-1), out, 5)
    with pytest.raises(ValueError, match=r"fp32 \[m\]"):
        kernels.count_sketch_add(grad, out.double(), 5)


def test_kernel_refuses_bad_arguments(sketch, device):
    out = torch.zeros(8, device=device)
    with pytest.raises(ValueError, match="do not place"):
        sketch.count_sketch_add(torch.ones(2, 4, device=device), out, 1, 0, 2, 5)
    with pytest.raises(TypeError, match="float64"):
        sketch.count_sketch_add(torch.ones(2, 4, dtype=torch.float64, device=device), out, 1)
    with pytest.raises(ValueError, match="contiguous non-empty fp32"):
        sketch.count_sketch_add(torch.ones(2, 4, device=device), torch.zeros(8, 2, device=device), 1)


_COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from megatron_hds.kernels import sketch
assert not sketch.INTERPRETED
for key_type in ("u64", "i64", "i32"):  # how Triton types a key above 2**63, below it, below 2**31
    for grad_type in ("*bf16", "*fp16", "*fp32"):
        signature = {"grad": grad_type, "out": "*fp32", "n_elements": "i64", "n_cols": "i32", "row_offset": "i32",
                     "col_offset": "i32", "full_cols": "i32", "key": key_type, "sketch_size": "i32",
                     "BLOCK": "constexpr"}
        triton.compile(ASTSource(sketch._count_sketch_kernel, signature, {"BLOCK": 1024}),
                       target=GPUTarget("cuda", 90, 32))
"""


@pytest.mark.slow
def test_kernel_compiles_for_a_gpu_target():
    """The uint64 hash arithmetic must also pass the compiler (sm_90 cubin, no GPU needed)."""
    compile_for_gpu_target(_COMPILE)


@pytest.mark.gpu
def test_probe_sketches_agree_on_cuda_between_triton_and_torch(monkeypatch):
    """Compiled kernel on CUDA, automatic dispatch, a Pythia-1B-sized bf16 gradient."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    monkeypatch.delenv(kernels.dispatch.ENV_VAR, raising=False)
    grad = torch.randn(2048, 8192, device="cuda").to(torch.bfloat16)
    assert kernels.choose_backend([grad]) == "triton"
    key, m = name_key(0, "layers.15.mlp.dense_4h_to_h.weight"), 4096
    out = torch.zeros(m, device="cuda")
    kernels.count_sketch_add(grad, out, key)
    bucket, sign = count_sketch_hash(torch.arange(grad.numel(), device="cuda"), key, m)
    want = torch.zeros(m, dtype=torch.float64, device="cuda").index_add_(0, bucket, grad.reshape(-1).double() * sign)
    _assert_close(out, want.cpu())

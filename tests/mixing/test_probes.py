"""Gradient probes, sketches, alignment scores and weight norms (megatron_hds/mixing/probes.py).

Tolerance policy (fp32 on CPU), as in tests/parallel/test_parity.py: a parallel run
reorders sums, so values agree to rounding, not bitwise:
  sketches: max|S - S_ref| <= 1e-4 * max|S_ref|   (sums of gradient elements)
  Grams:    max|G - G_ref| <= 2e-4 * max|G_ref|   (products of two such sums)
  norms:    |n - n_ref| <= 1e-5 * n_ref           (weights are identical; sums reorder)
Hashes and global indices are integers and must match exactly.
"""
import math

import numpy as np
import pytest
import torch
from torch import nn

from megatron_hds.config import ModelConfig
from megatron_hds import kernels
from megatron_hds.kernels.reference import splitmix64
from megatron_hds.mixing.probes import (GradientProbe, WeightNormTracker, choose_layers,
                                         count_sketch_hash, global_flat_index, micro_batch_domain, name_key,
                                         select_matrices, selected_names)
from megatron_hds.model.gpt import GPTModel
from megatron_hds.parallel.layers import mark_tensor_parallel
from megatron_hds.parallel.schedules import forward_backward
from megatron_hds.parallel.state import ParallelState
from tests.distributed import run_distributed
from tests.kernels.conftest import backends_for_cpu_tensors

torch.set_num_threads(1)

SKETCH_RTOL, GRAM_RTOL, NORM_RTOL = 1e-4, 2e-4, 1e-5
SEED, DOMAINS, SKETCH = 7, 3, 64
CONFIG = dict(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=96, seq_length=16,
              make_vocab_size_divisible_by=16)
# Row-parallel weights (partition dim 1), a column-parallel weight (dim 0), a TP-replicated bias.
PROBED = ["layers.0.mlp.dense_4h_to_h.weight", "layers.1.mlp.dense_4h_to_h.weight",
          "layers.0.mlp.dense_h_to_4h.weight", "layers.1.mlp.dense_4h_to_h.bias"]
MICRO_DOMAINS = [0, 2, 0, 1]  # the global batch: 4 single-domain micro-batches of one sample


def _max_rel(a, ref) -> float:
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-30))


def _micro_batches(config: ModelConfig):
    g = torch.Generator().manual_seed(SEED)
    seqs = torch.randint(0, config.vocab_size, (len(MICRO_DOMAINS), 1, config.seq_length + 1), generator=g)
    return [dict(tokens=s[:, :-1], labels=s[:, 1:]) for s in seqs]


def _sketch_of(vector: torch.Tensor, index: torch.Tensor, key: int, m: int) -> torch.Tensor:
    bucket, sign = count_sketch_hash(index, key, m)
    return torch.zeros(m, dtype=torch.float64).index_add_(0, bucket, vector.reshape(-1).double() * sign)


# ---- hashing and selection: pure arithmetic -------------------------------------------------
def test_splitmix64_matches_unsigned_reference():
    mask = (1 << 64) - 1

    def reference(x):
        z = (x + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    xs = [0, 1, 2, 3, 12345, 2 ** 31 + 5, 2 ** 40 + 7, 2 ** 62 + 11]
    got = splitmix64(torch.tensor(xs, dtype=torch.int64))
    assert [int(v) & mask for v in got] == [reference(x) for x in xs]


@pytest.mark.parametrize("partition_dim", [0, 1])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_global_flat_index_covers_the_full_matrix(partition_dim, tp):
    full_shape = (8, 12)
    pieces = []
    for rank in range(tp):
        shape = list(full_shape)
        shape[partition_dim] //= tp
        shard = nn.Parameter(torch.empty(shape))
        mark_tensor_parallel(shard, partition_dim)
        pieces.append(global_flat_index(shard, rank, tp))
    full = torch.cat(pieces, dim=partition_dim)
    assert torch.equal(full, torch.arange(full.numel()).view(full_shape))


def test_hash_signs_and_buckets_are_balanced():
    bucket, sign = count_sketch_hash(torch.arange(200_000), name_key(0, "w"), 64)
    assert bucket.min() >= 0 and bucket.max() < 64
    assert abs(float(sign.float().mean())) < 0.01
    counts = torch.bincount(bucket.long(), minlength=64).float()
    assert counts.std() / counts.mean() < 0.05
    other, _ = count_sketch_hash(torch.arange(200_000), name_key(1, "w"), 64)
    assert (other != bucket).float().mean() > 0.9  # the seed changes the hash


def test_layer_selection():
    assert choose_layers(16, 9) == [0, 2, 4, 6, 8, 9, 11, 13, 15]
    assert choose_layers(16, 3, "late") == [13, 14, 15]
    assert choose_layers(2, 9) == [0, 1]
    assert selected_names(24, count=3, placement="late") == [
        f"layers.{i}.mlp.dense_4h_to_h.weight" for i in (21, 22, 23)]
    with pytest.raises(ValueError, match="placement"):
        choose_layers(8, 3, "middle")
    model = GPTModel(ModelConfig(**dict(CONFIG, num_layers=4)), ParallelState.single("cpu"), seed=SEED)
    assert [n for n, _ in select_matrices(model, selected_names(4, count=3, placement="late"))] == [
        f"layers.{i}.mlp.dense_4h_to_h.weight" for i in (1, 2, 3)]
    assert [n for n, _ in select_matrices(model, r"layers\.[02]\.self_attention\.dense\.weight")] == [
        "layers.0.self_attention.dense.weight", "layers.2.self_attention.dense.weight"]
    assert micro_batch_domain(torch.tensor([2, 2, 2])) == 2 and micro_batch_domain([1, 0]) is None


# ---- CountSketch accuracy ---------------------------------------------------------------
def _pair(seed: int, n: int = 100_000):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    y = 0.5 * x + torch.randn(n, generator=g, dtype=torch.float64)
    return x, y


def test_sketch_inner_products_within_the_predicted_bound():
    """E<Sx,Sy> = <x,y> and Var <= (|x|^2 |y|^2 + <x,y>^2)/m: each seed within 4 standard deviations."""
    m, index = 4096, torch.arange(100_000)
    for seed in range(5):
        x, y = _pair(seed)
        key = name_key(seed, "w")
        estimate = float(_sketch_of(x, index, key, m) @ _sketch_of(y, index, key, m))
        exact = float(x @ y)
        bound = math.sqrt((float(x @ x) * float(y @ y) + exact ** 2) / m)
        assert abs(estimate - exact) <= 4 * bound, (seed, estimate, exact, bound)


def test_sketch_error_shrinks_with_sketch_size():
    index, x, y = torch.arange(100_000), *_pair(0)
    exact = float(x @ y)

    def mse(m):
        errs = [float(_sketch_of(x, index, name_key(s, "w"), m) @ _sketch_of(y, index, name_key(s, "w"), m)) - exact
                for s in range(12)]
        return float(np.mean(np.square(errs)))

    small, large = mse(64), mse(4096)
    assert large < small / 10, (small, large)  # Var ~ 1/m: expect about 64x


# ---- probes on the model, single process --------------------------------------------------
def _grad_of(model, params, batch):
    model.zero_grad(set_to_none=True)
    model(tokens=batch["tokens"], labels=batch["labels"]).mean().backward()
    return torch.cat([p.grad.reshape(-1) for p in params])


def test_hooks_attribute_gradients_to_the_right_domain():
    model = GPTModel(ModelConfig(**CONFIG), ParallelState.single("cpu"), seed=SEED)
    named = select_matrices(model, PROBED)
    params = [p for _, p in named]
    batches = _micro_batches(model.config)
    expected = [_grad_of(model, params, b) for b in batches[:3]]

    probe = GradientProbe(named, DOMAINS, mode="exact")
    model.zero_grad(set_to_none=True)
    for domain, batch in zip((1, 0, None), batches[:3]):
        probe.set_domain(domain)
        model(tokens=batch["tokens"], labels=batch["labels"]).mean().backward()
    vectors = probe.buffer[:, :-1]
    torch.testing.assert_close(vectors[1], expected[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(vectors[0], expected[1], rtol=0, atol=1e-6)
    assert torch.count_nonzero(vectors[2]) == 0  # domain 2 never ran; the None micro-batch was skipped
    gram = probe.alignment_matrix()
    assert probe.present.tolist() == [True, True, False]
    np.testing.assert_allclose(gram[0, 1], float(expected[0].double() @ expected[1].double()), rtol=1e-6)

    # begin_step: the k-th backward of each parameter is micro-batch k, accumulated per domain.
    probe.begin_step([1, 0, 1])
    model.zero_grad(set_to_none=True)
    forward_backward(model, batches[:3])
    torch.testing.assert_close(probe.buffer[1, :-1], (expected[0] + expected[2]) / 3, rtol=0, atol=1e-6)
    torch.testing.assert_close(probe.buffer[0, :-1], expected[1] / 3, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        probe.set_domain(DOMAINS)
    probe.remove()


def test_sketch_mode_is_the_count_sketch_of_the_exact_gradient():
    model = GPTModel(ModelConfig(**CONFIG), ParallelState.single("cpu"), seed=SEED)
    named = select_matrices(model, PROBED)
    exact = GradientProbe(named, DOMAINS, mode="exact")
    sketch = GradientProbe(named, DOMAINS, mode="sketch", sketch_size=SKETCH, seed=3)
    for probe in (exact, sketch):
        probe.begin_step(MICRO_DOMAINS)
    forward_backward(model, _micro_batches(model.config))
    expected = torch.zeros(DOMAINS, SKETCH, dtype=torch.float64)
    offset = 0
    for name, p in named:
        n = p.numel()
        for d in range(DOMAINS):
            expected[d] += _sketch_of(exact.buffer[d, offset:offset + n], global_flat_index(p, 0, 1),
                                      name_key(3, name), SKETCH)
        offset += n
    got = sketch.reduce()
    assert _max_rel(got, expected) <= 1e-6
    assert sketch.buffer.shape == (DOMAINS, SKETCH + 1)  # independent of the matrix sizes


def test_sketch_with_the_triton_kernel_equals_the_table_path(monkeypatch):
    """Where the Triton kernel runs (here: the interpreter, forced) the probe hashes on the fly
    and keeps no per-element table; its sketches equal the table path's."""
    if "triton" not in backends_for_cpu_tensors():
        pytest.skip("Triton cannot run on CPU tensors here (TRITON_INTERPRET unset, or the interpreter refused)")
    model = GPTModel(ModelConfig(**CONFIG), ParallelState.single("cpu"), seed=SEED)
    named = select_matrices(model, PROBED[:3])  # the 2-D matrices
    table = GradientProbe(named, DOMAINS, mode="sketch", sketch_size=SKETCH, seed=3)
    monkeypatch.setenv(kernels.dispatch.ENV_VAR, "triton")
    fused = GradientProbe(named, DOMAINS, mode="sketch", sketch_size=SKETCH, seed=3)
    assert fused.fused_sketch and not fused._hashes and not table.fused_sketch and len(table._hashes) == 3
    assert not GradientProbe(select_matrices(model, PROBED), DOMAINS, mode="sketch", sketch_size=SKETCH).fused_sketch  # a 1-D bias
    for probe in (table, fused):
        probe.begin_step(MICRO_DOMAINS)
    forward_backward(model, _micro_batches(model.config))
    assert _max_rel(fused.reduce(), table.reduce()) <= 1e-6 and fused.present.tolist() == table.present.tolist()


def test_weight_norms_and_change_single_process():
    model = GPTModel(ModelConfig(**dict(CONFIG, num_layers=4)), ParallelState.single("cpu"), seed=SEED)
    named = select_matrices(model, selected_names(model.config.num_layers, count=3))
    tracker = WeightNormTracker(named)
    norms, change = tracker.measure()
    want = [torch.linalg.norm(p).item() for _, p in named]
    np.testing.assert_allclose(norms, want, rtol=NORM_RTOL)
    assert change.tolist() == [0.0] * 3
    with torch.no_grad():
        named[1][1].mul_(1.1)
        named[2][1].add_(0.25)
    norms2, change2 = tracker.measure()
    np.testing.assert_allclose(norms2[1], 1.1 * want[1], rtol=NORM_RTOL)
    np.testing.assert_allclose(change2, [0.0, 0.1 * want[1], 0.25 * math.sqrt(named[2][1].numel())],
                               rtol=1e-4, atol=1e-6)
    assert tracker.measure()[1].tolist() == [0.0] * 3
    # snapshot() before an update, measure() after: the change is that update alone.
    tracker.snapshot()
    with torch.no_grad():
        named[0][1].mul_(0.5)
    norms3, change3 = tracker.measure()
    np.testing.assert_allclose(change3, [0.5 * want[0], 0.0, 0.0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(norms3[0], 0.5 * want[0], rtol=NORM_RTOL)


# ---- sharded runs against the single-process reference --------------------------------------
def _signals(state: ParallelState, micro_domains, batches, dp_scale: float):
    """Sketch, exact Gram, presence and norms (before and after W *= 1.1) on this layout."""
    model = GPTModel(ModelConfig(**CONFIG), state, seed=SEED)
    named = select_matrices(model, PROBED)
    sketch = GradientProbe(named, DOMAINS, mode="sketch", sketch_size=SKETCH, seed=5, state=state)
    exact = GradientProbe(named, DOMAINS, mode="exact", state=state)
    for probe in (sketch, exact):
        probe.begin_step(micro_domains)
    forward_backward(model, batches)
    sketches = sketch.reduce(scale=dp_scale).double().numpy()
    sketch_present = sketch.present
    gram = exact.alignment_matrix(scale=dp_scale)
    norm_names = selected_names(model.config.num_layers, count=2)
    tracker = WeightNormTracker(select_matrices(model, norm_names), state, names=norm_names)
    first = tracker.measure()
    with torch.no_grad():
        for _, p in select_matrices(model, norm_names):
            p.mul_(1.1)
    second = tracker.measure()
    # The trainer's path: each rank's share summed over the WORLD (DP replicas other than 0 add zeros).
    with torch.no_grad():
        for _, p in select_matrices(model, norm_names):
            p.add_(0.01)
    shares = tracker.local_squares(world_share=True)
    if state.layout.world_size > 1:
        torch.distributed.all_reduce(shares)
    third = tracker.norms_from_squares(shares)
    return sketches, sketch_present, gram, exact.present, first, second, third


def _layout_worker(tp: int, pp: int):
    torch.manual_seed(0)
    state = ParallelState.build(tp, pp)
    config = ModelConfig(**CONFIG)
    batches = _micro_batches(config)
    ref = _signals(ParallelState.single("cpu"), MICRO_DOMAINS, batches, 1.0)
    per_rank = len(batches) // state.dp_size
    rows = slice(state.dp_rank * per_rank, (state.dp_rank + 1) * per_rank)
    # Each DP rank's micro-batches are scaled by 1/per_rank, the reference's by 1/len(batches).
    got = _signals(state, MICRO_DOMAINS[rows], batches[rows], 1.0 / state.dp_size)
    assert _max_rel(got[0], ref[0]) <= SKETCH_RTOL, _max_rel(got[0], ref[0])
    assert got[1].tolist() == ref[1].tolist() == [True, True, True]
    assert _max_rel(got[2], ref[2]) <= GRAM_RTOL, _max_rel(got[2], ref[2])
    assert got[3].tolist() == [True, True, True]
    for (norms, change), (ref_norms, ref_change) in zip(got[4:], ref[4:]):  # measure(), then the world share
        np.testing.assert_allclose(norms, ref_norms, rtol=NORM_RTOL)
        np.testing.assert_allclose(change, ref_change, rtol=NORM_RTOL)
    np.testing.assert_allclose(got[5][1], 0.1 * ref[4][0], rtol=1e-4)
    assert got[6][1].min() > 0  # the 0.01 shift moved every matrix
    return state.rank


@pytest.mark.parametrize("tp,pp,dp", [(2, 1, 1), (1, 2, 1), (1, 1, 2)], ids=["tp2", "pp2", "dp2"])
def test_sharded_signals_equal_the_unsharded_run(tp, pp, dp):
    assert run_distributed(_layout_worker, tp * pp * dp, tp, pp) == list(range(tp * pp * dp))

"""The scheduler's fast paths compute the numbers of the straightforward code, bit for bit.

Each test runs a faster path (worker threads, folded multipliers, in-place buffers, exact
re-implementations of numpy reductions) next to a plain reference of what it replaced and
compares with torch.equal / np.array_equal: a change of the numbers fails here, not only in
a tolerance test.
"""
import threading
import time

import numpy as np
import pytest
import torch

from megatron_hds.config import ModelConfig
from megatron_hds.kernels import reference
from megatron_hds.mixing.agent_base import AgentShape
from megatron_hds.mixing.base_mixture import zscore
from megatron_hds.mixing.collector import adam_preconditioners
from megatron_hds.mixing.config import AgentConfig, SACConfig
from megatron_hds.mixing.probes import GradientProbe, WeightNormTracker, select_matrices
from megatron_hds.mixing.sac import SACAgent
from megatron_hds.mixing.timeline import clamp, mean_and_std, zscore_clamped
from megatron_hds.mixing.worker import OrderedWorker
from megatron_hds.model.gpt import GPTModel
from megatron_hds.optim import build_optimizer
from megatron_hds.parallel.schedules import forward_backward
from megatron_hds.parallel.state import ParallelState
from megatron_hds.training.step import split_means

torch.set_num_threads(1)

CONFIG = dict(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=96, seq_length=16,
              make_vocab_size_divisible_by=16)
PROBED = ["layers.1.mlp.dense_4h_to_h.weight", "layers.0.mlp.dense_4h_to_h.weight",
          "layers.1.mlp.dense_4h_to_h.bias"]
ROWS, SKETCH = 4, 64


def _model(seed=7):
    return GPTModel(ModelConfig(**CONFIG), ParallelState.single("cpu"), seed=seed)


def _micro_batches(config, count, seed=7):
    g = torch.Generator().manual_seed(seed)
    seqs = torch.randint(0, config.vocab_size, (count, 2, config.seq_length + 1), generator=g)
    return [dict(tokens=s[:, :-1], labels=s[:, 1:]) for s in seqs]


class _ReferenceSketch:
    """The probe's hook as it was: (grad x scale) x int8 sign, index_add_ with int32 buckets, and a
    count added to the row's last column per call."""

    def __init__(self, probe: GradientProbe, domains):
        self.buffer = torch.zeros_like(probe.buffer)
        self.domains, self.calls, self.scales = list(domains), [0] * len(probe.named), None
        self.hashes = [(b.to(torch.int32), s) for b, s in probe._hashes]
        for slot, (_, p) in enumerate(probe.named):  # registered after the probe's: called after it
            p.register_hook(self._hook(slot))

    def _hook(self, slot):
        def hook(grad):
            d = self.domains[self.calls[slot]]
            self.calls[slot] += 1
            if d is None:
                return
            if self.scales is not None:
                grad = grad * self.scales[slot]
            bucket, sign = self.hashes[slot]
            self.buffer[d, :-1].index_add_(0, bucket, grad.reshape(-1).float() * sign)
            self.buffer[d, -1] += 1
        return hook


@pytest.mark.parametrize("scales_as", ["none", "list", "function"])
def test_probe_sketch_equals_the_plain_hook_bit_for_bit(scales_as):
    """Several micro-batches per step (the first gradient of a parameter is multiplied in the hook,
    the later ones on the worker), rows revisited, a skipped micro-batch, two steps."""
    model = _model()
    named = select_matrices(model, PROBED)
    probe = GradientProbe(named, ROWS, mode="sketch", sketch_size=SKETCH, seed=3)
    assert probe._tables.offload  # CPU: the scatters run on the worker thread
    g = torch.Generator().manual_seed(1)
    scales = [torch.rand(p.shape, generator=g) * 3 + 0.1 for _, p in named]
    domains = [2, 0, None, 2, 1]
    ref = _ReferenceSketch(probe, domains * 2)
    for step in range(2):
        if scales_as != "none":
            probe.set_scales(scales if scales_as == "list" else (lambda: scales))
            ref.scales = scales
        probe.begin_step(domains)
        model.zero_grad(set_to_none=True)
        forward_backward(model, _micro_batches(model.config, len(domains), seed=step))
        assert torch.equal(probe.buffer, ref.buffer), f"step {step}"
        ref.buffer.zero_()
    if scales_as != "none":
        assert all(s is t for s, t in zip(probe._scales, scales))


@pytest.mark.parametrize("domains", [[1, None], [None, 3, None], [0, 0, 2]])
def test_a_slow_worker_still_reads_each_gradient_before_autograd_adds_the_next(monkeypatch, domains):
    """A first gradient that autograd turns into .grad is read by the worker from .grad: every
    later backward (probed or not) waits for that read before adding into it."""
    from megatron_hds.mixing import sketch_table

    scatter = sketch_table.SketchTables._scatter

    def slow(self, jobs):
        time.sleep(0.05)  # far slower than the backward of the next micro-batch
        scatter(self, jobs)

    monkeypatch.setattr(sketch_table.SketchTables, "_scatter", slow)
    model = _model()
    probe = GradientProbe(select_matrices(model, PROBED), ROWS, mode="sketch", sketch_size=SKETCH, seed=3)
    ref = _ReferenceSketch(probe, domains)
    probe.begin_step(domains)
    model.zero_grad(set_to_none=True)
    forward_backward(model, _micro_batches(model.config, len(domains)))
    assert torch.equal(probe.buffer, ref.buffer)


def test_probe_without_the_worker_gives_the_same_sketch():
    model = _model()
    named = select_matrices(model, PROBED)
    probes = [GradientProbe(named, ROWS, mode="sketch", sketch_size=SKETCH, seed=3) for _ in range(2)]
    probes[1]._tables.offload = False  # every multiply and scatter inline, as on a GPU without Triton
    for probe in probes:
        probe.begin_step([1, 3, 1])
    forward_backward(model, _micro_batches(model.config, 3))
    assert torch.equal(probes[0].buffer, probes[1].buffer)
    probes[1].remove()
    out = torch.empty(probes[0].buffer.numel(), dtype=torch.float64)
    probes[0].begin_step([0])
    forward_backward(model, _micro_batches(model.config, 1))
    probes[0].export_sketch(out)()  # the share's copy, made on the worker
    assert torch.equal(out, probes[0].local_sketch().reshape(-1).double())


def test_weight_norm_squares_equal_the_reference_kernel():
    model = _model()
    named = select_matrices(model, PROBED[:2])
    tracker = WeightNormTracker(named)
    tracker.snapshot()
    with torch.no_grad():
        for _, p in named:
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 1e-3)
    weights = [p.detach() for _, p in named]
    want = reference.multi_tensor_sum_of_squares(weights + [w.float() - prev for w, prev in
                                                            zip(weights, tracker.previous)])
    assert torch.equal(tracker.local_squares(), want)


def test_adam_preconditioners_equal_the_denominators():
    model = _model()
    optimizer = build_optimizer(model, 1e-3, 0.0, (0.9, 0.95), 1e-8)
    for batch in _micro_batches(model.config, 3):
        model.zero_grad(set_to_none=True)
        forward_backward(model, [batch])
        optimizer.step(1.0)
    params = [p for _, p in select_matrices(model, PROBED)]
    # The plain formula: P^(1/2) = (sqrt(v / correction) + eps)^(-1/2), out of place.
    moments = [optimizer.adam_second_moment(p) for p in params]
    want = [((v / c).sqrt() + eps).view_as(p).rsqrt().to(p.dtype) for (v, c, eps), p in zip(moments, params)]
    got = adam_preconditioners(moments, params)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_mean_std_and_clamp_equal_numpy():
    rng = np.random.default_rng(0)
    for size in (1, 2, 7, 22, 85, 1000):
        for scale in (1e-8, 1.0, 1e6):
            x = rng.standard_normal(size) * scale + rng.standard_normal()
            mean, std = mean_and_std(x)
            assert mean == x.mean() and std == x.std()
            assert np.array_equal(clamp(x / scale, 1.5), np.clip(x / scale, -1.5, 1.5))
            raw = (x - x.mean()) / x.std() if x.std() >= 1e-12 else np.zeros_like(x)
            assert np.array_equal(zscore_clamped(x), np.clip(raw, -3.0, 3.0))
            assert np.array_equal(zscore(x), (x - x.mean()) / x.std() if x.std() > 1e-12 else np.zeros_like(x))
    odd = np.array([1.0, np.nan, -np.inf, 3.0])
    assert np.array_equal(clamp(odd, 2.0), np.clip(odd, -2.0, 2.0), equal_nan=True)


def test_split_means_and_the_transition_check_keep_their_meaning():
    sums = np.array([3.0, 0.0, 5.0, 2.0, 0.0, 0.5])
    means, tokens = split_means(sums)
    assert np.array_equal(means, np.array([1.5, np.nan, 5.0]), equal_nan=True) and tokens.tolist() == [2.0, 0.0, 0.5]
    agent = SACAgent(AgentConfig(batch_size=4), SACConfig(), AgentShape(7, 2))
    s, u = np.zeros(7), np.zeros(2)
    for bad in (np.nan, np.inf, -np.inf, 1e39):
        assert not agent.add_transition(s, u, bad, s) and not agent.add_transition(np.full(7, bad), u, 0.0, s)
    assert agent.add_transition(s, u, 3.0e38, s) and agent.rejected_transitions == 8


def test_deterministic_act_equals_the_full_forward():
    agent = SACAgent(AgentConfig(seed=3), SACConfig(), AgentShape(9, 3))
    states = np.random.default_rng(1).standard_normal((5, 9))
    with torch.no_grad():
        want = agent.action_map.squash(agent.actor(torch.as_tensor(states, dtype=torch.float32))[0]).numpy()
    action, weights = agent.act(states, deterministic=True)
    assert np.array_equal(action, want) and np.array_equal(weights, agent.action_map.weights(want))
    assert agent.act(states[0], deterministic=True, weights=False)[1] is None


def test_ordered_worker_runs_in_order_and_reraises():
    class Owner:
        pass

    owner, seen = Owner(), []
    worker = OrderedWorker("test-worker", owner)
    tickets = [worker.submit(seen.append, i) for i in range(50)]
    worker.wait(tickets[10])
    assert seen[:11] == list(range(11))
    worker.wait()
    assert seen == list(range(50))
    worker.submit(lambda: 1 / 0)
    worker.submit(seen.append, "after")
    with pytest.raises(ZeroDivisionError):
        worker.wait()
    assert seen[-1] == "after"
    worker.wait()  # the error was reported once
    thread = worker._thread
    del owner  # the worker's thread stops with its owner
    thread.join(timeout=10)
    assert not thread.is_alive() and threading.current_thread() is threading.main_thread()



def test_the_last_gradient_is_read_before_the_all_reduce_changes_it(monkeypatch):
    """A parameter with one backward where the step expected three: the worker reads that backward's
    gradient from .grad, and nothing later waits for the read. end_backwards (called by the trainer
    before the gradient all-reduce and clipping) does, so .grad changed after it changes nothing."""
    from megatron_hds.mixing import sketch_table

    scatter = sketch_table.SketchTables._scatter
    monkeypatch.setattr(sketch_table.SketchTables, "_scatter", lambda self, jobs: (time.sleep(0.05), scatter(self, jobs)))
    model = _model()
    probe = GradientProbe(select_matrices(model, PROBED), ROWS, mode="sketch", sketch_size=SKETCH, seed=3)
    ref = _ReferenceSketch(probe, [1])
    probe.begin_step([1, 2, 3])
    model.zero_grad(set_to_none=True)
    forward_backward(model, _micro_batches(model.config, 1))
    probe.end_backwards()
    for _, p in probe.named:
        p.grad.mul_(100.0)  # what the all-reduce and clipping do in place
    assert torch.equal(probe.buffer, ref.buffer)


def test_a_gradient_never_accumulated_into_grad_is_refused_and_forgotten():
    """autograd.grad runs the gradient hooks but never stores .grad, so a read deferred to .grad would
    never happen: end_backwards refuses the step, and the next step starts clean."""
    model = _model()
    probe = GradientProbe(select_matrices(model, PROBED), ROWS, mode="sketch", sketch_size=SKETCH, seed=3)
    probe.begin_step([1, 2])
    batch = _micro_batches(model.config, 1)[0]
    loss = model(tokens=batch["tokens"], labels=batch["labels"]).mean()
    torch.autograd.grad(loss, [p for _, p in probe.named])
    with pytest.raises(RuntimeError, match="fewer"):
        probe.end_backwards()
    domains = [1, 2]
    ref = _ReferenceSketch(probe, domains)
    probe.begin_step(domains)
    model.zero_grad(set_to_none=True)
    forward_backward(model, _micro_batches(model.config, 2))
    probe.end_backwards()
    assert torch.equal(probe.buffer, ref.buffer)  # the refused step's deferred read is gone

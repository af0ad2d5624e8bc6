"""Inter-domain influence from the gradient probes (mixing/influence.py, mixing/collector.py):
per-domain MEAN gradients (a domain's score does not grow with how often it was drawn), no
rounding noise read as signal, the self term kept and measured across disjoint halves, Adam's
preconditioner applied, and the reference alignment scores by hand."""

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from megatron_hds.config import ModelConfig
from megatron_hds.mixing.collector import SignalCollector, adam_preconditioners, half_rows
from megatron_hds.mixing.config import ProbeConfig
from megatron_hds.mixing.influence import (DomainGradients, alignment_scores, held_out_influence_scores,
                                           influence_scores)
from megatron_hds.model.gpt import GPTModel
from megatron_hds.optim import build_optimizer
from megatron_hds.parallel.schedules import forward_backward
from megatron_hds.parallel.state import ParallelState

torch.set_num_threads(1)
CONFIG = dict(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=96, seq_length=16,
              make_vocab_size_divisible_by=16)
NATURAL = np.array([0.5, 0.3, 0.2])


@dataclass
class _Plan:
    """The parts of data.mixture.BatchPlan the collector reads: one sample per micro-batch."""

    micro_batch_domains: np.ndarray
    weights: np.ndarray
    data_parallel_size: int = 1

    @property
    def num_micro_batches(self) -> int:
        return self.micro_batch_domains.size

    def micro_batches_for(self, dp_rank):
        return type("RankBatch", (), {"first": 0})()


def _signals(domains, samples, mode="exact", optimizer_steps=0, model=None):
    """The collector's extra signals for one step whose k-th micro-batch is samples[k] of domains[k]."""
    model = model or GPTModel(ModelConfig(**CONFIG), ParallelState.single("cpu"), seed=3)
    optimizer = build_optimizer(model, 1e-3, 0.0, (0.9, 0.999), 1e-8)
    collector = SignalCollector(model, ParallelState.single("cpu"), ProbeConfig(mode=mode, sketch_size=4096),
                                NATURAL, seed=1, optimizer=optimizer)
    for _ in range(optimizer_steps):  # give Adam second moments, so the probes precondition
        model.zero_grad(set_to_none=True)
        forward_backward(model, [_batch(s) for s in samples])
        collector.before_optimizer_step(optimizer)
        optimizer.step(1.0)
    plan = _Plan(np.asarray(domains), NATURAL)
    collector.begin_step(plan, 0)
    model.zero_grad(set_to_none=True)
    forward_backward(model, [_batch(s) for s in samples])
    return collector.finish(collector.local_share(), plan, step_ok=True), collector


def _batch(tokens):
    tensor = torch.as_tensor(tokens).reshape(1, -1)
    return dict(tokens=tensor[:, :-1], labels=tensor[:, 1:])


def _samples(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, CONFIG["vocab_size"], (CONFIG["seq_length"] + 1,), generator=g) for _ in range(n)]


def test_half_rows_alternate_within_each_domain():
    plan = _Plan(np.array([0, 1, 2, 0, 0, 1, -1, 0]), NATURAL)
    assert half_rows(plan).tolist() == [0, 2, 4, 1, 0, 3, -1, 1]


def test_duplicating_a_domains_micro_batches_leaves_its_scores_unchanged():
    """Domain 0 drawn four times (its two samples twice each) instead of twice: its mean gradient,
    and so every score, is unchanged. Summed gradients made its score grow with its count."""
    x = _samples(6)
    once, _ = _signals([0, 1, 2, 0, 1, 2], [x[0], x[1], x[2], x[3], x[4], x[5]])
    twice, _ = _signals([0, 1, 2, 0, 1, 2, 0, 0], [x[0], x[1], x[2], x[3], x[4], x[5], x[0], x[3]])
    np.testing.assert_allclose(twice["gradients"].mean_gram, once["gradients"].mean_gram, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(twice["alignment"], once["alignment"], atol=1e-5)
    np.testing.assert_allclose(twice["influence"], once["influence"], atol=1e-5)
    assert np.abs(once["alignment"]).max() > 0.1  # the scores are not trivially zero


def test_two_present_domains_score_zero_whatever_the_rounding():
    """r_1 = r_2 in exact arithmetic with two domains; a Gram computed in floating point is not
    bitwise symmetric, and z-scoring its rounding gave +-1."""
    for trial in range(50):
        sketch = torch.randn(2, 4096, dtype=torch.float64, generator=torch.Generator().manual_seed(trial))
        gram = (sketch @ sketch.t()).numpy()
        assert alignment_scores(gram).tolist() == [0.0, 0.0]
        padded = np.zeros((3, 3))
        padded[:2, :2] = gram
        assert alignment_scores(padded, present=np.array([True, True, False])).tolist() == [0.0, 0.0, 0.0]


def test_alignment_scores_hand_computed():
    gram = np.array([[4.0, 2.0, 0.0], [2.0, 9.0, -3.0], [0.0, -3.0, 1.0]])
    # norms 2, 3, 1 (mean 2); off-diagonal row sums 2, -1, -3 -> r = 1, -0.5, -1.5;
    # mean -1/3, population std sqrt(114/108).
    std = math.sqrt(114 / 108)
    want = np.array([4 / 3, -1 / 6, -7 / 6]) / std
    np.testing.assert_allclose(alignment_scores(gram), want, rtol=1e-5)
    np.testing.assert_allclose(alignment_scores(25.0 * gram), want, rtol=1e-5)  # scale-invariant
    # An absent domain (and one with a non-finite row) scores 0 and does not enter the others.
    padded = np.zeros((5, 5))
    padded[:3, :3] = gram
    padded[4, :] = padded[:, 4] = np.nan
    got = alignment_scores(padded, present=np.array([True, True, True, False, True]))
    np.testing.assert_allclose(got, np.r_[want, 0.0, 0.0], rtol=1e-5)
    assert alignment_scores(gram, present=np.array([True, False, False])).tolist() == [0.0, 0.0, 0.0]
    # One domain far above eleven identical ones: z = 11/sqrt(12) > 3 is clamped.
    big = np.eye(12)
    big[0, 1:] = big[1:, 0] = 1.0
    scores = alignment_scores(big)
    assert scores.max() == 3.0 and np.all(scores >= -3.0)


def _gradients_from_halves(halves, counts):
    """DomainGradients of explicit half sums [2D, n] with the given micro-batch counts."""
    halves = np.asarray(halves, dtype=np.float64)
    return DomainGradients(halves @ halves.T, np.asarray(counts, dtype=np.float64))


def test_influence_keeps_the_domains_own_term():
    """Three mutually orthogonal domains: nothing transfers, so the reference alignment (self term
    left out) rates them all 0, but a step on a domain still lowers the natural-mixture loss by
    pi_i ||g_i||^2: the domain with the largest pi_i ||g_i||^2 is the most useful to train on."""
    g = np.diag([1.0, 3.0, 1.0])  # domain 1's gradient is the largest
    halves = np.repeat(g, 2, axis=0)  # each half holds one micro-batch with the domain's mean gradient
    gradients = _gradients_from_halves(halves, [1] * 6)
    assert alignment_scores(gradients.mean_gram, gradients.present).tolist() == [0.0, 0.0, 0.0]
    influence = influence_scores(gradients, NATURAL)  # raw 0.5, 0.3 * 9, 0.2
    assert np.argmax(influence) == 1 and influence[0] > influence[2]


def test_the_self_term_is_measured_across_halves_not_inflated_by_noise():
    """Two halves with independent noise around the same mean: the cross-half product estimates
    ||mean||^2, while the whole-sum product would add the noise's variance."""
    rng = np.random.default_rng(0)
    mean = np.array([1.0, 0.0, 0.0, 0.0])
    halves = mean + rng.normal(size=(4000, 2, 4))  # unit noise per coordinate
    estimates = [DomainGradients(h @ h.T, np.array([1.0, 1.0])) for h in halves]
    cross = np.mean([e.cross_self[0] for e in estimates])
    whole = np.mean([e.mean_gram[0, 0] for e in estimates])
    # ||mean||^2 = 1 (the estimate's standard error is about 0.04); the mean of two halves
    # carries noise of variance 1/2 per coordinate, which adds 4 x 1/2 = 2.
    assert abs(cross - 1.0) < 0.15 and abs(whole - 3.0) < 0.2


def test_a_domain_seen_once_has_no_cross_half_term_and_is_not_scored():
    halves = [[1, 0], [0, 0], [0, 1], [0, 1], [1, 1], [1, 1]]
    gradients = _gradients_from_halves(halves, [1, 0, 1, 1, 1, 1])
    assert gradients.split.tolist() == [False, True, True]
    assert influence_scores(gradients, NATURAL)[0] == 0.0


def test_domains_not_drawn_this_step_leave_the_drawn_ones_scored():
    """Fewer micro-batches than domains (the demo's 2 of 8 samples for 7 domains): the undrawn
    domains are absent, the drawn ones present and scored as if the others did not exist."""
    halves = [[1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 2, 1], [0, 2, 0]]
    gradients = _gradients_from_halves(halves, [1, 1, 0, 0, 1, 1])
    assert gradients.present.tolist() == [True, False, True]
    assert gradients.split.tolist() == [True, False, True]
    alone = _gradients_from_halves([halves[i] for i in (0, 1, 4, 5)], [1] * 4)
    np.testing.assert_array_equal(influence_scores(gradients, NATURAL)[[0, 2]],
                                  influence_scores(alone, NATURAL[[0, 2]] / NATURAL[[0, 2]].sum()))
    assert influence_scores(gradients, NATURAL)[1] == 0.0 and np.any(influence_scores(gradients, NATURAL) != 0)


def test_a_memorised_domain_gains_influence_from_its_training_halves_but_not_from_held_out_gradients():
    """Three domains with orthogonal, equally large generalising gradients; domain 2's training
    samples repeat, so both of its training halves also carry a shared memorising component m,
    which its validation samples lack. The training-side self term <g_2^A, g_2^B> counts ||m||^2 and
    ranks domain 2 first; measured against the validation gradients it is last (its pi is least)."""
    true = np.eye(3, 4)
    memorised = 3.0 * np.eye(4)[3]
    training = true.copy()
    training[2] += memorised
    halves = np.repeat(training, 2, axis=0)  # one micro-batch per half
    gradients = _gradients_from_halves(halves, [1] * 6)
    assert np.argmax(influence_scores(gradients, NATURAL)) == 2
    held_out = held_out_influence_scores(gradients, halves @ true.T, np.ones(3), NATURAL)
    assert np.argmin(held_out) == 2 and np.argmax(held_out) == 0  # raw pi_i ||g_i||^2: 0.5, 0.3, 0.2
    # Counts divide: the same validation gradient summed over two micro-batches scores the same.
    assert np.allclose(held_out_influence_scores(gradients, 2 * halves @ true.T, np.full(3, 2.0), NATURAL), held_out)
    # A validation domain without a micro-batch drops out of the target (here domain 0's): raw 0, 0.6, 0.4.
    only = held_out_influence_scores(gradients, halves @ true.T, np.array([0.0, 1.0, 1.0]), NATURAL)
    assert only[0] < only[2] < only[1]
    with pytest.raises(ValueError, match="do not match 3 domains"):
        held_out_influence_scores(gradients, halves @ true[:2].T, np.ones(2), NATURAL)


def test_the_collector_measures_training_gradients_against_a_validation_pass():
    """begin_step(held_out=...) attributes the first backwards to validation rows: the influence is the
    by-hand <g_i, sum_k pi_k h_k> from each micro-batch's own gradient, and a step without a
    validation pass has no influence (only the alignment)."""
    model = GPTModel(ModelConfig(**CONFIG), ParallelState.single("cpu"), seed=3)
    collector = SignalCollector(model, ParallelState.single("cpu"), ProbeConfig(mode="exact"), NATURAL, seed=1,
                                held_out_rows=True)
    train, valid = _samples(6, seed=1), _samples(3, seed=2)
    plan = _Plan(np.array([0, 1, 2, 0, 1, 2]), NATURAL)

    def own_gradient(sample):
        model.zero_grad(set_to_none=True)
        forward_backward(model, [_batch(sample)])
        return torch.cat([p.grad.reshape(-1) for _, p in collector.probe.named]).double().numpy()
    g = np.array([own_gradient(x) for x in train])
    h = np.array([own_gradient(x) for x in valid])
    mean_train = (g[:3] + g[3:]) / 2
    expected = mean_train @ (NATURAL @ h)

    collector.begin_step(plan, 0, held_out=(np.ones(3), [0, 1, 2]))
    model.zero_grad(set_to_none=True)
    forward_backward(model, [_batch(x) for x in valid], loss_fn=lambda out, b: out.mean() * 3)
    collector.end_backwards()
    model.zero_grad(set_to_none=True)
    forward_backward(model, [_batch(x) for x in train])
    extra = collector.finish(collector.local_share(), plan, step_ok=True)
    z = (expected - expected.mean()) / expected.std()
    assert np.allclose(extra["influence"], z, atol=1e-6)
    # The probes' hooks leave the gradients as autograd made them: the training micro-batches' mean.
    grads = torch.cat([p.grad.reshape(-1) for _, p in collector.probe.named]).double().numpy()
    assert np.allclose(grads, g.mean(axis=0), rtol=1e-4, atol=1e-7)  # (float32 sums in another order)

    collector.begin_step(plan, 0)
    model.zero_grad(set_to_none=True)
    forward_backward(model, [_batch(x) for x in train])
    extra = collector.finish(collector.local_share(), plan, step_ok=True)
    assert "influence" not in extra and "alignment" in extra


def test_probes_measure_inner_products_in_adams_metric():
    """After Adam steps the probes scale gradients by P^(1/2), P = 1 / (sqrt(v_hat) + eps): the
    Gram holds <P g_i, g_j>, which differs from the raw one, and equals it computed by hand."""
    x = _samples(4, seed=5)
    raw, _ = _signals([0, 1, 0, 1], x, optimizer_steps=0)
    pre, collector = _signals([0, 1, 0, 1], x, optimizer_steps=2)
    assert collector.probe._scales is not None
    ratio = pre["gradients"].mean_gram[0, 1] / raw["gradients"].mean_gram[0, 1]
    assert not math.isclose(ratio, 1.0, rel_tol=1e-3)
    scales = collector.probe._scales
    assert all(torch.all(s > 0) for s in scales)
    with pytest.raises(ValueError, match="scales for"):
        collector.probe.set_scales(scales[:1])


@pytest.mark.parametrize("mode", ["exact", "sketch"])
def test_the_preconditioner_is_adams_state_as_the_step_starts(mode):
    """P comes from the second moments the last optimizer step left (what a checkpoint holds, so a
    resumed run measures what the straight one did): the Gram equals the by-hand <P g_0, g_1> of the
    domains' mean gradients with that P. One step staler, it did not, and a resumed run's first
    step measured with no P at all."""
    model = GPTModel(ModelConfig(**CONFIG), ParallelState.single("cpu"), seed=3)
    x = _samples(4, seed=5)
    extra, collector = _signals([0, 1, 0, 1], x, mode=mode, optimizer_steps=2, model=model)
    params = [p for _, p in collector.probe.named]
    scales = adam_preconditioners([collector._optimizer.adam_second_moment(p) for p in params], params)
    collector.probe.remove()

    def scaled_gradient(sample):
        model.zero_grad(set_to_none=True)
        forward_backward(model, [_batch(sample)])
        return torch.cat([(p.grad * s).reshape(-1) for p, s in zip(params, scales)]).double()
    g = [scaled_gradient(sample) for sample in x]
    by_hand = float(torch.dot((g[0] + g[2]) / 2, (g[1] + g[3]) / 2))
    assert extra["gradients"].mean_gram[0, 1] == pytest.approx(by_hand, rel=1e-4 if mode == "exact" else 0.3)


class _Dataset:
    """Stands in for a GPTDataset: sample i's quality is values[i]."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.float64)

    def __len__(self):
        return self.values.size

    def samples_quality(self, indices, quality):
        return self.values[np.asarray(indices)]


def test_sample_quality_is_measured_within_each_domain():
    """Domain 0's text is far more diverse than domain 1's: drawn at their typical quality, both
    score about 0 (a domain is never paid for what it is); better samples of a domain score > 0."""
    rng = np.random.default_rng(0)
    high, low = 400 + rng.normal(size=2000) * 20, 30 + rng.normal(size=2000) * 5
    collector = SignalCollector.__new__(SignalCollector)
    collector.train_sets = [_Dataset(high), _Dataset(low)]
    collector.quality = [None, None]
    collector.quality_reference = [SignalCollector._reference(d, None, seed=1) for d in collector.train_sets]

    class Plan:
        def __init__(self, pairs):
            self._pairs = np.asarray(pairs)

        def pairs(self):
            return self._pairs

    typical = collector._domain_quality(Plan([[0, i] for i in range(0, 2000, 50)] + [[1, i] for i in range(7, 2000, 50)]))
    assert np.all(np.abs(typical) < 0.5)
    best = [[0, int(i)] for i in np.argsort(high)[-5:]] + [[1, int(i)] for i in np.argsort(low)[:5]]
    scores = collector._domain_quality(Plan(best))
    assert scores[0] > 1.5 and scores[1] < -1.5  # domain 0's best samples, domain 1's worst

"""Tests of the dynamic mixture sampler (megatron_hds/data/mixture.py)."""

import io

import numpy as np
import pytest
import torch

from megatron_hds.data.mixture import STATE_VERSION, BatchPlan, MixtureConfig, MixtureSampler

# Chi-square tests reject at this p-value. Seeds are fixed, so each test is deterministic;
# a correct sampler passes with probability 1 - P_THRESHOLD per (seed, test), and the
# power tests below show the same statistic rejects wrong weights by a wide margin.
P_THRESHOLD = 1e-3

NAMES = ("web", "code", "books", "math", "wiki")
SIZES = (97, 41, 13, 230, 5)


def make(layout="single_domain", gbs=24, mbs=2, dp=3, seed=7, floor=0.0, names=NAMES, sizes=SIZES):
    return MixtureSampler(
        MixtureConfig(
            domain_names=names,
            domain_sizes=sizes,
            global_batch_size=gbs,
            micro_batch_size=mbs,
            data_parallel_size=dp,
            seed=seed,
            layout=layout,
            weight_floor=floor,
        )
    )


def chi_square_p(observed, expected):
    """Pearson chi-square p-value with len-1 degrees of freedom (cells with expected 0 must be empty)."""
    observed = np.asarray(observed, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    keep = expected > 0
    assert observed[~keep].sum() == 0
    stat = float((((observed - expected) ** 2)[keep] / expected[keep]).sum())
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64)))


def random_weights(rng, d):
    return rng.dirichlet(np.full(d, 0.7))


def roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ----- purity, ranks, DP slices -----------------------------------------------------


def test_plan_is_pure_and_does_not_move_state():
    s = make(layout="hds")
    rng = np.random.default_rng(0)
    for step in range(5):
        s.next_batch(step, random_weights(rng, len(NAMES)))
    before = (s.step, s.consumed, s.weight_history)
    w = random_weights(rng, len(NAMES))
    p1, p2 = s.plan(5, w), s.plan(5, w)
    assert p1 == p2
    assert s.step == before[0]
    np.testing.assert_array_equal(s.consumed, before[1])
    np.testing.assert_array_equal(s.weight_history, before[2])
    assert not p1.indices.flags.writeable and not p1.domains.flags.writeable
    # The step and the weights given (not the sampler's counter) decide the draws.
    assert not np.array_equal(s.plan(6, w).domains, p1.domains)
    assert not np.array_equal(s.plan(5, np.roll(w, 1)).domains, p1.domains)
    fresh = make(layout="hds")
    fresh.load_state_dict(s.state_dict())
    assert fresh.plan(5, w) == p1


def test_identical_plans_on_independent_ranks_and_dp_slices_partition():
    dp = 3
    ranks = [make(layout=layout, gbs=36, mbs=2, dp=dp) for layout in ("single_domain",) * dp]
    rng = np.random.default_rng(1)
    for step in range(30):
        w = random_weights(rng, len(NAMES))
        plans = [r.next_batch(step, w) for r in ranks]
        assert all(p == plans[0] for p in plans[1:])
        p = plans[0]
        slices = [plans[r].micro_batches_for(r) for r in range(dp)]
        assert [sl.first for sl in slices] == [0, 6, 12]
        assert all(sl.domains.shape == (6, 2) for sl in slices)
        np.testing.assert_array_equal(np.concatenate([sl.domains for sl in slices]), p.domains)
        np.testing.assert_array_equal(np.concatenate([sl.indices for sl in slices]), p.indices)
        assert sum(len(list(sl)) for sl in slices) == p.num_micro_batches


def test_micro_batches_for_rejects_bad_rank():
    p = make().plan(0, np.ones(len(NAMES)))
    with pytest.raises(ValueError, match=r"dp_rank must be in \[0, 3\), got 3"):
        p.micro_batches_for(3)
    with pytest.raises(ValueError, match="data_parallel_size 5"):
        p.micro_batches_for(0, data_parallel_size=5)


# ----- counts follow the weights ----------------------------------------------------


@pytest.mark.parametrize("layout", ["single_domain", "mixed", "hds"])
def test_counts_follow_fixed_weights(layout):
    d = len(NAMES)
    w = np.array([0.4, 0.25, 0.2, 0.1, 0.05])
    s = make(layout=layout, gbs=64, mbs=4, dp=2)
    obs = np.zeros(d)
    steps = 400
    for step in range(steps):
        p = s.next_batch(step, w)
        if layout == "mixed":  # every sample drawn i.i.d.
            obs += p.domain_sample_counts
        elif layout == "single_domain":  # every micro-batch drawn i.i.d.
            obs += np.bincount(p.micro_batch_domains, minlength=d)
        else:  # hds: first D micro-batches fixed, the rest i.i.d.
            np.testing.assert_array_equal(p.micro_batch_domains[:d], np.arange(d))
            obs += np.bincount(p.micro_batch_domains[d:], minlength=d)
    assert chi_square_p(obs, obs.sum() * w) > P_THRESHOLD
    # Power: the same statistic rejects a mildly different weight vector.
    wrong = np.array([0.35, 0.3, 0.2, 0.1, 0.05])
    assert chi_square_p(obs, obs.sum() * wrong) < P_THRESHOLD


def test_counts_follow_weights_changing_every_step():
    d = len(NAMES)
    s = make(gbs=48, mbs=2, dp=2, seed=11)
    rng = np.random.default_rng(2)
    a, b = np.array([0.5, 0.2, 0.15, 0.1, 0.05]), np.array([0.05, 0.1, 0.15, 0.2, 0.5])
    obs = {0: np.zeros(d), 1: np.zeros(d)}
    obs_all, exp_all = np.zeros(d), np.zeros(d)
    for step in range(600):
        if step % 3 == 2:  # a fresh random vector every third step
            w = random_weights(rng, d)
        else:  # alternate between two opposite regimes
            w = a if step % 3 == 0 else b
        p = s.next_batch(step, w)
        mb = np.bincount(p.micro_batch_domains, minlength=d)
        if step % 3 != 2:
            obs[step % 3] += mb
        obs_all += mb
        exp_all += p.num_micro_batches * p.weights
    # Each regime is an exact multinomial; the pooled test is conservative (sum of
    # multinomials with different p has a smaller variance than the pooled one).
    assert chi_square_p(obs[0], obs[0].sum() * a) > P_THRESHOLD
    assert chi_square_p(obs[1], obs[1].sum() * b) > P_THRESHOLD
    assert chi_square_p(obs_all, exp_all) > P_THRESHOLD
    assert chi_square_p(obs[0], obs[0].sum() * b) < P_THRESHOLD  # regimes are told apart


def test_zero_weight_domain_never_drawn_without_floor():
    s = make(floor=0.0)
    for step in range(50):
        p = s.next_batch(step, [1, 0, 1, 0, 1])
        assert p.domain_sample_counts[1] == 0 and p.domain_sample_counts[3] == 0


# ----- per-domain order, epochs, cursors --------------------------------------------


def test_each_epoch_reads_every_sample_once_and_epochs_are_counted():
    s = make(layout="mixed", gbs=24, mbs=2, dp=3)
    d = len(NAMES)
    streams = [[] for _ in range(d)]
    rng = np.random.default_rng(3)
    for step in range(200):
        p = s.next_batch(step, random_weights(rng, d))
        for dom, idx in p.pairs():  # global order == stream order within a domain
            streams[dom].append(idx)
    for dom, size in enumerate(SIZES):
        st = np.array(streams[dom])
        full = len(st) // size
        assert full >= 2, (NAMES[dom], len(st))
        orders = [st[e * size : (e + 1) * size] for e in range(full)]
        for e, o in enumerate(orders):
            np.testing.assert_array_equal(np.sort(o), np.arange(size))  # a permutation: no repeats
            np.testing.assert_array_equal(o, s.domain_order(dom, e))
        tail = st[full * size :]
        assert len(set(tail.tolist())) == len(tail)  # partial epoch: no repeats either
        if size > 5:
            assert not np.array_equal(orders[0], orders[1])  # reshuffled each epoch
        assert s.epochs[dom] == full and s.cursors[dom] == len(tail)
        assert s.consumed[dom] == len(st)


def test_domain_orders_are_shuffled_and_seed_dependent():
    a, b = make(seed=1, sizes=(5000, 3, 1, 2, 4096)), make(seed=2, sizes=(5000, 3, 1, 2, 4096))
    for dom in (0, 4):
        o = a.domain_order(dom, 0)
        n = len(o)
        np.testing.assert_array_equal(np.sort(o), np.arange(n))
        assert abs(np.corrcoef(o, np.arange(n))[0, 1]) < 0.05  # far from the identity order
        assert np.mean(o == b.domain_order(dom, 0)) < 0.01
        assert np.mean(o == a.domain_order(dom, 1)) < 0.01
    for dom, size in ((1, 3), (2, 1), (3, 2)):  # tiny domains are still bijections
        np.testing.assert_array_equal(np.sort(a.domain_order(dom, 5)), np.arange(size))


def test_changing_weights_keep_cursors_consistent():
    s = make(layout="single_domain", gbs=40, mbs=4, dp=2)
    rng = np.random.default_rng(4)
    total = np.zeros(len(NAMES), dtype=np.int64)
    for step in range(120):
        before = s.consumed
        p = s.next_batch(step, random_weights(rng, len(NAMES)))
        np.testing.assert_array_equal(p.consumed_before, before)
        np.testing.assert_array_equal(p.domain_sample_counts, np.bincount(p.domains.ravel(), minlength=len(NAMES)))
        np.testing.assert_array_equal(s.consumed - before, p.domain_sample_counts)
        assert p.domain_sample_counts.sum() == 40
        total += p.domain_sample_counts
    np.testing.assert_array_equal(s.consumed, total)
    np.testing.assert_array_equal(s.epochs * np.array(SIZES) + s.cursors, total)
    assert s.step == 120 and s.weight_history.shape == (120, len(NAMES))


def test_advance_refuses_stale_or_foreign_plans():
    s = make()
    w = np.ones(len(NAMES))
    p0 = s.plan(0, w)
    with pytest.raises(ValueError, match="plan is for step 3 but the sampler is at step 0"):
        s.advance(s.plan(3, w))
    s.advance(p0)
    with pytest.raises(ValueError, match="step 0 but the sampler is at step 1"):
        s.advance(p0)
    with pytest.raises(ValueError, match="different configuration"):
        s.advance(make(seed=99).plan(1, w))


# ----- HDS layout and floor ---------------------------------------------------------


def test_hds_layout_one_micro_batch_per_domain_first():
    s = make(layout="hds", gbs=32, mbs=2, dp=2)  # 16 micro-batches >= 5 domains
    w = np.array([0.9, 0.1, 0.0, 0.0, 0.0])
    for step in range(20):
        p = s.next_batch(step, w)
        np.testing.assert_array_equal(p.micro_batch_domains[:5], np.arange(5))
        assert set(p.micro_batch_domains[5:].tolist()) <= {0, 1}  # the rest follow the weights
        assert (p.domains == p.micro_batch_domains[:, None]).all()  # single-domain micro-batches


def test_hds_layout_rotates_when_fewer_micro_batches_than_domains():
    s = make(layout="hds", gbs=6, mbs=2, dp=1)  # 3 micro-batches < 5 domains
    seen = np.zeros(len(NAMES), dtype=int)
    for step in range(10):
        p = s.next_batch(step, [1, 0, 0, 0, 0])
        np.testing.assert_array_equal(p.micro_batch_domains, (step * 3 + np.arange(3)) % 5)
        seen += np.bincount(p.micro_batch_domains, minlength=5)
    np.testing.assert_array_equal(seen, np.full(5, 6))  # 30 micro-batches over 5 domains


def test_weight_floor_is_applied_then_renormalised():
    s = make(floor=0.1)
    np.testing.assert_allclose(s.effective_weights([1, 0, 0, 0, 0]), np.array([1, 0.1, 0.1, 0.1, 0.1]) / 1.4)
    np.testing.assert_allclose(s.effective_weights([2, 2, 2, 2, 2]), np.full(5, 0.2))
    # The floor applies to the normalised vector, so scale does not matter.
    np.testing.assert_allclose(s.effective_weights([10, 0, 0, 0, 0]), s.effective_weights([1, 0, 0, 0, 0]))
    obs = np.zeros(5)
    for step in range(300):
        obs += np.bincount(s.next_batch(step, [1, 0, 0, 0, 0]).micro_batch_domains, minlength=5)
    assert (obs[1:] > 0).all()
    assert chi_square_p(obs, obs.sum() * s.effective_weights([1, 0, 0, 0, 0])) > P_THRESHOLD
    np.testing.assert_allclose(s.weight_history[-1], np.array([1, 0.1, 0.1, 0.1, 0.1]) / 1.4, rtol=1e-6)


# ----- checkpointing ----------------------------------------------------------------


@pytest.mark.parametrize("layout", ["single_domain", "hds", "mixed"])
def test_state_dict_round_trip_equals_uninterrupted_run(layout):
    k = 40
    rng = np.random.default_rng(5)
    weights = [random_weights(rng, len(NAMES)) for _ in range(2 * k)]
    ref = make(layout=layout)
    ref_plans = [ref.next_batch(t, weights[t]) for t in range(2 * k)]

    first = make(layout=layout)
    for t in range(k):
        first.next_batch(t, weights[t])
    state = roundtrip(first.state_dict())
    assert state["version"] == STATE_VERSION
    resumed = make(layout=layout)
    resumed.load_state_dict(state)
    assert resumed.step == k
    for t in range(k, 2 * k):
        assert resumed.next_batch(t, weights[t]) == ref_plans[t]
    np.testing.assert_array_equal(resumed.consumed, ref.consumed)
    np.testing.assert_array_equal(resumed.weight_history, ref.weight_history)


def test_resume_with_a_different_dp_size_sees_the_same_global_batches():
    rng = np.random.default_rng(6)
    weights = [random_weights(rng, len(NAMES)) for _ in range(30)]
    a = make(gbs=48, mbs=2, dp=2)
    for t in range(15):
        a.next_batch(t, weights[t])
    b = make(gbs=48, mbs=2, dp=8)
    b.load_state_dict(roundtrip(a.state_dict()))
    for t in range(15, 30):
        pa, pb = a.next_batch(t, weights[t]), b.next_batch(t, weights[t])
        assert pa == pb
        assert pb.micro_batches_for(7).domains.shape == (3, 2)
        np.testing.assert_array_equal(np.concatenate([pb.micro_batches_for(r).indices for r in range(8)]), pa.indices)


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(seed=8), "seed"),
        (dict(sizes=(97, 41, 14, 230, 5)), "domain_sizes"),
        (dict(names=("web", "code", "books", "math", "wikipedia")), "domain_names"),
        (dict(gbs=48), "global_batch_size"),
        (dict(mbs=4), "micro_batch_size"),
        (dict(layout="hds"), "layout"),
        (dict(floor=0.05), "weight_floor"),
    ],
)
def test_mismatched_resume_is_refused_naming_the_field(changes, field):
    a = make()
    a.next_batch(0, np.ones(len(NAMES)))
    b = make(**changes)
    with pytest.raises(ValueError, match=field) as exc:
        b.load_state_dict(a.state_dict())
    assert "cannot resume" in str(exc.value)
    if field == "domain_sizes":
        assert "'books': checkpoint 13, current 14" in str(exc.value)


def test_other_state_version_is_refused():
    state = make().state_dict()
    state["version"] = STATE_VERSION + 1
    with pytest.raises(ValueError, match=f"version {STATE_VERSION + 1}"):
        make().load_state_dict(state)


# ----- validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights, message",
    [
        ([1, 1, 1], r"length 5 .*shape \(3,\)"),
        ([1, np.nan, 1, 1, 1], r"finite; non-finite for \['code'\].*nan"),
        ([1, 1, -0.5, 1, 1], r"non-negative; negative for \['books'\].*-0\.5"),
        ([0, 0, 0, 0, 0], r"positive sum: \[0\., 0\., 0\., 0\., 0\.\]"),
        ("abc", "must be 5 numbers"),
    ],
)
def test_bad_weights_are_rejected_naming_them(weights, message):
    s = make()
    with pytest.raises(ValueError, match=message):
        s.plan(0, weights)
    assert s.step == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sizes=(97, 0, 13, 230, 5)), "domain 'code' has 0 samples"),
        (dict(sizes=(97, 41, 13)), "domain_sizes has 3 entries but there are 5"),
        (dict(gbs=25, mbs=2, dp=3), "global_batch_size 25 is not divisible by micro_batch_size 2 x data_parallel_size 3 = 6"),
        (dict(mbs=0), "micro_batch_size must be a positive integer, got 0"),
        (dict(layout="interleaved"), "layout must be one of single_domain, hds, mixed; got 'interleaved'"),
        (dict(floor=0.3), r"weight_floor must be in \[0, 1/D\] = \[0, 0.2\] for D=5 domains, got 0.3"),
        (dict(floor=float("nan")), "weight_floor must be a finite number"),
        (dict(seed=-1), "seed must be a non-negative integer, got -1"),
        (dict(names=("a", "b", "a", "c", "d")), r"unique; repeated: \['a'\]"),
        (dict(sizes=(97, 41.5, 13, 230, 5)), "domain size of 'code' must be an integer"),
    ],
)
def test_bad_config_is_rejected_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_config_properties_and_plan_shape():
    s = make(gbs=24, mbs=2, dp=3)
    assert s.config.num_micro_batches == 12 and s.config.micro_batches_per_rank == 4
    p = s.plan(0, np.ones(len(NAMES)))
    assert isinstance(p, BatchPlan)
    assert p.domains.shape == p.indices.shape == (12, 2)
    assert p.pairs().shape == (24, 2)
    assert p.domain_sample_counts.shape == (5,) and p.weights.shape == (5,)
    assert ((p.indices >= 0) & (p.indices < np.array(SIZES)[p.domains])).all()


def test_observation_probabilities_follow_the_layout():
    """The probability that a step holds a sample of each domain: 1 for the "hds" layout's probe
    micro-batches, 1 - (1 - w)^n for n independent draws."""
    from megatron_hds.data.mixture import MixtureConfig, MixtureSampler

    weights = np.array([0.6, 0.3, 0.1])

    def sampler(layout, gbs=8, mbs=2):
        return MixtureSampler(MixtureConfig(domain_names=("a", "b", "c"), domain_sizes=(50, 50, 50),
                                            global_batch_size=gbs, micro_batch_size=mbs, data_parallel_size=1,
                                            seed=1, layout=layout))

    np.testing.assert_allclose(sampler("hds").observation_probabilities(0, weights), 1.0)
    np.testing.assert_allclose(sampler("single_domain").observation_probabilities(0, weights), 1 - (1 - weights) ** 4)
    np.testing.assert_allclose(sampler("mixed").observation_probabilities(0, weights), 1 - (1 - weights) ** 8)
    # hds with fewer micro-batches (2) than domains (3): the probes rotate over the steps.
    rotating = sampler("hds", gbs=4)
    assert rotating.observation_probabilities(0, weights).tolist() == [1.0, 1.0, 0.0]
    assert rotating.observation_probabilities(1, weights).tolist() == [1.0, 0.0, 1.0]

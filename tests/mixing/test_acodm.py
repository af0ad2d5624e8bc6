"""AC-ODM: the DDPG core (Polyak targets, exploration noise, weights on the floored
simplex, a contextual bandit with a known optimum, NaN robustness, exact resume) and the
scheduler around it (HDS's timeline, the align reward alone, checkpoint identity)."""

import io
import math
import time

import numpy as np
import pytest
import torch

from megatron_hds.mixing.acodm import ACODMScheduler, DDPGAgent
from megatron_hds.mixing.action_map import weights_from_logits
from megatron_hds.mixing.agent_base import AgentShape
from megatron_hds.mixing.base import MixtureScheduler, StepSignals, lift_to_floor
from megatron_hds.mixing.config import AgentConfig, DDPGConfig, ODMConfig
from megatron_hds.mixing.odm import ODMScheduler
from megatron_hds.mixing.hds import HDSScheduler
from tests.mixing.agents import ddpg_agent, mixing_config

torch.set_num_threads(1)  # tiny ops; extra threads only stall on a shared machine


def small_config(**overrides) -> dict:
    """Settings of a small, fast agent with free logits (tests.mixing.agents.ddpg_agent takes them)."""
    base = dict(state_dim=6, num_domains=3, hidden_sizes=(32, 32), batch_size=8, buffer_size=16, seed=7,
                action_bound=None)
    base.update(overrides)
    return base


def fill(agent: DDPGAgent, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    shape = agent.shape
    for _ in range(n):
        assert agent.add_transition(rng.normal(size=shape.state_dim), rng.normal(size=shape.num_domains),
                                    rng.normal(), rng.normal(size=shape.state_dim))


def test_defaults_and_validation():
    agent = DDPGAgent(AgentConfig(), DDPGConfig(), AgentShape(state_dim=85, num_domains=22))
    cfg, ddpg = agent.agent_config, agent.ddpg_config
    assert (cfg.gamma, cfg.tau, cfg.buffer_size, cfg.batch_size) == (0.95, 0.001, 10_000, 32)
    assert cfg.lr == 1e-4 and cfg.hidden_sizes == (256, 256)
    assert (ddpg.noise_std, ddpg.noise_decay, ddpg.noise_std_min) == (0.1, 1.0, 0.0)
    assert agent.action_map.floor == pytest.approx(0.1 / 22)
    assert AgentConfig(hidden_sizes=[8]).hidden_sizes == (8,)
    for bad, needle in [(dict(gamma=1.0), "gamma"), (dict(tau=0.0), "tau"), (dict(batch_size=20_000), "batch_size"),
                        (dict(weight_floor=0.05), "weight-floor"), (dict(hidden_sizes=()), "hidden_sizes"),
                        (dict(lr=0.0), "lr"), (dict(lr=float("nan")), "lr"),
                        (dict(num_domains=1), "num_domains"), (dict(noise_std=-0.1), "noise_std"),
                        (dict(noise_decay=0.0), "noise_decay"), (dict(noise_std_min=float("inf")), "noise_std_min"),
                        (dict(state_dim=0), "state_dim")]:
        with pytest.raises(ValueError, match=needle):
            ddpg_agent(**{"state_dim": 85, "num_domains": 22, **bad})


def test_targets_move_by_tau():
    tau = 0.25  # large enough that a missing or wrong Polyak step is far above rounding
    agent = ddpg_agent(**small_config(tau=tau))
    fill(agent, 16)
    for _ in range(3):  # targets and online nets differ before the step we check
        agent.update()
    pairs = (("actor", "actor_target"), ("critic", "critic_target"))
    before = {target: [p.detach().clone() for p in getattr(agent, target).parameters()] for _, target in pairs}
    assert agent.update() is not None
    for online, target in pairs:
        for old, new, live in zip(before[target], getattr(agent, target).parameters(),
                                  getattr(agent, online).parameters()):
            assert not torch.equal(old, new)
            torch.testing.assert_close(new, (1 - tau) * old + tau * live.detach(), rtol=1e-6, atol=1e-7)
    assert not any(p.requires_grad for name in ("actor_target", "critic_target")
                   for p in getattr(agent, name).parameters())


def test_weights_stay_on_the_floored_simplex():
    d = 6
    agent = ddpg_agent(**small_config(num_domains=d, noise_std=5.0))  # wide noise: extreme logits
    rng = np.random.default_rng(2)
    states = rng.normal(size=(256, 6)) * 50
    for explore in (True, False):
        u, w = agent.act(states, explore=explore)
        assert u.shape == w.shape == (256, d) and u.dtype == np.float32 and w.dtype == np.float64
        np.testing.assert_allclose(w.sum(-1), 1.0, rtol=0, atol=1e-12)
        assert np.all(w >= agent.action_map.floor)
    single_u, single_w = agent.act(states[0])
    assert single_u.shape == single_w.shape == (d,)
    floored = ddpg_agent(**small_config(num_domains=d, weight_floor=0.15, noise_std=50.0))
    _, w = floored.act(states)
    assert np.all(w >= 0.15) and w.max() <= 1 - (d - 1) * 0.15 + 1e-12
    with pytest.raises(ValueError, match="state_dim=6"):
        agent.act(np.zeros(5))


def test_lift_to_floor_keeps_the_simplex_and_the_floor():
    floor = 0.1 / 3
    np.testing.assert_array_equal(lift_to_floor(np.array([0.5, 0.3, 0.2]), floor), [0.5, 0.3, 0.2])
    for raw in ([0.6, 0.38, 0.02], [0.999, 0.0005, 0.0005], [1.0, 0.0, 0.0], [0.9, 0.1, 0.0]):
        w = lift_to_floor(np.array(raw), floor)
        assert np.all(w >= floor) and w.sum() == pytest.approx(1.0, abs=1e-12)
        big = np.array(raw) >= floor * 2
        np.testing.assert_allclose(w[big] / w[big].sum(), np.array(raw)[big] / np.array(raw)[big].sum())
    np.testing.assert_allclose(lift_to_floor(np.array([0.9, 0.1, 0.0]), 0.2), [0.6, 0.2, 0.2])  # 0.1 pinned on the second pass


def test_exploration_noise_is_gaussian_with_the_configured_decaying_std():
    agent = ddpg_agent(**small_config(num_domains=4, noise_std=0.3))
    states = np.random.default_rng(3).normal(size=(4000, 6))
    mean, _ = agent.act(states, explore=False)
    assert agent.explored_actions == 0  # the deterministic action draws nothing and advances no clock
    noisy, _ = agent.act(states)
    noise = (noisy - mean).astype(np.float64)
    assert abs(noise.mean()) < 0.01 and noise.std() == pytest.approx(0.3, rel=0.03)
    again, _ = agent.act(states, explore=False)
    assert np.array_equal(again, mean)  # mu(s) is deterministic

    decaying = ddpg_agent(**small_config(noise_std=0.4, noise_decay=0.5, noise_std_min=0.06))
    stds = []
    for _ in range(5):
        stds.append(decaying.noise_std)
        decaying.act(np.zeros(6))
    assert stds == pytest.approx([0.4, 0.2, 0.1, 0.06, 0.06])
    silent = ddpg_agent(**small_config(noise_std=0.0))
    s = np.ones(6)
    assert np.array_equal(silent.act(s)[0], silent.act(s, explore=False)[0])


def test_contextual_bandit_reaches_the_known_optimum():
    """Context c in R^2, D=3; the best weights are w*(c) = floor + (1-3 floor) softmax(A c)
    and the reward is -10 ||w - w*(c)||^2 (optimum 0; uniform weights score about -2).
    Claim: after 500 updates the deterministic policy mu scores >= -0.1 on held-out
    contexts, i.e. a mean squared weight error <= 0.01 (5% of uniform's); seeds 0-4 reach
    -0.02 to -0.06. The noisy actions of the last 100 steps average >= -0.3 (exploration
    with std 0.3 on the logits costs about 0.1 here).

    Test-only settings, each because this bandit is small and the test must be fast: gamma 0
    (a bandit has no future), lr 1e-2 for actor and critic (1e-4 would need ~100x the
    updates), exploration std 0.3, batch 128 (variance; costs little), 32-wide networks."""
    d, k = 3, 2
    agent = ddpg_agent(state_dim=k, num_domains=d, gamma=0.0, lr=1e-2, noise_std=0.3, batch_size=128,
                       buffer_size=2000, hidden_sizes=(32, 32), seed=0, action_bound=None)
    env = np.random.default_rng(123)
    a = env.normal(size=(d, k)) * 1.5

    def reward(w, c):
        return -10.0 * ((w - weights_from_logits(c @ a.T, agent.action_map.floor)) ** 2).sum(-1)

    held_out = env.normal(size=(512, k))
    uniform = reward(np.full(d, 1 / d), held_out).mean()
    assert uniform < -1.5
    _, w = agent.act(held_out, explore=False)
    untrained = reward(w, held_out).mean()
    updates, per_step, recent = 500, 4, []
    start = time.perf_counter()
    for step in range(updates):
        c = env.normal(size=(per_step, k))
        u, w = agent.act(c)
        r = reward(w, c)
        for j in range(per_step):
            agent.add_transition(c[j], u[j], r[j], c[j])
        agent.update()
        if step >= updates - 100:
            recent.append(r.mean())
    elapsed = time.perf_counter() - start
    _, w = agent.act(held_out, explore=False)
    score = reward(w, held_out).mean()
    assert agent.updates == updates - (128 // per_step - 1)  # no update until a batch is stored
    assert score >= -0.1, (f"deterministic policy scores {score:.4f} (optimum 0, uniform {uniform:.3f}, "
                           f"untrained {untrained:.3f}) in {elapsed:.1f}s")
    assert np.mean(recent) >= -0.3, f"noisy actions average {np.mean(recent):.4f}"


def test_a_nan_loss_never_reaches_the_optimizer():
    agent = ddpg_agent(**small_config())
    assert agent.update() is None  # nothing to learn from yet
    fill(agent, 16)
    agent.buffer.rewards[:] = np.nan  # what a corrupted buffer would feed the critic
    critic = [p.detach().clone() for p in agent.critic.parameters()]
    out = agent.update()
    assert math.isnan(out["critic_loss"]) and agent.skipped_steps["critic"] == 1
    for old, new in zip(critic, agent.critic.parameters()):
        assert torch.equal(old, new)
    assert not agent.critic_optimizer.state  # Adam never saw a NaN gradient
    assert all(torch.isfinite(p).all() for p in [*agent.critic_target.parameters(), *agent.actor.parameters()])


def drive(agent: DDPGAgent, env: np.random.Generator, steps: int) -> list:
    """Act, store, update; the state follows the weights so actions matter to the data."""
    shape, out = agent.shape, []
    s = env.normal(size=shape.state_dim)
    for _ in range(steps):
        u, w = agent.act(s)
        s2 = np.concatenate([w, env.normal(size=shape.state_dim - shape.num_domains)])
        agent.add_transition(s, u, float(-w @ np.arange(shape.num_domains)), s2)
        out.append((u, agent.update()))
        s = s2
    return out


def test_agent_state_dict_round_trip_continues_exactly():
    cfg = small_config(tau=0.05, noise_std=0.5, noise_decay=0.97)
    reference, resumed = ddpg_agent(**cfg), ddpg_agent(**cfg)
    env_a, env_b = np.random.default_rng(5), np.random.default_rng(5)
    first = drive(reference, env_a, 20)  # the 16-slot buffer wraps: its position matters
    drive(resumed, env_b, 20)
    blob = io.BytesIO()
    torch.save(resumed.state_dict(), blob)
    blob.seek(0)
    fresh = ddpg_agent(**cfg)  # a new process: same config, its own initial weights and RNGs
    global_rng = torch.get_rng_state()
    fresh.load_state_dict(torch.load(blob, weights_only=True))
    after_ref, after_resumed = drive(reference, env_a, 12), drive(fresh, env_b, 12)
    assert torch.equal(global_rng, torch.get_rng_state())  # the agent draws from its own generators
    for (u_ref, log_ref), (u_res, log_res) in zip(after_ref, after_resumed):
        assert np.array_equal(u_ref, u_res)
        assert log_ref == log_res
    assert all(log is not None for _, log in first[7:])
    for name in ("actor", "critic", "actor_target", "critic_target"):
        for p, q in zip(getattr(reference, name).parameters(), getattr(fresh, name).parameters()):
            assert torch.equal(p, q), name
    assert reference.updates == fresh.updates == 32 - 7  # updates start at the 8th transition
    assert reference.noise_std == fresh.noise_std == pytest.approx(0.5 * 0.97 ** 32)


def test_agent_load_refuses_another_configuration():
    state = ddpg_agent(**small_config()).state_dict()
    with pytest.raises(ValueError, match="gamma: checkpoint 0.95 vs this run 0.9"):
        ddpg_agent(**small_config(gamma=0.9)).load_state_dict(state)
    with pytest.raises(ValueError, match="format"):
        ddpg_agent(**small_config()).load_state_dict({"actor": {}})


# ----- the scheduler ------------------------------------------------------------------
D, L = 3, 2
STATE_DIM = 3 * D + 2 * L + 1


def scheduler(initial_weights=(0.6, 0.38, 0.02), state_dim=STATE_DIM, **overrides) -> ACODMScheduler:
    settings = dict(hidden_sizes=(16, 16), batch_size=4, buffer_size=32, seed=11, warmup_fraction=0.1,
                    update_interval=1, action_bound=None)
    settings.update(overrides)
    return ACODMScheduler(list(initial_weights), L, 100, mixing_config(**settings), AgentShape(state_dim, D))


def signals(step: int, weights: np.ndarray, alignment=None) -> StepSignals:
    """Synthetic measurements of step `step`, a function of the step and the weights used."""
    rng = np.random.default_rng(1000 + step)
    samples = np.floor(weights * 64).astype(np.int64)
    loss = 3.0 - 0.01 * step + rng.normal(size=D) * 0.1
    loss[samples == 0] = np.nan
    return StepSignals(iteration=step, train_iters=100, weights=np.asarray(weights, dtype=np.float64),
                   domain_loss=loss, domain_tokens=samples * 128, domain_samples=samples,
                   loss=float(np.nanmean(loss)),
                   extra={"alignment": rng.normal(size=D) if alignment is None else alignment,
                          "weight_norms": 10.0 + 0.01 * step + rng.normal(size=L) * 0.001,
                          "weight_change_norms": np.abs(rng.normal(size=L)) * 0.01})


def run(sched: ACODMScheduler, first: int, last: int, weights: np.ndarray) -> tuple[list, np.ndarray]:
    out = []
    for step in range(first, last + 1):
        weights = sched.observe(signals(step, weights))
        out.append((weights.copy(), sched.last_reward()))
    return out, weights


def test_scheduler_warms_up_on_odm_weights_and_clones_them_then_acts_on_the_align_reward():
    """The reference warm-up: ODM's smoothed-mean weighter chooses the weights, the actor learns
    to reproduce them (behaviour cloning) and the critic learns from those transitions; then the
    agent acts, with exploration noise, paid the alignment reward."""
    sched = scheduler()
    assert isinstance(sched, MixtureScheduler) and sched.name == "acodm"
    floor = sched.agent.action_map.floor
    initial = sched.initial_weights()
    # 0.02 is raised to the floor 1/30 and the others scaled down to make room.
    np.testing.assert_allclose(initial, [0.6 * (1 - floor) / 0.98, 0.38 * (1 - floor) / 0.98, floor], rtol=1e-12)
    assert sched.last_reward() is None and sched.warmup_steps == 10
    odm = ODMScheduler(D, ODMConfig(variant="released", smoothing=0.5), initial_weights=initial)
    weights = initial
    for step in range(1, 10):
        sig = signals(step, weights)
        weights = sched.observe(sig)
        np.testing.assert_allclose(weights, lift_to_floor(odm.observe(sig), floor), rtol=1e-9)  # ODM plays
        log = sched.last_reward()
        assert log["align"] == pytest.approx(float(np.dot(sig.domain_samples / sig.domain_samples.sum(),
                                                          sig.extra["alignment"])))
        assert log["total"] == log["align"] and "quality" not in log and "norm" not in log
    assert sched.agent.updates > 0  # the warm-up already trains actor and critic
    # The stored actions are ODM's: cloning them pulls the actor to ODM's mixture.
    played = weights_from_logits(sched.agent.buffer.actions[1:9], floor)
    assert not np.allclose(played, initial, atol=1e-3)
    for step in range(10, 30):
        sig = signals(step, weights)
        weights = sched.observe(sig)
        log = sched.last_reward()
        assert weights.shape == (D,) and np.all(weights >= floor) and abs(weights.sum() - 1) < 1e-12
        assert {"critic_loss", "actor_loss", "q", "noise_std"} <= set(log)
        assert all(math.isfinite(v) for v in log.values())
    assert sched.skipped_transitions == 0

    # A NaN alignment never reaches the buffer; it is counted and the run goes on.
    size = len(sched.agent.buffer)
    weights = sched.observe(signals(30, weights, alignment=np.array([np.nan, 0.0, 1.0])))
    log = sched.last_reward()
    assert math.isnan(log["align"]) and log["skipped_transitions"] == 1.0 and sched.skipped_transitions == 1
    assert len(sched.agent.buffer) == size and np.all(weights >= floor) and abs(weights.sum() - 1) < 1e-12


def test_behaviour_cloning_brings_the_actor_to_the_warm_up_policy():
    """With a constant reward the critic says nothing; the cloning term alone moves the actor's
    deterministic action to the one that was played."""
    agent = ddpg_agent(**small_config(noise_std=0.0, lr=1e-2))
    target = np.array([1.0, -0.5, 0.2], dtype=np.float32)
    states = np.random.default_rng(0).normal(size=(16, 6))
    for s in states:
        agent.add_transition(s, target, 1.0, s)
    for _ in range(200):
        agent.update(bc_weight=1.0)
    actions, _ = agent.act(states, explore=False)
    np.testing.assert_allclose(actions, np.tile(target, (16, 1)), atol=0.1)


@pytest.mark.parametrize("overlap", [True, False], ids=["overlapped", "synchronous"])
def test_scheduler_update_interval_holds_weights_between_updates(overlap):
    sched = scheduler(warmup_fraction=0.0, update_interval=3, overlap_update=overlap)
    out, _ = run(sched, 1, 12, sched.initial_weights())
    initial = sched.initial_weights()
    for step, (weights, _) in enumerate(out, start=1):
        previous = initial if step == 1 else out[step - 2][0]
        assert np.array_equal(weights, previous) != (step % 3 == 0), step  # changes exactly when it acts
    sched.wait_for_update()  # (an overlapped update of step 12 may still be running)
    assert sched.agent.updates == 3  # steps 3, 6, 9, 12 act; the batch of 4 is there from step 4, so 6, 9, 12 update


@pytest.mark.parametrize("overlap", [True, False], ids=["overlapped", "synchronous"])
def test_scheduler_state_dict_round_trip_gives_identical_weights(overlap):
    reference = scheduler(overlap_update=overlap)
    full, _ = run(reference, 1, 40, reference.initial_weights())

    first = scheduler(overlap_update=overlap)
    part, weights = run(first, 1, 25, first.initial_weights())
    blob = io.BytesIO()
    torch.save(first.state_dict(), blob)
    blob.seek(0)
    fresh = scheduler(overlap_update=overlap)
    fresh.load_state_dict(torch.load(blob, weights_only=True))
    rest, _ = run(fresh, 26, 40, weights)
    assert len(part + rest) == len(full)
    for (w_ref, log_ref), (w_res, log_res) in zip(full, part + rest):
        assert np.array_equal(w_ref, w_res)
        assert log_ref.keys() == log_res.keys()
        assert all(log_ref[k] == log_res[k] or (math.isnan(log_ref[k]) and math.isnan(log_res[k])) for k in log_ref)
    fresh.wait_for_update(), reference.wait_for_update()  # (an overlapped last update may still be running)
    assert fresh.agent.updates == reference.agent.updates == 40 - 4 + 1  # from the 4th transition (a batch) on


def test_scheduler_refuses_another_schedulers_state_and_a_mismatch():
    hds = HDSScheduler([0.5, 0.3, 0.2], L, 100, mixing_config(hidden_sizes=(8,)))
    with pytest.raises(ValueError, match="'hds'.*not 'acodm'"):
        scheduler().load_state_dict(hds.state_dict())
    with pytest.raises(ValueError, match="warm-up 10 steps"):
        scheduler(warmup_fraction=0.2).load_state_dict(scheduler().state_dict())
    with pytest.raises(ValueError, match="state_dim 13"):
        scheduler(state_dim=13)
    with pytest.raises(ValueError, match="update_interval"):
        scheduler(update_interval=0)
    with pytest.raises(ValueError, match="initial weights"):
        scheduler(initial_weights=[1.0, 0.0])

"""The SAC core of HDS: log-probabilities, Polyak targets, weights on the floored simplex,
a contextual bandit with a known optimum, NaN robustness and exact resume."""

import copy
import io
import math
import time

import numpy as np
import pytest
import torch

from megatron_hds.mixing.action_map import weights_from_logits
from megatron_hds.mixing.agent_base import AgentShape
from megatron_hds.mixing.config import AgentConfig, SACConfig
from megatron_hds.mixing.sac import SACAgent
from tests.mixing.agents import ddpg_agent, sac_agent
from tests.mixing.test_acodm import small_config as acodm_small_config

torch.set_num_threads(1)  # tiny ops; extra threads only stall on a shared machine


def small_config(**overrides) -> dict:
    """Settings of a small, fast agent (tests.mixing.agents.sac_agent takes them)."""
    # The formula tests were written for free logits and the common SAC log-std bound.
    base = dict(state_dim=6, num_domains=3, hidden_sizes=(32, 32), batch_size=8, buffer_size=16, seed=7,
                log_std_max=2.0, action_bound=None)
    base.update(overrides)
    return base


def fill(agent: SACAgent, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    shape = agent.shape
    for _ in range(n):
        assert agent.add_transition(rng.normal(size=shape.state_dim), rng.normal(size=shape.num_domains),
                                    rng.normal(), rng.normal(size=shape.state_dim))


def test_defaults_are_the_reference_values_and_validated():
    agent = SACAgent(AgentConfig(), SACConfig(), AgentShape(state_dim=85, num_domains=22))
    cfg = agent.agent_config
    assert (cfg.gamma, cfg.tau, cfg.buffer_size, cfg.batch_size, cfg.lr) == (0.95, 0.001, 10_000, 32, 1e-4)
    assert agent.entropy_target == -22.0 and agent.sac_config.log_alpha_init == 0.0
    assert agent.action_map.floor == pytest.approx(0.1 / 22)
    assert cfg.hidden_sizes == (256, 256) and agent.sac_config.encoder == "mlp"
    for bad, needle in [(dict(gamma=1.0), "gamma"), (dict(tau=0.0), "tau"), (dict(batch_size=20_000), "batch_size"),
                        (dict(weight_floor=0.05), "weight-floor"), (dict(encoder="cnn"), "encoder"),
                        (dict(hidden_sizes=()), "hidden_sizes"), (dict(log_std_min=3.0), "log_std_min"),
                        (dict(lr=0.0), "lr"), (dict(num_domains=1), "num_domains"),
                        (dict(encoder="domain_tokens", state_dim=60), "domain_tokens")]:
        with pytest.raises(ValueError, match=needle):
            sac_agent(**{"state_dim": 85, "num_domains": 22, **bad})


def test_log_prob_matches_hand_computed_gaussian():
    agent = sac_agent(**small_config(num_domains=5))
    rng = np.random.default_rng(1)
    states = rng.normal(size=(16, 6)).astype(np.float32)
    logits = (rng.normal(size=(16, 5)) * 3).astype(np.float32)
    with torch.no_grad():
        mean, log_std = (t.double().numpy() for t in agent.actor(torch.from_numpy(states)))
    std = np.exp(log_std)
    by_hand = (-0.5 * ((logits - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)).sum(-1)
    got = agent.log_prob(states, logits)
    np.testing.assert_allclose(got, by_hand, rtol=1e-5, atol=1e-4)
    normal = torch.distributions.Normal(torch.from_numpy(mean), torch.from_numpy(std))
    np.testing.assert_allclose(got, normal.log_prob(torch.from_numpy(logits).double()).sum(-1).numpy(),
                               rtol=1e-5, atol=1e-4)
    assert agent.log_prob(states[3], logits[3]) == pytest.approx(got[3], rel=1e-6)
    np.testing.assert_allclose(agent.entropy(states), normal.entropy().sum(-1).numpy(), rtol=1e-5, atol=1e-5)

    # Entropy is E[-log pi]: a Monte Carlo estimate from the agent's own samples agrees,
    # and the density peaks at the mean.
    one = np.repeat(states[:1], 4000, axis=0)
    samples, _ = agent.act(one)
    mc = -agent.log_prob(one, samples).mean()
    assert mc == pytest.approx(agent.entropy(states[0]), abs=0.15)
    assert agent.log_prob(states[0], mean[0]) > agent.log_prob(states[0], mean[0] + 3 * std[0])
    # Narrower Gaussians have lower entropy (negative below std = 1/sqrt(2 pi e) per dimension).
    narrow = sac_agent(**small_config(num_domains=5, log_std_min=-5.0, log_std_max=-3.0))
    wide = sac_agent(**small_config(num_domains=5, log_std_min=0.0, log_std_max=1.0))
    assert np.all(narrow.entropy(states) < 0) and np.all(wide.entropy(states) > 0)


def test_targets_move_by_tau():
    tau = 0.25  # large enough that a missing or wrong Polyak step is far above rounding
    agent = sac_agent(**small_config(tau=tau))
    fill(agent, 16)
    for _ in range(3):  # targets and online nets differ before the step we check
        agent.update()
    before = {name: [p.detach().clone() for p in getattr(agent, name).parameters()]
              for name in ("q1_target", "q2_target")}
    assert agent.update() is not None
    for online, target in (("q1", "q1_target"), ("q2", "q2_target")):
        for old, new, live in zip(before[target], getattr(agent, target).parameters(),
                                  getattr(agent, online).parameters()):
            assert not torch.equal(old, new)
            torch.testing.assert_close(new, (1 - tau) * old + tau * live.detach(), rtol=1e-6, atol=1e-7)


def test_losses_follow_the_sac_formulas():
    """Recompute one update's losses from the same minibatch and noise: the Bellman target
    r + gamma (min(Q1', Q2')(s', u') - alpha log pi(u'|s')), the twin MSE, the actor's
    E[alpha log pi - min Q] on the freshly stepped critics, and the temperature loss."""
    agent = sac_agent(**small_config(gamma=0.9, log_alpha_init=0.3, tau=0.1))
    fill(agent, 16)
    agent.update()  # targets differ from the online critics from here on
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = agent.rng.bit_generator.state
    noise = torch.Generator()
    noise.set_state(agent.generator.get_state())
    idx = rng.integers(0, len(agent.buffer), size=agent.agent_config.batch_size)
    buf = agent.buffer
    s, u, r, s2 = (torch.from_numpy(x[idx]) for x in (buf.states, buf.actions, buf.rewards, buf.next_states))
    log_alpha = agent.log_alpha.detach().clone()
    alpha = log_alpha.exp()
    assert float(alpha) == pytest.approx(math.exp(0.3), rel=1e-3)  # one Adam step (lr 1e-4) from the init

    def sample(actor, states):
        mean, log_std = actor(states)
        draw = mean + log_std.exp() * torch.randn(mean.shape, generator=noise)
        return draw, torch.distributions.Normal(mean, log_std.exp()).log_prob(draw).sum(-1)

    with torch.no_grad():
        u2, logp2 = sample(agent.actor, s2)
        y = r + 0.9 * (torch.min(agent.q1_target(s2, u2), agent.q2_target(s2, u2)) - alpha * logp2)
        critic = ((agent.q1(s, u) - y) ** 2).mean() + ((agent.q2(s, u) - y) ** 2).mean()
        actor_before = copy.deepcopy(agent.actor)
    log = agent.update()
    with torch.no_grad():
        u_new, logp = sample(actor_before, s)
        q_new = torch.min(agent.q1(s, u_new), agent.q2(s, u_new))  # the critics after their step
        actor = (alpha * logp - q_new).mean()
        temperature = -(log_alpha * (logp + agent.entropy_target)).mean()
    assert log["critic_loss"] == pytest.approx(float(critic), rel=1e-5)
    assert log["actor_loss"] == pytest.approx(float(actor), rel=1e-5, abs=1e-6)
    assert log["alpha_loss"] == pytest.approx(float(temperature), rel=1e-5)
    assert log["alpha"] < float(alpha)  # entropy above the target -D: the temperature falls


def test_weights_stay_on_the_floored_simplex():
    d = 6
    agent = sac_agent(**small_config(num_domains=d, log_std_min=0.0, log_std_max=2.0))  # wide: extreme samples
    rng = np.random.default_rng(2)
    states = rng.normal(size=(256, 6)) * 50
    for deterministic in (False, True):
        u, w = agent.act(states, deterministic=deterministic)
        assert u.shape == w.shape == (256, d) and u.dtype == np.float32 and w.dtype == np.float64
        np.testing.assert_allclose(w.sum(-1), 1.0, rtol=0, atol=1e-12)
        assert np.all(w >= agent.action_map.floor)
    single_u, single_w = agent.act(states[0])
    assert single_u.shape == single_w.shape == (d,)
    extreme = np.array([[1e30, -1e30, 0, 0, 0, 0], [1e4, 1e4, 1e4, -1e4, 3, 0], [-1e38] * 6, [0.0] * 6,
                        [700.0, -700.0, 80, 1e-30, 0, 0]])
    for floor in (0.0, 0.1 / d, 0.16):
        w = weights_from_logits(extreme, floor)
        assert np.all(np.isfinite(w)) and np.all(w >= floor)
        np.testing.assert_allclose(w.sum(-1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(weights_from_logits(extreme, 0.01)[0], [1 - 5 * 0.01] + [0.01] * 5)
    np.testing.assert_allclose(weights_from_logits(extreme, 0.01)[3], [1 / d] * d)


def test_contextual_bandit_reaches_the_known_optimum():
    """Context c in R^2, D=3; the best weights are w*(c) = floor + (1-3 floor) softmax(A c)
    and the reward is -10 ||w - w*(c)||^2 (optimum 0; uniform weights score about -2).
    Claim: after 600 updates the deterministic policy scores >= -0.1 on held-out contexts,
    i.e. a mean squared weight error <= 0.01 (5% of uniform's), and the sampled actions of
    the last 100 steps average >= -0.2.

    Test-only settings, each because this bandit is small and the test must be fast: gamma 0
    (a bandit has no future), lr 1e-2 for actor, critics and alpha (1e-4 would need ~100x
    the updates), log alpha starting at -4 (a reward of order 1 against alpha = 1 lets the
    entropy bonus push the logits' std to its bound, where the softmax saturates and the
    reward gradient vanishes), batch 128 (variance; costs little), 32-wide networks."""
    d, k = 3, 2
    agent = sac_agent(state_dim=k, num_domains=d, gamma=0.0, lr=1e-2, log_alpha_init=-4.0, batch_size=128,
                      buffer_size=2000, hidden_sizes=(32, 32), seed=0, action_bound=None)
    env = np.random.default_rng(123)
    a = env.normal(size=(d, k)) * 1.5

    def reward(w, c):
        return -10.0 * ((w - weights_from_logits(c @ a.T, agent.action_map.floor)) ** 2).sum(-1)

    held_out = env.normal(size=(512, k))
    uniform = reward(np.full(d, 1 / d), held_out).mean()
    assert uniform < -1.5
    updates, per_step, recent = 600, 4, []
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
    _, w = agent.act(held_out, deterministic=True)
    score = reward(w, held_out).mean()
    assert agent.updates == updates - (128 // per_step - 1)  # no update until a batch is stored
    assert score >= -0.1, \
        f"deterministic policy scores {score:.4f} (optimum 0, uniform {uniform:.3f}) in {elapsed:.1f}s"
    assert np.mean(recent) >= -0.2, f"sampled actions average {np.mean(recent):.4f}"


@pytest.mark.parametrize("make_agent", [lambda: sac_agent(**small_config()),
                                        lambda: ddpg_agent(**acodm_small_config())], ids=["sac", "ddpg"])
def test_nan_and_inf_transitions_are_refused_and_counted(make_agent):
    """The replay buffer both agents share (ReplayAgent.add_transition) refuses non-finite transitions."""
    agent = make_agent()
    s, u = np.zeros(6), np.zeros(3)
    bad = [(np.full(6, np.nan), u, 0.0, s), (s, np.array([0, np.inf, 0]), 0.0, s), (s, u, float("nan"), s),
           (s, u, 0.0, np.array([0, 0, 0, 0, 0, -np.inf])), (s, u, 1e39, s)]  # 1e39 overflows the float32 buffer
    for transition in bad:
        assert agent.add_transition(*transition) is False
    assert agent.rejected_transitions == len(bad) and len(agent.buffer) == 0
    assert agent.add_transition(s, u, 1.0, s) is True and len(agent.buffer) == 1
    with pytest.raises(ValueError, match="state_dim"):
        agent.add_transition(np.zeros(5), u, 0.0, s)


def test_a_nan_loss_never_reaches_the_optimizer():
    agent = sac_agent(**small_config())
    assert agent.update() is None  # nothing to learn from yet
    fill(agent, 16)
    agent.buffer.rewards[:] = np.nan  # what a corrupted buffer would feed the critic
    critics = [p.detach().clone() for p in [*agent.q1.parameters(), *agent.q2.parameters()]]
    out = agent.update()
    assert math.isnan(out["critic_loss"]) and agent.skipped_steps["critic"] == 1
    for old, new in zip(critics, [*agent.q1.parameters(), *agent.q2.parameters()]):
        assert torch.equal(old, new)
    assert not agent.critic_optimizer.state  # Adam never saw a NaN gradient
    assert all(torch.isfinite(p).all() for p in [*agent.q1_target.parameters(), *agent.actor.parameters()])


def drive(agent: SACAgent, env: np.random.Generator, steps: int) -> list:
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


@pytest.mark.parametrize("encoder", ["mlp", "domain_tokens"])
def test_state_dict_round_trip_continues_exactly(encoder):
    cfg = small_config(encoder=encoder, state_dim=9, token_dim=16, token_layers=1, token_heads=2, tau=0.05)
    reference, resumed = sac_agent(**cfg), sac_agent(**cfg)
    env_a, env_b = np.random.default_rng(5), np.random.default_rng(5)
    first = drive(reference, env_a, 20)  # the 16-slot buffer wraps: its position matters
    drive(resumed, env_b, 20)
    blob = io.BytesIO()
    torch.save(resumed.state_dict(), blob)
    blob.seek(0)
    fresh = sac_agent(**cfg)  # a new process: same config, its own initial weights and RNGs
    global_rng = torch.get_rng_state()
    fresh.load_state_dict(torch.load(blob, weights_only=True))
    after_ref, after_resumed = drive(reference, env_a, 12), drive(fresh, env_b, 12)
    assert torch.equal(global_rng, torch.get_rng_state())  # the agent draws from its own generators
    for (u_ref, log_ref), (u_res, log_res) in zip(after_ref, after_resumed):
        assert np.array_equal(u_ref, u_res)
        assert log_ref == log_res
    assert all(log is not None for _, log in first[7:])
    for name in ("actor", "q1", "q2", "q1_target", "q2_target"):
        for p, q in zip(getattr(reference, name).parameters(), getattr(fresh, name).parameters()):
            assert torch.equal(p, q), name
    assert torch.equal(reference.log_alpha, fresh.log_alpha)
    assert reference.updates == fresh.updates == 32 - 7  # updates start at the 8th transition


def test_load_refuses_another_configuration():
    state = sac_agent(**small_config()).state_dict()
    with pytest.raises(ValueError, match="gamma: checkpoint 0.95 vs this run 0.9"):
        sac_agent(**small_config(gamma=0.9)).load_state_dict(state)
    with pytest.raises(ValueError, match="format"):
        sac_agent(**small_config()).load_state_dict({"actor": {}})


def test_domain_token_encoder_acts_and_learns_finite():
    d, f, g = 5, 3, 4
    agent = sac_agent(state_dim=f * d + g, num_domains=d, encoder="domain_tokens", token_dim=16, token_layers=2,
                      token_heads=2, batch_size=8, buffer_size=64, seed=3, action_bound=None)
    fill(agent, 16)
    actor_before = [p.detach().clone() for p in agent.actor.parameters()]
    logs = [agent.update() for _ in range(3)]
    assert all(math.isfinite(v) for log in logs for v in log.values())
    assert any(not torch.equal(a, b) for a, b in zip(actor_before, agent.actor.parameters()))
    u, w = agent.act(np.random.default_rng(0).normal(size=(7, f * d + g)))
    assert u.shape == (7, d) and np.all(w >= agent.action_map.floor)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-12)
    # Domain i's token is built from state[i], state[d + i], state[2d + i]: changing one
    # domain's features moves every domain's logits (attention mixes tokens).
    s = np.zeros(f * d + g)
    s2 = s.copy()
    s2[[1, d + 1, 2 * d + 1]] = 3.0
    m1, _ = agent.act(s, deterministic=True)
    m2, _ = agent.act(s2, deterministic=True)
    assert np.all(m1 != m2)

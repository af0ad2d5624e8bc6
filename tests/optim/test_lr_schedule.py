"""LR schedule: Megatron's warm-up/decay values at hand-computed iterations, validation, resume."""

import math

import pytest
import torch

from megatron_hds.optim.lr_schedule import LRScheduleConfig, LRScheduler, lr_at

# lr 1e-3 -> 1e-4, 10 warm-up iterations, decay window ends at 110 (so 100 decay iterations).
BASE = dict(lr=1e-3, min_lr=1e-4, train_iters=110, lr_warmup_iters=10, lr_decay_style="linear", weight_decay=0.01)


def _schedule(**fields) -> LRScheduleConfig:
    """A schedule from BASE with some fields changed."""
    return LRScheduleConfig(**{**BASE, **fields})


@pytest.mark.parametrize(
    "style,iteration,expected",
    [
        ("linear", 0, 0.0),  # Megatron's first step runs at lr 0
        ("linear", 5, 5e-4),
        ("linear", 10, 1e-3),
        ("linear", 35, 1e-4 + 9e-4 * 0.75),  # r = 25/100
        ("linear", 60, 5.5e-4),
        ("linear", 110, 1e-4),
        ("linear", 111, 1e-4),
        ("linear", 10_000, 1e-4),
        ("cosine", 5, 5e-4),
        ("cosine", 10, 1e-3),
        ("cosine", 35, 1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi / 4))),
        ("cosine", 60, 5.5e-4),
        ("cosine", 85, 1e-4 + 9e-4 * 0.5 * (1 + math.cos(3 * math.pi / 4))),
        ("cosine", 110, 1e-4),
        ("cosine", 500, 1e-4),
        ("constant", 0, 0.0),
        ("constant", 5, 5e-4),
        ("constant", 10, 1e-3),
        ("constant", 60, 1e-3),
        ("constant", 500, 1e-3),  # Megatron never lowers a constant schedule
    ],
)
def test_values_at_key_iterations(style, iteration, expected):
    config = _schedule(lr_decay_style=style)
    assert lr_at(config, iteration) == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_warmup_fraction_and_decay_iters():
    # fraction of lr_decay_iters (not train_iters), as Megatron's --lr-warmup-fraction
    config = _schedule(lr=1.0, min_lr=0.0, train_iters=1000, lr_decay_iters=200, lr_warmup_iters=None,
                       lr_warmup_fraction=0.1)
    assert config.warmup_iters == 20.0
    assert lr_at(config, 10) == pytest.approx(0.5)
    assert lr_at(config, 20) == pytest.approx(1.0)
    assert lr_at(config, 110) == pytest.approx(0.5)  # linear, r = 90/180
    assert lr_at(config, 201) == 0.0
    no_warmup = _schedule(lr=1.0, min_lr=0.0, train_iters=100, lr_warmup_iters=None)
    assert lr_at(no_warmup, 0) == 1.0


@pytest.mark.parametrize("style", ["linear", "cosine", "constant"])
def test_monotone(style):
    config = _schedule(lr_decay_style=style)
    values = [lr_at(config, n) for n in range(200)]
    assert all(b >= a for a, b in zip(values[:10], values[1:11]))
    assert all(b <= a + 1e-18 for a, b in zip(values[10:], values[11:]))
    assert min(values[10:]) >= config.min_lr - 1e-18
    assert max(values) == pytest.approx(config.lr)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(min_lr=2e-3), "min_lr (0.002) must not exceed lr (0.001)"),
        (dict(lr_decay_style="step"), "accepted: constant, linear, cosine"),
        (dict(lr_warmup_iters=-1), "lr_warmup_iters must be an integer >= 0, got -1"),
        (dict(train_iters=-5), "train_iters must be an integer >= 1, got -5"),
        (dict(lr_decay_iters=0), "lr_decay_iters must be an integer >= 1, got 0"),
        (dict(lr_warmup_fraction=0.1), "not both"),
        (dict(lr_warmup_iters=200), "must be shorter than lr_decay_iters"),
        (dict(lr=float("nan")), "lr must be a finite number"),
    ],
)
def test_validation_names_the_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _schedule(**kwargs)


def _optimizer():
    decay = torch.nn.Parameter(torch.ones(2, 2))
    bias = torch.nn.Parameter(torch.ones(2))
    return torch.optim.AdamW([
        {"params": [decay], "wd_mult": 1.0},
        {"params": [bias], "wd_mult": 0.0},
    ], lr=123.0)


def test_scheduler_sets_lr_and_constant_weight_decay():
    optimizer = _optimizer()
    scheduler = LRScheduler(optimizer, _schedule(weight_decay=0.1))
    assert [g["lr"] for g in optimizer.param_groups] == [0.0, 0.0]
    for _ in range(5):
        scheduler.step()
    assert scheduler.num_steps == 5
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([5e-4, 5e-4])
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert scheduler.get_lr(35) == lr_at(scheduler.config, 35)


def test_resume_continues_identically():
    config = _schedule(lr_decay_style="cosine")
    straight = LRScheduler(_optimizer(), config)
    first = LRScheduler(_optimizer(), config)
    for _ in range(37):
        straight.step()
        first.step()
    state = first.state_dict()
    resumed_optimizer = _optimizer()
    resumed = LRScheduler(resumed_optimizer, config)
    resumed.load_state_dict(state)
    assert resumed_optimizer.param_groups[0]["lr"] == straight.get_lr()
    for _ in range(100):
        assert resumed.step() == straight.step()


def test_resume_with_a_different_schedule_is_refused_or_overridden():
    old = LRScheduler(_optimizer(), _schedule())
    for _ in range(20):
        old.step()
    changed = _schedule(lr=2e-3)
    with pytest.raises(ValueError, match=r"max_lr: checkpoint 0.001 vs configured 0.002.*override"):
        LRScheduler(_optimizer(), changed).load_state_dict(old.state_dict())
    new = LRScheduler(_optimizer(), changed)
    new.load_state_dict(old.state_dict(), override=True)
    assert new.num_steps == 20
    assert new.get_lr() == lr_at(changed, 20)

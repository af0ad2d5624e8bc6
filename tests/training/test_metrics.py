"""Metrics: metrics.jsonl records and resume, console line (with MFU), rank-0 only, TensorBoard/W&B.
The FLOPs formula and peak table are tests/training/test_flops.py's."""

import io
import json
import logging
import math
import os
from dataclasses import dataclass, field

import pytest
import torch

from megatron_hds.training import metrics
from megatron_hds.training.metrics import (
    MetricsConfig,
    MetricsLogger,
    eval_summary,
    read_metrics,
)

TRAIN_FIELDS = {"kind", "iteration", "consumed_samples", "lr", "loss", "grad_norm", "tokens_per_sec",
                "step_time_s", "domain_loss", "domain_samples", "domain_weights", "scheduler_time_s"}
EVAL_FIELDS = {"kind", "split", "iteration", "domain_loss", "domain_ppl", "mean_ppl", "natural_ppl"}
DOMAINS = ["Pile-CC", "Github", "ArXiv", "Wikipedia (en)", "FreeLaw", "PubMed/Central"]
NATURAL = {d: w for d, w in zip(DOMAINS, [0.4, 0.2, 0.15, 0.1, 0.1, 0.05])}


@dataclass
class OptimCfg:
    lr: float = 1e-3
    betas: tuple = (0.9, 0.95)


@dataclass
class RunCfg:
    train_iters: int = 100
    optim: OptimCfg = field(default_factory=OptimCfg)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _train(logger, iteration, loss=3.0, **kwargs):
    weights = {d: (i + 1) / 21 for i, d in enumerate(DOMAINS)}
    args = dict(
        consumed_samples=iteration * 8, lr=1e-3, loss=loss, grad_norm=0.75, tokens_per_sec=12345.6,
        step_time_s=0.25, domain_loss={d: 3.0 + i / 10 for i, d in enumerate(DOMAINS)},
        domain_samples={d: i + 1 for i, d in enumerate(DOMAINS)}, domain_weights=weights,
    )
    args.update(kwargs)
    return logger.log_train(iteration, **args)


def _config(tmp_path, **kwargs):
    return MetricsConfig(log_dir=str(tmp_path / "run"), train_iters=100, **kwargs)


def test_records_round_trip_with_required_fields(tmp_path):
    with MetricsLogger(_config(tmp_path), stream=io.StringIO()) as logger:
        logger.log_config(RunCfg())
        _train(logger, 10, reward={"loss_drop": 0.5}, scheduler_time_s=0.01, loss_scale=65536.0)
        _train(logger, 20, loss=float("nan"), grad_norm=None)
        logger.log_eval(20, split="valid", domain_loss={d: 2.0 for d in DOMAINS}, natural_weights=NATURAL)
    path = tmp_path / "run" / "metrics.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 4

    def reject(token):
        raise ValueError(f"non-standard JSON constant {token}")

    for line in lines:  # strict JSON: no NaN/Infinity literals
        json.loads(line, parse_constant=reject)

    records = read_metrics(tmp_path / "run")
    config = records["config"][0]
    assert config["train_iters"] == 100 and config["optim"] == {"lr": 1e-3, "betas": [0.9, 0.95]}
    first, second = records["train"]
    assert TRAIN_FIELDS | {"reward"} <= set(first)
    assert TRAIN_FIELDS <= set(second) and "reward" not in second
    assert first["reward"] == {"loss_drop": 0.5} and first["loss_scale"] == 65536.0
    assert first["domain_samples"]["PubMed/Central"] == 6 and first["consumed_samples"] == 80
    assert math.isnan(second["loss"]) and second["grad_norm"] is None
    (valid,) = records["eval"]
    assert EVAL_FIELDS <= set(valid)
    assert valid["split"] == "valid" and valid["domain_ppl"]["ArXiv"] == pytest.approx(math.exp(2.0))
    assert valid["mean_ppl"] == pytest.approx(math.exp(2.0))


def test_eval_summary_means():
    domain_ppl, mean_ppl, natural_ppl = eval_summary({"a": math.log(10), "b": math.log(40)}, {"a": 3, "b": 1})
    assert domain_ppl == pytest.approx({"a": 10.0, "b": 40.0})
    assert mean_ppl == pytest.approx(25.0)
    # the natural mixture's perplexity: exp of the token-weighted mean loss, not a mean of ppl
    assert natural_ppl == pytest.approx(math.exp((3 * math.log(10) + math.log(40)) / 4))
    assert eval_summary({"a": 1e6}, {"a": 1})[1] == math.inf
    with pytest.raises(ValueError, match=r"natural_weights lack domains \['b'\]"):
        eval_summary({"a": 1.0, "b": 1.0}, {"a": 1.0})


def test_resumed_logger_appends_and_supersedes_repeated_iterations(tmp_path):
    config = _config(tmp_path)
    with MetricsLogger(config, stream=io.StringIO()) as logger:
        for it in (10, 20, 30):
            _train(logger, it, loss=5.0)
        logger.log_eval(20, split="valid", domain_loss={d: 2.5 for d in DOMAINS}, natural_weights=NATURAL)
        logger.log_eval(30, split="valid", domain_loss={d: 2.4 for d in DOMAINS}, natural_weights=NATURAL)
    # the run died mid-write; the checkpoint it resumes from is iteration 20
    with open(tmp_path / "run" / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "train", "iter')
    with MetricsLogger(config, start_iteration=20, stream=io.StringIO()) as logger:
        for it in (30, 40):
            _train(logger, it, loss=4.0)
        logger.log_eval(40, split="valid", domain_loss={d: 2.0 for d in DOMAINS}, natural_weights=NATURAL)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [(r["iteration"], r["loss"]) for r in records["train"]] == [(10, 5.0), (20, 5.0), (30, 4.0), (40, 4.0)]
    assert [r["iteration"] for r in records["eval"]] == [20, 30, 40]
    raw = read_metrics(tmp_path / "run", dedupe_resumed=False)
    assert [r["iteration"] for r in raw["train"]] == [10, 20, 30, 30, 40]


def test_console_line_contents(tmp_path):
    clock = FakeClock()
    stream = io.StringIO()
    config = _config(tmp_path, flops_per_token=1e9, peak_flops_per_device=1e14, num_devices=2, console_domains=3)
    logger = MetricsLogger(config, start_iteration=0, stream=stream, clock=clock)
    clock.now += 50.0  # 50 s for 10 of 100 iterations -> 450 s to go
    _train(logger, 10, loss=3.14159, loss_scale=1024.0)
    line = stream.getvalue().strip()
    assert line.startswith("iter  10/100 ( 10.0%)")
    for part in ("lr 1.000e-03", "loss 3.1416", "grad norm 0.750", "tok/s 12,346", "step 250 ms",
                 "loss scale 1024.0", "elapsed 0:00:50", "ETA 0:07:30"):
        assert part in line, (part, line)
    # MFU = 12345.6 tok/s * 1e9 FLOP/tok / (2 * 1e14 FLOP/s) = 6.17%
    assert "MFU 6.2%" in line
    # top three domains by weight, with weight/loss, and how many are left out
    assert "PubMed/Central 0.286/3.50, FreeLaw 0.238/3.40, Wikipedia (en) 0.190/3.30 (+3 more)" in line
    logger.log_eval(10, split="valid", domain_loss={"a": math.log(10), "b": math.log(40)},
                    natural_weights={"a": 1, "b": 1})
    eval_line = stream.getvalue().strip().splitlines()[-1]
    assert eval_line.startswith("valid at iter 10 | natural ppl 20.000 | mean ppl 25.000") and "highest: b 40.00" in eval_line
    logger.close()


def test_console_without_peak_has_no_mfu(tmp_path):
    stream = io.StringIO()
    with MetricsLogger(_config(tmp_path), stream=stream) as logger:
        record = _train(logger, 1)
    assert "MFU" not in stream.getvalue() and "mfu" not in record


def test_non_rank_zero_writes_nothing(tmp_path):
    stream = io.StringIO()
    logger = MetricsLogger(_config(tmp_path, tensorboard_dir=str(tmp_path / "tb"), wandb_project="p"),
                           rank=1, stream=stream)
    assert logger.log_config({"a": 1}) is None
    assert _train(logger, 10) is None
    assert logger.log_eval(10, split="valid", domain_loss={"a": 1.0}, natural_weights={"a": 1.0}) is None
    logger.close()
    assert stream.getvalue() == ""
    assert not os.path.exists(tmp_path / "run") and not os.path.exists(tmp_path / "tb")


def test_log_dir_none_writes_console_only(tmp_path):
    stream = io.StringIO()
    with MetricsLogger(MetricsConfig(log_dir=None, train_iters=10), stream=stream) as logger:
        _train(logger, 1)
    assert "iter  1/10" in stream.getvalue()


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="train_iters must be an integer >= 1, got 0"):
        MetricsConfig(log_dir=None, train_iters=0)
    with MetricsLogger(_config(tmp_path), stream=io.StringIO()) as logger:
        with pytest.raises(ValueError, match="unknown eval split 'dev'; accepted: valid, test"):
            logger.log_eval(1, split="dev", domain_loss={"a": 1.0}, natural_weights={"a": 1.0})
        with pytest.raises(ValueError, match=r"extra fields \['kind', 'mfu'\] would overwrite"):
            _train(logger, 1, mfu=0.5, kind="x")


class FakeWriter:
    instances = []

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.scalars = {}
        self.closed = False
        FakeWriter.instances.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars[(tag, step)] = value

    def add_text(self, tag, text, step):
        self.scalars[(tag, step)] = text

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_tensorboard_scalars_per_domain(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "_summary_writer_class", lambda: FakeWriter)
    with MetricsLogger(_config(tmp_path, tensorboard_dir=str(tmp_path / "tb")), stream=io.StringIO()) as logger:
        writer = logger._tb
        logger.log_config({"seed": 1})
        _train(logger, 10, reward={"quality": 0.1})
        logger.log_eval(10, split="valid", domain_loss={d: 2.0 for d in DOMAINS}, natural_weights=NATURAL)
    assert writer.log_dir == str(tmp_path / "tb") and writer.closed
    scalars = writer.scalars
    assert scalars[("lr", 10)] == 1e-3 and scalars[("grad_norm", 10)] == 0.75
    assert scalars[("domain_loss/Pile-CC", 10)] == 3.0
    assert scalars[("domain_weight/PubMed_Central", 10)] == pytest.approx(6 / 21)
    assert scalars[("reward/quality", 10)] == pytest.approx(0.1)
    assert scalars[("valid/domain_ppl/ArXiv", 10)] == pytest.approx(math.exp(2.0))
    assert scalars[("valid/mean_ppl", 10)] == pytest.approx(math.exp(2.0))


def test_missing_tensorboard_and_wandb_only_warn(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(metrics, "_summary_writer_class", lambda: None)
    monkeypatch.setattr(metrics, "_wandb_module", lambda: None)
    with caplog.at_level(logging.WARNING, logger=metrics.__name__):
        with MetricsLogger(_config(tmp_path, tensorboard_dir=str(tmp_path / "tb"), wandb_project="proj"),
                           stream=io.StringIO()) as logger:
            _train(logger, 1)
    assert "tensorboard is not installed (pip install tensorboard" in caplog.text
    assert "wandb is not installed (pip install wandb" in caplog.text


class FakeWandb:
    def __init__(self, fail_init=False, fail_log=False):
        self.fail_init, self.fail_log = fail_init, fail_log
        self.init_kwargs = None
        self.logged = []
        self.config_updates = []

    def init(self, **kwargs):
        if self.fail_init:
            raise ConnectionError("no network")
        self.init_kwargs = kwargs
        return self

    @property
    def config(self):
        return self

    def update(self, values, allow_val_change=False):
        self.config_updates.append(values)

    def log(self, values, step):
        if self.fail_log:
            raise RuntimeError("upload failed")
        self.logged.append((step, values))

    def finish(self):
        pass


def test_wandb_logging_and_failures_never_stop_the_run(tmp_path, monkeypatch, caplog):
    fake = FakeWandb()
    monkeypatch.setattr(metrics, "_wandb_module", lambda: fake)
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = _config(tmp_path, wandb_project="proj", wandb_exp_name="hds-1")
    with MetricsLogger(config, stream=io.StringIO()) as logger:
        logger.log_config({"seed": 7})
        _train(logger, 10)
    assert fake.init_kwargs["project"] == "proj" and fake.init_kwargs["name"] == "hds-1"
    assert fake.init_kwargs["mode"] == "offline"
    assert fake.config_updates == [{"seed": 7}]
    step, values = fake.logged[0]
    assert step == 10 and values["domain_loss/Github"] == pytest.approx(3.1)

    for broken in (FakeWandb(fail_init=True), FakeWandb(fail_log=True)):
        monkeypatch.setattr(metrics, "_wandb_module", lambda broken=broken: broken)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=metrics.__name__):
            with MetricsLogger(config, stream=io.StringIO()) as logger:
                _train(logger, 11)
                _train(logger, 12)  # after a failure W&B is off: no second warning
        assert caplog.text.count("W&B logging is off") == 1


@pytest.mark.skipif(metrics._summary_writer_class() is None, reason="tensorboard is not installed")
def test_real_tensorboard_writes_event_files(tmp_path):
    with MetricsLogger(_config(tmp_path, tensorboard_dir=str(tmp_path / "tb")), stream=io.StringIO()) as logger:
        _train(logger, 1)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tb"))


def test_tensors_and_numpy_values_are_encoded():
    import numpy as np

    line = metrics.encode_record({"kind": "x", "a": torch.tensor(2.5), "b": np.int64(3), "c": np.array([1.0, np.inf]),
                                  "d": float("-inf"), "e": np.float64("nan")})
    assert json.loads(line) == {"kind": "x", "a": 2.5, "b": 3, "c": [1.0, "Infinity"], "d": "-Infinity", "e": "NaN"}

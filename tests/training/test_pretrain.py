"""The training loop end to end: flags, learning, metrics, checkpoints, and exact resume
(bitwise, with weights that change every step) for TP=1/PP=1 and TP=2/PP=2, and the
distributed optimizer."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from megatron_hds.arguments import parse_args
from megatron_hds.parallel.state import ParallelState
from megatron_hds.checkpoint.reshard import read_model_checkpoint, write_model_checkpoint
from megatron_hds.checkpoint.store import load_checkpoint, save_checkpoint
from megatron_hds.training.metrics import read_metrics
from megatron_hds.training.trainer import Trainer
from tests.distributed import run_distributed

TINY = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
        "--position-embedding-type", "rope", "--hidden-dropout", "0.1", "--attention-dropout", "0.1"]


def _argv(manifest, *extra):
    return ["--data-manifest", manifest, *TINY, "--global-batch-size", "8", "--micro-batch-size", "2",
            "--lr", "3e-3", "--lr-warmup-iters", "2", "--log-interval", "1", "--eval-iters", "1",
            "--eval-interval", "0", "--split", "80,10,10", *extra]


class DriftingScheduler:
    """Weights that change every step, from the observed losses and a private RNG whose
    state must survive a checkpoint for the resumed run to match."""

    name = "drifting"

    def __init__(self, num_domains: int, seed: int = 0, loss_coupling: float = 0.1):
        self.num_domains = num_domains
        self.rng = np.random.default_rng(seed)
        self.loss_coupling = loss_coupling

    def initial_weights(self):
        return np.full(self.num_domains, 1.0 / self.num_domains)

    def observe(self, signals):
        raw = self.rng.random(self.num_domains) + self.loss_coupling * np.nan_to_num(signals.domain_loss)
        return raw / raw.sum()

    def last_reward(self):
        return None

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]


def _train(argv, loss_coupling=0.1, builtin_scheduler=False):
    """One run on this rank (spawned by run_distributed, or in-process for a single rank);
    the DriftingScheduler unless builtin_scheduler (then --mixing decides)."""
    torch.set_num_threads(1)  # the tests share 2 cores; see pretrain.main
    config = parse_args(argv)
    state = ParallelState.from_config(config.parallel)
    scheduler = None if builtin_scheduler else DriftingScheduler(7, seed=3, loss_coupling=loss_coupling)
    return Trainer(config, state, scheduler=scheduler).train()


def _records(log_dir):
    return {r["iteration"]: r for r in read_metrics(os.path.join(log_dir, "metrics.jsonl"))["train"]}


def _assert_same_steps(a, b, iterations, exact=True):
    for it in iterations:
        ra, rb = a[it], b[it]
        assert ra["batch_hash"] == rb["batch_hash"], it
        assert ra["domain_weights"] == rb["domain_weights"], it
        assert ra["lr"] == rb["lr"], it
        if exact:
            assert (ra["loss"], ra["grad_norm"], ra["domain_loss"]) == (rb["loss"], rb["grad_norm"], rb["domain_loss"]), it
        else:
            assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5), it


def test_arguments_reject_bad_and_contradictory_flags(demo_manifest, capsys):
    base = _argv(demo_manifest, "--train-iters", "2")
    for bad, message in [
        (["--bf16", "--fp16"], "which --bf16 already set to 'bf16'"),
        (["--lr-warmup-fraction", "0.1"], "--lr-warmup-iters and --lr-warmup-fraction"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--data-path", "x"], "exactly one of --data-manifest and --data-path"),
        (["--mixing", "uniform", "--mixing-weights", "1", "2"], "does not apply to --mixing uniform"),
        (["--mixing-weights", "1", "heavy"], "expected a number or 'uniform', got 'heavy'"),
        (["--mixing", "hds", "--mixing-weights", "1", "uniform"], "or the word 'uniform' alone"),
        (["--hds-reward", "align,bogus"], "--hds-reward 'align,bogus' is invalid"),
        (["--num-attention-heads", "5"], "hidden_size=32 is not divisible by num_attention_heads=5"),
        (["--torch-compile", "--transformer-impl", "transformer_engine"], "works with transformer_impl='local'"),
        (["--load", "/nonexistent/ckpt"], "/nonexistent/ckpt"),
        (["--finetune"], "finetune=True needs a checkpoint to load (--load)"),
        (["--no-load-rng"], "no_load_rng=True needs a checkpoint to load (--load)"),
        (["--finetune", "--load", os.path.dirname(demo_manifest), "--save", os.path.dirname(demo_manifest)],
         "give another --save"),
        (["--ddp-bucket-size", "0"], "ddp_bucket_size=0 is invalid"),
        (["--exit-duration-in-mins", "0"], "exit_duration_in_mins=0.0 is invalid"),
        (["--overlap-grad-reduce", "--use-distributed-optimizer"], "overlap_grad_reduce=True works with the all-reduce"),
        (["--recompute-activations", "--recompute-granularity", "full"], "which --recompute-activations already set"),
        (["--recompute-granularity", "full"], "needs recompute_method"),
        (["--recompute-method", "block"], "need recompute_granularity='full'"),
        (["--downstream-eval-interval", "2"], "needs --downstream-eval-tasks"),
        (["--mixing", "hds", "--hds-learnability-source", "valid"], "needs --eval-interval > 0 (got 0)"),
        (["--hds-learnability-window", "0"], "learnability_window=0.0 is invalid"),
        (["--downstream-eval-tasks", "hellaswag", "--downstream-eval-interval", "1"], "it needs --save"),
    ]:
        with pytest.raises(SystemExit):
            parse_args(base + bad)
        assert message in capsys.readouterr().err, bad


def test_arguments_map_megatron_flags(demo_manifest):
    config = parse_args(_argv(demo_manifest, "--train-iters", "5", "--tensor-model-parallel-size", "2",
                              "--lr-decay-style", "linear", "--min-lr", "1e-5", "--split", "90,5,5"))
    assert config.model.vocab_size == json.load(open(demo_manifest))["tokenizer"]["vocab_size"]
    assert config.model.padded_vocab_size(2) % 256 == 0
    assert (config.model.num_layers, config.model.hidden_size, config.model.seq_length) == (2, 32, 32)
    assert config.parallel.tensor_model_parallel_size == 2
    assert (config.optim.lr_decay_style, config.optim.min_lr) == ("linear", 1e-5)
    assert config.data.split == "90,5,5" and config.train.train_iters == 5
    assert config.downstream_eval.interval == 0  # off unless asked for
    assert not config.model.torch_compile
    assert parse_args(_argv(demo_manifest, "--train-iters", "5", "--mixing", "hds", "--mixing-weights",
                            "uniform")).mixing.weights == "uniform"
    assert parse_args(_argv(demo_manifest, "--train-iters", "5", "--torch-compile")).model.torch_compile
    assert config.model.recompute_granularity is None
    assert parse_args(_argv(demo_manifest, "--train-iters", "5", "--recompute-activations")
                      ).model.recompute_granularity == "selective"
    full = parse_args(_argv(demo_manifest, "--train-iters", "5", "--recompute-granularity", "full",
                            "--recompute-method", "block", "--recompute-num-layers", "2")).model
    assert (full.recompute_granularity, full.recompute_method, full.recompute_num_layers) == ("full", "block", 2)
    hooked = parse_args(_argv(demo_manifest, "--train-iters", "5", "--save", "/tmp/x", "--downstream-eval-tasks", "arc_easy, piqa",
                              "--downstream-eval-interval", "3", "--downstream-eval-limit", "50")).downstream_eval
    assert (hooked.tasks, hooked.interval, hooked.limit, hooked.batch_size) == (("arc_easy", "piqa"), 3, 50, 8)
    preset = parse_args(["--data-manifest", demo_manifest, "--model", "pythia-160m", "--seq-length", "128",
                         "--global-batch-size", "8", "--train-iters", "1"]).model
    assert (preset.num_layers, preset.hidden_size, preset.seq_length, preset.rotary_percent) == (12, 768, 128, 0.25)


def test_training_learns_and_writes_metrics_and_checkpoint(demo_manifest, tmp_path):
    save = str(tmp_path / "run")
    result = _train(_argv(demo_manifest, "--train-iters", "30", "--save", save, "--eval-interval", "15"))
    records = read_metrics(os.path.join(save, "metrics.jsonl"))
    train, evals = records["train"], records["eval"]
    assert [r["iteration"] for r in train] == list(range(1, 31))
    assert np.mean([r["loss"] for r in train[-5:]]) < np.mean([r["loss"] for r in train[:5]]) - 0.5
    valid = [e for e in evals if e["split"] == "valid"]
    assert [e["iteration"] for e in valid] == [15, 30] and valid[1]["mean_ppl"] < valid[0]["mean_ppl"]
    assert [e["split"] for e in evals][-1] == "test" and result["test"]
    assert records["config"][0]["train"]["train_iters"] == 30
    names = records["config"][0]["domains"]
    assert set(train[0]["domain_weights"]) == set(names) and sum(train[0]["domain_samples"].values()) == 8
    assert open(os.path.join(save, "latest_checkpointed_iteration.txt")).read().strip() == "30"
    assert os.path.isfile(os.path.join(save, "iter_0000030", "mp_rank_00", "model_optim_rng.pt"))


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 2)], ids=["tp1pp1", "tp2pp2"])
def test_exact_resume_is_bitwise(demo_manifest, tmp_path, tp, pp):
    world = tp * pp
    layout = ["--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp)]
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    k = 4

    def run(argv):
        if world == 1:
            return [_train(argv)]
        return run_distributed(_train, world, argv)

    run(_argv(demo_manifest, *layout, "--train-iters", str(2 * k), "--save", straight))
    first = run(_argv(demo_manifest, *layout, "--train-iters", str(2 * k), "--save", resumed,
                      "--exit-interval", str(k)))
    assert first[0]["stopped_early"] and first[0]["iteration"] == k
    run(_argv(demo_manifest, *layout, "--train-iters", str(2 * k), "--save", resumed, "--load", resumed))

    a, b = _records(straight), _records(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 2 * k + 1))
    assert len({a[i]["batch_hash"] for i in a}) == 2 * k  # a new batch every step
    assert len({json.dumps(a[i]["domain_weights"]) for i in a}) == 2 * k  # weights change every step
    _assert_same_steps(a, b, range(1, 2 * k + 1), exact=True)


def test_resume_with_a_different_dp_size_sees_the_same_batches(demo_manifest, tmp_path):
    """Plans do not depend on DP, so a DP=1 run resumed at DP=2 draws the same global
    batches (weights here ignore the losses, which differ in the last bits across DP sizes;
    dropout is off because each DP rank draws its own masks)."""
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    no_dropout = ["--hidden-dropout", "0", "--attention-dropout", "0", "--train-iters", "4"]
    _train(_argv(demo_manifest, *no_dropout, "--save", straight), 0.0)
    _train(_argv(demo_manifest, *no_dropout, "--save", resumed, "--exit-interval", "2"), 0.0)
    run_distributed(_train, 2, _argv(demo_manifest, *no_dropout, "--save", resumed, "--load", resumed), 0.0)
    a, b = _records(straight), _records(resumed)
    _assert_same_steps(a, b, range(1, 5), exact=False)


class HeldOutReadingScheduler(DriftingScheduler):
    """Records the validation losses the trainer passes on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.evaluations = []

    def observe_evaluation(self, iteration, domain_loss):
        self.evaluations.append((iteration, domain_loss.tolist()))


def test_the_scheduler_gets_every_periodic_validation(demo_manifest, tmp_path):
    torch.set_num_threads(1)
    config = parse_args(_argv(demo_manifest, "--train-iters", "6", "--eval-interval", "2",
                              "--save", str(tmp_path / "run")))
    scheduler = HeldOutReadingScheduler(7, seed=3)
    Trainer(config, ParallelState.from_config(config.parallel), scheduler=scheduler).train()
    evals = [r for r in read_metrics(str(tmp_path / "run" / "metrics.jsonl"))["eval"] if r["split"] == "valid"]
    names = list(evals[0]["domain_loss"])
    assert len(names) == 7 and scheduler.evaluations == [(r["iteration"], [r["domain_loss"][n] for n in names])
                                                         for r in evals] and len(evals) == 3
    config = parse_args(_argv(demo_manifest, "--train-iters", "6", "--eval-interval", "2", "--split", "100,0,0",
                              "--mixing", "hds", "--hds-learnability-source", "valid"))
    with pytest.raises(ValueError, match="reads the validation losses: there is no validation data"):
        Trainer(config, ParallelState.from_config(config.parallel))


LEARNING = ["--mixing-warmup-fraction", "0.25", "--hds-batch-size", "4", "--hds-hidden-sizes", "32", "32",
            "--hds-sketch-size", "256", "--hds-lr", "1e-3", "--odm-warmup-steps", "1"]


VARIANTS = {"sync": ["--mixing-no-overlap-update"],
            # learnability from every step's validation, fitted from step 4
            "valid": ["--hds-learnability-step", "0.5", "--hds-learnability-source", "valid",
                      "--hds-learnability-window", "1", "--eval-interval", "1"],
            # validation gradient passes at iterations 0, 3 and 6 (the share stretches the interval from 1
            # to ceil(7 / (0.3 x 8)) = 3): the resume at 4 falls between two, and the influence's decay at 6
            # needs the step of the pass before it from the checkpoint
            "vgrad": ["--hds-influence-target", "valid", "--hds-influence-interval", "1",
                      "--hds-influence-max-share", "0.3"],
            "tgrad": ["--hds-influence-target", "train", "--hds-learnability-step", "0.5"]}


def test_training_waits_for_the_last_overlapped_update_and_raises_its_error(demo_manifest):
    """The agent's update overlaps the next step (the default); the last step's has no next step,
    so train() waits for it before the final evaluation, and its error is not lost."""
    torch.set_num_threads(1)
    config = parse_args(_argv(demo_manifest, "--mixing", "hds", *LEARNING, "--train-iters", "4"))
    trainer = Trainer(config, ParallelState.from_config(config.parallel))
    update = trainer.scheduler.agent.update

    def failing_at_the_end(*args, **kwargs):
        if trainer.iteration == 4:
            raise RuntimeError("the last update failed")
        return update(*args, **kwargs)

    trainer.scheduler.agent.update = failing_at_the_end
    with pytest.raises(RuntimeError, match="the last update failed"):
        trainer.train()


def test_validation_gradient_passes_feed_the_influence_and_never_the_optimizer(demo_manifest, tmp_path):
    """--hds-influence-target valid: a validation pass every interval steps gives the scheduler an
    influence on those steps only, and the model after a step with one is the model after the same
    step without (its gradients are the training micro-batches' alone, and with dropout on, the passes
    draw nothing from the training's random streams). The passes hold one sample per domain, and the
    interval grows past --hds-influence-interval to keep them within --hds-influence-max-share."""
    torch.set_num_threads(1)
    common = ["--mixing", "hds", *LEARNING]
    seen = []
    models = {}
    for target in ("train", "valid", "valid-default-share"):
        share = ["--hds-influence-max-share", "1"] if target == "valid" else []
        config = parse_args(_argv(demo_manifest, *common, "--train-iters", "5", *share,
                                  "--hds-influence-target", target.split("-")[0], "--hds-influence-interval", "2"))
        trainer = Trainer(config, ParallelState.from_config(config.parallel))
        observe = trainer.scheduler.observe
        trainer.scheduler.observe = lambda signals: (seen.append((signals.iteration, "influence" in signals.extra and
                                                                 bool(np.any(signals.extra["influence"])))),
                                                     observe(signals))[1]
        for step in range(1 if target == "train" else 5):
            if target == "valid" and step == 0:
                assert [tuple(batch["tokens"].shape) for batch in trainer._validation_gradient_batches()[1]] == \
                    [(1, 32)] * 7  # one sample of each domain
            plan, _, loss, tokens, extra = trainer.train_step()
            trainer.observe(plan, loss, tokens, extra)
            if step == 0:
                models[target] = {k: v.clone() for k, v in trainer.model.state_dict().items() if torch.is_tensor(v)}
    assert trainer.collector.probe.num_domains == 3 * 7
    # passes at iterations 0, 2 and 4 (the scheduler sees each after its step), each scoring the 4 domains
    # drawn (the training target scores none: one micro-batch per domain has no two halves); under the default share
    # (0.016) 7 domains and 8 samples per step stretch the interval to ceil(7 / 0.128) = 55: only at 0
    assert seen == [(1, False)] + [(1, True), (2, False), (3, True), (4, False), (5, True)] + \
        [(1, True), (2, False), (3, False), (4, False), (5, False)]
    assert models["train"].keys() == models["valid"].keys()
    assert all(torch.equal(models["train"][k], models["valid"][k]) for k in models["train"])
    config = parse_args(_argv(demo_manifest, "--mixing", "hds", "--split", "100,0,0", "--train-iters", "2",
                              "--hds-influence-target", "valid"))
    with pytest.raises(ValueError, match="reads gradients of validation samples: there is no validation data"):
        Trainer(config, ParallelState.from_config(config.parallel))


@pytest.mark.parametrize("method", ["hds", "hds-sync", "hds-valid", "hds-vgrad", "hds-tgrad", "acodm", "odm",
                                    "uniform"])
def test_each_mixing_method_trains_checkpoints_and_resumes_exactly(demo_manifest, tmp_path, method):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    method, _, variant = method.partition("-")
    common = ["--mixing", method, *VARIANTS.get(variant, []), *LEARNING, "--train-iters", "8"]
    _train(_argv(demo_manifest, *common, "--save", straight), builtin_scheduler=True)
    _train(_argv(demo_manifest, *common, "--save", resumed, "--exit-interval", "4"), builtin_scheduler=True)
    _train(_argv(demo_manifest, *common, "--save", resumed, "--load", resumed), builtin_scheduler=True)
    a, b = _records(straight), _records(resumed)
    _assert_same_steps(a, b, range(1, 9), exact=True)
    weights = [tuple(a[i]["domain_weights"].values()) for i in range(1, 9)]
    if method in ("hds", "acodm"):
        assert len(set(weights[2:])) == 6  # past the 2-step warm-up the agent acts every step
        assert set(a[8]["reward"]) >= ({"align", "quality", "norm", "total", "influence_keep", "norm_fired"}
                                       if method == "hds" else {"align", "total"})
        assert all(np.isfinite(list(a[8]["reward"].values())))
        assert [a[i]["reward"] for i in range(1, 9)] == [b[i]["reward"] for i in range(1, 9)]  # the agent's losses too
        assert "critic_loss" in a[8]["reward"]
    if method == "uniform":
        assert np.allclose(weights, 1 / 7, rtol=0, atol=1e-15)


@pytest.mark.parametrize("layout,world", [(["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                                               "--sequence-parallel"], 4), ([], 2),
                                             (["--pipeline-model-parallel-size", "2", "--hds-influence-target", "valid",
                                               "--hds-influence-interval", "2", "--hds-influence-max-share", "1"], 4)],
                         ids=["tp2pp2sp", "dp2-overlap", "pp2dp2-validation-gradients"])
def test_hds_weights_are_identical_on_every_rank(demo_manifest, tmp_path, layout, world):
    """Under TP=2/PP=2 (with sequence parallelism), DP=2 (with the agent's update overlapping
    the next step on rank 0) and PP=2 x DP=2 with validation gradient passes (each replica runs
    its share of the domains through the pipeline), every rank draws with the same weights."""
    argv = _argv(demo_manifest, "--mixing", "hds", *LEARNING, "--train-iters", "6", *layout, "--log-dir", str(tmp_path))
    results = run_distributed(_train, world, argv, 0.0, True)
    histories = [r["weight_history"] for r in results]
    assert len(histories[0]) == 6 and len({h.tobytes() for h in histories}) == 1
    assert len({row.tobytes() for row in histories[0]}) >= 4  # the agent changed them


def test_distributed_optimizer_trains_resumes_and_moves_checkpoints(demo_manifest, tmp_path):
    """--use-distributed-optimizer at DP=2: the same steps as the all-reduce path (to rounding),
    a bitwise resume from its own checkpoint, its checkpoint resumed without the flag at DP=1,
    and a weights-only checkpoint (no optimizer state) trained from its weights."""
    runs = {name: str(tmp_path / name) for name in ("plain", "straight", "resumed", "unsharded", "weights")}
    sharded = ["--use-distributed-optimizer"]
    base = ["--hidden-dropout", "0", "--attention-dropout", "0", "--train-iters", "6"]
    run_distributed(_train, 2, _argv(demo_manifest, *base, "--save", runs["plain"]), 0.0)
    run_distributed(_train, 2, _argv(demo_manifest, *base, *sharded, "--save", runs["straight"]), 0.0)
    run_distributed(_train, 2, _argv(demo_manifest, *base, *sharded, "--save", runs["resumed"], "--exit-interval",
                                     "3"), 0.0)
    shutil.copytree(runs["resumed"], runs["unsharded"])
    run_distributed(_train, 2, _argv(demo_manifest, *base, *sharded, "--save", runs["resumed"], "--load",
                                     runs["resumed"]), 0.0)
    _train(_argv(demo_manifest, *base, "--save", runs["unsharded"], "--load", runs["unsharded"]), 0.0)
    plain, straight = _records(runs["plain"]), _records(runs["straight"])
    _assert_same_steps(plain, straight, range(1, 7), exact=False)
    _assert_same_steps(straight, _records(runs["resumed"]), range(1, 7), exact=True)
    _assert_same_steps(straight, _records(runs["unsharded"]), range(4, 7), exact=False)

    # Weights only (as tools/checkpoint/convert_from_hf.py writes them): the sharded optimizer's
    # fp32 slices must take the loaded weights, or its first step would restore the initial ones.
    checkpoint = read_model_checkpoint(runs["plain"])
    write_model_checkpoint(runs["weights"], checkpoint.config, checkpoint.state, tp=1, pp=1)
    fresh = {}
    for name, flags in (("weights-plain", []), ("weights-sharded", sharded)):
        log_dir = str(tmp_path / name)
        run_distributed(_train, 2, _argv(demo_manifest, *base, *flags, "--load", runs["weights"], "--log-dir",
                                         log_dir, "--train-iters", "3"), 0.0)
        fresh[name] = _records(log_dir)
    for it in (1, 2):
        assert fresh["weights-sharded"][it]["loss"] == pytest.approx(fresh["weights-plain"][it]["loss"], rel=1e-5)
    assert fresh["weights-plain"][1]["loss"] < plain[1]["loss"] - 0.1  # it did start from the trained weights


def test_finetune_and_partial_loads(demo_manifest, tmp_path):
    """--finetune starts a new run from a checkpoint's weights alone (the same run as from a
    weights-only checkpoint) and, restarted, resumes from its own --save; --no-load-optim and
    --no-load-rng resume the run but leave out the optimizer / RNG state."""
    d = {name: str(tmp_path / name) for name in ("straight", "pre", "weights", "ft", "from_weights", "ft_restarted")}
    common = ["--train-iters", "6"]
    _train(_argv(demo_manifest, *common, "--save", d["straight"]))
    _train(_argv(demo_manifest, *common, "--save", d["pre"], "--exit-interval", "4"))
    straight = _records(d["straight"])

    # --finetune == a run from the weights alone (the same tensors, padded vocab rows included).
    checkpoint = load_checkpoint(d["pre"], 0, 0, 1, 1)
    save_checkpoint(d["weights"], 0, model=checkpoint["model"], args=checkpoint["args"])
    _train(_argv(demo_manifest, *common, "--load", d["pre"], "--finetune", "--save", d["ft"]))
    _train(_argv(demo_manifest, *common, "--load", d["weights"], "--save", d["from_weights"]))
    finetuned, from_weights = _records(d["ft"]), _records(d["from_weights"])
    assert sorted(finetuned) == list(range(1, 7))  # iteration 0 again
    _assert_same_steps(finetuned, from_weights, range(1, 7), exact=True)
    assert finetuned[1]["loss"] < straight[1]["loss"] - 0.1  # it did start from the trained weights
    # Restarted with the same command, it resumes from its own checkpoint in --save.
    restart = _argv(demo_manifest, *common, "--load", d["pre"], "--finetune", "--save", d["ft_restarted"])
    assert _train(restart + ["--exit-interval", "3"])["iteration"] == 3
    second = str(tmp_path / "second_launch_log")
    _train(restart + ["--log-dir", second])
    second_launch = _records(second)
    assert sorted(second_launch) == [4, 5, 6]  # it resumed at 3, not from the --load weights again
    _assert_same_steps(finetuned, {**_records(d["ft_restarted"]), **second_launch}, range(1, 7), exact=True)

    for flag in ("--no-load-optim", "--no-load-rng"):
        resumed = str(tmp_path / flag)
        shutil.copytree(d["pre"], resumed)
        _train(_argv(demo_manifest, *common, "--load", resumed, "--save", resumed, flag))
        records = _records(resumed)
        assert [records[i]["batch_hash"] for i in (5, 6)] == [straight[i]["batch_hash"] for i in (5, 6)]
        if flag == "--no-load-optim":  # same weights at step 5; fresh Adam moments change step 6
            assert records[5]["loss"] == straight[5]["loss"] and records[6]["loss"] != straight[6]["loss"]
        else:  # other dropout masks from step 5 on
            assert records[5]["loss"] != straight[5]["loss"]


def test_overlapped_gradient_reduce_trains_like_the_reduce_after_backward(demo_manifest, tmp_path):
    """--overlap-grad-reduce at TP=2 x DP=2 with sequence parallelism (whose norm gradients are
    summed over TP after the DP average): the same steps as without it, to rounding."""
    runs = {}
    for name, flags in (("after", []), ("overlapped", ["--overlap-grad-reduce"])):
        log_dir = str(tmp_path / name)
        run_distributed(_train, 4, _argv(demo_manifest, "--hidden-dropout", "0", "--attention-dropout", "0",
                                         "--tensor-model-parallel-size", "2", "--sequence-parallel",
                                         "--train-iters", "4", "--log-dir", log_dir, *flags), 0.0)
        runs[name] = _records(log_dir)
    _assert_same_steps(runs["after"], runs["overlapped"], range(1, 5), exact=False)
    for it in range(1, 5):
        assert runs["overlapped"][it]["grad_norm"] == pytest.approx(runs["after"][it]["grad_norm"], rel=1e-5)


def test_exit_duration_saves_and_stops_and_the_run_resumes(demo_manifest, tmp_path):
    """--exit-duration-in-mins: past the limit the ranks agree, save and stop; the same command
    without the limit resumes from that checkpoint (--exit-signal-handler is accepted)."""
    save = str(tmp_path / "ckpt")
    common = ["--train-iters", "4", "--save", save, "--load", save, "--exit-signal-handler"]
    os.makedirs(save)
    first = run_distributed(_train, 2, _argv(demo_manifest, *common, "--exit-duration-in-mins", "1e-6"))
    assert [r["stopped_early"] for r in first] == [True, True] and first[0]["iteration"] == 1
    assert open(os.path.join(save, "latest_checkpointed_iteration.txt")).read().strip() == "1"
    assert _train(_argv(demo_manifest, *common))["iteration"] == 4

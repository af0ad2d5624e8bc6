"""--check-for-nan-in-loss-and-grad (on by default, as in Megatron): a NaN injected into one
domain's loss at iteration 3 stops the run with an error naming the iteration and that domain,
before the optimizer applies the step and before any checkpoint holds it; with
--no-check-for-nan-in-loss-and-grad the step is skipped and training goes on. An fp16
loss-scale skip (no gradient norm, a finite loss) is not an error."""

import math
import os

import numpy as np
import pytest
import torch

from megatron_hds.arguments import build_parser, parse_args
from megatron_hds.checkpoint.layout import find_latest_iteration, list_iterations
from megatron_hds.checkpoint.store import load_checkpoint
from megatron_hds.parallel.state import ParallelState
from megatron_hds.training.metrics import read_metrics
from megatron_hds.training.nan_check import NonFiniteLossError, check_finite
from megatron_hds.training.trainer import Trainer

POISONED_STEP = 3


def _argv(manifest, save, *extra):
    # 7 micro-batches of one domain each per step (the hds layout): every domain every step
    return ["--data-manifest", manifest, "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
            "--seq-length", "32", "--global-batch-size", "14", "--micro-batch-size", "2", "--mixing-batch-layout",
            "hds", "--log-interval", "1", "--eval-iters", "1", "--eval-interval", "0", "--split", "80,10,10",
            "--train-iters", "5", "--save", save, "--save-interval", "1", *extra]


def _poisoned_trainer(argv, domain):
    """A Trainer whose step POISONED_STEP turns the final hidden states of ``domain``'s samples
    into NaN (as a diverging model would), the other domains' untouched."""
    torch.set_num_threads(1)
    config = parse_args(argv)
    trainer = Trainer(config, ParallelState.from_config(config.parallel))
    target = trainer.domains.names.index(domain)
    current = {}
    forward = trainer.model.forward

    def remember_domains(*args, domains=None, **kwargs):
        current["domains"] = domains
        return forward(*args, domains=domains, **kwargs)

    def poison(module, inputs, output):
        if trainer.iteration + 1 == POISONED_STEP and current["domains"] is not None:
            rows = current["domains"] == target
            if rows.any():
                output = output.clone()
                output[:, rows] = math.nan
        return output

    trainer.model.forward = remember_domains
    trainer.model.final_layernorm.register_forward_hook(poison)
    return trainer


def test_a_nan_loss_stops_the_run_naming_the_iteration_and_the_domain(demo_manifest, tmp_path):
    save = str(tmp_path / "run")
    trainer = _poisoned_trainer(_argv(demo_manifest, save), "Math")
    with pytest.raises(NonFiniteLossError, match=rf"iteration {POISONED_STEP}: the loss of domain Math is not "
                                                 r"finite and the gradient norm is nan") as error:
        trainer.train()
    assert "Code" not in str(error.value)  # only the domain whose loss was not finite
    # Nothing of step 3 reached the weights, the log or a checkpoint.
    assert find_latest_iteration(save) == POISONED_STEP - 1 and list_iterations(save) == [1, 2]
    saved = load_checkpoint(save, 0, 0, 1, 1)["model"]
    for name, param in trainer.model.state_dict().items():
        assert torch.equal(param, saved[name]), name
    trainer.metrics.close()
    assert [r["iteration"] for r in read_metrics(save)["train"]] == [1, 2]


def test_without_the_check_the_step_is_skipped_and_training_goes_on(demo_manifest, tmp_path):
    save = str(tmp_path / "run")
    trainer = _poisoned_trainer(_argv(demo_manifest, save, "--no-check-for-nan-in-loss-and-grad"), "Math")
    assert trainer.train()["iteration"] == 5
    records = {r["iteration"]: r for r in read_metrics(save)["train"]}
    assert records[POISONED_STEP]["skipped_iterations"] == 1 and records[4]["skipped_iterations"] == 0
    assert math.isnan(records[POISONED_STEP]["grad_norm"]) and math.isfinite(records[4]["grad_norm"])
    # The skipped step's loss is left out of the logged average, not zero-filled into it: its
    # window (one step) averaged nothing, and the next one is finite.
    assert math.isnan(records[POISONED_STEP]["loss"]) and math.isfinite(records[4]["loss"])


def test_the_flag_is_on_by_default_and_megatron_spellings_parse(demo_manifest, tmp_path):
    argv = _argv(demo_manifest, str(tmp_path))
    assert parse_args(argv).train.check_for_nan_in_loss_and_grad is True
    assert parse_args([*argv, "--check-for-nan-in-loss-and-grad"]).train.check_for_nan_in_loss_and_grad is True
    assert parse_args([*argv, "--no-check-for-nan-in-loss-and-grad"]).train.check_for_nan_in_loss_and_grad is False
    assert "--no-check-for-nan-in-loss-and-grad" in build_parser().format_help()


def test_what_counts_as_not_finite():
    names = ["a", "b", "c"]
    tokens = np.array([10.0, 0.0, 5.0])
    check_finite(1, names, np.array([2.0, np.nan, 3.0]), tokens, 0.5)  # b had no tokens: its NaN is "no data"
    check_finite(1, names, np.array([2.0, np.nan, 3.0]), tokens, None)  # an fp16 overflow skip is no error
    with pytest.raises(NonFiniteLossError, match="iteration 7: the loss of domains a, c is not finite"):
        check_finite(7, names, np.array([np.inf, 1.0, np.nan]), tokens, 0.5)
    with pytest.raises(NonFiniteLossError, match="iteration 2: the gradient norm is inf"):
        check_finite(2, names, np.array([1.0, 1.0, 1.0]), tokens, math.inf)


def test_nothing_is_left_in_the_checkpoint_directory(demo_manifest, tmp_path):
    save = str(tmp_path / "run")
    with pytest.raises(NonFiniteLossError):
        _poisoned_trainer(_argv(demo_manifest, save), "Code").train()
    assert sorted(os.listdir(save)) == ["iter_0000001", "iter_0000002", "latest_checkpointed_iteration.txt",
                                        "metrics.jsonl"]

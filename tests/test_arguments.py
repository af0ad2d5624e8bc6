"""The command line is generated from the config fields: every flag is documented, the parsed
defaults are the components' defaults, and Megatron's spellings and aliases still work."""

import argparse
import dataclasses

import pytest

from megatron_hds.arguments import build_parser, config_flags, config_from_args, undocumented_flags
from megatron_hds.config import DataConfig, OptimConfig, ParallelConfig, TrainConfig
from megatron_hds.mixing.config import MixingConfig
from megatron_hds.optim.lr_schedule import LRScheduleConfig
from megatron_hds.options import option

REQUIRED = ["--train-iters", "10", "--global-batch-size", "8", "--num-layers", "2", "--hidden-size", "32",
            "--num-attention-heads", "4", "--seq-length", "16", "--tokenizer-model", "unused.model",
            "--data-path", "unused_prefix"]


def _parse(argv, vocab=100):
    """PretrainConfig of argv without reading a tokenizer (its vocabulary size is given)."""
    import megatron_hds.arguments as arguments

    args = build_parser().parse_args(argv)
    original = arguments.tokenizer_vocab_size
    arguments.tokenizer_vocab_size = lambda data: vocab
    try:
        return config_from_args(args)
    finally:
        arguments.tokenizer_vocab_size = original


def test_every_flag_has_help():
    parser = build_parser()
    assert undocumented_flags(parser) == []
    flags = [a for action in parser._actions for a in action.option_strings]
    assert len(flags) == len(set(flags)) > 100


def test_a_planted_undocumented_flag_is_found():
    parser = build_parser()
    parser.add_argument("--planted-flag", type=int)
    assert undocumented_flags(parser) == ["--planted-flag"]
    with pytest.raises(TypeError, match="help"):
        option(1, help="  ")


def test_a_config_field_that_is_not_an_option_is_refused():
    @dataclasses.dataclass
    class Broken:
        documented: int = option(1, help="a documented setting")
        bare: int = 2

    with pytest.raises(TypeError, match="Broken.bare is neither an option"):
        list(config_flags(Broken))


def test_parsed_defaults_are_the_components_defaults():
    config = _parse(REQUIRED)
    assert config.mixing == MixingConfig()  # every nested scheduler config: ODM, agent, SAC, DDPG, reward, probe
    assert config.optim == OptimConfig() and config.parallel == ParallelConfig()
    assert config.train == TrainConfig(train_iters=10, global_batch_size=8)
    assert config.data == DataConfig(data_path=("unused_prefix",), tokenizer_model="unused.model")
    # The LR schedule the trainer builds takes its values from the same fields.
    schedule = LRScheduleConfig.from_config(config.optim, 10)
    assert (schedule.lr, schedule.min_lr, schedule.lr_decay_style) == (3e-4, 0.0, "cosine")


def test_megatron_spellings_aliases_and_our_flags():
    config = _parse([*REQUIRED, "--use-parallel-residual", "--disable-bias-linear", "--recompute-activations",
                     "--override-opt_param-scheduler", "--hds-hidden-sizes", "64", "32", "--hds-reward", "align, norm",
                     "--hds-action-bound", "none", "--mixing", "hds", "--mixing-weights", "uniform",
                     "--odm-variant", "released", "--acodm-noise-std", "0.3", "--hds-probe", "exact"])
    assert config.model.parallel_residual and not config.model.add_bias_linear
    assert config.model.recompute_granularity == "selective" and config.train.override_opt_param_scheduler
    assert config.mixing.agent.hidden_sizes == (64, 32) and config.mixing.reward.components == ("align", "norm")
    assert config.mixing.agent.action_bound is None and config.mixing.weights == "uniform"
    assert config.mixing.odm.variant == "released" and config.mixing.ddpg.noise_std == 0.3
    assert config.mixing.probe.mode == "exact"
    assert _parse([*REQUIRED, "--bf16"]).optim.precision == "bf16"


@pytest.mark.parametrize("method, layout", [("static", "single_domain"), ("uniform", "single_domain"),
                                            ("odm", "hds"), ("acodm", "hds"), ("hds", "hds")])
def test_the_learning_schedulers_default_to_the_hds_layout(method, layout):
    """They read every domain's signal each step; `--mixing hds` alone must give them that."""
    assert _parse([*REQUIRED, "--mixing", method]).mixing.batch_layout == layout
    assert _parse([*REQUIRED, "--mixing", method, "--mixing-batch-layout", "mixed"]).mixing.batch_layout == "mixed"


def test_the_agents_update_overlaps_the_next_step_unless_asked_not_to():
    """The experiments ran with the overlapped update: `--mixing hds` alone must give it (the
    older spelling that asked for it still parses)."""
    assert _parse([*REQUIRED, "--mixing", "hds"]).mixing.overlap_update is True
    assert _parse([*REQUIRED, "--mixing", "hds", "--mixing-overlap-update"]).mixing.overlap_update is True
    assert _parse([*REQUIRED, "--mixing", "hds", "--mixing-no-overlap-update"]).mixing.overlap_update is False


@pytest.mark.parametrize("argv, message", [
    (["--bf16", "--fp16"], "--fp16 sets precision to 'fp16', which --bf16 already set"),
    (["--recompute-granularity", "full", "--recompute-activations"], "--recompute-activations sets"),
    (["--hds-action-bound", "wide"], "expected a number or 'none'"),
    (["--mixing", "random"], "invalid choice: 'random'"),
])
def test_contradictions_and_bad_values_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*REQUIRED, *argv])
    assert message in capsys.readouterr().err


def test_help_names_the_default():
    text = build_parser().format_help()
    assert "--hds-gamma GAMMA" in text and "(default: 0.95)" in text
    parser = argparse.ArgumentParser()
    assert undocumented_flags(parser) == []  # -h/--help is argparse's own


def test_a_repeated_flag_wins_over_its_earlier_occurrence():
    """EXTRA_ARGS in the example scripts are appended last and override the script's own flags."""
    assert _parse([*REQUIRED, "--hidden-dropout", "0.1", "--hidden-dropout", "0.0"]).model.hidden_dropout == 0.0

"""One FLOPs formula and one peak table (megatron_hds/training/flops.py) behind every MFU figure:
the trainer's log line and tools/bench_model.py agree, the formula counts matmul parameters
only, and the peak table answers per device and precision."""

import importlib.util
import pathlib

import pytest
import torch

from megatron_hds.arguments import parse_args
from megatron_hds.config import MODEL_PRESETS, model_preset
from megatron_hds.parallel.state import ParallelState
from megatron_hds.training import flops
from megatron_hds.training import trainer as trainer_module

_PATH = pathlib.Path(__file__).resolve().parents[2] / "tools" / "bench_model.py"
_spec = importlib.util.spec_from_file_location("bench_model", _PATH)
bench_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_model)


def _old_estimate(config) -> float:
    """What the trainer logged before: 6 N + 12 L h s with N = every parameter (input embedding,
    position table, norms and biases included)."""
    return 6.0 * config.num_parameters() + 12.0 * config.num_layers * config.hidden_size * config.seq_length


def test_trainer_and_bench_model_share_the_formula_and_the_table():
    for name in ("model_flops_per_token", "peak_flops", "device_name"):
        assert getattr(trainer_module, name) is getattr(flops, name), f"trainer.py has its own {name}"
        assert getattr(bench_model, name) is getattr(flops, name), f"bench_model.py has its own {name}"
    for preset in MODEL_PRESETS:
        for tp in (1, 2, 8):
            config = model_preset(preset)
            assert trainer_module.model_flops_per_token(config, tp) == bench_model.model_flops_per_token(config, tp)


def test_pythia_160m_by_hand():
    # 12 layers, hidden 768, MLP 3072, vocabulary 50,304 (padded), sequence 2048, untied output.
    per_layer = 3 * 768 * 768 + 768 * 768 + 768 * 3072 + 3072 * 768  # QKV, dense, MLP in, MLP out
    matmul = 12 * per_layer + 50304 * 768  # + the output layer
    assert matmul == 123_568_128
    expected = 6 * matmul + 12 * 12 * 768 * 2048
    assert expected == 967_901_184
    assert flops.model_flops_per_token(model_preset("pythia-160m")) == expected


def test_swiglu_counts_the_gate_and_a_tied_output_layer_counts_once():
    base = model_preset("tiny", ffn_hidden_size=128)
    swiglu = model_preset("tiny", ffn_hidden_size=128, swiglu=True)
    assert flops.matmul_parameters(swiglu) - flops.matmul_parameters(base) == base.num_layers * 64 * 128
    tied = model_preset("tiny", untie_embeddings_and_output_weights=False)
    assert flops.matmul_parameters(tied) == flops.matmul_parameters(model_preset("tiny"))


def test_the_old_estimate_was_24_and_10_percent_too_high():
    """The trainer used to count every parameter: pythia-160m 1.2004e9 against 0.9679e9 FLOPs per
    token (+24.0%), pythia-1b 6.876e9 against 6.255e9 (+9.9%)."""
    for preset, excess in (("pythia-160m", 0.240), ("pythia-1b", 0.099)):
        config = model_preset(preset)
        assert _old_estimate(config) / flops.model_flops_per_token(config) - 1 == pytest.approx(excess, abs=0.001)


def test_trainer_logs_mfu_with_the_formula_and_the_table(demo_manifest, monkeypatch):
    monkeypatch.setattr(trainer_module, "device_name", lambda device: "NVIDIA H100 80GB HBM3")
    config = parse_args(["--data-manifest", demo_manifest, "--num-layers", "2", "--hidden-size", "32",
                         "--num-attention-heads", "4", "--seq-length", "32", "--global-batch-size", "4",
                         "--micro-batch-size", "2", "--train-iters", "1", "--split", "80,10,10",
                         "--eval-iters", "1", "--mixing", "static"])
    trainer = trainer_module.Trainer(config, ParallelState.from_config(config.parallel))
    logged = trainer.metrics.config
    assert logged.flops_per_token == flops.model_flops_per_token(config.model, 1)
    assert logged.flops_per_token < _old_estimate(config.model)
    assert logged.peak_flops_per_device == 67e12  # H100 SXM, fp32
    trainer.metrics.close()


@pytest.mark.parametrize("name,precision,peak", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989e12),
    ("NVIDIA H100 PCIe", "bf16", 756e12),
    ("NVIDIA H100 PCIe", "fp32", 51e12),
    ("NVIDIA GH200 480GB", "fp16", 989e12),
    ("NVIDIA H200", "bf16", 989e12),
    ("NVIDIA H800", "bf16", 989e12),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
    ("NVIDIA A100-SXM4-80GB", "fp32", 19.5e12),
    ("NVIDIA A800 80GB PCIe", "fp16", 312e12),
    ("NVIDIA L40S", "bf16", 362e12),
    ("NVIDIA A10G", "fp32", 31.2e12),
    ("Tesla T4", "bf16", None),
    (None, "bf16", None),
])
def test_peak_table(name, precision, peak):
    assert flops.peak_flops(name, precision) == peak


def test_every_entry_is_reachable_and_bad_precisions_are_refused():
    for key, peaks in flops.PEAK_FLOPS:  # no earlier, shorter key shadows a later one
        assert flops.peak_flops(f"NVIDIA {key}", "bf16") == peaks["bf16"], key
    with pytest.raises(ValueError, match="unknown precision 'fp8'; accepted: bf16, fp16, fp32"):
        flops.peak_flops("NVIDIA H100", "fp8")


def test_device_name_mfu_and_bench_model_peak(monkeypatch):
    assert flops.device_name(torch.device("cpu")) is None
    assert flops.mfu(1000.0, 1e9, 1e12, 2) == pytest.approx(0.5)
    monkeypatch.setattr(bench_model, "device_name", lambda device: "NVIDIA A100-SXM4-80GB")
    assert bench_model.device_peak(torch.device("cuda"), "bf16", None)[0] == 312.0
    monkeypatch.setattr(bench_model, "device_name", lambda device: "Tesla T4")
    with pytest.raises(SystemExit, match="no peak for device 'Tesla T4'"):
        bench_model.device_peak(torch.device("cuda"), "bf16", None)

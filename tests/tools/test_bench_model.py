"""tools/bench_model.py runs, and its plain single-file GPT reproduces our model's loss exactly.

The plain GPT is an independent implementation (nn.Linear, batch-first, F.cross_entropy),
so agreement with it checks our model's math, not only the benchmark.
"""
import importlib.util
import pathlib
import re

import pytest
import torch

from megatron_hds.config import ModelConfig
from megatron_hds.model.gpt import GPTModel
from megatron_hds.parallel.state import ParallelState

_PATH = pathlib.Path(__file__).resolve().parents[2] / "tools" / "bench_model.py"
_spec = importlib.util.spec_from_file_location("bench_model", _PATH)
bench_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_model)

BASE = dict(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=50, seq_length=12,
            make_vocab_size_divisible_by=16)


@pytest.mark.parametrize("overrides", [
    {},
    dict(position_embedding_type="rope", rotary_percent=0.25, parallel_residual=True,
         untie_embeddings_and_output_weights=True),
    dict(position_embedding_type="rope", normalization="RMSNorm", swiglu=True, add_bias_linear=False),
], ids=["gpt2", "neox", "llama"])
def test_plain_gpt_reproduces_our_loss_and_gradients(overrides):
    config = ModelConfig(**BASE, **overrides)
    ours = GPTModel(config, ParallelState.single("cpu"), seed=3)
    plain = bench_model.PlainGPT(config, "cpu", torch.float32)
    plain.load_state_dict(ours.state_dict())
    tokens, labels = torch.randint(0, 50, (2, 3, 12), generator=torch.Generator().manual_seed(0))
    ours_loss = ours(tokens=tokens, labels=labels).mean()
    plain_loss = plain(tokens, labels)
    torch.testing.assert_close(ours_loss, plain_loss, rtol=1e-5, atol=0)
    ours_loss.backward()
    plain_loss.backward()
    plain_params = dict(plain.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, plain_params[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_bench_prints_throughput_and_mfu(capsys):
    bench_model.main(["--model", "tiny", "--micro-batch-size", "1", "--warmup", "1", "--steps", "1",
                      "--peak-tflops", "1.0"])
    out = capsys.readouterr().out
    assert "megatron_hds GPTModel" in out and "plain PyTorch GPT" in out
    assert "tokens/s" in out and "MFU" in out and "peak 1.000 TFLOP/s" in out
    kept = [float(m) for m in re.findall(r"activations kept for backward ([0-9.]+) MiB", out)]
    bench_model.main(["--model", "tiny", "--micro-batch-size", "1", "--warmup", "1", "--steps", "1", "--no-plain",
                      "--recompute-granularity", "full", "--recompute-method", "uniform"])
    out = capsys.readouterr().out
    assert "recompute full/uniform/1" in out
    kept += [float(m) for m in re.findall(r"activations kept for backward ([0-9.]+) MiB", out)]
    assert len(kept) == 2 and 0 < kept[1] < kept[0]

"""Single-process behaviour of the GPT model: shapes, init, causality, rotary, backends."""
import math

import pytest
import torch

from megatron_hds.config import ModelConfig, model_preset
from megatron_hds.model import backends
from megatron_hds.model.gpt import GPTModel
from megatron_hds.model.transformer import RotaryEmbedding, apply_rotary
from megatron_hds.parallel.state import ParallelState

BASE = dict(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=50, seq_length=12,
            make_vocab_size_divisible_by=16)
VARIANTS = {
    "gpt2": {},
    "neox": dict(position_embedding_type="rope", rotary_percent=0.25, parallel_residual=True,
                 untie_embeddings_and_output_weights=True),
    "llama": dict(position_embedding_type="rope", normalization="RMSNorm", swiglu=True, add_bias_linear=False),
}


def _model(seed=0, **overrides):
    return GPTModel(ModelConfig(**{**BASE, **overrides}), ParallelState.single("cpu"), seed=seed)


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_count_and_output_shapes(variant):
    model = _model(**VARIANTS[variant])
    assert sum(p.numel() for p in model.parameters()) == model.config.num_parameters()
    tokens, labels = torch.randint(0, 50, (2, 3, 12))
    loss = model(tokens=tokens, labels=labels)
    assert loss.shape == (3, 12) and loss.dtype == torch.float32
    assert model(tokens=tokens).shape == (3, 12, 64)  # vocab 50 padded to 64
    # A fresh model predicts close to uniformly over the padded vocab.
    assert abs(loss.mean().item() - math.log(64)) < 0.3


def test_tied_and_untied_heads():
    tied, untied = _model(), _model(untie_embeddings_and_output_weights=True)
    assert tied.output_layer is None and tied.output_weight() is tied.embedding.word_embeddings.weight
    assert untied.output_weight() is untied.output_layer.weight
    assert not torch.equal(untied.output_layer.weight, untied.embedding.word_embeddings.weight)


def test_megatron_init_scales_output_layers():
    model = _model(num_layers=8, hidden_size=256, num_attention_heads=4)
    std = 0.02
    layer = model.layers["3"]
    assert layer.self_attention.query_key_value.weight.std().item() == pytest.approx(std, rel=0.05)
    scaled = std / math.sqrt(2 * 8)
    assert layer.self_attention.dense.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert layer.mlp.dense_4h_to_h.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert torch.all(layer.self_attention.query_key_value.bias == 0)
    assert torch.all(layer.input_layernorm.weight == 1)


def test_init_is_deterministic_in_the_seed():
    a, b, c = _model(seed=1), _model(seed=1), _model(seed=2)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if pa.std() > 0:
            assert not torch.equal(pa, pc), name


@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_is_causal(variant):
    model = _model(**VARIANTS[variant])
    tokens = torch.randint(0, 50, (1, 12))
    changed = tokens.clone()
    changed[0, 7] = (tokens[0, 7] + 1) % 50
    a, b = model(tokens=tokens, labels=tokens), model(tokens=changed, labels=tokens)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_partial_rotary_rotates_only_its_dims_and_encodes_relative_position():
    head_dim, rot = 16, 4
    rotary = RotaryEmbedding(rot, 10000, torch.device("cpu"))(10)
    q = torch.randn(1, 1, 1, head_dim).expand(10, 1, 1, head_dim)
    k = torch.randn(1, 1, 1, head_dim).expand(10, 1, 1, head_dim)
    rq, rk = apply_rotary(q, rotary), apply_rotary(k, rotary)
    torch.testing.assert_close(rq[..., rot:], q[..., rot:])
    torch.testing.assert_close(rq[0], q[0])  # position 0 is the identity
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    # <R_m q, R_n k> depends on m - n only.
    dots = (rq[:, None] * rk[None, :]).sum(-1).squeeze()
    torch.testing.assert_close(dots[5, 2], dots[7, 4])
    assert not torch.allclose(dots[5, 2], dots[5, 4])


def test_backend_probe_is_cached_and_keeps_parameter_names():
    assert backends.probe() is backends.probe()
    local = _model(normalization="RMSNorm")
    te = _model(normalization="RMSNorm", transformer_impl="transformer_engine")
    assert [n for n, _ in local.named_parameters()] == [n for n, _ in te.named_parameters()]
    assert local.state_dict().keys() == te.state_dict().keys()


def test_tiny_preset_builds():
    config = model_preset("tiny")
    model = GPTModel(config, ParallelState.single("cpu"))
    assert sum(p.numel() for p in model.parameters()) == config.num_parameters()


@pytest.mark.gpu
def test_model_on_gpu_matches_cpu():
    config = ModelConfig(**BASE)
    cpu = GPTModel(config, ParallelState.single("cpu"), seed=0)
    gpu = GPTModel(config, ParallelState.single("cuda"), seed=0)
    tokens = torch.randint(0, 50, (2, 12))
    expected = cpu(tokens=tokens, labels=tokens)
    got = gpu(tokens=tokens.to("cuda"), labels=tokens.to("cuda")).cpu()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)

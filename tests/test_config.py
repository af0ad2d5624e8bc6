"""Config validation and presets (no processes)."""
import pytest

from megatron_hds.config import ModelConfig, ParallelConfig, model_preset


def test_pythia_presets_have_published_parameter_counts():
    # Totals from the Pythia model card (untied embeddings, vocab padded to 50304).
    assert model_preset("pythia-160m").num_parameters() == 162_322_944
    assert model_preset("pythia-410m").num_parameters() == 405_334_016
    assert model_preset("pythia-1b").num_parameters() == 1_011_781_632


def test_vocab_padding_is_a_multiple_of_divisor_times_tp():
    config = model_preset("pythia-1b")
    assert config.padded_vocab_size(1) == 50304
    assert config.padded_vocab_size(2) == 50432  # next multiple of 256
    assert config.padded_vocab_size(8) % (128 * 8) == 0


def test_defaults_are_derived():
    c = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=100, seq_length=32)
    assert c.ffn_hidden_size == 256 and c.max_position_embeddings == 32
    s = ModelConfig(num_layers=2, hidden_size=96, num_attention_heads=4, vocab_size=100, seq_length=32, swiglu=True)
    assert s.ffn_hidden_size == 256  # 8/3 * 96 = 256, already a multiple of 64


@pytest.mark.parametrize("override, message", [
    (dict(normalization="BatchNorm"), "normalization='BatchNorm'.*LayerNorm, RMSNorm"),
    (dict(position_embedding_type="alibi"), "position_embedding_type='alibi'.*learned_absolute, rope"),
    (dict(num_attention_heads=5), "hidden_size=64 is not divisible by num_attention_heads=5"),
    (dict(hidden_dropout=1.0), r"hidden_dropout=1.0.*\[0, 1\)"),
    (dict(num_layers=0), "num_layers=0"),
    (dict(max_position_embeddings=8), "max_position_embeddings=8 is smaller than seq_length=32"),
    (dict(transformer_impl="fast"), "transformer_impl='fast'"),
])
def test_bad_values_are_named(override, message):
    kwargs = dict(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=100, seq_length=32)
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**kwargs, **override})


def test_unknown_preset_and_parallel_sizes():
    with pytest.raises(ValueError, match="unknown model preset 'gpt5'.*pythia-1b"):
        model_preset("gpt5")
    with pytest.raises(ValueError, match="tensor_model_parallel_size=0"):
        ParallelConfig(tensor_model_parallel_size=0)

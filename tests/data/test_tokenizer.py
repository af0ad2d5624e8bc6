"""The SentencePiece wrapper (Megatron tokenizer types), vocab padding, and train_tokenizer.py."""

import os
import pickle

import pytest

from megatron_hds.data.tokenizer import SentencePieceTokenizer, build_tokenizer, padded_vocab_size
from tests.conftest import DEMO_TEST_VOCAB, run_tool


def test_round_trip_is_byte_exact_on_every_domain(sp_model, demo_documents):
    tok = SentencePieceTokenizer(sp_model)
    seen = set()
    for domain, text in demo_documents:
        assert tok.detokenize(tok.tokenize(text)) == text, domain
        seen.add(domain)
    assert len(seen) >= 6
    # Characters never seen in training still round-trip (byte fallback).
    odd = "Ünïcödé ✓ 漢字 \t\n  spaces  "
    assert tok.detokenize(tok.tokenize(odd)) == odd


def test_megatron_tokenizer_types(sp_model):
    gpt = build_tokenizer("GPTSentencePieceTokenizer", sp_model)
    assert gpt.vocab_size == DEMO_TEST_VOCAB
    assert (gpt.eod, gpt.bos, gpt.eos, gpt.pad) == (2, 1, 2, 3)

    llama = build_tokenizer("Llama2Tokenizer", sp_model)
    assert llama.tokenize("hello world") == [1] + gpt.tokenize("hello world")
    assert llama.eod == 2

    # Megatron's SentencePieceTokenizer adds <CLS> <SEP> <EOD> <MASK> after the model's
    # vocabulary (our model has none of them) and reuses the model's pad/bos/eos.
    sp = build_tokenizer("SentencePieceTokenizer", sp_model)
    assert sp.vocab_size == DEMO_TEST_VOCAB + 4
    assert sp.eod == DEMO_TEST_VOCAB + 2
    assert (sp.pad, sp.bos, sp.eos) == (3, 1, 2)
    assert sp.tokenize("hello world") == gpt.tokenize("hello world")


def test_padded_vocab_size_matches_megatron():
    assert padded_vocab_size(50257, 128, 1) == 50304  # GPT-2's padded vocab in Megatron
    assert padded_vocab_size(50257, 128, 2) == 50432
    assert padded_vocab_size(256, 128, 2) == 256
    assert padded_vocab_size(257, 128, 2) == 512
    with pytest.raises(ValueError, match="-1"):
        padded_vocab_size(-1)
    with pytest.raises(ValueError, match="0"):
        padded_vocab_size(100, 0)


def test_padded_vocab_size_of_tokenizer(sp_model):
    tok = SentencePieceTokenizer(sp_model)
    assert tok.padded_vocab_size(128, 4) == 2048


def test_bad_tokenizer_arguments(sp_model, tmp_path):
    with pytest.raises(ValueError, match="GPT2BPETokenizer is not supported"):
        build_tokenizer("GPT2BPETokenizer", sp_model)
    with pytest.raises(ValueError, match="unknown --tokenizer-type 'Bogus'"):
        build_tokenizer("Bogus", sp_model)
    with pytest.raises(FileNotFoundError, match="nope.model"):
        build_tokenizer("GPTSentencePieceTokenizer", str(tmp_path / "nope.model"))


def test_tokenizer_pickles_for_workers(sp_model):
    tok = SentencePieceTokenizer(sp_model, "Llama2Tokenizer")
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.tokenizer_type == "Llama2Tokenizer"
    assert clone.tokenize("pickled text") == tok.tokenize("pickled text")


def test_train_tokenizer_cli(tmp_path):
    corpus = tmp_path / "tiny.jsonl"
    lines = [f'{{"text": "document number {i} says hello to the tokenizer trainer"}}' for i in range(200)]
    corpus.write_text("\n".join(lines + ["{broken json", '{"other": 1}']) + "\n")
    prefix = tmp_path / "out" / "tiny"
    proc = run_tool("train_tokenizer", "--input", str(corpus), "--model-prefix", str(prefix), "--vocab-size", "400")
    assert "trained on 200 documents (2 malformed lines skipped)" in proc.stdout
    assert os.path.isfile(f"{prefix}.model") and os.path.isfile(f"{prefix}.vocab")
    tok = SentencePieceTokenizer(f"{prefix}.model")
    assert 256 < tok.vocab_size <= 400  # 256 byte-fallback pieces + learned ones
    assert tok.detokenize(tok.tokenize("document number 7")) == "document number 7"
    assert not [name for name in os.listdir(prefix.parent) if ".tmp" in name]

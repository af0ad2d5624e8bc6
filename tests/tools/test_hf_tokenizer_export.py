"""The exported Hugging Face tokenizer encodes as our SentencePiece tokenizer does, for unigram
and BPE models, with our trainer's settings and with SentencePiece's defaults (NFKC, whitespace
collapsing, no user-defined pieces), as GPTSentencePieceTokenizer and as Llama2Tokenizer (BOS
first). transformers' own converter gave other ids before 5.24 (no dummy prefix; other BPE
merges), so the export builds the model and pipeline from the SentencePiece file itself; a
mismatch on the probe texts refuses the export."""

import io
import os

import pytest

transformers = pytest.importorskip("transformers")
sentencepiece = pytest.importorskip("sentencepiece")

from megatron_hds.data.tokenizer import build_tokenizer, train_sentencepiece  # noqa: E402
from megatron_hds.checkpoint import hf_tokenizer  # noqa: E402

VOCAB = 600
TEXTS = ("Hello  world\n\tindented 12345", " leading space", "trailing  ", "  two leading", "a\n\nb\t\tc",
         "ünïcödé ☃ text", "x", "tabs\tand\nnewlines \n mixed  \t ")


@pytest.fixture(scope="module")
def sample(demo_documents):
    return [text for _, text in demo_documents[:300]]


@pytest.fixture(scope="module", params=["ours-unigram", "ours-bpe", "spm-defaults-unigram", "spm-defaults-bpe"])
def sp_model_file(request, sample, tmp_path_factory):
    """Our trainer's models (identity normalisation, whitespace kept, newline and tab pieces) and
    SentencePiece's defaults (nmt_nfkc, extra whitespace removed), each unigram and BPE."""
    kind, model_type = request.param.rsplit("-", 1)
    prefix = str(tmp_path_factory.mktemp("sp") / request.param)
    if kind == "ours":
        return train_sentencepiece(sample, prefix, VOCAB, model_type=model_type, num_threads=1)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([line for text in sample for line in text.splitlines() if line.strip()]),
        model_writer=model, vocab_size=VOCAB, model_type=model_type, byte_fallback=True, unk_id=0, bos_id=1,
        eos_id=2, pad_id=3, hard_vocab_limit=False, num_threads=1, minloglevel=2)
    path = prefix + ".model"
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return path


@pytest.mark.parametrize("tokenizer_type", ["GPTSentencePieceTokenizer", "Llama2Tokenizer"])
def test_export_encodes_as_sentencepiece(sp_model_file, tokenizer_type, sample, tmp_path):
    hf_tokenizer.save_hf_tokenizer(sp_model_file, tokenizer_type, str(tmp_path))
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    ours = build_tokenizer(tokenizer_type, sp_model_file)
    for text in TEXTS:
        assert hf(text)["input_ids"] == ours.tokenize(text), repr(text)
    # Real documents. A unigram model can segment a long run of spaces in several ways of equal
    # score (16 + 1 spaces, or 1 + 16); SentencePiece and tokenizers break such ties differently.
    # Those documents still decode to the same text; BPE models have no ties.
    unigram = "unigram" in os.path.basename(sp_model_file)
    differing = 0
    for text in sample[:100]:
        got, want = hf(text)["input_ids"], ours.tokenize(text)
        if got != want:
            assert unigram, repr(text[:80])
            assert len(got) == len(want) and hf.decode(got) == hf.decode(want), repr(text[:80])
            differing += 1
    assert differing <= 5


def test_a_tokenizer_that_encodes_differently_is_refused(sp_model_file, tmp_path, monkeypatch):
    """What transformers 5.17 to 5.23 built (spaces escaped, no dummy prefix, no isolated newline
    and tab pieces): refused, nothing written."""
    from tokenizers import normalizers

    def without_prefix(backend, proto):
        backend.normalizer = normalizers.Replace(" ", "\u2581")

    monkeypatch.setattr(hf_tokenizer, "_set_sentencepiece_pipeline", without_prefix)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match=r"encodes 'Hello  world\\n\\tindented 12345' as .*: not exported"):
        hf_tokenizer.save_hf_tokenizer(sp_model_file, "GPTSentencePieceTokenizer", str(out))
    assert os.listdir(out) == []

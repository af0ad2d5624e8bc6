"""--tokenizer-type HuggingFaceTokenizer: a tokenizer.json (here a byte-level BPE trained on the
demo corpus, GPT-NeoX's kind) through preprocessing, training, the Hugging Face export (which
ships that tokenizer.json) and the import (which brings it back)."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

pytest.importorskip("tokenizers")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

from megatron_hds.arguments import parse_args  # noqa: E402
from megatron_hds.data.indexed_dataset import IndexedDataset  # noqa: E402
from megatron_hds.data.tokenizer import HuggingFaceTokenizer, build_tokenizer  # noqa: E402
from megatron_hds.parallel.state import ParallelState  # noqa: E402
from megatron_hds.training.trainer import Trainer  # noqa: E402

EOS = "<|endoftext|>"


def _byte_level_bpe(texts, special_tokens, vocab_size=400) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


@pytest.fixture(scope="module")
def hf_tokenizer_dir(demo_documents, tmp_path_factory) -> str:
    """A model-style directory: tokenizer.json and a tokenizer_config.json naming the EOS."""
    folder = tmp_path_factory.mktemp("hf_tokenizer")
    _byte_level_bpe([text for _, text in demo_documents[:300]], [EOS]).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOS, "bos_token": EOS}))
    return str(folder)


def test_ids_round_trip_and_megatron_semantics(hf_tokenizer_dir, demo_documents):
    tokenizer = build_tokenizer("HuggingFaceTokenizer", hf_tokenizer_dir)
    assert isinstance(tokenizer, HuggingFaceTokenizer)
    raw = Tokenizer.from_file(os.path.join(hf_tokenizer_dir, "tokenizer.json"))
    assert tokenizer.eod == raw.token_to_id(EOS) and tokenizer.vocab_size == raw.get_vocab_size(True)
    for _, text in demo_documents[:50]:
        ids = tokenizer.tokenize(text)
        assert ids == raw.encode(text).ids and EOS not in text
        assert tokenizer.detokenize(ids) == text  # byte-level BPE is lossless
    again = pickle.loads(pickle.dumps(tokenizer))  # preprocessing workers get it pickled
    assert again.tokenize("pickled text") == tokenizer.tokenize("pickled text")
    # The file alone works too (no config beside it: EOS found by its usual spelling).
    assert build_tokenizer("HuggingFaceTokenizer", os.path.join(hf_tokenizer_dir, "tokenizer.json")).eod == tokenizer.eod


def test_template_tokens_and_a_missing_eos(demo_documents, tmp_path):
    texts = [text for _, text in demo_documents[:100]]
    with_bos = _byte_level_bpe(texts, ["<s>", "</s>"])
    with_bos.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    with_bos.save(str(tmp_path / "bos.json"))
    tokenizer = HuggingFaceTokenizer(str(tmp_path / "bos.json"))
    assert tokenizer.eod == 1  # </s>
    assert tokenizer.tokenize("abc")[0] == 0 and tokenizer.tokenize("abc")[1:] == tokenizer.encode("abc")
    _byte_level_bpe(texts, ["<pad>"]).save(str(tmp_path / "no_eos.json"))
    with pytest.raises(ValueError, match="names no EOS token"):
        HuggingFaceTokenizer(str(tmp_path / "no_eos.json"))
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        HuggingFaceTokenizer(str(tmp_path))


def test_preprocess_train_export_and_import(hf_tokenizer_dir, demo_corpus, demo_documents, tmp_path):
    import preprocess_data

    from megatron_hds.checkpoint.hf_model import export_checkpoint, import_hf_model

    prefix = str(tmp_path / "data" / "demo")
    preprocess_data.preprocess(preprocess_data.parse_args(
        ["--input", demo_corpus, "--output-prefix", prefix, "--domain-key", "meta.pile_set_name",
         "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", hf_tokenizer_dir, "--append-eod"]))
    manifest = json.load(open(prefix + "_manifest.json"))
    tokenizer = build_tokenizer("HuggingFaceTokenizer", hf_tokenizer_dir)
    assert manifest["tokenizer"]["type"] == "HuggingFaceTokenizer"
    assert (manifest["tokenizer"]["vocab_size"], manifest["tokenizer"]["eod"]) == (tokenizer.vocab_size, tokenizer.eod)
    # The first document of a domain decodes back to its text, followed by the EOD.
    domain = manifest["domains"][0]
    dataset = IndexedDataset(os.path.join(os.path.dirname(prefix), domain["prefix"]))
    first = next(text for name, text in demo_documents if name == domain["name"])
    tokens = np.asarray(dataset[0])
    assert tokens[-1] == tokenizer.eod and tokenizer.detokenize(tokens[:-1]) == first

    save = str(tmp_path / "ckpt")
    config = parse_args(["--data-manifest", prefix + "_manifest.json", "--num-layers", "2", "--hidden-size", "32",
                         "--num-attention-heads", "4", "--seq-length", "32", "--position-embedding-type", "rope",
                         "--use-parallel-residual", "--untie-embeddings-and-output-weights",
                         "--global-batch-size", "4", "--micro-batch-size", "2", "--train-iters", "3",
                         "--lr-warmup-iters", "1", "--eval-interval", "0", "--eval-iters", "1", "--save", save])
    assert config.model.vocab_size == tokenizer.vocab_size
    Trainer(config, ParallelState.from_config(config.parallel)).train()

    transformers = pytest.importorskip("transformers")
    exported = export_checkpoint(save, str(tmp_path / "hf"))
    hf = transformers.AutoTokenizer.from_pretrained(exported)
    for _, text in demo_documents[:20]:
        assert hf(text)["input_ids"] == tokenizer.tokenize(text)
    assert json.load(open(os.path.join(exported, "config.json")))["eos_token_id"] == tokenizer.eod
    model = transformers.AutoModelForCausalLM.from_pretrained(exported)
    assert model.get_input_embeddings().weight.shape[0] == tokenizer.vocab_size
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([tokenizer.tokenize("a test")])).logits).all()

    _, _, imported = import_hf_model(exported, str(tmp_path / "imported"))
    assert imported["tokenizer_type"] == "HuggingFaceTokenizer"
    again = build_tokenizer(imported["tokenizer_type"], imported["tokenizer_model"])
    assert (again.eod, again.tokenize(first)) == (tokenizer.eod, tokenizer.tokenize(first))

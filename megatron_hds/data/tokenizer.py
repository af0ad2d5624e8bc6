"""Tokenizers with Megatron-LM's tokenizer-type semantics, and vocab padding for TP.

Four Megatron tokenizer types are supported, with Megatron's meaning:

- ``GPTSentencePieceTokenizer``: plain SentencePiece ids; EOD is the model's EOS id.
- ``Llama2Tokenizer``: as above, but ``tokenize`` prepends the BOS id to every text.
- ``SentencePieceTokenizer``: SentencePiece ids plus Megatron's special tokens
  (<CLS> <SEP> <EOD> <MASK> and pad/bos/eos); a special token missing from the
  model gets the next free id after the model's vocabulary, so the vocabulary can
  grow by up to seven ids. EOD is the <EOD> token.
- ``HuggingFaceTokenizer``: a Hugging Face fast tokenizer (``tokenizer.json``, e.g. GPT-NeoX's,
  which Pythia uses), read with the ``tokenizers`` library, offline; ``--tokenizer-model`` is
  the file or a model directory holding it. ``tokenize`` adds the special tokens the file's
  template adds (as Megatron's, which calls the tokenizer with its defaults); EOD is
  the EOS token named by the directory's ``tokenizer_config.json`` or
  ``special_tokens_map.json``, else the first of ``<|endoftext|>``, ``</s>``, ``<eos>``,
  ``<|end_of_text|>`` in the vocabulary. The vocabulary counts added tokens (Megatron's
  ``len(tokenizer)``).
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from functools import cached_property
from typing import Optional, Union

from megatron_hds.atomic_io import write_bytes_atomic

SENTENCEPIECE_TOKENIZER_TYPES = ("GPTSentencePieceTokenizer", "SentencePieceTokenizer", "Llama2Tokenizer")
SUPPORTED_TOKENIZER_TYPES = (*SENTENCEPIECE_TOKENIZER_TYPES, "HuggingFaceTokenizer")
# Megatron tokenizer types we recognise but do not implement (they need vocab/merges
# files or Hugging Face); named so the error can say so instead of "unknown".
_KNOWN_UNSUPPORTED = (
    "BertWordPieceLowerCase",
    "BertWordPieceCase",
    "GPT2BPETokenizer",
    "TikTokenizer",
    "Llama3Tokenizer",
    "MistralTokenizer",
    "NullTokenizer",
)


def padded_vocab_size(vocab_size: int, make_vocab_size_divisible_by: int = 128, tensor_model_parallel_size: int = 1) -> int:
    """Megatron's padding: round up to a multiple of make_vocab_size_divisible_by * TP,
    so every TP rank holds an equal, aligned slice of the embedding."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if make_vocab_size_divisible_by <= 0 or tensor_model_parallel_size <= 0:
        raise ValueError(
            "make_vocab_size_divisible_by and tensor_model_parallel_size must be positive, got "
            f"{make_vocab_size_divisible_by} and {tensor_model_parallel_size}"
        )
    multiple = make_vocab_size_divisible_by * tensor_model_parallel_size
    return -(-vocab_size // multiple) * multiple


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _FileTokenizer(ABC):
    """What both tokenizers share: pickled as their file paths (``__getstate__``) and loaded
    again on unpickling (``_load``), so preprocessing workers can share one; Megatron's padding."""

    @abstractmethod
    def _load(self) -> None:
        """Open the tokenizer file(s) named by the instance's attributes."""

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._load()

    def padded_vocab_size(self, make_vocab_size_divisible_by: int = 128, tensor_model_parallel_size: int = 1) -> int:
        return padded_vocab_size(self.vocab_size, make_vocab_size_divisible_by, tensor_model_parallel_size)


class SentencePieceTokenizer(_FileTokenizer):
    """A SentencePiece model wrapped with one of Megatron's SentencePiece tokenizer types.

    Picklable (it reloads the model from its path), so preprocessing workers can share it.
    """

    def __init__(self, model_path: str, tokenizer_type: str = "GPTSentencePieceTokenizer"):
        if tokenizer_type not in SENTENCEPIECE_TOKENIZER_TYPES:
            if tokenizer_type in SUPPORTED_TOKENIZER_TYPES:
                raise ValueError(f"{tokenizer_type} is not a SentencePiece tokenizer type: use build_tokenizer")
            if tokenizer_type in _KNOWN_UNSUPPORTED:
                raise ValueError(
                    f"--tokenizer-type {tokenizer_type} is not supported by megatron_hds; "
                    f"supported: {', '.join(SUPPORTED_TOKENIZER_TYPES)}"
                )
            raise ValueError(
                f"unknown --tokenizer-type {tokenizer_type!r}; supported: {', '.join(SUPPORTED_TOKENIZER_TYPES)}"
            )
        if not model_path or not os.path.isfile(model_path):
            raise FileNotFoundError(f"SentencePiece model not found: {model_path!r} (--tokenizer-model)")
        self.model_path = model_path
        self.tokenizer_type = tokenizer_type
        self._load()

    def _load(self) -> None:
        import sentencepiece

        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=self.model_path)
        except (RuntimeError, OSError) as error:
            raise ValueError(f"SentencePiece model {self.model_path!r} cannot be read ({error}): the file is damaged "
                             "or not a SentencePiece model (--tokenizer-model)") from None
        # Bound once: this is the per-document hot path of preprocessing.
        self._encode = self._sp.EncodeAsIds
        self._special_ids: dict[str, int] = {}
        if self.tokenizer_type == "SentencePieceTokenizer":
            self._add_megatron_special_tokens()

    def _add_megatron_special_tokens(self) -> None:
        next_id = self._sp.get_piece_size()

        def piece_or_new_id(token: str) -> int:
            nonlocal next_id
            piece_id = self._sp.piece_to_id(token)
            # piece_to_id answers the unk id for pieces the model does not have.
            if piece_id != self._sp.unk_id() or token == self._sp.id_to_piece(piece_id):
                return piece_id
            next_id += 1
            return next_id - 1

        for token in ("<CLS>", "<SEP>", "<EOD>", "<MASK>"):
            self._special_ids[token] = piece_or_new_id(token)
        # pad/bos/eos: the model's own ids where it defines them, else new tokens.
        for token, model_id in (("<PAD>", self._sp.pad_id()), ("<BOS>", self._sp.bos_id()), ("<EOS>", self._sp.eos_id())):
            self._special_ids[token] = model_id if model_id >= 0 else piece_or_new_id(token)
        self._extended_vocab_size = next_id

    def __getstate__(self):
        return {"model_path": self.model_path, "tokenizer_type": self.tokenizer_type}

    @property
    def vocab_size(self) -> int:
        if self.tokenizer_type == "SentencePieceTokenizer":
            return self._extended_vocab_size
        return self._sp.get_piece_size()

    @property
    def eod(self) -> int:
        if self.tokenizer_type == "SentencePieceTokenizer":
            return self._special_ids["<EOD>"]
        if self._sp.eos_id() < 0:
            raise ValueError(f"SentencePiece model {self.model_path} has no EOS piece to use as EOD")
        return self._sp.eos_id()

    @property
    def bos(self) -> int:
        return self._special_ids["<BOS>"] if self._special_ids else self._sp.bos_id()

    @property
    def eos(self) -> int:
        return self._special_ids["<EOS>"] if self._special_ids else self._sp.eos_id()

    @property
    def pad(self) -> int:
        return self._special_ids["<PAD>"] if self._special_ids else self._sp.pad_id()

    @cached_property
    def model_sha256(self) -> str:
        return file_sha256(self.model_path)

    def encode(self, text: str) -> list[int]:
        """Plain SentencePiece ids for text, no BOS/EOD."""
        return self._encode(text)

    def tokenize(self, text: str) -> list[int]:
        """Megatron's ``tokenize``: Llama2Tokenizer prepends BOS; the others are plain ids."""
        ids = self._encode(text)
        if self.tokenizer_type == "Llama2Tokenizer":
            ids.insert(0, self._sp.bos_id())
        return ids

    def detokenize(self, ids) -> str:
        """Text for ids; special ids outside the SentencePiece model (Megatron extras) are dropped."""
        size = self._sp.get_piece_size()
        return self._sp.decode([int(i) for i in ids if 0 <= int(i) < size])

    decode = detokenize


# EOS spellings of common Hugging Face tokenizers, tried in order when no config names one.
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")


def hf_tokenizer_file(model_path: str) -> str:
    """The tokenizer.json a --tokenizer-model names: the file itself, or the one in a directory."""
    path = os.path.join(model_path, "tokenizer.json") if os.path.isdir(model_path) else model_path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Hugging Face tokenizer file not found: {path!r} (--tokenizer-model: a "
                                "tokenizer.json or a directory holding one)")
    return path


def _token_text(value) -> Optional[str]:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class HuggingFaceTokenizer(_FileTokenizer):
    """A Hugging Face fast tokenizer (tokenizer.json) with Megatron's HuggingFaceTokenizer semantics.

    Picklable (it reloads the file), so preprocessing workers can share it.
    """

    tokenizer_type = "HuggingFaceTokenizer"

    def __init__(self, model_path: str):
        if not model_path:
            raise FileNotFoundError("--tokenizer-model is required: a tokenizer.json or a directory holding one")
        self.json_path = hf_tokenizer_file(model_path)
        self.model_path = model_path
        self._load()

    def _load(self) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as error:
            raise ImportError("--tokenizer-type HuggingFaceTokenizer needs the `tokenizers` package: "
                              "pip install 'megatron_hds[hf]'") from error
        try:
            self._tokenizer = Tokenizer.from_file(self.json_path)
        except Exception as error:  # the tokenizers package raises its own exception type
            raise ValueError(f"Hugging Face tokenizer {self.json_path!r} cannot be read ({error}): the file is "
                             "damaged or not a tokenizer.json (--tokenizer-model)") from None
        self._encode = self._tokenizer.encode
        self._named = self._configured_special_tokens()
        self._eod = self._special_id("eos", _EOS_CANDIDATES)
        if self._eod is None:
            raise ValueError(f"{self.json_path} names no EOS token (tokenizer_config.json / special_tokens_map.json) "
                             f"and has none of {', '.join(_EOS_CANDIDATES)}: Megatron's EOD needs one")

    def _configured_special_tokens(self) -> dict:
        """bos/eos/pad/unk token texts from the files beside tokenizer.json (config first)."""
        named = {}
        folder = os.path.dirname(self.json_path)
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
                for kind in ("bos", "eos", "pad", "unk"):
                    text = _token_text(data.get(f"{kind}_token"))
                    if text is not None:
                        named[kind] = text
        return named

    def _special_id(self, kind: str, candidates=()) -> Optional[int]:
        for text in ([self._named[kind]] if kind in self._named else []) + list(candidates):
            token_id = self._tokenizer.token_to_id(text)
            if token_id is not None:
                return token_id
        return None

    def __getstate__(self):
        return {"json_path": self.json_path, "model_path": self.model_path}

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def eod(self) -> int:
        return self._eod

    @property
    def eos(self) -> int:
        return self._eod

    @property
    def bos(self) -> Optional[int]:
        return self._special_id("bos")

    @property
    def pad(self) -> Optional[int]:
        return self._special_id("pad")

    @property
    def special_token_texts(self) -> dict:
        """bos/eos/pad/unk texts for an exported tokenizer_config.json (those the vocabulary has)."""
        texts = {kind: text for kind, text in self._named.items() if self._tokenizer.token_to_id(text) is not None}
        texts.setdefault("eos", self._tokenizer.id_to_token(self._eod))
        return texts

    @cached_property
    def model_sha256(self) -> str:
        return file_sha256(self.json_path)

    def encode(self, text: str) -> list[int]:
        """Ids for text, no special tokens added."""
        return self._encode(text, add_special_tokens=False).ids

    def tokenize(self, text: str) -> list[int]:
        """Megatron's ``tokenize``: the tokenizer's own special tokens are added as its template
        says (none for GPT-NeoX's; a BOS for Llama-3-style templates)."""
        return self._encode(text).ids

    def detokenize(self, ids) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    decode = detokenize


Tokenizer = Union[SentencePieceTokenizer, HuggingFaceTokenizer]


def build_tokenizer(tokenizer_type: str, tokenizer_model: str) -> Tokenizer:
    """The tokenizer for Megatron's (--tokenizer-type, --tokenizer-model) pair."""
    if tokenizer_type == "HuggingFaceTokenizer":
        return HuggingFaceTokenizer(tokenizer_model)
    return SentencePieceTokenizer(tokenizer_model, tokenizer_type)


def check_matches_record(tokenizer: Tokenizer, model_path: str, record: dict, where: str) -> None:
    """Refuse a tokenizer other than the one the datasets were made with: ``record`` is what
    preprocessing wrote of its tokenizer (a manifest's "tokenizer": vocab_size, sha256, eod,
    model), ``where`` names the datasets. Token ids mean nothing under another vocabulary."""
    made_with = f"the datasets of {where} were made with {record.get('model')!r}"
    if tokenizer.vocab_size != record.get("vocab_size"):
        raise ValueError(f"--tokenizer-model {model_path!r} has a vocabulary of {tokenizer.vocab_size} tokens, but "
                         f"{made_with} ({record.get('vocab_size')} tokens): use that tokenizer, or leave "
                         "--tokenizer-model out to use the manifest's")
    if record.get("sha256") and tokenizer.model_sha256 != record["sha256"]:
        raise ValueError(f"--tokenizer-model {model_path!r} (sha256 {tokenizer.model_sha256[:12]}) is not the "
                         f"tokenizer {made_with} (sha256 {record['sha256'][:12]}), though both have "
                         f"{tokenizer.vocab_size} tokens: use that tokenizer, or leave --tokenizer-model out")
    if record.get("eod") is not None and tokenizer.eod != record["eod"]:
        raise ValueError(f"--tokenizer-model {model_path!r} with --tokenizer-type {tokenizer.tokenizer_type} ends "
                         f"documents with token {tokenizer.eod}, but {made_with} ({record.get('type')}), whose end "
                         f"of document is {record['eod']}: give the same --tokenizer-type")


def _training_pieces(texts, max_chars: int):
    """Cut documents into pieces SentencePiece accepts (it drops 'sentences' longer than
    its max_sentence_length), at line boundaries so newlines stay inside pieces."""
    for text in texts:
        piece: list[str] = []
        size = 0
        for line in text.splitlines(keepends=True):
            if size + len(line) > max_chars and piece:
                yield "".join(piece)
                piece, size = [], 0
            while len(line) > max_chars:
                yield line[:max_chars]
                line = line[max_chars:]
            piece.append(line)
            size += len(line)
        if piece:
            yield "".join(piece)


def train_sentencepiece(
    texts,
    model_prefix: str,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 0.9999,
    input_sentence_size: int = 2_000_000,
    num_threads: int | None = None,
    seed_sentencepiece_size: int = 1_000_000,
) -> str:
    """Train a SentencePiece model on an iterable of texts and write PREFIX.model
    (atomically) and PREFIX.vocab. Returns the model path.

    The model keeps text byte-exact: identity normalisation, whitespace preserved,
    byte fallback for unseen characters, digits split; ids 0-3 are unk, bos, eos
    (Megatron's EOD for GPTSentencePieceTokenizer) and pad.
    """
    import io

    import sentencepiece

    # 256 byte-fallback pieces, unk/bos/eos/pad, and the newline and tab symbols.
    if vocab_size < 262:
        raise ValueError(f"--vocab-size must be at least 262 (byte fallback needs 256 pieces), got {vocab_size}")
    if model_type not in ("unigram", "bpe", "char", "word"):
        raise ValueError(f"--model-type must be one of unigram, bpe, char, word; got {model_type!r}")
    directory = os.path.dirname(os.path.abspath(model_prefix))
    os.makedirs(directory, exist_ok=True)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=_training_pieces(texts, max_chars=2048),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        seed_sentencepiece_size=seed_sentencepiece_size,
        max_sentence_length=8192,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        byte_fallback=True,
        user_defined_symbols=["\n", "\t"],
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        hard_vocab_limit=False,
        num_threads=num_threads or os.cpu_count() or 1,
        minloglevel=2,
    )
    model_path = model_prefix + ".model"
    write_bytes_atomic(model_path, model.getvalue())
    processor = sentencepiece.SentencePieceProcessor(model_file=model_path)
    with open(model_prefix + ".vocab", "w", encoding="utf-8") as f:
        for i in range(processor.get_piece_size()):
            f.write(f"{processor.id_to_piece(i)}\t{processor.get_score(i)}\n")
    return model_path

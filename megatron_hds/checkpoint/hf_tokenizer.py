"""Tokenizers in Hugging Face form and back: the export writes tokenizer.json and friends that
encode text exactly as our tokenizer does (checked on probe texts before anything is written),
and the import copies a transformers directory's tokenizer next to our checkpoint.

A SentencePiece model is converted from the file itself (its unigram or BPE model, and the
normalizer and pre-tokenizer its settings imply), not through transformers' converter; a
HuggingFaceTokenizer's tokenizer.json is exported as it is. transformers, tokenizers and
protobuf are imported only when used.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Optional, Tuple

from megatron_hds.atomic_io import atomic_path


# --------------------------------------------------------------------------- export


# Texts every exported tokenizer must encode exactly as our SentencePiece tokenizer does: double
# and leading spaces (the dummy prefix), newlines and tabs (user-defined pieces), digits, and
# characters outside the vocabulary (byte fallback).
_TOKENIZER_PROBES = ("Hello  world\n\tindented 12345", " leading space", "trailing  ", "a\n\nb\t\tc",
                     "ünïcödé ☃ text", "x")


def _set_sentencepiece_pipeline(backend, proto) -> None:
    """Give `backend` (a tokenizers.Tokenizer holding the SentencePiece model's vocabulary) the
    normalizer, pre-tokenizer and decoder that SentencePiece's own settings imply. transformers
    builds them too, but releases before 5.24 left out the dummy prefix and the user-defined
    pieces (the export then tokenised differently, silently); set here they do not depend on it."""
    import re

    from tokenizers import Regex, decoders, normalizers, pre_tokenizers

    spec = proto.normalizer_spec
    steps = [normalizers.Precompiled(spec.precompiled_charsmap)] if spec.precompiled_charsmap else []
    if spec.remove_extra_whitespaces:  # spaces only: SentencePiece keeps newlines and tabs
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "\u2581"))
    if spec.add_dummy_prefix:
        # SentencePiece adds the prefix even before a leading space; Metaspace would not.
        steps.append(normalizers.Replace(Regex("\\A\u2581"), "\u2581\u2581"))
    backend.normalizer = normalizers.Sequence(steps)
    splits = [pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=False)] \
        if spec.add_dummy_prefix else []
    user_defined = [piece.piece for piece in proto.pieces if piece.type == 4]
    if user_defined:  # emitted whole, never merged with their neighbours
        splits.append(pre_tokenizers.Split(Regex("|".join(re.escape(p) for p in user_defined)), "isolated"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(splits)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if spec.add_dummy_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(steps)


def _sentencepiece_model(proto):
    """A tokenizers.Tokenizer with the SentencePiece model's vocabulary (unigram: pieces and scores;
    BPE: merges ranked as SentencePiece applies them, by the merged piece's score, then its id),
    or None for other model types."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE, Unigram

    spec = proto.trainer_spec
    if spec.model_type == 1:
        return Tokenizer(Unigram([(p.piece, p.score) for p in proto.pieces], spec.unk_id, spec.byte_fallback))
    if spec.model_type != 2:
        return None
    normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == 1}
    ranked = sorted((-score, i, piece[:k], piece[k:]) for piece, (score, i) in normal.items()
                    for k in range(1, len(piece)) if piece[:k] in normal and piece[k:] in normal)
    return Tokenizer(BPE({p.piece: i for i, p in enumerate(proto.pieces)}, [(a, b) for _, _, a, b in ranked],
                         unk_token=proto.pieces[spec.unk_id].piece, fuse_unk=True, byte_fallback=spec.byte_fallback))


def _save_hf_json_tokenizer(model: str, out_dir: str) -> dict:
    """HuggingFaceTokenizer: its tokenizer.json as it is, with a tokenizer_config.json naming its
    special tokens; checked on _TOKENIZER_PROBES like the SentencePiece export."""
    from transformers import PreTrainedTokenizerFast

    from megatron_hds.data.tokenizer import HuggingFaceTokenizer

    ours = HuggingFaceTokenizer(model)
    texts = ours.special_token_texts
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=ours.json_path, model_max_length=int(1e30),
                                        **{f"{kind}_token": text for kind, text in texts.items()})
    for text in _TOKENIZER_PROBES:
        if tokenizer(text)["input_ids"] != ours.tokenize(text):
            raise ValueError(f"the Hugging Face tokenizer from {ours.json_path} encodes {text!r} as "
                             f"{tokenizer(text)['input_ids']}, ours as {ours.tokenize(text)}: not exported")
    tokenizer.save_pretrained(out_dir)
    return {f"{kind}_token_id": tokenizer.convert_tokens_to_ids(text) for kind, text in texts.items() if kind != "unk"}


def save_hf_tokenizer(sp_model: str, tokenizer_type: str, out_dir: str) -> dict:
    """Write tokenizer.json/tokenizer_config.json (and a copy of the SentencePiece model) that
    encode text as our tokenizer does; returns the special token ids for the model config.
    Checks that they do (on _TOKENIZER_PROBES) and raises, writing nothing, when not.
    A HuggingFaceTokenizer's own tokenizer.json is written as it is."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import import_protobuf

    from megatron_hds.data.tokenizer import build_tokenizer

    if tokenizer_type == "HuggingFaceTokenizer":
        return _save_hf_json_tokenizer(sp_model, out_dir)
    if tokenizer_type not in ("GPTSentencePieceTokenizer", "Llama2Tokenizer"):
        raise ValueError(f"tokenizer type {tokenizer_type!r} cannot be exported (Megatron's extra special tokens "
                         "have no Hugging Face counterpart): GPTSentencePieceTokenizer and Llama2Tokenizer can")
    ours = build_tokenizer(tokenizer_type, sp_model)
    proto = import_protobuf().ModelProto()
    with open(sp_model, "rb") as f:
        proto.ParseFromString(f.read())
    pieces = [(p.piece, p.score) for p in proto.pieces]
    backend = _sentencepiece_model(proto)
    if backend is None:
        raise ValueError(f"SentencePiece model {sp_model} (model_type {proto.trainer_spec.model_type}) cannot be "
                         "converted: unigram and BPE models can")
    _set_sentencepiece_pipeline(backend, proto)
    special = {name: (pieces[i][0], i) for name, i in (("bos", ours.bos), ("eos", ours.eos), ("unk", 0),
                                                       ("pad", ours.pad)) if i is not None and i >= 0}
    if tokenizer_type == "Llama2Tokenizer":  # Megatron's Llama2Tokenizer prepends BOS to every text
        bos, bos_id = special["bos"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    for text in _TOKENIZER_PROBES:
        if backend.encode(text).ids != ours.tokenize(text):
            raise ValueError(f"the Hugging Face tokenizer built from {sp_model} encodes {text!r} as "
                             f"{backend.encode(text).ids}, ours as {ours.tokenize(text)}: not exported (the model "
                             "has a SentencePiece setting this export does not reproduce)")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=int(1e30),
                                        **{f"{name}_token": piece for name, (piece, _) in special.items()})
    tokenizer.save_pretrained(out_dir)
    shutil.copyfile(sp_model, os.path.join(out_dir, "tokenizer.model"))
    return {f"{name}_token_id": i for name, (_, i) in special.items() if name != "unk"}


# --------------------------------------------------------------------------- import


def run_tokenizer(args: dict) -> Tuple[Optional[str], str]:
    """(SentencePiece model path, tokenizer type) a run was trained with: --tokenizer-model, else the manifest's."""
    data = args.get("data") or {}
    model, kind = data.get("tokenizer_model"), data.get("tokenizer_type") or "GPTSentencePieceTokenizer"
    if model is None and data.get("data_manifest") and os.path.isfile(data["data_manifest"]):
        with open(data["data_manifest"], encoding="utf-8") as f:
            record = json.load(f)["tokenizer"]
        model, kind = record["model"], record.get("type", kind)
    return model, kind


_HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _import_json_tokenizer(hf_dir: str, save_dir: str) -> dict:
    """Copy a fast tokenizer's files to save_dir/hf_tokenizer (HuggingFaceTokenizer, e.g. Pythia's)."""
    dest = os.path.join(os.path.abspath(save_dir), "hf_tokenizer")
    os.makedirs(dest, exist_ok=True)
    for name in _HF_TOKENIZER_FILES:
        if os.path.isfile(os.path.join(hf_dir, name)):
            with atomic_path(os.path.join(dest, name)) as tmp:
                shutil.copyfile(os.path.join(hf_dir, name), tmp)
    return {"tokenizer_model": dest, "tokenizer_type": "HuggingFaceTokenizer"}


def import_tokenizer(hf_dir: str, save_dir: str) -> Optional[dict]:
    """Copy the directory's SentencePiece model to save_dir, else its tokenizer.json (if any);
    the run's ``data`` args naming it."""
    source = os.path.join(hf_dir, "tokenizer.model")
    if not os.path.isfile(source):
        if os.path.isfile(os.path.join(hf_dir, "tokenizer.json")):
            return _import_json_tokenizer(hf_dir, save_dir)
        return None
    os.makedirs(save_dir, exist_ok=True)
    dest = os.path.join(os.path.abspath(save_dir), "tokenizer.model")
    with atomic_path(dest) as tmp:
        shutil.copyfile(source, tmp)
    config_path = os.path.join(hf_dir, "tokenizer_config.json")
    add_bos = False
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            add_bos = bool(json.load(f).get("add_bos_token", False))
    return {"tokenizer_model": dest, "tokenizer_type": "Llama2Tokenizer" if add_bos else "GPTSentencePieceTokenizer"}

#!/usr/bin/env python3
"""Tokenize JSONL corpora into Megatron indexed datasets, one per domain.

Megatron-LM's flags with Megatron's meaning, plus per-domain output:

    python tools/preprocess_data.py --input 'pile/train/*.jsonl.zst' \\
        --output-prefix data/pile --domain-key meta.pile_set_name \\
        --tokenizer-type GPTSentencePieceTokenizer --tokenizer-model tok.model \\
        --append-eod --workers 8

writes data/pile_<domain-slug>_text_document.{bin,idx} per domain, each with its
per-document MTLD quality sidecar (.mtld.npy), and data/pile_manifest.json.
Without --domain-key the output is Megatron's <prefix>_<key>_document.{bin,idx}.

Malformed lines are skipped and counted per reason (--strict stops at the first,
naming file and line). Outputs are written under temporary names and renamed at
the end; the manifest is written last, and an earlier run's manifest is removed before
its datasets are replaced: a failure (a full disk) at any point leaves either the
previous complete output or no manifest, never a manifest naming datasets it does not
describe.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from array import array
from collections import Counter


import numpy as np

from megatron_hds.data.indexed_dataset import (
    IndexedDatasetBuilder,
    data_file_path,
    index_file_path,
    optimal_dtype,
)
from megatron_hds.data.jsonl_input import (
    SKIP_DESCRIPTIONS,
    SKIP_REASONS,
    MalformedLine,
    expand_inputs,
    iter_lines,
    parse_line,
)
from megatron_hds.data.manifest import (
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    domain_slug,
    manifest_path,
    relative_entry,
    write_manifest,
)
from megatron_hds.data.quality import MTLD_BACKEND, MTLD_THRESHOLD, mtld, quality_path, save_quality
from megatron_hds.data.tokenizer import SUPPORTED_TOKENIZER_TYPES, build_tokenizer

# Arguments that change what is written; the manifest records these (and not, e.g.,
# --workers) so the output is byte-identical for any worker count.
_RECORDED_ARGS = (
    "input",
    "json_keys",
    "domain_key",
    "tokenizer_type",
    "tokenizer_model",
    "append_eod",
    "keep_newlines",
    "output_prefix",
)


class PreprocessError(RuntimeError):
    """A --strict failure or bad input that stops the run; its message names the cause."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("input data")
    group.add_argument("--input", nargs="+", required=True, help="JSONL files or globs (.jsonl, .jsonl.zst, .jsonl.gz)")
    group.add_argument("--json-keys", nargs="+", default=["text"], help="keys to extract from each JSON line")
    group.add_argument(
        "--domain-key",
        default=None,
        help="dotted path to each line's domain, e.g. meta.pile_set_name; writes one dataset per domain",
    )
    group.add_argument("--split-sentences", action="store_true", help="not supported (needs NLTK); fails clearly")
    group.add_argument("--keep-newlines", action="store_true", help="accepted for Megatron compatibility")
    group.add_argument("--strict", action="store_true", help="fail on the first malformed line instead of skipping it")

    group = parser.add_argument_group("tokenizer")
    group.add_argument("--tokenizer-type", default="GPTSentencePieceTokenizer", help=f"one of {SUPPORTED_TOKENIZER_TYPES}")
    group.add_argument("--tokenizer-model", required=True,
                       help="SentencePiece model file; HuggingFaceTokenizer: a tokenizer.json or a directory holding one")
    group.add_argument("--append-eod", action="store_true", help="append the EOD token to every non-empty document")

    group = parser.add_argument_group("output data")
    group.add_argument("--output-prefix", required=True, help="path prefix of the output files")

    group = parser.add_argument_group("runtime")
    group.add_argument("--workers", type=int, default=1, help="tokenizing processes (output is identical for any N)")
    group.add_argument("--log-interval", type=int, default=10000, help="documents between progress lines (no TTY)")
    group.add_argument("--chunk-size", type=int, default=64, help="lines handed to a worker at a time")
    args = parser.parse_args(argv)
    if args.split_sentences:
        parser.error("--split-sentences is not supported by megatron_hds (documents are kept whole)")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.log_interval < 1 or args.chunk_size < 1:
        parser.error("--log-interval and --chunk-size must be at least 1")
    return args


class DocumentEncoder:
    """Per-line work of a tokenizing worker: parse, tokenize, measure MTLD."""

    def __init__(self, args):
        self.json_keys = tuple(args.json_keys)
        self.domain_key = args.domain_key
        self.append_eod = args.append_eod
        self.tokenizer = build_tokenizer(args.tokenizer_type, args.tokenizer_model)
        self.dtype = optimal_dtype(self.tokenizer.vocab_size)
        self.eod = self.tokenizer.eod if args.append_eod else None
        # Tokens put before every text (Llama2Tokenizer's BOS, a Hugging Face template's BOS);
        # MTLD is measured on the text's tokens only.
        self.lead = len(self.tokenizer.tokenize(""))

    def encode(self, line: bytes):
        """('ok', domain, [(tokens, lengths, mtld) per json key]) or ('skip', reason, detail)."""
        try:
            texts, domain = parse_line(line, self.json_keys, self.domain_key)
        except MalformedLine as e:
            return ("skip", e.reason, str(e))
        encoded = []
        for text in texts:
            ids = self.tokenizer.tokenize(text)
            body_end = len(ids)
            if self.eod is not None and body_end > self.lead:
                ids.append(self.eod)
            tokens = np.array(ids, dtype=self.dtype)
            quality = mtld(tokens[self.lead : body_end], MTLD_THRESHOLD) if body_end > self.lead else 0.0
            # Megatron writes a document whose text tokenizes to nothing as an empty document.
            encoded.append((tokens, [len(ids)] if len(ids) else [], quality))
        return ("ok", domain, encoded)


_worker_encoder: DocumentEncoder | None = None


def _init_worker(args) -> None:
    global _worker_encoder
    _worker_encoder = DocumentEncoder(args)


def _encode_in_worker(line: bytes):
    return _worker_encoder.encode(line)


class _DatasetWriter:
    """One output dataset being written under temporary names."""

    def __init__(self, prefix: str, dtype):
        self.prefix = prefix
        self.tmp_prefix = f"{prefix}.tmp-{os.getpid()}"
        self.builder = IndexedDatasetBuilder(data_file_path(self.tmp_prefix), dtype=dtype)
        self.quality = array("f")
        self.documents = 0
        self.sequences = 0
        self.tokens = 0

    def add(self, tokens: np.ndarray, lengths: list[int], quality: float) -> None:
        self.builder.add_document(tokens, lengths)
        self.quality.append(quality)
        self.documents += 1
        self.sequences += len(lengths)
        self.tokens += tokens.size

    def finish_temporary(self) -> None:
        self.builder.finalize(index_file_path(self.tmp_prefix))
        save_quality(quality_path(self.tmp_prefix), np.frombuffer(self.quality, dtype=np.float32))

    def publish(self) -> None:
        # Old index first, index last: a crash in between leaves a .bin with no .idx,
        # which no reader takes for a complete dataset.
        if os.path.exists(index_file_path(self.prefix)):
            os.remove(index_file_path(self.prefix))
        os.replace(data_file_path(self.tmp_prefix), data_file_path(self.prefix))
        os.replace(quality_path(self.tmp_prefix), quality_path(self.prefix))
        os.replace(index_file_path(self.tmp_prefix), index_file_path(self.prefix))

    def discard(self) -> None:
        try:
            self.builder.close()
        except OSError:  # the disk that failed the write may fail the flush too: the files go anyway
            pass
        for path in (data_file_path(self.tmp_prefix), index_file_path(self.tmp_prefix), quality_path(self.tmp_prefix)):
            if os.path.exists(path):
                os.remove(path)

    def stats(self) -> dict:
        return {
            "documents": self.documents,
            "sequences": self.sequences,
            "tokens": self.tokens,
            "mean_mtld": float(np.mean(self.quality)) if self.documents else 0.0,
        }


class _Progress:
    """A tqdm bar on a terminal; otherwise a Megatron-style line every log interval."""

    def __init__(self, log_interval: int):
        self.log_interval = log_interval
        self.start = time.time()
        self.documents = 0
        self.tokens = 0
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(unit=" docs", unit_scale=True, dynamic_ncols=True, file=sys.stderr)

    def update(self, documents: int, tokens: int) -> None:
        self.documents += documents
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(documents)
            if self.documents % 1000 < documents:
                self.bar.set_postfix_str(f"{self.tokens / max(time.time() - self.start, 1e-9):,.0f} tokens/s")
        elif self.documents % self.log_interval < documents:
            elapsed = max(time.time() - self.start, 1e-9)
            print(
                f"processed {self.documents} documents ({self.documents / elapsed:,.0f} docs/s, "
                f"{self.tokens / elapsed:,.0f} tokens/s)",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _output_prefix(args, key: str, slug: str | None) -> str:
    if slug is None:
        return f"{args.output_prefix}_{key}_document"
    return f"{args.output_prefix}_{slug}_{key}_document"


def preprocess(args) -> dict:
    """Run the preprocessing described by parsed args; returns the summary."""
    paths = expand_inputs(args.input)
    encoder = DocumentEncoder(args)
    out_dir = os.path.dirname(os.path.abspath(args.output_prefix))
    os.makedirs(out_dir, exist_ok=True)
    default_domain = os.path.basename(args.output_prefix) or "corpus"

    writers: dict[str, dict[str, _DatasetWriter]] = {}  # domain -> json key -> writer
    slugs: dict[str, str] = {}  # slug -> domain name
    skipped: Counter = Counter()
    progress = _Progress(args.log_interval)
    pool = None
    if args.workers > 1:
        pool = multiprocessing.Pool(args.workers, initializer=_init_worker, initargs=(args,))
    start = time.time()
    try:
        for path in paths:
            lines = iter_lines(path)
            if pool is None:
                results = map(encoder.encode, lines)
            else:
                results = pool.imap(_encode_in_worker, lines, args.chunk_size)
            for line_number, result in enumerate(results, start=1):
                if result[0] == "skip":
                    _, reason, detail = result
                    if args.strict:
                        raise PreprocessError(f"{path}: line {line_number}: {detail} (--strict)")
                    skipped[reason] += 1
                    continue
                _, domain, encoded = result
                if domain is None:
                    domain = default_domain
                domain_writers = writers.get(domain)
                if domain_writers is None:
                    slug = None
                    if args.domain_key is not None:
                        slug = domain_slug(domain, slugs)
                        slugs[slug] = domain
                    domain_writers = writers[domain] = {
                        key: _DatasetWriter(_output_prefix(args, key, slug), encoder.dtype) for key in args.json_keys
                    }
                tokens = 0
                for key, (doc_tokens, lengths, quality) in zip(args.json_keys, encoded):
                    domain_writers[key].add(doc_tokens, lengths, quality)
                    tokens += doc_tokens.size
                progress.update(1, tokens)
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
        all_writers = [w for ws in writers.values() for w in ws.values()]
        for writer in all_writers:
            writer.finish_temporary()
    except BaseException:
        for ws in writers.values():
            for writer in ws.values():
                writer.discard()
        raise
    finally:
        progress.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    elapsed = time.time() - start

    # The old manifest describes the datasets about to be replaced: it goes first.
    if os.path.exists(manifest_path(args.output_prefix)):
        os.remove(manifest_path(args.output_prefix))
    for writer in all_writers:
        writer.publish()
    summary = _summary(args, encoder, writers, slugs, skipped, elapsed)
    write_manifest(manifest_path(args.output_prefix), summary["manifest"])
    return summary


def _summary(args, encoder, writers, slugs, skipped, elapsed) -> dict:
    main_key = args.json_keys[0]
    total_tokens = sum(ws[main_key].tokens for ws in writers.values())
    manifest_file = manifest_path(args.output_prefix)
    slug_of = {name: slug for slug, name in slugs.items()}
    domains = []
    for name in sorted(writers):
        ws = writers[name]
        main = ws[main_key]
        entry = {
            "name": name,
            "slug": slug_of.get(name),
            **relative_entry(main.prefix, manifest_file),
            **{k: v for k, v in main.stats().items()},
            "natural_weight": main.tokens / total_tokens if total_tokens else 0.0,
        }
        if len(ws) > 1:
            entry["datasets"] = {key: {**relative_entry(w.prefix, manifest_file), **w.stats()} for key, w in ws.items()}
        domains.append(entry)
    tokenizer = encoder.tokenizer
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "tokenizer": {
            "type": args.tokenizer_type,
            "model": os.path.abspath(args.tokenizer_model),
            "sha256": tokenizer.model_sha256,
            "vocab_size": tokenizer.vocab_size,
            "eod": tokenizer.eod,
        },
        "dtype": np.dtype(encoder.dtype).name,
        "json_keys": list(args.json_keys),
        "domain_key": args.domain_key,
        "quality": {"measure": "mtld", "threshold": MTLD_THRESHOLD, "suffix": ".mtld.npy"},
        "domains": domains,
        "totals": {
            "documents": sum(d["documents"] for d in domains),
            "tokens": total_tokens,
            "skipped": {reason: skipped.get(reason, 0) for reason in SKIP_REASONS},
        },
        "arguments": {name: getattr(args, name) for name in _RECORDED_ARGS},
    }
    documents = manifest["totals"]["documents"]
    return {
        "manifest": manifest,
        "elapsed_s": elapsed,
        "documents_per_s": documents / elapsed if elapsed > 0 else 0.0,
        "tokens_per_s": total_tokens / elapsed if elapsed > 0 else 0.0,
        "workers": args.workers,
    }


def print_summary(summary: dict) -> None:
    manifest = summary["manifest"]
    totals = manifest["totals"]
    print(f"{'domain':<28} {'documents':>10} {'tokens':>13} {'share':>7} {'mean MTLD':>10}")
    for d in manifest["domains"]:
        print(f"{d['name']:<28} {d['documents']:>10,} {d['tokens']:>13,} {d['natural_weight']:>7.3f} {d['mean_mtld']:>10.1f}")
    print(f"{'total':<28} {totals['documents']:>10,} {totals['tokens']:>13,}")
    bad = {r: n for r, n in totals["skipped"].items() if n}
    if bad:
        print("skipped lines: " + ", ".join(f"{n:,} {SKIP_DESCRIPTIONS[r]} ({r})" for r, n in bad.items()))
    else:
        print("skipped lines: none")
    print(
        f"{summary['elapsed_s']:.1f}s with {summary['workers']} worker(s): "
        f"{summary['documents_per_s']:,.0f} documents/s, {summary['tokens_per_s']:,.0f} tokens/s "
        f"(MTLD backend: {MTLD_BACKEND})"
    )
    print(f"manifest: {manifest_path(manifest['arguments']['output_prefix'])}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        summary = preprocess(args)
    except (PreprocessError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print_summary(summary)
    return summary


if __name__ == "__main__":
    main()

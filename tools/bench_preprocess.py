#!/usr/bin/env python3
"""Benchmark tools/preprocess_data.py against Megatron-LM's preprocess_data.py, per worker.

What it measures
    Documents/s and tokens/s, in total and per worker, of

    * ``ours``      tools/preprocess_data.py's ``preprocess()`` run in this process, as
                    shipped (default --chunk-size, its own progress output, MTLD sidecar,
                    manifest), with --append-eod; once without --domain-key (Megatron's
                    exact output format) and once with --domain-key meta.pile_set_name
                    (one dataset per domain); on the plain .jsonl and, for the demo
                    corpus, also on the .jsonl.zst (The Pile's format);
    * ``megatron``  a re-creation of Megatron-LM's preprocess_data.py per-document work on
                    the same plain .jsonl and the same SentencePiece model: the main process
                    opens the input with ``open(path, 'r', encoding='utf-8')`` and runs
                    ``multiprocessing.Pool(N).imap(encoder.encode, fin, 32)`` (a 1-process
                    pool for --workers 1, as Megatron does); ``encode`` is ``json.loads``,
                    ``SentencePieceProcessor.encode_as_ids`` (through a
                    GPTSentencePieceTokenizer-like ``tokenize``), list extend and the EOD
                    append; the main process calls ``builder.add_document(ids, lens)`` per
                    document and ``finalize(idx)`` at the end. The builder is
                    megatron.core's ``IndexedDatasetBuilder`` when ``megatron.core`` is
                    importable; otherwise ours, fed ``numpy.array(ids, dtype=...)`` exactly
                    as Megatron's builder converts (the table says which was used).

    "seconds" is wall-clock time measured the same way for every row: from the call
    until the outputs are finalized (tokenizer loading, pool start, reading, tokenizing,
    writing; for ours also the MTLD sidecar and manifest). Each configuration runs
    --repeats times and the best (shortest) run is reported. "CPU s" is the user+system
    CPU time of the main process plus its pool workers in that best run.

How to run (from the repository root, no installation needed)
    python tools/bench_preprocess.py                       # demo corpus 16 MB, workers 1 2
    PYTHONPATH=/path/to/megatron-core python tools/bench_preprocess.py   # Megatron's builder
    python tools/bench_preprocess.py --input my.jsonl --tokenizer-model tok.model --workers 1 4 8

    The demo corpus's train split (write_demo_split, seed 1234) and the SentencePiece model
    trained on it (--vocab-size, default 8000) are cached in --work-dir, so reruns skip that setup.

How to read the numbers
    Compare "tok/s/worker" of ``ours`` and ``megatron`` at the same worker count and input
    (the "ours/megatron" column is that ratio; >= 1.00 means ours is at least as fast per
    worker). The machine may be shared: timings are noisy, hence best-of-N; differences of
    a few percent are within noise. Also look at "tok/CPU-s": with --workers 1 ours
    tokenizes in the main process (1 process) while Megatron uses main process + 1 pool
    worker (2 processes), so on a machine with spare cores Megatron's workers=1 wall time
    can be lower even when it spends more CPU. With N workers both tools use N pool
    workers plus the main process.
    "byte-identical" compares ours (no --domain-key) with the baseline's .bin and .idx;
    it is a real cross-check only when the baseline used megatron.core's builder.
    Nothing here is tuned to favour either side; report numbers as printed.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import multiprocessing
import os
import platform
import resource
import shlex
import sys
import tempfile
import time


import numpy as np

from megatron_hds.data import quality as _quality
from megatron_hds.data.indexed_dataset import IndexedDatasetBuilder as OurIndexedDatasetBuilder

DEMO_SEED = 1234


# --------------------------------------------------------------------------------------
# Megatron-LM preprocess_data.py re-creation
# --------------------------------------------------------------------------------------


class _GPTSentencePieceTokenizer:
    """The parts of Megatron's GPTSentencePieceTokenizer that preprocessing touches."""

    def __init__(self, model_file: str):
        import sentencepiece

        self.tokenizer = sentencepiece.SentencePieceProcessor(model_file=model_file)
        self._eos_id = self.tokenizer.eos_id()
        self._vocab_size = self.tokenizer.get_piece_size()

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def tokenize(self, text):
        return self.tokenizer.encode_as_ids(text)

    @property
    def eod(self) -> int:
        return self._eos_id


class MegatronEncoder:
    """Megatron's Encoder: the tokenizer is a class attribute set by the pool initializer;
    the instance (holding args) is what imap pickles with every chunk."""

    tokenizer = None

    def __init__(self, args):
        self.args = args

    def initializer(self):
        MegatronEncoder.tokenizer = _GPTSentencePieceTokenizer(self.args.tokenizer_model)

    def encode(self, json_line):
        data = json.loads(json_line)
        ids = {}
        lens = {}
        for key in self.args.json_keys:
            text = data[key]
            if isinstance(text, list):
                sentences = text
            else:
                sentences = [text]
            doc_ids = []
            sentence_lens = []
            for sentence in sentences:
                sentence_ids = MegatronEncoder.tokenizer.tokenize(sentence)
                if len(sentence_ids) > 0:
                    doc_ids.extend(sentence_ids)
                    sentence_lens.append(len(sentence_ids))
            if len(doc_ids) > 0 and self.args.append_eod:
                doc_ids.append(MegatronEncoder.tokenizer.eod)
                sentence_lens[-1] += 1
            ids[key] = doc_ids
            lens[key] = sentence_lens
        return ids, lens, len(json_line)


def _megatron_args(input_path: str, tokenizer_model: str, output_prefix: str, workers: int):
    """A namespace shaped like preprocess_data.py's parsed args (it is pickled per chunk)."""
    return argparse.Namespace(
        input=input_path,
        json_keys=["text"],
        split_sentences=False,
        keep_newlines=False,
        tokenizer_type="GPTSentencePieceTokenizer",
        tokenizer_model=tokenizer_model,
        vocab_file=None,
        vocab_size=786,
        merge_file=None,
        append_eod=True,
        lang="english",
        output_prefix=output_prefix,
        workers=workers,
        partitions=1,
        log_interval=1000,
        keep_sequential_samples=False,
        rank=1,
        make_vocab_size_divisible_by=128,
        tensor_model_parallel_size=1,
        vocab_extra_ids=0,
    )


class _OurBuilderAsMegatron:
    """Fallback when megatron.core is absent: our builder, given the array that Megatron's
    builder would build (numpy.array(ids, dtype=...)) per document."""

    def __init__(self, bin_path, dtype):
        self.dtype = dtype
        self._builder = OurIndexedDatasetBuilder(bin_path, dtype=dtype)

    def add_document(self, tensor, lengths):
        self._builder.add_document(np.array(tensor, dtype=self.dtype), lengths)

    def finalize(self, idx_path):
        self._builder.finalize(idx_path)


def _cpu_seconds() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def run_megatron(input_path, tokenizer_model, output_prefix, workers, builder_cls) -> dict:
    """Megatron-LM's Partition.process_json_file for one .jsonl, timed end to end."""
    args = _megatron_args(input_path, tokenizer_model, output_prefix, workers)
    cpu0 = _cpu_seconds()
    start = time.perf_counter()

    fin = open(input_path, "r", encoding="utf-8")
    encoder = MegatronEncoder(args)
    tokenizer = _GPTSentencePieceTokenizer(args.tokenizer_model)
    pool = multiprocessing.Pool(workers, initializer=encoder.initializer)
    encoded_docs = pool.imap(encoder.encode, fin, 32)
    dtype = np.uint16 if tokenizer.vocab_size < 65500 else np.int32  # DType.optimal_dtype
    bin_files, idx_files, builders = {}, {}, {}
    for key in args.json_keys:
        bin_files[key] = f"{output_prefix}_{key}_document.bin"
        idx_files[key] = f"{output_prefix}_{key}_document.idx"
        builders[key] = builder_cls(bin_files[key], dtype=dtype)
    total_bytes_processed = 0
    i = 0
    for i, (doc, sentence_lens, bytes_processed) in enumerate(encoded_docs, start=1):
        total_bytes_processed += bytes_processed
        for key in doc.keys():
            builders[key].add_document(doc[key], sentence_lens[key])
        if i % args.log_interval == 0:  # print_processing_stats (its print is left out)
            _ = total_bytes_processed / max(time.perf_counter() - start, 1e-9)
    fin.close()
    for key in args.json_keys:
        builders[key].finalize(idx_files[key])

    elapsed = time.perf_counter() - start
    # Outside the timing: reap the workers so their CPU time is counted (Megatron leaves
    # the pool to garbage collection).
    pool.close()
    pool.join()
    cpu = _cpu_seconds() - cpu0
    itemsize = np.dtype(dtype).itemsize
    tokens = os.path.getsize(bin_files["text"]) // itemsize
    return {"elapsed_s": elapsed, "cpu_s": cpu, "documents": i, "tokens": tokens, "prefix": f"{output_prefix}_text_document"}


# --------------------------------------------------------------------------------------
# Ours
# --------------------------------------------------------------------------------------


def _our_tool():
    """tools/preprocess_data.py as a module (tools/ is not a package)."""
    import importlib.util

    name = "preprocess_data"
    if name not in sys.modules:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "preprocess_data.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its pool pickles functions by module name
        spec.loader.exec_module(module)
    return sys.modules[name]


def run_ours(input_path, tokenizer_model, output_prefix, workers, domain_key) -> dict:
    tool = _our_tool()
    parse_args, preprocess = tool.parse_args, tool.preprocess

    argv = [
        "--input", input_path,
        "--output-prefix", output_prefix,
        "--tokenizer-type", "GPTSentencePieceTokenizer",
        "--tokenizer-model", tokenizer_model,
        "--append-eod",
        "--workers", str(workers),
    ]  # fmt: skip
    if domain_key:
        argv += ["--domain-key", domain_key]
    args = parse_args(argv)
    cpu0 = _cpu_seconds()
    start = time.perf_counter()
    summary = preprocess(args)
    elapsed = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu0
    totals = summary["manifest"]["totals"]
    return {
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "documents": totals["documents"],
        "tokens": totals["tokens"],
        "tool_elapsed_s": summary["elapsed_s"],
        "prefix": f"{output_prefix}_text_document",
    }


# --------------------------------------------------------------------------------------
# Setup: corpus and tokenizer
# --------------------------------------------------------------------------------------


def _plain_copy(path: str, work_dir: str) -> str:
    """A plain .jsonl of a (possibly compressed) JSONL file, since Megatron reads text only."""
    if not path.endswith((".zst", ".gz")):
        return path
    from megatron_hds.data.jsonl_input import iter_lines

    base = os.path.basename(path).rsplit(".", 1)[0]
    out = os.path.join(work_dir, f"plain_{base}")
    if not os.path.exists(out):
        tmp = f"{out}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            for line in iter_lines(path):
                f.write(line)
        os.replace(tmp, out)
    return out


def prepare_inputs(args) -> list[tuple[str, str]]:
    """[(label, path)]: the plain .jsonl first (read by both tools), then any other format."""
    from demo_corpus import write_demo_split

    if args.input:
        plain = _plain_copy(args.input, args.work_dir)
        inputs = [(".jsonl", plain)]
        if plain != args.input:
            inputs.append((os.path.basename(args.input).split(".", 1)[-1], args.input))
        return inputs
    stem = os.path.join(args.work_dir, f"demo_{args.size_mb:g}mb_seed{DEMO_SEED}")
    inputs = []
    for ext in (".jsonl", ".jsonl.zst"):
        path = stem + ext
        if not os.path.exists(path):
            print(f"writing demo corpus {path} ...", flush=True)
            write_demo_split(path, "train", size_mb=args.size_mb, seed=DEMO_SEED)
        inputs.append((ext, path))
    return inputs


def prepare_tokenizer(args, plain_input: str) -> str:
    if args.tokenizer_model:
        return args.tokenizer_model
    from megatron_hds.data.jsonl_input import MalformedLine, iter_lines, parse_line
    from megatron_hds.data.tokenizer import train_sentencepiece

    name = os.path.basename(plain_input).split(".", 1)[0]
    prefix = os.path.join(args.work_dir, f"tok_{name}_v{args.vocab_size}")
    model = prefix + ".model"
    if os.path.exists(model):
        return model

    def texts():
        for line in iter_lines(plain_input):
            try:
                (text,), _ = parse_line(line, ("text",), None)
            except MalformedLine:
                continue
            yield text

    print(f"training SentencePiece model {model} (vocab {args.vocab_size}) ...", flush=True)
    t = time.perf_counter()
    train_sentencepiece(texts(), prefix, args.vocab_size)
    print(f"  done in {time.perf_counter() - t:.0f}s", flush=True)
    return model


def _load_megatron_builder():
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    except Exception as e:  # absent, or present but broken
        return None, f"not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    import megatron.core

    version = getattr(megatron.core, "__version__", "?")
    return IndexedDatasetBuilder, f"megatron.core {version} IndexedDatasetBuilder"


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=None, help="a JSONL file (default: the demo corpus, generated)")
    parser.add_argument("--size-mb", type=float, default=16.0, help="demo corpus size in MB of text (default 16)")
    parser.add_argument("--tokenizer-model", default=None, help="SentencePiece model (default: train one, cached)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="vocab of the trained model (default 8000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration; the best is reported")
    parser.add_argument(
        "--domain-key", default="meta.pile_set_name", help="domain key for ours' per-domain rows ('' to skip them)"
    )
    parser.add_argument(
        "--work-dir",
        default=os.path.join(tempfile.gettempdir(), "megatron_hds_bench_preprocess"),
        help="corpus, tokenizer and outputs (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or min(args.workers) < 1:
        parser.error("--repeats and --workers must be at least 1")
    return args


def print_table(rows: list) -> None:
    """One line per (tool, input, workers) row, with the ratio to Megatron's row of the same workers."""
    header = (
        f"{'tool':<18} {'input':<11} {'workers':>7} {'seconds':>8} {'CPU s':>7} {'documents':>9} {'tokens':>11} "
        f"{'docs/s':>9} {'tokens/s':>11} {'tok/s/worker':>12} {'tok/CPU-s':>10} {'ours/megatron':>13}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        t = row["elapsed_s"]
        mega = next(r for r in rows if r["tool"] == "megatron" and r["workers"] == row["workers"])
        ratio = "" if row["tool"] == "megatron" else f"{(row['tokens'] / t) / (mega['tokens'] / mega['elapsed_s']):.2f}"
        if ratio and row["input"] != mega["input"]:
            ratio += " *"
        print(
            f"{row['tool']:<18} {row['input']:<11} {row['workers']:>7} {t:>8.2f} {row['cpu_s']:>7.2f} "
            f"{row['documents']:>9,} {row['tokens']:>11,} {row['documents'] / t:>9,.0f} {row['tokens'] / t:>11,.0f} "
            f"{row['tokens'] / t / row['workers']:>12,.0f} {row['tokens'] / row['cpu_s']:>10,.0f} {ratio:>13}"
        )


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    command = shlex.join([sys.executable] + sys.argv)
    if os.environ.get("PYTHONPATH"):
        command = f"PYTHONPATH={shlex.quote(os.environ['PYTHONPATH'])} {command}"

    megatron_builder, builder_note = _load_megatron_builder()
    baseline_builder = megatron_builder or _OurBuilderAsMegatron
    if megatron_builder is None:
        builder_note = f"ours, fed numpy.array(ids, dtype) per document (megatron.core {builder_note})"

    inputs = prepare_inputs(args)
    plain_label, plain_path = inputs[0]
    tokenizer_model = prepare_tokenizer(args, plain_path)
    out_dir = os.path.join(args.work_dir, "out")
    os.makedirs(out_dir, exist_ok=True)

    # (tool label, input label, input path, domain key or None)
    configs = [("megatron", plain_label, plain_path, None), ("ours", plain_label, plain_path, None)]
    if args.domain_key:
        for label, path in inputs:
            configs.append(("ours --domain-key", label, path, args.domain_key))

    rows = []
    identical = {}
    for workers in args.workers:
        for tool, in_label, path, domain_key in configs:
            tag = f"{tool.split()[0]}{'_dom' if domain_key else ''}_{in_label.strip('.').replace('.', '_')}_w{workers}"
            prefix = os.path.join(out_dir, tag, "bench")
            os.makedirs(os.path.dirname(prefix), exist_ok=True)
            best = None
            for r in range(args.repeats):
                if tool == "megatron":
                    res = run_megatron(path, tokenizer_model, prefix, workers, baseline_builder)
                else:
                    res = run_ours(path, tokenizer_model, prefix, workers, domain_key)
                print(
                    f"  {tool:<18} {in_label:<11} workers={workers} run {r + 1}/{args.repeats}: "
                    f"{res['elapsed_s']:.2f}s wall, {res['cpu_s']:.2f}s CPU",
                    flush=True,
                )
                if best is None or res["elapsed_s"] < best["elapsed_s"]:
                    best = res
            rows.append({"tool": tool, "input": in_label, "workers": workers, "domain_key": domain_key, **best})
        mega = next(r for r in rows if r["tool"] == "megatron" and r["workers"] == workers)
        ours = next(r for r in rows if r["tool"] == "ours" and r["workers"] == workers)
        identical[workers] = all(
            filecmp.cmp(mega["prefix"] + ext, ours["prefix"] + ext, shallow=False) for ext in (".bin", ".idx")
        )

    print()
    print(f"command: {command}")
    print(
        f"machine: {os.cpu_count()} CPUs (os.cpu_count), {platform.python_implementation()} {platform.python_version()}, "
        f"numpy {np.__version__}, sentencepiece {__import__('sentencepiece').__version__}"
    )
    print(f"MTLD backend: {_quality.MTLD_BACKEND} ({'C extension' if _quality.MTLD_BACKEND == 'c' else 'pure Python'})")
    print(f"baseline builder: {builder_note}")
    print(f"tokenizer: {tokenizer_model}")
    for label, path in inputs:
        print(f"input {label}: {path} ({os.path.getsize(path) / 1e6:.1f} MB on disk)")
    print(f"best of {args.repeats} run(s) per row (wall clock); machine may be shared, so expect a few % noise")
    print()
    print_table(rows)
    print()
    print("ours/megatron: tokens/s of the row over megatron's at the same worker count (= per-worker ratio);")
    print("  * = different input file format than megatron's row (Megatron-LM cannot read .zst).")
    cross = "megatron.core's builder" if megatron_builder is not None else "our builder (not an independent check)"
    for workers, same in identical.items():
        print(f"byte-identical (ours without --domain-key vs baseline via {cross}), workers={workers}: "
              f"{'yes' if same else 'no'}")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()

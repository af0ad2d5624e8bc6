"""tools/preprocess_data.py: per-domain output, determinism across workers, bad input,
atomic outputs, and Megatron's output format."""

import gzip
import json
import os
import warnings

import numpy as np
import pytest
import zstandard

import preprocess_data
from megatron_hds.data.indexed_dataset import IndexedDataset
from megatron_hds.data.manifest import load_manifest
from megatron_hds.data.quality import load_quality, mtld
from megatron_hds.data.tokenizer import SentencePieceTokenizer
from tests.conftest import run_tool


def _run(args):
    return preprocess_data.preprocess(preprocess_data.parse_args(args))


def _tree(directory):
    """{file name: bytes} of everything in a directory."""
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))}


def _documents(prefix, tokenizer):
    """Each document of a dataset as (text, last token)."""
    ds = IndexedDataset(prefix)
    docs = []
    for j in range(ds.num_documents):
        lo, hi = ds.document_indices[j], ds.document_indices[j + 1]
        tokens = np.concatenate([ds[i] for i in range(lo, hi)]) if hi > lo else np.zeros(0, dtype=ds.dtype)
        docs.append(tokens)
    return docs


def test_workers_produce_identical_files(tmp_path, demo_corpus, sp_model, monkeypatch):
    trees = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        out.mkdir()
        monkeypatch.chdir(out)  # same relative --output-prefix, so even the manifests must match
        _run(["--input", demo_corpus, "--output-prefix", "demo", "--domain-key", "meta.pile_set_name",
              "--tokenizer-model", sp_model, "--append-eod", "--workers", str(workers), "--chunk-size", "7"])
        trees.append(_tree(out))
    assert trees[0].keys() == trees[1].keys()
    assert len([n for n in trees[0] if n.endswith(".bin")]) >= 6
    for name in trees[0]:
        assert trees[0][name] == trees[1][name], name


def test_each_domain_dataset_holds_exactly_its_documents(tmp_path, demo_corpus, demo_documents, sp_model):
    prefix = str(tmp_path / "demo")
    summary = _run(["--input", demo_corpus, "--output-prefix", prefix, "--domain-key", "meta.pile_set_name",
                    "--tokenizer-model", sp_model, "--append-eod"])
    tok = SentencePieceTokenizer(sp_model)
    manifest = load_manifest(prefix + "_manifest.json")
    expected = {}
    for domain, text in demo_documents:
        expected.setdefault(domain, []).append(text)
    assert manifest.names == sorted(expected)

    total_tokens = sum(d.tokens for d in manifest.domains)
    for domain in manifest.domains:
        texts = expected[domain.name]
        docs = _documents(domain.prefix, tok)
        assert len(docs) == domain.documents == len(texts)
        assert domain.prefix.endswith(f"demo_{domain.slug}_text_document")
        for tokens, text in zip(docs, texts):
            assert tokens[-1] == tok.eod  # --append-eod
            assert tok.detokenize(tokens[:-1]) == text
        assert sum(len(d) for d in docs) == domain.tokens
        assert domain.natural_weight == pytest.approx(domain.tokens / total_tokens)
        quality = load_quality(domain.prefix, domain.documents)
        for q, tokens in zip(quality[:20], docs):
            assert q == pytest.approx(mtld(tokens[:-1]), rel=1e-6)  # MTLD excludes the EOD
    assert summary["manifest"]["tokenizer"]["sha256"] == tok.model_sha256
    assert summary["manifest"]["dtype"] == "uint16"


def _write_lines(path, lines: list[bytes]):
    data = b"".join(line + b"\n" for line in lines)
    if path.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    elif path.endswith(".gz"):
        data = gzip.compress(data)
    with open(path, "wb") as f:
        f.write(data)


def _good(i, domain="A"):
    return json.dumps({"text": f"valid document {i}", "meta": {"pile_set_name": domain}}).encode()


BAD_LINES = {
    "empty_line": [b"", b"   "],
    "invalid_utf8": [b'{"text": "caf\xe9", "meta": {"pile_set_name": "A"}}'],
    "invalid_json": [b'{"text": "unterminated', b"[1, 2, 3]"],
    "missing_text": [b'{"content": "x", "meta": {"pile_set_name": "A"}}'],
    "non_string_text": [b'{"text": 42, "meta": {"pile_set_name": "A"}}', b'{"text": null, "meta": {"pile_set_name": "A"}}'],
    "missing_domain": [b'{"text": "x"}', b'{"text": "x", "meta": "flat"}', b'{"text": "x", "meta": {}}'],
    "non_string_domain": [b'{"text": "x", "meta": {"pile_set_name": 7}}'],
}


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_malformed_lines_are_skipped_and_counted(tmp_path, sp_model, suffix):
    lines, good = [], []
    i = 0
    for bad_lines in BAD_LINES.values():
        for bad in bad_lines:
            lines += [_good(i, "AB"[i % 2]), bad]
            good.append((i, "AB"[i % 2]))
            i += 1
    lines.append(_good(i, "B"))
    good.append((i, "B"))
    # Two shards through a glob: the second holds only valid lines.
    _write_lines(str(tmp_path / f"shard_00{suffix}"), lines)
    _write_lines(str(tmp_path / f"shard_01{suffix}"), [_good(100, "A")])
    good.append((100, "A"))

    prefix = str(tmp_path / "out" / "mixed")
    summary = _run(["--input", str(tmp_path / f"shard_*{suffix}"), "--output-prefix", prefix,
                    "--domain-key", "meta.pile_set_name", "--tokenizer-model", sp_model])
    skipped = summary["manifest"]["totals"]["skipped"]
    assert skipped == {reason: len(bad) for reason, bad in BAD_LINES.items()}

    tok = SentencePieceTokenizer(sp_model)
    manifest = load_manifest(prefix + "_manifest.json")
    assert manifest.names == ["A", "B"]
    for domain in manifest.domains:
        texts = [tok.detokenize(t) for t in _documents(domain.prefix, tok)]
        assert texts == [f"valid document {j}" for j, d in good if d == domain.name]


def test_strict_fails_on_first_bad_line_and_writes_nothing(tmp_path, sp_model):
    shard = tmp_path / "shard.jsonl"
    _write_lines(str(shard), [_good(0), _good(1), b'{"text": 3, "meta": {"pile_set_name": "A"}}', _good(2)])
    out = tmp_path / "out"
    proc = run_tool("preprocess_data", "--input", str(shard), "--output-prefix", str(out / "x"),
                    "--domain-key", "meta.pile_set_name", "--tokenizer-model", sp_model, "--strict", check=False)
    assert proc.returncode == 1
    assert f"{shard}: line 3: text value is not a string" in proc.stderr
    assert os.listdir(out) == []


def test_interrupted_run_keeps_the_last_good_output(tmp_path, demo_corpus, sp_model, monkeypatch):
    prefix = str(tmp_path / "demo")
    args = ["--input", demo_corpus, "--output-prefix", prefix, "--domain-key", "meta.pile_set_name",
            "--tokenizer-model", sp_model]
    _run(args)
    before = _tree(tmp_path)

    real_encode = preprocess_data.DocumentEncoder.encode
    calls = {"n": 0}

    def failing_encode(self, line):
        calls["n"] += 1
        if calls["n"] == 50:
            raise KeyboardInterrupt
        return real_encode(self, line)

    monkeypatch.setattr(preprocess_data.DocumentEncoder, "encode", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        _run(args + ["--append-eod"])
    assert _tree(tmp_path) == before  # no temporary leftovers, old datasets untouched


def test_without_domain_key_output_is_megatron_shaped(tmp_path, sp_model):
    shard = tmp_path / "docs.jsonl"
    records = [{"text": f"text number {i}", "title": f"title {i}"} for i in range(5)]
    records.insert(2, {"text": "", "title": "empty text"})
    _write_lines(str(shard), [json.dumps(r).encode() for r in records])
    prefix = str(tmp_path / "corpus")
    _run(["--input", str(shard), "--output-prefix", prefix, "--json-keys", "text", "title",
          "--tokenizer-model", sp_model, "--append-eod"])
    names = sorted(os.listdir(tmp_path))
    for key in ("text", "title"):
        assert f"corpus_{key}_document.bin" in names and f"corpus_{key}_document.idx" in names
    text_ds = IndexedDataset(prefix + "_text_document")
    assert text_ds.num_documents == 6
    # Megatron writes an empty document for empty text: its index repeats the previous value.
    assert text_ds.document_indices.tolist() == [0, 1, 2, 2, 3, 4, 5]
    manifest = json.load(open(prefix + "_manifest.json"))
    assert [d["name"] for d in manifest["domains"]] == ["corpus"]
    assert set(manifest["domains"][0]["datasets"]) == {"text", "title"}


def _megatron_builder():
    try:
        with warnings.catch_warnings():  # megatron-core warns about missing apex/TE on import
            warnings.simplefilter("ignore")
            from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    except ImportError:
        pytest.skip("megatron-core not installed (pip install --no-deps megatron-core)")
    return IndexedDatasetBuilder


def test_bytes_match_megatron_core_builder(tmp_path, demo_documents, sp_model):
    """Our tool's output equals what Megatron-LM's builder writes for Megatron's per-document
    work (tokenize, append EOD to non-empty documents, one sequence per document)."""
    builder_cls = _megatron_builder()

    shard = tmp_path / "docs.jsonl"
    docs = [text for _, text in demo_documents[:300]] + [""]
    _write_lines(str(shard), [json.dumps({"text": t}).encode() for t in docs])
    _run(["--input", str(shard), "--output-prefix", str(tmp_path / "ours"), "--tokenizer-model", sp_model,
          "--append-eod"])

    tok = SentencePieceTokenizer(sp_model)
    reference = builder_cls(str(tmp_path / "ref.bin"), dtype=np.uint16)
    for text in docs:
        ids = tok.tokenize(text)
        lengths = [len(ids)] if ids else []
        if ids:
            ids.append(tok.eod)
            lengths[-1] += 1
        reference.add_document(ids, lengths)  # Megatron's tool passes the id list
    reference.finalize(str(tmp_path / "ref.idx"))
    for ext in ("bin", "idx"):
        ours = open(tmp_path / f"ours_text_document.{ext}", "rb").read()
        assert ours == open(tmp_path / f"ref.{ext}", "rb").read(), ext


def test_cli_prints_progress_and_summary(tmp_path, demo_corpus, sp_model):
    proc = run_tool("preprocess_data", "--input", demo_corpus, "--output-prefix", str(tmp_path / "demo"),
                    "--domain-key", "meta.pile_set_name", "--tokenizer-model", sp_model, "--workers", "2",
                    "--log-interval", "100")
    assert "processed 100 documents" in proc.stderr
    assert "documents/s" in proc.stdout and "tokens/s" in proc.stdout
    assert "skipped lines: none" in proc.stdout
    for domain in ("Code", "Math", "Noise"):
        assert domain in proc.stdout


def test_cli_rejects_bad_arguments(tmp_path, sp_model):
    proc = run_tool("preprocess_data", "--input", str(tmp_path / "missing*.jsonl"), "--output-prefix",
                    str(tmp_path / "x"), "--tokenizer-model", sp_model, check=False)
    assert proc.returncode == 1 and "matches no file" in proc.stderr
    proc = run_tool("preprocess_data", "--input", "x.jsonl", "--output-prefix", "x", "--tokenizer-model", sp_model,
                    "--split-sentences", check=False)
    assert proc.returncode == 2 and "--split-sentences is not supported" in proc.stderr
    shard = tmp_path / "x.jsonl"
    _write_lines(str(shard), [_good(0)])
    proc = run_tool("preprocess_data", "--input", str(shard), "--output-prefix", str(tmp_path / "x"),
                    "--tokenizer-model", sp_model, "--tokenizer-type", "GPT2BPETokenizer", check=False)
    assert proc.returncode != 0 and "GPT2BPETokenizer" in proc.stderr

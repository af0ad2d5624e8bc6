"""Tests for the built-in demo corpus (tools/demo_corpus.py, tools/make_demo_corpus.py)."""
import gzip
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict

import pytest
import zstandard

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # no conftest / install needed
    sys.path.insert(0, REPO)

import demo_corpus as dc  # noqa: E402
from demo_corpus import (  # noqa: E402
    DEMO_DOMAINS,
    DEMO_SHARES,
    iter_demo_documents,
    write_demo_corpus,
)

SMALL_MB = 0.2
SEED = 1234


def _raw_lines(path):
    """Decompressed file content, decoded independently of the library's reader."""
    with open(path, "rb") as fh:
        data = fh.read()
    if path.endswith(".zst"):
        with zstandard.ZstdDecompressor().stream_reader(data) as r:
            data = r.read()
    elif path.endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8").split("\n")


def _docs(path):
    lines = _raw_lines(path)
    assert lines[-1] == ""  # newline-terminated, nothing after the last document
    return [json.loads(line) for line in lines[:-1]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    out = {}
    for name, seed, ext in [("a", SEED, ".jsonl.zst"), ("b", SEED, ".jsonl.zst"), ("c", 99, ".jsonl.zst"),
                            ("gz", SEED, ".jsonl.gz"), ("plain", SEED, ".jsonl")]:
        path = str(d / f"{name}{ext}")
        out[name] = (path, write_demo_corpus(path, size_mb=SMALL_MB, seed=seed))
    out["dir"] = str(d)
    return out


def test_api_constants():
    assert len(DEMO_DOMAINS) >= 6 and len(set(DEMO_DOMAINS)) == len(DEMO_DOMAINS)
    assert set(DEMO_SHARES) == set(DEMO_DOMAINS)
    assert sum(DEMO_SHARES.values()) == pytest.approx(1.0)
    assert len(set(DEMO_SHARES.values())) > 1  # unequal natural shares


def test_deterministic_same_seed_different_seed(corpus):
    a, b, c = (open(corpus[k][0], "rb").read() for k in "abc")
    assert a == b
    assert a != c
    docs_a, docs_c = _docs(corpus["a"][0]), _docs(corpus["c"][0])
    # A new seed changes both the order and the generated content.
    assert [d["meta"]["pile_set_name"] for d in docs_a] != [d["meta"]["pile_set_name"] for d in docs_c]
    math_a = {d["text"] for d in docs_a if d["meta"]["pile_set_name"] == "Math"}
    math_c = {d["text"] for d in docs_c if d["meta"]["pile_set_name"] == "Math"}
    assert not (math_a & math_c)


def test_iterator_matches_file(corpus):
    got = [(d["meta"]["pile_set_name"], d["text"]) for d in _docs(corpus["a"][0])]
    assert got == list(iter_demo_documents(SMALL_MB, SEED))
    assert got == list(dc.read_demo_corpus(corpus["a"][0]))


def test_every_line_valid(corpus):
    docs = _docs(corpus["a"][0])
    assert docs
    for doc in docs:
        assert set(doc) == {"text", "meta"}
        assert isinstance(doc["text"], str) and doc["text"].strip()
        assert doc["meta"] == {"pile_set_name": doc["meta"]["pile_set_name"]}
        assert doc["meta"]["pile_set_name"] in DEMO_DOMAINS


def test_every_domain_present_at_small_size(corpus):
    path, stats = corpus["a"]
    counts = Counter(d["meta"]["pile_set_name"] for d in _docs(path))
    assert list(stats) == list(DEMO_DOMAINS)
    for domain in DEMO_DOMAINS:
        assert counts[domain] >= 3, (domain, counts)
        assert stats[domain]["documents"] == counts[domain]
    # Even a tiny corpus has every domain with its minimum document count.
    tiny = Counter(d for d, _ in iter_demo_documents(0.01, 5))
    assert all(tiny[d] >= dc.MIN_DOCS_PER_DOMAIN for d in DEMO_DOMAINS), tiny


@pytest.mark.parametrize("size_mb", [SMALL_MB, 1.0])
def test_size_and_shares_within_tolerance(size_mb):
    per = defaultdict(int)
    for domain, text in iter_demo_documents(size_mb, 7):
        per[domain] += len(text.encode("utf-8"))
    total = sum(per.values())
    assert abs(total - size_mb * dc.MB) <= 0.10 * size_mb * dc.MB, total
    for domain in DEMO_DOMAINS:
        assert per[domain] / total == pytest.approx(DEMO_SHARES[domain], abs=0.02), domain


def test_stats_bytes_match_file(corpus):
    path, stats = corpus["a"]
    per = defaultdict(int)
    for doc in _docs(path):
        per[doc["meta"]["pile_set_name"]] += len(doc["text"].encode("utf-8"))
    assert {d: stats[d]["bytes"] for d in DEMO_DOMAINS} == {d: per[d] for d in DEMO_DOMAINS}


def test_compressions_decode_to_same_documents(corpus):
    zst, gz, plain = (_docs(corpus[k][0]) for k in ("a", "gz", "plain"))
    assert zst == gz == plain
    with open(corpus["a"][0], "rb") as fh:
        assert fh.read(4) == b"\x28\xb5\x2f\xfd"  # zstd frame magic
    with open(corpus["gz"][0], "rb") as fh:
        header = fh.read(10)
    assert header[:2] == b"\x1f\x8b"
    assert header[3] & 0x08 == 0  # no FNAME (the temp name must not leak in)
    assert header[4:8] == b"\0\0\0\0"  # mtime 0


def test_documents_interleaved(corpus):
    names = [d["meta"]["pile_set_name"] for d in _docs(corpus["a"][0])]
    half = names[: len(names) // 2]
    assert set(half) == set(DEMO_DOMAINS)  # not one domain after another
    switches = sum(1 for x, y in zip(names, names[1:]) if x != y)
    assert switches > len(names) // 2


def test_domains_differ_in_character(corpus):
    by = defaultdict(list)
    for doc in _docs(corpus["a"][0]):
        by[doc["meta"]["pile_set_name"]].append(doc["text"])
    text = {d: "\n".join(v) for d, v in by.items()}

    def unique_ratio(s, n=3000):
        words = re.findall(r"[A-Za-z]+", s.lower())[:n]
        assert len(words) >= n // 2
        return len(set(words)) / len(words)

    assert unique_ratio(text["Boilerplate"]) < 0.5 * unique_ratio(text["Docs"])
    assert "def " in text["Code"] and "import" in text["Code"]
    assert all(re.search(r"\d", t) for t in by["Math"])
    assert all("Answer:" in t for t in by["Math"]) and "=" in text["Math"]
    assert "\n\n" in text["Docs"] and "def " not in text["Docs"][:200]
    # Docstrings are prose, not code: hardly any lines start a def/class.
    assert len(re.findall(r"^\s*(def|class) \w+\(", text["Docstrings"], re.M)) < 5
    # Noise: mostly "words" no other domain uses.
    known = set(re.findall(r"[a-z]+", (text["Docs"] + text["Docstrings"]).lower()))
    noise_words = re.findall(r"[a-z]{4,}", text["Noise"].lower())
    assert noise_words and sum(w not in known for w in noise_words) / len(noise_words) > 0.8
    assert re.search(r"\d{4}-\d\d-\d\d|\d+/[A-Z][a-z]{2}/\d{4}", text["Logs"])


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    out = tmp_path / "broken.jsonl.zst"

    def failing(size_mb, seed):
        yield "Code", "x = 1"
        raise RuntimeError("interrupted")

    monkeypatch.setattr(dc, "iter_demo_documents", failing)
    with pytest.raises(RuntimeError):
        dc.write_demo_corpus(str(out), size_mb=0.05, seed=1)
    assert os.listdir(tmp_path) == []


def test_no_temp_files_left_and_bad_args(corpus, tmp_path):
    assert sorted(os.listdir(corpus["dir"])) == ["a.jsonl.zst", "b.jsonl.zst", "c.jsonl.zst",
                                                 "gz.jsonl.gz", "plain.jsonl"]
    with pytest.raises(ValueError):
        write_demo_corpus(str(tmp_path / "x.txt"), size_mb=0.05)
    with pytest.raises(ValueError):
        list(iter_demo_documents(0, 1))
    assert os.listdir(tmp_path) == []


def test_cli(tmp_path):
    out = tmp_path / "sub" / "cli.jsonl.zst"
    script = os.path.join(REPO, "tools", "make_demo_corpus.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, script, "--output", str(out), "--size-mb", "0.1", "--seed", "7"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for domain in DEMO_DOMAINS:
        assert re.search(rf"^{domain}\s+\d+\s+\d", proc.stdout, re.M), proc.stdout
    ref = tmp_path / "ref.jsonl.zst"
    write_demo_corpus(str(ref), size_mb=0.1, seed=7)
    assert out.read_bytes() == ref.read_bytes()

    bad = subprocess.run([sys.executable, script, "--output", str(tmp_path / "x.csv")],
                         cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and not (tmp_path / "x.csv").exists()

"""Tests for the built-in demo corpus (tools/demo_corpus.py, tools/demo_sources.py,
tools/make_demo_corpus.py, examples/build_demo_data.sh)."""
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict

import pytest
import zstandard

import demo_corpus as dc
from demo_corpus import DEMO_DOMAINS, DEMO_SHARES, SPLIT_SHARES, iter_demo_documents, write_demo_corpus
from megatron_hds.data.gpt_dataset import split_document_ranges
from tests.conftest import REPO_ROOT

SPLITS = ("train", "valid", "test")
SMALL_MB = 0.2
# Large enough that train reuses the Docs material (~0.35 MB of train topics), as the old
# generator did before its document-level split (which leaked at this size).
LEAK_MB = 3.0
SEED = 1234
CUT_DOMAINS = ("Code", "Docs", "Docstrings")
LONG = 40  # characters: the length from which a shared line counts as leaked text


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


def _pairs(path):
    return [(d["meta"]["pile_set_name"], d["text"]) for d in _docs(path)]


def _split_path(directory, split):
    return os.path.join(directory, f"{split}.jsonl.zst")


def _long_lines(text):
    return {s for s in (line.strip() for line in text.split("\n")) if len(s) >= LONG}


def find_leaks(train, held_out):
    """What of the held-out documents is in train: for Code, Docs and Docstrings, every line
    of LONG or more characters (whitespace-stripped) also found in any train document; for
    the generated domains, documents identical to a train document. [(domain, text)]."""
    train_lines, train_texts = set(), set()
    for _, text in train:
        train_lines |= _long_lines(text)
        train_texts.add(text)
    leaks = []
    for domain, text in held_out:
        if domain in CUT_DOMAINS:
            leaks += [(domain, line) for line in sorted(_long_lines(text) & train_lines)]
        elif text in train_texts:
            leaks.append((domain, text))
    return leaks


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = {}
    for name, seed in [("a", SEED), ("b", SEED), ("c", 99)]:
        path = str(tmp_path_factory.mktemp(f"demo_{name}"))
        out[name] = (path, write_demo_corpus(path, size_mb=SMALL_MB, seed=seed))
    return out


@pytest.fixture(scope="module")
def leak_corpus(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("demo_leak"))
    write_demo_corpus(path, size_mb=LEAK_MB, seed=SEED)
    return path


def test_api_constants():
    assert len(DEMO_DOMAINS) >= 6 and len(set(DEMO_DOMAINS)) == len(DEMO_DOMAINS)
    assert set(DEMO_SHARES) == set(DEMO_DOMAINS)
    assert sum(DEMO_SHARES.values()) == pytest.approx(1.0)
    assert len(set(DEMO_SHARES.values())) > 1  # unequal natural shares
    assert tuple(SPLIT_SHARES) == SPLITS and sum(SPLIT_SHARES.values()) == pytest.approx(1.0)
    assert set(dc.CUT_DOMAINS) == set(CUT_DOMAINS)


# ---- leakage ------------------------------------------------------------------------------

@pytest.mark.parametrize("held", ["valid", "test"])
def test_no_held_out_text_in_train(leak_corpus, held):
    """No line of 40+ characters of a held-out Code/Docs/Docstrings document, and no
    held-out generated document, is in the train split (of any domain)."""
    train = _pairs(_split_path(leak_corpus, "train"))
    held_out = _pairs(_split_path(leak_corpus, held))
    assert {d for d, _ in held_out} == set(DEMO_DOMAINS)
    leaks = find_leaks(train, held_out)
    assert not leaks, f"{len(leaks)} leaked, e.g. {leaks[:5]}"


def test_leak_check_catches_a_split_made_after_chunking(leak_corpus):
    """The check above can fail: splitting documents after chunking, as the trainer's --split
    does on one file, puts reused and shared text on both sides."""
    by_domain = defaultdict(list)
    for domain, text in _pairs(_split_path(leak_corpus, "train")):
        by_domain[domain].append(text)
    train, valid = [], []
    for domain, texts in by_domain.items():
        (t0, t1), (v0, v1), _ = split_document_ranges(len(texts), "90,5,5")
        train += [(domain, t) for t in texts[t0:t1]]
        valid += [(domain, t) for t in texts[v0:v1]]
    leaked = {domain for domain, _ in find_leaks(train, valid)}
    assert {"Code", "Docs"} <= leaked, leaked


def test_held_out_material_does_not_depend_on_the_seed(corpus):
    """The split of the material is made once: no seed's train holds another seed's valid text."""
    train_c = _pairs(_split_path(corpus["c"][0], "train"))
    valid_a = [(d, t) for d, t in _pairs(_split_path(corpus["a"][0], "valid")) if d in CUT_DOMAINS]
    assert not find_leaks(train_c, valid_a)


def test_every_cut_domain_has_40kb_of_held_out_text_at_the_default_size():
    size = 32.0  # tools/make_demo_corpus.py's default
    for split in ("valid", "test"):
        got = Counter()
        for domain, text in iter_demo_documents(size, SEED, split):
            got[domain] += len(text.encode("utf-8"))
        assert all(got[d] >= 40_000 for d in DEMO_DOMAINS), (split, got)
    material = dc.material_bytes()
    assert set(material) == set(CUT_DOMAINS)
    for domain, by_split in material.items():
        assert by_split["valid"] >= 40_000 and by_split["test"] >= 40_000, (domain, by_split)
        assert by_split["train"] > 2 * (by_split["valid"] + by_split["test"]), (domain, by_split)  # train keeps most


# ---- format, determinism, sizes ----------------------------------------------------------

def test_deterministic_same_seed_different_seed(corpus):
    names = [f"{s}.jsonl.zst" for s in SPLITS] + ["corpus.json"]
    for name in names:
        a, b, c = (open(os.path.join(corpus[k][0], name), "rb").read() for k in "abc")
        assert a == b, name
        assert a != c, name
    docs_a, docs_c = _docs(_split_path(corpus["a"][0], "train")), _docs(_split_path(corpus["c"][0], "train"))
    # A new seed changes both the order and the generated content.
    assert [d["meta"]["pile_set_name"] for d in docs_a] != [d["meta"]["pile_set_name"] for d in docs_c]
    math_a = {d["text"] for d in docs_a if d["meta"]["pile_set_name"] == "Math"}
    math_c = {d["text"] for d in docs_c if d["meta"]["pile_set_name"] == "Math"}
    assert not (math_a & math_c)


def test_pile_format(corpus):
    directory = corpus["a"][0]
    assert sorted(os.listdir(directory)) == ["corpus.json", "test.jsonl.zst", "train.jsonl.zst", "valid.jsonl.zst"]
    for split in SPLITS:
        path = _split_path(directory, split)
        with open(path, "rb") as fh:
            assert fh.read(4) == b"\x28\xb5\x2f\xfd"  # zstd frame magic
        docs = _docs(path)
        assert docs
        for doc in docs:
            assert set(doc) == {"text", "meta"}
            assert isinstance(doc["text"], str) and doc["text"].strip()
            assert doc["meta"] == {"pile_set_name": doc["meta"]["pile_set_name"]}
            assert doc["meta"]["pile_set_name"] in DEMO_DOMAINS


@pytest.mark.parametrize("size_mb", [0.02, SMALL_MB])
def test_every_domain_in_every_split(size_mb):
    for split in SPLITS:
        counts = Counter(d for d, _ in iter_demo_documents(size_mb, 5, split))
        assert all(counts[d] >= dc.MIN_DOCS_PER_DOMAIN for d in DEMO_DOMAINS), (split, counts)


def test_iterator_matches_files(corpus):
    for split in SPLITS:
        got = _pairs(_split_path(corpus["a"][0], split))
        assert got == list(iter_demo_documents(SMALL_MB, SEED, split)), split
        assert got == list(dc.read_demo_corpus(_split_path(corpus["a"][0], split))), split


@pytest.mark.parametrize("size_mb", [SMALL_MB, 1.0])
def test_sizes_and_shares_within_tolerance(size_mb):
    per = {split: Counter() for split in SPLITS}
    for split in SPLITS:
        for domain, text in iter_demo_documents(size_mb, 7, split):
            per[split][domain] += len(text.encode("utf-8"))
    total = sum(sum(c.values()) for c in per.values())
    assert abs(total - size_mb * dc.MB) <= 0.05 * size_mb * dc.MB, total
    for split, counts in per.items():
        split_total = sum(counts.values())
        assert split_total / total == pytest.approx(SPLIT_SHARES[split], abs=0.01), split
        for domain in DEMO_DOMAINS:
            assert counts[domain] / split_total == pytest.approx(DEMO_SHARES[domain], abs=0.02), (split, domain)


def test_corpus_json_matches_files(corpus):
    directory, info = corpus["a"]
    assert json.load(open(os.path.join(directory, "corpus.json"))) == info
    assert info["size_mb"] == SMALL_MB and info["seed"] == SEED
    for split in SPLITS:
        entry = info["splits"][split]
        path = os.path.join(directory, entry["path"])
        assert entry["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
        per = defaultdict(lambda: {"documents": 0, "bytes": 0})
        for domain, text in _pairs(path):
            per[domain]["documents"] += 1
            per[domain]["bytes"] += len(text.encode("utf-8"))
        assert entry["domains"] == {d: per[d] for d in DEMO_DOMAINS}
        assert entry["documents"] == sum(p["documents"] for p in per.values())
        assert entry["text_bytes"] == sum(p["bytes"] for p in per.values())


def test_one_split_in_any_compression(corpus, tmp_path):
    train = _pairs(_split_path(corpus["a"][0], "train"))
    for ext in (".jsonl.zst", ".jsonl.gz", ".jsonl"):
        path = str(tmp_path / f"one{ext}")
        stats = dc.write_demo_split(path, "train", size_mb=SMALL_MB, seed=SEED)
        assert _pairs(path) == train, ext
        assert sum(s["documents"] for s in stats.values()) == len(train)
    header = open(tmp_path / "one.jsonl.gz", "rb").read(10)
    assert header[:2] == b"\x1f\x8b"
    assert header[3] & 0x08 == 0  # no FNAME (the temp name must not leak in)
    assert header[4:8] == b"\0\0\0\0"  # mtime 0
    assert sorted(os.listdir(tmp_path)) == ["one.jsonl", "one.jsonl.gz", "one.jsonl.zst"]


def test_documents_interleaved(corpus):
    names = [d for d, _ in _pairs(_split_path(corpus["a"][0], "train"))]
    half = names[: len(names) // 2]
    assert set(half) == set(DEMO_DOMAINS)  # not one domain after another
    switches = sum(1 for x, y in zip(names, names[1:]) if x != y)
    assert switches > len(names) // 2


def test_domains_differ_in_character(corpus):
    by = defaultdict(list)
    for domain, text in _pairs(_split_path(corpus["a"][0], "train")):
        by[domain].append(text)
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


# ---- atomic output and errors ---------------------------------------------------------------

def test_interrupted_write_leaves_no_corpus(tmp_path, monkeypatch):
    write_demo_corpus(str(tmp_path), size_mb=0.05, seed=1)  # an earlier, complete run
    real = dc._iter_split

    def failing(size_mb, seed, split, exclude):
        if split == "train":  # the last split written
            yield next(real(size_mb, seed, split, exclude))
            raise RuntimeError("interrupted")
        yield from real(size_mb, seed, split, exclude)

    monkeypatch.setattr(dc, "_iter_split", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_demo_corpus(str(tmp_path), size_mb=0.05, seed=2)
    assert os.listdir(tmp_path) == []  # no temporary file, no stale split of the earlier run
    with pytest.raises(RuntimeError, match="interrupted"):
        dc.write_demo_split(str(tmp_path / "one.jsonl.zst"), "train", size_mb=0.05, seed=2)
    assert os.listdir(tmp_path) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="x.jsonl.zst"):
        write_demo_corpus(str(tmp_path / "x.jsonl.zst"), size_mb=0.05)  # a file name: the old API
    with pytest.raises(ValueError, match="x.txt"):
        dc.write_demo_split(str(tmp_path / "x.txt"), "train", size_mb=0.05)
    with pytest.raises(ValueError, match="'dev'"):
        list(iter_demo_documents(0.05, 1, "dev"))
    with pytest.raises(ValueError, match="size_mb"):
        list(iter_demo_documents(0, 1))
    assert os.listdir(tmp_path) == []


def _without_pythonpath():
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_cli(tmp_path):
    out = tmp_path / "sub" / "cli"
    script = os.path.join(REPO_ROOT, "tools", "make_demo_corpus.py")
    proc = subprocess.run([sys.executable, script, "--output-dir", str(out), "--size-mb", "0.1", "--seed", "7"],
                          cwd=str(tmp_path), env=_without_pythonpath(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for domain in (*DEMO_DOMAINS, "total"):
        assert re.search(rf"^{domain}\s+(\d+\s+){{3}}\d", proc.stdout, re.M), proc.stdout
    ref = tmp_path / "ref"
    write_demo_corpus(str(ref), size_mb=0.1, seed=7)
    for name in ("train.jsonl.zst", "valid.jsonl.zst", "test.jsonl.zst", "corpus.json"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name

    for bad in (["--output", str(tmp_path / "x.jsonl.zst")], ["--output-dir", str(tmp_path / "x.jsonl.zst")]):
        proc = subprocess.run([sys.executable, script, *bad], cwd=str(tmp_path), env=_without_pythonpath(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and not (tmp_path / "x.jsonl.zst").exists(), proc.stderr


# ---- examples/build_demo_data.sh ------------------------------------------------------------

BUILD = os.path.join(REPO_ROOT, "examples", "build_demo_data.sh")


def _build(out):
    env = dict(_without_pythonpath(), PYTHON=sys.executable, DEMO_SIZE_MB="0.3", VOCAB_SIZE="600",
               TOKENIZER_DOCS="200", WORKERS="1")
    return subprocess.run(["bash", BUILD, str(out)], env=env, capture_output=True, text=True, timeout=300)


def test_build_script_makes_three_splits_with_one_tokenizer(tmp_path):
    out = tmp_path / "demo"
    proc = _build(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifests = proc.stdout.strip().splitlines()[-3:]
    assert manifests == [str(out / "data" / s / "demo_manifest.json") for s in SPLITS]
    loaded = [json.load(open(m)) for m in manifests]
    assert all(len(m["domains"]) == len(DEMO_DOMAINS) for m in loaded)
    assert len({json.dumps(m["tokenizer"], sort_keys=True) for m in loaded}) == 1  # one tokenizer
    assert "PYTHONPATH" not in open(BUILD).read()  # the package is installed

    # Every step's output exists: a rerun does nothing and prints the same paths.
    stamp = {p: os.stat(p).st_mtime_ns for p in manifests + [str(out / "demo_sp.model"), str(out / "corpus.json")]}
    again = _build(out)
    assert again.returncode == 0 and again.stdout == proc.stdout and again.stderr == ""
    assert stamp == {p: os.stat(p).st_mtime_ns for p in stamp}


def test_build_script_refuses_the_old_single_file_layout(tmp_path):
    (tmp_path / "demo.jsonl.zst").write_bytes(b"")
    proc = _build(tmp_path)
    assert proc.returncode == 1 and "old single-file layout" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["demo.jsonl.zst"]


def test_session_fixtures_hold_the_three_splits(demo_corpus, demo_manifest, demo_valid_manifest, demo_test_manifest):
    """conftest's demo data: demo_corpus is the train split, and the three manifests share
    one tokenizer and name every domain in the same order."""
    from megatron_hds.data.manifest import load_manifest

    assert os.path.basename(demo_corpus) == "train.jsonl.zst"
    manifests = [load_manifest(m) for m in (demo_manifest, demo_valid_manifest, demo_test_manifest)]
    assert len({m.tokenizer["model"] for m in manifests}) == 1
    assert all([d.name for d in m.domains] == [d.name for d in manifests[0].domains] for m in manifests)
    assert {d.name for d in manifests[0].domains} == set(DEMO_DOMAINS)
    train, valid, test = ([d.documents for d in m.domains] for m in manifests)
    assert all(v < t and s < t for t, v, s in zip(train, valid, test))

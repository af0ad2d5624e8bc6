"""tools/make_text_corpus.py on small fake package trees (no network, no apt): every domain's
reader runs, the output is byte-identical twice, in The Pile's line format, with every domain
in every split, no source and no repeated text in two splits, documents within their bounds,
and an interrupted run leaves no output behind."""

import gzip
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import zlib

import pytest
import zstandard

import make_text_corpus as mtc
import text_corpus_formats as fmt

SPLITS = ("train", "valid", "test")
# Small documents so that a few KB per domain make many of them.
ARGS = ["--size-mb", "0.03", "--min-eval-kb", "2", "--doc-target-bytes", "300", "--doc-min-bytes", "150",
        "--doc-max-bytes", "900", "--min-source-bytes", "100"]
SYLLABLES = ["ka", "lo", "mi", "nu", "re", "sa", "ti", "vo", "ze", "ba", "du", "fe", "gi", "ho", "ju", "pe"]
LICENCE = " ".join(f"clause{i} the licensee shall keep notice number {i} intact in all copies"
                   for i in range(40))
SHARED_PARAGRAPH = "This paragraph is shipped in many packages and must be kept exactly once in the corpus."


def words(rng, n):
    return " ".join("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(n))


def prose(rng, paragraphs=4):
    return "\n\n".join(words(rng, rng.randint(30, 60)) + "." for _ in range(paragraphs))


def write(root, path, data):
    full = os.path.join(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))


def sword_module(root, base, rng, verse_bytes):
    """A SWORD module: blocks of verses (OSIS markup) and the block and verse indexes."""
    entry = "<IIH" if verse_bytes == 10 else "<III"  # (block, offset, size) per verse
    blocks, index, verses = b"", b"", struct.pack(entry, 0, 0, 0)  # entry 0: the module header
    for block in range(12):
        text, entries = b"", []
        for _ in range(8):
            verse = f'<w lemma="strong:H{rng.randint(1, 99)}">{words(rng, 20)}</w> <note>skip me</note>.'
            data = verse.encode()
            entries.append((block, len(text), len(data)))
            text += data
        packed = zlib.compress(text)
        index += struct.pack("<III", len(blocks), len(packed), len(text))
        blocks += packed
        verses += b"".join(struct.pack(entry, *e) for e in entries)
    ext = "b" if verse_bytes == 10 else "c"
    write(root, f"{base}/ot.{ext}zs", index)
    write(root, f"{base}/ot.{ext}zz", blocks)
    write(root, f"{base}/ot.{ext}zv", verses)


def r_database(vectors):
    """An R lazy-load database of character vectors, plus one object of another type."""
    def serialize(strings, sexp_type=16):
        out = b"X\n" + struct.pack(">iii", 3, 0x40202, 0x30500) + struct.pack(">i", 5) + b"UTF-8"
        out += struct.pack(">ii", sexp_type, len(strings))
        for s in strings:
            data = s.encode()
            out += struct.pack(">ii", 0x40009, len(data)) + data
        return out
    records = [serialize(v) for v in vectors] + [serialize(["not", "a", "novel"], sexp_type=19)]
    return b"".join(struct.pack(">I", len(r)) + zlib.compress(r) for r in records)


def dictd(root, name, rng, entries=60):
    data, index = b"", ["00-database-info\tA\tK"]
    for i in range(entries):
        word = f"{words(rng, 1)}{i}"
        entry = f"{word}\n   {words(rng, 40)}\n   [1913 Webster]\n".encode()
        index.append(f"{word}\t{b64(len(data))}\t{b64(len(entry))}")
        data += entry
    write(root, f"usr/share/dictd/{name}.index", "\n".join(index) + "\n")
    write(root, f"usr/share/dictd/{name}.dict.dz", gzip.compress(data, mtime=0))


def b64(n):
    digits = ""
    while True:
        digits = fmt._B64[n % 64] + digits
        n //= 64
        if not n:
            return digits


def man_page(rng, name, shared=""):
    body = "\n.PP\n".join(words(rng, 40).replace(" ", "\n", 3) for _ in range(5))
    return gzip.compress(f""".\\" comment
.TH {name.upper()} 1
.SH NAME
{name} \\- {words(rng, 5)}
.SH DESCRIPTION
{body}
.TP
.B \\-a
{words(rng, 10)} \\fBbold\\fR and \\(em dash.
{shared}
""".encode(), mtime=0)


def fill_package(root, name, rng):
    """Plausible content for each package the corpus reads."""
    if name in ("sword-text-kjv", "sword-comm-tdavid"):
        kind = "texts/ztext/kjv" if name == "sword-text-kjv" else "comments/zcom/tdavid"
        sword_module(root, f"usr/share/sword/modules/{kind}", rng, 10 if name == "sword-text-kjv" else 12)
    elif name == "r-cran-janeaustenr":
        novels = [[f"NOVEL {i}", ""] + [words(rng, 12) if j % 5 else "" for j in range(200)] for i in range(3)]
        write(root, "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb", r_database(novels))
    elif name.startswith("dict-"):
        dictd(root, name[5:], rng)
    elif name == "base-files":
        write(root, "usr/share/common-licenses/GPL-3", LICENCE)
        for i in range(20):
            write(root, f"usr/share/common-licenses/L{i}", prose(rng, 6))
    elif name == "ruby-licensee":  # the same licence re-wrapped, with a YAML header
        rewrapped = re.sub(r"(\S+ \S+ \S+ \S+ \S+) ", r"\1\n", LICENCE)
        write(root, "usr/share/rubygems-integration/all/gems/l/_licenses/gpl-3.0.txt",
              f"---\ntitle: GPL\n---\n{rewrapped}")
    elif name in ("libpython3.11-stdlib", "golang-1.19-src"):
        ext, base = (".py", "usr/lib/python3.11") if name.startswith("lib") else (".go", "usr/share/go-1.19/src")
        for i in range(30):
            write(root, f"{base}/m{i}/f{ext}", "\n\n".join(f"def f{j}():\n    return '{words(rng, 15)}'"
                                                         for j in range(12)))
        write(root, f"{base}/gen{ext}", "# Code generated by x. DO NOT EDIT.\n" + prose(rng))
        write(root, f"{base}/testdata/t{ext}", prose(rng))
    elif name.startswith("manpages"):
        lang = {"manpages": "", "manpages-dev": "", "manpages-pt-br": "pt_BR/"}.get(name, name[9:] + "/")
        for i in range(25):
            write(root, f"usr/share/man/{lang}man1/{name}{i}.1.gz",
                  man_page(rng, f"{name}{i}", ".PP\n" + SHARED_PARAGRAPH if i == 0 else ""))
        write(root, "usr/share/man/man1/link.1.gz", gzip.compress(b".so man1/other.1\n", mtime=0))
    elif name.startswith("texlive"):
        for i in range(20):
            write(root, f"usr/share/texlive/texmf-dist/tex/latex/p{i}/p{i}.sty",
                  "\n\n".join(f"\\def\\cmd{j}#1{{% {words(rng, 12)}\n  \\relax #1}}" for j in range(15)))
    elif name in ("python3.11-doc", "debian-policy", "developers-reference"):
        for i in range(15):
            tagged = "\n\n".join(f"[{name}-ch{i}] {p}" for p in prose(rng, 8).split("\n\n"))
            write(root, f"usr/share/doc/{name}/_sources/ch{i}.rst.txt", f"Title {i}\n=======\n\n{tagged}")
    # Every package carries a copyright file; many are identical (dedupe keeps one).
    write(root, f"usr/share/doc/{name}/copyright", "Format: dep5\n\n" + LICENCE + f"\n\n{SHARED_PARAGRAPH}")


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
    """fetch_package returns fake unpacked trees, filled on first use."""
    trees = tmp_path / "trees"

    def fake_fetch(name, cache_dir):
        root = str(trees / name)
        if not os.path.isdir(root):
            fill_package(root, name, random.Random(name))
        return mtc.Package(name, "1.0-1", mtc.hashlib.sha256(name.encode()).hexdigest(), f"{name}_1.0-1_all.deb",
                           root)

    monkeypatch.setattr(mtc, "fetch_package", fake_fetch)
    return trees


def build(out, *extra):
    assert mtc.main(["--output", str(out), "--cache-dir", str(out) + "-cache", *ARGS, *extra]) == 0
    return read_corpus(out)


def read_corpus(out):
    docs = {}
    for split in SPLITS:
        with open(out / f"{split}.jsonl.zst", "rb") as f:
            text = zstandard.ZstdDecompressor().stream_reader(f).read().decode("utf-8")
        docs[split] = [json.loads(line) for line in text.splitlines()]
    return docs


@pytest.fixture
def corpus(fake_packages, tmp_path):
    return tmp_path / "out", build(tmp_path / "out")


def test_same_packages_give_byte_identical_output(corpus, tmp_path):
    out, _ = corpus
    build(tmp_path / "again")
    for name in [f"{s}.jsonl.zst" for s in SPLITS] + ["sources.json", "source_ids.json"]:
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


def test_output_does_not_depend_on_the_interpreters_hash_seed(corpus, fake_packages, tmp_path):
    out, _ = corpus
    script = (f"import sys, hashlib; sys.path[:0] = {[os.path.dirname(mtc.__file__)]!r}\n"
              "import make_text_corpus as mtc\n"
              "mtc.fetch_package = lambda name, cache: mtc.Package(name, '1.0-1', "
              "hashlib.sha256(name.encode()).hexdigest(), f'{name}_1.0-1_all.deb', "
              f"{str(fake_packages)!r} + '/' + name)\n"
              f"sys.exit(mtc.main({['--output', str(tmp_path / 'seeded'), '--cache-dir', 'unused', *ARGS]!r}))\n")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True)
    for name in [f"{s}.jsonl.zst" for s in SPLITS] + ["sources.json"]:
        assert (out / name).read_bytes() == (tmp_path / "seeded" / name).read_bytes(), name


def test_lines_have_the_piles_shape_and_every_domain_is_in_every_split(corpus):
    out, docs = corpus
    names = {d.name for d in mtc.DOMAINS}
    for split in SPLITS:
        for doc in docs[split]:
            assert set(doc) == {"text", "meta"} and set(doc["meta"]) == {"pile_set_name"}
            assert isinstance(doc["text"], str) and doc["text"].strip()
        assert {doc["meta"]["pile_set_name"] for doc in docs[split]} == names, split
    manifest = json.loads((out / "sources.json").read_text())
    for name, info in manifest["domains"].items():
        for split in SPLITS:
            count = sum(doc["meta"]["pile_set_name"] == name for doc in docs[split])
            assert info["splits"][split]["documents"] == count > 0
    assert manifest["packages"]["dict-gcide"]["version"] == "1.0-1"


def test_no_source_and_no_repeated_text_in_two_splits(corpus):
    out, docs = corpus
    ids = json.loads((out / "source_ids.json").read_text())
    seen = {}
    for domain, splits in ids.items():
        for split, sources in splits.items():
            for sid in sources:
                assert seen.setdefault(sid, split) == split, f"{sid} in {seen[sid]} and {split}"
    # Paragraphs (long enough to be distinctive) never recur across splits.
    where = {}
    for split in SPLITS:
        for doc in docs[split]:
            for paragraph in doc["text"].split("\n\n"):
                key = " ".join(paragraph.split())
                if len(key) >= 80:
                    assert where.setdefault(key, split) == split, f"in {where[key]} and {split}: {key[:60]}"
    # The licence in every copyright file, common-licenses and re-wrapped with a YAML header: once.
    everything = "\n".join(doc["text"] for split in SPLITS for doc in docs[split])
    assert everything.count("clause7 the licensee") == 1
    assert everything.count(SHARED_PARAGRAPH) == 1


def test_documents_of_a_source_stay_in_its_split(corpus):
    _, docs = corpus
    splits_of = {}
    for split in SPLITS:
        for doc in docs[split]:
            for tag in set(re.findall(r"\[([a-z0-9.-]+-ch\d+)\]", doc["text"])):
                splits_of.setdefault(tag, []).append(split)
    assert max(len(found) for found in splits_of.values()) >= 2  # sources span several documents
    assert all(len(set(found)) == 1 for found in splits_of.values())


def test_readers_keep_the_text_and_drop_the_markup(corpus):
    _, docs = corpus
    text = {name: "\n".join(doc["text"] for split in SPLITS for doc in docs[split]
                            if doc["meta"]["pile_set_name"] == name) for name in ("Books", "Dictionary",
                                                                                 "Manpages", "Code")}
    assert "NOVEL" in text["Books"] and "<w" not in text["Books"] and "skip me" not in text["Books"]
    assert "[1913 Webster]" not in text["Dictionary"] and "00-database" not in text["Dictionary"]
    assert "-a\n" in text["Manpages"] and "bold and \u2014 dash." in text["Manpages"]
    assert ".TH" not in text["Manpages"] and "\\f" not in text["Manpages"] and ".so" not in text["Manpages"]
    assert "DO NOT EDIT" not in text["Code"]


def test_chunks_are_within_bounds_at_paragraph_boundaries():
    rng = random.Random(0)
    text = "\n\n".join([prose(rng, 120), "x" * 5000, "é" * 3000, "\n".join(words(rng, 9) for _ in range(300))])
    docs = mtc.chunk_text(text, target_bytes=2000, min_bytes=1000, max_bytes=8000)
    sizes = [len(d.encode("utf-8")) for d in docs]
    assert max(sizes) <= 8000 and min(sizes[:-1]) >= 1000 and len(docs) > 10
    assert "".join("".join(d.split()) for d in docs) == "".join(text.split())  # nothing lost or added
    # Documents start at a line (the first lines of paragraphs where they fit); only lines
    # longer than a document are cut inside.
    lines = set(text.split("\n"))
    assert all(d.split("\n")[0] in lines or set(d.split("\n")[0]) in ({"x"}, {"é"}) for d in docs)
    assert sum(d.split("\n")[0] in set(text.split("\n\n")) for d in docs) >= 10
    assert mtc.chunk_text("short", 2000, 1000, 8000) == ["short"]


def test_an_interrupted_run_leaves_no_output(fake_packages, tmp_path, monkeypatch):
    out = tmp_path / "out"
    build(out)  # a complete earlier run: its files must not survive a failed rerun
    real = mtc.split_bytes

    def failing(sources, split, seed):
        if split == "test":
            raise KeyboardInterrupt
        return real(sources, split, seed)

    monkeypatch.setattr(mtc, "split_bytes", failing)
    with pytest.raises(KeyboardInterrupt):
        build(out)
    assert os.listdir(out) == []


def test_a_package_that_cannot_be_downloaded_is_named(tmp_path, monkeypatch):
    def apt(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package no-such-pkg")

    monkeypatch.setattr(mtc.subprocess, "run", apt)
    monkeypatch.setattr(mtc.glob, "glob", lambda pattern: ["lists"] if "apt/lists" in pattern else [])
    with pytest.raises(mtc.CorpusError, match="'no-such-pkg'.*Unable to locate package"):
        mtc.fetch_package("no-such-pkg", str(tmp_path))
    assert os.listdir(tmp_path) == []  # no partial download left


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_fetch_package_unpacks_a_cached_deb_once(tmp_path):
    src = tmp_path / "src"
    write(str(src), "DEBIAN/control", "Package: tiny\nVersion: 2.0-1\nArchitecture: all\n"
                                      "Maintainer: x <x@example.org>\nDescription: t\n")
    write(str(src), "usr/share/doc/tiny/README", "hello")
    cache = tmp_path / "cache"
    cache.mkdir()
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(src), str(cache / "tiny_2.0-1_all.deb")],
                   check=True, capture_output=True)
    pkg = mtc.fetch_package("tiny", str(cache))
    assert pkg.version == "2.0-1" and len(pkg.sha256) == 64
    assert open(os.path.join(pkg.root, "usr/share/doc/tiny/README")).read() == "hello"
    assert mtc.fetch_package("tiny", str(cache)) == pkg


def test_troff_rendering():
    page = (".TH LS 1\n.SH NAME\nls \\- list\n.SH OPTIONS\n.TP\n.BR \\-a , \" \\-\\-all\"\nshow\nall.\n"
            ".PP\n.nf\n  code  line\n.fi\n.de XX\nignored\n..\nMore \\fItext\\fP \\(lqquoted\\(rq\\e.\n")
    assert fmt.troff_to_text(page) == ("LS(1)\n\nNAME\nls - list\n\nOPTIONS\n\n-a, --all\nshow all.\n\n"
                                       "  code  line\nMore text \u201cquoted\u201d\\.")
    assert fmt.troff_to_text(".so man1/ls.1\n") is None

#!/usr/bin/env python3
"""Build an offline benchmark corpus of real text from Debian packages, in The Pile's format.

    python tools/make_text_corpus.py --output data/text_corpus --cache-dir data/debcache [--size-mb 5.5]

writes OUT/{train,valid,test}.jsonl.zst ({"text": ..., "meta": {"pile_set_name": DOMAIN}} per
line, domains shuffled together), OUT/source_ids.json and, last, OUT/sources.json (packages,
versions, .deb sha256, counts per domain and split). The .deb files come from `apt-get
download` (cached in --cache-dir). Each domain's sources (a book, a man page, a source file,
a block of dictionary entries...) are cleaned, deduplicated across the corpus, capped at
--size-mb per domain, split by a hash of their identity and only then cut into 1-8 KB
documents: no source and no paragraph is in two splits, and the same .deb files give
byte-identical output. See docs/text_corpus.md.
"""

from __future__ import annotations

import argparse
import collections
import glob
import hashlib
import heapq
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zlib
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import zstandard  # noqa: E402

import text_corpus_formats as fmt  # noqa: E402
from megatron_hds.atomic_io import atomic_path  # noqa: E402

SPLITS = ("train", "valid", "test")
ZSTD_LEVEL = 6  # fixed: the output bytes depend on it
START = time.perf_counter()


class CorpusError(RuntimeError):
    """A failure that stops the build; the message names the package or file."""


def log(message: str) -> None:
    print(f"[text-corpus {time.perf_counter() - START:7.1f}s] {message}", file=sys.stderr, flush=True)


def stable_hash(*parts: str) -> int:
    """A 64-bit hash of strings that is the same in every process (unlike hash())."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


# ----------------------------------------------------------------------------- packages


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str
    deb: str   # path of the .deb file
    root: str  # directory it is unpacked in


def _run(cmd: list[str], what: str, cwd: str | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise CorpusError(f"{what}: {cmd[0]} not found (the corpus needs Debian's apt-get and dpkg-deb)") from exc
    if proc.returncode != 0:
        raise CorpusError(f"{what} failed ({' '.join(cmd)}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def _download(name: str, cache_dir: str) -> None:
    """apt-get download into a private folder, then move: a killed download leaves no .deb."""
    if not glob.glob("/var/lib/apt/lists/*_Packages*"):
        log("apt package lists missing: apt-get update")
        _run(["apt-get", "update"], "apt-get update")
    partial = os.path.join(cache_dir, f"partial-{os.getpid()}")
    os.makedirs(partial, exist_ok=True)
    try:
        _run(["apt-get", "download", "-o", "APT::Sandbox::User=root", name],
             f"downloading Debian package {name!r}", cwd=partial)
        for deb in os.listdir(partial):
            os.replace(os.path.join(partial, deb), os.path.join(cache_dir, deb))
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def fetch_package(name: str, cache_dir: str) -> Package:
    """The cached .deb of `name` (downloaded if absent), unpacked under cache_dir/extracted."""
    debs = sorted(glob.glob(os.path.join(cache_dir, f"{glob.escape(name)}_*.deb")))
    if not debs:
        log(f"downloading {name}")
        _download(name, cache_dir)
        debs = sorted(glob.glob(os.path.join(cache_dir, f"{glob.escape(name)}_*.deb")))
    if len(debs) != 1:
        raise CorpusError(f"expected one .deb of {name!r} in {cache_dir}, found {debs or 'none'} "
                          "(remove the extra versions to choose one)")
    deb = debs[0]
    version = _run(["dpkg-deb", "--field", deb, "Version"], f"reading {deb}").strip()
    with open(deb, "rb") as f:
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    root = os.path.join(cache_dir, "extracted", f"{name}_{version}_{sha256[:12]}")
    if not os.path.isdir(root):
        tmp = f"{root}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        _run(["dpkg-deb", "-x", deb, tmp], f"unpacking {deb}")
        os.rename(tmp, root)
    return Package(name, version, sha256, deb, root)


# ----------------------------------------------------------------------------- sources


@dataclass
class Candidate:
    """A possible source: its identity and how to get its clean text (None: unusable)."""
    package: str
    sid: str
    load: Callable[[], str | None]


@dataclass
class Source:
    domain: str
    package: str
    sid: str
    text: str
    nbytes: int
    split: str = ""
    documents: list[str] = field(default_factory=list)


_LEGAL_NAME = re.compile(r"(licen[cs]es?|copying|copyright|lppl)(-[a-z0-9.]+)?(\.rst)?(\.txt|\.md)?")


def is_legal_file(path: str) -> bool:
    """Licence and copyright files belong to the Legal domain, wherever they are shipped."""
    name = os.path.basename(path).lower()
    return _LEGAL_NAME.fullmatch(name[:-3] if name.endswith(".gz") else name) is not None


def walk(pkg: Package, subdir: str, suffixes: tuple[str, ...] = ("",), legal: bool = False,
         exclude: str | None = None) -> list[str]:
    """Sorted paths (relative to the package root) under `subdir` ending in a suffix
    (after an optional .gz), that are (legal=True) or are not licence files."""
    found = []
    for directory, dirs, files in os.walk(os.path.join(pkg.root, subdir)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.relpath(os.path.join(directory, name), pkg.root)
            bare = name[:-3] if name.endswith(".gz") else name
            if (bare.endswith(suffixes) and is_legal_file(path) == legal
                    and not os.path.islink(os.path.join(directory, name))
                    and not (exclude and re.search(exclude, path))):
                found.append(path)
    return found


def read_text(path: str) -> str | None:
    with open(path, "rb") as f:
        return fmt.clean_text(fmt.decode_bytes(f.read(), path))


def file_candidates(pkg: Package, paths: list[str], render: Callable[[str], str | None] | None = None,
                    keep: Callable[[str], bool] | None = None) -> list[Candidate]:
    """One candidate per file: its cleaned text, rendered (e.g. troff) and filtered."""
    def loader(path: str) -> Callable[[], str | None]:
        def load():
            text = read_text(os.path.join(pkg.root, path))
            if text is not None and render is not None:
                text = render(text)
                text = fmt.clean_text(text.encode("utf-8")) if text else None
            return text if text and (keep is None or keep(text)) else None
        return load
    return [Candidate(pkg.name, f"{pkg.name}:{path}", loader(path)) for path in paths]


def text_candidates(pkg: Package, items: list[tuple[str, str]]) -> list[Candidate]:
    """Candidates for texts parsed up front (dictionary blocks, Bible books...)."""
    return [Candidate(pkg.name, f"{pkg.name}:{sid}", lambda t=text: fmt.clean_text(t.encode("utf-8")))
            for sid, text in items]


# ----------------------------------------------------------------------------- domains


def books(pkgs: dict[str, Package]) -> list[Candidate]:
    """SWORD modules (one book or psalm a source) and the R janeaustenr novels."""
    out = []
    for pkg in pkgs.values():
        for rdb in walk(pkg, "usr/lib/R/site-library", ("Rdata.rdb",)):
            with open(os.path.join(pkg.root, rdb), "rb") as f:
                novels = fmt.r_character_vectors(f.read(), rdb)
            out += text_candidates(pkg, [(novel[0].strip(), "\n".join(novel)) for novel in novels])
        for index in walk(pkg, "usr/share/sword/modules", (".bzs", ".czs")):
            base = os.path.join(pkg.root, index[:-1])
            with open(base + "s", "rb") as s, open(base + "z", "rb") as z, open(base + "v", "rb") as v:
                blocks = fmt.sword_blocks(s.read(), z.read(), v.read(), 10 if index.endswith(".bzs") else 12)
            out += text_candidates(pkg, [(f"{index}#{i}", text) for i, text in enumerate(blocks) if text])
    return out


_DICT_NOISE = re.compile(r"(?m)^[ \t]*(\[[^\]\n]*\][ \t]*)+\n")  # '[1913 Webster]' source tags


def dictionaries(pkgs: dict[str, Package], block_bytes: int = 6000) -> list[Candidate]:
    """dictd databases, consecutive entries grouped into blocks of about 6 KB (a source each)."""
    out = []
    for pkg in pkgs.values():
        for index in walk(pkg, "usr/share/dictd", (".index",)):
            with open(os.path.join(pkg.root, index), encoding="utf-8", errors="replace") as f:
                index_text = f.read()
            with open(os.path.join(pkg.root, index[:-6] + ".dict.dz"), "rb") as f:
                data = fmt.decode_bytes(f.read(), ".gz")  # dictzip is gzip-compatible
            blocks, current, size = [], [], 0
            for word, entry in fmt.dictd_entries(index_text, data):
                current.append((word, _DICT_NOISE.sub("", entry).strip("\n")))
                size += len(entry)
                if size >= block_bytes:
                    blocks.append(current)
                    current, size = [], 0
            blocks += [current] if current else []
            name = os.path.basename(index)[:-6]
            out += text_candidates(pkg, [(f"{name}@{b[0][0]}#{i}", "\n\n".join(e for _, e in b))
                                         for i, b in enumerate(blocks)])
    return out


def legal(pkgs: dict[str, Package]) -> list[Candidate]:
    """Licence collections, common-licenses, Debian's constitution and social contract,
    and every licence/copyright file shipped in any package of the corpus."""
    out = []
    for pkg in pkgs.values():
        # (TeX Live's 'Licenses' files are lists of file names, not legal text.)
        out += file_candidates(pkg, walk(pkg, "", legal=True, exclude=r"/texlive-[^/]*/Licenses"))
        out += file_candidates(pkg, walk(pkg, "usr/share/common-licenses"))
        out += file_candidates(pkg, walk(pkg, "usr/share/doc/debian", exclude=r"/(?!constitution|social)[^/]*$"))
        chooser = walk(pkg, "usr/share/rubygems-integration", (".txt",), exclude=r"^(?!.*/_licenses/)")
        out += file_candidates(pkg, chooser, render=fmt.strip_front_matter)
    return out


def _not_generated(text: str) -> bool:
    return "DO NOT EDIT" not in text[:2000] and "generated by" not in text[:300].lower()


def code(pkgs: dict[str, Package]) -> list[Candidate]:
    """Python standard library and Go distribution sources (no test data, no generated files)."""
    out = []
    for pkg in pkgs.values():
        paths = walk(pkg, "usr/lib/python3.11", (".py",), exclude=r"/(site|dist)-packages/")
        paths += walk(pkg, "usr/share", (".go", ".c", ".h"), exclude=r"/testdata/")
        out += file_candidates(pkg, paths, keep=_not_generated)
    return out


def manpages(pkgs: dict[str, Package], translated: bool = False) -> list[Candidate]:
    """Man pages rendered from troff; English ones, or (translated=True) the translations."""
    out = []
    for pkg in pkgs.values():
        pattern = r"^usr/share/man/[a-z]{2}(_[A-Z]{2})?/" if translated else r"^usr/share/man/man"
        paths = [p for p in walk(pkg, "usr/share/man") if re.match(pattern, p) and re.search(r"/man\d", p)]
        out += file_candidates(pkg, paths, render=fmt.troff_to_text)
    return out


def latex(pkgs: dict[str, Package]) -> list[Candidate]:
    """LaTeX sources: documented sources (.dtx), documents (.tex), packages and classes."""
    out = []
    for pkg in pkgs.values():
        paths = walk(pkg, "usr/share/texlive/texmf-dist", (".dtx", ".tex", ".sty", ".cls"))
        paths += walk(pkg, "usr/share/doc", (".tex",))
        out += file_candidates(pkg, paths, keep=_not_generated)
    return out


def documentation(pkgs: dict[str, Package]) -> list[Candidate]:
    """reStructuredText sources of the Python docs, Debian Policy and Developer's Reference."""
    out = []
    for pkg in pkgs.values():
        out += file_candidates(pkg, walk(pkg, "usr/share", (".rst.txt",), exclude=r"^(?!.*/_sources/)"))
    return out


@dataclass(frozen=True)
class Domain:
    name: str
    packages: dict[str, float]  # package -> weight of its share when the domain is capped
    extract: Callable[[dict[str, Package]], list[Candidate]]
    all_packages: bool = False  # also reads every other package of the corpus (Legal)


MANPAGES_TRANSLATED = ("de", "fr", "es", "pl", "ru", "it", "nl", "pt-br", "ja")
DOMAINS = (
    Domain("Books", {"sword-text-kjv": 1, "sword-comm-tdavid": 1, "r-cran-janeaustenr": 1}, books),
    Domain("Dictionary", {"dict-gcide": 3, "dict-wn": 1, "dict-foldoc": 1, "dict-jargon": 1, "dict-vera": 1,
                          "dict-devil": 1}, dictionaries),
    Domain("Legal", {"ruby-licensee": 1, "base-files": 1, "doc-debian": 1}, legal, all_packages=True),
    Domain("Code", {"libpython3.11-stdlib": 1, "golang-1.19-src": 1}, code),
    Domain("Manpages", {"manpages": 1, "manpages-dev": 1}, manpages),
    Domain("Multilingual", {f"manpages-{lang}": 1 for lang in MANPAGES_TRANSLATED},
           lambda pkgs: manpages(pkgs, translated=True)),
    Domain("LaTeX", {"texlive-latex-recommended": 1, "texlive-science": 1, "texlive-latex-extra": 1}, latex),
    Domain("Docs", {"python3.11-doc": 2, "debian-policy": 1, "developers-reference": 1}, documentation),
)


# ----------------------------------------------------------------------------- selection


class Deduper:
    """Keeps every text out of the corpus that is already in it, shared by all domains:
    paragraphs of at least `min_paragraph` characters are kept at their first occurrence
    only (licence headers, translators' credits...), and a source is rejected when the
    rest is seen exactly (after whitespace normalisation) or nearly (at least
    `threshold` of its sampled 8-word shingles seen, e.g. a licence re-wrapped)."""

    def __init__(self, words: int = 8, sample: int = 4, threshold: float = 0.5, min_paragraph: int = 80):
        self.words, self.sample, self.threshold, self.min_paragraph = words, sample, threshold, min_paragraph
        self.exact: set[bytes] = set()
        self.paragraphs: set[bytes] = set()
        self.shingles: set[bytes] = set()

    def _shingles(self, words: list[str]) -> set[bytes]:
        # Anchors chosen by content (crc32 of the word), so an inserted word shifts nothing.
        anchors = (i for i in range(len(words) - self.words + 1)
                   if zlib.crc32(words[i].encode("utf-8")) % self.sample == 0)
        return {hashlib.blake2b(" ".join(words[i:i + self.words]).encode("utf-8"), digest_size=8).digest()
                for i in anchors}

    def _new_paragraphs(self, text: str) -> tuple[str, set[bytes]]:
        kept, keys = [], set()
        for paragraph in text.split("\n\n"):
            normal = " ".join(paragraph.split())
            if len(normal) >= self.min_paragraph:
                key = hashlib.blake2b(normal.encode("utf-8"), digest_size=16).digest()
                if key in self.paragraphs:
                    continue
                keys.add(key)
            kept.append(paragraph)
        return "\n\n".join(kept), keys

    def admit(self, text: str, min_bytes: int = 0) -> tuple[str | None, str]:
        """(the text less seen paragraphs, "") if it is new and still min_bytes long,
        else (None, why). Only an admitted text is remembered."""
        text, paragraph_keys = self._new_paragraphs(text)
        if len(text.encode("utf-8")) < min_bytes:
            return None, "tiny"
        words = text.split()
        key = hashlib.sha256(" ".join(words).encode("utf-8")).digest()
        shingles = self._shingles(words)
        if key in self.exact or (len(shingles) >= 4 and
                                 len(shingles & self.shingles) >= self.threshold * len(shingles)):
            return None, "duplicate"
        self.exact.add(key)
        self.paragraphs |= paragraph_keys
        self.shingles |= shingles
        return text, ""


def select_sources(domain: Domain, candidates: list[Candidate], cap_bytes: float, deduper: Deduper,
                   min_source_bytes: int) -> tuple[list[Source], collections.Counter]:
    """Take sources in a fixed pseudo-random order until the domain holds cap_bytes, each
    time from the package with the smallest share so far (bytes / weight), skipping
    unusable, duplicate and (once seen paragraphs are dropped) tiny texts. Returns the
    sources and counts of skips."""
    queues: dict[str, collections.deque] = {}
    for cand in sorted(candidates, key=lambda c: stable_hash("select", domain.name, c.sid)):
        queues.setdefault(cand.package, collections.deque()).append(cand)
    taken = collections.Counter()
    heap = [(0.0, pkg) for pkg in sorted(queues)]
    chosen, skipped, total = [], collections.Counter(), 0
    while heap and total < cap_bytes:
        _, pkg = heapq.heappop(heap)
        if not queues[pkg]:
            continue  # package exhausted
        cand = queues[pkg].popleft()
        text, why = deduper.admit(text, min_source_bytes) if (text := cand.load()) else (None, "unusable")
        if text is None:
            skipped[why] += 1
        else:
            nbytes = len(text.encode("utf-8"))
            chosen.append(Source(domain.name, pkg, cand.sid, text, nbytes))
            taken[pkg] += nbytes
            total += nbytes
        heapq.heappush(heap, (taken[pkg] / domain.packages.get(pkg, 1.0), pkg))
    return chosen, skipped


def assign_splits(sources: list[Source], valid_share: float, test_share: float, min_eval_bytes: int) -> None:
    """Set each source's split. Sources are visited in the order of a hash of their
    identity; valid, then test, take them until each holds max(share, min_eval_bytes)
    of the domain (at most a fifth each), skipping sources that would overshoot by half."""
    total = sum(s.nbytes for s in sources)
    targets = {split: min(max(share * total, min_eval_bytes), 0.2 * total)
               for split, share in (("valid", valid_share), ("test", test_share))}
    got = dict.fromkeys(targets, 0)
    for source in sorted(sources, key=lambda s: stable_hash("split", s.domain, s.sid)):
        source.split = "train"
        for split, target in targets.items():
            if got[split] < target and got[split] + source.nbytes <= 1.5 * target:
                source.split = split
                got[split] += source.nbytes
                break


# ----------------------------------------------------------------------------- documents


def _units(text: str, max_bytes: int) -> list[tuple[str, str]]:
    """(separator before, piece): paragraphs, or the lines of paragraphs that are too long,
    or slices of lines that are too long."""
    units = []
    for p_index, para in enumerate(text.split("\n\n")):
        sep = "\n\n" if p_index else ""
        if len(para.encode("utf-8")) <= max_bytes:
            units.append((sep, para))
            continue
        for l_index, line in enumerate(para.split("\n")):
            line_sep = sep if l_index == 0 else "\n"
            step = max_bytes // 4  # characters: at most 4 bytes each in UTF-8
            pieces = [line[i:i + step] for i in range(0, len(line), step)] if len(line.encode()) > max_bytes \
                else [line]
            units += [(line_sep if i == 0 else "", piece) for i, piece in enumerate(pieces)]
    return units


def chunk_text(text: str, target_bytes: int, min_bytes: int, max_bytes: int) -> list[str]:
    """Cut a source into documents at paragraph (else line) boundaries: each document grows
    until it reaches target_bytes and never exceeds max_bytes; a short tail joins the
    previous document when it fits, so only a source's last document may be short."""
    docs, current, size, lead = [], [], 0, ""
    # Units of at most max - target bytes: a document below target plus one unit fits.
    for sep, unit in _units(text, max_bytes - target_bytes - 2):
        unit_bytes = len(unit.encode("utf-8"))
        if current and size + len(sep) + unit_bytes > max_bytes:
            docs.append("".join(current))
            current, size = [], 0
        if current:
            current.append(sep)
            size += len(sep)
        else:
            lead = sep or "\n\n"  # how a short tail rejoins the previous document
        current.append(unit)
        size += unit_bytes
        if size >= target_bytes:
            docs.append("".join(current))
            current, size = [], 0
    tail = "".join(current).strip("\n")
    if tail:
        if docs and size < min_bytes and len(docs[-1].encode("utf-8")) + len(lead) + size <= max_bytes:
            docs[-1] = docs[-1] + lead + tail
        else:
            docs.append(tail)
    return [d.strip("\n") for d in docs if d.strip()]


# ----------------------------------------------------------------------------- build


def fetch_packages(domains: list[Domain], cache_dir: str) -> dict[str, Package]:
    os.makedirs(cache_dir, exist_ok=True)
    packages = {name: fetch_package(name, cache_dir) for name in sorted({n for d in domains for n in d.packages})}
    log(f"{len(packages)} packages: " + ", ".join(f"{name} {p.version}" for name, p in packages.items()))
    return packages


def build_sources(domains: list[Domain], packages: dict[str, Package], args) -> list[Source]:
    """Select, deduplicate, split and chunk every domain's sources, in DOMAINS order."""
    deduper, out = Deduper(), []
    for domain in domains:
        pkgs = packages if domain.all_packages else {name: packages[name] for name in domain.packages}
        candidates = domain.extract(pkgs)
        chosen, skipped = select_sources(domain, candidates, args.size_mb * 1e6, deduper, args.min_source_bytes)
        if not chosen:
            raise CorpusError(f"domain {domain.name}: no usable text in packages {sorted(pkgs)}")
        assign_splits(chosen, args.valid_share, args.test_share, int(args.min_eval_kb * 1000))
        for source in chosen:
            source.documents = chunk_text(source.text, args.doc_target_bytes, args.doc_min_bytes,
                                          args.doc_max_bytes)
            source.text = ""  # the documents hold it now
        log(f"{domain.name}: {len(chosen)} sources of {len(candidates)} candidates, "
            f"{sum(s.nbytes for s in chosen) / 1e6:.2f} MB; skipped {dict(sorted(skipped.items()))}")
        for split in ("valid", "test"):
            got = sum(s.nbytes for s in chosen if s.split == split)
            if got < min(100_000, args.min_eval_kb * 1000):
                log(f"WARNING: {domain.name} has only {got / 1e3:.0f} KB of {split} text")
        out += chosen
    return out


def split_bytes(sources: list[Source], split: str, seed: int) -> tuple[bytes, int]:
    """The JSON lines of one split, domains shuffled together in a seeded hash order."""
    docs = sorted((stable_hash("order", str(seed), s.domain, s.sid, str(i)), s.domain, text)
                  for s in sources if s.split == split for i, text in enumerate(s.documents))
    lines = [json.dumps({"text": text, "meta": {"pile_set_name": domain}}, ensure_ascii=False)
             for _, domain, text in docs]
    return "".join(line + "\n" for line in lines).encode("utf-8"), len(lines)


def describe(sources: list[Source], packages: dict[str, Package], domains: list[Domain], args,
             files: dict) -> dict:
    """The content of sources.json: provenance and counts (no clock: it is deterministic too)."""
    info = {}
    for domain in domains:
        mine = [s for s in sources if s.domain == domain.name]
        by_package = collections.defaultdict(lambda: {"sources": 0, "bytes": 0})
        for s in mine:
            by_package[s.package]["sources"] += 1
            by_package[s.package]["bytes"] += s.nbytes
        info[domain.name] = {
            "packages": dict(sorted(by_package.items())),
            "splits": {split: {"sources": sum(s.split == split for s in mine),
                               "documents": sum(len(s.documents) for s in mine if s.split == split),
                               "bytes": sum(len(d.encode("utf-8")) for s in mine if s.split == split
                                            for d in s.documents)} for split in SPLITS}}
    settings = {key: value for key, value in vars(args).items() if key not in ("output", "cache_dir", "domains")}
    return {
        "format": "megatron_hds-text-corpus", "version": 1, "settings": {**settings, "zstd_level": ZSTD_LEVEL},
        "packages": {name: {"version": p.version, "deb": os.path.basename(p.deb), "sha256": p.sha256}
                     for name, p in sorted(packages.items())},
        "domains": info, "files": files,
    }


def write_corpus(out_dir: str, sources: list[Source], packages: dict[str, Package], domains: list[Domain],
                 args) -> dict:
    """Write the three splits, source_ids.json and sources.json under temporary names and
    rename them only when all are written, sources.json last: an interrupted run leaves
    no final file (stale ones of an earlier run are removed first)."""
    os.makedirs(out_dir, exist_ok=True)
    for name in [f"{split}.jsonl.zst" for split in SPLITS] + ["source_ids.json", "sources.json"]:
        if os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    files = {}
    with ExitStack() as stack:
        # Entered first, exited (renamed) last.
        manifest_tmp = stack.enter_context(atomic_path(os.path.join(out_dir, "sources.json")))
        for split in SPLITS:
            data, count = split_bytes(sources, split, args.seed)
            packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=0).compress(data)
            with open(stack.enter_context(atomic_path(os.path.join(out_dir, f"{split}.jsonl.zst"))), "wb") as f:
                f.write(packed)
            files[split] = {"path": f"{split}.jsonl.zst", "documents": count, "text_bytes": len(data),
                            "sha256": hashlib.sha256(packed).hexdigest()}
            log(f"wrote {split}: {count} documents, {len(data) / 1e6:.2f} MB of JSON lines")
        ids = {d.name: {split: sorted(s.sid for s in sources if s.domain == d.name and s.split == split)
                        for split in SPLITS} for d in domains}
        with open(stack.enter_context(atomic_path(os.path.join(out_dir, "source_ids.json"))), "w") as f:
            json.dump(ids, f, indent=1, ensure_ascii=False)
        manifest = describe(sources, packages, domains, args, files)
        with open(manifest_tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, ensure_ascii=False)
            f.write("\n")
    return manifest


def summary_table(manifest: dict) -> str:
    """Per-domain sources, documents and MB of text per split, and the totals."""
    rows = [("domain", "sources", *(f"docs {s[:2]}" for s in SPLITS), *(f"MB {s[:2]}" for s in SPLITS))]
    for name, info in [*manifest["domains"].items(), ("total", None)]:
        splits = info["splits"] if info else {s: {k: sum(i["splits"][s][k] for i in manifest["domains"].values())
                                                  for k in ("sources", "documents", "bytes")} for s in SPLITS}
        rows.append((name, sum(splits[s]["sources"] for s in SPLITS), *(splits[s]["documents"] for s in SPLITS),
                     *(f"{splits[s]['bytes'] / 1e6:.2f}" for s in SPLITS)))
    return "\n".join(f"{row[0]:<13}" + "".join(f"{v:>9}" for v in row[1:]) for row in rows)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", required=True, help="output directory")
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/megatron_hds/debs"),
                    help="where .deb files are downloaded and unpacked (reused across runs)")
    ap.add_argument("--size-mb", type=float, default=5.5, help="cap on each domain's text, MB (default 5.5)")
    ap.add_argument("--domains", nargs="+", choices=[d.name for d in DOMAINS], help="build only these domains")
    ap.add_argument("--valid-share", type=float, default=0.05, help="share of each domain in valid (0.05)")
    ap.add_argument("--test-share", type=float, default=0.05, help="share of each domain in test (0.05)")
    ap.add_argument("--min-eval-kb", type=float, default=150, help="at least this much valid and test text "
                    "per domain, KB (150; at most a fifth of the domain)")
    ap.add_argument("--seed", type=int, default=1234, help="order of the documents within a split")
    ap.add_argument("--doc-target-bytes", type=int, default=2000, help="documents grow to this size (2000)")
    ap.add_argument("--doc-min-bytes", type=int, default=1000, help="shorter tails join the previous document")
    ap.add_argument("--doc-max-bytes", type=int, default=8000, help="no document is longer (8000)")
    ap.add_argument("--min-source-bytes", type=int, default=200, help="smaller sources are dropped (200)")
    args = ap.parse_args(argv)
    if not args.size_mb > 0 or not 0 <= args.valid_share < 0.5 or not 0 <= args.test_share < 0.5:
        ap.error("--size-mb must be > 0 and the shares in [0, 0.5)")
    if not 0 < args.doc_min_bytes <= args.doc_target_bytes <= args.doc_max_bytes // 2:
        ap.error("need 0 < --doc-min-bytes <= --doc-target-bytes <= --doc-max-bytes / 2")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    domains = [d for d in DOMAINS if args.domains is None or d.name in args.domains]
    try:
        packages = fetch_packages(domains, args.cache_dir)
        sources = build_sources(domains, packages, args)
        manifest = write_corpus(args.output, sources, packages, domains, args)
    except CorpusError as exc:
        print(f"make_text_corpus: error: {exc}", file=sys.stderr)
        return 1
    print(summary_table(manifest))
    log(f"done: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

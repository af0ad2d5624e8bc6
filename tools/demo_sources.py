"""Cut domains of the demo corpus (Code, Docs, Docstrings): their source material,
split into train/valid/test *before* it is cut into documents.

The material is what every CPython installation carries: the standard library's
``.py`` files (Code, and their docstrings for Docstrings) and the ``pydoc_data``
help topics (Docs).  ``demo_material()`` returns each domain's sources per split;
the chunking generators below only ever cut a split's own sources, and only the
train split reuses them.  The split is made once per installation and does not
depend on the corpus seed, so every seed evaluates on the same held-out material.

How the split is made (see ``demo_material``):

1. Sources are deduplicated by content (the first path in sorted order is kept).
2. Near-duplicate sources are grouped: two sources that share at least a fifth of
   their long lines (``LONG_LINE`` characters or more, whitespace-stripped) land in
   one group, e.g. the ~100 generated ``encodings/cp*.py`` codec files.
3. Groups are visited in the order of a SHA-256 of their first source's name; valid,
   then test, take groups until each holds max(5 %, 50 KB) of the domain's material
   (at most a fifth), skipping groups that would overshoot by half.  A stdlib file's
   docstrings go wherever the file goes, so Code and Docstrings agree.
4. Held-out docstrings that also occur in train (or in valid, for test) are dropped.
5. Every long line of the held-out material is removed from the train material, of
   all three domains: licence headers (``# Licensed to PSF under a Contributor
   Agreement.``), common idioms shared by unrelated files, a sentence quoted in both
   a docstring and a help topic.  Train loses about 25 KB of its 12 MB this way.

So no held-out document shares a line of ``LONG_LINE`` or more characters with a
train document, with no exception.
"""
from __future__ import annotations

import ast
import hashlib
import itertools
import os
import random
import sysconfig
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Iterable, Iterator, List, Set, Tuple

SPLITS: Tuple[str, ...] = ("train", "valid", "test")
HELD_OUT: Tuple[str, ...] = ("valid", "test")
LONG_LINE = 40  # characters (stripped): a line this long identifies its text
EVAL_SHARE = 0.05  # of a cut domain's material, for each held-out split
MIN_EVAL_BYTES = 50_000  # ... but at least this much (Docs has only ~0.47 MB) ...
MAX_EVAL_SHARE = 0.2  # ... and at most this share
NEAR_DUPLICATE = 0.2  # sources sharing this share of their long lines are one group
DOC_MIN_BYTES = 1_000  # the ~1-8 KB document size range of chunked sources

# Directory names under the stdlib that are not "library source": test suites
# (which include deliberately broken / Python-2 files and huge data blobs),
# installed third-party packages, which would differ between machines, and
# pydoc_data, whose topics.py holds the Docs domain's text as string literals.
_SKIP_DIRS = frozenset({
    "test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "pydoc_data",
})


@dataclass(frozen=True)
class Source:
    """One unit of material: a file, a help topic or a docstring."""
    sid: str  # identity: stdlib path, "topic:<name>" or "<path>#<index>"
    text: str


def stable_hash(*parts: str) -> int:
    """A 64-bit hash of strings, the same in every process (unlike hash())."""
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()[:8], "big")


def long_lines(text: str) -> Set[str]:
    """The whitespace-stripped lines of at least LONG_LINE characters: the leakage unit."""
    return {s for s in (line.strip() for line in text.split("\n")) if len(s) >= LONG_LINE}


# ----------------------------------------------------------------------------
# Reading the installation
# ----------------------------------------------------------------------------

def _stdlib_sources() -> List[Source]:
    """Every stdlib .py file (path relative to the stdlib, text), sorted by path.

    ``sysconfig.get_paths()["stdlib"]`` points at the base interpreter's library
    even inside a virtual environment, unlike ``site``-based lookups.
    """
    root = sysconfig.get_paths()["stdlib"]
    out: List[Source] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Sorting in place fixes os.walk's order (listing order depends on the filesystem).
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if not name.endswith(".py") or name.startswith("test_"):
                continue
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb") as fh:
                    text = fh.read().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue  # a few legacy-encoded files; not worth guessing codecs
            if text.strip():
                out.append(Source(os.path.relpath(path, root).replace(os.sep, "/"), text.strip("\n")))
    if not out:
        raise RuntimeError(f"no stdlib .py sources found under {root!r}")
    return out


def _help_topics() -> List[Source]:
    from pydoc_data.topics import topics  # prose shipped with every CPython

    return [Source(f"topic:{k}", topics[k].strip()) for k in sorted(topics) if topics[k].strip()]


_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_STMT_FIELDS = ("body", "orelse", "finalbody", "handlers")


def _file_docstrings(source: Source) -> List[Source]:
    """Docstrings of one file in source order, as ``<path>#<index>`` sources (parsed, never imported)."""
    try:
        tree = ast.parse(source.text)
    except (SyntaxError, ValueError):
        return []
    found: List[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, _DOC_NODES):
            doc = ast.get_docstring(node, clean=True)
            if doc and doc.strip():
                found.append(doc.strip())
        # Walk statement lists only (defs nested in if/try/with blocks still
        # count); visiting every expression node would double the cost.
        children = []
        for field in _STMT_FIELDS:
            children.extend(getattr(node, field, None) or ())
        stack.extend(reversed(children))
    return [Source(f"{source.sid}#{i}", doc) for i, doc in enumerate(found)]


# ----------------------------------------------------------------------------
# Splitting
# ----------------------------------------------------------------------------

def _dedupe(sources: Iterable[Source]) -> List[Source]:
    """Sources whose text was not seen before, in order."""
    seen: Set[str] = set()
    out = []
    for s in sources:
        if s.text not in seen:
            seen.add(s.text)
            out.append(s)
    return out


def _near_duplicate_groups(sources: List[Source]) -> List[List[Source]]:
    """Group sources that share at least NEAR_DUPLICATE of their long lines (union-find)."""
    lines = [long_lines(s.text) for s in sources]
    owners: Dict[str, List[int]] = defaultdict(list)
    for i, found in enumerate(lines):
        for line in found:
            owners[line].append(i)
    shared: Counter = Counter()
    for found_in in owners.values():
        # A line in hundreds of files is an idiom, not a sign of a copy; skipping it
        # also keeps this quadratic step small.
        if 2 <= len(found_in) <= 200:
            shared.update(itertools.combinations(found_in, 2))
    parent = list(range(len(sources)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for (a, b), n in shared.items():  # the groups do not depend on this order
        if n >= max(2, NEAR_DUPLICATE * min(len(lines[a]), len(lines[b]))):
            parent[root(a)] = root(b)
    groups: Dict[int, List[Source]] = defaultdict(list)
    for i, s in enumerate(sources):
        groups[root(i)].append(s)
    return list(groups.values())


def _assign_splits(domain: str, groups: List[List[Source]]) -> Dict[str, str]:
    """{source id: split}. Groups are visited in a hash order of their first member;
    valid, then test, take them until each holds its target, skipping a group that
    would overshoot it by half; everything else is train."""
    total = sum(len(s.text.encode("utf-8")) for g in groups for s in g)
    target = min(max(EVAL_SHARE * total, MIN_EVAL_BYTES), MAX_EVAL_SHARE * total)
    got = dict.fromkeys(HELD_OUT, 0)
    split_of: Dict[str, str] = {}
    for group in sorted(groups, key=lambda g: stable_hash("split", domain, g[0].sid)):
        size = sum(len(s.text.encode("utf-8")) for s in group)
        split = "train"
        for held in HELD_OUT:
            if got[held] < target and got[held] + size <= 1.5 * target:
                split, got[held] = held, got[held] + size
                break
        for s in group:
            split_of[s.sid] = split
    return split_of


def _by_split(sources: List[Source], split_of: Dict[str, str]) -> Dict[str, List[Source]]:
    return {split: [s for s in sources if split_of[s.sid] == split] for split in SPLITS}


def _strip_lines(text: str, banned: Set[str]) -> str:
    """``text`` without its lines whose stripped form is in ``banned``."""
    return "\n".join(line for line in text.split("\n") if line.strip() not in banned).strip("\n")


@lru_cache(maxsize=1)
def demo_material() -> Dict[str, Dict[str, Tuple[Source, ...]]]:
    """{domain: {split: sources}} for Code, Docs and Docstrings (see the module docstring).

    Cached per process: it depends only on the Python installation (~1.5 s, most of
    it parsing the stdlib for docstrings).
    """
    files = _dedupe(_stdlib_sources())
    code = _by_split(files, _assign_splits("Code", _near_duplicate_groups(files)))
    topics = _dedupe(_help_topics())
    docs = _by_split(topics, _assign_splits("Docs", _near_duplicate_groups(topics)))

    # A file's docstrings follow the file, so no held-out docstring sits in a train
    # Code file; a docstring also found in an earlier split is dropped.
    docstrings: Dict[str, List[Source]] = {}
    seen: Set[str] = set()
    for split in SPLITS:
        docstrings[split] = _dedupe(d for f in code[split] for d in _file_docstrings(f) if d.text not in seen)
        seen.update(d.text for d in docstrings[split])

    material = {"Code": code, "Docs": docs, "Docstrings": docstrings}
    banned = set().union(*(long_lines(s.text) for m in material.values() for split in HELD_OUT
                           for s in m[split]))
    out: Dict[str, Dict[str, Tuple[Source, ...]]] = {}
    for domain, by_split in material.items():
        train = (Source(s.sid, _strip_lines(s.text, banned)) for s in by_split["train"])
        out[domain] = {"train": tuple(s for s in train if s.text.strip()),
                       **{split: tuple(by_split[split]) for split in HELD_OUT}}
    return out


def material_bytes() -> Dict[str, Dict[str, int]]:
    """UTF-8 bytes of each cut domain's material per split."""
    return {domain: {split: sum(len(s.text.encode("utf-8")) for s in sources)
                     for split, sources in by_split.items()}
            for domain, by_split in demo_material().items()}


# ----------------------------------------------------------------------------
# Chunking: each generator cuts one split's sources into documents of at most
# ``cap`` bytes; with ``reuse`` (train only) it starts a reshuffled pass when the
# material runs out, else it stops after one pass.
# ----------------------------------------------------------------------------

def chunks(text: str, rng: random.Random, lo: int, hi: int, seps: Tuple[str, ...] = ("\n",)) -> Iterator[str]:
    """Cut ``text`` into pieces of ~lo..hi characters, ending at a separator.

    The first separator in ``seps`` found in the back half of the window wins
    (e.g. paragraph breaks before line breaks); a window with none is cut at
    the next separator after it, or hard if there is none at all.
    """
    n = len(text)
    pos = 0
    while pos < n:
        target = rng.randint(lo, hi)
        if n - pos <= target + lo // 2:  # avoid leaving a tiny tail chunk
            end = n
        else:
            end = -1
            for sep in seps:
                cut = text.rfind(sep, pos + target // 2, pos + target)
                if cut >= 0:
                    end = cut + len(sep)
                    break
            if end < 0:
                cut = text.find(seps[-1], pos + target)
                end = n if cut < 0 else cut + len(seps[-1])
        piece = text[pos:end]
        pos = end
        if piece.strip():
            yield piece.strip("\n")


def gen_code(rng: random.Random, cap: int, sources: Tuple[Source, ...], reuse: bool) -> Iterator[str]:
    """Whole small files, or ~1-8 KB chunks of large ones cut at line boundaries."""
    files = [s.text for s in sources]
    lo = min(DOC_MIN_BYTES, cap // 2)
    while files:  # each pass = one reshuffled sweep of the files
        rng.shuffle(files)
        for text in files:
            if len(text) <= cap:
                yield text
            else:
                yield from chunks(text, rng, lo, cap, ("\n\n", "\n"))
        if not reuse:
            return


def gen_docs(rng: random.Random, cap: int, sources: Tuple[Source, ...], reuse: bool) -> Iterator[str]:
    """Help topics joined in a shuffled order and cut at paragraph boundaries."""
    topics = [s.text for s in sources]
    lo = min(DOC_MIN_BYTES, cap // 2)
    while topics:
        # Each pass reshuffles the topics and cuts the joined stream at fresh
        # random boundaries, so reused material seldom repeats as a byte-identical
        # document (short topics cut one by one would repeat on every pass).
        rng.shuffle(topics)
        yield from chunks("\n\n".join(topics), rng, lo, cap, ("\n\n", "\n", " "))
        if not reuse:
            return


def gen_docstrings(rng: random.Random, cap: int, sources: Tuple[Source, ...], reuse: bool) -> Iterator[str]:
    """Docstrings grouped into ~1-8 KB documents: first file by file (a module's
    docstrings together), then, when reused, reshuffled one by one."""
    lo = min(DOC_MIN_BYTES, cap // 2)

    def group(docstrings: Iterable[str]) -> Iterator[str]:
        buf: List[str] = []
        size = 0
        target = rng.randint(lo, cap)
        for doc in docstrings:
            if len(doc) > cap:  # a few module docstrings are essays
                yield from chunks(doc, rng, lo, cap, ("\n\n", "\n", " "))
                continue
            if buf and size + len(doc) > cap:
                yield "\n\n".join(buf)
                buf, size, target = [], 0, rng.randint(lo, cap)
            buf.append(doc)
            size += len(doc) + 2
            if size >= target:
                yield "\n\n".join(buf)
                buf, size, target = [], 0, rng.randint(lo, cap)
        if buf:
            yield "\n\n".join(buf)

    by_file: Dict[str, List[str]] = defaultdict(list)
    for s in sources:
        by_file[s.sid.rsplit("#", 1)[0]].append(s.text)
    order = sorted(by_file)
    rng.shuffle(order)
    yield from group(doc for path in order for doc in by_file[path])
    texts = [s.text for s in sources]
    while reuse and texts:
        rng.shuffle(texts)
        yield from group(texts)


GENERATORS = {"Code": gen_code, "Docs": gen_docs, "Docstrings": gen_docstrings}

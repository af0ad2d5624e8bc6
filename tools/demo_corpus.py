"""Built-in demo corpus: a small Pile-shaped, multi-domain corpus made offline.

This module owns the default data of the demo training run and of the tests.
Nothing is downloaded: every domain is cut from material that any CPython
installation carries (the standard library's ``.py`` sources, the
``pydoc_data`` help topics) or is generated from a seeded ``random.Random``.

Output shape is that of The Pile's shards: JSON lines, one document per line,
``{"text": "...", "meta": {"pile_set_name": "<Domain>"}}``, documents of all
domains shuffled together, zstandard-compressed by default.

Domains (``DEMO_DOMAINS``) and their target shares of the uncompressed text
bytes (``DEMO_SHARES``).  The shares are deliberately unequal so that the
"natural" (token-share) mixture weights differ between domains, and the
domains differ in quality and character so a data scheduler has something to
tell apart:

================  =====  ========================================================
Domain            Share  Content
================  =====  ========================================================
``Code``          0.28   stdlib ``.py`` files: whole small files, or ~1-8 KB
                         chunks cut at line boundaries (test dirs and
                         site-packages skipped).
``Docs``          0.16   prose from ``pydoc_data.topics.topics`` (the text behind
                         ``help('topic')``), cut into ~1-8 KB paragraph windows.
``Math``          0.14   generated DeepMind-Mathematics-style problems (arithmetic,
                         linear equations, polynomials, derivatives, gcd, fractions,
                         factorisation, bases, sequences, rounding) with worked
                         answers, several problems per document.
``Docstrings``    0.13   module/class/function docstrings of the stdlib, extracted
                         with :mod:`ast` (parsed, never imported).
``Boilerplate``   0.12   near-duplicate templated text (licence headers, form
                         e-mails, cookie notices, disclaimers) with tiny random
                         variations: low quality, low lexical diversity.
``Noise``         0.10   random-character gibberish (letters/digits/punctuation).
``Logs``          0.07   generated web-server access logs, application logs and
                         CSV metric dumps.
================  =====  ========================================================

Sizes: ``size_mb`` counts megabytes of UTF-8 *text* (1 MB = 10**6 bytes, the
``text`` fields only, before JSON escaping and compression).  Each domain gets
``share * size`` bytes; the last document of a domain is trimmed (at a line or
word boundary) so totals land within a fraction of a percent of the target.
Every domain always gets at least ``MIN_DOCS_PER_DOMAIN`` documents, and the
per-document size is capped relative to the domain budget so that small corpora
(e.g. 0.2 MB) still hold several documents of every domain.

Reuse: when a domain's source material is exhausted it is reused in a fresh
pass, reshuffled and re-chunked with new random boundaries (so repeats are
rarely byte-identical documents).  With the default 32 MB: Code uses ~75% of the
stdlib once (no reuse), Docs (~0.46 MB of help topics) is reused ~11 times,
Docstrings (~1.8 MB) ~2-3 times; the generated domains never repeat.

Determinism: the same ``(size_mb, seed)`` gives byte-identical output on the
same Python installation (same stdlib files, same zstandard/zlib): all
randomness comes from ``random.Random`` seeded with strings (seeding with a
``str`` hashes with SHA-512, independent of ``PYTHONHASHSEED``), file lists are
sorted, no clock is read, zstd uses a fixed level and no worker threads, and
gzip headers carry ``mtime=0`` and no file name.  A different seed shuffles the
material and the document order differently and generates different content.
"""
from __future__ import annotations

import ast
import gzip
import json
import os
import random
import sysconfig
import uuid
from functools import lru_cache
from typing import Callable, Dict, Iterator, List, Tuple

from demo_generated import GENERATORS as _GENERATED

DEMO_DOMAINS: Tuple[str, ...] = (
    "Code",
    "Docs",
    "Math",
    "Docstrings",
    "Boilerplate",
    "Noise",
    "Logs",
)

DEMO_SHARES: Dict[str, float] = {
    "Code": 0.28,
    "Docs": 0.16,
    "Math": 0.14,
    "Docstrings": 0.13,
    "Boilerplate": 0.12,
    "Noise": 0.10,
    "Logs": 0.07,
}

MB = 1_000_000  # decimal megabyte: sizes are "about N MB of text", like The Pile's GB
MIN_DOCS_PER_DOMAIN = 3
DOC_MIN_BYTES = 1_000  # the ~1-8 KB document size range of chunked sources
DOC_MAX_BYTES = 8_000
MIN_DOC_BYTES = 128  # never emit a trimmed stub shorter than this
ZSTD_LEVEL = 3  # fixed: the output bytes depend on it
GZIP_LEVEL = 6
_EXTENSIONS = (".jsonl.zst", ".jsonl.gz", ".jsonl")
_WRITE_CHUNK = 1 << 20

# Directory names under the stdlib that are not "library source": test suites
# (which include deliberately broken / Python-2 files and huge data blobs) and
# installed third-party packages, which would differ between machines.
_SKIP_DIRS = frozenset({
    "test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
})


# ----------------------------------------------------------------------------
# Source material (cached per process: it depends only on the installation)
# ----------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _stdlib_sources() -> Tuple[Tuple[str, str], ...]:
    """(relative path, text) of every stdlib .py file, sorted by path.

    ``sysconfig.get_paths()["stdlib"]`` points at the base interpreter's library
    even inside a virtual environment, unlike ``site``-based lookups.
    """
    root = sysconfig.get_paths()["stdlib"]
    out: List[Tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Sorting in place fixes os.walk's traversal order (directory listing
        # order is filesystem-dependent).
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
                out.append((os.path.relpath(path, root).replace(os.sep, "/"), text))
    if not out:
        raise RuntimeError(f"no stdlib .py sources found under {root!r}")
    return tuple(out)


@lru_cache(maxsize=1)
def _help_topics() -> Tuple[str, ...]:
    from pydoc_data.topics import topics  # prose shipped with every CPython

    return tuple(topics[k].strip() for k in sorted(topics) if topics[k].strip())


_docstring_cache: Dict[str, Tuple[str, ...]] = {}
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_STMT_FIELDS = ("body", "orelse", "finalbody", "handlers")


def _file_docstrings(path: str, source: str) -> Tuple[str, ...]:
    """Docstrings of one file, in source order (cached: ast.parse is the slow part)."""
    cached = _docstring_cache.get(path)
    if cached is not None:
        return cached
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        tree = None
    found: List[str] = []
    stack = [tree] if tree is not None else []
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
    result = tuple(found)
    _docstring_cache[path] = result
    return result


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------

def _chunks(text: str, rng: random.Random, lo: int, hi: int, seps: Tuple[str, ...] = ("\n",)) -> Iterator[str]:
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


def _trim(text: str, limit: int) -> str:
    """Shorten ``text`` to about ``limit`` bytes at a line, else word, boundary."""
    if len(text.encode("utf-8")) <= limit:
        return text
    for sep in ("\n", " "):
        cut = text.rfind(sep, 0, limit)
        if cut >= limit // 2:
            return text[:cut].rstrip()
    return text[:limit].rstrip() or text[:limit]


# ----------------------------------------------------------------------------
# Domain generators: each is an endless stream of non-empty documents.
# ``cap`` is the maximum document size in bytes for this corpus size.
# ----------------------------------------------------------------------------

def _gen_code(rng: random.Random, cap: int) -> Iterator[str]:
    files = list(_stdlib_sources())
    lo = min(DOC_MIN_BYTES, cap // 2)
    while True:  # each pass = one reshuffled sweep of the stdlib
        rng.shuffle(files)
        for _path, text in files:
            if len(text) <= cap:
                if text.strip():
                    yield text.strip("\n")
            else:
                yield from _chunks(text, rng, lo, cap, ("\n\n", "\n"))


def _gen_docs(rng: random.Random, cap: int) -> Iterator[str]:
    topics = list(_help_topics())
    lo = min(DOC_MIN_BYTES, cap // 2)
    while True:
        # Only ~0.46 MB of topics: each pass reshuffles them and cuts the
        # joined stream at fresh random paragraph boundaries, so reused
        # material seldom repeats as a byte-identical document (short topics
        # cut one by one would repeat verbatim on every pass).
        rng.shuffle(topics)
        yield from _chunks("\n\n".join(topics), rng, lo, cap, ("\n\n", "\n", " "))


def _gen_docstrings(rng: random.Random, cap: int) -> Iterator[str]:
    files = list(_stdlib_sources())
    rng.shuffle(files)
    lo = min(DOC_MIN_BYTES, cap // 2)
    seen: List[str] = []

    def group(docstrings: Iterator[str]) -> Iterator[str]:
        buf: List[str] = []
        size = 0
        target = rng.randint(lo, cap)
        for doc in docstrings:
            if len(doc) > cap:  # a few module docstrings are essays
                yield from _chunks(doc, rng, lo, cap, ("\n\n", "\n", " "))
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

    def first_pass() -> Iterator[str]:
        # Parse lazily, file by file, so small corpora only pay for a few files.
        for path, text in files:
            docs = _file_docstrings(path, text)
            seen.extend(docs)
            yield from docs

    yield from group(first_pass())
    while True:  # reuse: docstrings reshuffled individually and regrouped
        rng.shuffle(seen)
        yield from group(iter(seen))


_GENERATORS: Dict[str, Callable[[random.Random, int], Iterator[str]]] = {
    "Code": _gen_code,
    "Docs": _gen_docs,
    "Math": _GENERATED["Math"],
    "Docstrings": _gen_docstrings,
    "Boilerplate": _GENERATED["Boilerplate"],
    "Noise": _GENERATED["Noise"],
    "Logs": _GENERATED["Logs"],
}
assert tuple(_GENERATORS) == DEMO_DOMAINS and tuple(DEMO_SHARES) == DEMO_DOMAINS
assert abs(sum(DEMO_SHARES.values()) - 1.0) < 1e-9


# ----------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------

def iter_demo_documents(size_mb: float, seed: int) -> Iterator[Tuple[str, str]]:
    """Yield ``(domain, text)`` documents, interleaved across domains.

    Each domain streams from its own ``random.Random(f"{seed}/{domain}")`` so
    its content does not depend on the interleaving; a separate stream picks
    which domain comes next, with probability proportional to the bytes the
    domain still owes, so every part of the corpus is a mix of all domains
    (like The Pile) and all domains run out at about the same time.
    """
    if not size_mb > 0:
        raise ValueError(f"size_mb must be > 0, got {size_mb!r}")
    seed = int(seed)
    total = int(round(size_mb * MB))
    budgets = {d: int(round(total * DEMO_SHARES[d])) for d in DEMO_DOMAINS}
    gens = {}
    for d in DEMO_DOMAINS:
        # Cap document size so even small corpora get several documents per
        # domain (and trimming the last one costs little).
        cap = max(MIN_DOC_BYTES * 2, min(DOC_MAX_BYTES, budgets[d] // 6))
        gens[d] = _GENERATORS[d](random.Random(f"{seed}/{d}"), cap)
    emitted = dict.fromkeys(DEMO_DOMAINS, 0)
    counts = dict.fromkeys(DEMO_DOMAINS, 0)
    active = list(DEMO_DOMAINS)
    pick = random.Random(f"{seed}/interleave")
    while active:
        weights = [max(budgets[d] - emitted[d], MIN_DOC_BYTES) for d in active]
        x = pick.random() * sum(weights)
        i = 0
        while i < len(active) - 1 and x >= weights[i]:
            x -= weights[i]
            i += 1
        domain = active[i]
        text = next(gens[domain])
        limit = max(budgets[domain] - emitted[domain], MIN_DOC_BYTES)
        text = _trim(text, limit)
        nbytes = len(text.encode("utf-8"))
        emitted[domain] += nbytes
        counts[domain] += 1
        yield domain, text
        if counts[domain] >= MIN_DOCS_PER_DOMAIN and emitted[domain] >= budgets[domain] - MIN_DOC_BYTES:
            active.remove(domain)


def _open_atomic_target(output: str):
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    # Hidden temporary name in the same directory (same filesystem, so
    # os.replace is atomic); it never ends in .jsonl* so it can't be mistaken
    # for a finished shard.  O_EXCL + mode 0o666 lets the umask apply as for
    # any normal file (mkstemp would leave it 0600).
    tmp = os.path.join(directory, f".{os.path.basename(output)}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    return tmp, os.fdopen(fd, "wb")


def write_demo_corpus(output: str, size_mb: float = 32.0, seed: int = 1234) -> dict:
    """Write the demo corpus to ``output`` and return per-domain stats.

    Compression follows the extension: ``.jsonl.zst`` (zstandard, as The Pile),
    ``.jsonl.gz`` or ``.jsonl``.  The file appears only once complete (written
    under a temporary name in the same directory, then ``os.replace``).
    Returns ``{domain: {"documents": n, "bytes": b}}`` for every domain in
    ``DEMO_DOMAINS`` order, ``b`` being UTF-8 text bytes.
    """
    output = os.fspath(output)
    if not output.endswith(_EXTENSIONS):
        raise ValueError(f"output must end with one of {_EXTENSIONS}, got {output!r}")
    stats = {d: {"documents": 0, "bytes": 0} for d in DEMO_DOMAINS}
    tmp, raw = _open_atomic_target(output)
    try:
        with raw:
            if output.endswith(".zst"):
                import zstandard

                cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=0, write_checksum=True)
                sink = cctx.stream_writer(raw, closefd=False)
            elif output.endswith(".gz"):
                # filename="" keeps the temp name out of the header; mtime=0
                # keeps the clock out of it.
                sink = gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                     compresslevel=GZIP_LEVEL, mtime=0)
            else:
                sink = None
            out = sink if sink is not None else raw
            buf: List[str] = []
            buffered = 0
            for domain, text in iter_demo_documents(size_mb, seed):
                st = stats[domain]
                st["documents"] += 1
                st["bytes"] += len(text.encode("utf-8"))
                # ensure_ascii (the json default): \u2028 and friends are
                # escaped, so str.splitlines() on the file splits only at
                # document boundaries.
                line = json.dumps({"text": text, "meta": {"pile_set_name": domain}})
                buf.append(line)
                buffered += len(line)
                if buffered >= _WRITE_CHUNK:
                    out.write(("\n".join(buf) + "\n").encode("ascii"))
                    buf, buffered = [], 0
            if buf:
                out.write(("\n".join(buf) + "\n").encode("ascii"))
            if sink is not None:
                sink.close()  # writes the zstd frame end / gzip trailer
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, output)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return stats


def read_demo_corpus(path: str) -> Iterator[Tuple[str, str]]:
    """Yield ``(pile_set_name, text)`` from a .jsonl / .jsonl.gz / .jsonl.zst file."""
    from megatron_hds.data.jsonl_input import iter_lines, parse_line

    for line in iter_lines(os.fspath(path)):
        if line.strip():
            (text,), domain = parse_line(line, ("text",), "meta.pile_set_name")
            yield domain, text

"""Built-in demo corpus: a small Pile-shaped, multi-domain corpus made offline, in
train, valid and test splits that share no text.

This module owns the default data of the demo training run and of the tests.
Nothing is downloaded: every domain is cut from material that any CPython
installation carries (the standard library's ``.py`` sources, the
``pydoc_data`` help topics) or is generated from a seeded ``random.Random``.

Output shape is that of The Pile's shards: JSON lines, one document per line,
``{"text": "...", "meta": {"pile_set_name": "<Domain>"}}``, documents of all
domains shuffled together, zstandard-compressed.  ``write_demo_corpus(DIR)``
writes ``DIR/train.jsonl.zst``, ``DIR/valid.jsonl.zst``, ``DIR/test.jsonl.zst``
and, last, ``DIR/corpus.json`` (settings, counts per domain and split, sha256).

Domains (``DEMO_DOMAINS``) and their target shares of the text bytes
(``DEMO_SHARES``).  The shares are deliberately unequal so that the "natural"
mixture weights differ between domains, and the domains differ in quality and
character so a data scheduler has something to tell apart:

================  =====  ========================================================
Domain            Share  Content
================  =====  ========================================================
``Code``          0.28   stdlib ``.py`` files: whole small files, or ~1-8 KB
                         chunks cut at line boundaries (test dirs,
                         site-packages and pydoc_data skipped).
``Docs``          0.16   prose from ``pydoc_data.topics.topics`` (the text behind
                         ``help('topic')``), cut into ~1-8 KB paragraph windows.
``Math``          0.14   generated DeepMind-Mathematics-style problems with worked
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

Splits.  The split is made before any document is cut, never after:

* Code, Docs and Docstrings ("cut" domains): each source (a file, a help topic,
  a file's docstrings) belongs to one split, chosen by a hash of its name after
  deduplication and grouping of near-duplicates (tools/demo_sources.py).  A split's
  documents are cut from its own sources only; only train reuses them.  Every line
  of 40 or more characters of the held-out material is removed from the train
  material, so no valid or test document shares such a line with train.
* Math, Boilerplate, Noise, Logs (generated): each split has its own random
  stream (``random.Random(f"{seed}/{domain}/{split}")``), and a document identical
  to one of an earlier split (valid, then test, then train) is skipped.

Sizes: ``size_mb`` counts megabytes of UTF-8 *text* of all three splits together
(1 MB = 10**6 bytes, the ``text`` fields only, before JSON escaping and
compression).  Each domain gets ``DEMO_SHARES[domain] * size`` bytes, of which
train gets 90 % and valid and test 5 % each (``SPLIT_SHARES``); a cut domain's
valid or test split holds at most its held-out material (Docs ~50-70 KB,
Docstrings ~70-90 KB), which is less than 5 % from about 6-11 MB up.  The last
document of a domain is trimmed at a line or word boundary so totals land
within a fraction of a percent of the target; every domain has at least
``MIN_DOCS_PER_DOMAIN`` documents in every split (material permitting), and the
per-document size is capped relative to the domain's budget so that small
corpora still hold several documents of every domain.

Reuse (train only): when a domain's train material is exhausted it is reused in
a fresh pass, reshuffled and re-chunked with new random boundaries.  With the
default 32 MB: Code uses ~80 % of its train material once, Docs (~0.35 MB of
train topics) is reused ~13 times, Docstrings (~1.6 MB) ~2-3 times.

Determinism: the same ``(size_mb, seed)`` gives byte-identical output on the
same Python installation (same stdlib files, same zstandard/zlib): all
randomness comes from ``random.Random`` seeded with strings (seeding with a
``str`` hashes with SHA-512, independent of ``PYTHONHASHSEED``), file lists are
sorted, no clock is read, zstd uses a fixed level and no worker threads, and
gzip headers carry ``mtime=0`` and no file name.  The split of the cut domains'
material does not depend on the seed.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
from contextlib import ExitStack
from typing import Dict, Iterable, Iterator, List, Optional, Set, Tuple

from demo_generated import GENERATORS as _GENERATED
from demo_sources import GENERATORS as _CUT
from demo_sources import HELD_OUT, SPLITS, demo_material, material_bytes
from megatron_hds.atomic_io import atomic_path

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

SPLIT_SHARES: Dict[str, float] = {"train": 0.90, "valid": 0.05, "test": 0.05}
# Held-out splits first: a generated document already in an earlier split is skipped.
GENERATION_ORDER: Tuple[str, ...] = ("valid", "test", "train")
CUT_DOMAINS: Tuple[str, ...] = tuple(_CUT)

MB = 1_000_000  # decimal megabyte: sizes are "about N MB of text", like The Pile's GB
MIN_DOCS_PER_DOMAIN = 3
DOC_MAX_BYTES = 8_000
MIN_DOC_BYTES = 128  # never emit a trimmed stub shorter than this
ZSTD_LEVEL = 3  # fixed: the output bytes depend on it
GZIP_LEVEL = 6
CORPUS_INFO = "corpus.json"  # written last: its presence means a complete corpus
FILE_EXTENSIONS = (".jsonl.zst", ".jsonl.gz", ".jsonl")
_WRITE_CHUNK = 1 << 20

assert set(_CUT) | set(_GENERATED) == set(DEMO_DOMAINS) and tuple(DEMO_SHARES) == DEMO_DOMAINS
assert abs(sum(DEMO_SHARES.values()) - 1.0) < 1e-9 and tuple(SPLIT_SHARES) == SPLITS


def split_file_name(split: str) -> str:
    return f"{split}.jsonl.zst"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _trim(text: str, limit: int) -> str:
    """Shorten ``text`` to about ``limit`` bytes at a line, else word, boundary."""
    if len(text.encode("utf-8")) <= limit:
        return text
    for sep in ("\n", " "):
        cut = text.rfind(sep, 0, limit)
        if cut >= limit // 2:
            return text[:cut].rstrip()
    return text[:limit].rstrip() or text[:limit]


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def split_budgets(size_mb: float, split: str) -> Dict[str, int]:
    """{domain: target bytes of text} of one split (before the held-out material caps)."""
    total = size_mb * MB * SPLIT_SHARES[split]
    return {d: int(round(total * DEMO_SHARES[d])) for d in DEMO_DOMAINS}


def _stream(domain: str, split: str, seed: int, cap: int) -> Iterator[str]:
    """The documents of one domain in one split; cut domains' held-out streams end."""
    rng = random.Random(f"{seed}/{domain}/{split}")
    if domain in _CUT:
        return _CUT[domain](rng, cap, demo_material()[domain][split], split == "train")
    return _GENERATED[domain](rng, cap)


def _iter_split(size_mb: float, seed: int, split: str, exclude: Set[bytes]) -> Iterator[Tuple[str, str]]:
    """Yield ``(domain, text)`` of one split, interleaved across domains, skipping
    documents whose digest is in ``exclude``.

    Each domain streams from its own random stream so its content does not depend
    on the interleaving; a separate stream picks which domain comes next, with
    probability proportional to the bytes the domain still owes, so every part of
    the split is a mix of all domains (like The Pile) and they run out together.
    """
    budgets = split_budgets(size_mb, split)
    streams = {}
    for d in DEMO_DOMAINS:
        # Cap document size so even small splits get several documents per domain
        # (and trimming the last one costs little).
        cap = max(MIN_DOC_BYTES * 2, min(DOC_MAX_BYTES, budgets[d] // 6))
        streams[d] = _stream(d, split, seed, cap)
    emitted = dict.fromkeys(DEMO_DOMAINS, 0)
    counts = dict.fromkeys(DEMO_DOMAINS, 0)
    active = list(DEMO_DOMAINS)
    pick = random.Random(f"{seed}/interleave/{split}")
    while active:
        weights = [max(budgets[d] - emitted[d], MIN_DOC_BYTES) for d in active]
        x = pick.random() * sum(weights)
        i = 0
        while i < len(active) - 1 and x >= weights[i]:
            x -= weights[i]
            i += 1
        domain = active[i]
        text = next(streams[domain], None)
        if text is None:  # held-out material used up
            active.remove(domain)
            continue
        text = _trim(text, max(budgets[domain] - emitted[domain], MIN_DOC_BYTES))
        if _digest(text) in exclude:
            continue
        emitted[domain] += len(text.encode("utf-8"))
        counts[domain] += 1
        yield domain, text
        if counts[domain] >= MIN_DOCS_PER_DOMAIN and emitted[domain] >= budgets[domain] - MIN_DOC_BYTES:
            active.remove(domain)


def _check_size(size_mb: float) -> None:
    if not size_mb > 0:
        raise ValueError(f"size_mb must be > 0, got {size_mb!r}")


def iter_demo_documents(size_mb: float, seed: int, split: str = "train") -> Iterator[Tuple[str, str]]:
    """Yield the ``(domain, text)`` documents of one split of the corpus of ``size_mb``
    (all splits together), exactly as ``write_demo_corpus`` writes them."""
    _check_size(size_mb)
    _check_split(split)
    seed = int(seed)
    exclude: Set[bytes] = set()
    for earlier in GENERATION_ORDER[:GENERATION_ORDER.index(split)]:
        exclude.update(_digest(text) for _, text in _iter_split(size_mb, seed, earlier, exclude))
    yield from _iter_split(size_mb, seed, split, exclude)


# ----------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------

def _write_jsonl(tmp: str, output: str, documents: Iterable[Tuple[str, str]]) -> Dict[str, Dict[str, int]]:
    """Write documents to ``tmp`` compressed as ``output``'s extension says; return
    ``{domain: {"documents": n, "bytes": b}}`` (UTF-8 text bytes) in DEMO_DOMAINS order."""
    stats = {d: {"documents": 0, "bytes": 0} for d in DEMO_DOMAINS}
    with open(tmp, "wb") as raw:
        if output.endswith(".zst"):
            import zstandard

            cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=0, write_checksum=True)
            sink = cctx.stream_writer(raw, closefd=False)
        elif output.endswith(".gz"):
            # filename="" keeps the temp name out of the header; mtime=0 the clock.
            sink = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0)
        else:
            sink = None
        out = sink if sink is not None else raw
        buf: List[str] = []
        buffered = 0
        for domain, text in documents:
            stats[domain]["documents"] += 1
            stats[domain]["bytes"] += len(text.encode("utf-8"))
            # ensure_ascii (the json default): \u2028 and friends are escaped, so
            # str.splitlines() on the file splits only at document boundaries.
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
    return stats


def write_demo_split(output: str, split: str = "train", size_mb: float = 32.0, seed: int = 1234) -> dict:
    """Write one split to the file ``output`` (.jsonl.zst, .jsonl.gz or .jsonl),
    atomically; return ``{domain: {"documents": n, "bytes": b}}``.  For tools that
    want a single file (benchmarks); training data comes from ``write_demo_corpus``."""
    output = os.fspath(output)
    if not output.endswith(FILE_EXTENSIONS):
        raise ValueError(f"output must end with one of {FILE_EXTENSIONS}, got {output!r}")
    _check_size(size_mb)
    _check_split(split)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with atomic_path(output) as tmp:
        return _write_jsonl(tmp, output, iter_demo_documents(size_mb, seed, split))


def _recording(documents: Iterator[Tuple[str, str]], seen: Optional[Set[bytes]]) -> Iterator[Tuple[str, str]]:
    for domain, text in documents:
        if seen is not None:
            seen.add(_digest(text))
        yield domain, text


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_demo_corpus(output_dir: str, size_mb: float = 32.0, seed: int = 1234) -> dict:
    """Write ``output_dir/{train,valid,test}.jsonl.zst`` and then ``corpus.json``;
    return the content of ``corpus.json``.

    All files are written under temporary names and renamed only once all are
    complete, ``corpus.json`` last; outputs of an earlier run are removed first, so
    an interrupted run leaves no complete-looking corpus.
    """
    output_dir = os.fspath(output_dir)
    if output_dir.endswith(FILE_EXTENSIONS):
        raise ValueError(f"write_demo_corpus writes a directory (train/valid/test.jsonl.zst), got the file "
                         f"name {output_dir!r}; write_demo_split writes one split to one file")
    _check_size(size_mb)
    seed = int(seed)
    os.makedirs(output_dir, exist_ok=True)
    names = [split_file_name(s) for s in SPLITS] + [CORPUS_INFO]
    for name in names:
        if os.path.exists(os.path.join(output_dir, name)):
            os.remove(os.path.join(output_dir, name))
    splits: Dict[str, dict] = {}
    exclude: Set[bytes] = set()
    with ExitStack() as stack:
        info_tmp = stack.enter_context(atomic_path(os.path.join(output_dir, CORPUS_INFO)))  # renamed last
        tmps = {s: stack.enter_context(atomic_path(os.path.join(output_dir, split_file_name(s)))) for s in SPLITS}
        for split in GENERATION_ORDER:
            documents = _recording(_iter_split(size_mb, seed, split, exclude),
                                   exclude if split in HELD_OUT else None)
            stats = _write_jsonl(tmps[split], split_file_name(split), documents)
            splits[split] = {"path": split_file_name(split), "sha256": _sha256(tmps[split]),
                             "documents": sum(s["documents"] for s in stats.values()),
                             "text_bytes": sum(s["bytes"] for s in stats.values()), "domains": stats}
        info = {
            "format": "megatron_hds-demo-corpus", "version": 1, "size_mb": size_mb, "seed": seed,
            "domain_shares": DEMO_SHARES, "split_shares": SPLIT_SHARES,
            "material_bytes": material_bytes(),
            "splits": {s: splits[s] for s in SPLITS},
        }
        with open(info_tmp, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
            f.write("\n")
    return info


def read_demo_corpus(path: str) -> Iterator[Tuple[str, str]]:
    """Yield ``(pile_set_name, text)`` from a .jsonl / .jsonl.gz / .jsonl.zst file."""
    from megatron_hds.data.jsonl_input import iter_lines, parse_line

    for line in iter_lines(os.fspath(path)):
        if line.strip():
            (text,), domain = parse_line(line, ("text",), "meta.pile_set_name")
            yield domain, text

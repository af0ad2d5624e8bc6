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
import datetime
import gzip
import json
import os
import random
import string
import sysconfig
import uuid
from functools import lru_cache
from typing import Callable, Dict, Iterator, List, Tuple

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


# --- Math ---------------------------------------------------------------------

def _poly(coeffs: List[int], var: str = "x") -> str:
    """Format coefficients (highest degree first) as e.g. ``3*x**2 - x + 5``."""
    deg = len(coeffs) - 1
    out = ""
    for i, c in enumerate(coeffs):
        k = deg - i
        if c == 0:
            continue
        mag = abs(c)
        if k == 0:
            term = str(mag)
        else:
            base = var if k == 1 else f"{var}**{k}"
            term = base if mag == 1 else f"{mag}*{base}"
        if not out:
            out = ("-" if c < 0 else "") + term
        else:
            out += (" - " if c < 0 else " + ") + term
    return out or "0"


def _signed(n: int) -> str:
    return f"({n})" if n < 0 else str(n)


def _factorize(n: int) -> List[Tuple[int, int]]:
    out = []
    p = 2
    while p * p <= n:
        e = 0
        while n % p == 0:
            n //= p
            e += 1
        if e:
            out.append((p, e))
        p += 1
    if n > 1:
        out.append((n, 1))
    return out


def _gcd_steps(a: int, b: int) -> Tuple[int, List[str]]:
    a, b = max(a, b), min(a, b)
    steps = []
    while b:
        q, r = divmod(a, b)
        steps.append(f"{a} = {q}*{b} + {r}")
        a, b = b, r
    return a, steps


def _math_problem(rng: random.Random) -> str:
    kind = rng.randrange(12)
    r = rng.randint
    if kind == 0:
        a, b = r(-999, 9999), r(-999, 9999)
        op = rng.choice("+-*")
        val = a + b if op == "+" else a - b if op == "-" else a * b
        q = rng.choice(["What is", "Calculate", "Evaluate", "Compute"])
        return f"{q} {_signed(a)} {op} {_signed(b)}.\nAnswer: {val}"
    if kind == 1:
        a, b, c, d = r(-20, 20), r(1, 20), r(-20, 20), r(2, 9)
        inner = a - b
        val = inner * c + d
        return (f"Evaluate ({a} - {b})*{_signed(c)} + {d}.\n"
                f"Solution: {a} - {b} = {inner}; {inner}*{_signed(c)} = {inner * c}; "
                f"{inner * c} + {d} = {val}.\nAnswer: {val}")
    if kind == 2:
        var = rng.choice("xyzabkmnpqtw")
        x, a, b = r(-15, 15), rng.choice([i for i in range(-12, 13) if i]), r(-50, 50)
        c = a * x + b
        lhs = _poly([a, b], var)
        return (f"Solve {lhs} = {c} for {var}.\n"
                f"Solution: {a}*{var} = {c} - {_signed(b)} = {c - b}, so {var} = {c - b}/{_signed(a)} = {x}.\n"
                f"Answer: {var} = {x}")
    if kind == 3:
        coeffs = [r(-9, 9) for _ in range(r(2, 4))]
        coeffs[0] = coeffs[0] or 1
        x = r(-6, 6)
        val = sum(c * x ** (len(coeffs) - 1 - i) for i, c in enumerate(coeffs))
        fname = rng.choice("fghpqrs")
        return f"Let {fname}(x) = {_poly(coeffs)}. What is {fname}({x})?\nAnswer: {val}"
    if kind == 4:
        coeffs = [r(-12, 12) for _ in range(r(3, 6))]
        coeffs[0] = coeffs[0] or 2
        deg = len(coeffs) - 1
        deriv = [c * (deg - i) for i, c in enumerate(coeffs[:-1])]
        var = rng.choice("xyzt")
        return (f"Find the derivative of {_poly(coeffs, var)} with respect to {var}.\n"
                f"Answer: {_poly(deriv, var)}")
    if kind == 5:
        g = r(2, 40)
        a, b = g * r(2, 60), g * r(2, 60)
        res, steps = _gcd_steps(a, b)
        return (f"What is the greatest common divisor of {a} and {b}?\n"
                f"Solution: " + "; ".join(steps) + f".\nAnswer: {res}")
    if kind == 6:
        a, b = r(2, 200), r(2, 200)
        g, _ = _gcd_steps(a, b)
        lcm = a * b // g
        return (f"Calculate the least common multiple of {a} and {b}.\n"
                f"Solution: gcd({a}, {b}) = {g}, so lcm = {a}*{b}/{g} = {lcm}.\nAnswer: {lcm}")
    if kind == 7:
        g = r(2, 30)
        n, d = r(1, 40), r(2, 40)
        num, den = n * g, d * g
        gg, _ = _gcd_steps(num, den)
        return (f"Simplify {num}/{den}.\n"
                f"Solution: gcd({num}, {den}) = {gg}, so {num}/{den} = {num // gg}/{den // gg}.\n"
                f"Answer: {num // gg}/{den // gg}")
    if kind == 8:
        n = r(12, 20000)
        fac = " * ".join(f"{p}**{e}" if e > 1 else str(p) for p, e in _factorize(n))
        primes = ", ".join(str(p) for p, _ in _factorize(n))
        return f"List the prime factors of {n}.\nSolution: {n} = {fac}.\nAnswer: {primes}"
    if kind == 9:
        n, base = r(5, 5000), rng.choice([2, 3, 4, 5, 7, 8, 16])
        digits = []
        m = n
        while m:
            digits.append("0123456789abcdef"[m % base])
            m //= base
        return f"Convert {n} (base 10) to base {base}.\nAnswer: {''.join(reversed(digits))}"
    if kind == 10:
        start, step, length = r(-50, 50), rng.choice([i for i in range(-15, 16) if i]), r(4, 6)
        quad = r(0, 3) if rng.random() < 0.4 else 0
        seq = [start + step * i + quad * i * i for i in range(length + 1)]
        shown = ", ".join(map(str, seq[:-1]))
        return f"What is the next term in {shown}?\nAnswer: {seq[-1]}"
    n = r(1000, 999999)
    unit, word = rng.choice([(10, "ten"), (100, "hundred"), (1000, "thousand"), (10000, "ten thousand")])
    rounded = (n + unit // 2) // unit * unit  # round half up, in integers (no float repr)
    return f"Round {n} to the nearest {word}.\nAnswer: {rounded}"


def _gen_math(rng: random.Random, cap: int) -> Iterator[str]:
    while True:
        target = rng.randint(min(300, cap // 2), min(4000, cap))
        parts: List[str] = []
        size = 0
        while size < target:
            p = _math_problem(rng)
            parts.append(p)
            size += len(p) + 2
        yield "\n\n".join(parts)


# --- Boilerplate -----------------------------------------------------------------

_COMPANIES = ["Acme Corp", "Globex Inc", "Initech", "Umbrella Ltd", "Hooli", "Vandelay Industries",
              "Stark Systems", "Wayne Enterprises", "Soylent Co", "Cyberdyne LLC"]
_NAMES = ["Customer", "John", "Maria", "Alex", "Sam", "Priya", "Chen", "Fatima", "Olga", "Valued Member"]
_PRODUCTS = ["account", "subscription", "order", "membership", "newsletter", "service plan"]
_BOILER_TEMPLATES = [
    ("{c} Copyright (c) {year} {company}. All rights reserved.\n"
     "{c} Licensed under the Apache License, Version 2.0 (the \"License\"); you may not use\n"
     "{c} this file except in compliance with the License. You may obtain a copy of the\n"
     "{c} License at the project website. Unless required by applicable law or agreed to\n"
     "{c} in writing, software distributed under the License is distributed on an \"AS IS\"\n"
     "{c} BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied."),
    ("{c} Copyright {year} {company}\n{c}\n"
     "{c} Permission is hereby granted, free of charge, to any person obtaining a copy of\n"
     "{c} this software to deal in the software without restriction, subject to the\n"
     "{c} conditions that the above copyright notice and this permission notice shall be\n"
     "{c} included in all copies. THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF\n"
     "{c} ANY KIND. All rights reserved."),
    ("Dear {name},\n\nThank you for contacting {company} support. Your request #{num} has been\n"
     "received and a member of our team will get back to you within {days} business days.\n"
     "Please do not reply to this email. If you have any questions about your {product},\n"
     "please visit our help center.\n\nBest regards,\nThe {company} Team"),
    ("Dear {name},\n\nThank you for your {product} with {company}. We are writing to let you know\n"
     "that your {product} has been updated. No action is required on your part.\n"
     "If you did not request this change, please contact us immediately.\n\n"
     "Kind regards,\n{company} Customer Service"),
    ("We use cookies to improve your experience on our website. By continuing to browse\n"
     "this site you agree to our use of cookies. {company} and our partners use cookies\n"
     "for analytics and advertising. You can change your cookie settings at any time.\n"
     "[Accept all cookies] [Manage settings] [Reject]"),
    ("This email and any attachments are confidential and intended solely for the use of\n"
     "the individual or entity to whom they are addressed. If you have received this email\n"
     "in error please notify the sender immediately and delete it. {company} accepts no\n"
     "liability for any damage caused by this email. (c) {year} {company}."),
    ("You are receiving this email because you subscribed to the {company} {product}.\n"
     "To unsubscribe, click here. To update your preferences, click here.\n"
     "{company}, {num} Main Street, Suite {days}00. All rights reserved. (c) {year}"),
    ("I am currently out of the office until {month} {days} with limited access to email.\n"
     "For urgent matters please contact the {company} help desk. I will respond to your\n"
     "message as soon as possible after my return. Thank you, {name}"),
    ("Terms of Service. By using the {company} {product} you agree to these terms. {company}\n"
     "may update these terms at any time without notice. Your continued use of the\n"
     "{product} constitutes acceptance of the updated terms. Last updated {month} {year}."),
]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]


def _gen_boilerplate(rng: random.Random, cap: int) -> Iterator[str]:
    while True:
        blocks = []
        size = 0
        target = rng.randint(min(250, cap // 2), min(2500, cap))
        while size < target:
            text = rng.choice(_BOILER_TEMPLATES).format(
                c=rng.choice(["#", "//", " *", "--", ";;"]),
                year=rng.randint(2008, 2024), company=rng.choice(_COMPANIES),
                name=rng.choice(_NAMES), num=rng.randint(1000, 99999), days=rng.randint(2, 9),
                product=rng.choice(_PRODUCTS), month=rng.choice(_MONTHS),
            )
            # Tiny scraping-style variations: the near-duplicates of web crawls.
            v = rng.random()
            if v < 0.15:
                text = text.replace("\n", " ")
            elif v < 0.25:
                text = text.upper()
            elif v < 0.35:
                text = text.replace(". ", ".  ")
            blocks.append(text)
            size += len(text) + 2
        yield "\n\n".join(blocks)


# --- Noise -------------------------------------------------------------------------

# Gibberish "flavours": (alphabet, spaces per character).  Pure random strings
# at the character level, i.e. nothing a tokenizer's merges were made for.
_NOISE_ALPHABETS = [
    string.ascii_letters + string.digits + string.punctuation,
    string.ascii_lowercase,
    string.hexdigits[:16],
    string.ascii_letters + string.digits + "+/=",
    string.punctuation + string.digits,
    "aeioubcdfghklmnprstvz",
]


def _gen_noise(rng: random.Random, cap: int) -> Iterator[str]:
    while True:
        alphabet = rng.choice(_NOISE_ALPHABETS)
        space_rate = rng.choice([0.0, 0.08, 0.15, 0.25])
        n = rng.randint(min(200, cap // 2), min(3000, cap))
        # One weighted draw per character via cum_weights is ~10x faster than
        # building tokens one by one in Python.
        symbols = list(alphabet) + [" ", "\n"]
        w_char = (1.0 - space_rate) / len(alphabet)
        cum, acc = [], 0.0
        for s in symbols:
            acc += w_char if s not in (" ", "\n") else (space_rate * (0.9 if s == " " else 0.1))
            cum.append(acc)
        text = "".join(rng.choices(symbols, cum_weights=cum, k=n))
        if space_rate == 0.0:  # one long string: wrap it like a dumped blob
            width = rng.choice([64, 76, 80])
            text = "\n".join(text[i:i + width] for i in range(0, len(text), width))
        text = text.strip()
        if text:
            yield text


# --- Logs --------------------------------------------------------------------------

_MON_ABBR = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_PATHS = ["/", "/index.html", "/api/v1/items", "/api/v1/users", "/login", "/static/app.js",
          "/static/style.css", "/search", "/health", "/api/v2/orders", "/favicon.ico"]
_AGENTS = ["Mozilla/5.0 (X11; Linux x86_64)", "curl/7.88.1", "python-requests/2.31.0",
           "Mozilla/5.0 (Windows NT 10.0; Win64; x64)", "Googlebot/2.1"]
_LOGGERS = ["db.pool", "http.server", "auth", "scheduler", "cache", "worker", "api.orders"]
_MESSAGES = [
    ("INFO", "request completed status={status} duration_ms={ms}"),
    ("INFO", "acquired connection id={id} in {ms}ms"),
    ("DEBUG", "cache miss key=user:{id}"),
    ("WARNING", "slow query took {ms}ms: SELECT * FROM orders WHERE id={id}"),
    ("ERROR", "upstream timeout after {ms}ms (attempt {a}/3)"),
    ("INFO", "job {id} finished with {n} items"),
    ("WARNING", "retrying task {id} in {n}s"),
]
_EPOCH = datetime.datetime(2021, 1, 1)  # fixed: log times must not read the clock


def _gen_logs(rng: random.Random, cap: int) -> Iterator[str]:
    while True:
        t = _EPOCH + datetime.timedelta(seconds=rng.randrange(3 * 365 * 86400))
        target = rng.randint(min(300, cap // 2), min(5000, cap))
        kind = rng.randrange(3)
        lines: List[str] = []
        size = 0
        if kind == 2:
            host = f"node{rng.randint(1, 64):02d}"
            lines.append("timestamp,host,cpu_pct,mem_mb,disk_io_kbps,requests")
        while size < target:
            t += datetime.timedelta(milliseconds=rng.randint(1, 5000))
            # Month names formatted by hand: strftime("%b") is locale-dependent.
            if kind == 0:
                ip = f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
                line = (f'{ip} - - [{t.day:02d}/{_MON_ABBR[t.month - 1]}/{t.year}:{t.hour:02d}:'
                        f'{t.minute:02d}:{t.second:02d} +0000] "{rng.choice(["GET", "GET", "POST", "PUT"])} '
                        f'{rng.choice(_PATHS)} HTTP/1.1" {rng.choice([200, 200, 200, 301, 404, 500])} '
                        f'{rng.randint(0, 50000)} "-" "{rng.choice(_AGENTS)}"')
            elif kind == 1:
                level, msg = rng.choice(_MESSAGES)
                msg = msg.format(status=rng.choice([200, 201, 404, 500]), ms=rng.randint(1, 3000),
                                 id=rng.randint(1, 99999), n=rng.randint(1, 9),
                                 a=rng.randint(1, 3))
                line = (f"{t.year}-{t.month:02d}-{t.day:02d} {t.hour:02d}:{t.minute:02d}:{t.second:02d},"
                        f"{t.microsecond // 1000:03d} {level} [worker-{rng.randint(0, 7)}] "
                        f"{rng.choice(_LOGGERS)}: {msg}")
            else:
                line = (f"{t.year}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z,"
                        f"{host},{rng.randint(0, 1000) / 10:.1f},{rng.randint(200, 64000)},"
                        f"{rng.randint(0, 90000)},{rng.randint(0, 500)}")
            lines.append(line)
            size += len(line) + 1
        yield "\n".join(lines)


_GENERATORS: Dict[str, Callable[[random.Random, int], Iterator[str]]] = {
    "Code": _gen_code,
    "Docs": _gen_docs,
    "Math": _gen_math,
    "Docstrings": _gen_docstrings,
    "Boilerplate": _gen_boilerplate,
    "Noise": _gen_noise,
    "Logs": _gen_logs,
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

"""Reading JSONL corpora: path/glob expansion, transparent .zst/.gz decompression, and
per-line parsing into (text, domain) with a named reason for every malformed line."""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
from typing import Iterator

# Every reason a line can be skipped for, in the order the summary prints them.
SKIP_REASONS = (
    "empty_line",
    "invalid_utf8",
    "invalid_json",
    "missing_text",
    "non_string_text",
    "missing_domain",
    "non_string_domain",
)

SKIP_DESCRIPTIONS = {
    "empty_line": "blank line",
    "invalid_utf8": "line is not valid UTF-8",
    "invalid_json": "line is not a JSON object",
    "missing_text": "JSON object lacks a text key",
    "non_string_text": "text value is not a string",
    "missing_domain": "JSON object lacks the domain key",
    "non_string_domain": "domain value is not a string",
}


class MalformedLine(ValueError):
    """A line that cannot become a document; ``reason`` is one of SKIP_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(SKIP_DESCRIPTIONS[reason] + (f" ({detail})" if detail else ""))


def expand_inputs(patterns: list[str]) -> list[str]:
    """Paths for the given paths and globs, in order, globs sorted; a pattern matching
    nothing is an error naming it (a typo must not silently shrink a dataset)."""
    paths: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
            if not matches:
                raise FileNotFoundError(f"--input pattern {pattern!r} matches no file")
            paths.extend(matches)
        elif os.path.isfile(pattern):
            paths.append(pattern)
        else:
            raise FileNotFoundError(f"--input file {pattern!r} does not exist")
    return paths


def open_binary(path: str) -> io.BufferedIOBase:
    """A binary stream of the file's decompressed bytes, chosen by extension."""
    if path.endswith(".zst"):
        import zstandard

        raw = open(path, "rb")
        # The Pile's shards were written with a long window; allow it.
        reader = zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(raw, closefd=True)
        return io.BufferedReader(reader, buffer_size=1 << 20)
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb", buffering=1 << 20)


def iter_lines(path: str) -> Iterator[bytes]:
    """Raw lines of a (possibly compressed) JSONL file, without decoding."""
    with open_binary(path) as f:
        yield from f


def lookup_dotted(obj: dict, dotted_key: str):
    """obj['a']['b'] for 'a.b'; KeyError when any level is missing or not an object."""
    for part in dotted_key.split("."):
        if not isinstance(obj, dict) or part not in obj:
            raise KeyError(dotted_key)
        obj = obj[part]
    return obj


def parse_line(line: bytes, json_keys: tuple[str, ...], domain_key: str | None) -> tuple[list[str], str | None]:
    """The texts (one per json key) and the domain of one JSONL line, or MalformedLine."""
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedLine("invalid_utf8", str(e)) from None
    try:
        obj = json.loads(decoded)
    except ValueError as e:
        # Checked only on failure: stripping every line would cost the hot path.
        if not decoded.strip():
            raise MalformedLine("empty_line") from None
        raise MalformedLine("invalid_json", str(e)) from None
    if not isinstance(obj, dict):
        raise MalformedLine("invalid_json", f"got {type(obj).__name__}")
    texts = []
    for key in json_keys:
        if key not in obj:
            raise MalformedLine("missing_text", f"key {key!r}")
        if not isinstance(obj[key], str):
            raise MalformedLine("non_string_text", f"key {key!r} holds {type(obj[key]).__name__}")
        texts.append(obj[key])
    domain = None
    if domain_key is not None:
        try:
            domain = lookup_dotted(obj, domain_key)
        except KeyError:
            raise MalformedLine("missing_domain", f"key {domain_key!r}") from None
        if not isinstance(domain, str) or not domain:
            raise MalformedLine("non_string_domain", f"key {domain_key!r} holds {domain!r}")
    return texts, domain


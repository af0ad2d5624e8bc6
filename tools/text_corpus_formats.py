"""Readers that turn files shipped in Debian packages into plain UTF-8 text.

Used by tools/make_text_corpus.py. Each reader is pure Python and depends only on the
bytes it is given (no locale, clock or installed tool), so the same .deb files always
give the same text:

- ``clean_text``: bytes -> tidy UTF-8 text (or None for binary / undecodable data);
- ``troff_to_text``: man(7) / mdoc(7) pages rendered to plain text;
- ``dictd_entries``: entries of a dictd database (.index + .dict.dz);
- ``sword_blocks``: books/chapters of a SWORD Bible text or commentary module;
- ``r_character_vectors``: the character vectors of an R lazy-load database (.rdb);
- ``strip_front_matter``: drops a YAML header (licence texts of choosealicense.com).
"""

from __future__ import annotations

import gzip
import html
import re
import struct
import unicodedata
import zlib

# ----------------------------------------------------------------------------- text


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f\ufeff\ufffe]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUN = re.compile(r"\n{3,}")


def decode_bytes(data: bytes, name: str = "") -> bytes:
    """Undo a .gz suffix (files in /usr/share/doc and /usr/share/man are gzipped)."""
    if name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def clean_text(data: bytes, max_replacement: float = 0.001) -> str | None:
    """UTF-8 text with normalised newlines, no control characters, no trailing spaces,
    at most one blank line in a row. None for binary data (NUL bytes) or text that
    is not mostly valid UTF-8: padding the corpus with mojibake helps no one."""
    if b"\x00" in data:
        return None
    text = data.decode("utf-8", errors="replace")
    if text.count("\ufffd") > max_replacement * len(text) + 2:
        return None
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n")
    text = _CONTROL.sub("", text)
    text = _TRAILING_SPACE.sub("\n", text + "\n")
    return _BLANK_RUN.sub("\n\n", text).strip("\n")


def strip_front_matter(text: str) -> str:
    """Drop a leading '---' ... '---' YAML block."""
    if text.startswith("---\n"):
        end = text.find("\n---\n", 4)
        if end >= 0:
            return text[end + 5:]
    return text


# ----------------------------------------------------------------------------- troff

_SPECIAL = {
    "em": "\u2014", "en": "\u2013", "hy": "-", "mi": "-", "aq": "'", "dq": '"', "lq": "\u201c",
    "rq": "\u201d", "oq": "\u2018", "cq": "\u2019", "bu": "\u2022", "co": "\u00a9", "rg": "\u00ae",
    "tm": "\u2122", "de": "\u00b0", "mu": "\u00d7", "di": "\u00f7", "+-": "\u00b1", "<=": "\u2264",
    ">=": "\u2265", "!=": "\u2260", "==": "\u2261", "->": "\u2192", "<-": "\u2190", "<>": "\u2194",
    "ua": "\u2191", "da": "\u2193", "ti": "~", "ha": "^", "ga": "`", "aa": "\u00b4", "sl": "/",
    "rs": "\\", "ba": "|", "bv": "|", "ul": "_", "ru": "_", "sc": "\u00a7", "ps": "\u00b6",
    "Eu": "\u20ac", "eu": "\u20ac", "Po": "\u00a3", "ss": "\u00df", "12": "\u00bd", "14": "\u00bc",
    "34": "\u00be", "dg": "\u2020", "Do": "$", "at": "@", "sh": "#", "lB": "[", "rB": "]",
    "lC": "{", "rC": "}", "la": "\u27e8", "ra": "\u27e9", "Fo": "\u00ab", "Fc": "\u00bb",
    "fo": "\u2039", "fc": "\u203a", "r!": "\u00a1", "r?": "\u00bf", "pl": "+", "eq": "=",
    "no": "\u00ac", "lh": "\u261c", "rh": "\u261e", "OK": "\u2713", "*p": "\u03c0", "pi": "\u03c0",
    "C`": '"', "C'": '"', "R": "\u00ae", "Tm": "\u2122", "bs": "\\", "dd": "\u2021", "fm": "\u2032",
}
_ACCENTS = {"'": "\u0301", "`": "\u0300", ":": "\u0308", "^": "\u0302", "~": "\u0303", ",": "\u0327",
            "o": "\u030a", "v": "\u030c"}
_SINGLE = {"-": "-", "e": "\\", "\\": "\\", "0": " ", " ": " ", "~": "\u00a0", "t": "\t", "'": "\u00b4",
           "`": "`", ".": ".", "_": "_"}
_ESCAPE = re.compile(
    r"\\(?:"
    r"[fFmM](?:\[[^\]\n]*\]|\(..|.)"             # font / colour changes
    r"|s(?:[-+]?\d\d?|\[[^\]\n]*\]|\([-+]?\d\d|'[^'\n]*')"  # size changes
    r"|\((?P<c2>..)|\[(?P<cn>[^\]\n]+)\]"          # special characters
    r"|\*(?:\((?P<s2>..)|\[(?P<sn>[^\]\n]*)\]|(?P<s1>.))"  # strings
    r"|[ng](?:\(..|\[[^\]\n]*\]|.)"               # registers
    r"|[hvwoDlLbxXNRSZk]'[^'\n]*'"                # motions, widths, drawing
    r"|[kz]."
    r"|(?P<ch>.|\n|$))"
)


def _special_char(name: str) -> str:
    if name in _SPECIAL:
        return _SPECIAL[name]
    if re.fullmatch(r"u[0-9A-Fa-f]{4,6}(_[0-9A-Fa-f]{4,6})*", name):
        return unicodedata.normalize("NFC", "".join(chr(int(h, 16)) for h in name[1:].split("_")))
    if len(name) == 2 and name[0] in _ACCENTS and name[1].isalpha():
        return unicodedata.normalize("NFC", name[1] + _ACCENTS[name[0]])
    return ""


def _escape(match: re.Match) -> str:
    groups = match.groupdict()
    if groups["c2"] is not None or groups["cn"] is not None:
        return _special_char(groups["c2"] or groups["cn"])
    for key in ("s2", "sn", "s1"):
        if groups[key] is not None:
            return _SPECIAL.get(groups[key], "")
    if groups["ch"] is not None:
        return _SINGLE.get(groups["ch"], groups["ch"] if groups["ch"] not in "&|^%:,/c{}adru\n" else "")
    return ""


def troff_escapes(text: str) -> str:
    """Replace troff escapes by the characters they print (fonts and motions vanish)."""
    comment = text.find('\\"')
    if comment >= 0 and not text[:comment].endswith("\\"):
        text = text[:comment]
    return _ESCAPE.sub(_escape, text)


def _macro_args(rest: str) -> list[str]:
    """Split a macro line's arguments: blanks separate, double quotes group ("" is a quote)."""
    args, i = [], 0
    while i < len(rest):
        if rest[i] in " \t":
            i += 1
        elif rest[i] == '"':
            j, arg = i + 1, []
            while j < len(rest) and not (rest[j] == '"' and rest[j + 1:j + 2] != '"'):
                arg.append(rest[j])
                j += 2 if rest[j] == '"' else 1
            args.append("".join(arg))
            i = j + 1
        else:
            j = i
            while j < len(rest) and rest[j] not in " \t":
                j += 1
            args.append(rest[i:j])
            i = j
    return args


_BREAKS = {"PP", "LP", "P", "Pp", "sp", "HP", "TP", "TQ", "IP", "Sh", "Ss", "SH", "SS", "bp", "Bl", "El",
           "Bd", "Ed", "Sp", "RS", "RE"}
_ALTERNATING = {"BR", "BI", "IB", "IR", "RB", "RI"}
_SPACED = {"B", "I", "SM", "SB", "SH", "SS", "Sh", "Ss", "TH", "Dt", "OP", "SY", "IX"}
_SKIP_BLOCK = {"de", "de1", "am", "ig", "di", "da"}
_NOFILL = {"nf": False, "fi": True, "EX": False, "EE": True, "Vb": False, "Ve": True, "Bd": False, "Ed": True}


class _Page:
    """Text of a page being rendered: paragraphs of lines; fill mode joins text lines."""

    def __init__(self):
        self.paragraphs: list[list[str]] = [[]]
        self.fill = True
        self.new_line = True

    def add(self, text: str) -> None:
        lines = self.paragraphs[-1]
        if not text.strip() and self.fill:  # a blank line in filled text ends the paragraph
            self.paragraph()
            return
        if self.fill and not self.new_line and lines:
            lines[-1] = f"{lines[-1]} {text}"
        else:
            lines.append(text)
        self.new_line = not self.fill

    def line_break(self) -> None:
        self.new_line = True

    def paragraph(self) -> None:
        if self.paragraphs[-1]:
            self.paragraphs.append([])
        self.new_line = True

    def text(self) -> str:
        return "\n\n".join("\n".join(line.rstrip() for line in p).strip("\n") for p in self.paragraphs if p)


def _is_mdoc(word: str) -> bool:
    return re.fullmatch(r"[A-Z][a-z][a-z]?", word) is not None


def _mdoc_words(args: list[str], name: str) -> str:
    """Words of an mdoc(7) line: callable macros vanish, flags get their dash."""
    words, i = [], 0
    while i < len(args):
        word = args[i]
        if word == "Fl":  # 'Fl Fl name' is --name
            dashes = "-"
            while i + 1 < len(args) and args[i + 1] == "Fl":
                dashes, i = dashes + "-", i + 1
            arg = args[i + 1] if i + 1 < len(args) and not _is_mdoc(args[i + 1]) else ""
            words.append(dashes + arg)
            i += 2 if arg else 1
            continue
        if word == "Xr" and i + 2 < len(args):
            words.append(f"{args[i + 1]}({args[i + 2]})")
            i += 3
            continue
        if word == "Nm" and name and (i + 1 == len(args) or _is_mdoc(args[i + 1])
                                      or re.fullmatch(r"[.,;:()\[\]?!]+", args[i + 1])):
            words.append(name)
        elif not _is_mdoc(word):
            words.append(word)
        i += 1
    return " ".join(words)


def _macro_text(macro: str, args: list[str], state: dict) -> str | None:
    """Printed text of a macro line, or None when the macro prints nothing."""
    if macro in _ALTERNATING:
        return "".join(args)
    if macro == "TH" or macro == "Dt":
        return f"{args[0]}({args[1]})" if len(args) >= 2 else " ".join(args)
    if macro in _SPACED:
        return " ".join(args) if macro != "IX" else None
    if macro == "IP":
        return args[0] if args and args[0] else None
    if macro == "Nm" and args and not state.get("name"):
        state["name"] = args[0]
    if _is_mdoc(macro) and macro not in ("Pp", "Bl", "El", "Bd", "Ed", "Dd", "Os"):
        return _mdoc_words([macro, *args], state.get("name", "")) or None
    return None


def troff_to_text(source: str) -> str | None:
    """Render a man page's troff to plain text; None for a '.so' link to another page."""
    page, state, skip_until, in_table = _Page(), {}, None, 0
    lines = source.replace("\\\n", "").split("\n")
    for raw in lines:
        if skip_until is not None:
            if raw.startswith(skip_until):
                skip_until = None
            continue
        if raw[:1] in ".'" and not raw.startswith((".\\\"", "'\\\"")):
            macro, _, rest = raw[1:].strip().partition(" ")
            if macro == "so":
                return None
            if macro in _SKIP_BLOCK:
                skip_until = ".."
                continue
            if macro == "TS":
                in_table = 1
                page.paragraph()
                page.fill = False
                continue
            if macro == "TE":
                in_table = 0
                page.fill = True
                page.paragraph()
                continue
            if macro in _NOFILL:
                page.fill = _NOFILL[macro]
                page.line_break()
            if macro in _BREAKS:
                page.paragraph()
            elif macro in ("br", "It"):
                page.line_break()
            if macro in ("TP", "TQ"):
                state["tag"] = True  # the next text line is the item's tag
            words = _macro_text(macro, _macro_args(troff_escapes(rest)), state)
            if words:
                page.add(words.strip())
                if macro in ("SH", "SS", "Sh", "Ss", "TH", "IP", "It", "Dt") or state.pop("tag", False):
                    page.line_break()
            continue
        if raw.startswith(("'\\\"", ".\\\"")):
            continue
        if in_table:
            if in_table == 1:  # options and format lines end with '.'
                in_table = 2 if raw.rstrip().endswith(".") else 1
                continue
            if raw.strip() in ("_", "=", "T}", "T{"):
                continue
            raw = raw.replace("T{", "").replace("T}", "").replace("\t", "  ")
        page.add(troff_escapes(raw))
        if state.pop("tag", False):
            page.line_break()
    return page.text()


# ----------------------------------------------------------------------------- dictd

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_number(digits: str) -> int:
    value = 0
    for ch in digits:
        value = value * 64 + _B64.index(ch)
    return value


def dictd_entries(index_text: str, dict_data: bytes) -> list[tuple[str, str]]:
    """(headword, text) of each distinct entry of a dictd database, in file order.
    dict_data is the decompressed .dict (dictzip is gzip-compatible). Entries that
    several headwords share come once; the 00-database-* metadata entries are left out."""
    spans = {}
    for line in index_text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith(("00database", "00-database")):
            continue
        span = (_dictd_number(parts[1]), _dictd_number(parts[2]))
        spans.setdefault(span, parts[0])
    return [(word, dict_data[start:start + length].decode("utf-8", errors="replace"))
            for (start, length), word in sorted(spans.items())]


# ----------------------------------------------------------------------------- SWORD

_OSIS_DROP = re.compile(r"<note\b[^>]*>.*?</note>|<(rdg|reading)\b[^>]*>.*?</\1>", re.S)
_OSIS_BREAK = re.compile(r"<(?:chapter|div|lb|p|title|/title|l|/l|lg|/lg|br|list|item|/item)\b[^>]*>")
_TAG = re.compile(r"<[^>]*>")


def osis_to_text(markup: str) -> str:
    """Plain text of an OSIS/ThML fragment: notes dropped, block tags become line breaks."""
    text = _OSIS_DROP.sub("", markup)
    text = _OSIS_BREAK.sub("\n", text)
    text = html.unescape(_TAG.sub("", text))
    lines = (" ".join(line.split()) for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def sword_blocks(block_index: bytes, blocks: bytes, verse_index: bytes, verse_entry: int) -> list[str]:
    """Text of each compressed block of a SWORD zText/zCom module (one book or chapter),
    one verse (or verse comment) per paragraph. block_index: .bzs/.czs (offset, size,
    usize) per block; verse_index: .bzv (10-byte) or .czv (12-byte) entries
    (block, offset, size) per verse, in canonical order."""
    fmt = "<IIH" if verse_entry == 10 else "<III"
    verses: dict[int, list[str]] = {}
    for pos in range(0, len(verse_index) - verse_entry + 1, verse_entry):
        block, offset, size = struct.unpack(fmt, verse_index[pos:pos + verse_entry])
        if size:
            verses.setdefault(block, []).append((offset, size))
    out = []
    for number in sorted(verses):
        start, length, _ = struct.unpack("<III", block_index[number * 12:number * 12 + 12])
        data = zlib.decompress(blocks[start:start + length])
        texts = (osis_to_text(data[o:o + s].decode("utf-8", errors="replace")) for o, s in verses[number])
        out.append("\n\n".join(t for t in texts if t))
    return out


# ----------------------------------------------------------------------------- R data


class _XdrReader:
    """Just enough of R's XDR serialisation to read character vectors."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def int(self) -> int:
        (value,) = struct.unpack(">i", self.data[self.pos:self.pos + 4])
        self.pos += 4
        return value

    def bytes(self, n: int) -> bytes:
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def character_vector(self) -> list[str] | None:
        """The object if it is a character vector (STRSXP), else None."""
        if self.bytes(2) != b"X\n":
            return None
        version = self.int()
        self.int(), self.int()
        if version == 3:
            self.bytes(self.int())  # native encoding name
        if self.int() & 0xFF != 16:
            return None
        strings = []
        for _ in range(self.int()):
            self.int()  # CHARSXP flags
            n = self.int()
            strings.append("" if n < 0 else self.bytes(n).decode("utf-8", errors="replace"))
        return strings


def r_character_vectors(rdb: bytes, path: str = "") -> list[list[str]]:
    """The character vectors stored in an R lazy-load database (.rdb): a sequence of
    records, each a 4-byte length and a zlib stream of one serialised object."""
    vectors, pos = [], 0
    while pos + 4 < len(rdb):
        stream = zlib.decompressobj()
        try:
            data = stream.decompress(rdb[pos + 4:])
        except zlib.error as exc:
            raise ValueError(f"{path}: record at byte {pos} is not zlib-compressed ({exc})") from exc
        pos = len(rdb) - len(stream.unused_data)
        vector = _XdrReader(data).character_vector()
        if vector is not None:
            vectors.append(vector)
    return vectors

"""Generated domains of the demo corpus: Math, Boilerplate, Noise and Logs.

Each ``_gen_*`` function is an endless stream of non-empty documents drawn from the
``random.Random`` it is given; ``cap`` is the largest document size in bytes.  The
demo corpus (tools/demo_corpus.py) gives every split its own seeded stream, so the
splits share no generated document.  Nothing here reads the clock or the locale:
the same stream gives the same text everywhere.
"""
from __future__ import annotations

import datetime
import random
import string
from typing import Iterator, List, Tuple


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


GENERATORS = {
    "Math": _gen_math,
    "Boilerplate": _gen_boilerplate,
    "Noise": _gen_noise,
    "Logs": _gen_logs,
}

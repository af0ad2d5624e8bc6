"""Settings that are also command-line flags: ``option()`` makes a dataclass field that carries
its flag's spelling and help, so a setting's name, type, default and meaning are written once.
``megatron_hds.arguments`` builds the parser from these fields; the config classes use them.

A config class may set ``FLAG_PREFIX`` (e.g. ``"hds-"``): its fields' flags are then
``--hds-<field-name>`` unless a field names its own flag.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Optional

_MISSING = dataclasses.MISSING


def option(default: Any = _MISSING, *, help: str, flag: Optional[str] = None, aliases: Optional[dict] = None,
           choices: Optional[tuple] = None, parse: Optional[Callable[[str], Any]] = None,
           nargs: Optional[str] = None, negate: bool = False, metavar: Optional[str] = None,
           cli: bool = True, default_factory: Any = _MISSING) -> Any:
    """A dataclass field that is also a flag.

    help: what the setting means (the --help text; the default is appended).
    flag: the flag's spelling when it is not --<prefix><field-name>; flag="" with aliases
      means the field is set only through its aliases.
    aliases: {flag: (value, help)}: flags that set the field to a fixed value (Megatron's --bf16).
    choices / parse / nargs / metavar: as argparse's; parse turns one command-line word into
      a value (nargs collects several into a tuple).
    negate: a bool field whose flag turns it off (--disable-bias-linear for add_bias_linear=True).
    cli: False for a field no flag sets (derived from the data, e.g. the vocabulary size).
    """
    if not isinstance(help, str) or not help.strip():
        raise TypeError("option() needs a help text saying what the setting means")
    metadata = {"help": help, "flag": flag, "aliases": aliases or {}, "choices": choices, "parse": parse,
                "nargs": nargs, "negate": negate, "metavar": metavar, "cli": cli}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def float_or_none(text: str) -> Optional[float]:
    """'none' (any case) -> None, else a float; for settings that can be switched off."""
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def comma_list(text: str) -> tuple:
    """'a, b,c' -> ('a', 'b', 'c'); empty items dropped."""
    return tuple(item.strip() for item in text.split(",") if item.strip())

"""Command line -> PretrainConfig (the only module that reads argv), generated from the config
fields: every flag's spelling, type, default and help come from its ``option()`` field
(megatron_hds/options.py), so nothing is written twice.

Flags keep Megatron-LM's spelling and meaning; ours are few (--model presets,
--data-manifest, --mixing*, --hds-*, --odm-*, --acodm-*). Unknown flags and contradictory
combinations fail with a message naming them. The vocabulary size comes from the tokenizer
(the manifest's, or --tokenizer-model), never from a flag, so the embedding always matches
the data.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Iterator, Optional

from megatron_hds.config import MODEL_PRESETS, DataConfig, ModelConfig, PretrainConfig, model_preset

# The groups of --help, in order: (PretrainConfig field, title).
_GROUPS = (("model", "model"), ("parallel", "parallelism"), ("data", "data"), ("train", "run, logging and checkpoints"),
           ("optim", "optimizer"), ("mixing", "data mixing"),
           ("downstream_eval", "downstream evaluation (lm-evaluation-harness, pip install -e '.[hf]')"))


@dataclasses.dataclass(frozen=True)
class Flag:
    """One config field as a command-line flag."""

    path: str  # dotted path of the field in PretrainConfig, also the argparse dest
    field: dataclasses.Field
    kind: Any  # the field's type with Optional[...] removed
    flag: str  # "--spelling", or "" when only aliases set the field

    @property
    def meta(self) -> dict:
        return self.field.metadata


def _unwrap_optional(kind):
    if typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return kind


def config_flags(cls=PretrainConfig, prefix: str = "") -> Iterator[Flag]:
    """Every field of ``cls`` and its nested configs that is a flag, depth first in field order.
    Fields that are not option()s (nested configs) are descended into."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _unwrap_optional(hints[f.name])
        path = prefix + f.name
        if dataclasses.is_dataclass(kind):
            yield from config_flags(kind, path + ".")
            continue
        meta = f.metadata
        if not meta:
            raise TypeError(f"{cls.__name__}.{f.name} is neither an option() nor a nested config")
        if not meta["cli"]:
            continue
        spelling = meta["flag"]
        if spelling is None:
            spelling = "--" + getattr(cls, "FLAG_PREFIX", "") + f.name.replace("_", "-")
        yield Flag(path, f, kind, spelling)


class _SetField(argparse.Action):
    """Stores a field's value. A repeated flag wins over its earlier occurrences (as in Megatron:
    flags appended last override), but two different flags that set the same field to different
    values are refused (--bf16 with --fp16, --recompute-activations with --recompute-granularity full)."""

    def __call__(self, parser, namespace, values, option_string=None):
        value = self.const if self.nargs == 0 else values
        if isinstance(value, list):
            value = tuple(value)
        origins = namespace.__dict__.setdefault("_flag_origins", {})
        previous = getattr(namespace, self.dest, None)
        first = origins.get(self.dest)
        if first is not None and first != option_string and previous != value:
            parser.error(f"{option_string} sets {self.dest.split('.')[-1]} to {value!r}, which {first} already "
                         f"set to {previous!r}: give one of them")
        origins[self.dest] = option_string
        setattr(namespace, self.dest, value)


def _default_text(flag: Flag) -> str:
    f = flag.field
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return ""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if default is None or isinstance(default, bool) or default == ():
        return ""
    if isinstance(default, tuple):
        default = " ".join(map(str, default)) if flag.meta["nargs"] else ",".join(map(str, default))
    return f" (default: {default})"


def _add_flag(group, flag: Flag) -> None:
    meta = flag.meta
    common = dict(dest=flag.path, default=argparse.SUPPRESS, action=_SetField)
    if flag.flag:
        kwargs = dict(common, help=meta["help"] + _default_text(flag))
        # Fields without a default are required, except the model's (a --model preset can give them).
        no_default = flag.field.default is dataclasses.MISSING and flag.field.default_factory is dataclasses.MISSING
        if no_default and not flag.path.startswith("model."):
            kwargs["required"] = True
        if flag.kind is bool:
            kwargs.update(nargs=0, const=not meta["negate"])
        else:
            metavar = meta["metavar"] or (None if meta["choices"] else flag.field.name.split("_")[-1].upper())
            kwargs.update(type=meta["parse"] or flag.kind, choices=meta["choices"], metavar=metavar)
            if meta["nargs"]:
                kwargs["nargs"] = meta["nargs"]
        group.add_argument(flag.flag, **kwargs)
    for alias, (value, help_text) in meta["aliases"].items():
        group.add_argument(alias, nargs=0, const=value, help=help_text, **common)


def build_parser() -> argparse.ArgumentParser:
    """The pretrain command line, one group per config section."""
    parser = argparse.ArgumentParser(
        prog="python -m megatron_hds.training.pretrain", usage="%(prog)s [flags]", allow_abbrev=False,
        description="Pre-train a GPT model with an online data-mixture scheduler (Megatron-style flags).")
    groups = {name: parser.add_argument_group(title) for name, title in _GROUPS}
    groups["model"].add_argument("--model", choices=sorted(MODEL_PRESETS), default=None,
                                 help="start from a preset shape (the model flags override it); without it "
                                      "--num-layers, --hidden-size, --num-attention-heads and --seq-length are needed")
    for flag in config_flags():
        _add_flag(groups[flag.path.split(".")[0]], flag)
    return parser


def undocumented_flags(parser: argparse.ArgumentParser) -> list:
    """The flags of ``parser`` without a help text (argparse's own -h/--help excepted)."""
    return [action.option_strings[0] for action in parser._actions
            if action.option_strings and not isinstance(action, argparse._HelpAction)
            and not (action.help or "").strip()]


def tokenizer_vocab_size(data: DataConfig) -> int:
    """The vocabulary size the data was tokenized with (manifest record, else the model file,
    which must then be the manifest's tokenizer)."""
    from megatron_hds.data.manifest import load_manifest
    from megatron_hds.data.tokenizer import build_tokenizer, check_matches_record

    manifest = load_manifest(data.data_manifest, check_files=False) if data.data_manifest is not None else None
    if data.tokenizer_model is None and manifest is not None:
        return int(manifest.tokenizer["vocab_size"])
    if data.tokenizer_model is None:
        raise ValueError("--tokenizer-model is required with --data-path (the vocabulary size comes from it)")
    tokenizer = build_tokenizer(data.tokenizer_type, data.tokenizer_model)
    if manifest is not None:
        check_matches_record(tokenizer, data.tokenizer_model, manifest.tokenizer,
                             f"--data-manifest {data.data_manifest!r}")
    return tokenizer.vocab_size


def _build(cls, given: dict, prefix: str = "", **fixed):
    """cls(**fields) from the flags given (absent ones keep the field defaults), nested configs
    built the same way; ``fixed`` are fields set by the caller."""
    hints = typing.get_type_hints(cls)
    kwargs = dict(fixed)
    for f in dataclasses.fields(cls):
        kind = _unwrap_optional(hints[f.name])
        path = prefix + f.name
        if f.name in kwargs:
            continue
        if dataclasses.is_dataclass(kind):
            kwargs[f.name] = _build(kind, given, path + ".")
        elif path in given:
            kwargs[f.name] = given[path]
    return cls(**kwargs)


def _model_config(preset: Optional[str], given: dict, vocab_size: int) -> ModelConfig:
    overrides = {path.split(".", 1)[1]: value for path, value in given.items() if path.startswith("model.")}
    overrides["vocab_size"] = vocab_size
    if preset is not None:
        return model_preset(preset, **overrides)
    required = ("num_layers", "hidden_size", "num_attention_heads", "seq_length")
    missing = [f"--{name.replace('_', '-')}" for name in required if name not in overrides]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or give --model with a preset: {', '.join(MODEL_PRESETS)})")
    return ModelConfig(**overrides)


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    """The validated PretrainConfig of parsed flags (ValueError naming the problem)."""
    given = {key: value for key, value in vars(args).items() if key not in ("model", "_flag_origins")}
    data = _build(DataConfig, given, "data.")
    model = _model_config(args.model, given, tokenizer_vocab_size(data))
    return _build(PretrainConfig, given, model=model, data=data)


def parse_args(argv: Optional[list] = None) -> PretrainConfig:
    """Parse Megatron-style flags into a validated PretrainConfig; SystemExit(2) with a message on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return config_from_args(args)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))

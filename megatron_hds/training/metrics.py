"""Training metrics: the metrics.jsonl log (docs/formats.md, "Metrics log"), the console line,
and TensorBoard and W&B scalars. MFU comes from training/flops.py.

Only global rank 0 writes; ``MetricsLogger(rank=r)`` with ``r != 0`` is a no-op, so the
training loop calls it unconditionally. TensorBoard and W&B are optional: each is probed
once, and a missing package or an unreachable W&B server is a logged warning, never a
failed run.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import functools
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

from megatron_hds.training import flops

logger = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.jsonl"
RECORD_KINDS = ("config", "train", "eval")
EVAL_SPLITS = ("valid", "test")

# JSON has no NaN/Infinity; strict parsers (jq, browsers) reject Python's default output.
# Non-finite floats are written as these strings and turned back into floats by read_metrics.
_NONFINITE_TO_STR = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_STR_TO_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

# ---------------------------------------------------------------------------
# Records


def perplexity(loss: float) -> float:
    """exp(loss), inf instead of OverflowError for a diverged loss."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def eval_summary(
    domain_loss: Mapping[str, float], natural_weights: Mapping[str, float]
) -> tuple[dict[str, float], float, float]:
    """(domain_ppl, mean_ppl, natural_ppl) from per-domain mean losses.

    natural_ppl is the perplexity of the natural mixture, exp of the per-domain losses
    averaged with the natural (token-share) weights renormalised over the domains
    evaluated: the paper's primary metric. mean_ppl is the uniform mean over domains of
    per-domain perplexity, which the hardest domain dominates.
    """
    if not domain_loss:
        raise ValueError("domain_loss is empty; evaluation produced no domains")
    missing = sorted(set(domain_loss) - set(natural_weights))
    if missing:
        raise ValueError(f"natural_weights lack domains {missing}; they have {sorted(natural_weights)}")
    domain_ppl = {d: perplexity(float(loss)) for d, loss in domain_loss.items()}
    mean_ppl = sum(domain_ppl.values()) / len(domain_ppl)
    total = sum(float(natural_weights[d]) for d in domain_ppl)
    if not total > 0:
        raise ValueError(f"natural weights of the evaluated domains sum to {total}; need > 0")
    natural_loss = sum(float(natural_weights[d]) * float(loss) for d, loss in domain_loss.items()) / total
    return domain_ppl, mean_ppl, perplexity(natural_loss)


def _jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats as strings; tensors/numpy scalars as numbers."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        value = float(value)  # numpy float64 is a float subclass with its own repr
        if math.isfinite(value):
            return value
        return _NONFINITE_TO_STR["nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, (Path, datetime.date)):
        return str(value)
    tolist = getattr(value, "tolist", None)  # torch tensors, numpy arrays and scalars
    if callable(tolist):
        return _jsonable(tolist())
    return str(value)


def _restore_nonfinite(value: Any) -> Any:
    if isinstance(value, str):
        return _STR_TO_NONFINITE.get(value, value)
    if isinstance(value, dict):
        return {k: _restore_nonfinite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_nonfinite(v) for v in value]
    return value


def encode_record(record: Mapping[str, Any]) -> str:
    """One metrics.jsonl line (without the newline): strict JSON."""
    return json.dumps(_jsonable(record), allow_nan=False, separators=(",", ":"))


def read_metrics(path: str | os.PathLike, dedupe_resumed: bool = True) -> dict[str, list[dict[str, Any]]]:
    """Records of a metrics.jsonl (or of ``<dir>/metrics.jsonl``) grouped by kind.

    Returns ``{"config": [...], "train": [...], "eval": [...]}`` (other kinds under their
    own key) in file order, non-finite values restored to floats. A line that is not
    JSON (a crash mid-write) is skipped with a warning. With ``dedupe_resumed``, a run
    resumed from a checkpoint older than its last log supersedes the records it
    repeats: when a train record (or an eval record of the same split) has an
    iteration <= one already read, the earlier records from that iteration on are dropped.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILENAME
    if not path.exists():
        raise FileNotFoundError(f"no metrics log at {path}")
    out: dict[str, list[dict[str, Any]]] = {kind: [] for kind in RECORD_KINDS}
    last_iteration: dict[tuple[str, Any], int] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s:%d is not valid JSON (interrupted write?); skipped", path, number)
                continue
            if not isinstance(record, dict) or "kind" not in record:
                logger.warning("%s:%d is not a metrics record (no 'kind'); skipped", path, number)
                continue
            record = _restore_nonfinite(record)
            kind = record["kind"]
            records = out.setdefault(kind, [])
            iteration = record.get("iteration")
            if dedupe_resumed and kind in ("train", "eval") and isinstance(iteration, int):
                key = (kind, record.get("split"))
                if last_iteration.get(key, -1) >= iteration:
                    records[:] = [
                        r for r in records
                        if r.get("split") != key[1] or not isinstance(r.get("iteration"), int) or r["iteration"] < iteration
                    ]
                last_iteration[key] = iteration
            records.append(record)
    return out


# ---------------------------------------------------------------------------
# Optional backends, probed once


@functools.lru_cache(maxsize=None)
def _summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises ImportError when the tensorboard package is absent
        return None
    return SummaryWriter


@functools.lru_cache(maxsize=None)
def _wandb_module():
    try:
        import wandb
    except ImportError:
        return None
    return wandb


def _tag(name: str) -> str:
    # TensorBoard/W&B treat '/' as a hierarchy separator; domain names must stay one level.
    return str(name).replace("/", "_")


# ---------------------------------------------------------------------------
# The logger


@dataclass(frozen=True)
class MetricsConfig:
    """Where and how metrics are reported (Megatron's logging flags plus ours)."""

    log_dir: str | None
    """Directory of metrics.jsonl (--log-dir, else --save); None writes no JSONL."""
    train_iters: int
    """Total iterations, for the console's progress and ETA (--train-iters)."""
    tensorboard_dir: str | None = None
    """TensorBoard event directory (--tensorboard-dir); needs the tensorboard package."""
    wandb_project: str | None = None
    """W&B project (--wandb-project); needs the wandb package; mode from WANDB_MODE."""
    wandb_exp_name: str | None = None
    """W&B run name (--wandb-exp-name)."""
    wandb_save_dir: str | None = None
    """Local directory for W&B files (default: log_dir)."""
    flops_per_token: float | None = None
    """Model training FLOPs per token (flops.model_flops_per_token) for MFU."""
    peak_flops_per_device: float | None = None
    """Peak FLOP/s of one device (flops.peak_flops); None reports no MFU."""
    num_devices: int = 1
    """Devices the throughput is spread over (world size), for MFU."""
    console_domains: int = 4
    """How many domains (highest weight first) the console line names."""

    def __post_init__(self) -> None:
        if isinstance(self.train_iters, bool) or not isinstance(self.train_iters, int) or self.train_iters < 1:
            raise ValueError(f"train_iters must be an integer >= 1, got {self.train_iters!r}")
        if self.num_devices < 1:
            raise ValueError(f"num_devices must be >= 1, got {self.num_devices!r}")
        if self.console_domains < 0:
            raise ValueError(f"console_domains must be >= 0, got {self.console_domains!r}")
        for name in ("flops_per_token", "peak_flops_per_device"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0 or None, got {value!r}")


_TRAIN_FIELDS = ("iteration", "consumed_samples", "lr", "loss", "grad_norm", "tokens_per_sec", "step_time_s",
                 "domain_loss", "domain_samples", "domain_weights", "reward", "scheduler_time_s")
_EVAL_FIELDS = ("split", "iteration", "domain_loss", "domain_ppl", "mean_ppl", "natural_ppl")


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def _fmt(value: float | None, spec: str) -> str:
    if value is None:
        return "n/a"
    return format(value, spec) if math.isfinite(value) else str(value)


class MetricsLogger:
    """Writes metrics.jsonl, the console line, TensorBoard and W&B; a no-op off rank 0.

    ``start_iteration`` is the iteration the run starts (or resumes) from: elapsed time
    and the ETA count from there. ``clock`` and ``stream`` are injectable for tests.
    """

    def __init__(
        self,
        config: MetricsConfig,
        rank: int = 0,
        start_iteration: int = 0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.enabled = rank == 0
        self.start_iteration = start_iteration
        self._clock = clock
        self._start_time = clock()
        self._stream = stream if stream is not None else sys.stdout
        self._file: TextIO | None = None
        self._tb = None
        self._wandb_run = None
        self.path: str | None = None
        if not self.enabled:
            return
        if config.log_dir is not None:
            os.makedirs(config.log_dir, exist_ok=True)
            self.path = os.path.join(config.log_dir, METRICS_FILENAME)
            self._file = open(self.path, "a", encoding="utf-8")
            # A run killed mid-write leaves a partial last line; start ours on a fresh one.
            if self._file.tell() > 0 and not _ends_with_newline(self.path):
                self._file.write("\n")
        if config.tensorboard_dir is not None:
            writer_class = _summary_writer_class()
            if writer_class is None:
                logger.warning(
                    "--tensorboard-dir %s given but tensorboard is not installed "
                    "(pip install tensorboard, or megatron_hds[tensorboard]); TensorBoard logging is off",
                    config.tensorboard_dir,
                )
            else:
                self._tb = writer_class(log_dir=config.tensorboard_dir)
        if config.wandb_project is not None:
            self._wandb_run = self._init_wandb()

    # -- W&B -------------------------------------------------------------------------

    def _init_wandb(self):
        wandb = _wandb_module()
        if wandb is None:
            logger.warning(
                "--wandb-project %s given but wandb is not installed (pip install wandb, or "
                "megatron_hds[wandb]); W&B logging is off", self.config.wandb_project,
            )
            return None
        try:
            return wandb.init(
                project=self.config.wandb_project,
                name=self.config.wandb_exp_name,
                dir=self.config.wandb_save_dir or self.config.log_dir,
                mode=os.environ.get("WANDB_MODE") or None,
            )
        except Exception as error:  # noqa: BLE001 - any W&B failure (network, auth) must not stop training
            logger.warning("W&B init failed (%s: %s); W&B logging is off", type(error).__name__, error)
            return None

    def _wandb_call(self, what: str, fn: Callable[[], Any]) -> None:
        if self._wandb_run is None:
            return
        try:
            fn()
        except Exception as error:  # noqa: BLE001 - see _init_wandb
            logger.warning("W&B %s failed (%s: %s); W&B logging is off", what, type(error).__name__, error)
            self._wandb_run = None

    # -- writing -----------------------------------------------------------------------

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(encode_record(record) + "\n")
        # Flush every record: a crash loses at most the line being written.
        self._file.flush()

    def _print(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()

    def _scalars(self, scalars: Mapping[str, float | None], step: int) -> None:
        clean = {k: float(v) for k, v in scalars.items() if v is not None}
        if self._tb is not None:
            for tag, value in clean.items():
                self._tb.add_scalar(tag, value, step)
            self._tb.flush()
        self._wandb_call("log", lambda: self._wandb_run.log(clean, step=step))

    def log_config(self, config: Any) -> dict[str, Any] | None:
        """The {"kind": "config", ...} record: the resolved configuration (a mapping or a
        dataclass, nested allowed), flattened into the record's top level."""
        if not self.enabled:
            return None
        values = _jsonable(config)
        if not isinstance(values, dict):
            raise TypeError(f"config must be a mapping or a dataclass, got {type(config).__name__}")
        if "kind" in values:
            raise ValueError("the configuration has a field named 'kind', which the record needs")
        record = {"kind": "config", "time": time.time(), **values}
        self._write(record)
        self._wandb_call("config update", lambda: self._wandb_run.config.update(values, allow_val_change=True))
        if self._tb is not None:
            self._tb.add_text("config", "```\n" + json.dumps(values, indent=2) + "\n```", self.start_iteration)
        return record

    def log_train(
        self,
        iteration: int,
        *,
        consumed_samples: int,
        lr: float,
        loss: float,
        grad_norm: float | None,
        tokens_per_sec: float,
        step_time_s: float,
        domain_loss: Mapping[str, float],
        domain_samples: Mapping[str, int],
        domain_weights: Mapping[str, float],
        reward: Mapping[str, float] | None = None,
        scheduler_time_s: float = 0.0,
        **extra: Any,
    ) -> dict[str, Any] | None:
        """One "train" record (every log interval) + console line + scalars.

        ``grad_norm`` None means unknown (skipped step). ``reward`` only for learning
        schedulers. ``extra`` fields (e.g. loss_scale, skipped_iterations) are added to
        the record; the ones named loss_scale / skipped_iterations also reach the console.
        Returns the record written.
        """
        if not self.enabled:
            return None
        clash = sorted(set(extra) & (set(_TRAIN_FIELDS) | {"kind", "mfu", "time", "elapsed_s"}))
        if clash:
            raise ValueError(f"extra fields {clash} would overwrite standard train fields")
        record: dict[str, Any] = {
            "kind": "train",
            "iteration": int(iteration),
            "consumed_samples": int(consumed_samples),
            "lr": float(lr),
            "loss": float(loss),
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "tokens_per_sec": float(tokens_per_sec),
            "step_time_s": float(step_time_s),
            "domain_loss": {str(k): float(v) for k, v in domain_loss.items()},
            "domain_samples": {str(k): int(v) for k, v in domain_samples.items()},
            "domain_weights": {str(k): float(v) for k, v in domain_weights.items()},
        }
        if reward is not None:
            record["reward"] = {str(k): float(v) for k, v in reward.items()}
        record["scheduler_time_s"] = float(scheduler_time_s)
        model_flops_utilisation = self.mfu(tokens_per_sec)
        if model_flops_utilisation is not None:
            record["mfu"] = model_flops_utilisation
        elapsed = self._clock() - self._start_time
        record["elapsed_s"] = elapsed
        record["time"] = time.time()
        record.update(extra)
        self._write(record)
        self._print(self.train_line(record))

        scalars: dict[str, float | None] = {
            "lr": record["lr"], "loss": record["loss"], "grad_norm": record["grad_norm"],
            "tokens_per_sec": record["tokens_per_sec"], "step_time_s": record["step_time_s"],
            "consumed_samples": record["consumed_samples"], "scheduler_time_s": record["scheduler_time_s"],
            "mfu": record.get("mfu"),
        }
        for key in ("loss_scale", "skipped_iterations"):
            if isinstance(extra.get(key), (int, float)):
                scalars[key] = extra[key]
        for name, value in record["domain_loss"].items():
            scalars[f"domain_loss/{_tag(name)}"] = value
        for name, value in record["domain_weights"].items():
            scalars[f"domain_weight/{_tag(name)}"] = value
        for name, value in record["domain_samples"].items():
            scalars[f"domain_samples/{_tag(name)}"] = value
        for name, value in (record.get("reward") or {}).items():
            scalars[f"reward/{_tag(name)}"] = value
        self._scalars(scalars, record["iteration"])
        return record

    def log_eval(
        self,
        iteration: int,
        *,
        split: str,
        domain_loss: Mapping[str, float],
        natural_weights: Mapping[str, float],
        **extra: Any,
    ) -> dict[str, Any] | None:
        """One "eval" record from per-domain mean losses (perplexities derived here)."""
        if split not in EVAL_SPLITS:
            raise ValueError(f"unknown eval split {split!r}; accepted: {', '.join(EVAL_SPLITS)}")
        if not self.enabled:
            return None
        clash = sorted(set(extra) & (set(_EVAL_FIELDS) | {"kind", "time"}))
        if clash:
            raise ValueError(f"extra fields {clash} would overwrite standard eval fields")
        domain_ppl, mean_ppl, natural_ppl = eval_summary(domain_loss, natural_weights)
        record = {
            "kind": "eval",
            "split": split,
            "iteration": int(iteration),
            "domain_loss": {str(k): float(v) for k, v in domain_loss.items()},
            "domain_ppl": domain_ppl,
            "mean_ppl": mean_ppl,
            "natural_ppl": natural_ppl,
            "time": time.time(),
            **extra,
        }
        self._write(record)
        self._print(self.eval_line(record))
        scalars: dict[str, float | None] = {f"{split}/natural_ppl": natural_ppl, f"{split}/mean_ppl": mean_ppl}
        for name, value in domain_ppl.items():
            scalars[f"{split}/domain_ppl/{_tag(name)}"] = value
        for name, value in record["domain_loss"].items():
            scalars[f"{split}/domain_loss/{_tag(name)}"] = value
        self._scalars(scalars, record["iteration"])
        return record

    # -- console -----------------------------------------------------------------------

    def mfu(self, tokens_per_sec: float) -> float | None:
        c = self.config
        if c.flops_per_token is None or c.peak_flops_per_device is None:
            return None
        return flops.mfu(tokens_per_sec, c.flops_per_token, c.peak_flops_per_device, c.num_devices)

    def train_line(self, record: Mapping[str, Any]) -> str:
        """The console line of a train record."""
        iteration = record["iteration"]
        total = self.config.train_iters
        width = len(str(total))
        parts = [
            f"iter {iteration:>{width}d}/{total} ({100.0 * iteration / total:5.1f}%)",
            f"lr {record['lr']:.3e}",
            f"loss {_fmt(record['loss'], '.4f')}",
            f"grad norm {_fmt(record['grad_norm'], '.3f')}",
            f"tok/s {_fmt(record['tokens_per_sec'], ',.0f')}",
        ]
        if record.get("mfu") is not None:
            parts.append(f"MFU {100.0 * record['mfu']:.1f}%")
        parts.append(f"step {record['step_time_s'] * 1000.0:.0f} ms")
        if isinstance(record.get("loss_scale"), (int, float)):
            parts.append(f"loss scale {record['loss_scale']:.1f}")
        if record.get("skipped_iterations"):
            parts.append(f"skipped {record['skipped_iterations']}")
        elapsed = record.get("elapsed_s", self._clock() - self._start_time)
        done = iteration - self.start_iteration
        eta = elapsed / done * (total - iteration) if done > 0 else math.nan
        parts.append(f"elapsed {_format_duration(elapsed)}")
        parts.append(f"ETA {_format_duration(eta)}")
        summary = self.domain_summary(record.get("domain_weights", {}), record.get("domain_loss", {}))
        if summary:
            parts.append(summary)
        return " | ".join(parts)

    def domain_summary(self, weights: Mapping[str, float], losses: Mapping[str, float]) -> str:
        """'domains: A 0.31/5.12 B 0.22/4.80 (+3 more)': weight/loss of the top domains by weight."""
        k = self.config.console_domains
        names = sorted(weights, key=lambda d: (-weights[d], d)) if weights else sorted(losses)
        if k == 0 or not names:
            return ""
        shown = []
        for name in names[:k]:
            weight = f"{weights[name]:.3f}" if name in weights else "-"
            loss = _fmt(losses.get(name), ".2f") if name in losses else "-"
            shown.append(f"{name} {weight}/{loss}")
        more = f" (+{len(names) - k} more)" if len(names) > k else ""
        return "w/loss: " + ", ".join(shown) + more

    def eval_line(self, record: Mapping[str, Any]) -> str:
        """Console line of an eval record: natural-mixture and mean ppl, worst and best domains."""
        ppl = record["domain_ppl"]
        ranked = sorted(ppl, key=lambda d: (-ppl[d], d))
        k = max(1, self.config.console_domains // 2)
        worst = ", ".join(f"{d} {_fmt(ppl[d], '.2f')}" for d in ranked[:k])
        best = ", ".join(f"{d} {_fmt(ppl[d], '.2f')}" for d in reversed(ranked[-k:]))
        return (
            f"{record['split']} at iter {record['iteration']} | natural ppl {_fmt(record['natural_ppl'], '.3f')} | "
            f"mean ppl {_fmt(record['mean_ppl'], '.3f')} | highest: {worst} | lowest: {best}"
        )

    # -- lifetime ----------------------------------------------------------------------

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self._wandb_call("finish", lambda: self._wandb_run.finish())
        self._wandb_run = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"

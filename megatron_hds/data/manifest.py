"""The preprocessing manifest: one JSON file listing every domain's dataset, its size,
natural weight, quality sidecar and the tokenizer, the training side's entry point
(``--data-manifest``). Paths inside are relative to the manifest's directory so a
directory of datasets can be moved as a whole. Loading checks that every file it names
exists and is intact, so that bad data fails at start-up, naming the file."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass

from megatron_hds.atomic_io import write_text_atomic
from megatron_hds.data.indexed_dataset import IndexedDataset, data_file_path, index_file_path
from megatron_hds.data.quality import quality_path

MANIFEST_FORMAT = "megatron_hds.manifest"
MANIFEST_VERSION = 1


def manifest_path(output_prefix: str) -> str:
    return f"{output_prefix}_manifest.json"


def domain_slug(name: str, taken: dict[str, str] | None = None) -> str:
    """A file-name-safe slug for a domain name ('Wikipedia (en)' -> 'wikipedia_en').
    When another name already took the slug (``taken``: slug -> name), a short hash of
    the name is appended so two domains never share files."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "domain"
    if taken is not None and taken.get(slug, name) != name:
        slug = f"{slug}_{hashlib.sha1(name.encode('utf-8')).hexdigest()[:8]}"
    return slug


def write_manifest(path: str, manifest: dict) -> None:
    """Write atomically: the manifest is the marker that a preprocessing run completed."""
    write_text_atomic(path, json.dumps(manifest, indent=2) + "\n")


@dataclass(frozen=True)
class ManifestDomain:
    """One domain of a manifest, with absolute paths."""

    name: str
    slug: str
    prefix: str
    documents: int
    sequences: int
    tokens: int
    natural_weight: float
    quality_path: str


@dataclass(frozen=True)
class Manifest:
    path: str
    domains: tuple[ManifestDomain, ...]
    tokenizer: dict
    raw: dict

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.domains]

    @property
    def natural_weights(self) -> list[float]:
        return [d.natural_weight for d in self.domains]


_DOMAIN_KEYS = ("name", "slug", "prefix", "documents", "sequences", "tokens", "natural_weight", "quality")


def _check_dataset(path: str, domain: ManifestDomain, vocab_size: int) -> None:
    """The domain's .bin/.idx and quality sidecar exist, are intact and agree with the manifest."""
    missing = [f for f in (index_file_path(domain.prefix), data_file_path(domain.prefix), domain.quality_path)
               if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"manifest {path!r}: {', '.join(map(repr, missing))} of domain {domain.name!r} "
                                f"{'is' if len(missing) == 1 else 'are'} missing")
    dataset = IndexedDataset(domain.prefix)
    if dataset.num_documents != domain.documents:
        raise ValueError(f"manifest {path!r}: dataset {domain.prefix!r} has {dataset.num_documents} documents, "
                         f"not the {domain.documents} the manifest records: it was replaced or damaged after "
                         "preprocessing")
    dataset.verify(vocab_size)


def load_manifest(path: str, check_files: bool = True) -> Manifest:
    """Read a manifest; with check_files, every dataset must exist, be intact (its index
    consistent, its tokens inside the manifest's vocabulary) and agree with it."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"manifest {path!r} not found (--data-manifest)") from None
    except ValueError as e:
        raise ValueError(f"manifest {path!r} is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT or raw.get("version") != MANIFEST_VERSION:
        raise ValueError(
            f"{path!r} is not a version-{MANIFEST_VERSION} megatron_hds manifest "
            f"(format={raw.get('format') if isinstance(raw, dict) else None!r}, "
            f"version={raw.get('version') if isinstance(raw, dict) else None!r})"
        )
    tokenizer = raw.get("tokenizer")
    if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("vocab_size"), int):
        raise ValueError(f"manifest {path!r} does not record its tokenizer's vocabulary size (tokenizer.vocab_size)")
    if not isinstance(raw.get("domains"), list):
        raise ValueError(f"manifest {path!r} has no list of domains")
    base = os.path.dirname(os.path.abspath(path))
    domains = []
    for number, entry in enumerate(raw["domains"]):
        absent = [key for key in _DOMAIN_KEYS if not isinstance(entry, dict) or key not in entry]
        if absent:
            raise ValueError(f"manifest {path!r}: domain entry {number} lacks {absent}")
        prefix = os.path.join(base, entry["prefix"])
        domain = ManifestDomain(
            name=entry["name"],
            slug=entry["slug"],
            prefix=prefix,
            documents=entry["documents"],
            sequences=entry["sequences"],
            tokens=entry["tokens"],
            natural_weight=entry["natural_weight"],
            quality_path=os.path.join(base, entry["quality"]),
        )
        if check_files:
            _check_dataset(path, domain, tokenizer["vocab_size"])
        domains.append(domain)
    if not domains:
        raise ValueError(f"manifest {path!r} lists no domains")
    return Manifest(path=path, domains=tuple(domains), tokenizer=raw["tokenizer"], raw=raw)


def relative_entry(prefix: str, manifest_file: str) -> dict:
    """The manifest's relative spellings of a dataset prefix and its quality sidecar."""
    base = os.path.dirname(os.path.abspath(manifest_file))
    return {
        "prefix": os.path.relpath(os.path.abspath(prefix), base),
        "quality": os.path.relpath(os.path.abspath(quality_path(prefix)), base),
    }

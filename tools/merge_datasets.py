"""Merge MMIDIDX indexed datasets into one (Megatron-LM's tools/merge_datasets.py interface).

    python tools/merge_datasets.py --input DIR --output-prefix OUT
    python tools/merge_datasets.py --input-prefixes A B C --output-prefix OUT

With --input, every X.idx in DIR that has a matching X.bin is merged, in sorted name order.
The output is written under temporary names and renamed at the end, so an interrupted run
never leaves a complete-looking OUT.bin / OUT.idx pair.
"""

from __future__ import annotations

import argparse
import logging
import os

# Runnable from a checkout without installation: put the repo root (parent of tools/) first.

from megatron_hds.data.indexed_dataset import (
    IndexedDataset,
    IndexedDatasetBuilder,
    data_file_path,
    index_file_path,
)

logger = logging.getLogger("merge_datasets")


def find_prefixes(directory: str) -> list[str]:
    """Dataset prefixes in `directory` (X for each X.idx + X.bin pair), sorted by name."""
    if not os.path.isdir(directory):
        raise SystemExit(f"--input {directory!r} is not a directory")
    names = set(os.listdir(directory))
    prefixes, unpaired = [], []
    for name in sorted(names):
        stem, ext = os.path.splitext(name)
        if ext == ".idx":
            (prefixes if stem + ".bin" in names else unpaired).append(name)
        elif ext == ".bin" and stem + ".idx" not in names:
            unpaired.append(name)
    if unpaired:
        # Half a dataset usually means an interrupted write; merging around it would silently
        # drop data.
        raise SystemExit(f"files without their .idx/.bin partner in {directory}: {', '.join(unpaired)}")
    return [os.path.join(directory, p[: -len(".idx")]) for p in prefixes]


def merge(prefixes: list[str], output_prefix: str) -> None:
    if not prefixes:
        raise SystemExit("no datasets to merge")
    out_abs = os.path.abspath(output_prefix)
    for p in prefixes:
        if os.path.abspath(p) == out_abs:
            raise SystemExit(f"output prefix {output_prefix!r} is also an input; choose another name")
        if not IndexedDataset.exists(p):
            raise SystemExit(f"dataset {p!r} not found ({index_file_path(p)} and {data_file_path(p)} needed)")

    out_dir = os.path.dirname(out_abs)
    os.makedirs(out_dir, exist_ok=True)
    bin_path, idx_path = data_file_path(output_prefix), index_file_path(output_prefix)
    bin_tmp, idx_tmp = bin_path + ".tmp", idx_path + ".tmp"

    dtype = IndexedDataset(prefixes[0]).dtype
    builder = IndexedDatasetBuilder(bin_tmp, dtype=dtype)
    try:
        for i, p in enumerate(prefixes, 1):
            logger.info("[%d/%d] adding %s", i, len(prefixes), p)
            builder.add_index(p)
        builder.finalize(idx_tmp)
    except BaseException:
        builder.close()
        for t in (bin_tmp, idx_tmp):
            if os.path.exists(t):
                os.remove(t)
        raise

    # A stale OUT.idx must not pair with the new OUT.bin if we stop between the renames;
    # the .idx goes in last, so OUT only looks complete once both are in place.
    if os.path.exists(idx_path):
        os.remove(idx_path)
    os.replace(bin_tmp, bin_path)
    os.replace(idx_tmp, idx_path)

    merged = IndexedDataset(output_prefix)
    logger.info(
        "wrote %s: %d documents, %d sequences, %d tokens (%s)",
        output_prefix,
        merged.num_documents,
        len(merged),
        int(merged.sequence_lengths.sum(dtype="int64")),
        merged.dtype,
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="directory: merge every X.idx/X.bin pair in it, sorted by name")
    src.add_argument("--input-prefixes", nargs="+", metavar="PREFIX", help="dataset prefixes to merge, in this order")
    parser.add_argument("--output-prefix", required=True, help="writes OUTPUT_PREFIX.bin and OUTPUT_PREFIX.idx")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    prefixes = find_prefixes(args.input) if args.input else args.input_prefixes
    if args.input and not prefixes:
        raise SystemExit(f"no datasets (X.idx + X.bin) found in {args.input}")
    merge(prefixes, args.output_prefix)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Write the built-in demo corpus (Pile-shaped JSON lines, offline, deterministic).

    python tools/make_demo_corpus.py --output data/demo/demo.jsonl.zst [--size-mb 32] [--seed 1234]

Compression follows the extension (.jsonl.zst, .jsonl.gz, .jsonl).  See
tools/demo_corpus.py for the domains and how they are made.
"""
import argparse
import os
import sys
import time

from demo_corpus import DEMO_SHARES, MB, write_demo_corpus


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", required=True,
                    help="output path ending in .jsonl.zst, .jsonl.gz or .jsonl")
    ap.add_argument("--size-mb", type=float, default=32.0,
                    help="uncompressed text size in MB (10**6 bytes; default 32)")
    ap.add_argument("--seed", type=int, default=1234, help="random seed (default 1234)")
    args = ap.parse_args(argv)
    if not args.size_mb > 0:
        ap.error("--size-mb must be > 0")

    t0 = time.perf_counter()
    try:
        stats = write_demo_corpus(args.output, size_mb=args.size_mb, seed=args.seed)
    except ValueError as exc:
        ap.error(str(exc))
    elapsed = time.perf_counter() - t0

    total_docs = sum(s["documents"] for s in stats.values())
    total_bytes = sum(s["bytes"] for s in stats.values())
    print(f"{'domain':<12} {'documents':>9} {'MB':>9} {'share':>6} {'target':>6}")
    for domain, s in stats.items():
        share = s["bytes"] / total_bytes if total_bytes else 0.0
        print(f"{domain:<12} {s['documents']:>9d} {s['bytes'] / MB:>9.3f} {share:>6.3f} {DEMO_SHARES[domain]:>6.3f}")
    print(f"{'total':<12} {total_docs:>9d} {total_bytes / MB:>9.3f}")
    print(f"wrote {args.output} ({os.path.getsize(args.output) / MB:.3f} MB on disk, "
          f"seed {args.seed}) in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Write the built-in demo corpus: Pile-shaped JSON lines in train/valid/test splits that share no text.

    python tools/make_demo_corpus.py --output-dir data/demo [--size-mb 32] [--seed 1234]

writes DIR/train.jsonl.zst, DIR/valid.jsonl.zst, DIR/test.jsonl.zst and, last, DIR/corpus.json
(settings, documents and bytes per domain and split, sha256 of the files); all appear only
once complete. --size-mb counts the text of all three splits together (train 90 %, valid and
test 5 % each). Offline and deterministic: the same seed gives the same bytes. See
tools/demo_corpus.py for the domains and how the splits are kept apart.
"""
import argparse
import os
import sys
import time

from demo_corpus import FILE_EXTENSIONS, DEMO_DOMAINS, MB, SPLITS, write_demo_corpus


def summary_table(info: dict) -> str:
    """Documents and MB of text per domain and split, and the totals."""
    splits = info["splits"]
    header = (f"{'domain':<12}" + "".join(f"{'docs ' + s[:2]:>10}" for s in SPLITS)
              + "".join(f"{'MB ' + s[:2]:>9}" for s in SPLITS))
    rows = [header]
    for domain in (*DEMO_DOMAINS, "total"):
        def get(split, key):
            stats = splits[split]["domains"]
            return sum(s[key] for s in stats.values()) if domain == "total" else stats[domain][key]
        rows.append(f"{domain:<12}" + "".join(f"{get(s, 'documents'):>10d}" for s in SPLITS)
                    + "".join(f"{get(s, 'bytes') / MB:>9.3f}" for s in SPLITS))
    return "\n".join(rows)


def main(argv=None) -> int:
    # allow_abbrev=False: the old flag --output must not pass for --output-dir.
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--output-dir", required=True,
                    help="directory for train/valid/test.jsonl.zst and corpus.json")
    ap.add_argument("--size-mb", type=float, default=32.0,
                    help="text of all splits together, MB (10**6 bytes; default 32)")
    ap.add_argument("--seed", type=int, default=1234, help="random seed (default 1234)")
    args = ap.parse_args(argv)
    if not args.size_mb > 0:
        ap.error(f"--size-mb must be > 0, got {args.size_mb}")
    if args.output_dir.endswith(FILE_EXTENSIONS):
        ap.error(f"--output-dir takes a directory (the corpus is three files), got {args.output_dir!r}")

    t0 = time.perf_counter()
    try:
        info = write_demo_corpus(args.output_dir, size_mb=args.size_mb, seed=args.seed)
    except (ValueError, OSError) as exc:
        ap.error(str(exc))
    elapsed = time.perf_counter() - t0

    print(summary_table(info))
    on_disk = sum(os.path.getsize(os.path.join(args.output_dir, s["path"])) for s in info["splits"].values())
    print(f"wrote {args.output_dir}/{{{','.join(SPLITS)}}}.jsonl.zst ({on_disk / MB:.3f} MB on disk, "
          f"seed {args.seed}) in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

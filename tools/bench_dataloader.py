#!/usr/bin/env python3
"""Benchmark the dynamic mixture sampler (megatron_hds/data/mixture.py) per training step.

What it measures
    The host-side cost, per optimizer step, of turning the step's domain weights into
    sample indices at the Pythia-1B shape of the HDS paper: global batch 1152 samples of
    1024 tokens, 22 Pile domains whose sizes (samples per epoch) are the Pile weights
    times --total-samples (default 50M, so Pile-CC has ~9M samples and Enron Emails ~70k),
    with weights that change at every step (a fresh Dirichlet draw per step, drawn
    before timing, as the scheduler would hand them over).

    * "own rank": what every rank does each step: ``plan(step, weights)`` (the full global
      plan), ``advance(plan)``, and its own micro-batches as Python lists of
      (domain, sample index), i.e. ``plan.micro_batches_for(rank)`` plus ``.tolist()``;
    * "all ranks": the same but producing the lists of all --dp ranks (an upper bound:
      no rank needs this);
    * one-off per-epoch costs, reported separately: our per-(domain, epoch) permutation
      costs one key derivation (a keyed Feistel bijection is evaluated per position, so
      no order is materialised); for comparison the cost and memory of materialising
      ``np.random.Generator.permutation(size)`` for the largest domain and for all 22
      (what a Megatron-style shuffle index per epoch would take);
    * with --data-manifest (a preprocessing manifest, e.g. of the demo corpus): also
      fetching the own rank's samples from the real per-domain GPT datasets
      (megatron_hds/data/gpt_dataset.py), stacked per micro-batch as the training loop
      would; the sampler then uses those datasets' real sizes.

    Percentages are of a --step-time second step (default 1 s; the goal is < 1%).

How to run (from the repository root)
    python tools/bench_dataloader.py
    python tools/bench_dataloader.py --mbs 8 --dp 16 --layout hds --steps 5000
    python tools/bench_dataloader.py --data-manifest /data/demo_tok/demo_manifest.json --seq-length 1024
"""

from __future__ import annotations

import argparse
import os
import sys
import time


import numpy as np

from megatron_hds.data.mixture import LAYOUTS, MixtureConfig, MixtureSampler

PILE_WEIGHTS = {
    "Pile-CC": 0.1811, "PubMed Central": 0.144, "Books3": 0.1207, "OpenWebText2": 0.1001,
    "ArXiv": 0.0896, "Github": 0.0759, "FreeLaw": 0.0612, "StackExchange": 0.0513,
    "USPTO Backgrounds": 0.0365, "PubMed Abstracts": 0.0307, "Gutenberg (PG-19)": 0.0217,
    "OpenSubtitles": 0.0155, "Wikipedia (en)": 0.0153, "DM Mathematics": 0.0124,
    "Ubuntu IRC": 0.0088, "BookCorpus2": 0.0075, "EuroParl": 0.0073, "HackerNews": 0.0062,
    "YoutubeSubtitles": 0.006, "PhilPapers": 0.0038, "NIH ExPorter": 0.003, "Enron Emails": 0.0014,
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gbs", type=int, default=1152, help="global batch size in samples (default 1152)")
    ap.add_argument("--mbs", type=int, default=4, help="micro-batch size (default 4)")
    ap.add_argument("--dp", type=int, default=8, help="data-parallel size (default 8)")
    ap.add_argument("--seq-length", type=int, default=1024, help="tokens per sample (default 1024)")
    ap.add_argument("--layout", choices=LAYOUTS + ("all",), default="all", help="batch layout (default: each)")
    ap.add_argument("--total-samples", type=float, default=50e6, help="samples over all domains (default 50M)")
    ap.add_argument("--steps", type=int, default=2000, help="timed steps per layout (default 2000)")
    ap.add_argument("--warmup", type=int, default=50, help="untimed steps first (default 50)")
    ap.add_argument("--step-time", type=float, default=1.0, help="training step time in seconds (default 1)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--skip-materialised", action="store_true",
                    help="skip timing np.random permutations of every domain (the comparison baseline)")
    ap.add_argument("--data-manifest", default=None,
                    help="also time fetching the own rank's samples from real GPT datasets of this manifest")
    ap.add_argument("--split", default="969,30,1", help="--split for the datasets (default 969,30,1)")
    ap.add_argument("--data-cache-path", default=None, help="index cache directory for the datasets")
    return ap.parse_args(argv)


def summarise(times_s: np.ndarray, step_time: float) -> str:
    us = times_s * 1e6
    return (f"mean {us.mean():8.1f} us  median {np.median(us):8.1f} us  p99 {np.percentile(us, 99):8.1f} us  "
            f"max {us.max():8.1f} us  = {100 * times_s.mean() / step_time:.4f}% of a {step_time:g} s step")


def bench_layout(args, names, sizes, layout, datasets=None):
    cfg = MixtureConfig(domain_names=tuple(names), domain_sizes=tuple(sizes), global_batch_size=args.gbs,
                        micro_batch_size=args.mbs, data_parallel_size=args.dp, seed=args.seed, layout=layout)
    sampler = MixtureSampler(cfg)
    rng = np.random.default_rng(args.seed)
    total = args.warmup + args.steps
    weights = rng.dirichlet(np.full(len(names), 0.5), size=total)
    own, every, fetch = [], [], []
    epochs_before = sampler.epochs
    clock = time.perf_counter
    for step in range(total):
        t0 = clock()
        plan = sampler.plan(step, weights[step])
        sampler.advance(plan)
        mine = plan.micro_batches_for(0)
        lists = (mine.domains.tolist(), mine.indices.tolist())
        t1 = clock()
        for r in range(1, args.dp):
            other = plan.micro_batches_for(r)
            other.domains.tolist(), other.indices.tolist()
        t2 = clock()
        if datasets is not None:
            for doms, idxs in zip(*lists):
                np.stack([datasets[d][i] for d, i in zip(doms, idxs)])
        t3 = clock()
        if step >= args.warmup:
            own.append(t1 - t0)
            every.append(t2 - t0)
            fetch.append(t3 - t2)
    crossings = int((sampler.epochs - epochs_before).sum())
    print(f"\nlayout {layout}: {cfg.num_micro_batches} micro-batches of {args.mbs} per step, "
          f"{cfg.micro_batches_per_rank} per rank; {args.steps} timed steps; {crossings} domain epoch wraps")
    print(f"  sampler, own rank   : {summarise(np.array(own), args.step_time)}")
    print(f"  sampler, all ranks  : {summarise(np.array(every), args.step_time)}")
    if datasets is not None:
        f = np.array(fetch)
        both = np.array(own) + f
        print(f"  fetch own samples   : {summarise(f, args.step_time)}")
        print(f"  sampler + fetch     : {summarise(both, args.step_time)}")
    return float(np.mean(own))


def bench_epoch_costs(args, names, sizes):
    print("\none-off per-epoch cost of a domain's order")
    sampler = MixtureSampler(MixtureConfig(tuple(names), tuple(sizes), args.gbs, args.mbs, args.dp, seed=args.seed))
    perm = sampler._perm
    t0 = time.perf_counter()
    n = 200
    for e in range(n):
        perm._keys.clear()
        perm.keys(0, e)
    key_us = (time.perf_counter() - t0) / n * 1e6
    print(f"  ours (keyed Feistel, lazy): {key_us:.1f} us per (domain, epoch) key derivation; 0 bytes per sample")
    big = int(np.argmax(sizes))
    m = min(int(sizes[big]), 1 << 20)
    t0 = time.perf_counter()
    perm(np.full(m, big, dtype=np.int64), np.zeros(m, dtype=np.int64), np.arange(m, dtype=np.int64))
    dt = time.perf_counter() - t0
    print(f"    (evaluating the order for {m:,} positions at once: {dt * 1e9 / m:.0f} ns per sample; "
          f"the per-step figures above already include it for the step's samples)")
    if args.skip_materialised:
        return
    t0 = time.perf_counter()
    np.random.default_rng([args.seed, big, 0]).permutation(int(sizes[big]))
    t_big = time.perf_counter() - t0
    t0 = time.perf_counter()
    for d, s in enumerate(sizes):
        np.random.default_rng([args.seed, d, 0]).permutation(int(s))
    t_all = time.perf_counter() - t0
    print(f"  materialised np permutation (for comparison): largest domain {names[big]!r} "
          f"({sizes[big]:,} samples) {t_big * 1e3:.0f} ms and {sizes[big] * 8 / 2**20:.0f} MiB; "
          f"all {len(sizes)} domains {t_all * 1e3:.0f} ms and {sum(sizes) * 8 / 2**20:.0f} MiB per epoch "
          f"(= {100 * t_big / args.step_time:.1f}% / {100 * t_all / args.step_time:.1f}% of one step, "
          "as a stall on the step where it happens)")


def load_datasets(args):
    from megatron_hds.data.gpt_dataset import build_domain_datasets
    from megatron_hds.data.manifest import load_manifest

    manifest = load_manifest(args.data_manifest)
    t0 = time.perf_counter()
    splits = build_domain_datasets([d.prefix for d in manifest.domains], manifest.names, args.split,
                                   args.seq_length, args.seed, cache_dir=args.data_cache_path)
    train = splits["train"]
    empty = [n for n, ds in zip(manifest.names, train) if len(ds) == 0]
    if empty:
        raise SystemExit(f"domains with no training sample at seq-length {args.seq_length}: {empty}")
    print(f"datasets of {args.data_manifest}: {len(train)} domains, {sum(len(d) for d in train):,} train samples "
          f"(ready in {time.perf_counter() - t0:.2f} s)")
    return manifest.names, [len(d) for d in train], train


def main(argv=None) -> int:
    args = parse_args(argv)
    datasets = None
    if args.data_manifest:
        names, sizes, datasets = load_datasets(args)
    else:
        names = list(PILE_WEIGHTS)
        sizes = [max(1, round(w * args.total_samples)) for w in PILE_WEIGHTS.values()]
    print(f"mixture sampler benchmark: GBS {args.gbs} x {args.seq_length} tokens, mbs {args.mbs}, dp {args.dp}, "
          f"{len(names)} domains, {sum(sizes):,} samples (largest {max(sizes):,}, smallest {min(sizes):,}); "
          f"weights change every step; python {sys.version.split()[0]}, numpy {np.__version__}, "
          f"{os.cpu_count()} CPUs")
    layouts = LAYOUTS if args.layout == "all" else (args.layout,)
    worst = max(bench_layout(args, names, sizes, layout, datasets) for layout in layouts)
    bench_epoch_costs(args, names, sizes)
    ok = worst < 0.01 * args.step_time
    print(f"\nworst mean sampler cost per step (own rank): {worst * 1e6:.1f} us = "
          f"{100 * worst / args.step_time:.4f}% of a {args.step_time:g} s step: "
          f"{'within' if ok else 'ABOVE'} the 1% goal")
    return 0


if __name__ == "__main__":
    sys.exit(main())

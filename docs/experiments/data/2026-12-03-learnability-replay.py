"""Replays HDS's two learnability estimates on a finished run's metrics.jsonl: the scaling laws
of the training losses (the default) and the recent slope of the validation losses
(--hds-learnability-source valid), and prints each domain's score at a few steps.

    python docs/experiments/data/2026-12-03-learnability-replay.py RUN/checkpoints/metrics.jsonl NATURAL_RUN/...

The training losses are the log's 10-step window means (one bin each, as the scheduler bins
them); the natural weights are read from a static run's log (its domain_weights).
"""

import json
import sys

import numpy as np

from megatron_hds.mixing.learnability import HeldOutLearnability, Learnability

STEPS = (500, 1000, 1500, 2000, 2500)


def records(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def main(run_log: str, static_log: str) -> None:
    run = records(run_log)
    train = [r for r in run if r["kind"] == "train"]
    names = list(train[0]["domain_loss"])
    static_train = [r for r in records(static_log) if r["kind"] == "train"]
    natural = np.array([static_train[0]["domain_weights"][n] for n in names])
    from_train, from_valid = Learnability(natural, bin_steps=train[0]["iteration"]), HeldOutLearnability(natural)
    evals = {r["iteration"]: r for r in run if r["kind"] == "eval" and r["split"] == "valid"}
    print("step  estimate  " + "  ".join(f"{n[:11]:>11s}" for n in names))
    for r in train:
        samples = np.array([r["domain_samples"][n] for n in names], dtype=float)
        losses = np.array([r["domain_loss"][n] for n in names], dtype=float)
        from_train.observe(r["iteration"], losses, samples / samples.sum())
        from_valid.observe(r["iteration"], losses, samples / samples.sum())
        if r["iteration"] in evals:
            from_valid.observe_evaluation(r["iteration"], np.array([evals[r["iteration"]]["domain_loss"][n]
                                                                    for n in names]))
        if r["iteration"] in STEPS:
            for label, estimate in (("train", from_train), ("valid", from_valid)):
                print(f"{r['iteration']:4d}  {label:8s}  " + "  ".join(f"{s:+11.2f}" for s in estimate.scores))


if __name__ == "__main__":
    main(*sys.argv[1:3])

"""Temporaries of writers killed with SIGKILL do not pile up: a save directory sweeps them all;
a shared index-cache directory sweeps those whose writer is gone (a process of this host that
no longer exists, or an untouched file an hour old), never a live writer's."""

import os
import subprocess
import time

from megatron_hds import atomic_io
from megatron_hds.atomic_io import remove_stale_temporaries
from megatron_hds.data.gpt_dataset import GPTDataset


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _plant(target, host, pid, age_s=0.0):
    path = f"{target}.tmp-{host}-{pid}-0123abcd.npy"
    open(path, "w").write("half")
    if age_s:
        os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_only_the_temporaries_of_gone_writers_are_removed(tmp_path):
    target = str(tmp_path / "cache-sample_index.npy")
    open(target, "w").write("complete")
    dead = _plant(target, atomic_io._HOST, _dead_pid())
    live = _plant(target, atomic_io._HOST, os.getpid())
    elsewhere_old = _plant(target, "other-node-7", 123, age_s=7200)
    elsewhere_fresh = _plant(target, "other-node-7", 124)
    unrelated = str(tmp_path / "other.npy.tmp-x-1-2")
    open(unrelated, "w").write("")
    assert sorted(remove_stale_temporaries(target, older_than_s=3600)) == sorted([dead, elsewhere_old])
    assert sorted(os.listdir(tmp_path)) == sorted(map(os.path.basename, [target, live, elsewhere_fresh, unrelated]))
    # where only this process writes (a run's save directory) every temporary is stale
    assert sorted(remove_stale_temporaries(target)) == sorted([live, elsewhere_fresh])


def test_the_index_cache_builder_sweeps_its_files(tmp_path, demo_manifest):
    prefix = os.path.join(os.path.dirname(demo_manifest), "demo_math_text_document")
    cache = str(tmp_path / "cache")
    first = GPTDataset(prefix, "train", (0, 10), 32, 1234, cache_dir=cache)
    left = _plant(first.cache_paths["document_index"], atomic_io._HOST, _dead_pid())
    again = GPTDataset(prefix, "train", (0, 10), 32, 1234, cache_dir=cache)
    assert not os.path.exists(left) and len(again) == len(first)

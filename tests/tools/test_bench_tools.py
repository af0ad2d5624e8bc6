"""The benchmark scripts run end to end on CPU at tiny sizes (their figures are not checked:
speed goals live in the scripts' output, not in tests)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.join(os.path.dirname(__file__), "..", "..")


def _run(*argv):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_bench_kernels_sketch_times_both_paths():
    out = _run("tools/bench_kernels.py", "--kernels", "sketch", "--model", "tiny", "--iters", "2")
    assert "CountSketch of one micro-batch's probe: 3 x tiny" in out
    assert "ours (torch twin, on the fly)" in out and "torch index_add + table" in out


def test_bench_scheduler_agent_part_reports_update_and_act():
    out = _run("tools/bench_scheduler.py", "--skip-training", "--agent-iters", "3")
    assert "agent.update()" in out and "agent.act(state)" in out and "% of a 1 s step" in out


def test_bench_scheduler_training_part_with_the_overlapped_update(demo_manifest, tmp_path):
    out = _run("tools/bench_scheduler.py", "--data-manifest", demo_manifest, "--methods", "hds", "hds-sync",
               "--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "2", "--seq-length", "16",
               "--global-batch-size", "4", "--micro-batch-size", "1", "--steps", "3", "--warmup-steps", "1",
               "--agent-iters", "2", "--json", str(tmp_path / "b.json"),
               "--extra-args=--hds-influence-interval 2 --hds-influence-max-share 1")
    assert "agent update (worker thread)" in out and "wait for overlapped update" in out
    assert "HDS as users run it (--mixing hds at its defaults: the update overlaps the next step) adds" in out
    methods = json.loads((tmp_path / "b.json").read_text())["part_a"]["methods"]
    assert set(methods) == {"static", "hds", "hds-sync"}
    # Timed steps alternate: the parts' device syncs stay out of the step times.
    assert all((m["plain_steps"], m["instrumented_steps"]) == (2, 1) for m in methods.values())
    # The overlapped update is not inside observe(): the synchronous one is.
    assert "agent update" in methods["hds-sync"]["parts_ms_median"]
    assert "agent update" not in methods["hds"]["parts_ms_median"]
    # HDS's validation gradient passes (at iterations 0, 2 and 4; 0 is the warm-up step, 1 the block's
    # lead-in, 2 to 4 the timed steps) count, spread over their interval, in the scheduler's time.
    assert methods["static"]["pass_interval"] is None and methods["static"]["pass_ms_per_step"] == 0.0
    for hds in (methods["hds"], methods["hds-sync"]):
        assert (hds["pass_interval"], hds["passes_timed"]) == (2, 2)
        assert hds["pass_ms_per_step"] == pytest.approx(hds["pass_ms_median"] / 2)
        assert hds["scheduler_incl_in_step_ms_median"] > hds["pass_ms_per_step"] > 0

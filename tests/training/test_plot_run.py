"""tools/plot_run.py: synthetic metrics.jsonl -> valid PNG files; clear message without matplotlib."""

import io
import math
import os
import subprocess
import sys

import pytest

from megatron_hds.training.metrics import MetricsConfig, MetricsLogger

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLOT_RUN = os.path.join(REPO_ROOT, "tools", "plot_run.py")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DOMAINS = ["Pile-CC", "Github", "ArXiv", "PubMed/Central"]


def _synthetic_run(run_dir, shift=0.0):
    natural = {d: 0.25 for d in DOMAINS}
    with MetricsLogger(MetricsConfig(log_dir=str(run_dir), train_iters=100), stream=io.StringIO()) as logger:
        logger.log_config({"seed": 1})
        for it in range(10, 101, 10):
            raw = {d: 1.0 + (i + 1) * math.sin(it / 30 + i) ** 2 for i, d in enumerate(DOMAINS)}
            total = sum(raw.values())
            logger.log_train(
                it, consumed_samples=8 * it, lr=1e-3, loss=6.0 - it / 30 + shift, grad_norm=1.0,
                tokens_per_sec=1000.0, step_time_s=0.1, domain_loss={d: 5.0 for d in DOMAINS},
                domain_samples={d: 2 for d in DOMAINS}, domain_weights={d: v / total for d, v in raw.items()},
            )
            if it % 20 == 0:
                losses = {d: 6.0 - it / 40 + i * 0.3 + shift for i, d in enumerate(DOMAINS)}
                logger.log_eval(it, split="valid", domain_loss=losses, natural_weights=natural)
    return os.path.join(run_dir, "metrics.jsonl")


def _assert_png(path):
    assert os.path.isfile(path), path
    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_MAGIC
    assert os.path.getsize(path) > 5_000


def test_plots_one_run_next_to_its_metrics(tmp_path):
    pytest.importorskip("matplotlib")
    metrics_path = _synthetic_run(tmp_path / "demo")
    # run from elsewhere, as a user would: the tool must find the package itself
    proc = subprocess.run([sys.executable, PLOT_RUN, metrics_path], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.split()
    expected = [str(tmp_path / "demo" / f"{name}.png") for name in ("valid_ppl", "domain_weights", "train_loss")]
    assert printed == expected
    for path in expected:
        _assert_png(path)


def test_plots_several_runs_into_an_output_dir(tmp_path):
    pytest.importorskip("matplotlib")
    sys.path.insert(0, os.path.dirname(PLOT_RUN))
    try:
        import plot_run
    finally:
        sys.path.remove(os.path.dirname(PLOT_RUN))
    first = _synthetic_run(tmp_path / "hds")
    second = _synthetic_run(tmp_path / "odm", shift=0.2)
    out = tmp_path / "plots"
    written = plot_run.main([first, str(tmp_path / "odm"), "--labels", "HDS", "ODM run", "--output-dir", str(out)])
    names = sorted(os.path.basename(p) for p in written)
    assert names == sorted([
        "HDS_valid_ppl.png", "HDS_domain_weights.png", "HDS_train_loss.png",
        "ODM_run_valid_ppl.png", "ODM_run_domain_weights.png", "ODM_run_train_loss.png",
        "compare_natural_ppl.png", "compare_train_loss.png",
    ])
    for path in written:
        _assert_png(path)
    assert second  # both runs were read


def test_missing_matplotlib_names_the_install_command(tmp_path):
    metrics_path = _synthetic_run(tmp_path / "demo")
    code = (
        "import sys; sys.modules['matplotlib'] = None; sys.argv = ['plot_run.py', sys.argv[1]]; "
        f"sys.path.insert(0, {os.path.dirname(PLOT_RUN)!r}); import plot_run; plot_run.main()"
    )
    proc = subprocess.run([sys.executable, "-c", code, metrics_path], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
    assert "pip install megatron_hds[plot]" in proc.stderr


def test_missing_metrics_file_is_named(tmp_path):
    proc = subprocess.run([sys.executable, PLOT_RUN, str(tmp_path / "nope")], capture_output=True, text=True)
    assert proc.returncode != 0 and f"no metrics log at {tmp_path / 'nope'}" in proc.stderr

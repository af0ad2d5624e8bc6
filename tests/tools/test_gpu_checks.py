"""tools/gpu_checks.sh: the GPU checklist script parses, and stops cleanly (exit 3) without CUDA."""

import ast
import os
import re
import subprocess
import sys

import pytest
import torch

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "gpu_checks.sh")


def test_script_is_valid_bash():
    subprocess.run(["bash", "-n", SCRIPT], check=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script runs every check (minutes)")
def test_without_cuda_it_writes_a_summary_and_exits_3(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    proc = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    summary = (tmp_path / "summary.txt").read_text()
    assert f"torch {torch.__version__}" in summary and "no CUDA device visible" in summary
    assert sorted(os.listdir(tmp_path)) == ["summary.txt"]  # no check ran


def test_a_missing_dependency_is_named_and_exits_4(tmp_path):
    """The GPU image lacks zstandard: without it pytest would stop at collection, so the script
    names what is missing before running anything."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['zstandard'] = None  # find_spec -> None\n")
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, PYTHONPATH=str(hide))
    proc = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    summary = (out / "summary.txt").read_text()
    assert "missing: zstandard (carry the wheels and set WHEELS=.whl)" in summary
    assert sorted(os.listdir(out)) == ["summary.txt"]


def test_dependency_check_lists_every_runtime_requirement():
    """The script's hand-written module list must follow setup.py's install_requires (torch aside:
    the GPU image brings its own), plus pytest; a requirement added to one and not the other
    would let the checks die at collection on the GPU machine."""
    setup_py = open(os.path.join(os.path.dirname(SCRIPT), "..", "setup.py"), encoding="utf-8").read()
    requires = ast.literal_eval(re.search(r"install_requires=(\[.*?\])", setup_py, re.S).group(1))
    names = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in requires} - {"torch"}
    listed = re.search(r"for m in \((.*?)\)", open(SCRIPT, encoding="utf-8").read(), re.S).group(1)
    assert set(ast.literal_eval(f"({listed})")) == names | {"pytest"}

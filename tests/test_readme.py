"""The README's two set-up commands: CI runs the test command exactly, and the main job
(examples/pretrain_gpt_hds.sh) works on the built-in demo."""

import json
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

README = open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()
DEMO_COMMAND = "pip install torch==2.13.0 && pip install -e . && bash examples/pretrain_gpt_hds.sh"
TEST_COMMAND = 'pip install torch==2.13.0 && pip install -e ".[test]" && pytest'


def test_readme_shows_both_commands_and_ci_runs_the_test_command():
    assert DEMO_COMMAND in README.splitlines()
    assert TEST_COMMAND in README.splitlines()
    ci = open(os.path.join(REPO_ROOT, ".ci", "run"), encoding="utf-8").read().strip().splitlines()
    assert ci[-1] == TEST_COMMAND


def test_demo_job_prepares_the_data_and_resumes(tmp_path):
    env = dict(os.environ, OUTPUT_DIR=str(tmp_path / "out"), DEMO_SIZE_MB="0.3", VOCAB_SIZE="500",
               TOKENIZER_DOCS="300", WORKERS="2", PYTHON=sys.executable)
    env.pop("SLURM_JOB_ID", None)
    env.pop("SLURM_SUBMIT_DIR", None)
    script = os.path.join(REPO_ROOT, "examples", "pretrain_gpt_hds.sh")
    first = subprocess.run(["bash", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    manifest_file = tmp_path / "out" / "data" / "demo_manifest.json"
    manifest = json.load(open(manifest_file))
    assert len(manifest["domains"]) == 7
    assert manifest["tokenizer"]["vocab_size"] == 500
    assert f"--data-manifest {manifest_file}" in first.stdout

    second = subprocess.run(["bash", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert second.returncode == 0
    assert second.stdout.count("exists") == 3  # every step found its output and was skipped

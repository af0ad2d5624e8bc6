"""The README's two set-up commands: CI runs the test command exactly (the main job itself
is tested in tests/test_example_script.py)."""

import os

from tests.conftest import REPO_ROOT

README = open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()
DEMO_COMMAND = 'pip install torch==2.13.0 && pip install -e ".[plot]" && bash examples/pretrain_gpt_hds.sh'
TEST_COMMAND = 'pip install torch==2.13.0 && pip install -e ".[test]" && pytest'


def test_readme_shows_both_commands_and_ci_runs_the_test_command():
    assert DEMO_COMMAND in README.splitlines()
    assert TEST_COMMAND in README.splitlines()
    ci = open(os.path.join(REPO_ROOT, ".ci", "run"), encoding="utf-8").read().strip().splitlines()
    assert ci[-1] == TEST_COMMAND

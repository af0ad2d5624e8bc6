"""The README: its two set-up commands (CI runs the test command exactly; the main job itself
is tested in tests/test_example_script.py), and its parallel-model example runs as written."""

import os
import re

from tests.conftest import REPO_ROOT

README = open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()
DEMO_COMMAND = 'pip install torch==2.13.0 && pip install -e ".[plot]" && bash examples/pretrain_gpt_hds.sh'
TEST_COMMAND = 'pip install torch==2.13.0 && pip install -e ".[test]" && pytest'


def test_readme_shows_both_commands_and_ci_runs_the_test_command():
    assert DEMO_COMMAND in README.splitlines()
    assert TEST_COMMAND in README.splitlines()
    ci = open(os.path.join(REPO_ROOT, ".ci", "run"), encoding="utf-8").read().strip().splitlines()
    assert ci[-1] == TEST_COMMAND


def test_parallel_model_example_runs(capsys):
    """The README's parallel-model example runs as written (single process)."""
    section = README[README.index("## Parallel model"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["0", "1", "2"]
    assert all(float(line.split()[1]) > 0 for line in lines)

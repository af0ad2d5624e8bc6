"""The README and the docs: the README's two set-up commands (CI runs the test command exactly;
the demo job itself is tested in tests/test_example_script.py), the parallel-model example of
docs/training.md runs as written, their links resolve, and every command in their bash blocks
names scripts, tools, modules, test paths and flags that exist. (docs/experiments/ records
commands as they were run on their date and is left out.)"""

import os
import pathlib
import re
import shlex

import pytest

from megatron_hds.arguments import build_parser
from tests.conftest import REPO_ROOT

ROOT = pathlib.Path(REPO_ROOT)
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
DEMO_COMMAND = 'pip install torch==2.13.0 && pip install -e ".[plot]" && bash examples/pretrain_gpt_hds.sh'
TEST_COMMAND = 'pip install torch==2.13.0 && pip install -e ".[test]" && pytest'
PRETRAIN_FLAGS = set(build_parser()._option_string_actions)


def test_readme_shows_both_commands_and_ci_runs_the_test_command():
    assert DEMO_COMMAND in README.splitlines()
    assert TEST_COMMAND in README.splitlines()
    ci = open(os.path.join(REPO_ROOT, ".ci", "run"), encoding="utf-8").read().strip().splitlines()
    assert ci[-1] == TEST_COMMAND


def test_readme_stays_short():
    assert len(README.splitlines()) <= 250


def test_parallel_model_example_runs(capsys):
    """The parallel-model example of docs/training.md runs as written (single process)."""
    training = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    section = training[training.index("## Parallel model"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "docs/training.md", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["0", "1", "2"]
    assert all(float(line.split()[1]) > 0 for line in lines)


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page):
    text = page.read_text(encoding="utf-8")
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        path = target.split("#")[0]
        if path and not re.match(r"[a-z]+://", path) and not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def _commands(text: str):
    """The commands of the page's bash blocks: token lists, split at &&, ; and |, with leading
    VAR=value assignments dropped; a line that starts with a flag is a list of pretrain flags."""
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            command = []
            for token in tokens + ["&&"]:
                if token in ("&&", ";", "|", "||"):
                    while command and re.match(r"^[A-Z_]+=", command[0]):
                        command.pop(0)
                    if command:
                        yield command
                    command = []
                else:
                    command.append(token)


def _flags(tokens):
    """--flag names among tokens, and the pretrain flags inside --extra-args=...."""
    own, pretrain = [], []
    for token in tokens:
        if not token.startswith("--"):
            continue
        name, _, value = token.partition("=")
        own.append(name)
        if name == "--extra-args":
            pretrain += [t for t in shlex.split(value) if t.startswith("--")]
    return own, pretrain


def _check(command) -> list:
    """What is wrong with one command (empty when it names only what exists)."""
    problems = []
    if command[0].startswith("--"):  # flags to add to a pretrain command
        return [f"unknown pretrain flag {f}" for f in _flags(command)[0] if f not in PRETRAIN_FLAGS]
    program = os.path.basename(command[0])
    if program in ("bash", "sbatch"):
        scripts = [t for t in command if t.endswith(".sh")]
        return [f"no script {s}" for s in scripts if not (ROOT / s).is_file()]
    if program == "pytest" or command[1:3] == ["-m", "pytest"]:
        paths = [t.split("::")[0] for t in command[1:] if t.startswith("tests")]
        return [f"no test path {p}" for p in paths if not (ROOT / p).exists()]
    if program not in ("python", "python3", "torchrun"):
        return []
    if "-m" in command:
        module = command[command.index("-m") + 1]
        rest = command[command.index("-m") + 2:]
        if module == "megatron_hds.training.pretrain":
            own, _ = _flags(rest)
            return [f"unknown pretrain flag {f}" for f in own if f not in PRETRAIN_FLAGS]
        source = ROOT / (module.replace(".", "/") + ".py")
    else:
        script = next((t for t in command if t.endswith(".py")), None)
        if script is None:
            return []
        source = ROOT / script
        rest = command[command.index(script) + 1:]
    if not source.is_file():
        return [f"no file {source.relative_to(ROOT)}"]
    text = source.read_text(encoding="utf-8")
    own, pretrain = _flags(rest)
    problems += [f"{source.name} has no flag {f}" for f in own if f'"{f}"' not in text]
    problems += [f"unknown pretrain flag {f} in --extra-args" for f in pretrain if f not in PRETRAIN_FLAGS]
    return problems


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_commands_name_what_exists(page):
    problems = [f"{' '.join(command)}: {problem}"
                for command in _commands(page.read_text(encoding="utf-8")) for problem in _check(command)]
    assert not problems, "\n".join(problems)


def test_the_command_check_can_fail():
    page = "```bash\npython tools/bench_model.py --model tiny --no-such-flag\nbash examples/missing.sh\n" \
           "python -m megatron_hds.training.pretrain --num-layers 2 --hidden-sise 8\n```\n"
    problems = [p for command in _commands(page) for p in _check(command)]
    assert problems == ["bench_model.py has no flag --no-such-flag", "no script examples/missing.sh",
                        "unknown pretrain flag --hidden-sise"]

"""The README's parallel-model example runs as written (single process)."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_parallel_model_example_runs(capsys):
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Parallel model"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["0", "1", "2"]
    assert all(float(line.split()[1]) > 0 for line in lines)

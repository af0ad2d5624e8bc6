"""The package's shape: no import cycles between megatron_hds modules, modules and functions of a
readable size, and an install that puts the kernels under megatron_hds (a top-level `kernels`
package would clash with the registry's package of that name) and runs from anywhere."""

import ast
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

ROOT = pathlib.Path(REPO_ROOT)
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _library_modules() -> dict[str, pathlib.Path]:
    """Installed module name -> source file: megatron_hds/ and kernels/ (which installs as
    megatron_hds.kernels)."""
    modules = {}
    for package, folder in (("megatron_hds", ROOT / "megatron_hds"), ("megatron_hds.kernels", ROOT / "kernels")):
        for path in sorted(folder.rglob("*.py")):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imported(module: str, path: pathlib.Path, modules: dict) -> set[str]:
    """The megatron_hds modules that `module` imports anywhere in its file (function-level
    imports included); `from package import name` counts as the submodule when name is one."""
    def known(name: str):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets.update(known(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            targets.update(known(f"{base}.{alias.name}") if f"{base}.{alias.name}" in modules else known(base)
                           for alias in node.names)
    return {t for t in targets if t and t.startswith("megatron_hds") and t != module}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles found by a depth-first walk (at least one for every group of modules that import
    each other), each as a path that returns to its start."""
    found, state = [], {}  # state: 1 while on the current path, 2 when finished

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_the_import_graph_has_no_cycles():
    modules = _library_modules()
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    assert graph["megatron_hds.training.trainer"], "the parser found no imports: the test would pass vacuously"
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_modules_and_functions_stay_readable():
    too_long = []
    for name, path in _library_modules().items():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}(): {length} lines")
    assert not too_long, (f"over {MAX_MODULE_LINES} lines a module or {MAX_FUNCTION_LINES} a function: "
                          + "; ".join(too_long))


def test_setup_installs_nothing_outside_megatron_hds():
    """setup.py's packages, read by running it (in a fresh interpreter) with setuptools.setup replaced."""
    read = ("import json, runpy, setuptools; setuptools.setup = lambda **kw: print(json.dumps("
            "{k: kw.get(k) for k in ('packages', 'package_dir', 'py_modules')})); runpy.run_path('setup.py')")
    proc = subprocess.run([sys.executable, "-c", read], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    captured = json.loads(proc.stdout.strip().splitlines()[-1])
    packages = captured["packages"]
    assert "megatron_hds.kernels" in packages and captured["package_dir"]["megatron_hds.kernels"] == "kernels"
    outside = [p for p in packages if p != "megatron_hds" and not p.startswith("megatron_hds.")]
    assert not outside and not captured.get("py_modules"), f"top-level packages or modules installed: {outside}"
    # The kernels import each other by their installed name, never as a top-level `kernels`.
    for path in (ROOT / "kernels").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not any(n == "kernels" or n.startswith("kernels.") for n in names), f"{path}: imports {names}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A non-editable install (pip install --target) of a copy of the package sources."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        pytest.skip("pip is not available in this interpreter")
    source, target = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("site")
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "build")
    for name in ("setup.py", "setup.cfg", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("megatron_hds", "kernels"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), str(source)], capture_output=True, text=True)
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"pip cannot build here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


def test_the_install_has_no_top_level_kernels_package(installed):
    assert not (installed / "kernels").exists()
    assert (installed / "megatron_hds" / "kernels" / "dispatch.py").is_file()


@pytest.mark.parametrize("module", ["megatron_hds.training.pretrain", "megatron_hds.evaluation.downstream"])
def test_the_installed_entry_points_run_from_another_directory(installed, tmp_path, module):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    check = subprocess.run([sys.executable, "-c", "import megatron_hds.kernels as k; print(k.__file__)"], env=env,
                           cwd=tmp_path, capture_output=True, text=True)
    assert check.stdout.startswith(str(installed)), check.stdout + check.stderr  # not the checkout's copy
    proc = subprocess.run([sys.executable, "-m", module, "--help"], env=env, cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("usage:")


def test_running_from_the_checkout_does_not_shadow_the_registry_kernels_package(tmp_path):
    """From the checkout's root (python -m, pytest, PYTHONPATH=checkout) `import kernels` is the
    registry's package that transformers imports, never the checkout's folder; with no such
    package it fails as if nothing were there. The checkout's copy still imports as
    megatron_hds.kernels."""
    import importlib.metadata

    try:
        importlib.metadata.version("kernels")
        registry_installed = True
    except importlib.metadata.PackageNotFoundError:
        registry_installed = False
    probe = "import kernels, megatron_hds.kernels as ours; print(kernels.__file__, ours.cross_entropy_loss.__name__)"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
    if registry_installed:
        assert proc.returncode == 0, proc.stderr
        path, name = proc.stdout.split()
        assert not path.startswith(str(ROOT / "kernels")) and name == "cross_entropy_loss", proc.stdout
    else:
        assert "No module named 'kernels'" in proc.stderr, proc.stdout + proc.stderr
    # No site-packages (-S): nothing but the checkout could provide `kernels`.
    bare = subprocess.run([sys.executable, "-S", "-c", "import kernels"], cwd=ROOT, capture_output=True, text=True)
    assert bare.returncode != 0 and "ModuleNotFoundError: No module named 'kernels'" in bare.stderr, bare.stderr
    assert subprocess.run([sys.executable, "-S", "-c", "import sys; print(sys.path)"], cwd=ROOT,
                          capture_output=True, text=True).stdout.startswith("['',")

"""Fixtures of the kernel tests: one torch thread (small ops on 2 shared cores), the
Triton kernel modules, skipped where Triton cannot run (no CUDA and no interpreter), and
the compile-for-a-GPU check."""

import importlib
import os
import subprocess
import sys
import tempfile

import pytest
import torch

from megatron_hds import kernels


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def triton_module(name: str):
    pytest.importorskip("triton")
    usable, _, reason = kernels.dispatch._triton_probe()
    if not usable:
        pytest.skip(f"Triton cannot run here: {reason}")
    return importlib.import_module(f"megatron_hds.kernels.{name}")


def backends_for_cpu_tensors() -> list:
    """Backends a test on CPU tensors can force: torch, and Triton only under the interpreter
    (on a GPU machine the compiled kernels take CUDA tensors only)."""
    return ["torch", "triton"] if kernels.dispatch._triton_probe()[1] == "cpu" else ["torch"]


@pytest.fixture
def norms():
    return triton_module("norms")


@pytest.fixture
def ce():
    return triton_module("cross_entropy")


@pytest.fixture
def sketch():
    return triton_module("sketch")


@pytest.fixture
def device(norms):
    """Where the kernels run: CPU tensors under the interpreter, CUDA tensors when compiled."""
    return torch.device("cpu" if norms.INTERPRETED else "cuda")


def compile_for_gpu_target(source: str) -> None:
    """Run `source` (a script that triton.compile()s kernels for a GPU target) in a process
    without TRITON_INTERPRET, so the real compiler sees the kernels; skip where this Triton
    install has no ptxas."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # Outside the checkout: its megatron_hds/ would shadow an installed package that has the kernels.
    proc = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir())
    if proc.returncode and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("no ptxas in this Triton install")
    assert proc.returncode == 0, proc.stderr[-3000:]

"""Fixtures of the kernel tests: one torch thread (small ops on 2 shared cores), and the
Triton kernel modules, skipped where Triton cannot run (no CUDA and no interpreter)."""

import importlib

import pytest
import torch

import kernels


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def triton_module(name: str):
    pytest.importorskip("triton")
    if "triton" not in kernels.available_backends():
        pytest.skip("Triton cannot run here (no CUDA and TRITON_INTERPRET unset)")
    return importlib.import_module(f"kernels.{name}")


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

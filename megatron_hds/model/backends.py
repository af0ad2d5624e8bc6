"""Optional fused implementations, probed once: transformer-engine and apex, with a torch fallback.

Model code asks this module for a norm layer and never imports the optional packages
itself, so a missing (or broken) package means the torch path, never an ImportError.
Every backend's norm exposes the same parameter names (``weight``, and ``bias`` for
LayerNorm), so checkpoints do not depend on which one ran.
"""
from __future__ import annotations

import functools
import importlib
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backends:
    transformer_engine: Optional[ModuleType]  # transformer_engine.pytorch
    apex_layer_norm: Optional[Callable]  # apex fused_layer_norm_affine(x, weight, bias, shape, eps)
    apex_rms_norm: Optional[Callable]  # apex fused_rms_norm_affine(x, weight, shape, eps)


def _try_import(name: str) -> Optional[ModuleType]:
    try:
        return importlib.import_module(name)
    except Exception:  # a broken install (ABI mismatch, missing CUDA) must not stop model import
        return None


@functools.lru_cache(maxsize=None)
def probe() -> Backends:
    """Import the optional packages once per process."""
    te = _try_import("transformer_engine.pytorch")
    apex_norm = _try_import("apex.normalization.fused_layer_norm")
    found = Backends(
        transformer_engine=te,
        apex_layer_norm=getattr(apex_norm, "fused_layer_norm_affine", None),
        apex_rms_norm=getattr(apex_norm, "fused_rms_norm_affine", None),
    )
    logger.info("optional backends: transformer_engine=%s apex_layer_norm=%s apex_rms_norm=%s",
                te is not None, found.apex_layer_norm is not None, found.apex_rms_norm is not None)
    return found


class LayerNorm(nn.Module):
    """LayerNorm with parameters ``weight``/``bias``; apex's fused kernel on GPU when present."""

    def __init__(self, hidden_size: int, eps: float, device=None, dtype=torch.float32):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(hidden_size, device=device, dtype=dtype))
        fused = probe().apex_layer_norm
        self._fused = fused if fused is not None and self.weight.device.type == "cuda" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused is not None:
            return self._fused(x, self.weight, self.bias, self.weight.shape, self.eps)
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """RMSNorm with parameter ``weight``; apex's fused kernel on GPU when present."""

    def __init__(self, hidden_size: int, eps: float, device=None, dtype=torch.float32):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        fused = probe().apex_rms_norm
        self._fused = fused if fused is not None and self.weight.device.type == "cuda" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused is not None:
            return self._fused(x, self.weight, self.weight.shape, self.eps)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


_warned_no_te = False


def build_norm(normalization: str, hidden_size: int, eps: float, transformer_impl: str,
               device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The norm layer for this config: transformer-engine's when asked for and usable, else ours."""
    global _warned_no_te
    te = probe().transformer_engine
    if transformer_impl == "transformer_engine":
        if te is not None and torch.device(device).type == "cuda":
            cls = te.LayerNorm if normalization == "LayerNorm" else te.RMSNorm
            return cls(hidden_size, eps=eps, params_dtype=dtype, device=device)
        if not _warned_no_te:
            logger.warning("--transformer-impl transformer_engine asked for, but transformer-engine is not "
                           "importable or the device is not a GPU: using the torch implementation")
            _warned_no_te = True
    cls = LayerNorm if normalization == "LayerNorm" else RMSNorm
    return cls(hidden_size, eps, device=device, dtype=dtype)

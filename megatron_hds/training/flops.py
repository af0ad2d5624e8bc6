"""Model FLOPs and device peaks: the one formula and the one peak table behind every MFU
figure (the trainer's log line and tools/bench_model.py).

Model FLOPs per token follow the PaLM / Megatron estimate: 6 FLOPs per matmul parameter
(forward multiply-add 2, backward twice that) plus the attention score and value matmuls,
12 L h s (causal masking not discounted). Matmul parameters are the layers' linear weights
and the output layer (padded vocabulary x hidden, once, tied or not). Embedding and
position-table lookups, biases and norms do no matmul and are left out. Activation
recompute is not counted (model FLOPs, not hardware FLOPs), so recompute lowers MFU, as
in Megatron.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # annotations only: the metrics reader imports this module without the config
    from megatron_hds.config import ModelConfig

# Dense (no sparsity) datasheet peaks in FLOP/s per device, by precision (fp32: the plain
# FP32 rate, TF32 tensor cores off, which is torch's default for matmuls). Matched against
# the device name as a substring, most specific entry first ("H100 PCIe" before "H100").
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("GH200", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("H200", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12}),
    ("H100", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),  # SXM
    ("H800", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}),
    ("A800", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}),
    ("L40S", {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12}),
    ("A10G", {"bf16": 70e12, "fp16": 70e12, "fp32": 31.2e12}),
)


def matmul_parameters(config: ModelConfig, tensor_parallel_size: int = 1) -> int:
    """Parameters of the whole model that take part in a matmul (see the module docstring)."""
    h, f, layers = config.hidden_size, config.ffn_hidden_size, config.num_layers
    fc1_out = 2 * f if config.swiglu else f
    per_layer = 3 * h * h + h * h + h * fc1_out + f * h  # QKV, attention output, MLP in, MLP out
    return layers * per_layer + config.padded_vocab_size(tensor_parallel_size) * h


def model_flops_per_token(config: ModelConfig, tensor_parallel_size: int = 1) -> float:
    """Training model FLOPs per token: 6 x matmul parameters + 12 L h s."""
    return (6.0 * matmul_parameters(config, tensor_parallel_size)
            + 12.0 * config.num_layers * config.hidden_size * config.seq_length)


def device_name(device: Any) -> Optional[str]:
    """Marketing name of an accelerator (e.g. 'NVIDIA H100 80GB HBM3'); None for a CPU or a
    device type whose torch module cannot name its devices."""
    import torch  # here, so that reading metrics (plots, reports) does not load torch

    device = torch.device(device)
    if device.type == "cpu":
        return None
    get_name = getattr(torch.get_device_module(device.type), "get_device_name", None)
    return get_name(device) if get_name is not None else None


def peak_flops(name: Optional[str], precision: str) -> Optional[float]:
    """Datasheet peak FLOP/s of one device at a precision (fp32, bf16, fp16), or None when the
    device is unknown (a CPU, an unlisted accelerator), which turns MFU reporting off rather
    than reporting a guess."""
    accepted = PEAK_FLOPS[0][1]  # every entry has the same precisions
    if precision not in accepted:
        raise ValueError(f"unknown precision {precision!r}; accepted: {', '.join(accepted)}")
    if not name:
        return None
    for key, peaks in PEAK_FLOPS:
        if key.lower() in name.lower():
            return peaks[precision]
    return None


def mfu(tokens_per_sec: float, flops_per_token: float, peak: float, num_devices: int) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of all devices."""
    return tokens_per_sec * flops_per_token / (peak * num_devices)

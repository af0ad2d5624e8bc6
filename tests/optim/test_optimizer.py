"""Optimizer: weight-decay groups, AdamW parity, fp32 masters, fp16 loss scaling, clipping, resume."""

import copy
import io
import math

import pytest
import torch
from torch import nn

from megatron_hds.optim import build_optimizer
from megatron_hds.optim.optimizer import (
    CLIP_EPS,
    DynamicLossScaler,
    FP32Optimizer,
    LossScalerConfig,
    MixedPrecisionOptimizer,
    adamw_impl_kwargs,
    clip_grads_by_norm_,
    local_grad_norm,
)


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))  # no "bias"/"norm" in the name: caught by 1-D / module


class TinyGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(16, 8)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 12)
        self.rms = RMSNorm(12)
        self.out = nn.Linear(12, 4, bias=False)

    def forward(self, tokens):
        return self.out(self.rms.scale * self.fc(self.norm(self.embedding(tokens))))


def _seeded_model(dtype=torch.float32):
    torch.manual_seed(0)
    return TinyGPT().to(dtype)


def _fake_grads(model, seed, scale=1.0, dtype=None):
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        grad = torch.randn(param.shape, generator=generator) * scale
        param.grad = grad.to(dtype or param.dtype)


def test_param_groups_split_by_name_and_shape():
    optimizer = build_optimizer(_seeded_model(), lr=1e-3, weight_decay=0.1)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["decay"]["param_names"] == ["embedding.weight", "fc.weight", "out.weight"]
    assert groups["no_decay"]["param_names"] == ["norm.weight", "norm.bias", "fc.bias", "rms.scale"]
    assert (groups["decay"]["weight_decay"], groups["no_decay"]["weight_decay"]) == (0.1, 0.0)
    assert (groups["decay"]["wd_mult"], groups["no_decay"]["wd_mult"]) == (1.0, 0.0)
    # (name, param) pairs work too; a shared param is optimized once
    model = _seeded_model()
    pairs = list(model.named_parameters()) + [("alias.weight", model.fc.weight)]
    optimizer = build_optimizer(pairs, lr=1e-3)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 7


def test_foreach_on_cpu_never_fused():
    params = list(_seeded_model().parameters())
    assert adamw_impl_kwargs(params) == {"foreach": True}
    optimizer = build_optimizer(_seeded_model(), lr=1e-3)
    assert optimizer.optimizer.defaults["foreach"] is True
    assert not optimizer.optimizer.defaults.get("fused")


def test_one_step_equals_torch_adamw_and_the_formula():
    model = _seeded_model()
    reference = copy.deepcopy(model)
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    assert isinstance(optimizer, FP32Optimizer)
    decay = [reference.embedding.weight, reference.fc.weight, reference.out.weight]
    exempt = [reference.norm.weight, reference.norm.bias, reference.fc.bias, reference.rms.scale]
    torch_adamw = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": exempt, "weight_decay": 0.0}],
        lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=True,
    )
    before = model.fc.weight.detach().clone()
    _fake_grads(model, 1)
    _fake_grads(reference, 1)
    result = optimizer.step()
    torch_adamw.step()
    assert not result.skipped and result.loss_scale == 1.0
    for mine, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    # First AdamW step: decoupled decay, then lr * g / (|g| + eps) (bias corrections cancel).
    grad = model.fc.weight.grad
    expected = before * (1 - 1e-2 * 0.1) - 1e-2 * grad / (grad.abs() + 1e-8)
    torch.testing.assert_close(model.fc.weight.detach(), expected, rtol=1e-6, atol=1e-7)


def test_loss_scaler_hysteresis_backoff_growth_and_floor():
    scaler = DynamicLossScaler(LossScalerConfig(initial_scale=8.0, min_scale=2.0, growth_interval=3, hysteresis=2))
    scaler.update(found_inf=True)
    assert scaler.scale == 8.0  # the first overflow is absorbed by hysteresis
    scaler.update(found_inf=True)
    assert scaler.scale == 4.0
    scaler.update(found_inf=True)
    assert scaler.scale == 2.0  # hysteresis stays spent until the next growth
    scaler.update(found_inf=True)
    assert scaler.scale == 2.0  # min_scale floor
    for _ in range(2):
        scaler.update(found_inf=False)
    assert scaler.scale == 2.0
    scaler.update(found_inf=False)
    assert scaler.scale == 4.0 and scaler.hysteresis_tracker == 2
    scaler.update(found_inf=True)
    assert scaler.scale == 4.0  # hysteresis restored by the growth
    defaults = LossScalerConfig()
    assert (defaults.initial_scale, defaults.growth_interval, defaults.hysteresis, defaults.min_scale,
            defaults.backoff_factor) == (2.0**32, 1000, 2, 1.0, 0.5)


def test_fp16_skips_inf_steps_and_otherwise_matches_fp32():
    config = LossScalerConfig(initial_scale=1024.0, hysteresis=1, growth_interval=1000)
    model = _seeded_model(torch.float16)
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.1, loss_scaler=config)
    assert isinstance(optimizer, MixedPrecisionOptimizer) and optimizer.loss_scale == 1024.0
    masters_before = [m.clone() for m in optimizer.master_params()]
    params_before = [p.detach().clone() for p in model.parameters()]
    _fake_grads(model, 2, scale=1024.0)
    model.fc.weight.grad[0, 0] = float("inf")
    seen = []
    result = optimizer.step(clip_grad=1.0, found_inf_reduce=lambda t: seen.append(t.item()))
    assert result.skipped and result.grad_norm is None and seen == [1.0]
    assert optimizer.loss_scale == 512.0
    for before, after in zip(params_before, model.parameters()):
        assert torch.equal(before, after)
    for before, after in zip(masters_before, optimizer.master_params()):
        assert torch.equal(before, after)

    # a clean step on scaled grads equals an fp32 step on the unscaled grads
    optimizer.zero_grad()
    reference = copy.deepcopy(model).float()
    ref_optimizer = build_optimizer(reference, lr=1e-2, weight_decay=0.1)
    _fake_grads(model, 3, scale=512.0)
    for ref_param, param in zip(reference.parameters(), model.parameters()):
        ref_param.grad = param.grad.float() / 512.0
    result = optimizer.step()
    ref_result = ref_optimizer.step()
    assert not result.skipped
    assert result.grad_norm == pytest.approx(ref_result.grad_norm, rel=1e-6)
    # master_params() and model_params() share the optimizer's (grouped) order
    for master, ref_param in zip(optimizer.master_params(), ref_optimizer.model_params()):
        torch.testing.assert_close(master, ref_param.detach(), rtol=1e-6, atol=1e-7)


def test_fp16_scale_loss_does_not_overflow_in_fp16():
    optimizer = build_optimizer(_seeded_model(torch.float16), lr=1e-3)
    scaled = optimizer.scale_loss(torch.tensor(3.0, dtype=torch.float16))
    assert scaled.dtype == torch.float32 and scaled.item() == 3.0 * 2.0**32


def test_bf16_masters_stay_fp32_and_params_follow():
    model = _seeded_model(torch.bfloat16)
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.0)
    assert optimizer.scaler is None and optimizer.loss_scale == 1.0
    masters = optimizer.master_params()
    assert all(m.dtype == torch.float32 for m in masters)
    for _ in range(3):
        optimizer.zero_grad()
        _fake_grads(model, 4)
        optimizer.step()
    for master, param in zip(masters, optimizer.model_params()):
        assert master.dtype == torch.float32 and param.dtype == torch.bfloat16
        assert torch.equal(param.detach(), master.to(torch.bfloat16))
    # updates of 1e-4 are below bf16 resolution for O(1) weights: only the masters keep them
    drift = [(m - p.detach().float()).abs().max().item() for m, p in zip(masters, optimizer.model_params())]
    assert max(drift) > 0


def test_bf16_reads_an_fp32_main_grad_buffer():
    model = _seeded_model(torch.bfloat16)
    optimizer = build_optimizer(model, lr=1e-3)
    for param in model.parameters():
        param.main_grad = torch.full(param.shape, 0.5, dtype=torch.float32)
    optimizer.step()
    assert all(torch.equal(m.grad, torch.full(m.shape, 0.5)) for m in optimizer.master_params())
    optimizer.zero_grad()
    assert all(p.main_grad.abs().sum() == 0 for p in model.parameters())


def test_clip_math():
    grads = [torch.tensor([3.0]), torch.tensor([4.0])]
    assert local_grad_norm(grads) == pytest.approx(5.0)
    coeff = clip_grads_by_norm_(grads, max_norm=1.0, total_norm=5.0)
    assert coeff == pytest.approx(1.0 / (5.0 + CLIP_EPS))
    torch.testing.assert_close(torch.cat(grads), torch.tensor([3.0, 4.0]) / (5.0 + CLIP_EPS))
    untouched = [torch.tensor([0.3, 0.4])]
    assert clip_grads_by_norm_(untouched, max_norm=1.0, total_norm=0.5) == 1.0
    assert torch.equal(untouched[0], torch.tensor([0.3, 0.4]))
    assert clip_grads_by_norm_(untouched, max_norm=1.0, total_norm=math.nan) == 1.0
    with pytest.raises(ValueError, match="max_norm must be > 0, got 0"):
        clip_grads_by_norm_(untouched, 0.0, 1.0)


def test_step_clips_by_the_norm_it_is_given():
    model = _seeded_model()
    optimizer = build_optimizer(model, lr=1e-3)
    _fake_grads(model, 5)
    grads_before = [p.grad.clone() for p in model.parameters()]
    seen = []

    def global_norm(pairs):
        seen.append(len(pairs))
        return 10.0  # what the parallel code says, not the local norm

    result = optimizer.step(clip_grad=2.0, grad_norm_fn=global_norm)
    assert seen == [7] and result.grad_norm == 10.0
    for before, param in zip(grads_before, model.parameters()):
        torch.testing.assert_close(param.grad, before * (2.0 / (10.0 + CLIP_EPS)))


def test_nonfinite_grad_norm_skips_the_step():
    model = _seeded_model()
    optimizer = build_optimizer(model, lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    _fake_grads(model, 6)
    model.out.weight.grad[0, 0] = float("nan")
    result = optimizer.step(clip_grad=1.0)
    assert result.skipped and math.isnan(result.grad_norm)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_state_round_trip_gives_identical_next_steps(dtype):
    scaler = LossScalerConfig(initial_scale=256.0, growth_interval=2) if dtype == torch.float16 else None
    model = _seeded_model(dtype)
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.1, loss_scaler=scaler)
    for seed in range(3):
        optimizer.zero_grad()
        _fake_grads(model, seed, scale=optimizer.loss_scale)
        optimizer.step(clip_grad=1.0)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)

    resumed_model = TinyGPT().to(dtype)  # different init, replaced by the checkpoint
    resumed_model.load_state_dict(saved["model"])
    resumed = build_optimizer(resumed_model, lr=1e-2, weight_decay=0.1, loss_scaler=scaler)
    resumed.load_state_dict(saved["optimizer"])
    assert resumed.loss_scale == optimizer.loss_scale
    for seed in (10, 11):
        for opt, net in ((optimizer, model), (resumed, resumed_model)):
            opt.zero_grad()
            _fake_grads(net, seed, scale=opt.loss_scale)
            opt.step(clip_grad=1.0)
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
    if dtype != torch.float32:
        for a, b in zip(optimizer.master_params(), resumed.master_params()):
            assert torch.equal(a, b)
        assert optimizer.state_dict()["loss_scaler"] == resumed.state_dict()["loss_scaler"]


def test_load_refuses_another_precision():
    state = build_optimizer(_seeded_model(), lr=1e-3).state_dict()
    with pytest.raises(ValueError, match="precision 'fp32' does not match the configured 'bf16'"):
        build_optimizer(_seeded_model(torch.bfloat16), lr=1e-3).load_state_dict(state)


def test_build_validates_its_arguments():
    with pytest.raises(ValueError, match="unknown precision 'fp8'; accepted: fp32, bf16, fp16"):
        build_optimizer(_seeded_model(), lr=1e-3, precision="fp8")
    with pytest.raises(ValueError, match="precision 'bf16' requested but the model params are fp32"):
        build_optimizer(_seeded_model(), lr=1e-3, precision="bf16")
    with pytest.raises(ValueError, match="loss scaling is for fp16 only"):
        build_optimizer(_seeded_model(torch.bfloat16), lr=1e-3, loss_scaler=LossScalerConfig())
    with pytest.raises(ValueError, match=r"betas must be two numbers in \[0, 1\), got \(0.9, 1.5\)"):
        build_optimizer(_seeded_model(), lr=1e-3, betas=(0.9, 1.5))
    with pytest.raises(ValueError, match="hysteresis must be an integer >= 1, got 0"):
        LossScalerConfig(hysteresis=0)
    frozen = _seeded_model()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(frozen, lr=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_params_get_fused_adamw_and_match_cpu():
    cpu_model = _seeded_model(torch.bfloat16)
    gpu_model = copy.deepcopy(cpu_model).to("cuda")
    gpu_optimizer = build_optimizer(gpu_model, lr=1e-3)
    assert gpu_optimizer.optimizer.defaults["fused"] is True
    cpu_optimizer = build_optimizer(cpu_model, lr=1e-3)
    _fake_grads(cpu_model, 7)
    for cpu_param, gpu_param in zip(cpu_model.parameters(), gpu_model.parameters()):
        gpu_param.grad = cpu_param.grad.to("cuda")
    cpu_optimizer.step(clip_grad=1.0)
    gpu_optimizer.step(clip_grad=1.0)
    for a, b in zip(cpu_optimizer.master_params(), gpu_optimizer.master_params()):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-5, atol=1e-6)


def test_bf16_reload_takes_loaded_weights_and_state_bytes_count_masters():
    """After weights are loaded without optimizer state (the trainer then calls
    reload_model_params), the fp32 masters follow them, so the first step starts from the
    loaded weights and not from the initial ones."""
    model = _seeded_model(torch.bfloat16)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    loaded = {name: torch.randn(p.shape).to(torch.bfloat16) for name, p in model.named_parameters()}
    model.load_state_dict(loaded)
    optimizer.reload_model_params()
    for master, param in zip(optimizer.master_params(), optimizer.model_params()):
        assert torch.equal(master, param.float())
    _fake_grads(model, seed=1)
    optimizer.step()
    for name, param in model.named_parameters():  # one small Adam step away from the loaded weights
        assert (param.float() - loaded[name].float()).abs().max() < 0.02, name
    params = list(model.parameters())
    # fp32 master + exp_avg + exp_avg_sq per element, and a 4-byte step counter per tensor.
    assert optimizer.state_bytes() == 12 * sum(p.numel() for p in params) + 4 * len(params)

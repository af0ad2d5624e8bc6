"""Bucketing of the DP gradient all-reduce and the global norm in a single process."""
import torch
from torch import nn

from megatron_hds.parallel.data_parallel import GradientAllReducer, clip_grad_norm_, global_grad_norm
from megatron_hds.parallel.state import ParallelState


def test_buckets_respect_size_and_dtype_and_keep_order():
    params = [nn.Parameter(torch.zeros(256)) for _ in range(5)]  # 1 KiB each
    params.insert(2, nn.Parameter(torch.zeros(8, dtype=torch.float64)))
    frozen = nn.Parameter(torch.zeros(4), requires_grad=False)
    reducer = GradientAllReducer(params + [frozen], dp_group=None, bucket_size_mb=2.5 / 1024)
    sizes = [[p.numel() for p in bucket] for bucket in reducer.buckets]
    assert sizes == [[256, 256], [8], [256, 256], [256]]
    assert [p for b in reducer.buckets for p in b] == params  # order preserved, frozen left out


def test_single_rank_norm_and_clip_match_torch():
    model = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3))
    model(torch.randn(2, 4)).pow(2).sum().backward()
    expected = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
    state = ParallelState.single("cpu")
    assert abs(global_grad_norm(model.parameters(), state) - expected) < 1e-6 * expected
    before = clip_grad_norm_(model.parameters(), expected / 2, state)
    assert abs(before - expected) < 1e-6 * expected
    assert abs(global_grad_norm(model.parameters(), state) - expected / 2) < 1e-4 * expected

"""Bucketing of the DP gradient all-reduce (also overlapped with backward, across ranks) and the
global norm in a single process."""
import dataclasses

import pytest
import torch
from torch import nn

from megatron_hds.config import ModelConfig
from megatron_hds.model.gpt import GPTModel, finalize_model_grads
from megatron_hds.optim.optimizer import clip_grads_by_norm_
from megatron_hds.parallel.data_parallel import GradientAllReducer, global_grad_norm
from megatron_hds.parallel.schedules import forward_backward
from megatron_hds.parallel.state import ParallelState
from tests.distributed import run_distributed


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
    clip_grads_by_norm_([p.grad for p in model.parameters()], expected / 2, global_grad_norm(model.parameters(), state))
    assert abs(global_grad_norm(model.parameters(), state) - expected / 2) < 1e-4 * expected


def test_overlapped_buckets_start_from_the_last_parameters():
    params = [nn.Parameter(torch.zeros(256)) for _ in range(5)]
    reducer = GradientAllReducer(params, dp_group=None, bucket_size_mb=2.5 / 1024, overlap=True)
    assert [p for b in reducer.buckets for p in b] == params[::-1]


# --overlap-grad-reduce across ranks: the same gradients as reducing after the backward, with
# the buckets' all-reduces really started inside it.
_OVERLAP_CONFIG = dict(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=96, seq_length=16,
                       make_vocab_size_divisible_by=16)


def _overlap_worker(tp: int, pp: int, sequence_parallel: bool):
    state = dataclasses.replace(ParallelState.build(tp, pp), sequence_parallel=sequence_parallel)
    g = torch.Generator().manual_seed(state.dp_rank)
    seqs = torch.randint(0, 96, (3, 2, 17), generator=g)
    micro = [dict(tokens=s[:, :-1], labels=s[:, 1:]) for s in seqs]
    grads, started = [], None
    for overlap in (False, True):
        model = GPTModel(ModelConfig(**_OVERLAP_CONFIG), state, seed=3)
        reducer = GradientAllReducer(model.parameters(), state.dp_group, bucket_size_mb=0.01, overlap=overlap)
        forward_backward(model, micro, before_last_backward=reducer.arm if overlap else None)
        if overlap:
            started = (reducer.buckets_started_in_backward, len(reducer.buckets))
            reducer.allreduce()  # before finalize: the buckets hold pre-finalize gradients
            finalize_model_grads(model)
        else:
            finalize_model_grads(model)
            reducer.allreduce()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        assert (grads[1][name] - grad).abs().max() <= 1e-6 * grad.abs().max(), name
    return started


@pytest.mark.parametrize("tp,pp,sp", [(1, 1, False), (2, 1, True), (1, 2, False)], ids=["dp2", "tp2-sp-dp2", "pp2-dp2"])
def test_overlapped_reduce_equals_the_reduce_after_backward(tp, pp, sp):
    """DP=2 alone, with TP=2 and sequence parallelism (norm grads summed over TP after the DP
    average), and with PP=2 (1F1B; tied embeddings summed over the embedding group)."""
    for started, total in run_distributed(_overlap_worker, 2 * tp * pp, tp, pp, sp):
        assert total > 3 and started >= total - 1  # all but at most one bucket started during backward

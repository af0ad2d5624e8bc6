"""Pure rank-layout arithmetic and the shape checks of ParallelState (no processes)."""
import pytest
import torch

from megatron_hds.parallel.state import ParallelState, RankLayout, micro_batches_per_step


def test_formats_example_tp2_pp2_on_4_ranks():
    layout = RankLayout(world_size=4, tp=2, pp=2)
    assert layout.dp == 1
    assert layout.tp_groups() == [[0, 1], [2, 3]]
    assert layout.pp_groups() == [[0, 2], [1, 3]]
    assert layout.dp_groups() == [[0], [1], [2], [3]]
    assert layout.embedding_groups() == [[0, 2], [1, 3]]
    assert layout.model_parallel_groups() == [[0, 1, 2, 3]]


def test_tp_fastest_then_dp_then_pp_on_8_ranks():
    layout = RankLayout(world_size=8, tp=2, pp=2)
    for rank in range(8):
        t, d, p = layout.coords(rank)
        assert rank == t + 2 * d + 4 * p == layout.rank(t, d, p)
    assert layout.tp_groups() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert layout.dp_groups() == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert layout.pp_groups() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout.embedding_groups() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout.model_parallel_groups() == [[0, 1, 4, 5], [2, 3, 6, 7]]


def test_every_rank_is_in_exactly_one_group_of_each_kind():
    layout = RankLayout(world_size=16, tp=2, pp=4)
    for groups in (layout.tp_groups(), layout.dp_groups(), layout.pp_groups(), layout.model_parallel_groups()):
        assert sorted(r for g in groups for r in g) == list(range(16))


def test_single_stage_embedding_group_is_the_stage_itself():
    assert RankLayout(world_size=2, tp=1, pp=1).embedding_groups() == [[0], [1]]


def test_world_not_divisible_is_reported():
    with pytest.raises(ValueError, match="world size 6 is not divisible by .* size 4 x .* size 1"):
        RankLayout(world_size=6, tp=4, pp=1)


def test_model_and_batch_checks():
    state = ParallelState.single("cpu")
    state.layout = RankLayout(world_size=8, tp=2, pp=2)
    with pytest.raises(ValueError, match="num_attention_heads=3 is not divisible by tensor-model-parallel size 2"):
        state.check_model(num_layers=4, num_attention_heads=3)
    with pytest.raises(ValueError, match="num_layers=3 is not divisible by pipeline-model-parallel size 2"):
        state.check_model(num_layers=3, num_attention_heads=4)
    with pytest.raises(ValueError, match="global batch size 6 is not divisible by micro batch size 2 x "
                                         "data-parallel size 2 = 4"):
        state.micro_batches_per_step(6, 2)
    assert micro_batches_per_step(16, 2, 2) == 4


def test_stage_layers_and_single_state():
    state = ParallelState.single(torch.device("cpu"))
    assert state.is_first_stage() and state.is_last_stage()
    assert (state.tp_size, state.pp_size, state.dp_size) == (1, 1, 1)
    assert list(state.layers_of_stage(4)) == [0, 1, 2, 3]
    state.layout, state.rank = RankLayout(world_size=4, tp=1, pp=2), 3  # dp_rank 1, pp_rank 1
    assert list(state.layers_of_stage(4)) == [2, 3]
    assert state.is_last_stage() and not state.is_first_stage()


def test_sequence_parallel_checks_and_activation_shape():
    state = ParallelState.single("cpu")
    assert state.activation_shape(64, 2, 32) == (64, 2, 32)
    state.layout, state.sequence_parallel = RankLayout(world_size=4, tp=4, pp=1), True
    assert state.activation_shape(64, 2, 32) == (16, 2, 32)
    with pytest.raises(ValueError, match="seq_length=30 is not divisible by tensor-model-parallel size 4"):
        state.check_sequence(30)
    state.check_sequence(32)

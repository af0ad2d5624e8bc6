"""Sharded initialisation equals slicing the full initialisation, for any split (no processes)."""
import pytest
import torch

from megatron_hds.parallel.layers import INIT_BLOCK, sharded_normal_


@pytest.mark.parametrize("partition_dim", [0, 1])
@pytest.mark.parametrize("parts", [1, 2, 3, 4, 8])
def test_shards_are_slices_of_the_full_init(partition_dim, parts):
    size = 3 * INIT_BLOCK + 24  # shard boundaries fall inside blocks for most splits
    shape = (size, 5) if partition_dim == 0 else (5, size)
    full = sharded_normal_(torch.empty(shape), 0.5, seed=9, key="w", partition_dim=partition_dim)
    for shard_rows, start in zip([size // parts] * parts, range(0, size, size // parts)):
        shard_shape = list(shape)
        shard_shape[partition_dim] = shard_rows
        shard = sharded_normal_(torch.empty(shard_shape), 0.5, seed=9, key="w",
                                partition_dim=partition_dim, start=start)
        assert torch.equal(shard, full.narrow(partition_dim, start, shard_rows))


def test_values_depend_on_seed_and_key_and_have_the_std():
    a = sharded_normal_(torch.empty(512, 64), 0.02, seed=1, key="a")
    assert torch.equal(a, sharded_normal_(torch.empty(512, 64), 0.02, seed=1, key="a"))
    assert not torch.equal(a, sharded_normal_(torch.empty(512, 64), 0.02, seed=2, key="a"))
    assert not torch.equal(a, sharded_normal_(torch.empty(512, 64), 0.02, seed=1, key="b"))
    assert a.std().item() == pytest.approx(0.02, rel=0.02) and abs(a.mean().item()) < 1e-3
    # Different blocks are not copies of each other.
    assert not torch.equal(a[:INIT_BLOCK], a[INIT_BLOCK:2 * INIT_BLOCK])


def test_low_precision_shard_is_the_rounded_fp32_init():
    full = sharded_normal_(torch.empty(100, 8), 1.0, seed=0, key="x")
    half = sharded_normal_(torch.empty(100, 8, dtype=torch.bfloat16), 1.0, seed=0, key="x")
    assert torch.equal(half, full.to(torch.bfloat16))

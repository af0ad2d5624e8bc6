"""Checkpoint layout, crash safety, RNG round trip, layout checks, retention, and multi-rank
save/load with gloo (whose spawn also checks that the pre-emption signal is agreed over ranks)."""

import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.distributed as dist

from megatron_hds.checkpoint import store as ckpt
from megatron_hds.checkpoint import integrity, layout, rng
from megatron_hds.training import preemption
from tests.distributed import run_distributed


@dataclass
class _Args:
    seq_length: int = 16
    lr: float = 1e-3


def _model_and_optimizer(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return model, opt


def _draws():
    return torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)]


def _save(save_dir, iteration, model=None, **kw):
    model = model if model is not None else {"w": torch.full((2,), float(iteration))}
    return ckpt.save_checkpoint(str(save_dir), iteration, model=model, **kw)


def _save_layout(save_dir, iteration, tp_size, pp_size):
    """A complete TP x PP checkpoint: one thread per (tp, pp) shard acting as its rank."""
    barrier = threading.Barrier(tp_size * pp_size, timeout=60)

    def rank(t, p):
        return _save(save_dir, iteration, model={"w": torch.full((2,), float(10 * t + p))}, tp_rank=t, pp_rank=p,
                     tp_size=tp_size, pp_size=pp_size, rank=t + tp_size * p, barrier=barrier.wait)

    with ThreadPoolExecutor(tp_size * pp_size) as pool:
        futures = [pool.submit(rank, t, p) for p in range(pp_size) for t in range(tp_size)]
    return [f.result() for f in futures][0]


def test_round_trip_restores_model_optimizer_and_rng(tmp_path):
    model, opt = _model_and_optimizer()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    sampler_state = {"cursors": [3, 7], "epochs": [0, 1], "weights": np.array([0.25, 0.75])}
    tracker = {"model-parallel-rng": torch.get_rng_state()}
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    _save(
        tmp_path,
        42,
        model=model,
        optimizer=opt,
        opt_param_scheduler=sched,
        data_sampler=sampler_state,
        mixture_scheduler={"alpha": 0.1},
        args=_Args(),
        rng_tracker_states=tracker,
        extra={"consumed_samples": 1234},
    )
    expected = _draws()
    _draws()  # move every RNG on so restoring has something to undo

    state = ckpt.load_checkpoint(str(tmp_path), tp_rank=0, pp_rank=0, tp_size=1, pp_size=1)
    assert state["iteration"] == 42
    assert state["checkpoint_version"] == 3.0
    assert state["args"] == {"seq_length": 16, "lr": 1e-3}
    assert state["data_sampler"]["cursors"] == [3, 7]
    np.testing.assert_array_equal(state["data_sampler"]["weights"], [0.25, 0.75])
    assert state["mixture_scheduler"] == {"alpha": 0.1}
    assert state["consumed_samples"] == 1234
    assert state["opt_param_scheduler"] == sched.state_dict()

    fresh, fresh_opt = _model_and_optimizer(seed=99)
    fresh.load_state_dict(state["model"])
    fresh_opt.load_state_dict(state["optimizer"])
    for name, t in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], t), name
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(fresh_opt.state_dict()["state"][0][k], v), k

    got_tracker = rng.restore_rng_state(state["rng_state"])
    assert torch.equal(got_tracker["model-parallel-rng"], tracker["model-parallel-rng"])
    t, n, r = _draws()
    assert torch.equal(t, expected[0])
    np.testing.assert_array_equal(n, expected[1])
    assert r == expected[2]


def test_layout_names_and_latest_file(tmp_path):
    assert layout.shard_dirname(3, 0, 1) == "mp_rank_03"
    assert layout.shard_dirname(1, 2, 4) == "mp_rank_01_002"

    final = _save(tmp_path / "pp1", 5)
    assert final == str(tmp_path / "pp1" / "iter_0000005")
    assert os.path.isfile(tmp_path / "pp1" / "iter_0000005" / "mp_rank_00" / "model_optim_rng.pt")
    assert (tmp_path / "pp1" / "latest_checkpointed_iteration.txt").read_text().strip() == "5"

    _save_layout(tmp_path / "pp2", 1234567, 2, 2)
    shards = ["mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000", "mp_rank_01_001"]
    assert sorted(os.listdir(tmp_path / "pp2" / "iter_1234567")) == ["checksums.json", *shards]
    assert os.listdir(tmp_path / "pp2" / "iter_1234567" / "mp_rank_01_001") == ["model_optim_rng.pt"]
    assert (tmp_path / "pp2" / "latest_checkpointed_iteration.txt").read_text().strip() == "1234567"
    assert layout.find_latest_iteration(str(tmp_path / "pp2")) == 1234567
    # nothing else is left next to the checkpoint
    assert sorted(os.listdir(tmp_path / "pp2")) == ["iter_1234567", "latest_checkpointed_iteration.txt"]


def test_crash_before_rename_keeps_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 10)
    real_replace = os.replace

    def fail_on_commit(src, dst):
        if os.path.basename(str(src)).startswith(layout.TMP_PREFIX):
            raise OSError("simulated failure at the commit rename")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", fail_on_commit)
    with pytest.raises(ckpt.CheckpointSaveError, match="simulated failure.*still names iteration 10"):
        _save(tmp_path, 20)
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    # a failed save removes what it wrote
    assert sorted(os.listdir(tmp_path)) == ["iter_0000010", "latest_checkpointed_iteration.txt"]
    assert layout.find_latest_iteration(str(tmp_path)) == 10

    # a process killed in the middle of the write phase (no commit at all) leaves its
    # temporary directory, which loading ignores and the next save removes
    ckpt._prepare(str(tmp_path), 30)
    ckpt._write_shard(str(tmp_path), 30, {"partial": True}, 0, 0, 1)
    assert os.path.isfile(tmp_path / ".tmp_iter_0000030" / "mp_rank_00" / "model_optim_rng.pt")
    assert not os.path.exists(tmp_path / "iter_0000030")
    state = ckpt.load_checkpoint(str(tmp_path), 0, 0, 1, 1)
    assert state["iteration"] == 10 and torch.equal(state["model"]["w"], torch.full((2,), 10.0))

    _save(tmp_path, 40)
    assert sorted(os.listdir(tmp_path)) == ["iter_0000010", "iter_0000040", "latest_checkpointed_iteration.txt"]
    assert ckpt.load_checkpoint(str(tmp_path), 0, 0, 1, 1)["iteration"] == 40


def test_resave_same_iteration_replaces_it(tmp_path):
    _save(tmp_path, 7, model={"w": torch.zeros(2)})
    _save(tmp_path, 7, model={"w": torch.ones(2)})
    assert torch.equal(ckpt.load_checkpoint(str(tmp_path), 0, 0, 1, 1)["model"]["w"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["iter_0000007", "latest_checkpointed_iteration.txt"]


def test_mismatched_tp_pp_refused(tmp_path):
    _save_layout(tmp_path / "tp2", 3, 2, 1)
    with pytest.raises(ValueError, match=r"TP size saved 2 vs current 1"):
        ckpt.load_checkpoint(str(tmp_path / "tp2"), tp_rank=0, pp_rank=0, tp_size=1, pp_size=1)

    _save(tmp_path / "pp1", 3)
    with pytest.raises(ValueError, match=r"PP size saved 1 vs current 2") as err:
        ckpt.load_checkpoint(str(tmp_path / "pp1"), tp_rank=0, pp_rank=0, tp_size=1, pp_size=2)
    assert "data-parallel size may differ" in str(err.value)

    # DP size is not part of the check
    _save(tmp_path / "dp", 3, dp_size=4)
    assert ckpt.load_checkpoint(str(tmp_path / "dp"), 0, 0, 1, 1)["parallel"]["dp_size"] == 4


def test_missing_checkpoint(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert layout.find_latest_iteration(str(empty)) is None
    assert layout.find_latest_iteration(str(tmp_path / "absent")) is None
    with pytest.raises(FileNotFoundError, match=str(empty)):
        ckpt.load_checkpoint(str(empty), 0, 0, 1, 1)

    (empty / "latest_checkpointed_iteration.txt").write_text("9\n")
    with pytest.raises(FileNotFoundError, match="iter_0000009"):
        ckpt.load_checkpoint(str(empty), 0, 0, 1, 1)
    (empty / "latest_checkpointed_iteration.txt").write_text("release\n")
    with pytest.raises(ValueError, match="'release'"):
        layout.find_latest_iteration(str(empty))

    _save_layout(tmp_path / "one", 2, 2, 1)
    with pytest.raises(integrity.CheckpointDamagedError, match="iter_0000003 does not exist"):
        ckpt.load_checkpoint(str(tmp_path / "one"), tp_rank=0, pp_rank=0, tp_size=2, pp_size=1, iteration=3)
    # A single process cannot commit a TP=2 checkpoint of which it wrote one shard.
    with pytest.raises(ckpt.CheckpointSaveError, match=r"shards \['mp_rank_01'\] .* were not written"):
        _save(tmp_path / "one", 3, tp_rank=0, tp_size=2)
    assert layout.find_latest_iteration(str(tmp_path / "one")) == 2
    assert sorted(os.listdir(tmp_path / "one")) == ["iter_0000002", "latest_checkpointed_iteration.txt"]


def test_keep_last_n(tmp_path):
    for it in range(1, 6):
        _save(tmp_path / "two", it, keep_last_n=2)
        _save(tmp_path / "all", it)
    assert layout.list_iterations(str(tmp_path / "two")) == [4, 5]
    assert layout.list_iterations(str(tmp_path / "all")) == [1, 2, 3, 4, 5]
    _save(tmp_path / "two", 6, keep_last_n=1)
    assert layout.list_iterations(str(tmp_path / "two")) == [6]
    with pytest.raises(ValueError, match="keep_last_n"):
        _save(tmp_path / "two", 7, keep_last_n=0)


def _layout_checks(rank, root):
    """Ranks with different (tp, pp, dp) coordinates save and reload their shards."""
    # rank layout: tp fastest, then dp, then pp
    layouts = {
        "tp2_dp2": dict(tp_size=2, dp_size=2, pp_size=1),
        "pp2_dp2": dict(tp_size=1, dp_size=2, pp_size=2),
    }
    for name, sizes in layouts.items():
        tp, dp, pp = sizes["tp_size"], sizes["dp_size"], sizes["pp_size"]
        coords = dict(tp_rank=rank % tp, dp_rank=(rank // tp) % dp, pp_rank=rank // (tp * dp))
        save_dir = os.path.join(root, name)
        model = {"w": torch.full((3,), float(10 * coords["tp_rank"] + coords["pp_rank"])), "dp": coords["dp_rank"]}
        for it in (1, 2):
            ckpt.save_checkpoint(
                save_dir, it, model=model, rank=rank, barrier=dist.barrier, keep_last_n=1, **coords, **sizes
            )
        expected = sorted(layout.shard_dirname(t, p, pp) for t in range(tp) for p in range(pp))
        assert sorted(os.listdir(os.path.join(save_dir, "iter_0000002"))) == ["checksums.json", *expected]
        assert sorted(os.listdir(save_dir)) == ["iter_0000002", "latest_checkpointed_iteration.txt"]
        state = ckpt.load_checkpoint(save_dir, coords["tp_rank"], coords["pp_rank"], tp, pp)
        assert torch.equal(state["model"]["w"], model["w"])
        assert state["model"]["dp"] == 0, "only dp_rank 0 writes its shard"
        assert state["parallel"] == {"tp_size": tp, "pp_size": pp, "dp_size": dp, **{
            k: coords[k] for k in ("tp_rank", "pp_rank")}}
        with pytest.raises(ValueError, match="TP=1, PP=1"):
            ckpt.load_checkpoint(save_dir, 0, 0, tp_size=1, pp_size=1)
        dist.barrier()


def _agree_checks(rank):
    """Only rank 1 gets SIGUSR1; every rank must decide to save and exit."""
    handler = preemption.SignalSaveHandler()
    try:
        assert not handler.should_save_and_exit()
        if rank == 1:
            os.kill(os.getpid(), signal.SIGUSR1)
            deadline = time.monotonic() + 5
            while not handler.signal_received() and time.monotonic() < deadline:
                time.sleep(0.01)
        assert handler.signal_received() == (rank == 1)
        assert handler.should_save_and_exit(), f"rank {rank} did not learn of rank 1's signal"
    finally:
        handler.close()
    group = dist.new_group([0, 1])  # collective over the world, used by ranks 0 and 1 only
    if rank < 2:
        assert preemption.agree(rank == 0, group) is True
        assert preemption.agree(False, group) is False


def _multi_rank_worker(root):
    rank = dist.get_rank()
    _layout_checks(rank, root)
    _agree_checks(rank)


def test_multi_rank_save_load_and_signal_agreement(tmp_path):
    # One 4-rank gloo run for both (spawning is the expensive part on a small machine).
    run_distributed(_multi_rank_worker, 4, str(tmp_path))

"""A restarted run cuts metrics.jsonl back to where it starts: to the size its checkpoint recorded,
or, starting over, to where the killed attempt with the same configuration began; a line cut
by a kill is always dropped; another run's log is left alone."""

import json

from megatron_hds.training.metrics import encode_record
from megatron_hds.training.restart import cut_metrics_log, log_position

CONFIG = {"train": {"train_iters": 4}, "domains": ["a", "b"]}


def _line(record):
    return encode_record(record) + "\n"


def _config(config=CONFIG, time=1.0):
    return _line({"kind": "config", "time": time, **config})


def _train(iteration):
    return _line({"kind": "train", "iteration": iteration, "loss": 1.0 / iteration})


def test_a_resumed_run_cuts_back_to_its_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_config() + _train(1) + _train(2))
    at_checkpoint = log_position(str(path))
    with open(path, "a") as f:  # the killed attempt went on past the checkpoint, cut mid-line
        f.write(_train(3) + _train(4)[:10])
    cut_metrics_log(str(tmp_path), 2, at_checkpoint, CONFIG)
    assert path.read_text() == _config() + _train(1) + _train(2)


def test_a_restart_from_scratch_drops_the_killed_attempt_of_the_same_run(tmp_path):
    path = tmp_path / "metrics.jsonl"
    other = {**CONFIG, "train": {"train_iters": 9}}
    earlier = _config(other) + _train(1)
    path.write_text(earlier + _config(time=2.0) + _train(1)[:7])
    cut_metrics_log(str(tmp_path), 0, None, CONFIG)
    assert path.read_text() == earlier  # the other run's records stay
    # another configuration starting over: only a cut last line goes
    path.write_text(earlier + _train(2)[:5])
    cut_metrics_log(str(tmp_path), 0, None, CONFIG)
    assert path.read_text() == earlier


def test_logs_that_do_not_match_the_checkpoint_are_left_alone(tmp_path):
    path = tmp_path / "metrics.jsonl"
    content = _config() + _train(1) + _train(2)
    path.write_text(content)
    # recorded for another file, or larger than the file (it was rotated): nothing to cut
    cut_metrics_log(str(tmp_path), 2, {"path": str(tmp_path / "elsewhere.jsonl"), "bytes": 3}, CONFIG)
    cut_metrics_log(str(tmp_path), 2, {"path": str(path), "bytes": len(content) + 100}, CONFIG)
    # a checkpoint without a record (older versions)
    cut_metrics_log(str(tmp_path), 2, None, CONFIG)
    assert path.read_text() == content
    # not at a line end: the file is not what the checkpoint saw
    cut_metrics_log(str(tmp_path), 2, {"path": str(path), "bytes": len(_config()) + 3}, CONFIG)
    assert path.read_text() == content
    assert [json.loads(line)["kind"] for line in content.splitlines()] == ["config", "train", "train"]

"""MTLD against hand-computed values, the C loop against the Python reference, and the sidecar."""

import numpy as np
import pytest

from megatron_hds.data import quality
from megatron_hds.data.quality import load_quality, mtld, mtld_python, quality_path, save_quality

# (tokens, expected MTLD), each worked by hand with threshold 0.72:
HAND_COMPUTED = [
    # No repeats: TTR stays 1, no factor either way -> the sequence length.
    ([1, 2, 3], 3.0),
    # Each repeat drops TTR to 0.5: two full factors per direction -> 4 / 2.
    ([1, 1, 1, 1], 2.0),
    # Forward: 1 2 1 -> TTR 2/3 <= 0.72, one factor; "3" leaves TTR 1 (partial 0) -> 4/1.
    # Backward 3 1 2 1: TTR ends at 3/4, partial (1 - 0.75) / 0.28 -> 4 / 0.892857.
    ([1, 2, 1, 3], (4.0 + 4.0 / ((1 - 0.75) / 0.28)) / 2),
    # Forward: 18 types then 7 repeats reach TTR 18/25 = 0.72 exactly: the threshold
    # counts (<=), one factor, nothing left -> 25. Backward: three factors on the
    # leading 0-pairs, then a segment 0,17..1,0 ends at TTR 18/19 -> partial (1/19)/0.28.
    (list(range(18)) + [0] * 7, (25.0 + 25.0 / (3 + (1 - 18 / 19) / 0.28)) / 2),
    ([], 0.0),
    ([7], 1.0),
]


@pytest.mark.parametrize("implementation", [mtld, mtld_python], ids=["default", "python"])
@pytest.mark.parametrize("tokens,expected", HAND_COMPUTED)
def test_mtld_hand_computed(implementation, tokens, expected):
    assert implementation(tokens) == pytest.approx(expected, rel=1e-12)


def test_c_loop_matches_python_reference():
    if quality.MTLD_BACKEND != "c":
        pytest.skip("C extension not built (pure-Python install)")
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(0, 600))
        vocab = int(rng.choice([3, 50, 2000, 70000, 2**20]))
        tokens = rng.zipf(1.2, size=n) % vocab if trial % 2 else rng.integers(0, vocab, size=n)
        for dtype in (np.uint16, np.int32, np.int64):
            if vocab > np.iinfo(dtype).max:
                continue
            arr = tokens.astype(dtype)
            assert mtld(arr) == mtld_python(arr.tolist()), (trial, dtype)


def test_mtld_rejects_bad_input():
    with pytest.raises(ValueError, match="threshold"):
        mtld([1, 2], threshold=1.5)
    if quality.MTLD_BACKEND == "c":
        with pytest.raises(ValueError, match="-3"):
            mtld(np.array([1, -3, 2]))


def test_lower_diversity_scores_lower():
    rng = np.random.default_rng(1)
    diverse = rng.integers(0, 5000, size=2000)
    repetitive = np.tile(np.arange(20), 100)
    assert mtld(repetitive) < mtld(diverse) / 10


def test_sidecar_round_trip_and_checks(tmp_path):
    prefix = str(tmp_path / "ds")
    values = [0.0, 12.5, 3.25]
    save_quality(quality_path(prefix), values)
    loaded = load_quality(prefix, num_documents=3)
    assert loaded.dtype == np.float32 and loaded.tolist() == values
    with open(quality_path(prefix), "rb") as f:
        assert f.read(6) == b"\x93NUMPY"  # a standard .npy file users can np.load
    with pytest.raises(ValueError, match="3 values but the dataset has 4"):
        load_quality(prefix, num_documents=4)
    with pytest.raises(FileNotFoundError, match="missing_ds"):
        load_quality(str(tmp_path / "missing_ds"))
    np.save(quality_path(prefix), np.zeros(3, dtype=np.float64))
    with pytest.raises(ValueError, match="float32"):
        load_quality(prefix)

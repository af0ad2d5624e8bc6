"""Per-domain GPT datasets: --split ranges, the shuffled document stream and Megatron's
sample index (checked against megatron-core when it is installed), cache reuse and
invalidation, the one-builder protocol across processes, document spans and quality."""

import importlib.util
import multiprocessing
import os
import pickle
import queue
import sys
import types

import numpy as np
import pytest

from megatron_hds.data import gpt_dataset
from megatron_hds.data.gpt_dataset import (
    SPLIT_NAMES,
    GPTDataset,
    build_domain_datasets,
    split_document_ranges,
)
from tests.data.test_indexed_dataset import build


write_dataset = build  # the indexed-dataset tests' builder of small datasets


def random_docs(seed, n_docs=60, max_len=40, vocab=1000):
    """Documents of 1-3 sequences, some empty documents and empty sequences included."""
    rng = np.random.default_rng(seed)
    docs = []
    for j in range(n_docs):
        if j % 17 == 5:
            docs.append([])  # an empty document
            continue
        n_seq = int(rng.integers(1, 4))
        docs.append([rng.integers(0, vocab, int(rng.integers(0, max_len))).tolist() for _ in range(n_seq)])
    return docs


def doc_tokens(docs, j):
    return [t for seq in docs[j] for t in seq]


def stream_of(ds, docs):
    """The epoch's token stream and, for each token, the document it came from."""
    tokens, owners = [], []
    for j in np.asarray(ds.document_index).tolist():
        toks = doc_tokens(docs, j)
        tokens += toks
        owners += [j] * len(toks)
    return np.asarray(tokens, dtype=np.int64), np.asarray(owners, dtype=np.int64)


@pytest.fixture
def domain(tmp_path):
    docs = random_docs(0)
    return write_dataset(tmp_path / "web_text_document", docs), docs


def megatron_oracle():
    """megatron-core's split parser and sample index builder, or skip. Loaded without
    running megatron/core/__init__.py (it imports torch and most of megatron, ~15 s):
    only the two logging/typing imports those modules need are stubbed, and every module
    added here is removed again so later imports see the real package."""
    try:
        spec = importlib.util.find_spec("megatron")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("megatron-core is not installed")
    if "megatron.core" in sys.modules:  # the real package is already loaded (another test)
        try:
            import megatron.core.datasets.blended_megatron_dataset_config as config
            import megatron.core.datasets.helpers as helpers
        except Exception as e:
            pytest.skip(f"megatron-core oracle not importable: {e!r}")
        return config, helpers
    core = os.path.join(list(spec.submodule_search_locations)[0], "core")
    before = set(sys.modules)
    try:
        for name, path in (("megatron.core", core), ("megatron.core.datasets", os.path.join(core, "datasets"))):
            package = types.ModuleType(name)
            package.__path__ = [path]
            sys.modules[name] = package
        utils = types.ModuleType("megatron.core.utils")
        utils.log_single_rank = lambda *args, **kwargs: None
        tokenizers = types.ModuleType("megatron.core.tokenizers")
        tokenizers.MegatronTokenizerBase = object
        sys.modules[utils.__name__] = utils
        sys.modules[tokenizers.__name__] = tokenizers
        import megatron.core.datasets.blended_megatron_dataset_config as config
        import megatron.core.datasets.helpers as helpers
    except Exception as e:  # an uncompiled or different megatron-core: no oracle here
        pytest.skip(f"megatron-core oracle not importable: {e!r}")
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]
    return config, helpers


# -- split ---------------------------------------------------------------------------------


def test_split_ranges_known_values():
    assert split_document_ranges(1000, "969,30,1") == [(0, 969), (969, 999), (999, 1000)]
    # 0.25 * 10 = 2.5 rounds half to even (Python's round, as Megatron uses)
    assert split_document_ranges(10, "1,1,2") == [(0, 2), (2, 5), (5, 10)]
    assert split_document_ranges(7, "1,1,1") == [(0, 2), (2, 5), (5, 7)]
    assert split_document_ranges(5, "99,1") == [(0, 5), (5, 5), (5, 5)]  # padded with 0
    assert split_document_ranges(3, "100") == [(0, 3), (3, 3), (3, 3)]
    assert split_document_ranges(0, "969,30,1") == [(0, 0), (0, 0), (0, 0)]
    assert split_document_ranges(4, "0,0,1") == [(0, 0), (0, 0), (0, 4)]


@pytest.mark.parametrize("bad", ["a,b,c", "9,x", "-1,1,1", "0,0,0", "1,2,3,4", "", "nan,1,1"])
def test_split_errors_name_the_split(bad):
    with pytest.raises(ValueError, match="--split"):
        split_document_ranges(10, bad)
    with pytest.raises(ValueError) as info:
        split_document_ranges(10, bad)
    assert repr(bad) in str(info.value)


def test_split_ranges_match_megatron_core():
    config, _ = megatron_oracle()
    splits = ["969,30,1", "1,1,1", "1,1,2", "98,2", "3,0,7", "0.7,0.2,0.1", "1,0,0", "5,5"]
    for split in splits:
        matrix = config.convert_split_vector_to_split_matrix(config.parse_and_normalize_split(split))
        for n in list(range(0, 60)) + [97, 101, 999, 1000, 1001, 12345, 99991]:
            ours = split_document_ranges(n, split)
            for (begin, end), bookends in zip(ours, matrix):
                if bookends is None:  # Megatron builds no dataset for a zero-weight split
                    assert begin == end, (split, n)
                else:  # the same one-liner as Megatron's builder applies to its matrix
                    assert (begin, end) == (int(round(bookends[0] * n)), int(round(bookends[1] * n))), (split, n)


# -- the sample index and the token stream ---------------------------------------------------


@pytest.mark.parametrize("seq_length", [1, 4, 7, 32, 100])
def test_samples_reconstruct_the_shuffled_stream(tmp_path, domain, seq_length):
    prefix, docs = domain
    ds = GPTDataset(prefix, "train", (3, 55), seq_length, seed=11, cache_dir=str(tmp_path / "c"))
    stream, _ = stream_of(ds, docs)
    assert ds.num_tokens == stream.size
    assert len(ds) == (stream.size - 1) // seq_length
    assert ds.sample_index.shape == (len(ds) + 1, 2)
    for i in range(len(ds)):
        sample = ds[i]
        assert sample.dtype == np.int64 and sample.shape == (seq_length + 1,)
        np.testing.assert_array_equal(sample, stream[i * seq_length : i * seq_length + seq_length + 1])
        if i:
            assert sample[0] == ds[i - 1][-1]  # consecutive samples share one token
    # every token is in some sample except a tail shorter than one sample
    assert stream.size - (len(ds) * seq_length + 1) < seq_length
    np.testing.assert_array_equal(ds[-1], ds[len(ds) - 1])
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]


def test_sample_index_matches_megatron_core(tmp_path, domain):
    _, helpers = megatron_oracle()
    prefix, docs = domain
    lengths = np.asarray([len(doc_tokens(docs, j)) for j in range(len(docs))], dtype=np.int32)
    for document_range, seq_length in (((0, 60), 8), ((5, 40), 3), ((5, 40), 64), ((10, 11), 2)):
        ds = GPTDataset(prefix, "valid", document_range, seq_length, seed=3, cache_dir=str(tmp_path))
        expected = helpers.build_sample_idx(
            lengths, np.asarray(ds.document_index, dtype=np.int32), seq_length, 1, ds.num_tokens, True, True
        )
        np.testing.assert_array_equal(np.asarray(ds.sample_index), expected.astype(np.int64))

    # Megatron's walk starts at (0, 0) even on an empty first document; later rows skip
    # empty documents. A seed whose order starts with empty documents shows both.
    sparse_docs = [[], [], [[1, 2, 3, 4, 5]], [], [[6, 7, 8, 9]]]
    sparse = write_dataset(tmp_path / "sparse_text_document", sparse_docs)
    for seed in range(50):
        ds = GPTDataset(sparse, "train", (0, 5), 2, seed=seed, cache_dir=str(tmp_path))
        if ds.document_offsets[1] == 0:
            break
    else:
        pytest.fail("no seed puts an empty document first")
    sizes = np.asarray([0, 0, 5, 0, 4], dtype=np.int32)
    expected = helpers.build_sample_idx(sizes, np.asarray(ds.document_index, dtype=np.int32), 2, 1, 9, True, True)
    np.testing.assert_array_equal(np.asarray(ds.sample_index), expected.astype(np.int64))
    stream, _ = stream_of(ds, sparse_docs)
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds[i], stream[2 * i : 2 * i + 3])


def test_document_order_is_a_seeded_permutation(tmp_path, domain):
    prefix, _ = domain

    def order(seed, split_name="train", cache="a"):
        return np.asarray(GPTDataset(prefix, split_name, (4, 50), 16, seed, cache_dir=str(tmp_path / cache)).document_index)

    first = order(7)
    np.testing.assert_array_equal(np.sort(first), np.arange(4, 50))
    assert first.dtype == np.int64
    np.testing.assert_array_equal(order(7, cache="b"), first)  # rebuilt from scratch elsewhere: same order
    assert not np.array_equal(order(8), first)
    assert not np.array_equal(order(7, "test"), first)
    other = write_dataset(tmp_path / "code_text_document", random_docs(0))  # same content, other domain
    assert not np.array_equal(np.asarray(GPTDataset(other, "train", (4, 50), 16, 7, cache_dir=str(tmp_path / "a")).document_index), first)


# -- cache -------------------------------------------------------------------------------------


def test_cache_is_reused_and_keyed_by_description(tmp_path, domain, monkeypatch):
    prefix, _ = domain
    cache = tmp_path / "cache"
    built = GPTDataset(prefix, "train", (0, 50), 16, seed=1, cache_dir=str(cache))
    assert all(os.path.isfile(p) and p.startswith(str(cache)) for p in built.cache_paths.values())
    assert built.description_hash in os.path.basename(built.cache_paths["sample_index"])
    files = set(os.listdir(cache))

    real_build = gpt_dataset._build_indices
    calls = []

    def no_build(*args, **kwargs):
        raise AssertionError("indices were rebuilt although they are cached")

    monkeypatch.setattr(gpt_dataset, "_build_indices", no_build)
    loaded = GPTDataset(prefix, "train", (0, 50), 16, seed=1, cache_dir=str(cache))
    assert not loaded.sample_index.flags.owndata and not loaded.sample_index.flags.writeable  # mapped
    np.testing.assert_array_equal(loaded.sample_index, built.sample_index)
    np.testing.assert_array_equal(loaded[3], built[3])
    assert set(os.listdir(cache)) == files  # no temporary files left behind

    def counting_build(*args, **kwargs):
        calls.append(args)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(gpt_dataset, "_build_indices", counting_build)
    for changed in (dict(seq_length=17), dict(seed=2), dict(document_range=(0, 49))):
        kwargs = dict(split_name="train", document_range=(0, 50), seq_length=16, seed=1) | changed
        ds = GPTDataset(prefix, cache_dir=str(cache), **kwargs)
        assert ds.description_hash != built.description_hash
    assert len(calls) == 3
    assert len(os.listdir(cache)) == 4 * len(files)


def test_default_cache_dir_is_beside_the_dataset(tmp_path, domain):
    prefix, _ = domain
    ds = GPTDataset(prefix, "train", (0, 10), 8, seed=0)
    assert os.path.dirname(ds.cache_paths["document_index"]) == str(tmp_path / "cache")


def test_non_builder_without_cache_raises_naming_the_file(tmp_path, domain):
    prefix, _ = domain
    with pytest.raises(FileNotFoundError, match="sample_index|document_index|document_offsets") as info:
        GPTDataset(prefix, "train", (0, 50), 16, seed=1, cache_dir=str(tmp_path / "empty"), is_builder=False)
    assert str(tmp_path / "empty") in str(info.value)
    assert "is_builder" in str(info.value)


def test_barrier_is_called_once_after_building(tmp_path, domain):
    prefix, _ = domain
    cache = str(tmp_path / "c")
    seen = []

    def barrier():
        seen.append(os.path.isdir(cache) and len(os.listdir(cache)) > 0)

    GPTDataset(prefix, "train", (0, 50), 16, seed=1, cache_dir=cache, barrier=barrier)
    assert seen == [True]


def test_pickle_reopens_instead_of_copying(tmp_path, domain):
    prefix, _ = domain
    ds = GPTDataset(prefix, "train", (0, 60), 4, seed=1, cache_dir=str(tmp_path))
    blob = pickle.dumps(ds)
    assert len(blob) < 4096
    again = pickle.loads(blob)
    assert len(again) == len(ds)
    np.testing.assert_array_equal(again[len(ds) // 2], ds[len(ds) // 2])


def _build_or_load(prefix, cache, is_builder, barrier, delay, results):
    import time

    if is_builder:
        time.sleep(delay)  # the loader reaches the barrier first: without it, it would fail
    ds = GPTDataset(prefix, "train", (0, 60), 5, seed=9, cache_dir=cache, is_builder=is_builder, barrier=barrier)
    results.put((is_builder, np.asarray(ds.document_index).copy(), np.asarray(ds.sample_index).copy(), ds[2]))


def test_one_builder_one_loader_across_processes(tmp_path, domain):
    prefix, _ = domain
    cache = str(tmp_path / "shared")
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2, timeout=60), ctx.Queue()
    procs = [ctx.Process(target=_build_or_load, args=(prefix, cache, b, barrier.wait, 0.5, results))
             for b in (True, False)]
    for p in procs:
        p.start()
    got = {}
    try:
        while len(got) < len(procs):
            try:
                is_builder, *arrays = results.get(timeout=1)
                got[is_builder] = arrays
            except queue.Empty:
                # a crashed child never reports: fail now instead of waiting out a timeout
                assert all(p.exitcode in (None, 0) for p in procs), [p.exitcode for p in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    for a, b in zip(got[True], got[False]):
        np.testing.assert_array_equal(a, b)
    here = GPTDataset(prefix, "train", (0, 60), 5, seed=9, cache_dir=str(tmp_path / "local"))
    np.testing.assert_array_equal(got[False][1], here.sample_index)


# -- spans and quality -------------------------------------------------------------------------


@pytest.mark.parametrize("seq_length", [3, 25])
def test_spans_and_quality_match_brute_force(tmp_path, domain, seq_length):
    prefix, docs = domain
    quality = np.random.default_rng(5).uniform(10, 100, len(docs)).astype(np.float32)
    ds = GPTDataset(prefix, "train", (0, 60), seq_length, seed=2, cache_dir=str(tmp_path))
    _, owners = stream_of(ds, docs)
    expected_quality = []
    for i in range(len(ds)):
        window = owners[i * seq_length : i * seq_length + seq_length + 1]
        change = np.flatnonzero(np.diff(window)) + 1
        runs = np.split(window, change)
        expected = np.asarray([(r[0], r.size) for r in runs], dtype=np.int64)
        spans = ds.sample_document_spans(i)
        np.testing.assert_array_equal(spans, expected)
        assert spans[:, 1].sum() == seq_length + 1
        expected_quality.append(quality[window].astype(np.float64).mean())
        assert ds.samples_quality([i], quality)[0] == pytest.approx(expected_quality[-1], rel=1e-12)
    order = np.random.default_rng(0).permutation(len(ds))
    np.testing.assert_allclose(ds.samples_quality(order, quality), np.asarray(expected_quality)[order], rtol=1e-12)
    assert ds.samples_quality([], quality).shape == (0,)
    with pytest.raises(IndexError):
        ds.samples_quality([len(ds)], quality)
    with pytest.raises(ValueError, match="documents"):
        ds.samples_quality([0], quality[:-1])


# -- empty splits and the per-domain helper ------------------------------------------------------


def test_zero_sample_splits(tmp_path):
    prefix = write_dataset(tmp_path / "tiny_text_document", [[[1, 2]], [[3]]])
    short = GPTDataset(prefix, "train", (0, 2), 3, seed=0, cache_dir=str(tmp_path))  # 3 tokens < 3+1
    assert len(short) == 0 and short.num_tokens == 3
    with pytest.raises(IndexError):
        short[0]
    no_docs = GPTDataset(prefix, "test", (2, 2), 3, seed=0, cache_dir=str(tmp_path))
    assert len(no_docs) == 0 and no_docs.num_documents == 0 and no_docs.num_tokens == 0
    assert no_docs.samples_quality([], np.zeros(2, np.float32)).shape == (0,)
    loaded = GPTDataset(prefix, "test", (2, 2), 3, seed=0, cache_dir=str(tmp_path), is_builder=False)
    assert len(loaded) == 0
    exact = GPTDataset(prefix, "valid", (0, 2), 2, seed=0, cache_dir=str(tmp_path))  # 3 tokens = one sample
    assert len(exact) == 1 and sorted(exact[0].tolist()) == [1, 2, 3]


def test_bad_arguments_are_named(tmp_path, domain):
    prefix, _ = domain
    with pytest.raises(ValueError, match="document_range"):
        GPTDataset(prefix, "train", (0, 61), 8, seed=0, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="seq_length"):
        GPTDataset(prefix, "train", (0, 10), 0, seed=0, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="seed"):
        GPTDataset(prefix, "train", (0, 10), 8, seed=-1, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="'training'"):
        GPTDataset(prefix, "training", (0, 10), 8, seed=0, cache_dir=str(tmp_path))


def test_build_domain_datasets(tmp_path):
    prefixes = [write_dataset(tmp_path / f"{name}_text_document", random_docs(1)) for name in ("a", "b")]
    barriers = []
    result = build_domain_datasets(prefixes, ["A", "B"], "8,1,1", 6, seed=4,
                                   cache_dir=str(tmp_path / "c"), barrier=lambda: barriers.append(1))
    assert barriers == [1]
    assert list(result) == list(SPLIT_NAMES)
    ranges = split_document_ranges(60, "8,1,1")
    for split_name, document_range in zip(SPLIT_NAMES, ranges):
        assert [d.name for d in result[split_name]] == ["A", "B"]
        assert all(d.document_range == document_range and d.split_name == split_name for d in result[split_name])
    # the same documents in two domains are still read in different orders
    a, b = result["train"]
    assert not np.array_equal(a.document_index, b.document_index)
    loaded = build_domain_datasets(prefixes, ["A", "B"], "8,1,1", 6, seed=4, cache_dir=str(tmp_path / "c"), is_builder=False)
    np.testing.assert_array_equal(loaded["valid"][1].sample_index, result["valid"][1].sample_index)
    with pytest.raises(ValueError, match="names"):
        build_domain_datasets(prefixes, ["A"], "8,1,1", 6, seed=4)
    with pytest.raises(ValueError, match="'8;1'"):
        build_domain_datasets(prefixes, ["A", "B"], "8;1", 6, seed=4)

"""Shared fixtures: the demo corpus (train/valid/test splits), a SentencePiece model trained
on its train split and the splits' datasets, made once per test session (no network:
everything the tests read, the project makes)."""

import os
import subprocess
import sys

import torch

# Triton kernels run on CPU tensors through the interpreter, which must be switched on
# before any @triton.jit function is defined, i.e. before kernels/ is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS_DIR = os.path.join(REPO_ROOT, "tools")
if TOOLS_DIR not in sys.path:
    sys.path.insert(0, TOOLS_DIR)



def pytest_collection_modifyitems(config, items):
    """The `gpu` marker skips cleanly on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Small enough to keep the suite fast, large enough that every domain has many documents.
DEMO_TEST_SIZE_MB = 1.0
DEMO_TEST_VOCAB = 2000


def run_tool(name: str, *args: str, check: bool = True, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run tools/<name>.py as a user would, from a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, os.path.join(TOOLS_DIR, f"{name}.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def demo_corpus_dir(tmp_path_factory) -> str:
    """The demo corpus: train/valid/test.jsonl.zst (DEMO_TEST_SIZE_MB of text in all) and corpus.json."""
    from demo_corpus import write_demo_corpus

    path = str(tmp_path_factory.mktemp("demo"))
    write_demo_corpus(path, size_mb=DEMO_TEST_SIZE_MB, seed=1234)
    return path


@pytest.fixture(scope="session")
def demo_corpus(demo_corpus_dir) -> str:
    """The demo corpus's TRAIN split (a .jsonl.zst file)."""
    return os.path.join(demo_corpus_dir, "train.jsonl.zst")


@pytest.fixture(scope="session")
def demo_documents(demo_corpus) -> list[tuple[str, str]]:
    """(domain, text) of the train split's documents."""
    from demo_corpus import read_demo_corpus

    return list(read_demo_corpus(demo_corpus))


@pytest.fixture(scope="session")
def sp_model(demo_documents, tmp_path_factory) -> str:
    """A SentencePiece model trained on the train split only, as examples/build_demo_data.sh does."""
    from megatron_hds.data.tokenizer import train_sentencepiece

    prefix = str(tmp_path_factory.mktemp("tokenizer") / "demo_sp")
    return train_sentencepiece((text for _, text in demo_documents), prefix, DEMO_TEST_VOCAB, num_threads=2)


def _preprocess_split(corpus_dir: str, split: str, sp_model: str, out_dir) -> str:
    """Per-domain datasets of one split (tools/preprocess_data.py); returns its manifest."""
    import preprocess_data

    prefix = str(out_dir / "demo")
    preprocess_data.preprocess(preprocess_data.parse_args(
        ["--input", os.path.join(corpus_dir, f"{split}.jsonl.zst"), "--output-prefix", prefix,
         "--domain-key", "meta.pile_set_name", "--tokenizer-model", sp_model, "--append-eod"]))
    return prefix + "_manifest.json"


@pytest.fixture(scope="session")
def demo_manifest(demo_corpus_dir, sp_model, tmp_path_factory) -> str:
    """The train split's per-domain datasets and manifest, for training tests."""
    return _preprocess_split(demo_corpus_dir, "train", sp_model, tmp_path_factory.mktemp("demo_data_train"))


@pytest.fixture(scope="session")
def demo_valid_manifest(demo_corpus_dir, sp_model, tmp_path_factory) -> str:
    """The valid split, preprocessed with the same tokenizer as demo_manifest."""
    return _preprocess_split(demo_corpus_dir, "valid", sp_model, tmp_path_factory.mktemp("demo_data_valid"))


@pytest.fixture(scope="session")
def demo_test_manifest(demo_corpus_dir, sp_model, tmp_path_factory) -> str:
    """The test split, preprocessed with the same tokenizer as demo_manifest."""
    return _preprocess_split(demo_corpus_dir, "test", sp_model, tmp_path_factory.mktemp("demo_data_test"))


@pytest.fixture(scope="session")
def slurm():
    """A running single-node SLURM (tests/slurm/start_local_slurm.sh); skips where it cannot start."""
    proc = subprocess.run(["bash", os.path.join(REPO_ROOT, "tests", "slurm", "start_local_slurm.sh")],
                          capture_output=True, text=True)
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr

"""Hugging Face export/import: tiny trained checkpoints (TP=1, and TP=2/PP=2) give transformers models with
our logits; HF -> ours -> HF is exact; the trainer starts from an imported model; lm-eval runs offline."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from megatron_hds.arguments import parse_args  # noqa: E402
from megatron_hds.config import ModelConfig  # noqa: E402
from megatron_hds.data.manifest import load_manifest  # noqa: E402
from megatron_hds.data.tokenizer import build_tokenizer  # noqa: E402
from megatron_hds.model.gpt import GPTModel  # noqa: E402
from megatron_hds.parallel.layers import is_tensor_parallel  # noqa: E402
from megatron_hds.parallel.p2p import P2P  # noqa: E402
from megatron_hds.parallel.state import ParallelState  # noqa: E402
from megatron_hds.checkpoint.reshard import partition_dim, read_model_checkpoint  # noqa: E402
from megatron_hds.checkpoint.layout import find_latest_iteration
from megatron_hds.checkpoint.store import load_checkpoint  # noqa: E402
from megatron_hds.evaluation.downstream import DownstreamEvalConfig, maybe_evaluate_after_save  # noqa: E402
from megatron_hds.checkpoint.hf_model import hf_architecture  # noqa: E402
from megatron_hds.training.trainer import Trainer  # noqa: E402
from tests.conftest import TOOLS_DIR  # noqa: E402
from tests.distributed import run_distributed  # noqa: E402
from tests.training.test_pretrain import _argv, _train  # noqa: E402

sys.path.insert(0, os.path.join(TOOLS_DIR, "checkpoint"))
import convert_from_hf  # noqa: E402
import convert_to_hf  # noqa: E402

RTOL = 1e-5  # fp32 logits: max |ours - theirs| / max |theirs|
SHAPES = {
    "pythia": ["--position-embedding-type", "rope", "--rotary-percent", "0.25", "--use-parallel-residual",
               "--untie-embeddings-and-output-weights"],
    "llama": ["--position-embedding-type", "rope", "--normalization", "RMSNorm", "--swiglu",
              "--disable-bias-linear", "--untie-embeddings-and-output-weights"],
}
SIZE = ["--hidden-size", "64", "--num-layers", "2", "--num-attention-heads", "4", "--seq-length", "32"]


def _run_argv(manifest, *flags):
    """test_pretrain's tiny run, at our size, without LR warm-up (runs of 1-2 steps)."""
    return _argv(manifest, *SIZE, "--lr-warmup-iters", "0", *flags)


def _rel_err(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def _tokens(vocab_size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab_size, (2, 32), generator=torch.Generator().manual_seed(seed))


def _hf_logits(hf_dir: str, tokens: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=tokens).logits


def _our_logits(load_dir: str, config: ModelConfig, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of a TP=1/PP=1 checkpoint's model, loaded as the trainer loads it."""
    model = GPTModel(config, ParallelState.single()).eval()
    model.load_state_dict(load_checkpoint(load_dir, 0, 0, 1, 1)["model"])
    with torch.no_grad():
        return model(tokens=tokens)[..., :config.vocab_size]


@pytest.fixture(scope="module")
def trained(demo_manifest, tmp_path_factory):
    """A tiny model of each shape trained for 2 steps and saved (TP=1/PP=1)."""
    out = {}
    for name, flags in SHAPES.items():
        save = str(tmp_path_factory.mktemp(f"ckpt_{name}"))
        _train(_run_argv(demo_manifest, *flags, "--train-iters", "2", "--save", save), builtin_scheduler=True)
        out[name] = save
    return out


def test_partition_dims_match_the_parallel_layers():
    configs = [ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=100, seq_length=8,
                           position_embedding_type="rope", swiglu=swiglu, untie_embeddings_and_output_weights=True)
               for swiglu in (False, True)]
    for config in configs:
        for name, param in GPTModel(config, ParallelState.single()).named_parameters():
            expected = param.partition_dim if is_tensor_parallel(param) else None
            assert partition_dim(name) == expected, name


def test_unsupported_shapes_name_the_blocking_option():
    base = dict(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=100, seq_length=8)
    with pytest.raises(ValueError, match=r"position_embedding_type='learned_absolute'"):
        hf_architecture(ModelConfig(**base))
    with pytest.raises(ValueError, match=r"LlamaForCausalLM is blocked by parallel_residual=True") as info:
        hf_architecture(ModelConfig(**base, position_embedding_type="rope", normalization="RMSNorm", swiglu=True,
                                    parallel_residual=True))
    assert "GPTNeoXForCausalLM is blocked by normalization='RMSNorm'" in str(info.value)
    assert hf_architecture(ModelConfig(**base, position_embedding_type="rope")) == "GPTNeoXForCausalLM"


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_export_matches_our_logits_and_hf_round_trip_is_exact(shape, trained, demo_manifest, tmp_path):
    load = trained[shape]
    hf_dir = convert_to_hf.main(["--load", load, "--output", str(tmp_path / "hf")])
    ckpt = read_model_checkpoint(load)
    config = ckpt.config
    assert config.padded_vocab_size(1) > config.vocab_size  # the padding is there to be removed
    hf_config = transformers.AutoConfig.from_pretrained(hf_dir)
    assert hf_config.architectures == [{"pythia": "GPTNeoXForCausalLM", "llama": "LlamaForCausalLM"}[shape]]
    assert hf_config.vocab_size == config.vocab_size

    tokens = _tokens(config.vocab_size)
    err = _rel_err(_our_logits(load, config, tokens), _hf_logits(hf_dir, tokens))
    print(f"{shape}: max relative logits error {err:.2e}")
    assert err < RTOL

    # The tokenizer files encode as our SentencePiece tokenizer does.
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ours = build_tokenizer("GPTSentencePieceTokenizer", load_manifest(demo_manifest).tokenizer["model"])
    for text in ("Hello  world\n\tindented 12345", "ünïcödé ☃ text", " leading space"):
        assert hf_tokenizer(text)["input_ids"] == ours.encode(text), text

    # HF -> ours (TP=2, PP=2) -> HF is bit-exact, config included.
    imported = str(tmp_path / "imported")
    convert_from_hf.main(["--hf-model", hf_dir, "--save", imported, "--target-tensor-parallel-size", "2",
                          "--target-pipeline-parallel-size", "2"])
    assert find_latest_iteration(imported) == 0
    assert sorted(os.listdir(os.path.join(imported, "iter_0000000"))) == [
        "checksums.json", "mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000", "mp_rank_01_001"]
    again = convert_to_hf.main(["--load", imported, "--output", str(tmp_path / "hf_again")])
    first = safetensors_torch.load_file(os.path.join(hf_dir, "model.safetensors"))
    second = safetensors_torch.load_file(os.path.join(again, "model.safetensors"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    configs = [{k: v for k, v in transformers.AutoConfig.from_pretrained(d).to_dict().items()
                if k != "_name_or_path"} for d in (hf_dir, again)]
    assert configs[0] == configs[1]
    for name in ("tokenizer.json", "tokenizer.model"):
        with open(os.path.join(hf_dir, name), "rb") as a, open(os.path.join(again, name), "rb") as b:
            assert a.read() == b.read(), name


def _train_and_gather_logits(argv, tokens):
    """On each of 4 ranks: train (TP=2/PP=2, saving), then run the trained stages forward on `tokens`;
    TP rank 0 of the last stage returns the full-vocabulary logits."""
    torch.set_num_threads(1)
    config = parse_args(argv)
    state = ParallelState.from_config(config.parallel)
    trainer = Trainer(config, state)
    trainer.train()
    model = trainer.model.eval()
    comm = P2P(state, state.activation_shape(tokens.shape[1], tokens.shape[0], config.model.hidden_size),
               torch.float32)
    with torch.no_grad():
        out = model(tokens=tokens if state.is_first_stage() else None, hidden=comm.recv_forward())
        if not state.is_last_stage():
            comm.send_forward(out)
            return None
        parts = [torch.empty_like(out) for _ in range(state.tp_size)]
        dist.all_gather(parts, out.contiguous(), group=state.tp_group)
    return torch.cat(parts, dim=-1) if state.tp_rank == 0 else None


def test_tp2_pp2_checkpoint_exports_with_the_sharded_models_logits(demo_manifest, tmp_path):
    save = str(tmp_path / "ckpt")
    # Llama shape with tied embeddings: the last stage's embedding copy and the fused QKV/SwiGLU shards.
    flags = [f for f in SHAPES["llama"] if f != "--untie-embeddings-and-output-weights"]
    argv = _run_argv(demo_manifest, *flags, "--train-iters", "2", "--save", save,
                 "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2")
    vocab = load_manifest(demo_manifest).tokenizer["vocab_size"]
    tokens = _tokens(vocab, seed=1)
    ours = [r for r in run_distributed(_train_and_gather_logits, 4, argv, tokens) if r is not None][0][..., :vocab]
    hf_dir = convert_to_hf.main(["--load", save, "--output", str(tmp_path / "hf")])
    err = _rel_err(ours, _hf_logits(hf_dir, tokens))
    print(f"TP=2/PP=2: max relative logits error {err:.2e}")
    assert err < RTOL


def test_trainer_starts_from_an_imported_hf_model(trained, demo_manifest, tmp_path):
    hf_dir = convert_to_hf.main(["--load", trained["pythia"], "--output", str(tmp_path / "hf")])
    imported = str(tmp_path / "imported")
    # A multiple that adds no padding to the 2000-token vocabulary, so the losses compare exactly.
    convert_from_hf.main(["--hf-model", hf_dir, "--save", imported, "--seq-length", "32",
                          "--make-vocab-size-divisible-by", "8"])
    config = read_model_checkpoint(imported).config
    assert config.padded_vocab_size(1) == config.vocab_size
    tokens = _tokens(config.vocab_size, seed=2)
    labels = torch.roll(tokens, -1, dims=1)
    model = GPTModel(config, ParallelState.single()).eval()
    model.load_state_dict(load_checkpoint(imported, 0, 0, 1, 1)["model"])
    with torch.no_grad():
        ours = model(tokens=tokens, labels=labels).mean().item()
        hf_logits = _hf_logits(hf_dir, tokens)
    theirs = torch.nn.functional.cross_entropy(hf_logits.flatten(0, 1), labels.flatten()).item()
    assert ours == pytest.approx(theirs, rel=1e-5)

    # The trainer loads it (--load) and trains on.
    save = str(tmp_path / "continued")
    result = _train(_run_argv(demo_manifest, *SHAPES["pythia"], "--make-vocab-size-divisible-by", "8",
                          "--train-iters", "1", "--load", imported, "--save", save), builtin_scheduler=True)
    assert result["iteration"] == 1
    assert find_latest_iteration(save) == 1


def test_evaluate_hook_starts_only_on_rank_0_every_n_saves(monkeypatch, tmp_path):
    started = []
    proc = SimpleNamespace(pid=1)
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: started.append(cmd) or proc)
    config = DownstreamEvalConfig(tasks=("a", "b"), interval=2, include_path="tasks", limit=3)
    assert maybe_evaluate_after_save(config, str(tmp_path), 10, save_count=1, rank=0) is None
    assert maybe_evaluate_after_save(config, str(tmp_path), 20, save_count=2, rank=1) is None
    assert maybe_evaluate_after_save(config, str(tmp_path), 20, save_count=2, rank=0) is proc
    cmd = started[0]
    assert cmd[1:3] == ["-m", "megatron_hds.evaluation.downstream"]  # a module: works from any install
    assert cmd[cmd.index("--iteration") + 1] == "20" and cmd[cmd.index("--tasks") + 1] == "a,b"
    assert cmd[cmd.index("--include-path") + 1] == "tasks" and cmd[cmd.index("--limit") + 1] == "3"
    with pytest.raises(ValueError, match="needs --downstream-eval-tasks"):
        DownstreamEvalConfig(interval=1)


def test_lm_eval_runs_offline_on_the_exported_model(trained, tmp_path):
    """tools/evaluate.py --load: export the checkpoint, run a local multiple-choice task, write the results."""
    pytest.importorskip("lm_eval")
    data = tmp_path / "tasks" / "tiny.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps({"question": f"Question {i}: the answer is", "choices": ["yes", "no"],
                                        "answer": i % 2}) + "\n" for i in range(4)))
    (data.parent / "tiny.yaml").write_text(
        "task: tiny_local\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, os.path.join(TOOLS_DIR, "evaluate.py"), "--load", trained["pythia"],
                           "--tasks", "tiny_local", "--include-path", str(data.parent), "--batch-size", "4"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = os.path.join(trained["pythia"], "downstream_eval", "iter_0000002", "lm_eval_results.json")
    with open(path, encoding="utf-8") as f:
        results = json.load(f)["results"]["tiny_local"]
    assert 0.0 <= results["acc,none"] <= 1.0
    assert os.path.isfile(os.path.join(os.path.dirname(path), "hf", "model.safetensors"))

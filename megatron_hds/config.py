"""Typed, validated configuration dataclasses: model, parallel layout, data, optimizer,
training run and downstream evaluation; the data schedulers' own live in mixing/config.py.

Every field is an ``option()`` (megatron_hds/options.py): its name, type, default and help
are written once, here, and ``megatron_hds.arguments`` generates the command line from
them, with Megatron-LM's flag spellings. Validation happens in ``__post_init__`` so a bad
value is reported where it is set, naming the value and what is accepted.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Optional

from megatron_hds.data.tokenizer import SUPPORTED_TOKENIZER_TYPES
from megatron_hds.mixing.config import MixingConfig
from megatron_hds.options import comma_list, option

POSITION_EMBEDDING_TYPES = ("learned_absolute", "rope")
NORMALIZATIONS = ("LayerNorm", "RMSNorm")
TRANSFORMER_IMPLS = ("local", "transformer_engine")
RECOMPUTE_GRANULARITIES = ("full", "selective")
RECOMPUTE_METHODS = ("uniform", "block")


def _positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid: expected a positive integer")


def _probability(name: str, value: float) -> None:
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name}={value!r} is invalid: expected a probability in [0, 1)")


def _choice(name: str, value: str, accepted: tuple) -> None:
    if value not in accepted:
        raise ValueError(f"{name}={value!r} is invalid: accepted values are {', '.join(accepted)}")


@dataclass
class ModelConfig:
    """Shape and numerics of the GPT model (Megatron's model flags). With --model, a preset
    gives the shape and any of these flags overrides it."""

    num_layers: int = option(help="transformer layers in the whole model")
    hidden_size: int = option(help="width of the residual stream")
    num_attention_heads: int = option(help="attention heads per layer")
    vocab_size: int = option(cli=False, help="the tokenizer's vocabulary (from the data; padded, see "
                                             "padded_vocab_size)")
    seq_length: int = option(help="tokens per training sample")
    ffn_hidden_size: Optional[int] = option(None, help="MLP width (default: 4 x hidden, or 8/3 x hidden rounded "
                                                       "to 64 with --swiglu)")
    max_position_embeddings: Optional[int] = option(None, help="positions of the learned position table "
                                                               "(default: --seq-length)")
    position_embedding_type: str = option("learned_absolute", choices=POSITION_EMBEDDING_TYPES,
                                          help="learned absolute positions, or rotary embeddings")
    rotary_percent: float = option(1.0, help="share of each head's dimensions that rotary touches (Pythia: 0.25)")
    rotary_base: int = option(10000, help="rotary frequency base")
    normalization: str = option("LayerNorm", choices=NORMALIZATIONS, help="the norm layers")
    norm_epsilon: float = option(1e-5, help="epsilon of the norm layers")
    swiglu: bool = option(False, help="gated SiLU MLP instead of GeLU")
    parallel_residual: bool = option(False, flag="--use-parallel-residual",
                                     help="x + attn(ln1(x)) + mlp(ln2(x)) as in GPT-NeoX / Pythia")
    untie_embeddings_and_output_weights: bool = option(False, help="a separate output layer instead of the "
                                                                   "input embedding's transpose")
    add_bias_linear: bool = option(True, flag="--disable-bias-linear", negate=True,
                                   help="no biases in the linear layers")
    attention_dropout: float = option(0.0, help="dropout on the attention probabilities")
    hidden_dropout: float = option(0.0, help="dropout on the embeddings and the residual branches")
    init_method_std: float = option(0.02, help="std of the weight initialisation; output layers use "
                                               "std / sqrt(2 x num_layers)")
    make_vocab_size_divisible_by: int = option(128, help="pad the vocabulary to a multiple of this times TP")
    transformer_impl: str = option("local", choices=TRANSFORMER_IMPLS,
                                   help="local (torch, optional apex) or transformer_engine layers")
    torch_compile: bool = option(False, help="compile each transformer layer with torch.compile (fuses the "
                                             "elementwise work; the first steps pay the compilation)")
    recompute_granularity: Optional[str] = option(
        None, choices=RECOMPUTE_GRANULARITIES,
        aliases={"--recompute-activations": ("selective", "same as --recompute-granularity selective")},
        help="activation recompute: full (whole layers, see --recompute-method) or selective (the attention "
             "core softmax(QK^T)V with its dropout)")
    recompute_method: Optional[str] = option(
        None, choices=RECOMPUTE_METHODS,
        help="with full: uniform (chunks of --recompute-num-layers layers keep only their input) or block "
             "(the first --recompute-num-layers layers of each pipeline stage)")
    recompute_num_layers: Optional[int] = option(None, help="layers per recompute chunk or block (default 1 "
                                                            "with full)")

    def __post_init__(self):
        for name in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size", "seq_length",
                     "rotary_base", "make_vocab_size_divisible_by"):
            _positive(name, getattr(self, name))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                f"{self.num_attention_heads}: each head needs an equal share of the hidden size")
        if self.ffn_hidden_size is None:
            if self.swiglu:
                # Keeps the parameter count of a 4h GeLU MLP; rounded for matmul-friendly shapes.
                self.ffn_hidden_size = ((8 * self.hidden_size // 3) + 63) // 64 * 64
            else:
                self.ffn_hidden_size = 4 * self.hidden_size
        _positive("ffn_hidden_size", self.ffn_hidden_size)
        if self.max_position_embeddings is None:
            self.max_position_embeddings = self.seq_length
        _positive("max_position_embeddings", self.max_position_embeddings)
        if self.max_position_embeddings < self.seq_length:
            raise ValueError(
                f"max_position_embeddings={self.max_position_embeddings} is smaller than seq_length="
                f"{self.seq_length}: expected at least seq_length")
        _choice("position_embedding_type", self.position_embedding_type, POSITION_EMBEDDING_TYPES)
        _choice("normalization", self.normalization, NORMALIZATIONS)
        _choice("transformer_impl", self.transformer_impl, TRANSFORMER_IMPLS)
        if self.torch_compile and self.transformer_impl != "local":
            raise ValueError(f"torch_compile=True works with transformer_impl='local', not "
                             f"{self.transformer_impl!r} (its fused modules are not compiled)")
        if not 0.0 < self.rotary_percent <= 1.0:
            raise ValueError(f"rotary_percent={self.rotary_percent!r} is invalid: expected a value in (0, 1]")
        if self.position_embedding_type == "rope" and self.rotary_dim % 2:
            raise ValueError(
                f"rotary_percent={self.rotary_percent} gives an odd rotary dimension {self.rotary_dim} "
                f"for head size {self.head_dim}: expected an even number of rotated dims")
        _probability("attention_dropout", self.attention_dropout)
        _probability("hidden_dropout", self.hidden_dropout)
        if not self.init_method_std > 0:
            raise ValueError(f"init_method_std={self.init_method_std!r} is invalid: expected a positive float")
        if not self.norm_epsilon > 0:
            raise ValueError(f"norm_epsilon={self.norm_epsilon!r} is invalid: expected a positive float")
        self._check_recompute()

    def _check_recompute(self) -> None:
        if self.recompute_granularity is None:
            if self.recompute_method is not None or self.recompute_num_layers is not None:
                raise ValueError(
                    f"recompute_method={self.recompute_method!r} and recompute_num_layers="
                    f"{self.recompute_num_layers!r} need recompute_granularity='full' (--recompute-granularity full)")
            return
        _choice("recompute_granularity", self.recompute_granularity, RECOMPUTE_GRANULARITIES)
        if self.recompute_granularity == "selective":
            if self.torch_compile:
                raise ValueError(
                    "recompute_granularity='selective' does not work with torch_compile=True (the recompute "
                    "would sit inside the compiled layer, whose partitioner already picks what to recompute); "
                    "use recompute_granularity='full', which checkpoints around the compiled layers")
            if self.recompute_method is not None or self.recompute_num_layers is not None:
                raise ValueError(
                    f"recompute_method={self.recompute_method!r} and recompute_num_layers="
                    f"{self.recompute_num_layers!r} apply to recompute_granularity='full' only; "
                    "'selective' always recomputes the attention core of every layer")
            return
        if self.recompute_method is None:
            raise ValueError("recompute_granularity='full' needs recompute_method: accepted values are "
                             + ", ".join(RECOMPUTE_METHODS))
        _choice("recompute_method", self.recompute_method, RECOMPUTE_METHODS)
        if self.recompute_num_layers is None:
            self.recompute_num_layers = 1
        _positive("recompute_num_layers", self.recompute_num_layers)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_percent)

    def padded_vocab_size(self, tensor_parallel_size: int) -> int:
        """Vocab padded up to a multiple of make_vocab_size_divisible_by * TP (Megatron's rule)."""
        multiple = self.make_vocab_size_divisible_by * tensor_parallel_size
        return -(-self.vocab_size // multiple) * multiple

    def num_parameters(self, tensor_parallel_size: int = 1) -> int:
        """Parameter count of the whole (unsharded) model, tied embeddings counted once."""
        h, f, L = self.hidden_size, self.ffn_hidden_size, self.num_layers
        v = self.padded_vocab_size(tensor_parallel_size)
        bias = 1 if self.add_bias_linear else 0
        norm = 2 * h if self.normalization == "LayerNorm" else h
        fc1_out = 2 * f if self.swiglu else f
        attn = h * 3 * h + 3 * h * bias + h * h + h * bias
        mlp = h * fc1_out + fc1_out * bias + f * h + h * bias
        layer = attn + mlp + 2 * norm
        emb = v * h + (self.max_position_embeddings * h if self.position_embedding_type == "learned_absolute" else 0)
        head = v * h if self.untie_embeddings_and_output_weights else 0
        return L * layer + emb + head + norm


@dataclass
class ParallelConfig:
    """How the world is split: TP fastest, then DP, then PP (Megatron's rank layout). The data-parallel
    size is derived: world size / (TP x PP)."""

    tensor_model_parallel_size: int = option(1, help="tensor-parallel ranks (the weight matrices are split)")
    pipeline_model_parallel_size: int = option(1, help="pipeline stages (the layers are split, 1F1B schedule)")
    sequence_parallel: bool = option(False, help="split norms, dropout and residual activations along the sequence "
                                                 "across TP ranks (less activation memory; no effect when TP is 1)")
    distributed_timeout_minutes: float = option(10.0, help="a collective that waits this long for a lost or stuck "
                                                           "rank fails, and the job ends (fractions allowed)")

    def __post_init__(self):
        _positive("tensor_model_parallel_size", self.tensor_model_parallel_size)
        _positive("pipeline_model_parallel_size", self.pipeline_model_parallel_size)
        if not self.distributed_timeout_minutes > 0:
            raise ValueError(f"distributed_timeout_minutes={self.distributed_timeout_minutes!r} is invalid: expected "
                             "a positive number of minutes")


# Pythia shapes (GPT-NeoX): rotary on 25% of head dims, parallel residual, untied
# embeddings, LayerNorm, GeLU, vocab 50277 padded to 50304.
_PYTHIA = dict(position_embedding_type="rope", rotary_percent=0.25, parallel_residual=True,
               untie_embeddings_and_output_weights=True, vocab_size=50277, seq_length=2048)

MODEL_PRESETS = {
    "tiny": dict(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=512, seq_length=64,
                 position_embedding_type="rope", rotary_percent=0.25, parallel_residual=True,
                 untie_embeddings_and_output_weights=True, make_vocab_size_divisible_by=64),
    "pythia-160m": dict(num_layers=12, hidden_size=768, num_attention_heads=12, **_PYTHIA),
    "pythia-410m": dict(num_layers=24, hidden_size=1024, num_attention_heads=16, **_PYTHIA),
    "pythia-1b": dict(num_layers=16, hidden_size=2048, num_attention_heads=8, **_PYTHIA),
}


def model_preset(name: str, **overrides) -> ModelConfig:
    """A ModelConfig from a named preset, with any field overridden."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}: accepted presets are {', '.join(MODEL_PRESETS)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise ValueError(f"unknown ModelConfig fields {sorted(unknown)} in overrides for preset {name!r}")
    return ModelConfig(**{**MODEL_PRESETS[name], **overrides})


PRECISIONS = ("fp32", "bf16", "fp16")
LR_DECAY_STYLES = ("constant", "linear", "cosine")


@dataclass
class DataConfig:
    """Where the per-domain datasets come from and how they are split."""

    data_manifest: Optional[str] = option(None, help="manifest written by tools/preprocess_data.py (one domain "
                                                     "per entry)")
    data_path: Optional[tuple] = option(None, nargs="+", parse=str, metavar="[W] PREFIX",
                                        help="Megatron's blend instead of a manifest: [w1] prefix1 [w2] prefix2 ..., "
                                             "one domain per prefix (weights default to the token shares)")
    split: str = option("969,30,1", help="train,valid,test shares of every domain's documents (not used for a "
                                         "split that has its own manifest)")
    valid_data_manifest: Optional[str] = option(None, help="validation datasets preprocessed apart from the training "
                                                           "ones (same domains and tokenizer); the training manifest's "
                                                           "documents then all go to training")
    test_data_manifest: Optional[str] = option(None, help="test datasets preprocessed apart from the training ones")
    eval_seed: Optional[int] = option(None, help="seed of the validation and test sample order (default: --seed); "
                                                 "fix it to evaluate runs of different seeds on the same samples")
    data_cache_path: Optional[str] = option(None, help="where the sample indices are cached (default: beside "
                                                       "the data)")
    tokenizer_type: str = option("GPTSentencePieceTokenizer", choices=SUPPORTED_TOKENIZER_TYPES,
                                 help="how the tokenizer file is read (Megatron's types)")
    tokenizer_model: Optional[str] = option(None, help="the tokenizer file (default: the manifest's)")

    def __post_init__(self):
        if (self.data_manifest is None) == (not self.data_path):
            raise ValueError(
                "give exactly one of --data-manifest and --data-path "
                f"(got data_manifest={self.data_manifest!r}, data_path={self.data_path!r})")
        if self.data_path and (self.valid_data_manifest or self.test_data_manifest):
            raise ValueError("--valid-data-manifest and --test-data-manifest go with --data-manifest, not --data-path")
        if self.eval_seed is not None and self.eval_seed < 0:
            raise ValueError(f"eval_seed={self.eval_seed!r} is invalid: expected a non-negative integer")


@dataclass
class OptimConfig:
    """AdamW, the LR schedule, clipping and numeric precision (Megatron's optimizer flags)."""

    lr: float = option(3e-4, help="peak learning rate, reached at the end of warm-up")
    min_lr: float = option(0.0, help="the learning rate the decay ends at")
    lr_decay_style: str = option("cosine", choices=LR_DECAY_STYLES, help="shape of the decay after warm-up")
    lr_decay_iters: Optional[int] = option(None, help="iterations over which the LR decays to --min-lr "
                                                      "(default: --train-iters)")
    lr_warmup_iters: Optional[int] = option(None, help="linear warm-up from 0, in iterations")
    lr_warmup_fraction: Optional[float] = option(None, help="linear warm-up as a share of --lr-decay-iters")
    weight_decay: float = option(0.01, help="AdamW weight decay (not applied to biases and norms)")
    adam_beta1: float = option(0.9, help="Adam's first-moment decay")
    adam_beta2: float = option(0.999, help="Adam's second-moment decay")
    adam_eps: float = option(1e-8, help="Adam's epsilon")
    clip_grad: float = option(1.0, help="global gradient-norm clip (0 turns clipping off)")
    precision: str = option("fp32", flag="", choices=PRECISIONS, aliases={
        "--bf16": ("bf16", "bf16 weights and activations, fp32 master weights (GPU)"),
        "--fp16": ("fp16", "fp16 weights and activations with dynamic loss scaling, fp32 master weights (GPU)")},
        help="numeric precision of the model (fp32 master weights either way)")
    use_distributed_optimizer: bool = option(False, help="shard the Adam state and fp32 master weights over the "
                                                         "data-parallel ranks; checkpoints keep the unsharded layout")
    overlap_grad_reduce: bool = option(False, help="start each gradient bucket's data-parallel all-reduce during "
                                                   "the last micro-batch's backward")
    ddp_bucket_size: Optional[int] = option(None, help="gradient elements per data-parallel all-reduce bucket "
                                                       "(default: 25 MiB of gradients)")

    def __post_init__(self):
        _choice("precision", self.precision, PRECISIONS)
        _choice("lr_decay_style", self.lr_decay_style, LR_DECAY_STYLES)
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r} is invalid: expected a positive float")
        if self.lr_warmup_iters is not None and self.lr_warmup_fraction is not None:
            raise ValueError("--lr-warmup-iters and --lr-warmup-fraction are mutually exclusive")
        if self.clip_grad < 0:
            raise ValueError(f"clip_grad={self.clip_grad!r} is invalid: expected >= 0 (0 turns clipping off)")
        for name in ("adam_beta1", "adam_beta2"):
            _probability(name, getattr(self, name))
        if self.ddp_bucket_size is not None:
            _positive("ddp_bucket_size", self.ddp_bucket_size)
        if self.overlap_grad_reduce and self.use_distributed_optimizer:
            raise ValueError("overlap_grad_reduce=True works with the all-reduce path, not with "
                             "use_distributed_optimizer=True (its reduce-scatter runs in the optimizer step)")


@dataclass
class TrainConfig:
    """The run: batch, length, seed, intervals, checkpoints and logging."""

    train_iters: int = option(help="optimizer steps of the run")
    global_batch_size: int = option(help="samples per step over all data-parallel ranks")
    micro_batch_size: int = option(1, help="samples per forward pass per rank")
    seed: int = option(1234, help="seeds the model, the data order and the mixture sampler")
    log_interval: int = option(10, help="steps between log lines (and metrics.jsonl records)")
    eval_interval: int = option(100, help="steps between held-out evaluations (0: only at the end)")
    eval_iters: int = option(10, help="micro-batches per data-parallel rank per domain in one evaluation")
    save: Optional[str] = option(None, help="checkpoint directory")
    load: Optional[str] = option(None, help="checkpoint directory to resume from (its latest checkpoint)")
    save_interval: int = option(0, help="steps between checkpoints (0: only at the end and on a pre-emption "
                                        "signal)")
    log_dir: Optional[str] = option(None, help="where metrics.jsonl goes (default: --save)")
    tensorboard_dir: Optional[str] = option(None, help="TensorBoard event files (pip install -e '.[tensorboard]')")
    wandb_project: Optional[str] = option(None, help="Weights & Biases project (pip install -e '.[wandb]')")
    wandb_exp_name: Optional[str] = option(None, help="Weights & Biases run name")
    exit_interval: int = option(0, help="save and stop once the iteration is a multiple of this (0: never)")
    exit_duration_in_mins: Optional[float] = option(None, help="save and stop once this many minutes have passed "
                                                               "since start (all ranks agree)")
    exit_signal_handler: bool = option(False, help="accepted for Megatron compatibility: SIGTERM/SIGUSR1 always "
                                                   "save and exit here")
    override_opt_param_scheduler: bool = option(False, flag="--override-opt_param-scheduler",
                                                help="on --load, keep this run's LR schedule instead of requiring "
                                                     "the checkpoint's")
    finetune: bool = option(False, help="take only the model weights from --load and start a new run at iteration "
                                        "0 (a restart resumes from --save once it holds a checkpoint)")
    no_load_optim: bool = option(False, help="on --load, leave out the optimizer state (Adam moments restart; the "
                                             "LR schedule continues)")
    no_load_rng: bool = option(False, help="on --load, leave out the random-number generator states")
    check_for_nan_in_loss_and_grad: bool = option(
        True, flag="--no-check-for-nan-in-loss-and-grad", negate=True,
        aliases={"--check-for-nan-in-loss-and-grad": (True, "stop on a NaN/Inf loss or gradient norm (the default)")},
        help="leave out the check that stops the run with an error naming the iteration and the domains when a "
             "loss or the gradient norm is NaN or Inf (on by default, as in Megatron; fp16 loss-scale skips are "
             "not errors)")
    continue_on_save_failure: bool = option(False, help="when a periodic checkpoint cannot be written (a full disk), "
                                                        "keep training and try again at the next --save-interval "
                                                        "instead of stopping with the error")

    def __post_init__(self):
        for name in ("train_iters", "global_batch_size", "micro_batch_size", "log_interval"):
            _positive(name, getattr(self, name))
        for name in ("eval_interval", "eval_iters", "save_interval", "exit_interval", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} is invalid: expected a non-negative integer")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"global_batch_size={self.global_batch_size} is not divisible by micro_batch_size="
                f"{self.micro_batch_size}")
        if self.exit_duration_in_mins is not None and not self.exit_duration_in_mins > 0:
            raise ValueError(f"exit_duration_in_mins={self.exit_duration_in_mins!r} is invalid: expected a "
                             "positive number of minutes")
        # A restart with --save D --load D works from the very first start, before D exists.
        if self.load is not None and not os.path.isdir(self.load) and not self._load_is_save():
            raise ValueError(f"--load directory {self.load!r} does not exist")
        for name in ("finetune", "no_load_optim", "no_load_rng"):
            if getattr(self, name) and self.load is None:
                raise ValueError(f"{name}=True needs a checkpoint to load (--load)")
        if self.finetune and self._load_is_save():
            raise ValueError(f"finetune=True with save equal to load ({self.load!r}): the new run's checkpoints "
                             "would mix with the ones it starts from; give another --save")

    def _load_is_save(self) -> bool:
        return self.save is not None and self.load is not None and \
            os.path.abspath(self.save) == os.path.abspath(self.load)


@dataclass
class DownstreamEvalConfig:
    """lm-evaluation-harness runs in the background during training, on saved checkpoints
    (pip install -e '.[hf]')."""

    FLAG_PREFIX = "downstream-eval-"

    tasks: tuple = option((), parse=comma_list, metavar="LIST", help="lm-eval task names, comma-separated")
    interval: int = option(0, help="evaluate after every this many checkpoint saves (0: never)")
    include_path: Optional[str] = option(None, help="directory of local lm-eval task YAMLs")
    batch_size: int = option(8, help="lm-eval batch size")
    limit: Optional[int] = option(None, help="documents per task (default: all)")
    device: str = option("cpu", help="device of the background evaluation")

    def __post_init__(self):
        self.tasks = tuple(self.tasks)
        if not isinstance(self.interval, int) or self.interval < 0:
            raise ValueError(f"downstream eval interval={self.interval!r} is invalid: expected an integer >= 0")
        if self.interval and not self.tasks:
            raise ValueError("--downstream-eval-interval needs --downstream-eval-tasks (lm-eval task names)")
        if self.batch_size < 1:
            raise ValueError(f"downstream eval batch_size={self.batch_size!r} is invalid: expected >= 1")


@dataclass
class PretrainConfig:
    """Everything one training run needs; the command line is generated from these fields."""

    model: ModelConfig
    train: TrainConfig
    data: DataConfig
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    downstream_eval: DownstreamEvalConfig = field(default_factory=DownstreamEvalConfig)

    def __post_init__(self):
        if self.downstream_eval.interval and not self.train.save:
            raise ValueError("--downstream-eval-interval evaluates saved checkpoints: it needs --save")
        if (self.mixing.method == "hds" and self.mixing.hds.learnability_source == "valid"
                and not (self.train.eval_interval and self.train.eval_iters)):
            raise ValueError(f"--hds-learnability-source valid reads the losses of the periodic validation: it needs "
                             f"--eval-interval > 0 (got {self.train.eval_interval}) and --eval-iters > 0 (got "
                             f"{self.train.eval_iters})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

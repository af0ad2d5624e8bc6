"""Typed, validated configuration dataclasses: model, parallel layout, data, optimizer,
training run and data mixing.

Each field's comment is its user-facing help; the Megatron flag of the same meaning
is named where one exists. Validation happens in ``__post_init__`` so a bad value is
reported where it is set, naming the value and what is accepted. Only
``megatron_hds.arguments`` turns argv into these.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Optional

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
    """Shape and numerics of the GPT model (Megatron model flags)."""

    num_layers: int  # --num-layers: transformer layers in the whole model
    hidden_size: int  # --hidden-size
    num_attention_heads: int  # --num-attention-heads
    vocab_size: int  # tokenizer vocabulary; padded up, see padded_vocab_size()
    seq_length: int  # --seq-length: tokens per training sample
    ffn_hidden_size: Optional[int] = None  # --ffn-hidden-size; default 4*hidden (GeLU) or 8/3*hidden rounded to 64 (SwiGLU)
    max_position_embeddings: Optional[int] = None  # --max-position-embeddings; default seq_length
    position_embedding_type: str = "learned_absolute"  # --position-embedding-type {learned_absolute,rope}
    rotary_percent: float = 1.0  # --rotary-percent: fraction of each head's dims that rotary touches (Pythia: 0.25)
    rotary_base: int = 10000  # rotary frequency base
    normalization: str = "LayerNorm"  # --normalization {LayerNorm,RMSNorm}
    norm_epsilon: float = 1e-5  # epsilon of the norm layers
    swiglu: bool = False  # --swiglu: gated SiLU MLP instead of GeLU
    parallel_residual: bool = False  # x + attn(ln1(x)) + mlp(ln2(x)) as in GPT-NeoX / Pythia
    untie_embeddings_and_output_weights: bool = False  # --untie-embeddings-and-output-weights
    add_bias_linear: bool = True  # biases in the linear layers (Megatron --disable-bias-linear turns them off)
    attention_dropout: float = 0.0  # --attention-dropout
    hidden_dropout: float = 0.0  # --hidden-dropout (embeddings and residual branches)
    init_method_std: float = 0.02  # --init-method-std; output layers use std/sqrt(2*num_layers)
    make_vocab_size_divisible_by: int = 128  # --make-vocab-size-divisible-by (times TP)
    transformer_impl: str = "local"  # --transformer-impl {local,transformer_engine}
    torch_compile: bool = False  # --torch-compile: each transformer layer through torch.compile (inductor)
    # Activation recompute (Megatron's flags): keep fewer activations, recompute them in backward.
    # "full": whole layers, chosen by recompute_method; "selective" (--recompute-activations): the
    # attention core only (softmax(QK^T) V with its dropout).
    recompute_granularity: Optional[str] = None  # --recompute-granularity {full,selective}
    # --recompute-method with "full": "uniform" checkpoints chunks of recompute_num_layers layers
    # (the input of each chunk is kept); "block" checkpoints the first recompute_num_layers layers
    # of each pipeline stage one by one and keeps the rest
    recompute_method: Optional[str] = None
    recompute_num_layers: Optional[int] = None  # --recompute-num-layers (default 1 with "full")

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
    """How the world is split: TP fastest, then DP, then PP (Megatron's rank layout)."""

    tensor_model_parallel_size: int = 1  # --tensor-model-parallel-size
    pipeline_model_parallel_size: int = 1  # --pipeline-model-parallel-size
    # --sequence-parallel: split norms/dropout/residual activations along the sequence across TP
    # (less activation memory; no effect when TP is 1)
    sequence_parallel: bool = False
    # data parallel size is derived: world / (TP * PP)

    def __post_init__(self):
        _positive("tensor_model_parallel_size", self.tensor_model_parallel_size)
        _positive("pipeline_model_parallel_size", self.pipeline_model_parallel_size)


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
BATCH_LAYOUTS = ("single_domain", "hds", "mixed")
MIXING_METHODS = ("static", "uniform", "odm", "acodm", "hds")
REWARD_COMPONENTS = ("align", "quality", "norm")


@dataclass
class DataConfig:
    """Where the per-domain datasets come from and how they are split."""

    data_manifest: Optional[str] = None  # --data-manifest: the preprocessing manifest (one domain per entry)
    data_path: Optional[list] = None  # --data-path [w1] prefix1 [w2] prefix2 ...: Megatron's blend, one domain per prefix
    split: str = "969,30,1"  # --split: train/valid/test document shares of every domain
    data_cache_path: Optional[str] = None  # --data-cache-path: where sample indices are cached
    tokenizer_type: str = "GPTSentencePieceTokenizer"  # --tokenizer-type
    tokenizer_model: Optional[str] = None  # --tokenizer-model (default: the manifest's)

    def __post_init__(self):
        if (self.data_manifest is None) == (not self.data_path):
            raise ValueError(
                "give exactly one of --data-manifest and --data-path "
                f"(got data_manifest={self.data_manifest!r}, data_path={self.data_path!r})")


@dataclass
class OptimConfig:
    """AdamW, the LR schedule, clipping and numeric precision (Megatron optimizer flags)."""

    lr: float = 3e-4  # --lr: peak learning rate
    min_lr: float = 0.0  # --min-lr
    lr_decay_style: str = "cosine"  # --lr-decay-style {constant,linear,cosine}
    lr_decay_iters: Optional[int] = None  # --lr-decay-iters (default: train iters)
    lr_warmup_iters: Optional[int] = None  # --lr-warmup-iters
    lr_warmup_fraction: Optional[float] = None  # --lr-warmup-fraction (of the decay iters)
    weight_decay: float = 0.01  # --weight-decay (not applied to biases and norms)
    adam_beta1: float = 0.9  # --adam-beta1
    adam_beta2: float = 0.999  # --adam-beta2
    adam_eps: float = 1e-8  # --adam-eps
    clip_grad: float = 1.0  # --clip-grad: global gradient-norm clip (0 = off)
    precision: str = "fp32"  # --bf16 / --fp16 (fp32 master weights either way)
    # --use-distributed-optimizer: Adam state and fp32 master weights split over the DP ranks
    # (Megatron's distributed optimizer); checkpoints keep the unsharded layout
    use_distributed_optimizer: bool = False
    # --overlap-grad-reduce: start each gradient bucket's DP all-reduce during the last
    # micro-batch's backward, as soon as its gradients are final
    overlap_grad_reduce: bool = False
    ddp_bucket_size: Optional[int] = None  # --ddp-bucket-size: gradient elements per DP all-reduce bucket (default: 25 MiB)

    def __post_init__(self):
        _choice("precision", self.precision, PRECISIONS)
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r} is invalid: expected a positive float")
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

    train_iters: int  # --train-iters
    global_batch_size: int  # --global-batch-size: samples per step over all DP ranks
    micro_batch_size: int = 1  # --micro-batch-size: samples per forward pass per rank
    seed: int = 1234  # --seed
    log_interval: int = 10  # --log-interval
    eval_interval: int = 100  # --eval-interval (0 = no periodic evaluation)
    eval_iters: int = 10  # --eval-iters: micro-batches per DP rank per domain in one evaluation
    save: Optional[str] = None  # --save: checkpoint directory
    load: Optional[str] = None  # --load: checkpoint directory to resume from (latest)
    save_interval: int = 0  # --save-interval (0 = only at the end and on a pre-emption signal)
    log_dir: Optional[str] = None  # --log-dir: where metrics.jsonl goes (default: --save)
    tensorboard_dir: Optional[str] = None  # --tensorboard-dir
    wandb_project: Optional[str] = None  # --wandb-project
    wandb_exp_name: Optional[str] = None  # --wandb-exp-name
    exit_interval: int = 0  # --exit-interval: stop (after saving) once the iteration is a multiple of this
    exit_duration_in_mins: Optional[float] = None  # --exit-duration-in-mins: stop (after saving) once this much wall time has passed
    override_opt_param_scheduler: bool = False  # --override-opt_param-scheduler: keep this run's LR schedule on --load
    # --finetune: take only the model weights from --load and start a new run at iteration 0
    # (fresh optimizer, LR schedule, data order, scheduler, RNG); once --save holds a checkpoint
    # of this run, a restart resumes from it instead
    finetune: bool = False
    no_load_optim: bool = False  # --no-load-optim: resume everything but the optimizer state (Adam moments restart)
    no_load_rng: bool = False  # --no-load-rng: resume everything but the random-number generators

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
        for name in ("finetune", "no_load_optim", "no_load_rng"):
            if getattr(self, name) and self.load is None:
                raise ValueError(f"{name}=True needs a checkpoint to load (--load)")
        if self.finetune and self.save is not None and os.path.abspath(self.save) == os.path.abspath(self.load):
            raise ValueError(f"finetune=True with save equal to load ({self.load!r}): the new run's checkpoints "
                             "would mix with the ones it starts from; give another --save")


@dataclass
class MixingConfig:
    """How domain weights are chosen each step (the scheduler) and how batches are laid out."""

    method: str = "static"  # --mixing {static,uniform,odm,acodm,hds}
    weights: Optional[list | str] = None  # --mixing-weights: static weights / a learning scheduler's start; or "uniform"
    weight_floor: float = 0.0  # --mixing-weight-floor: the sampler keeps every domain at least this weight
    batch_layout: str = "single_domain"  # --mixing-batch-layout {single_domain,hds,mixed}
    update_interval: int = 1  # --mixing-update-interval: learning schedulers act every this many steps
    warmup_fraction: float = 0.02  # --mixing-warmup-fraction: HDS keeps the initial weights this share of the run
    overlap_update: bool = False  # --mixing-overlap-update: HDS/AC-ODM update on a worker thread during the next step
    # ODM (EXP3) settings
    odm_variant: str = "paper"  # --odm-variant {paper,released}
    odm_smoothing: float = 0.5  # --odm-smoothing: a in R <- a R + (1 - a) reward
    odm_warmup_steps: int = 0  # --odm-warmup-steps: steps at the initial weights (released 1B scripts: 2000)
    # HDS agent (SAC) settings; METHOD.md's reference values
    agent_gamma: float = 0.95  # --hds-gamma
    agent_tau: float = 0.001  # --hds-tau
    agent_buffer_size: int = 10_000  # --hds-buffer-size
    agent_batch_size: int = 32  # --hds-batch-size
    agent_lr: float = 1e-4  # --hds-lr: actor, critics and temperature
    agent_hidden_sizes: tuple = (256, 256)  # --hds-hidden-sizes
    agent_weight_floor: Optional[float] = None  # --hds-weight-floor (default 0.1 / D)
    agent_action_bound: Optional[float] = 2.0  # --hds-action-bound: c (actions in [-c, c] around the start), or None
    agent_seed: int = 0  # --hds-seed
    agent_log_std_max: float = 0.0  # --hds-log-std-max: upper bound of the policy's log-std over logits
    agent_log_alpha_init: float = 0.0  # --hds-log-alpha-init: initial log entropy temperature
    agent_target_entropy: Optional[float] = None  # --hds-target-entropy (default -D)
    hds_encoder: str = "mlp"  # --hds-encoder {mlp,domain_tokens}
    acodm_noise_std: float = 0.1  # --acodm-noise-std: exploration noise on the DDPG actor's logits
    hds_reward: tuple = REWARD_COMPONENTS  # --hds-reward align,quality,norm
    hds_lambda_align: float = 1.0  # --hds-lambda-align
    hds_lambda_quality: float = 10.0  # --hds-lambda-quality
    hds_lambda_norm: float = 10.0  # --hds-lambda-norm
    probe_mode: str = "sketch"  # --hds-probe {sketch,exact}: per-domain gradients on 3 late MLP outputs
    sketch_size: int = 4096  # --hds-sketch-size: CountSketch buckets per domain
    norm_matrices: int = 9  # --hds-norm-matrices: MLP output projections whose norms enter the state

    def __post_init__(self):
        _choice("method", self.method, MIXING_METHODS)
        _choice("batch_layout", self.batch_layout, BATCH_LAYOUTS)
        _choice("odm_variant", self.odm_variant, ("paper", "released"))
        _choice("probe_mode", self.probe_mode, ("sketch", "exact"))
        _choice("hds_encoder", self.hds_encoder, ("mlp", "domain_tokens"))
        if not 0.0 <= self.weight_floor < 1.0:
            raise ValueError(f"weight_floor={self.weight_floor!r} is invalid: expected a value in [0, 1)")
        for name in ("update_interval", "agent_buffer_size", "agent_batch_size", "sketch_size", "norm_matrices"):
            _positive(name, getattr(self, name))
        bound = self.agent_action_bound
        if bound is not None and not (math.isfinite(bound) and bound > 0):
            raise ValueError(f"--hds-action-bound {bound!r} is invalid: expected a positive number, or none")
        unknown = [c for c in self.hds_reward if c not in REWARD_COMPONENTS]
        if unknown or not self.hds_reward:
            raise ValueError(f"--hds-reward {','.join(self.hds_reward)!r} is invalid: choose from "
                             f"{','.join(REWARD_COMPONENTS)}")
        if self.weights is not None:
            if self.method == "uniform":
                raise ValueError("--mixing-weights does not apply to --mixing uniform")
            if isinstance(self.weights, str) and self.weights != "uniform":
                raise ValueError(f"--mixing-weights {self.weights!r} is invalid: expected numbers or 'uniform'")
            if not isinstance(self.weights, str) and (
                    any(not isinstance(w, (int, float)) or not w >= 0 for w in self.weights)
                    or not sum(self.weights) > 0):
                raise ValueError(f"--mixing-weights {' '.join(map(str, self.weights))} is invalid: expected "
                                 "non-negative numbers with a positive sum, or the word 'uniform' alone")


@dataclass
class DownstreamEvalConfig:
    """lm-evaluation-harness runs during training (every `interval` saves; 0 = never)."""

    tasks: tuple = ()  # --downstream-eval-tasks: lm-eval task names, comma-separated on the command line
    interval: int = 0  # --downstream-eval-interval: evaluate after every this many checkpoint saves
    include_path: Optional[str] = None  # --downstream-eval-include-path: directory of local task YAMLs
    batch_size: int = 8  # --downstream-eval-batch-size
    limit: Optional[int] = None  # --downstream-eval-limit: documents per task (default: all)
    device: str = "cpu"  # --downstream-eval-device: where the background evaluation runs

    def __post_init__(self):
        if not isinstance(self.interval, int) or self.interval < 0:
            raise ValueError(f"downstream eval interval={self.interval!r} is invalid: expected an integer >= 0")
        if self.interval and not self.tasks:
            raise ValueError("--downstream-eval-interval needs --downstream-eval-tasks (lm-eval task names)")
        if self.batch_size < 1:
            raise ValueError(f"downstream eval batch_size={self.batch_size!r} is invalid: expected >= 1")


@dataclass
class PretrainConfig:
    """Everything one training run needs."""

    model: ModelConfig
    parallel: ParallelConfig
    data: DataConfig
    optim: OptimConfig
    train: TrainConfig
    mixing: MixingConfig
    downstream_eval: DownstreamEvalConfig = field(default_factory=DownstreamEvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

"""Megatron-compatible command line -> PretrainConfig (the only module that reads argv).

Flags keep Megatron-LM's spelling and meaning; ours are few (--model presets,
--data-manifest, --mixing*). Unknown flags and contradictory combinations fail with
a message naming them. The vocabulary size comes from the tokenizer (the manifest's,
or --tokenizer-model), never from a flag, so the embedding always matches the data.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Optional

from megatron_hds.config import (
    BATCH_LAYOUTS,
    MIXING_METHODS,
    MODEL_PRESETS,
    RECOMPUTE_GRANULARITIES,
    RECOMPUTE_METHODS,
    DataConfig,
    DownstreamEvalConfig,
    MixingConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    PretrainConfig,
    TrainConfig,
    model_preset,
)

# Model flags: argparse dest -> ModelConfig field. Given flags override the preset.
_MODEL_FLAGS = {
    "num_layers": int,
    "hidden_size": int,
    "ffn_hidden_size": int,
    "num_attention_heads": int,
    "seq_length": int,
    "max_position_embeddings": int,
    "rotary_percent": float,
    "init_method_std": float,
    "attention_dropout": float,
    "hidden_dropout": float,
    "make_vocab_size_divisible_by": int,
    "recompute_num_layers": int,
}


def _float_or_none(text: str) -> Optional[float]:
    """'none' (any case) -> None, else a float; for flags whose default may be turned off."""
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def _weight(text: str):
    """One --mixing-weights entry: a number, or the word 'uniform' (alone: 1/D each)."""
    if text.strip().lower() == "uniform":
        return "uniform"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'uniform', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m megatron_hds.training.pretrain",
        description="Pre-train a GPT model with an online data-mixture scheduler (Megatron-style flags).",
        allow_abbrev=False,
    )
    g = parser.add_argument_group("model")
    g.add_argument("--model", choices=sorted(MODEL_PRESETS), default=None,
                   help="start from a preset shape (flags below override it); without it the shape flags are required")
    for dest, kind in _MODEL_FLAGS.items():
        g.add_argument("--" + dest.replace("_", "-"), dest=dest, type=kind, default=None)
    g.add_argument("--position-embedding-type", choices=["learned_absolute", "rope"], default=None)
    g.add_argument("--normalization", choices=["LayerNorm", "RMSNorm"], default=None)
    g.add_argument("--swiglu", action="store_true", default=None)
    g.add_argument("--untie-embeddings-and-output-weights", action="store_true", default=None)
    g.add_argument("--use-parallel-residual", dest="parallel_residual", action="store_true", default=None,
                   help="x + attn(ln1(x)) + mlp(ln2(x)) (GPT-NeoX / Pythia)")
    g.add_argument("--disable-bias-linear", action="store_true", help="no biases in linear layers")
    g.add_argument("--transformer-impl", choices=["local", "transformer_engine"], default=None)
    g.add_argument("--torch-compile", action="store_true", default=None,
                   help="compile each transformer layer with torch.compile (fuses the elementwise work; "
                        "the first steps pay the compilation)")
    g.add_argument("--recompute-activations", action="store_true",
                   help="selective activation recompute: same as --recompute-granularity selective")
    g.add_argument("--recompute-granularity", choices=list(RECOMPUTE_GRANULARITIES), default=None,
                   help="full: recompute whole layers (see --recompute-method); selective: the attention core")
    g.add_argument("--recompute-method", choices=list(RECOMPUTE_METHODS), default=None,
                   help="with full: uniform (chunks of --recompute-num-layers layers) or block (the first "
                        "--recompute-num-layers layers of each pipeline stage)")

    g = parser.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument("--sequence-parallel", action="store_true",
                   help="split the residual stream along the sequence across TP ranks (Megatron's)")

    g = parser.add_argument_group("data")
    g.add_argument("--data-manifest", default=None, help="manifest written by tools/preprocess_data.py")
    g.add_argument("--data-path", nargs="+", default=None, help="Megatron blend: [w1] prefix1 [w2] prefix2 ...")
    g.add_argument("--split", default="969,30,1")
    g.add_argument("--data-cache-path", default=None)
    g.add_argument("--tokenizer-type", default="GPTSentencePieceTokenizer")
    g.add_argument("--tokenizer-model", default=None)

    g = parser.add_argument_group("batch and run")
    g.add_argument("--micro-batch-size", type=int, default=1)
    g.add_argument("--global-batch-size", type=int, required=True)
    g.add_argument("--train-iters", type=int, required=True)
    g.add_argument("--seed", type=int, default=1234)

    g = parser.add_argument_group("optimizer")
    g.add_argument("--lr", type=float, default=3e-4)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--lr-decay-style", choices=["constant", "linear", "cosine"], default="cosine")
    g.add_argument("--lr-decay-iters", type=int, default=None)
    g.add_argument("--lr-warmup-iters", type=int, default=None)
    g.add_argument("--lr-warmup-fraction", type=float, default=None)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--adam-beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", type=float, default=0.999)
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument("--clip-grad", type=float, default=1.0)
    g.add_argument("--bf16", action="store_true")
    g.add_argument("--fp16", action="store_true")
    g.add_argument("--use-distributed-optimizer", action="store_true",
                   help="shard the Adam state and fp32 master weights over the data-parallel ranks")
    g.add_argument("--overlap-grad-reduce", action="store_true",
                   help="overlap the data-parallel gradient all-reduce with the last micro-batch's backward")
    g.add_argument("--ddp-bucket-size", type=int, default=None,
                   help="gradient elements per data-parallel all-reduce bucket (default: 25 MiB of gradients)")

    g = parser.add_argument_group("logging and checkpoints")
    g.add_argument("--log-interval", type=int, default=10)
    g.add_argument("--eval-interval", type=int, default=100)
    g.add_argument("--eval-iters", type=int, default=10)
    g.add_argument("--save", default=None)
    g.add_argument("--load", default=None)
    g.add_argument("--save-interval", type=int, default=0)
    g.add_argument("--exit-interval", type=int, default=0)
    g.add_argument("--exit-duration-in-mins", type=float, default=None,
                   help="save and exit once this many minutes have passed since start (all ranks agree)")
    g.add_argument("--exit-signal-handler", action="store_true",
                   help="accepted for Megatron compatibility: SIGTERM/SIGUSR1 always save and exit here")
    g.add_argument("--override-opt_param-scheduler", dest="override_opt_param_scheduler", action="store_true",
                   help="on --load, keep this run's LR schedule instead of requiring the checkpoint's")
    g.add_argument("--finetune", action="store_true",
                   help="take only the model weights from --load and start a new run at iteration 0 "
                        "(a restart resumes from --save once it holds a checkpoint)")
    g.add_argument("--no-load-optim", action="store_true",
                   help="on --load, leave out the optimizer state (Adam moments restart; the LR schedule continues)")
    g.add_argument("--no-load-rng", action="store_true", help="on --load, leave out the random-number generator states")
    g.add_argument("--log-dir", default=None, help="where metrics.jsonl goes (default: --save)")
    g.add_argument("--tensorboard-dir", default=None)
    g.add_argument("--wandb-project", default=None)
    g.add_argument("--wandb-exp-name", default=None)

    g = parser.add_argument_group("downstream evaluation (lm-evaluation-harness, pip install -e '.[hf]')")
    g.add_argument("--downstream-eval-tasks", default="",
                   help="comma-separated lm-eval task names, evaluated in the background after checkpoint saves")
    g.add_argument("--downstream-eval-interval", type=int, default=0,
                   help="evaluate after every this many checkpoint saves (0: never)")
    g.add_argument("--downstream-eval-include-path", default=None, help="directory of local lm-eval task YAMLs")
    g.add_argument("--downstream-eval-batch-size", type=int, default=8)
    g.add_argument("--downstream-eval-limit", type=int, default=None, help="documents per task (default: all)")
    g.add_argument("--downstream-eval-device", default="cpu", help="device of the background evaluation")

    g = parser.add_argument_group("data mixing")
    g.add_argument("--mixing", choices=MIXING_METHODS, default="static")
    g.add_argument("--mixing-weights", type=_weight, nargs="+", default=None,
                   help="the static weights, or where a learning scheduler starts: one number per domain, "
                        "or 'uniform' (default: the natural token shares)")
    g.add_argument("--mixing-weight-floor", type=float, default=0.0)
    g.add_argument("--mixing-batch-layout", choices=BATCH_LAYOUTS, default="single_domain")
    g.add_argument("--mixing-update-interval", type=int, default=1)
    g.add_argument("--mixing-warmup-fraction", type=float, default=0.02,
                   help="HDS: share of the run at the initial weights before the agent acts")
    g.add_argument("--mixing-overlap-update", action="store_true",
                   help="HDS/AC-ODM: act first, then run the agent's update on a worker thread while the "
                        "next step trains (the policy acts one update later; off the step's critical path)")
    g.add_argument("--odm-variant", choices=["paper", "released"], default="paper")
    g.add_argument("--odm-smoothing", type=float, default=0.5)
    g.add_argument("--odm-warmup-steps", type=int, default=0)
    g.add_argument("--hds-reward", default="align,quality,norm", help="reward components (comma-separated)")
    g.add_argument("--hds-lambda-align", type=float, default=1.0)
    g.add_argument("--hds-lambda-quality", type=float, default=10.0)
    g.add_argument("--hds-lambda-norm", type=float, default=10.0)
    g.add_argument("--hds-gamma", type=float, default=0.95)
    g.add_argument("--hds-tau", type=float, default=0.001)
    g.add_argument("--hds-buffer-size", type=int, default=10_000)
    g.add_argument("--hds-batch-size", type=int, default=32)
    g.add_argument("--hds-lr", type=float, default=1e-4)
    g.add_argument("--hds-hidden-sizes", type=int, nargs="+", default=[256, 256])
    g.add_argument("--hds-weight-floor", type=float, default=None, help="default 0.1 / number of domains")
    g.add_argument("--hds-seed", type=int, default=0)
    g.add_argument("--hds-action-bound", type=_float_or_none, default=2.0,
                   help="HDS and AC-ODM: c, the action is c*tanh-squashed and adjusts the initial weights' logits "
                        "by at most c each (mixing/sac.py ActionMap); 'none' for free logits")
    g.add_argument("--hds-log-std-max", type=float, default=0.0,
                   help="upper bound of the SAC policy's log-std over the logits (std <= e^this)")
    g.add_argument("--hds-log-alpha-init", type=float, default=0.0, help="initial log entropy temperature")
    g.add_argument("--hds-target-entropy", type=float, default=None, help="default -(number of domains)")
    g.add_argument("--hds-encoder", choices=["mlp", "domain_tokens"], default="mlp")
    g.add_argument("--acodm-noise-std", type=float, default=0.1,
                   help="AC-ODM exploration noise (its agent shares the --hds-gamma/tau/buffer/batch/lr/hidden flags)")
    g.add_argument("--hds-probe", choices=["sketch", "exact"], default="sketch")
    g.add_argument("--hds-sketch-size", type=int, default=4096)
    g.add_argument("--hds-norm-matrices", type=int, default=9)
    return parser


def tokenizer_vocab_size(data: DataConfig) -> int:
    """The vocabulary size the data was tokenized with (manifest record, else the model file)."""
    if data.tokenizer_model is None and data.data_manifest is not None:
        try:
            with open(data.data_manifest, encoding="utf-8") as f:
                return int(json.load(f)["tokenizer"]["vocab_size"])
        except FileNotFoundError:
            raise ValueError(f"--data-manifest {data.data_manifest!r} does not exist") from None
    if data.tokenizer_model is None:
        raise ValueError("--tokenizer-model is required with --data-path (the vocabulary size comes from it)")
    from megatron_hds.data.tokenizer import build_tokenizer

    return build_tokenizer(data.tokenizer_type, data.tokenizer_model).vocab_size


def _model_config(args, vocab_size: int) -> ModelConfig:
    overrides = {dest: getattr(args, dest) for dest in _MODEL_FLAGS if getattr(args, dest) is not None}
    for dest in ("position_embedding_type", "normalization", "swiglu", "untie_embeddings_and_output_weights",
                 "parallel_residual", "transformer_impl", "torch_compile"):
        if getattr(args, dest) is not None:
            overrides[dest] = getattr(args, dest)
    if args.disable_bias_linear:
        overrides["add_bias_linear"] = False
    if args.recompute_activations:
        if args.recompute_granularity not in (None, "selective"):
            raise ValueError(f"--recompute-activations means --recompute-granularity selective, not "
                             f"{args.recompute_granularity!r}: give one of the two")
        overrides["recompute_granularity"] = "selective"
    for dest in ("recompute_granularity", "recompute_method"):
        if getattr(args, dest) is not None:
            overrides[dest] = getattr(args, dest)
    overrides["vocab_size"] = vocab_size
    if args.model is not None:
        return model_preset(args.model, **overrides)
    missing = [f"--{f.replace('_', '-')}" for f in ("num_layers", "hidden_size", "num_attention_heads", "seq_length")
               if f not in overrides]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or give --model with a preset: {', '.join(MODEL_PRESETS)})")
    return ModelConfig(**overrides)


def parse_args(argv: Optional[list] = None) -> PretrainConfig:
    """Parse Megatron-style flags into a validated PretrainConfig; SystemExit(2) with a message on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return config_from_args(args)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    if args.bf16 and args.fp16:
        raise ValueError("--bf16 and --fp16 are mutually exclusive")
    if args.lr_warmup_iters is not None and args.lr_warmup_fraction is not None:
        raise ValueError("--lr-warmup-iters and --lr-warmup-fraction are mutually exclusive")
    if args.load is not None and not os.path.isdir(args.load):
        raise ValueError(f"--load directory {args.load!r} does not exist")
    data = DataConfig(
        data_manifest=args.data_manifest,
        data_path=args.data_path,
        split=args.split,
        data_cache_path=args.data_cache_path,
        tokenizer_type=args.tokenizer_type,
        tokenizer_model=args.tokenizer_model,
    )
    model = _model_config(args, tokenizer_vocab_size(data))
    optim = OptimConfig(
        lr=args.lr,
        min_lr=args.min_lr,
        lr_decay_style=args.lr_decay_style,
        lr_decay_iters=args.lr_decay_iters,
        lr_warmup_iters=args.lr_warmup_iters,
        lr_warmup_fraction=args.lr_warmup_fraction,
        weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        adam_eps=args.adam_eps,
        clip_grad=args.clip_grad,
        precision="bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        use_distributed_optimizer=args.use_distributed_optimizer,
        overlap_grad_reduce=args.overlap_grad_reduce,
        ddp_bucket_size=args.ddp_bucket_size,
    )
    train = TrainConfig(
        train_iters=args.train_iters,
        global_batch_size=args.global_batch_size,
        micro_batch_size=args.micro_batch_size,
        seed=args.seed,
        log_interval=args.log_interval,
        eval_interval=args.eval_interval,
        eval_iters=args.eval_iters,
        save=args.save,
        load=args.load,
        save_interval=args.save_interval,
        log_dir=args.log_dir,
        tensorboard_dir=args.tensorboard_dir,
        wandb_project=args.wandb_project,
        wandb_exp_name=args.wandb_exp_name,
        exit_interval=args.exit_interval,
        exit_duration_in_mins=args.exit_duration_in_mins,
        override_opt_param_scheduler=args.override_opt_param_scheduler,
        finetune=args.finetune,
        no_load_optim=args.no_load_optim,
        no_load_rng=args.no_load_rng,
    )
    mixing = MixingConfig(
        method=args.mixing,
        weights="uniform" if args.mixing_weights == ["uniform"] else args.mixing_weights,
        weight_floor=args.mixing_weight_floor,
        batch_layout=args.mixing_batch_layout,
        update_interval=args.mixing_update_interval,
        warmup_fraction=args.mixing_warmup_fraction,
        overlap_update=args.mixing_overlap_update,
        odm_variant=args.odm_variant,
        odm_smoothing=args.odm_smoothing,
        odm_warmup_steps=args.odm_warmup_steps,
        agent_gamma=args.hds_gamma,
        agent_tau=args.hds_tau,
        agent_buffer_size=args.hds_buffer_size,
        agent_batch_size=args.hds_batch_size,
        agent_lr=args.hds_lr,
        agent_hidden_sizes=tuple(args.hds_hidden_sizes),
        agent_weight_floor=args.hds_weight_floor,
        agent_action_bound=args.hds_action_bound,
        agent_seed=args.hds_seed,
        agent_log_std_max=args.hds_log_std_max,
        agent_log_alpha_init=args.hds_log_alpha_init,
        agent_target_entropy=args.hds_target_entropy,
        hds_encoder=args.hds_encoder,
        acodm_noise_std=args.acodm_noise_std,
        hds_reward=tuple(c.strip() for c in args.hds_reward.split(",") if c.strip()),
        hds_lambda_align=args.hds_lambda_align,
        hds_lambda_quality=args.hds_lambda_quality,
        hds_lambda_norm=args.hds_lambda_norm,
        probe_mode=args.hds_probe,
        sketch_size=args.hds_sketch_size,
        norm_matrices=args.hds_norm_matrices,
    )
    parallel = ParallelConfig(
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        sequence_parallel=args.sequence_parallel,
    )
    downstream_eval = DownstreamEvalConfig(
        tasks=tuple(t.strip() for t in args.downstream_eval_tasks.split(",") if t.strip()),
        interval=args.downstream_eval_interval,
        include_path=args.downstream_eval_include_path,
        batch_size=args.downstream_eval_batch_size,
        limit=args.downstream_eval_limit,
        device=args.downstream_eval_device,
    )
    if downstream_eval.interval and not args.save:
        raise ValueError("--downstream-eval-interval evaluates saved checkpoints: it needs --save")
    return PretrainConfig(model=model, parallel=parallel, data=data, optim=optim, train=train, mixing=mixing,
                          downstream_eval=downstream_eval)

"""The training loop: Trainer builds everything one run needs from a PretrainConfig and trains.

One step: every rank computes the same batch plan from (seed, step, weights, cursors)
and takes its DP slice; the pipeline schedule runs the micro-batches; per-domain loss
sums from the last stage and the grad norm are combined; AdamW steps; rank 0's
mixture scheduler turns the step's signals into the next weights, and one broadcast
puts them on every rank. Checkpoints hold everything needed to continue bit for bit:
model, optimizer, LR schedule, RNG, sampler cursors, scheduler state, current weights.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron_hds.checkpoint.layout import find_latest_iteration
from megatron_hds.checkpoint.rng import restore_rng_state
from megatron_hds.checkpoint.store import CheckpointSaveError, load_checkpoint, save_checkpoint
from megatron_hds.config import PretrainConfig
from megatron_hds.data.domains import resolve_domains
from megatron_hds.data.gpt_dataset import build_domain_datasets
from megatron_hds.data.mixture import MixtureConfig, MixtureSampler
from megatron_hds.evaluation.downstream import maybe_evaluate_after_save
from megatron_hds.evaluation.held_out import build_held_out_set, evaluate
from megatron_hds.mixing.base import StepSignals
from megatron_hds.mixing.collector import NoSignals, SignalCollector
from megatron_hds.mixing.factory import LEARNING_METHODS, build_scheduler
from megatron_hds.model.gpt import GPTModel, finalize_model_grads
from megatron_hds.optim import build_optimizer
from megatron_hds.optim.lr_schedule import LRScheduleConfig, LRScheduler
from megatron_hds.parallel.data_parallel import GradientAllReducer, global_norm
from megatron_hds.parallel.random import seed_default_generator
from megatron_hds.parallel.schedules import forward_backward, masked_mean_loss
from megatron_hds.parallel.state import ParallelState
from megatron_hds.precision import torch_dtype
from megatron_hds.training.flops import device_name, model_flops_per_token, peak_flops
from megatron_hds.training.metrics import MetricsConfig, MetricsLogger
from megatron_hds.training.nan_check import check_finite
from megatron_hds.training.preemption import SignalSaveHandler, agree
from megatron_hds.training.restart import cut_metrics_log, log_position
from megatron_hds.training.step import all_reduce_domain_sums, load_micro_batch, split_means

logger = logging.getLogger(__name__)


def _world_barrier():
    return dist.barrier if dist.is_initialized() else None


def _broadcast_weights(weights: Optional[np.ndarray], num_domains: int, state: ParallelState) -> np.ndarray:
    """Global rank 0's weights on every rank: the step's one broadcast of D floats."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):  # one process: nothing to send
        return np.array(weights, dtype=np.float64)
    tensor = torch.zeros(num_domains, dtype=torch.float64, device=state.device)
    if state.rank == 0:
        tensor.copy_(torch.as_tensor(weights, dtype=torch.float64))
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(tensor, src=0)
    return tensor.cpu().numpy()


def _batch_hash(plan) -> str:
    return hashlib.sha1(np.ascontiguousarray(plan.pairs()).tobytes()).hexdigest()[:16]


class Trainer:
    """Builds everything for one run from a PretrainConfig and trains."""

    def __init__(self, config: PretrainConfig, state: ParallelState, scheduler=None):
        self._start_time = time.monotonic()  # --exit-duration-in-mins counts from here
        self.config = config
        self.state = state
        train, model_cfg, optim = config.train, config.model, config.optim
        if state.device.type == "cpu" and optim.precision != "fp32":
            raise ValueError(f"--{optim.precision} needs a GPU; on CPU train in fp32 (drop --{optim.precision})")
        seed_default_generator(train.seed, state.pp_rank, state.device)  # same dropout masks across TP
        np.random.seed(train.seed % 2**32)

        self.domains = resolve_domains(config.data)
        num_domains = len(self.domains.names)
        datasets = build_domain_datasets(
            self.domains.prefixes, self.domains.names, config.data.split, model_cfg.seq_length, train.seed,
            cache_dir=config.data.data_cache_path, is_builder=state.rank == 0, barrier=_world_barrier(),
            held_out_prefixes=self.domains.held_out_prefixes, eval_seed=config.data.eval_seed)
        self.train_sets = datasets["train"]
        empty = [n for n, d in zip(self.domains.names, self.train_sets) if len(d) == 0]
        if empty:
            raise ValueError(f"domains {empty} have no training sample of {model_cfg.seq_length + 1} tokens in "
                             f"their train split ({config.data.split}): add data or leave them out")
        # HDS's influence measured against validation gradients (--hds-influence-target valid).
        self._validation_gradients = (config.mixing.method, config.mixing.hds.influence_target) == ("hds", "valid")
        self.held_out = self._held_out_sets(datasets)
        if self._validation_gradients:
            self._validation_pass_interval = config.mixing.hds.validation_pass_interval(
                sum(1 for d in self.held_out["valid"].datasets if len(d)), train.global_batch_size)

        self.model = GPTModel(model_cfg, state, seed=train.seed, dtype=torch_dtype(optim.precision))
        self.optimizer = build_optimizer(self.model, optim.lr, optim.weight_decay,
                                         (optim.adam_beta1, optim.adam_beta2), optim.adam_eps,
                                         precision=optim.precision, distributed=optim.use_distributed_optimizer,
                                         dp_group=state.dp_group)
        self.lr_scheduler = LRScheduler(self.optimizer, LRScheduleConfig.from_config(optim, train.train_iters))
        bucket_mb = 25.0 if optim.ddp_bucket_size is None else \
            optim.ddp_bucket_size * torch.finfo(torch_dtype(optim.precision)).bits / 8 / 2**20
        self.grad_reducer = GradientAllReducer(self.model.parameters(), state.dp_group, bucket_size_mb=bucket_mb,
                                               overlap=optim.overlap_grad_reduce)
        self.collector = NoSignals()
        if config.mixing.method in LEARNING_METHODS:
            self.collector = SignalCollector(self.model, state, config.mixing.probe, self.domains.natural_weights,
                                             train.seed, self.train_sets, held_out_rows=self._validation_gradients,
                                             optimizer=self.optimizer)
        self.sampler = MixtureSampler(MixtureConfig(
            domain_names=tuple(self.domains.names), domain_sizes=tuple(len(d) for d in self.train_sets),
            global_batch_size=train.global_batch_size, micro_batch_size=train.micro_batch_size,
            data_parallel_size=state.dp_size, seed=train.seed, layout=config.mixing.batch_layout,
            weight_floor=config.mixing.weight_floor))
        # The scheduler lives on global rank 0 only; its weights reach the others by broadcast.
        self.scheduler = None
        if state.rank == 0:
            self.scheduler = scheduler or build_scheduler(config.mixing, self.domains.natural_weights,
                                                          self.collector.num_matrices, train.train_iters)
        self.weights = _broadcast_weights(
            self.scheduler.initial_weights() if self.scheduler else None, num_domains, state)
        self.iteration = 0
        self.consumed_samples = 0
        self.saves = 0  # checkpoint saves by this process (the downstream-eval hook counts them)
        self._resumed_log = None  # the metrics log's position recorded by the checkpoint resumed from
        self._signals_time = 0.0
        if train.finetune and train.save is not None and find_latest_iteration(train.save) is not None:
            # A restarted fine-tuning run: its own checkpoint, not the weights it started from.
            logger.info("--finetune: %s already holds this run's checkpoint; resuming from it", train.save)
            self._load(train.save)
        elif train.load is not None:
            self._load(train.load, weights_only=train.finetune)

        log_dir = train.log_dir or train.save
        run_record = config.to_dict() | {"domains": self.domains.names,
                                         "natural_weights": self.domains.natural_weights.tolist()}
        if state.rank == 0 and log_dir is not None:  # a killed attempt's lines past this start are redone
            cut_metrics_log(log_dir, self.iteration, self._resumed_log, run_record)
        self.metrics = MetricsLogger(MetricsConfig(
            log_dir=log_dir, train_iters=train.train_iters, tensorboard_dir=train.tensorboard_dir,
            wandb_project=train.wandb_project, wandb_exp_name=train.wandb_exp_name,
            flops_per_token=model_flops_per_token(model_cfg, state.tp_size),
            peak_flops_per_device=peak_flops(device_name(state.device), optim.precision),
            num_devices=state.layout.world_size), rank=state.rank, start_iteration=self.iteration)
        if self.iteration == 0:
            self.metrics.log_config(run_record)

    # ---- one step --------------------------------------------------------------------
    def _loss_fn(self, per_token_loss, micro_batch):
        return self.optimizer.scale_loss(masked_mean_loss(per_token_loss, micro_batch))

    def _found_inf_reduce(self, flag: torch.Tensor) -> None:
        group = self.state.model_parallel_group
        if group is not None and dist.get_world_size(group) > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)

    def train_step(self):
        """One optimizer step on the global batch drawn with the current weights."""
        state = self.state
        num_domains = len(self.domains.names)
        plan = self.sampler.plan(self.iteration, self.weights)
        rank_batch = plan.micro_batches_for(state.dp_rank)
        # The last stage's loss pass fills this with per-domain loss sums and token counts.
        domain_sums = torch.zeros(2 * num_domains, dtype=torch.float32, device=state.device)
        micro_batches = [load_micro_batch(self.train_sets, domains, indices, state.device, domain_sums)
                         for domains, indices in rank_batch]

        self.optimizer.zero_grad()
        validation = self._validation_gradient_batches()
        self.collector.begin_step(plan, state.dp_rank, held_out=None if validation is None else validation[0])
        validation_time = 0.0 if validation is None else self._validation_gradient_pass(validation[1])
        reducer = self.grad_reducer
        forward_backward(self.model, micro_batches, loss_fn=self._loss_fn,
                         before_last_backward=reducer.arm if reducer.overlap else None)
        self.collector.end_backwards()
        sharded = self.optimizer.sharded_over_dp
        if reducer.overlap:  # buckets reduced during backward hold the gradients before finalize
            reducer.allreduce()
        finalize_model_grads(self.model)
        if not sharded and not reducer.overlap:  # the distributed optimizer reduce-scatters in its step
            reducer.allreduce()
        self.collector.before_optimizer_step(self.optimizer)
        result = self.optimizer.step(
            self.config.optim.clip_grad, grad_norm_fn=lambda pairs: global_norm(pairs, state, sharded),
            found_inf_reduce=self._found_inf_reduce)
        self.lr_scheduler.step()
        self.sampler.advance(plan)

        sums = domain_sums.double()  # combined over ranks in float64
        # The probes' sketches and the weight norms share the loss sums' all-reduce: one
        # collective per step for every signal.
        if state.device.type != "cpu":
            # Let the optimizer's kernels finish first, so that the scheduler's logged time does not
            # absorb them; the signals' first copy to the host would wait for them anyway.
            torch.get_device_module(state.device).synchronize(state.device)
        signals_start = time.perf_counter()
        share = self.collector.local_share(reserve=sums.numel())  # the sums go in front: no copy of the share
        reduced, reduced_share = all_reduce_domain_sums(sums, state, share, extra_after_sums=True)
        domain_loss, domain_tokens = split_means(reduced)
        if self.config.train.check_for_nan_in_loss_and_grad:
            check_finite(self.iteration + 1, self.domains.names, domain_loss, domain_tokens, result.grad_norm)
        extra = self.collector.finish(reduced_share, plan, step_ok=not result.skipped)
        self._signals_time = time.perf_counter() - signals_start + validation_time
        self.iteration += 1
        self.consumed_samples += self.config.train.global_batch_size
        return plan, result, domain_loss, domain_tokens, extra

    def _validation_gradient_batches(self):
        """Every validation_pass_interval steps of HDS with --hds-influence-target valid: a micro-batch
        of one validation sample per domain, domain k's on DP rank k mod dp (the same on every rank of a
        replica), drawn from (seed, iteration, domain), so a resumed run draws the same. One sample: the
        running average over the passes does the averaging, and the cost stays a small share of a
        small global batch. Returns ((per-domain micro-batch counts, this rank's domains), this rank's
        micro-batches), or None on the other steps."""
        if not self._validation_gradients or self.iteration % self._validation_pass_interval:
            return None
        state = self.state
        datasets = self.held_out["valid"].datasets
        domains = [d for d, dataset in enumerate(datasets) if len(dataset)]
        counts = np.zeros(len(datasets))
        counts[domains] = 1
        mine = domains[state.dp_rank::state.dp_size]
        scratch = torch.zeros(2 * len(datasets), dtype=torch.float32, device=state.device)  # (losses unused)
        batches = [load_micro_batch(datasets, np.full(1, d), np.random.default_rng(
            [self.config.train.seed, self.iteration, d]).integers(len(datasets[d]), size=1), state.device, scratch)
            for d in mine]
        return (counts, mine), batches

    def _validation_gradient_pass(self, passes) -> float:
        """Forward and backward of this rank's validation micro-batches, whose gradients only the probes
        read: the optimizer's are cleared after them. Returns its time (the scheduler's cost)."""
        start = time.perf_counter()
        if passes:  # undo forward_backward's 1 / micro-batches: one micro-batch's gradient each
            # In eval mode, as evaluated: no dropout, so no draw from the training's random streams,
            # which DP ranks with different numbers of these passes would otherwise leave unequal.
            self.model.eval()
            try:
                # Only the probed matrices' gradients are read: the rest of the backward is skipped.
                forward_backward(self.model, passes, loss_fn=lambda out, batch: self._loss_fn(out, batch) * len(passes),
                                 grad_only_for=[p for _, p in self.collector.probe.named])
            finally:
                self.model.train()
        self.collector.end_backwards()  # (the probes' reads of .grad finish before zero_grad)
        self.optimizer.zero_grad()
        return time.perf_counter() - start

    def observe(self, plan, domain_loss, domain_tokens, extra) -> float:
        """Rank 0's scheduler sees the step; the next weights reach every rank. Returns the time the
        scheduler cost this step (its signals, its update and the broadcast)."""
        start = time.perf_counter() - self._signals_time
        next_weights = None
        if self.scheduler is not None:
            products = domain_loss * domain_tokens
            products[np.isnan(products)] = 0.0  # np.nansum's own replacement, without its wrappers
            total = float(np.add.reduce(products) / max(domain_tokens.sum(), 1))
            next_weights = self.scheduler.observe(StepSignals(
                iteration=self.iteration, train_iters=self.config.train.train_iters, weights=plan.weights.copy(),
                domain_loss=domain_loss, domain_tokens=domain_tokens,
                domain_samples=np.asarray(plan.domain_sample_counts), loss=total, extra=extra,
                observed=self.sampler.observation_probabilities(plan.step, plan.weights)))
        self.weights = _broadcast_weights(next_weights, len(self.domains.names), self.state)
        return time.perf_counter() - start

    # ---- the loop --------------------------------------------------------------------
    def train(self) -> dict:
        cfg = self.config.train
        tokens_per_step = cfg.global_batch_size * self.config.model.seq_length
        self.model.train()
        last_eval = None
        window = _Window(len(self.domains.names))
        first_step = True
        with SignalSaveHandler(device=self.state.device) as preemption:
            while self.iteration < cfg.train_iters:
                start = time.perf_counter()
                plan, result, domain_loss, domain_tokens, extra = self.train_step()
                if first_step and self.state.rank == 0:  # Adam's state exists from the first step on
                    sharding = f", split over DP={self.state.dp_size}" if self.optimizer.sharded_over_dp else ""
                    logger.info("optimizer state on rank 0: %.1f MiB%s", self.optimizer.state_bytes() / 2**20,
                                sharding)
                first_step = False
                scheduler_time = self.observe(plan, domain_loss, domain_tokens, extra)
                window.add(time.perf_counter() - start, domain_loss, domain_tokens, plan, result, scheduler_time)
                if self.iteration % cfg.log_interval == 0 or self.iteration == cfg.train_iters:
                    self._log_train(window, tokens_per_step)
                    window = _Window(len(self.domains.names))
                if cfg.eval_interval and self.iteration % cfg.eval_interval == 0:
                    last_eval = self._evaluate("valid")
                    self._tell_scheduler(last_eval)
                # The wall clock differs per rank: agreed with the signals in one collective.
                out_of_time = bool(cfg.exit_duration_in_mins and
                                   time.monotonic() - self._start_time >= 60 * cfg.exit_duration_in_mins)
                stop = preemption.should_save_and_exit(also=out_of_time)
                reason = ("signal" if preemption.signal_received() else "--exit-duration-in-mins" if out_of_time
                          else "a signal or the time limit on another rank")
                if not stop and cfg.exit_interval and self.iteration % cfg.exit_interval == 0:
                    stop, reason = True, "--exit-interval"
                periodic = bool(cfg.save_interval and self.iteration % cfg.save_interval == 0)
                if cfg.save and (periodic or stop or self.iteration == cfg.train_iters):
                    try:
                        self.save()
                    except CheckpointSaveError as error:  # every rank raises it together
                        if not cfg.continue_on_save_failure or stop or self.iteration == cfg.train_iters:
                            raise
                        logger.error("%s; training goes on and the next --save-interval tries again "
                                     "(--continue-on-save-failure)", error)
                if stop and self.iteration < cfg.train_iters:
                    logger.info("stopping at iteration %d (%s)", self.iteration, reason)
                    self.wait_for_scheduler()
                    self.metrics.close()
                    return {"iteration": self.iteration, "stopped_early": True}
        self.wait_for_scheduler()
        if not (cfg.eval_interval and self.iteration % cfg.eval_interval == 0):
            last_eval = self._evaluate("valid")
        test_eval = self._evaluate("test")
        self.metrics.close()
        return {"iteration": self.iteration, "stopped_early": False, "valid": last_eval, "test": test_eval,
                "weight_history": np.asarray(self.sampler.weight_history)}

    def wait_for_scheduler(self) -> None:
        """Let the agent's overlapped update of the last step finish (HDS, AC-ODM: mixing/timeline.py),
        re-raising its error. The next step's observe waits for it; after the last step, or before
        anything that must not run beside it (an evaluation, a timed step of another run), call this."""
        wait = getattr(self.scheduler, "wait_for_update", None)
        if wait is not None:
            wait()

    def _log_train(self, window: "_Window", tokens_per_step: int) -> None:
        names = self.domains.names
        losses, _ = split_means(window.sums)
        step_time = window.time / window.steps
        self.metrics.log_train(
            self.iteration,
            consumed_samples=self.consumed_samples,
            lr=self.lr_scheduler.get_lr(self.iteration - 1),
            loss=window.loss(),
            grad_norm=window.grad_norm,
            tokens_per_sec=tokens_per_step / step_time,
            step_time_s=step_time,
            domain_loss=dict(zip(names, losses.tolist())),
            domain_samples=dict(zip(names, window.samples.astype(int).tolist())),
            domain_weights=dict(zip(names, self.weights.tolist())),
            reward=self.scheduler.last_reward() if self.scheduler is not None else None,
            scheduler_time_s=window.scheduler_time / window.steps,
            batch_hash=window.batch_hash,
            skipped_iterations=window.skipped,
        )

    def _held_out_sets(self, datasets: dict) -> dict:
        """The fixed validation and test samples, split -> HeldOutSet."""
        train, mixing = self.config.train, self.config.mixing
        held_out = {split: build_held_out_set(split, datasets[split], self.domains.names, train.eval_iters,
                                              train.micro_batch_size, self.state.dp_size) for split in ("valid", "test")}
        if (mixing.method, mixing.hds.learnability_source) == ("hds", "valid") and not any(held_out["valid"].counts):
            raise ValueError("--hds-learnability-source valid reads the validation losses: there is no validation data")
        if self._validation_gradients and not any(len(d) for d in held_out["valid"].datasets):
            raise ValueError("--hds-influence-target valid reads gradients of validation samples: there is no "
                             "validation data (give some with --split or --valid-data-manifest, or measure the "
                             "influence on the training gradients with --hds-influence-target train)")
        return held_out

    def _tell_scheduler(self, evaluated: Optional[dict]) -> None:
        """A scheduler that reads held-out losses (observe_evaluation) gets the validation's."""
        observe = getattr(self.scheduler, "observe_evaluation", None)
        if observe is not None and evaluated:
            observe(self.iteration, np.array([evaluated.get(n, np.nan) for n in self.domains.names]))

    def _evaluate(self, split: str) -> Optional[dict]:
        held_out = self.held_out[split]
        if not any(held_out.counts):
            return None
        means = evaluate(self.model, held_out, self.state, self.config.train.micro_batch_size)
        evaluated = {n: float(m) for n, m, c in zip(self.domains.names, means, held_out.counts) if c}
        natural = {n: float(w) for n, w, c in zip(self.domains.names, self.domains.natural_weights, held_out.counts) if c}
        self.metrics.log_eval(self.iteration, split=split, domain_loss=evaluated, natural_weights=natural)
        return evaluated

    # ---- checkpoints -----------------------------------------------------------------
    def save(self) -> None:
        state = self.state
        # A sharded optimizer gathers its state onto DP rank 0 (collective: every rank takes part).
        optimizer = self.optimizer.state_dict() if self.optimizer.sharded_over_dp else self.optimizer
        save_checkpoint(
            self.config.train.save, self.iteration, model=self.model, optimizer=optimizer,
            opt_param_scheduler=self.lr_scheduler, data_sampler=self.sampler, mixture_scheduler=self.scheduler,
            args=self.config.to_dict(), rng_tracker_states=self.model.rng_tracker.state_dict(),
            extra={"consumed_samples": self.consumed_samples, "mixture_weights": self.weights.tolist(),
                   "metrics_log": log_position(self.metrics.path)},
            tp_rank=state.tp_rank, pp_rank=state.pp_rank, dp_rank=state.dp_rank, tp_size=state.tp_size,
            pp_size=state.pp_size, dp_size=state.dp_size, rank=state.rank, barrier=_world_barrier(),
            agree=lambda failed: agree(failed, device=state.device))  # a failed write fails every rank
        logger.info("saved checkpoint of iteration %d to %s", self.iteration, self.config.train.save)
        self.saves += 1
        maybe_evaluate_after_save(self.config.downstream_eval, self.config.train.save, self.iteration, self.saves,
                                  state.rank)

    def _load(self, load_dir: str, weights_only: bool = False) -> None:
        state, train = self.state, self.config.train
        if find_latest_iteration(load_dir) is None:
            logger.info("no checkpoint in %s: starting from scratch", load_dir)
            return
        ckpt = load_checkpoint(load_dir, state.tp_rank, state.pp_rank, state.tp_size, state.pp_size)
        self.model.load_state_dict(ckpt["model"])
        # The optimizer's fp32 copies of the weights (bf16/fp16 masters, the distributed optimizer's
        # slices) were taken from the initial weights: without optimizer state they must follow the
        # loaded ones, or the first step would put the initial weights back.
        self.optimizer.reload_model_params()
        # Weights only (--finetune, or a checkpoint from tools/checkpoint/convert_from_hf.py): a new run from them.
        if weights_only or ckpt.get("optimizer") is None:
            logger.info("loaded the weights of %s (%s): starting at iteration 0", load_dir,
                        "--finetune" if weights_only else "no optimizer state")
            return
        if train.no_load_optim:
            logger.info("--no-load-optim: the optimizer state of %s is left out", load_dir)
        else:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        self.lr_scheduler.load_state_dict(ckpt["opt_param_scheduler"], override=train.override_opt_param_scheduler)
        self.sampler.load_state_dict(ckpt["data_sampler"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(ckpt["mixture_scheduler"])
        if train.no_load_rng:
            logger.info("--no-load-rng: the random-number generator states of %s are left out", load_dir)
        else:
            tracker_states = restore_rng_state(ckpt["rng_state"])
            if tracker_states is not None:
                self.model.rng_tracker.load_state_dict(tracker_states)
        self.iteration = int(ckpt["iteration"])
        self.consumed_samples = int(ckpt["consumed_samples"])
        self._resumed_log = ckpt.get("metrics_log")
        self.weights = np.asarray(ckpt["mixture_weights"], dtype=np.float64)
        logger.info("resumed from %s at iteration %d", load_dir, self.iteration)


class _Window:
    """What happened since the last log line."""

    def __init__(self, num_domains: int):
        self.sums = np.zeros(2 * num_domains)
        self.samples = np.zeros(num_domains)
        self.steps = 0
        self.time = 0.0
        self.scheduler_time = 0.0
        self.skipped = 0
        self.grad_norm = None
        self.batch_hash = None

    def add(self, seconds, domain_loss, domain_tokens, plan, result, scheduler_time) -> None:
        num_domains = domain_tokens.size
        if not result.skipped:  # as Megatron: a skipped step's (non-finite) loss is counted, not averaged
            self.sums[:num_domains] += np.nan_to_num(domain_loss) * domain_tokens  # NaN only where no tokens
            self.sums[num_domains:] += domain_tokens
        self.samples += np.asarray(plan.domain_sample_counts)
        self.steps += 1
        self.time += seconds
        self.scheduler_time += scheduler_time
        self.skipped += int(result.skipped)
        self.grad_norm = result.grad_norm
        self.batch_hash = _batch_hash(plan)

    def loss(self) -> float:
        num_domains = self.samples.size
        tokens = self.sums[num_domains:].sum()
        return float(self.sums[:num_domains].sum() / tokens) if tokens else math.nan

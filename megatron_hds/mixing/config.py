"""Configuration of the data schedulers: MixingConfig and the component configs nested in it
(ODM, the agents shared and own settings, the HDS reward, the training-signal probes).

Every field is a flag (megatron_hds.options.option); the parser is generated from them, so a
default written here is the default of the command line, of the example scripts and of the
benchmarks. Settings that depend on the data (number of domains, state size, the sequence
length) are not configuration: the factory passes them when it builds a component.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from megatron_hds.options import comma_list, float_or_none, option

MIXING_METHODS = ("static", "uniform", "odm", "acodm", "hds")
BATCH_LAYOUTS = ("single_domain", "hds", "mixed")
ODM_VARIANTS = ("paper", "released")
REWARD_COMPONENTS = ("align", "quality", "norm")
PROBE_MODES = ("sketch", "exact")
ENCODERS = ("mlp", "domain_tokens")
HDS_AGENTS = ("sac", "none")
LEARNABILITY_SOURCES = ("train", "valid")
INFLUENCE_TARGETS = ("train", "valid")
INFLUENCE_SHRINKAGES = ("james-stein", "none")


def _positive_int(owner: str, name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}.{name}={value!r} is invalid: expected a positive integer")


def _positive_float(owner: str, name: str, value) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{owner}.{name}={value!r} is invalid: expected a positive finite number")


def _choice(owner: str, name: str, value, accepted: tuple) -> None:
    if value not in accepted:
        raise ValueError(f"{owner}.{name}={value!r} is invalid: accepted values are {', '.join(accepted)}")


def _weight(text: str):
    """One --mixing-weights word: a number, or the word 'uniform' (alone: 1/D each)."""
    if text.strip().lower() == "uniform":
        return "uniform"
    try:
        return float(text)
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"expected a number or 'uniform', got {text!r}") from None


@dataclass
class ODMConfig:
    """ODM (Albalak et al. 2023): an EXP3 bandit over domains paid each domain's training loss."""

    FLAG_PREFIX = "odm-"

    variant: str = option("paper", choices=ODM_VARIANTS,
                          help="paper: importance-weighted loss estimates and a softmax policy; released: the "
                               "released 1B scripts' smoothed exp(loss) normalised linearly")
    smoothing: float = option(0.5, help="a in R <- a R + (1 - a) reward: smoothing of the reward estimates")
    warmup_steps: int = option(0, help="steps at the initial weights before ODM updates (released 1B scripts: 2000)")

    def __post_init__(self):
        _choice("ODMConfig", "variant", self.variant, ODM_VARIANTS)
        if not (isinstance(self.smoothing, (int, float)) and 0.0 <= self.smoothing < 1.0):
            raise ValueError(f"ODMConfig.smoothing={self.smoothing!r} is invalid: expected a value in [0, 1)")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"ODMConfig.warmup_steps={self.warmup_steps!r} is invalid: expected an integer >= 0")


@dataclass
class AgentConfig:
    """What the two learning agents share (SAC for HDS, DDPG for AC-ODM): their replay, networks,
    learning rate and action (a bounded adjustment of the starting mixture's logits)."""

    FLAG_PREFIX = "hds-"

    gamma: float = option(0.95, help="discount of the continuing task (no terminal states)")
    tau: float = option(0.001, help="Polyak rate: target <- (1 - tau) target + tau online, after every update")
    buffer_size: int = option(10_000, help="replay buffer capacity (a ring: the oldest transition is overwritten)")
    batch_size: int = option(32, help="replay minibatch per update; no update until the buffer holds this many")
    lr: float = option(1e-4, help="Adam learning rate of the actor, the critics and (SAC) the temperature")
    hidden_sizes: tuple = option((256, 256), nargs="+", parse=int, metavar="N",
                                 help="hidden layer widths of the actor and of each critic")
    weight_floor: Optional[float] = option(None, help="least weight of any domain (default: 0.1 / number of domains)")
    action_bound: Optional[float] = option(
        2.0, parse=float_or_none,
        help="c: the action is c*tanh-squashed and moves each of the starting mixture's logits by at most c; "
             "'none' for free logits")
    seed: int = option(0, help="seeds the agent's network initialisation, minibatches and action noise")

    def __post_init__(self):
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"AgentConfig.gamma={self.gamma!r} is invalid: expected 0 <= gamma < 1 (continuing task)")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"AgentConfig.tau={self.tau!r} is invalid: expected 0 < tau <= 1")
        for name in ("buffer_size", "batch_size"):
            _positive_int("AgentConfig", name, getattr(self, name))
        if self.batch_size > self.buffer_size:
            raise ValueError(f"AgentConfig.batch_size={self.batch_size} exceeds buffer_size={self.buffer_size}")
        _positive_float("AgentConfig", "lr", self.lr)
        self.hidden_sizes = tuple(self.hidden_sizes)
        if not self.hidden_sizes:
            raise ValueError("AgentConfig.hidden_sizes is empty: expected at least one layer width")
        for width in self.hidden_sizes:
            _positive_int("AgentConfig", "hidden_sizes", width)
        if self.weight_floor is not None and not 0.0 <= self.weight_floor < 1.0:
            raise ValueError(f"AgentConfig.weight_floor={self.weight_floor!r} is invalid: expected a value in [0, 1)")
        if self.action_bound is not None:
            _positive_float("AgentConfig", "action_bound", self.action_bound)


@dataclass
class SACConfig:
    """HDS's Soft Actor-Critic: the Gaussian policy and the entropy temperature."""

    FLAG_PREFIX = "hds-"

    log_std_min: float = option(-5.0, help="lower bound of the policy's log-std over the logits")
    # Our choice: logit noise of std <= 1. With e^2 (the usual SAC bound) the entropy bonus drives
    # the std up until softmax(u) is nearly one-hot and the weights jump between simplex vertices.
    log_std_max: float = option(0.0, help="upper bound of the policy's log-std over the logits (std <= e^this)")
    log_alpha_init: float = option(0.0, help="initial log entropy temperature")
    target_entropy: Optional[float] = option(None, help="entropy the temperature steers to (default: -number of domains)")
    encoder: str = option("mlp", choices=ENCODERS,
                          help="mlp, or domain_tokens: a small transformer over per-domain state tokens")
    token_dim: int = option(64, help="domain_tokens encoder: model width")
    token_layers: int = option(2, help="domain_tokens encoder: transformer layers")
    token_heads: int = option(4, help="domain_tokens encoder: attention heads")

    def __post_init__(self):
        for name in ("log_std_min", "log_std_max", "log_alpha_init"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"SACConfig.{name}={getattr(self, name)!r} is invalid: expected a finite number")
        if not self.log_std_min < self.log_std_max:
            raise ValueError(f"SACConfig.log_std_min={self.log_std_min} must be below log_std_max={self.log_std_max}")
        _choice("SACConfig", "encoder", self.encoder, ENCODERS)
        for name in ("token_dim", "token_layers", "token_heads"):
            _positive_int("SACConfig", name, getattr(self, name))
        if self.token_dim % self.token_heads:
            raise ValueError(f"SACConfig.token_dim={self.token_dim} is not divisible by token_heads={self.token_heads}")


@dataclass
class DDPGConfig:
    """AC-ODM's DDPG: Gaussian exploration noise on the deterministic actor's action."""

    FLAG_PREFIX = "acodm-"

    noise_std: float = option(0.1, help="std of the Gaussian exploration noise added to the action")
    noise_decay: float = option(1.0, help="the noise std is multiplied by this after every explored action")
    noise_std_min: float = option(0.0, help="the decayed noise std never falls below this")

    def __post_init__(self):
        for name in ("noise_std", "noise_std_min"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"DDPGConfig.{name}={value!r} is invalid: expected a finite number >= 0")
        if not 0.0 < self.noise_decay <= 1.0:
            raise ValueError(f"DDPGConfig.noise_decay={self.noise_decay!r} is invalid: expected 0 < decay <= 1")


@dataclass
class RewardConfig:
    """The learning agents' reward: which components are paid, and their weights. Each component is
    divided by a running estimate of its own scale before weighting (mixing/rewards.py)."""

    FLAG_PREFIX = "hds-"

    components: tuple = option(REWARD_COMPONENTS, flag="--hds-reward", parse=comma_list, metavar="LIST",
                               help="reward components paid to HDS's agent, comma-separated; an ablation drops some "
                                    "(a dropped component also leaves HDS's base mixture)")
    lambda_align: float = option(1.0, help="weight of the inter-domain influence reward")
    lambda_quality: float = option(1.0, help="weight of the data-quality (within-domain MTLD) reward")
    lambda_norm: float = option(1.0, help="weight of the weight-update stability reward")
    norm_threshold: float = option(3.0, help="an update ratio ||dW||/||W|| this many running standard deviations "
                                             "above its mean is abnormal, and penalised")
    scale_decay: float = option(0.99, help="decay of the running second moment that normalises each component")

    def __post_init__(self):
        self.components = tuple(self.components)
        unknown = [c for c in self.components if c not in REWARD_COMPONENTS]
        if unknown or not self.components:
            raise ValueError(f"--hds-reward {','.join(self.components)!r} is invalid: choose from "
                             f"{','.join(REWARD_COMPONENTS)}")
        if not 0.0 <= self.scale_decay < 1.0:
            raise ValueError(f"RewardConfig.scale_decay={self.scale_decay!r} is invalid: expected a value in [0, 1)")


@dataclass
class HDSConfig:
    """HDS's base mixture (anchored exponentiated gradient around the natural weights, from the
    influence, learnability and quality signals) and the agent that acts as a bounded residual
    around it (mixing/hds.py)."""

    FLAG_PREFIX = "hds-"

    agent: str = option("sac", choices=HDS_AGENTS,
                        help="sac: a SAC agent adjusts the base mixture within --hds-residual-bound; none: the "
                             "base mixture alone (the same mixture without SAC)")
    residual_bound: float = option(0.5, help="the agent moves each domain's log-weight by at most this around the "
                                             "base mixture")
    influence_step: float = option(0.3, help="log-weight per unit of (clipped) inter-domain influence estimate "
                                             "(--hds-influence-shrinkage)")
    influence_target: str = option("valid", choices=INFLUENCE_TARGETS,
                                   help="the gradients the influence is measured against: train: the step's own "
                                        "training gradients of every domain; valid: gradients of validation samples "
                                        "of every domain (an extra pass every few steps: --hds-influence-interval, "
                                        "--hds-influence-max-share), which "
                                        "memorised, repeated training material does not align with")
    influence_interval: int = option(8, help="with --hds-influence-target valid: the fewest steps between the "
                                             "validation gradient passes (one sample per domain each); the "
                                             "influence is updated on those steps")
    influence_max_share: float = option(0.016, help="with --hds-influence-target valid: the most the validation "
                                                    "passes may take, as a share of the training samples; the "
                                                    "interval grows past --hds-influence-interval to keep within it "
                                                    "(small global batches)")
    influence_shrinkage: str = option("james-stein", choices=INFLUENCE_SHRINKAGES,
                                      help="how the running average of the influence scores becomes a tilt: "
                                           "james-stein: shrunk towards its mean by the share its sampling noise "
                                           "explains, and not rescaled, so scores that are noise leave the "
                                           "natural mixture; none: z-scored across domains, a full tilt whatever "
                                           "the evidence (the default until 2026-12-03)")
    learnability_step: float = option(0.0, help="log-weight per unit of (clipped) scaling-law learnability (off by "
                                                "default: a time slope is not what a domain's share is worth, and "
                                                "the held-out influence holds a domain's own learnable part)")
    quality_step: float = option(0.0, help="log-weight per unit of (clipped, z-scored) within-domain sample quality")
    score_smoothing: float = option(0.995, help="decay of the running averages of the influence and quality scores "
                                                "(one step's scores are mostly sampling noise)")
    mixture_smoothing: float = option(0.2, help="share of the new target the base mixture moves by each step")
    natural_anchor: float = option(0.1, help="share of the natural weights mixed into the base mixture")
    ramp_fraction: float = option(0.1, help="share of the run over which the base mixture's steps grow from 0 to "
                                            "their full size (early gradients and fits say little)")
    fit_interval: int = option(200, help="steps between the per-domain scaling-law fits")
    learnability_source: str = option("train", choices=LEARNABILITY_SOURCES,
                                      help="train: scaling laws fitted to the training losses (ADO); valid: the "
                                           "recent slope of the validation losses of the periodic evaluation "
                                           "(needs --eval-interval and validation data), which memorised, "
                                           "repeated material cannot lower")
    learnability_window: float = option(0.4, help="with --hds-learnability-source valid: the share of the steps so "
                                                  "far whose evaluations the slope is fitted on")
    exploration: float = option(0.3, help="std of the Gaussian noise added to the residual the agent plays (its "
                                          "policy's mean; the base during warm-up), in units of --hds-residual-bound")

    def __post_init__(self):
        _choice("HDSConfig", "agent", self.agent, HDS_AGENTS)
        _choice("HDSConfig", "learnability_source", self.learnability_source, LEARNABILITY_SOURCES)
        if not 0.0 < self.learnability_window <= 1.0:
            raise ValueError(f"HDSConfig.learnability_window={self.learnability_window!r} is invalid: expected (0, 1]")
        for name in ("residual_bound",):
            _positive_float("HDSConfig", name, getattr(self, name))
        for name in ("influence_step", "learnability_step", "quality_step", "exploration"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"HDSConfig.{name}={value!r} is invalid: expected a finite number >= 0")
        for name in ("score_smoothing", "natural_anchor", "ramp_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"HDSConfig.{name}={value!r} is invalid: expected a value in [0, 1)")
        if not 0.0 < self.mixture_smoothing <= 1.0:
            raise ValueError(f"HDSConfig.mixture_smoothing={self.mixture_smoothing!r} is invalid: expected (0, 1]")
        _positive_int("HDSConfig", "fit_interval", self.fit_interval)
        _choice("HDSConfig", "influence_target", self.influence_target, INFLUENCE_TARGETS)
        _choice("HDSConfig", "influence_shrinkage", self.influence_shrinkage, INFLUENCE_SHRINKAGES)
        _positive_int("HDSConfig", "influence_interval", self.influence_interval)
        if not 0.0 < self.influence_max_share <= 1.0:
            raise ValueError(f"HDSConfig.influence_max_share={self.influence_max_share!r} is invalid: expected (0, 1]")

    def validation_pass_interval(self, num_domains: int, global_batch_size: int) -> int:
        """Steps between the validation gradient passes: --hds-influence-interval, or more where one
        sample per domain every that many steps would exceed --hds-influence-max-share of the
        training samples (64 samples per step and 8 domains: 8; the demo's 16 and 7: 28)."""
        ratio = num_domains / (self.influence_max_share * global_batch_size)
        return max(self.influence_interval, math.ceil(ratio - 1e-9))  # (a ratio of 8 in floats is 8)


@dataclass
class ProbeConfig:
    """The training signals the learning schedulers read: per-domain gradients on a few late MLP
    output projections, and the norms of MLP output projections spread over depth."""

    FLAG_PREFIX = "hds-"

    mode: str = option("sketch", flag="--hds-probe", choices=PROBE_MODES,
                       help="per-domain gradients kept as a CountSketch (any size) or exactly (small models)")
    sketch_size: int = option(4096, help="CountSketch buckets per domain")
    probe_matrices: int = option(3, help="late MLP output projections whose per-domain gradients are probed")
    norm_matrices: int = option(9, help="MLP output projections, spread over depth, whose norms enter the state")

    def __post_init__(self):
        _choice("ProbeConfig", "mode", self.mode, PROBE_MODES)
        for name in ("sketch_size", "probe_matrices", "norm_matrices"):
            _positive_int("ProbeConfig", name, getattr(self, name))


@dataclass
class MixingConfig:
    """How domain weights are chosen each step (the scheduler) and how batches are laid out."""

    FLAG_PREFIX = "mixing-"

    method: str = option("static", flag="--mixing", choices=MIXING_METHODS,
                         help="the data scheduler: static (natural or given weights), uniform, odm, acodm, hds")
    weights: Optional[tuple] = option(
        None, nargs="+", parse=_weight, metavar="W",
        help="the static weights, or where a learning scheduler starts: one number per domain, or the word "
             "'uniform' (default: the natural token shares)")
    weight_floor: float = option(0.0, help="the sampler keeps every domain at least this weight")
    batch_layout: Optional[str] = option(
        None, choices=BATCH_LAYOUTS,
        help="single_domain: every micro-batch from one domain; hds: the first micro-batches of a step one per "
             "domain (every domain observed every step); mixed: samples drawn independently (default: hds for "
             "the schedulers that learn from the domains' signals, odm, acodm and hds; single_domain for static "
             "and uniform)")
    update_interval: int = option(1, help="learning schedulers act every this many steps")
    warmup_fraction: float = option(0.02, help="HDS / AC-ODM: share of the run at the initial weights before the "
                                               "agent acts (transitions are stored)")
    overlap_update: bool = option(
        True, flag="--mixing-no-overlap-update", negate=True,
        aliases={"--mixing-overlap-update": (True, "HDS / AC-ODM: the agent's update overlaps the next step (the "
                                                   "default)")},
        help="HDS / AC-ODM: run the agent's update on the training thread before it acts, instead of acting "
             "first and updating on a worker thread while the next step trains (the default, which acts one "
             "update later; both are deterministic and resume exactly)")
    odm: ODMConfig = field(default_factory=ODMConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    ddpg: DDPGConfig = field(default_factory=DDPGConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    hds: HDSConfig = field(default_factory=HDSConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def __post_init__(self):
        _choice("MixingConfig", "method", self.method, MIXING_METHODS)
        if self.batch_layout is None:
            # The learning schedulers read every domain's loss or gradient each step.
            self.batch_layout = "single_domain" if self.method in ("static", "uniform") else "hds"
        _choice("MixingConfig", "batch_layout", self.batch_layout, BATCH_LAYOUTS)
        if not 0.0 <= self.weight_floor < 1.0:
            raise ValueError(f"MixingConfig.weight_floor={self.weight_floor!r} is invalid: expected a value in [0, 1)")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"MixingConfig.warmup_fraction={self.warmup_fraction!r} is invalid: expected a value "
                             "in [0, 1)")
        _positive_int("MixingConfig", "update_interval", self.update_interval)
        self.weights = self._checked_weights(self.weights)

    def _checked_weights(self, weights):
        if weights is None:
            return None
        if isinstance(weights, str) or list(weights) == ["uniform"]:
            if weights not in ("uniform", ["uniform"], ("uniform",)):
                raise ValueError(f"--mixing-weights {weights!r} is invalid: expected numbers or 'uniform'")
            weights = "uniform"
        elif any(not isinstance(w, (int, float)) or isinstance(w, bool) or not w >= 0 for w in weights) \
                or not sum(weights) > 0:
            raise ValueError(f"--mixing-weights {' '.join(map(str, weights))} is invalid: expected non-negative "
                             "numbers with a positive sum, or the word 'uniform' alone")
        else:
            weights = tuple(float(w) for w in weights)
        if self.method == "uniform":
            raise ValueError("--mixing-weights does not apply to --mixing uniform")
        return weights

"""ParallelState: Megatron's rank layout, the process groups built from it, and device/backend choice.

The layout arithmetic (``RankLayout``) is pure so it can be tested without processes;
``ParallelState`` adds the torch.distributed groups. Ranks are laid out with TP
fastest, then DP, then PP: rank = tp_rank + TP*dp_rank + TP*DP*pp_rank.

Every group, the world's included, gets ``--distributed-timeout-minutes``: a collective
that waits that long for a lost or stuck rank fails (torch.distributed gives groups made
later a default of its own otherwise), so the job ends instead of hanging.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

from megatron_hds.config import ParallelConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankLayout:
    """Pure rank arithmetic for (world, TP, PP); DP is derived."""

    world_size: int
    tp: int
    pp: int

    def __post_init__(self):
        for name in ("world_size", "tp", "pp"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid: expected a positive integer")
        if self.world_size % (self.tp * self.pp):
            raise ValueError(
                f"world size {self.world_size} is not divisible by tensor-model-parallel size {self.tp} "
                f"x pipeline-model-parallel size {self.pp} = {self.tp * self.pp}: choose TP and PP whose "
                f"product divides the world size")

    @property
    def dp(self) -> int:
        return self.world_size // (self.tp * self.pp)

    def rank(self, tp_rank: int, dp_rank: int, pp_rank: int) -> int:
        return tp_rank + self.tp * dp_rank + self.tp * self.dp * pp_rank

    def coords(self, rank: int) -> Tuple[int, int, int]:
        """(tp_rank, dp_rank, pp_rank) of a global rank."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside the world of size {self.world_size}")
        return rank % self.tp, (rank // self.tp) % self.dp, rank // (self.tp * self.dp)

    def tp_groups(self) -> List[List[int]]:
        return [[self.rank(t, d, p) for t in range(self.tp)] for p in range(self.pp) for d in range(self.dp)]

    def dp_groups(self) -> List[List[int]]:
        return [[self.rank(t, d, p) for d in range(self.dp)] for p in range(self.pp) for t in range(self.tp)]

    def pp_groups(self) -> List[List[int]]:
        return [[self.rank(t, d, p) for p in range(self.pp)] for d in range(self.dp) for t in range(self.tp)]

    def model_parallel_groups(self) -> List[List[int]]:
        """TP x PP groups: one full copy of the model each (used for the global grad norm)."""
        return [[self.rank(t, d, p) for p in range(self.pp) for t in range(self.tp)] for d in range(self.dp)]

    def embedding_groups(self) -> List[List[int]]:
        """First and last stage of each pipeline: the ranks holding the (tied) word embeddings."""
        return [sorted({g[0], g[-1]}) for g in self.pp_groups()]


def micro_batches_per_step(global_batch_size: int, micro_batch_size: int, dp_size: int) -> int:
    """Micro-batches each DP rank runs per step (global / (micro x DP)); errors if it does not divide."""
    if micro_batch_size < 1 or global_batch_size < 1:
        raise ValueError(f"global batch {global_batch_size} and micro batch {micro_batch_size} must be positive")
    if global_batch_size % (micro_batch_size * dp_size):
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by micro batch size {micro_batch_size} "
            f"x data-parallel size {dp_size} = {micro_batch_size * dp_size}: choose a global batch that is a "
            f"multiple of {micro_batch_size * dp_size}")
    return global_batch_size // (micro_batch_size * dp_size)


def default_backend_and_device(local_rank: int = 0) -> Tuple[str, torch.device]:
    """nccl + cuda when GPUs are visible, gloo + cpu otherwise (the one place that asks)."""
    if torch.cuda.is_available():
        return "nccl", torch.device("cuda", local_rank % torch.cuda.device_count())
    return "gloo", torch.device("cpu")


def _timeout(minutes: Optional[float]) -> Optional[datetime.timedelta]:
    return None if minutes is None else datetime.timedelta(minutes=minutes)


def _nccl_async_error_handling() -> None:
    """Make NCCL end the process when a collective fails or times out (a dead peer), instead of
    leaving it blocked: 3 tears the process down without aborting the communicators (torch's
    default since 2.2; set here so that older versions behave alike). A value the job sets
    wins; 0 (off) gets a warning."""
    names = ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_ASYNC_ERROR_HANDLING")
    given = next((os.environ[n] for n in names if n in os.environ), None)
    if given is None:
        os.environ[names[0]] = "3"
    elif given.strip() == "0":
        logger.warning("TORCH_NCCL_ASYNC_ERROR_HANDLING=0: a lost rank will hang the job instead of ending it")


def init_distributed(backend: Optional[str] = None, timeout_minutes: Optional[float] = None) -> None:
    """Initialise torch.distributed from the torchrun/SLURM environment, once; collectives on the
    world fail after ``timeout_minutes`` (--distributed-timeout-minutes) instead of waiting
    forever for a rank that died or hangs."""
    if dist.is_initialized():
        return
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    chosen, device = default_backend_and_device(local_rank)
    backend = backend or chosen
    if device.type != "cpu":
        torch.get_device_module(device.type).set_device(device)
    if backend == "nccl":
        _nccl_async_error_handling()
    dist.init_process_group(backend=backend, timeout=_timeout(timeout_minutes))


@dataclass
class ParallelState:
    """This rank's place in the (TP, DP, PP) grid and the groups it belongs to.

    Groups are None when torch.distributed is not initialised (a single process);
    collectives over a None group or a group of size 1 are skipped.
    """

    layout: RankLayout
    rank: int
    device: torch.device
    backend: str
    tp_group: Optional[dist.ProcessGroup] = None
    dp_group: Optional[dist.ProcessGroup] = None
    pp_group: Optional[dist.ProcessGroup] = None
    model_parallel_group: Optional[dist.ProcessGroup] = None
    embedding_group: Optional[dist.ProcessGroup] = None
    pp_ranks: List[int] = field(default_factory=list)  # global ranks of this rank's pipeline, stage order
    sequence_parallel: bool = False  # activations outside attention/MLP are split along seq across TP

    @classmethod
    def single(cls, device: Optional[torch.device] = None, tensor_model_parallel_size: int = 1,
               pipeline_model_parallel_size: int = 1) -> "ParallelState":
        """A one-rank state with no groups (usable whether or not torch.distributed is initialised)."""
        layout = RankLayout(1, tensor_model_parallel_size, pipeline_model_parallel_size)
        backend, default_device = default_backend_and_device()
        device = torch.device(device) if device is not None else default_device
        return cls(layout, 0, device, "gloo" if device.type == "cpu" else backend, pp_ranks=[0])

    @classmethod
    def from_config(cls, config: ParallelConfig, device: Optional[torch.device] = None) -> "ParallelState":
        return cls.build(config.tensor_model_parallel_size, config.pipeline_model_parallel_size, device,
                         sequence_parallel=config.sequence_parallel,
                         timeout_minutes=config.distributed_timeout_minutes)

    @classmethod
    def build(cls, tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1,
              device: Optional[torch.device] = None, sequence_parallel: bool = False,
              timeout_minutes: Optional[float] = None) -> "ParallelState":
        """Build groups on an initialised world (or a single-process state when there is none).

        Every rank must call this with the same sizes: group creation is collective. Each
        group's collectives fail after ``timeout_minutes`` (default: torch's default).
        """
        if not dist.is_initialized():
            return cls.single(device, tensor_model_parallel_size, pipeline_model_parallel_size)
        world, rank = dist.get_world_size(), dist.get_rank()
        layout = RankLayout(world, tensor_model_parallel_size, pipeline_model_parallel_size)
        backend = dist.get_backend()
        if device is None:
            _, device = default_backend_and_device(int(os.environ.get("LOCAL_RANK", rank)))
            if backend == "gloo":
                device = torch.device("cpu")
        # Sequence parallelism only means something when there is a TP group to split over.
        state = cls(layout, rank, device, backend, sequence_parallel=sequence_parallel and layout.tp > 1)
        # new_group is collective over the whole world: every rank creates every group in the same order.
        for attr, groups in (("tp_group", layout.tp_groups()), ("dp_group", layout.dp_groups()),
                             ("pp_group", layout.pp_groups()),
                             ("model_parallel_group", layout.model_parallel_groups()),
                             ("embedding_group", layout.embedding_groups())):
            for ranks in groups:
                group = dist.new_group(ranks, timeout=_timeout(timeout_minutes))
                if rank in ranks:
                    setattr(state, attr, group)
                    if attr == "pp_group":
                        state.pp_ranks = list(ranks)
        # NCCL creates communicators lazily; a first collective over the world keeps later
        # point-to-point batches from being the first operation on the default group.
        dist.barrier()
        return state

    # ---- coordinates -------------------------------------------------------------------
    @property
    def tp_size(self) -> int:
        return self.layout.tp

    @property
    def pp_size(self) -> int:
        return self.layout.pp

    @property
    def dp_size(self) -> int:
        return self.layout.dp

    @property
    def tp_rank(self) -> int:
        return self.layout.coords(self.rank)[0]

    @property
    def dp_rank(self) -> int:
        return self.layout.coords(self.rank)[1]

    @property
    def pp_rank(self) -> int:
        return self.layout.coords(self.rank)[2]

    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    def prev_stage_rank(self) -> int:
        """Global rank of the previous pipeline stage (only valid off the first stage)."""
        return self.pp_ranks[self.pp_rank - 1]

    def next_stage_rank(self) -> int:
        """Global rank of the next pipeline stage (only valid off the last stage)."""
        return self.pp_ranks[self.pp_rank + 1]

    # ---- validation of model/batch shapes against this layout -----------------------------
    def check_model(self, num_layers: int, num_attention_heads: int) -> None:
        if num_attention_heads % self.tp_size:
            raise ValueError(
                f"num_attention_heads={num_attention_heads} is not divisible by tensor-model-parallel size "
                f"{self.tp_size}: choose a TP size that divides the head count")
        if num_layers % self.pp_size:
            raise ValueError(
                f"num_layers={num_layers} is not divisible by pipeline-model-parallel size {self.pp_size}: "
                f"choose a PP size that divides the layer count")

    def micro_batches_per_step(self, global_batch_size: int, micro_batch_size: int) -> int:
        return micro_batches_per_step(global_batch_size, micro_batch_size, self.dp_size)

    def check_sequence(self, seq_length: int) -> None:
        if self.sequence_parallel and seq_length % self.tp_size:
            raise ValueError(
                f"seq_length={seq_length} is not divisible by tensor-model-parallel size {self.tp_size}, "
                f"which sequence parallelism requires: choose a multiple of {self.tp_size} or turn it off")

    def activation_shape(self, seq_length: int, micro_batch_size: int, hidden_size: int):
        """Shape of the activations passed between pipeline stages on this rank."""
        seq = seq_length // self.tp_size if self.sequence_parallel else seq_length
        return (seq, micro_batch_size, hidden_size)

    def layers_of_stage(self, num_layers: int) -> range:
        """Global indices of the transformer layers this pipeline stage owns."""
        per_stage = num_layers // self.pp_size
        return range(self.pp_rank * per_stage, (self.pp_rank + 1) * per_stage)

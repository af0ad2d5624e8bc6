"""Training-signal probes for the data scheduler: per-domain gradient inner products on
selected matrices (exact, or CountSketch hashed on global element indices) and the
Frobenius norms of selected matrices and of their change since the last measurement.

Layout independence. A selected matrix is named by its global parameter name
(``layers.{i}.mlp.dense_4h_to_h.weight``: the layer index is global, see model/gpt.py),
and an element of it by its row-major index in the FULL (unsharded) matrix, computed
from the TP rank and the parameter's ``partition_dim``. The sketch hash is a function of
(seed, global name, full index) only, so every layout hashes every element the same way:
CountSketch is linear, and TP shards and PP stages hold disjoint elements, so summing
the ranks' sketches gives the sketch of the whole gradient. Keying the hash on
(name, index) is equivalent to hashing the index in the concatenation of the selected
matrices, without a stage having to know the shapes of the other stages' matrices.

Gradient scale. The hooks see the gradient of the SCALED micro-batch loss (divided by
the number of micro-batches, and multiplied by the fp16 loss scale). These factors are
common to every domain: pass ``scale`` to ``reduce``/``alignment_matrix`` to undo them
when absolute values matter; ``alignment_scores`` is invariant to any positive common
factor (numerator ~ c^2, denominator ~ c, then z-scored).

No torch.distributed call happens outside ``reduce``/``alignment_matrix``/``measure``;
process groups come from the ParallelState (or are passed explicitly).
"""
from __future__ import annotations

import hashlib
import re
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from megatron_hds import kernels
from megatron_hds.kernels.reference import count_sketch_hash, signed64
from megatron_hds.mixing.sketch_table import SketchTables
from megatron_hds.parallel.layers import is_tensor_parallel
from megatron_hds.parallel.mappings import group_size
from megatron_hds.parallel.state import ParallelState

MATRIX_TEMPLATES = {
    "mlp_out": "layers.{}.mlp.dense_4h_to_h.weight",
    "mlp_in": "layers.{}.mlp.dense_h_to_4h.weight",
    "attn_out": "layers.{}.self_attention.dense.weight",
    "attn_qkv": "layers.{}.self_attention.query_key_value.weight",
}
NamedParams = List[Tuple[str, nn.Parameter]]


# ---- selection -----------------------------------------------------------------------------
def choose_layers(num_layers: int, count: int, placement: str = "spread") -> List[int]:
    """`count` global layer indices: "spread" evenly over depth (first and last included),
    or "late" (the last `count` layers). count >= num_layers selects every layer."""
    if num_layers < 1 or count < 1:
        raise ValueError(f"num_layers={num_layers} and count={count} must be positive")
    if count >= num_layers:
        return list(range(num_layers))
    if placement == "late":
        return list(range(num_layers - count, num_layers))
    if placement == "spread":
        if count == 1:
            return [num_layers - 1]
        # Steps of (L-1)/(k-1) >= 1 when k <= L, so the rounded indices are distinct.
        return [round(i * (num_layers - 1) / (count - 1)) for i in range(count)]
    raise ValueError(f"placement={placement!r} is not one of 'spread', 'late'")


def selected_names(num_layers: int, count: int, placement: str = "spread", which: str = "mlp_out") -> List[str]:
    """Global names of the selected matrices, in layer order (the same list on every rank)."""
    if which not in MATRIX_TEMPLATES:
        raise ValueError(f"which={which!r} is not one of {sorted(MATRIX_TEMPLATES)}")
    return [MATRIX_TEMPLATES[which].format(i) for i in choose_layers(num_layers, count, placement)]


def select_matrices(model: nn.Module, names_or_pattern: Union[str, Sequence[str]]) -> NamedParams:
    """(global name, parameter) pairs of the selected matrices that THIS rank holds.

    names_or_pattern: a list of global names (``selected_names``), or a regular expression
    matched in full against parameter names. A PP stage holds only its own layers, so the
    result may be empty.
    """
    params = dict(model.named_parameters())
    if isinstance(names_or_pattern, str):
        pattern = re.compile(names_or_pattern)
        wanted = [n for n in params if pattern.fullmatch(n)]
    else:
        wanted = list(names_or_pattern)
    return [(n, params[n]) for n in wanted if n in params]


def _contributes(param: torch.Tensor, state: ParallelState) -> bool:
    """Whether this rank's copy adds to sums over the model-parallel group: TP shards always;
    a TP-replicated tensor only on TP rank 0, so it is not counted TP times."""
    return is_tensor_parallel(param) or state.tp_rank == 0


# ---- hashing on global element indices ------------------------------------------------------
# The hash (splitmix64 twice, keyed) lives with the kernels: kernels/sketch.py computes the
# same buckets and signs on the fly, kernels/reference.py is its torch twin.
def name_key(seed: int, name: str) -> int:
    """Stable 64-bit key of (seed, global parameter name), as a signed int64."""
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return signed64(int.from_bytes(digest, "little"))


def global_flat_index(param: torch.Tensor, tp_rank: int, tp_size: int) -> torch.Tensor:
    """int64 tensor of param's local shape: each element's row-major index in the full matrix."""
    local = list(param.shape)
    full = list(local)
    offsets = [0] * len(local)
    if is_tensor_parallel(param) and tp_size > 1:
        dim = param.partition_dim
        full[dim] = local[dim] * tp_size
        offsets[dim] = tp_rank * local[dim]
    strides = [1] * len(full)
    for d in range(len(full) - 2, -1, -1):
        strides[d] = strides[d + 1] * full[d + 1]
    index = torch.zeros((), dtype=torch.int64, device=param.device)
    for d, size in enumerate(local):
        coord = (torch.arange(size, dtype=torch.int64, device=param.device) + offsets[d]) * strides[d]
        index = index.unsqueeze(-1) + coord
    return index


def shard_placement(param: torch.Tensor, tp_rank: int, tp_size: int) -> Tuple[int, int, int]:
    """(row offset, column offset, columns of the full matrix) of a 2-D parameter's shard:
    its element (r, c) has global_flat_index (r + row offset) * full columns + c + column offset."""
    rows, cols = param.shape
    if not (is_tensor_parallel(param) and tp_size > 1):
        return 0, 0, cols
    if param.partition_dim == 0:
        return tp_rank * rows, 0, cols
    return 0, tp_rank * cols, cols * tp_size


# ---- gradient probes -----------------------------------------------------------------------
def micro_batch_domain(domains: Union[torch.Tensor, Sequence[int]]) -> Optional[int]:
    """The domain of a micro-batch whose samples all share one domain, else None (not probed)."""
    values = torch.as_tensor(domains).reshape(-1)
    if values.numel() == 0 or not bool((values == values[0]).all()):
        return None
    return int(values[0])


class GradientProbe:
    """Per-domain gradients of selected matrices, accumulated by gradient hooks.

    Each selected parameter gets a tensor hook, which autograd calls once per backward
    pass with that backward's gradient (one micro-batch), before accumulation into .grad.
    The hook adds it to the current domain's accumulator:
      exact:  a flat fp32 vector per domain over this rank's elements ([D, n_local]);
      sketch: a CountSketch per domain ([D, m]); element j of the global vector goes to
              bucket h(j) with sign s(j). Where the Triton kernel runs (CUDA 2-D matrices,
              kernels/sketch.py) h and s are computed on the fly and the probe's memory
              does not grow with the matrices; the torch path keeps a per-element table of
              them (sketch_table.py: bucket, sign, the sign times the scale below and two
              scratch buffers, 25 bytes/element for fp32, built once), faster than hashing on
              the fly there; on CPU its scatters run on a worker thread during the backward.
    Telling the probe the domain, either:
      * ``begin_step(domains)`` before forward_backward with one domain (or None: mixed,
        not probed) per micro-batch in this rank's order. Each parameter counts its own
        backward calls, and both schedules (no pipelining and 1F1B) run the backwards of
        a stage in micro-batch order, so call k of a parameter is micro-batch k even when
        1F1B runs forward k+1 before backward k. Needs every selected parameter to get a
        gradient in every backward (true of weight matrices in the stage's layers).
      * ``set_domain(d)`` right before each micro-batch's BACKWARD (not its forward), after
        ``reset()`` at the start of the step.
    A column of per-domain hook counts rides along in the same buffer, so the one
    all-reduce also says which domains had a gradient this step (``present``).
    The accumulators are rows: one per domain here; the signal collector (collector.py) uses
    two per domain (disjoint halves of its micro-batches) and passes num_domains = 2D.
    ``set_scales`` gives each parameter an elementwise factor applied to its gradient before
    accumulation (the collector's Adam preconditioner, P^(1/2)).
    """

    def __init__(self, params: Iterable[Tuple[str, nn.Parameter]], num_domains: int, mode: str,
                 sketch_size: Optional[int] = None, seed: int = 0, state: Optional[ParallelState] = None):
        if mode not in ("exact", "sketch"):
            raise ValueError(f"mode={mode!r} is not one of 'exact', 'sketch'")
        if num_domains < 1 or (mode == "sketch" and not (sketch_size or 0) >= 1):
            raise ValueError(f"num_domains={num_domains} and, in sketch mode, sketch_size={sketch_size} must be "
                             "positive")
        self.state = state if state is not None else ParallelState.single("cpu")
        self.mode, self.num_domains, self.sketch_size, self.seed = mode, num_domains, sketch_size, seed
        self.named = [(n, p) for n, p in params if _contributes(p, self.state)]
        if mode == "exact" and any(getattr(p, "shared_embedding_duplicate", False) for _, p in self.named):
            raise ValueError("exact mode needs disjoint elements per rank; the tied-embedding copy on the last "
                             "stage duplicates the first stage's: select other matrices or use mode='sketch'")
        device = self.named[0][1].device if self.named else self.state.device
        width = sketch_size if mode == "sketch" else sum(p.numel() for _, p in self.named)
        self.width = width
        # Last column: how many hook calls each domain received (presence after the reduce).
        self._buffer = torch.zeros(num_domains, width + 1, dtype=torch.float32, device=device)
        self._hook_counts = [0] * num_domains  # not yet in the buffer's last column (see `buffer`)
        # Sketch with the Triton kernel (hash on the fly) where it runs on every selected matrix.
        self.fused_sketch = (mode == "sketch" and bool(self.named) and all(p.dim() == 2 for _, p in self.named)
                             and kernels.choose_backend([p for _, p in self.named]) == "triton")
        self._hashes: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self._keys: List[int] = []
        self._placements: List[Tuple[int, int, int]] = []
        self._offsets: List[int] = []
        offset = 0
        for name, p in self.named:
            if mode == "sketch":
                self._keys.append(name_key(seed, name))
                if self.fused_sketch:
                    self._placements.append(shard_placement(p, self.state.tp_rank, self.state.tp_size))
                else:
                    index = global_flat_index(p, self.state.tp_rank, self.state.tp_size)
                    self._hashes.append(count_sketch_hash(index, self._keys[-1], sketch_size))
            self._offsets.append(offset)
            offset += p.numel()
        self._domain: Optional[int] = None
        self._step_domains: Optional[List[Optional[int]]] = None
        self._calls = [0] * len(self.named)
        self._own_scales: Optional[List[torch.Tensor]] = None  # the scales of the exact and Triton paths
        self._tables = SketchTables(self.named, self._hashes) if mode == "sketch" and not self.fused_sketch else None
        if self._tables is not None:
            self._hashes = list(zip(self._tables.buckets, [sign for _, sign in self._hashes]))
        self._rows = [self._buffer[d, :width] for d in range(num_domains)]
        self._scaled: Optional[torch.Tensor] = None  # gram_from_reduced's scaled sketch
        self._handles = [p.register_hook(self._make_hook(slot)) for slot, (_, p) in enumerate(self.named)]
        if self._tables is not None and self._tables.offload:  # (sketch_table.py: a gradient that becomes .grad)
            self._handles += [p.register_post_accumulate_grad_hook(self._make_post_hook(slot))
                              for slot, (_, p) in enumerate(self.named)]
        self.present: Optional[np.ndarray] = None

    @property
    def buffer(self) -> torch.Tensor:
        """The [D, width + 1] accumulators: per-domain sums (sketch or exact), then the hook counts."""
        if self._tables is not None:  # the scatters still running on the worker thread
            self._tables.drain()
        self._add_counts(self._take_counts())
        return self._buffer

    def _take_counts(self) -> Optional[List[int]]:
        """The hook counts kept in Python since the last read (None: none), reset."""
        if not any(self._hook_counts):
            return None
        counts, self._hook_counts = self._hook_counts, [0] * self.num_domains
        return counts

    def _add_counts(self, counts: Optional[List[int]]) -> None:
        if counts is not None:
            self._buffer[:, self.width].add_(torch.tensor(counts, dtype=self._buffer.dtype, device=self._buffer.device))

    def export_sketch(self, out: torch.Tensor):
        """Copy ``local_sketch()`` (flattened) into `out` once this step's backwards are accumulated:
        on the worker thread that scatters them where there is one (call when the step's backwards
        are done). Returns a function that waits for the copy."""
        counts = self._take_counts()

        def copy() -> None:
            self._add_counts(counts)
            out.copy_(self._buffer.view(-1))
        if self._tables is not None and self._tables.offload:
            return self._tables.run_after_scatters(copy)
        if self._tables is not None:
            self._tables.drain()
        copy()
        return lambda: None

    # -- domain bookkeeping
    def _check(self, d: Optional[int]) -> Optional[int]:
        if d is not None and not 0 <= int(d) < self.num_domains:
            raise ValueError(f"domain {d} is outside [0, {self.num_domains})")
        return None if d is None else int(d)

    def reset(self) -> None:
        """Zero the accumulators (start of a step)."""
        if self._tables is not None:
            self._tables.drain()
        self._buffer.zero_()
        self._hook_counts = [0] * self.num_domains
        self._calls = [0] * len(self.named)
        self.present = None

    def end_backwards(self) -> None:
        """Call when the step's backwards are done, before anything changes the gradients."""
        if self._tables is not None:
            self._tables.end_backwards()

    def begin_step(self, domains: Sequence[Optional[int]]) -> None:
        """Reset, then attribute this rank's k-th backward of the step to domains[k] (None: skip)."""
        self.reset()
        self._domain = None
        self._step_domains = [self._check(d) for d in domains]

    def set_domain(self, domain: Optional[int]) -> None:
        """Attribute the following backward(s) to `domain` (None: skip). Call right before backward."""
        self._step_domains = None
        self._domain = self._check(domain)

    def set_scales(self, scales) -> None:
        """Multiply each selected parameter's gradient by scales[slot] (its shape) before it is
        accumulated, from the next backward on; None turns the scaling off. `scales` may also be
        a function returning them: with the torch tables on CPU it runs on the worker thread that
        scatters the sketches (the next backward waits for it), elsewhere it is called now."""
        if self._tables is not None:
            self._tables.set_scales(scales, self._check_scales)
            return
        scales = scales() if callable(scales) else scales
        self._scales = None if scales is None else list(self._check_scales(scales))

    def _check_scales(self, scales: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        if len(scales) != len(self.named):
            raise ValueError(f"{len(scales)} scales for {len(self.named)} probed parameters")
        return scales

    @property
    def _scales(self) -> Optional[List[torch.Tensor]]:
        """The scales in force (None: none)."""
        if self._tables is not None:
            self._tables.wait_for_scales()
            return self._tables.scales
        return self._own_scales

    @_scales.setter
    def _scales(self, scales: Optional[List[torch.Tensor]]) -> None:
        self._own_scales = scales

    def _domain_for(self, slot: int) -> Optional[int]:
        if self._step_domains is None:
            return self._domain
        k = self._calls[slot]
        self._calls[slot] += 1
        if k >= len(self._step_domains):
            raise RuntimeError(f"{self.named[slot][0]} received backward {k + 1} but begin_step was given "
                               f"{len(self._step_domains)} micro-batch domains")
        return self._step_domains[k]

    def _make_hook(self, slot: int):
        def hook(grad: torch.Tensor) -> None:
            d = self._domain_for(slot)
            if self._tables is not None:
                self._tables.before_accumulate(slot)
            if d is None:
                return
            self._accumulate(slot, d, grad.detach())
        return hook

    def _make_post_hook(self, slot: int):
        def post_hook(param: torch.Tensor) -> None:
            self._tables.after_accumulate(slot)
        return post_hook

    def _accumulate(self, slot: int, d: int, grad: torch.Tensor) -> None:
        """Add one backward's gradient of parameter `slot` to row d (and count the call)."""
        row = self._rows[d]
        if self._tables is not None:  # torch sketch: (grad x scale x sign) scattered to its buckets
            more = self._step_domains is not None and self._calls[slot] < len(self._step_domains)
            self._tables.add(slot, row, grad, more)
        else:
            if self._scales is not None:
                grad = grad * self._scales[slot]
            if self.fused_sketch:
                kernels.count_sketch_add(grad, row, self._keys[slot], *self._placements[slot])
            else:
                off = self._offsets[slot]
                row[off:off + grad.numel()].add_(grad.reshape(-1))
        self._hook_counts[d] += 1  # a Python int: a tensor op per hook cost more than the rest

    def remove(self) -> None:
        """Detach the hooks (the probe keeps its last accumulators)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # -- combining across ranks
    def local_sketch(self) -> torch.Tensor:
        """This rank's [D, m+1] buffer (sketch | hook counts), for a caller that fuses it into
        another all-reduce over the world; pass the reduced tensor to ``gram_from_reduced``."""
        if self.mode != "sketch":
            raise RuntimeError("local_sketch is for mode='sketch'; exact mode reduces with alignment_matrix")
        return self.buffer

    def gram_from_reduced(self, reduced: torch.Tensor, scale: float = 1.0) -> np.ndarray:
        """D x D float64 Gram of a world-summed [D, m+1] sketch buffer; sets ``present``."""
        reduced = reduced.reshape(self.num_domains, self.sketch_size + 1).double()
        self.present = (reduced[:, -1] > 0).cpu().numpy()
        if self._scaled is None or self._scaled.device != reduced.device:  # kept: no fresh pages per step
            self._scaled = torch.empty(self.num_domains, self.sketch_size, dtype=torch.float64, device=reduced.device)
        sketch = torch.mul(reduced[:, :-1], scale, out=self._scaled)
        return symmetric((sketch @ sketch.t()).cpu().numpy())

    def reduce(self, group=None, scale: float = 1.0) -> torch.Tensor:
        """Sketch mode: the [D, m] sketch of the whole per-domain gradient, summed with ONE
        all-reduce over `group` (default: the world; none for a one-rank state). TP shards and PP stages hold disjoint
        elements (their sketches add up), DP ranks disjoint micro-batches (their gradients
        add up), so the group must cover every rank of the TP x PP x DP grid."""
        if self.mode != "sketch":
            raise RuntimeError("reduce is for mode='sketch'; exact mode reduces with alignment_matrix")
        reduced = self.buffer.clone()
        # A one-rank state (ParallelState.single) never communicates, even inside a larger world.
        if self.state.layout.world_size > 1 and dist.get_world_size(group) > 1:
            dist.all_reduce(reduced, group=group)
        self.present = (reduced[:, -1] > 0).cpu().numpy()
        return reduced[:, :-1] * scale

    def alignment_matrix(self, group=None, scale: float = 1.0) -> np.ndarray:
        """D x D float64 matrix of per-domain gradient inner products, on every rank.

        sketch: one all-reduce of [D, m+1] over `group` (default the world), then S S^T.
        exact:  the per-domain vectors are sums over DP ranks, so first all-reduce the
                [D, n_local+1] vectors over the DP group, then the local Gram of this rank's
                disjoint elements, summed over the TP x PP group (two all-reduces; `group`
                is ignored). scale multiplies the gradients (the Gram by scale^2).
        """
        if self.mode == "sketch":
            sketch = self.reduce(group, scale).double()
            return symmetric((sketch @ sketch.t()).cpu().numpy())
        state = self.state
        vectors = self.buffer.clone()
        if group_size(state.dp_group) > 1:
            dist.all_reduce(vectors, group=state.dp_group)
        local = vectors[:, :-1].double() * scale
        gram = torch.cat([local @ local.t(), vectors[:, -1:].double()], dim=1)
        if group_size(state.model_parallel_group) > 1:
            dist.all_reduce(gram, group=state.model_parallel_group)
        self.present = (gram[:, -1] > 0).cpu().numpy()
        return symmetric(gram[:, :-1].cpu().numpy())


def symmetric(gram: np.ndarray) -> np.ndarray:
    """(S + S^T) / 2: a Gram matrix computed in floating point is symmetric only up to rounding,
    and scores that compare S_ij with S_ji would read that rounding as signal."""
    return 0.5 * (gram + gram.T)


# ---- weight norms --------------------------------------------------------------------------
def sum_of_squares(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """fp32 [n]: the sum of squares of each tensor, in one multi-tensor launch on GPU
    (kernels/: Triton on CUDA, the torch reference elsewhere)."""
    return kernels.multi_tensor_sum_of_squares([t.detach() for t in tensors])


class WeightNormTracker:
    """Frobenius norms of L selected matrices and of their change since the last ``measure``.

    `named_params` are the selected matrices this rank holds; `names` the global list of all
    L selected names (``selected_names(...)``; default: the local names, for one process).
    Each rank fills its slots of a zero-padded [2L] vector of sums of squares (TP shards
    each add their part; a TP-replicated tensor only from TP rank 0) and ONE all-reduce over
    the TP x PP group gives every rank all L values. DP replicas hold identical weights.
    The previous values are kept as an fp32 copy of the local shards, taken by the last
    ``measure`` or by ``snapshot``; with no previous copy the change is reported as 0.
    In the training loop call ``snapshot()`` right before the optimizer step and
    ``measure()`` right after it: the change is then exactly this step's update, and no
    state has to be checkpointed for a resumed run to report the same values.
    """

    def __init__(self, named_params: Iterable[Tuple[str, nn.Parameter]], state: Optional[ParallelState] = None,
                 names: Optional[Sequence[str]] = None):
        self.state = state if state is not None else ParallelState.single("cpu")
        named = list(named_params)
        self.names = list(names) if names is not None else [n for n, _ in named]
        slot_of = {n: i for i, n in enumerate(self.names)}
        missing = [n for n, _ in named if n not in slot_of]
        if missing:
            raise ValueError(f"parameters {missing} are not among the selected names {self.names}")
        self.local = [(slot_of[n], p) for n, p in named
                      if _contributes(p, self.state) and not getattr(p, "shared_embedding_duplicate", False)]
        self.device = named[0][1].device if named else self.state.device
        self.previous: Optional[List[torch.Tensor]] = None
        self._diffs: Optional[List[torch.Tensor]] = None  # scratch for W - W_prev
        local_slots = [s for s, _ in self.local]
        self._slots = torch.tensor(local_slots + [s + len(self.names) for s in local_slots], dtype=torch.int64,
                                   device=self.device)

    @torch.no_grad()
    def snapshot(self) -> None:
        """Keep an fp32 copy of the local shards as W_{t-1} for the next ``measure`` (no communication)."""
        weights = [p.detach() for _, p in self.local]
        if self.previous is None:
            self.previous = [w.float().clone() for w in weights]
        else:
            for prev, w in zip(self.previous, weights):
                prev.copy_(w)

    @torch.no_grad()
    def local_squares(self, world_share: bool = False) -> torch.Tensor:
        """This rank's fp32 [2L] share of (sums of squares of W, of W - W_prev); no snapshot (the
        training loop takes one before each optimizer step). Summed over the TP x PP group it
        gives every matrix's value; with ``world_share`` only DP rank 0 contributes (the others
        return zeros), so a sum over the WORLD gives the same (callers fuse it into another world
        all-reduce). Finish with ``norms_from_squares``."""
        num = len(self.names)
        values = torch.zeros(2 * num, dtype=torch.float32, device=self.device)
        if not self.local or (world_share and self.state.dp_rank != 0):
            return values
        weights = [p.detach() for _, p in self.local]
        if self.previous is not None and self._diffs is None:
            self._diffs = [torch.empty_like(prev) for prev in self.previous]
        if self.previous is not None and all(w.dtype == torch.float32 for w in weights) \
                and kernels.choose_backend(weights) == "torch":
            self._squares_in_place(weights, values)
            return values
        diffs = []
        if self.previous is not None:  # W - W_prev in fp32 (a bf16 W is promoted exactly), into kept buffers
            diffs = [torch.sub(w, prev, out=d) for w, prev, d in zip(weights, self.previous, self._diffs)]
        squares = sum_of_squares(weights + diffs).to(self.device)
        values.index_copy_(0, self._slots[:squares.numel()], squares)  # the weights' slots, then the changes'
        return values

    def _squares_in_place(self, weights: List[torch.Tensor], values: torch.Tensor) -> None:
        """The torch reference's sums of squares (x.float().pow(2).sum(); pow's square is x * x,
        bit for bit), computed in each matrix's scratch buffer and summed straight into `values`:
        no temporaries, and the scratch stays in cache between the two sums."""
        num = len(self.names)
        for (slot, _), w, prev, scratch in zip(self.local, weights, self.previous, self._diffs):
            flat = scratch.view(-1)
            torch.sum(torch.mul(w, w, out=scratch).view(-1), 0, out=values[slot])
            torch.sub(w, prev, out=scratch)
            torch.sum(flat.mul_(flat), 0, out=values[slot + num])

    def norms_from_squares(self, reduced: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
        """(norms [L], change_norms [L]) as float64 arrays from the reduced [2L] squares."""
        num = len(self.names)
        values = reduced.double().clamp(min=0).sqrt().cpu().numpy()
        return values[:num], values[num:]

    @torch.no_grad()
    def measure(self) -> Tuple[np.ndarray, np.ndarray]:
        """(norms [L], change_norms [L]) as float64 arrays, on every rank (one all-reduce over
        the TP x PP group when it has more than one rank)."""
        values = self.local_squares()
        self.snapshot()
        group = self.state.model_parallel_group
        if group_size(group) > 1:
            dist.all_reduce(values, group=group)
        return self.norms_from_squares(values)

"""What the Mamba-2 and Gated DeltaNet mixers share: the memory policy, the ``lam`` projection, padding masks,
packed sequences, the decoding cache, the call of the DLA op, the segmentation hook
(:meth:`RecurrentMixer.capture_segmentation`, :func:`capture_segmentations`) and the op-input hook
(:meth:`RecurrentMixer.capture_op_inputs`)."""

from __future__ import annotations

import contextlib
import math
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from dla.layers.modules import check_hidden, check_mask, copy_initial_values, mark_no_weight_decay, split_packed
from dla.layers.op import dla_op, dla_step
from dla.layers.state import (RecurrentLayerCache, empty_state, fit_state_width, scatter_state, select_state,
                              where_state)
from dla.ops import POLICIES, SCORES, DLAState, Segmentation, num_levels
from dla.ops.common.boundary_grad import BOUNDARY_GRADS, SCORED_POLICIES, TEMPERATURE
from dla.ops.common.state import UNUSED_START

Projected = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor], Any, torch.Tensor]


@dataclass
class OpInputs:
    """What one multi-token forward of a mixer passed to the DLA op (:meth:`RecurrentMixer.capture_op_inputs`):
    ``chunk_dla(q, k, v, g, lam, beta, initial_state=initial_state, cu_seqlens=cu_seqlens, **options)`` computes
    the op output the layer got. Tensors are detached, in the dtypes the op received (``lam``, ``beta``: ``None``
    where the policy or backbone has none); ``options`` holds ``scale``, ``tau``, ``capacity``, ``policy``,
    ``block_size``, ``score`` and ``chunk_size`` (and ``boundary_grad``, ``boundary_temperature`` when the mixer
    trains its boundaries)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g: torch.Tensor
    lam: Optional[torch.Tensor]
    beta: Optional[torch.Tensor]
    initial_state: Optional[DLAState]
    cu_seqlens: Optional[torch.Tensor]
    options: Dict[str, Any]


def check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


class RecurrentMixer(nn.Module, metaclass=ABCMeta):
    """Base of the linear-attention mixers: subclasses define the projections (``_project``) and the output
    (``_output``); this class runs the DLA op with the configured memory policy.

    Args:
        hidden_size: model width ``D``.
        num_heads: value heads ``H`` of the op.
        num_qk_heads: query/key heads ``G`` (``G`` divides ``H``; ``H // G`` value heads share one key).
        head_k_dim: key / state dimension ``K``.
        head_v_dim: value dimension ``V``.
        policy: ``single`` (the backbone) | ``fenwick`` (Log-Linear) | ``dla`` | ``fixed`` | ``dla_unbounded``
            (docs/design.md section 3.1).
        capacity: ``C``, the most live slots (``dla``, ``fixed``; ``lam`` entries for ``dla_unbounded``).
        tau: boundary threshold of the information score.
        score: ``drift`` (the paper's) or ``write``.
        boundary_grad: ``None`` or ``ste``: the trainable boundary (:func:`~dla.ops.chunk_dla`'s option; policies
            ``dla`` and ``dla_unbounded``); decode steps use the hard decisions alone.
        boundary_temperature: ``> 0``, the temperature of its gate.
        block_size: slot width of the ``fixed`` policy.
        chunk_size: chunk length of the chunked op (passed only to an op that takes it).
        max_position_embeddings: the longest sequence ``fenwick`` sizes its ``lam`` levels for
            (``ceil(log2 T) + 1`` levels); unused by the other policies.
        layer_idx: index of the layer in the model (informational).

    Every policy but ``single`` reads the slots with ``lam = softplus(lam_scale * lam_proj(x))`` of shape
    ``[B, T, H, R]`` (``R = capacity``, or the Fenwick levels), with ``lam_scale [H, R]`` initialised to ones as
    Log-Linear Attention does.

    The op's :class:`~dla.ops.Segmentation` (scores, boundaries, merges, slot starts) of the model's own forward
    is available through :meth:`capture_segmentation` (one mixer) or :func:`capture_segmentations` (every
    recurrent mixer of a model); nothing is recorded, and the op is called as before, outside those contexts.
    """

    _segmentation_sink: Optional[List[Segmentation]] = None
    """The list :meth:`capture_segmentation` appends to while its context is open."""

    _op_input_sink: Optional[List[OpInputs]] = None
    """The list :meth:`capture_op_inputs` appends to while its context is open."""

    needs_positions = False
    """Recurrent mixers carry position in their state and take no ``position_ids``."""

    def __init__(self, hidden_size: int, num_heads: int, num_qk_heads: int, head_k_dim: int, head_v_dim: int, *,
                 policy: str = "dla", capacity: int = 30, tau: float = 0.6, score: str = "drift",
                 boundary_grad: Optional[str] = None, boundary_temperature: float = TEMPERATURE,
                 block_size: int = 64, chunk_size: int = 64, max_position_embeddings: int = 2048,
                 layer_idx: Optional[int] = None):
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("num_heads", num_heads), ("num_qk_heads", num_qk_heads),
                            ("head_k_dim", head_k_dim), ("head_v_dim", head_v_dim), ("capacity", capacity),
                            ("block_size", block_size), ("chunk_size", chunk_size),
                            ("max_position_embeddings", max_position_embeddings)):
            check_positive_int(name, value)
        if num_heads % num_qk_heads != 0:
            raise ValueError(f"num_qk_heads: must divide num_heads={num_heads}, got {num_qk_heads}")
        if policy not in POLICIES:
            raise ValueError(f"policy: unknown {policy!r}; allowed: {', '.join(POLICIES)}")
        if score not in SCORES:
            raise ValueError(f"score: unknown {score!r}; allowed: {', '.join(SCORES)}")
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
            raise ValueError(f"tau: expected a finite number >= 0, got {tau!r}")
        if boundary_grad is not None and (boundary_grad not in BOUNDARY_GRADS or policy not in SCORED_POLICIES):
            raise ValueError(f"boundary_grad: expected None, or one of {', '.join(BOUNDARY_GRADS)} with policy "
                             f"{' or '.join(SCORED_POLICIES)}; got {boundary_grad!r} with policy {policy!r}")
        temp = boundary_temperature
        if isinstance(temp, bool) or not isinstance(temp, (int, float)) or not math.isfinite(temp) or temp <= 0:
            raise ValueError(f"boundary_temperature: expected a finite number > 0, got {temp!r}")
        self.boundary_grad, self.boundary_temperature = boundary_grad, float(temp)
        self.hidden_size, self.num_heads, self.num_qk_heads = hidden_size, num_heads, num_qk_heads
        self.head_k_dim, self.head_v_dim = head_k_dim, head_v_dim
        self.policy, self.capacity, self.tau, self.score = policy, capacity, float(tau), score
        self.block_size, self.chunk_size, self.layer_idx = block_size, chunk_size, layer_idx
        self.max_position_embeddings = max_position_embeddings
        self.scale = head_k_dim ** -0.5
        self.lam_size: Optional[int] = {"single": None, "fenwick": num_levels(max_position_embeddings)}.get(
            policy, capacity)
        if self.lam_size is not None:
            self.lam_proj = nn.Linear(hidden_size, num_heads * self.lam_size, bias=False)
            self.lam_scale = mark_no_weight_decay(nn.Parameter(torch.ones(num_heads, self.lam_size)))

    @property
    def state_width(self) -> Optional[int]:
        """Slot dimension of the cached :class:`DLAState` (``None``: grows, ``dla_unbounded``)."""
        return {"single": 1, "fenwick": self.lam_size, "dla_unbounded": None}.get(self.policy, self.capacity)

    def initial_values(self) -> Dict[str, torch.Tensor]:
        """Values of the parameters with a non-default init (see :mod:`dla.layers.modules`)."""
        return {"lam_scale": torch.ones_like(self.lam_scale)} if self.lam_size is not None else {}

    def reset_parameters(self) -> None:
        copy_initial_values(self)

    def compute_lam(self, hidden: torch.Tensor) -> Optional[torch.Tensor]:
        """``[B, T, H, R]`` positive readout weights, ``None`` for ``single``."""
        if self.lam_size is None:
            return None
        B, T, _ = hidden.shape
        return F.softplus(self.lam_scale * self.lam_proj(hidden).view(B, T, self.num_heads, self.lam_size))

    @contextlib.contextmanager
    def capture_segmentation(self) -> Iterator[List[Segmentation]]:
        """Record the op's segmentation of every multi-token forward of this mixer while the context is open.

        Yields a list that gets one :class:`~dla.ops.Segmentation` (detached, fields ``[B, T, H]`` and
        ``[B, T, H, R]``, the layout of the forward's ``hidden``) per forward call with more than one token (or
        without a cache); the op computes it alongside the output (``return_segmentation=True``), so the model
        runs exactly as it does otherwise. What the fields mean in each input layout:

        * no mask: as the op returns it; positions count from the call's first token, slots carried in from a
          cache start at negative positions (:class:`~dla.ops.Segmentation`).
        * ``attention_mask`` (padding) with slot bookkeeping: each row's real tokens run as one sequence, so
          positions (``starts``) count that row's real tokens only; padding positions hold ``score 0``,
          ``boundary False``, ``num_slots 0``, ``merged -1``, ``starts`` :data:`~dla.ops.common.state.UNUSED_START`
          and ``lam_index -1``. The ``single`` policy runs padded rows as they are (one slot, no boundaries).
        * ``cu_seqlens``: ``[1, T, ...]`` packed like the input; positions count from each document's start.

        One-token decode steps from a cache (:func:`~dla.ops.dla_step`) record nothing: the step op returns no
        segmentation; the slots it leaves are in the cache's :class:`~dla.ops.DLAState`.

        Raises:
            ValueError: the mixer is already capturing (contexts on one mixer do not nest).
        """
        if self._segmentation_sink is not None:
            raise ValueError("capture_segmentation: this mixer is already capturing; contexts on one mixer do not "
                             "nest (use the list the open context yielded)")
        records: List[Segmentation] = []
        self._segmentation_sink = records
        try:
            yield records
        finally:
            self._segmentation_sink = None

    @contextlib.contextmanager
    def capture_op_inputs(self) -> Iterator[List[OpInputs]]:
        """Record the DLA op's inputs of every multi-token forward of this mixer while the context is open.

        Yields a list that gets one :class:`OpInputs` per call of the chunked op (a forward with more than one
        token, or without a cache): the tensors exactly as the op receives them (after padding rows are packed,
        with ``cu_seqlens``) and the options it is called with, so that the op can be rerun or timed on a trained
        model's activations (``dla bench capture``). The model runs as it does otherwise; one-token decode steps
        record nothing.

        Raises:
            ValueError: the mixer is already capturing its op inputs (contexts on one mixer do not nest).
        """
        if self._op_input_sink is not None:
            raise ValueError("capture_op_inputs: this mixer is already capturing; contexts on one mixer do not nest "
                             "(use the list the open context yielded)")
        records: List[OpInputs] = []
        self._op_input_sink = records
        try:
            yield records
        finally:
            self._op_input_sink = None

    @abstractmethod
    def _project(self, hidden: torch.Tensor, conv_tail: Optional[torch.Tensor],
                 cu_seqlens: Optional[torch.Tensor] = None) -> Projected:
        """``-> (q [B,T,G,K], k [B,T,G,K], v [B,T,H,V], g [B,T,H], beta [B,T,H] or None, aux, new conv tail)``;
        with ``cu_seqlens`` the short convolution restarts at every document."""

    @abstractmethod
    def _output(self, o: torch.Tensor, aux: Any) -> torch.Tensor:
        """``o [B, T, H, V]`` (op output) and the ``aux`` of ``_project`` -> ``[B, T, D]``."""

    def forward(self, hidden: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                cache: Optional[RecurrentLayerCache] = None,
                cu_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mix ``hidden [B, T, D]`` along time; returns ``[B, T, D]``.

        Args:
            hidden: ``[B, T, D]`` input.
            attention_mask: ``[B, T]`` 1 for tokens, 0 for padding. Padding does not change the layer's state:
                its input is zeroed (so the short convolution sees zeros), its key and value are zeroed and its
                decay set to ``g = 0``, so the backbone state passes through unchanged; for the policies with slot
                bookkeeping (token counts, boundaries) the rows' real tokens are packed into one sequence and run
                in one op call (``cu_seqlens``), each row from its own state. Exact for left padding (what
                ``generate`` builds) and for right padding; with holes inside a row the short convolution sees
                zeros where the masked tokens were. In a decode step a masked token leaves the row's state and
                convolution tail exactly as they were. Outputs at padding are 0.
            cache: a :class:`RecurrentLayerCache` to continue from; updated in place (conv tail, state,
                ``seen_tokens``). A call with ``T == 1`` is a decode step (:func:`~dla.ops.dla_step`: fixed
                shapes, no host synchronisation except when a ``dla_unbounded`` cache must grow); longer calls
                run the chunked op. Prefill then one-token steps equal one pass over the whole sequence.
            cu_seqlens: ``[N + 1]`` offsets of ``N`` packed documents in ``hidden [1, T, D]``: each document is run
                on its own from an empty state (no cache, no mask), all in one op call.
        """
        check_hidden(hidden, self.hidden_size)
        if cu_seqlens is not None:
            if cache is not None:
                raise ValueError("cache: packed sequences (cu_seqlens) are run without a cache")
            if attention_mask is not None:
                raise ValueError("attention_mask: not used with cu_seqlens (documents are delimited by the offsets)")
            if not split_packed(cu_seqlens, hidden):
                return hidden.new_zeros(hidden.shape)
            return self._forward(hidden, None, None, torch.unique_consecutive(cu_seqlens.to(hidden.device)))
        if cache is not None and not isinstance(cache, RecurrentLayerCache):
            raise ValueError(f"cache: expected a RecurrentLayerCache, got {type(cache).__name__}")
        if cache is not None and hidden.shape[1] == 1:
            return self._step(hidden, check_mask(attention_mask, hidden, drop_full=False), cache)
        return self._forward(hidden, check_mask(attention_mask, hidden), cache)

    def _forward(self, hidden: torch.Tensor, mask: Optional[torch.Tensor], cache: Optional[RecurrentLayerCache],
                 cu_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
        if mask is not None:
            hidden = hidden * mask[..., None].to(hidden.dtype)
        q, k, v, g, beta, aux, tail = self._project(hidden, cache.conv if cache is not None else None, cu_seqlens)
        lam = self.compute_lam(hidden)
        if mask is not None:
            keep = mask[..., None, None]
            k = torch.where(keep, k, torch.zeros_like(k))
            v = torch.where(keep, v, torch.zeros_like(v))
            g = torch.where(mask[..., None], g, torch.zeros_like(g))
        state = cache.state if cache is not None else None
        self._check_length(state, mask, hidden.shape[1], cache.seen_tokens if cache is not None else 0, cu_seqlens)
        want_state = cache is not None
        sink = self._segmentation_sink
        if cu_seqlens is not None:
            o, final, seg = self._call_op(q, k, v, g, lam, beta, None, False, cu_seqlens, want_seg=sink is not None)
        elif mask is None or self.policy == "single":
            o, final, seg = self._call_op(q, k, v, g, lam, beta, state, want_state, want_seg=sink is not None)
        else:
            o, final, seg = self._run_rows_packed(q, k, v, g, lam, beta, state, mask, want_state,
                                                  want_seg=sink is not None)
        if sink is not None:
            sink.append(Segmentation(*(getattr(seg, f).detach() for f in Segmentation.__dataclass_fields__)))
        y = self._output(o, aux)
        if mask is not None:
            y = y * mask[..., None].to(y.dtype)
        if cache is not None:
            cache.conv, cache.state = tail, final
            cache.seen_tokens += hidden.shape[1]
        return y

    def _step(self, hidden: torch.Tensor, mask: Optional[torch.Tensor], cache: RecurrentLayerCache) -> torch.Tensor:
        """One decode token ``hidden [B, 1, D]`` through :func:`~dla.ops.dla_step`; ``mask [B, 1]`` bool or None."""
        q, k, v, g, beta, aux, tail = self._project(hidden, cache.conv)
        lam = self.compute_lam(hidden)
        old = cache.state if cache.state is not None else self._empty(hidden.shape[0], v)
        self._check_length(cache.state, None, 1, cache.seen_tokens)
        first = lambda x: None if x is None else x[:, 0]  # noqa: E731
        o, new = dla_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], first(lam), first(beta), state=old, scale=self.scale,
                          tau=self.tau, capacity=self.capacity, policy=self.policy, block_size=self.block_size,
                          score=self.score)
        y = self._output(o[:, None], aux)
        if mask is not None:  # a masked token: the row keeps its state and tail (torch.where keeps shapes static)
            keep = mask[:, 0]
            new = where_state(keep, new, old)
            prev = cache.conv.to(tail.dtype) if cache.conv is not None else torch.zeros_like(tail)
            tail = torch.where(keep[:, None, None], tail, prev)
            y = y * mask[..., None].to(y.dtype)
        cache.conv, cache.state = tail, new
        cache.seen_tokens += 1
        return y

    def _check_length(self, state: Optional[DLAState], mask: Optional[torch.Tensor], T: int, seen_bound: int,
                      cu_seqlens: Optional[torch.Tensor] = None) -> None:
        """``fenwick`` only: refuse sequences beyond the ``lam`` levels. ``seen_bound`` (the cache's
        ``seen_tokens``, padding included) bounds the real tokens seen, so the exact count, read on the host, is
        needed only when the bound does not settle it; packed documents (``cu_seqlens``) count by the longest."""
        if self.policy != "fenwick" or num_levels(seen_bound + T) <= self.lam_size:
            return
        seen = int(state.counts.sum(-1).max()) if state is not None and state.counts.numel() else 0
        if cu_seqlens is not None:
            new = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        else:
            new = int(mask.sum(-1).max()) if mask is not None else T
        if num_levels(seen + new) > self.lam_size:
            raise ValueError(f"max_position_embeddings: policy 'fenwick' was built for {self.max_position_embeddings} "
                             f"positions ({self.lam_size} lam levels); this call reaches {seen + new} tokens")

    def _run_rows_packed(self, q, k, v, g, lam, beta, state: Optional[DLAState], mask: torch.Tensor,
                         want_state: bool, want_seg: bool = False
                         ) -> Tuple[torch.Tensor, Optional[DLAState], Optional[Segmentation]]:
        """Slot bookkeeping (counts, boundaries, Fenwick levels) must not see padding: the rows' real tokens are
        packed into one sequence (``cu_seqlens``), run in one op call, and the outputs (and the segmentation,
        when asked) scattered back."""
        B, T, H, V = v.shape
        lengths = mask.sum(-1)
        rows = lengths.nonzero().squeeze(-1)  # rows with at least one token
        flat = mask.reshape(-1).nonzero().squeeze(-1)  # [N] their tokens, row after row
        if flat.numel() == 0:
            seg = self._scatter_segmentation(None, flat, B, T, v) if want_seg else None
            return (torch.zeros_like(v), (state if state is not None else self._empty(B, v)) if want_state else None,
                    seg)
        cu_seqlens = F.pad(lengths.index_select(0, rows).cumsum(0), (1, 0))
        pack = lambda x: None if x is None else x.flatten(0, 1).index_select(0, flat)[None]  # noqa: E731
        init = select_state(state, rows) if state is not None else None
        o, final, seg = self._call_op(*(pack(x) for x in (q, k, v, g, lam, beta)), init, want_state, cu_seqlens,
                                      want_seg=want_seg)
        o = v.new_zeros(B * T, H, V).index_copy(0, flat, o[0]).view(B, T, H, V)
        if want_state and rows.numel() < B:  # rows that were all padding keep their state
            final = scatter_state(state if state is not None else self._empty(B, v), rows, final)
        if want_seg:
            seg = self._scatter_segmentation(seg, flat, B, T, v)
        return o, final, seg

    def _scatter_segmentation(self, packed: Optional[Segmentation], flat: torch.Tensor, B: int, T: int,
                              v: torch.Tensor) -> Segmentation:
        """The packed ``[1, N, ...]`` segmentation of the real tokens back at their ``[B, T, ...]`` positions;
        padding gets the values of a token that touched nothing (see :meth:`capture_segmentation`)."""
        H, R = v.shape[2], self.lam_size or 1
        fill = {"score": 0, "boundary": False, "num_slots": 0, "merged": -1, "starts": UNUSED_START,
                "lam_index": -1}
        fields = {}
        for name, value in fill.items():
            src = getattr(packed, name)[0] if packed is not None else None
            tail = src.shape[2:] if src is not None else ((R,) if name in ("starts", "lam_index") else ())
            dtype = src.dtype if src is not None else {"score": torch.promote_types(v.dtype, torch.float32),
                                                       "boundary": torch.bool}.get(name, torch.int64)
            out = torch.full((B * T, H, *tail), value, dtype=dtype, device=v.device)
            if src is not None:
                out.index_copy_(0, flat, src)
            fields[name] = out.view(B, T, H, *tail)
        return Segmentation(**fields)

    def _empty(self, batch: int, v: torch.Tensor) -> DLAState:
        """The state a sequence starts from, at the cache's width (``dla_unbounded``: ``capacity``, then grows)."""
        return empty_state(batch, self.num_heads, self.state_width or self.capacity, self.head_k_dim,
                           self.head_v_dim, torch.promote_types(v.dtype, torch.float32), v.device)

    def _call_op(self, q, k, v, g, lam, beta, state: Optional[DLAState], want_state: bool,
                 cu_seqlens: Optional[torch.Tensor] = None, want_seg: bool = False
                 ) -> Tuple[torch.Tensor, Optional[DLAState], Optional[Segmentation]]:
        extra = {"return_segmentation": True} if want_seg else {}
        options = dict(scale=self.scale, tau=self.tau, capacity=self.capacity, policy=self.policy,
                       block_size=self.block_size, score=self.score, chunk_size=self.chunk_size)
        if self.boundary_grad is not None:
            options.update(boundary_grad=self.boundary_grad, boundary_temperature=self.boundary_temperature)
        if self._op_input_sink is not None:
            detach = lambda x: None if x is None else x.detach()  # noqa: E731
            self._op_input_sink.append(OpInputs(*(detach(x) for x in (q, k, v, g, lam, beta)), state, cu_seqlens,
                                                dict(options)))
        res = dla_op(q, k, v, g, lam, beta, initial_state=state, output_final_state=want_state,
                     cu_seqlens=cu_seqlens, **options, **extra)
        o, final = res[0], res[1]
        if final is not None and self.state_width is not None:
            final = fit_state_width(final, self.state_width)
        return o, final, (res[2] if want_seg else None)

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, num_qk_heads={self.num_qk_heads}, "
                f"head_k_dim={self.head_k_dim}, head_v_dim={self.head_v_dim}, policy={self.policy!r}, "
                f"capacity={self.capacity}, tau={self.tau}, score={self.score!r}"
                + (f", boundary_grad={self.boundary_grad!r}" if self.boundary_grad is not None else ""))


@contextlib.contextmanager
def capture_segmentations(model: nn.Module) -> Iterator[Dict[str, List[Segmentation]]]:
    """:meth:`RecurrentMixer.capture_segmentation` on every recurrent mixer of ``model`` at once.

    Yields ``{module name: list of Segmentation}`` (names as ``model.named_modules()`` gives them, e.g.
    ``model.layers.0.mixer``); each list gets one record per multi-token forward of that mixer::

        with capture_segmentations(model) as segs:
            model(input_ids=ids, use_cache=False)
        boundaries = segs["model.layers.0.mixer"][0].boundary  # [B, T, H]

    Raises:
        ValueError: ``model`` has no :class:`RecurrentMixer`, or one of them is already capturing.
    """
    mixers = [(name, m) for name, m in model.named_modules() if isinstance(m, RecurrentMixer)]
    if not mixers:
        raise ValueError(f"model: {type(model).__name__} has no RecurrentMixer (every mixer is attention, or it is "
                         f"not a DLA model)")
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(m.capture_segmentation()) for name, m in mixers}

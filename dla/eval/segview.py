"""Where DLA's boundaries and merges fall on a real text: per layer and head, as PNG and HTML.

:func:`segmentations` runs a DLA model on one text and records, for every recurrent layer, the
:class:`~dla.ops.Segmentation` its op computes during that forward, through the mixers' own hook
(:meth:`dla.layers.RecurrentMixer.capture_segmentation`): nothing is recomputed, the record is what the layer's
op call decided.

:func:`token_slots` turns one head's record into per-token facts (slot at the end of the text, boundaries,
merges); :func:`write_html` colours every token by the slot holding it at the end, draws a solid bar before a
boundary that is still a slot start at the end and a dashed one before a boundary merged away later, and marks the
token at which a merge happened with ``⊕``. :func:`write_png` draws the same per head as strips.
"""

from __future__ import annotations

import contextlib
import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from dla.data.tokenizer import TextTokenizer
from dla.ops import Segmentation

PALETTE = ("#fde2e4", "#cde7f0", "#d8f3dc", "#fff1c1", "#e4d9f5", "#ffd8be", "#d0f4de", "#e9edc9", "#f8c8dc",
           "#caf0f8", "#f1e3d3", "#dee2ff")
"""Background colours of slots, cycled (slot ``j`` gets ``PALETTE[j % len]``)."""


@dataclass
class LayerSegmentation:
    """The segmentation of one recurrent layer on one text (batch of one).

    Attributes:
        layer: layer index.
        policy: the layer's memory policy.
        seg: the op's :class:`~dla.ops.Segmentation` (``[1, T, H]`` fields).
    """

    layer: int
    policy: str
    seg: Segmentation


@dataclass
class TokenSlots:
    """Per-token view of one (layer, head).

    Attributes:
        final_slot: ``[T]`` index (chronological) of the slot holding each token after the last token.
        segment: ``[T]`` index of the slot each token was written into when it arrived (boundaries counted).
        boundary: ``[T]`` the token opened a slot.
        survives: ``[T]`` the token opened a slot that is still a slot start after the last token.
        merges: ``(t, start_a, start_b)``: before token ``t`` was appended, the slots starting at ``start_a`` and
            ``start_b`` merged (``start_b``'s boundary disappeared).
        score: ``[T]`` information score of each token.
        num_slots: ``[T]`` live slots after each token.
    """

    final_slot: np.ndarray
    segment: np.ndarray
    boundary: np.ndarray
    survives: np.ndarray
    merges: List[Tuple[int, int, int]]
    score: np.ndarray
    num_slots: np.ndarray


def _recurrent_mixers(model) -> List[Tuple[int, torch.nn.Module]]:
    from dla.layers import RecurrentMixer

    return [(i, block.mixer) for i, block in enumerate(model.model.layers) if isinstance(block.mixer, RecurrentMixer)]


@torch.no_grad()
def segmentations(model, input_ids: torch.Tensor) -> List[LayerSegmentation]:
    """Run ``model`` on ``input_ids [1, T]`` and return the segmentation of every recurrent layer.

    Raises:
        ValueError: a batch other than one, or a model without recurrent layers.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids: expected [1, T], got {tuple(input_ids.shape)}")
    mixers = _recurrent_mixers(model)
    if not mixers:
        raise ValueError("model: has no recurrent (DLA) layer; every layer is attention")
    with contextlib.ExitStack() as stack:
        records = {i: stack.enter_context(m.capture_segmentation()) for i, m in mixers}
        model(input_ids=input_ids.to(next(model.parameters()).device), use_cache=False)
    out = []
    for i, mixer in mixers:
        if len(records[i]) != 1:  # one forward without a cache is one op call per layer
            raise ValueError(f"model: layer {i} made {len(records[i])} op calls for one forward; expected 1")
        out.append(LayerSegmentation(i, mixer.policy, records[i][0]))
    return out


def token_slots(layer: LayerSegmentation, head: int) -> TokenSlots:
    """The per-token view (:class:`TokenSlots`) of ``head`` of ``layer``."""
    seg = layer.seg
    H = seg.boundary.shape[2]
    if not 0 <= head < H:
        raise ValueError(f"head: expected 0 <= head < {H}, got {head}")
    boundary = seg.boundary[0, :, head].cpu().numpy().astype(bool)
    num = seg.num_slots[0, :, head].cpu().numpy()
    starts = seg.starts[0, :, head].cpu().numpy()  # [T, R] newest first
    merged = seg.merged[0, :, head].cpu().numpy()
    T = len(boundary)
    final = np.sort(starts[T - 1][starts[T - 1] >= 0][: num[T - 1]]) if T else np.zeros(0, dtype=np.int64)
    positions = np.arange(T)
    final_slot = np.searchsorted(final, positions, side="right") - 1 if len(final) else np.zeros(T, dtype=np.int64)
    segment = np.cumsum(boundary) - 1
    survives = boundary & np.isin(positions, final)
    merges = []
    for t in np.nonzero(merged >= 0)[0]:
        if t == 0:
            continue
        live = starts[t - 1][: num[t - 1]][::-1]  # chronological
        i = int(merged[t])
        if i + 1 < len(live):
            merges.append((int(t), int(live[i]), int(live[i + 1])))
    return TokenSlots(final_slot.astype(np.int64), segment.astype(np.int64), boundary, survives, merges,
                      seg.score[0, :, head].double().cpu().numpy(), num.astype(np.int64))


def token_strings(tokenizer, ids: Sequence[int]) -> List[str]:
    """Each token's text decoded on its own (``tokenizer.decode([id])``, once per distinct id); byte-level pieces
    that are not valid UTF-8 show as ``�``."""
    cache: Dict[int, str] = {}
    out = []
    for i in ids:
        i = int(i)
        if i not in cache:
            cache[i] = tokenizer.decode([i])
        out.append(cache[i])
    return out


def write_html(tokens: Sequence[str], layers: Sequence[LayerSegmentation], path: Union[str, os.PathLike], *,
               heads: Optional[Sequence[int]] = None, title: str = "DLA segmentation") -> Path:
    """One section per (layer, head): the text with tokens coloured by final slot, boundaries and merges marked."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:70em;margin:1em auto}"
             ".t{font-family:monospace;white-space:pre-wrap;line-height:1.9}"
             ".t span{padding:1px 0}.b{border-left:2px solid #000}.d{border-left:2px dashed #999}"
             "sup{color:#c00;font-weight:bold}</style>",
             f"<h1>{html.escape(title)}</h1><p>Background: slot holding the token after the last token. "
             "Solid bar: a boundary still a slot start at the end; dashed bar: a boundary merged away later; "
             "<sup>⊕</sup>: a merge happened before this token was appended (hover for details).</p>"]
    for layer in layers:
        H = layer.seg.boundary.shape[2]
        for h in (heads if heads is not None else range(H)):
            view = token_slots(layer, h)
            merge_at = {t: (a, b) for t, a, b in view.merges}
            parts.append(f"<h2>layer {layer.layer} ({html.escape(layer.policy)}), head {h}: "
                         f"{int(view.boundary.sum())} boundaries, {len(view.merges)} merges, "
                         f"{int(view.num_slots[-1]) if len(view.num_slots) else 0} slots at the end</h2><div class='t'>")
            for t, text in enumerate(tokens):
                cls = ("b" if view.survives[t] else "d") if view.boundary[t] else ""
                tip = (f"pos {t}, score {view.score[t]:.3f}, written to segment {view.segment[t]}, final slot "
                       f"{view.final_slot[t]}, {view.num_slots[t]} live slots")
                mark = ""
                if t in merge_at:
                    tip += f"; merged the slots starting at {merge_at[t][0]} and {merge_at[t][1]}"
                    mark = "<sup>⊕</sup>"
                colour = PALETTE[view.final_slot[t] % len(PALETTE)]
                parts.append(f"<span class='{cls}' style='background:{colour}' title='{html.escape(tip)}'>"
                             f"{mark}{html.escape(text)}</span>")
            parts.append("</div>")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(parts) + "\n", encoding="utf-8")
    return out


def write_png(tokens: Sequence[str], layer: LayerSegmentation, path: Union[str, os.PathLike], *,
              heads: Optional[Sequence[int]] = None, title: str = "") -> Path:
    """Strips per head of ``layer``: token cells coloured by final slot, boundary lines (solid: survives, dashed:
    merged away), red markers at merges; the tokens label the x axis when there are at most 256."""
    from dla.eval.plots import pyplot, save_figure

    plt = pyplot()
    from matplotlib.colors import ListedColormap

    heads = list(heads if heads is not None else range(layer.seg.boundary.shape[2]))
    T = len(tokens)
    fig, ax = plt.subplots(figsize=(min(max(6, 0.16 * T + 2), 40), 1 + 0.6 * len(heads)))
    cmap = ListedColormap(list(PALETTE))
    grid = np.zeros((len(heads), T))
    for r, h in enumerate(heads):
        view = token_slots(layer, h)
        grid[r] = view.final_slot % len(PALETTE)
        for t in np.nonzero(view.boundary)[0]:
            ax.plot([t - 0.5, t - 0.5], [r - 0.5, r + 0.5], color="k" if view.survives[t] else "0.5",
                    ls="-" if view.survives[t] else "--", lw=1.2)
        for t, _, _ in view.merges:
            ax.plot([t], [r - 0.3], marker="v", color="red", ms=4)
    ax.imshow(grid, cmap=cmap, vmin=0, vmax=len(PALETTE) - 1, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(len(heads)), [f"head {h}" for h in heads])
    if T <= 256:
        ax.set_xticks(range(T), [repr(s)[1:-1][:8] for s in tokens], rotation=90, fontsize=6, family="monospace")
    else:
        ax.set_xlabel("token position")
    ax.set_title(title or f"layer {layer.layer} ({layer.policy}): slots by colour, boundaries |, merges ▼")
    return save_figure(fig, path)


def write_segment_view(model, ids: Sequence[int], tokens: Sequence[str], out_dir: Union[str, os.PathLike], *,
                       layers: Optional[Sequence[int]] = None, heads: Optional[Sequence[int]] = None,
                       png_layers: Optional[Sequence[int]] = None, name: str = "segview",
                       title: str = "DLA segmentation") -> Dict[str, Path]:
    """Run ``model`` on ``ids`` (one sequence, from an empty state) and write ``<name>.html`` (all chosen layers
    and heads) and ``<name>_layer<i>.png`` (one per layer); ``tokens`` are the ids' texts (:func:`token_strings`).

    Args:
        layers: recurrent layer indices to show; default all.
        heads: heads to show; default all.
        png_layers: the layers (of those shown) that get a PNG (a second or so each); default all.

    Returns:
        ``{"html": path, "png_layer<i>": path, ...}``.
    """
    if not len(ids):
        raise ValueError("ids: no token to show")
    if len(tokens) != len(ids):
        raise ValueError(f"tokens: expected one text per id ({len(ids)}), got {len(tokens)}")
    found = segmentations(model, torch.as_tensor([list(ids)], dtype=torch.int64))
    if layers is not None:
        missing = sorted(set(layers) - {s.layer for s in found})
        if missing:
            raise ValueError(f"layers: {missing} are not recurrent layers; recurrent: {[s.layer for s in found]}")
        found = [s for s in found if s.layer in set(layers)]
    shown = [s.layer for s in found]
    if png_layers is not None and not set(png_layers) <= set(shown):
        raise ValueError(f"png_layers: {sorted(set(png_layers) - set(shown))} are not among the layers shown, "
                         f"{shown}")
    out = Path(out_dir)
    paths = {"html": write_html(tokens, found, out / f"{name}.html", heads=heads, title=title)}
    for s in found:
        if png_layers is not None and s.layer not in png_layers:
            continue
        paths[f"png_layer{s.layer}"] = write_png(tokens, s, out / f"{name}_layer{s.layer}.png", heads=heads)
    return paths


def _encode(tokenizer, text: str) -> List[int]:
    """Token ids of ``text`` without special tokens: a ``transformers`` tokenizer or the project's
    :class:`~dla.data.tokenizer.TextTokenizer` (which never adds any)."""
    if isinstance(tokenizer, TextTokenizer):
        return tokenizer.encode(text)
    return list(tokenizer.encode(text, add_special_tokens=False))


def segment_view(model, tokenizer, text: str, out_dir: Union[str, os.PathLike], *, max_tokens: int = 512,
                 layers: Optional[Sequence[int]] = None, heads: Optional[Sequence[int]] = None,
                 name: str = "segview") -> Dict[str, Path]:
    """Write ``<name>.html`` (all chosen layers and heads) and ``<name>_layer<i>.png`` (one per layer) of ``text``
    (:func:`write_segment_view`).

    Args:
        tokenizer: a ``transformers`` tokenizer or a :class:`~dla.data.tokenizer.TextTokenizer`.
        text: the text (its first ``max_tokens`` tokens are shown).
        layers: recurrent layer indices to show; default all.
        heads: heads to show; default all.
    """
    ids = _encode(tokenizer, text)[:max_tokens]
    if not ids:
        raise ValueError("text: encodes to no token")
    return write_segment_view(model, ids, token_strings(tokenizer, ids), out_dir, layers=layers, heads=heads,
                              name=name)


__all__ = ["LayerSegmentation", "TokenSlots", "segmentations", "token_slots", "write_html", "write_png",
           "write_segment_view", "token_strings", "segment_view", "PALETTE"]

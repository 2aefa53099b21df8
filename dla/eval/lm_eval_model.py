"""lm-evaluation-harness adapter: model type ``dla``.

Importing this module registers ``dla`` with lm-eval's model registry, so ``simple_evaluate(model="dla",
model_args="pretrained=DIR")`` and ``python -m dla.eval.harness --model dla --model_args pretrained=DIR ...``
(lm-eval's own command line with ``dla`` registered) work. lm-eval 0.4.13 discovers no third-party models by
itself: its ``lm_eval`` console script sees ``dla`` only in a process that imported this module. Later releases
read the ``lm_eval.models`` entry point of this package (``dla = "dla.eval.lm_eval_model:DLALM"``) and import this
module when ``--model dla`` is asked for.

Every request goes through the model's decoding cache (:mod:`dla.eval.scoring`):

* ``loglikelihood``: requests sharing a context (the choices of a multiple-choice question) prefill it once; each
  continuation then runs from a copy of that cache.
* ``loglikelihood_rolling``: lm-eval's disjoint windows of ``max_length`` tokens (``rolling=windows``, comparable
  with published numbers), or the whole document in one pass with the state carried across chunks
  (``rolling=carry``, a long-context diagnostic: more context than the windows, so not comparable).
* ``generate_until``: one chunked prefill of the prompt, then one cached step per new token; the prompt is never
  encoded again.

Inputs longer than ``max_length`` are left-truncated as lm-eval's HF model does (``truncation=left``, with a
warning) or refused (``truncation=error``). ``max_length`` may not exceed what the checkpoint supports
(:func:`dla.eval.checkpoint.context_limit`).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs
from tqdm import tqdm

from dla.eval.checkpoint import PathLike, check_dla_checkpoint, context_limit, load_model, load_tokenizer
from dla.eval.scoring import decode, new_cache, prefill, right_pad, score_tokens, select_cache

logger = logging.getLogger(__name__)

TRUNCATIONS = ("left", "error")
ROLLING_MODES = ("windows", "carry")
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p")
"""Generation options ``generate_until`` understands (after lm-eval's ``normalize_gen_kwargs``)."""


def _as_int(name: str, value: Any, minimum: int = 1, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        out = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}") from None
    if out < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return out


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise ValueError(f"{name}: expected true or false, got {value!r}")


def _choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: unknown {value!r}; allowed: {', '.join(allowed)}")
    return value


@register_model("dla")
class DLALM(TemplateLM):
    """A DLA checkpoint as an lm-eval ``LM``.

    Args:
        pretrained: checkpoint directory (``DLAForCausalLM.save_pretrained``), or a loaded ``DLAForCausalLM``.
        tokenizer: tokenizer directory, or a loaded ``transformers`` tokenizer; default: ``pretrained``.
        max_length: the most tokens the model is fed per request (generation included); default: the
            checkpoint's limit if it has one, else ``config.max_position_embeddings`` (the training length).
        batch_size: requests (or context groups) per forward; lm-eval passes ``--batch_size`` here.
        max_batch_size: accepted for lm-eval's command line; unused (no automatic batch size).
        device: ``cpu``, ``cuda``, ``cuda:1`` ...; default ``cuda`` when available, else ``cpu`` (also when
            ``cuda`` is asked for but absent, with a warning).
        dtype: ``auto`` (as stored) | ``float32`` | ``bfloat16`` | ``float16`` | ``float64``.
        max_gen_toks: default generation budget when a task sets none (lm-eval's default is 256).
        chunk_size: tokens per forward call; longer inputs run chunk by chunk through the cache.
        truncation: ``left`` (drop the oldest tokens, as lm-eval's HF model; logged) or ``error``.
        rolling: ``windows`` (lm-eval's disjoint windows) or ``carry`` (one pass, state carried).
        add_bos_token: prepend the BOS/EOS token to every context.
        seed: seed of sampling (tasks that set ``do_sample``).

    Raises:
        ValueError: ``pretrained`` is not a DLA checkpoint, no tokenizer, an argument out of range, or
            ``max_length`` past the checkpoint's limit; at request time, an input longer than ``max_length``
            with ``truncation=error``.

    Example:
        >>> import lm_eval, dla.eval.lm_eval_model  # doctest: +SKIP
        >>> lm_eval.simple_evaluate(model="dla", model_args="pretrained=runs/tiny", tasks=["piqa"])  # doctest: +SKIP
    """

    def __init__(self, pretrained: Union[PathLike, torch.nn.Module], tokenizer: Union[PathLike, Any, None] = None,
                 max_length: Optional[int] = None, batch_size: Union[int, str] = 1,
                 max_batch_size: Optional[int] = None, device: Optional[str] = None, dtype: str = "auto",
                 max_gen_toks: int = 256, chunk_size: int = 2048, truncation: str = "left",
                 rolling: str = "windows", add_bos_token: bool = False, seed: int = 1234):
        super().__init__()
        if isinstance(batch_size, str) and batch_size.startswith("auto"):
            raise ValueError(f"batch_size: {batch_size!r} is not supported by the dla model; pass an int")
        self.batch_size = _as_int("batch_size", batch_size)
        self.max_gen_toks = _as_int("max_gen_toks", max_gen_toks)
        self.chunk_size = _as_int("chunk_size", chunk_size)
        self.truncation = _choice("truncation", truncation, TRUNCATIONS)
        self.rolling = _choice("rolling", rolling, ROLLING_MODES)
        self.add_bos_token = _as_bool("add_bos_token", add_bos_token)
        _as_int("max_batch_size", max_batch_size, allow_none=True)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            logger.warning("dla: device %r requested but CUDA is not available; using cpu", device)
            device = "cpu"  # lm-eval's command line passes --device cuda by default
        if isinstance(pretrained, torch.nn.Module):
            if tokenizer is None:
                raise ValueError("tokenizer: required when pretrained is a model object")
            self.model = pretrained.eval()
            self.name = type(pretrained).__name__
        else:
            check_dla_checkpoint(pretrained)
            if tokenizer is None:
                tokenizer = pretrained
            self.model = load_model(pretrained, device=device, dtype=dtype)
            self.name = str(pretrained)
        self.tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, bytes)) or \
            hasattr(tokenizer, "__fspath__") else tokenizer
        self._device = next(self.model.parameters()).device
        config = self.model.config
        self.limit = context_limit(config)
        default = self.limit or int(config.max_position_embeddings)
        self._max_length = _as_int("max_length", max_length if max_length is not None else default)
        if self.limit is not None and self._max_length > self.limit:
            raise ValueError(f"max_length: {self._max_length} is longer than this checkpoint supports ({self.limit} "
                             f"tokens: {self._limit_reason()}); pass max_length <= {self.limit}")
        eot = getattr(self.tokenizer, "eos_token_id", None)
        if eot is None:
            eot = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
        if eot is None:
            raise ValueError("tokenizer: has no eos_token and config.json no eos_token_id; lm-eval needs an "
                             "end-of-text token")
        self._eot = int(eot)
        self._pad = int(config.pad_token_id) if config.pad_token_id is not None else self._eot
        self.generator = torch.Generator().manual_seed(_as_int("seed", seed, minimum=0))
        self.truncated = 0
        """Requests left-truncated so far (``truncation=left``)."""

    def _limit_reason(self) -> str:
        config = self.model.config
        if "attention" in config.layer_mixers:
            return f"attention layers are built for max_position_embeddings={config.max_position_embeddings}"
        return f"the fenwick policy has lam levels for max_position_embeddings={config.max_position_embeddings}"

    # lm-eval properties -------------------------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "dla")).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs) -> List[int]:
        ids = list(self.tokenizer.encode(string, add_special_tokens=False))
        if add_special_tokens if add_special_tokens is not None else self.add_bos_token:
            ids = [self.prefix_token_id] + ids
        return ids

    def tok_decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    # length policy ------------------------------------------------------------------------------------------------

    def _fit(self, ids: List[int], budget: int, what: str, keep: int = 0) -> List[int]:
        """``ids`` if it fits ``budget`` tokens, else its last ``budget`` (``truncation=left``) or an error."""
        if len(ids) <= budget:
            return ids
        if self.truncation == "error" or keep > budget:
            supported = f"{self.limit} tokens" if self.limit is not None else "any length (recurrent layers)"
            raise ValueError(f"context: {what} needs {len(ids)} tokens, more than max_length={self.max_length} "
                             f"allows ({budget}); this checkpoint supports {supported}: raise max_length or pass "
                             f"truncation=left")
        self.truncated += 1
        if self.truncated == 1:
            logger.warning("dla: left-truncating inputs longer than max_length=%d (first: %d tokens, %s)",
                           self.max_length, len(ids), what)
        return ids[len(ids) - budget:]

    # loglikelihood ------------------------------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> List[Tuple[float, bool]]:
        """Score ``((context, continuation), context_ids, continuation_ids)`` requests.

        The model input is ``(context + continuation)[:-1]``; the context without its last token is the shared
        prefix, prefilled once per distinct prefix; ``[context[-1]] + continuation[:-1]`` then runs from it.
        """
        items = []
        for i, (_, ctx, cont) in enumerate(requests):
            if not cont:
                raise ValueError("continuation: encodes to no token; lm-eval requests need a non-empty one")
            if not ctx:
                ctx = [self.prefix_token_id]
            full = self._fit(list(ctx) + list(cont), self.max_length + 1, "a loglikelihood request",
                             keep=len(cont) + 1)
            n_ctx = len(full) - len(cont)
            items.append((i, tuple(full[:n_ctx - 1]), full[n_ctx - 1:-1], list(cont)))
        groups: Dict[tuple, List[int]] = defaultdict(list)
        for j, (_, prefix, _, _) in enumerate(items):
            groups[prefix].append(j)
        order = sorted(groups, key=lambda p: -(len(p) + max(len(items[j][2]) for j in groups[p])))
        results: List[Optional[Tuple[float, bool]]] = [None] * len(items)
        batches = [[p for p in order if bool(p) == nonempty][s:s + self.batch_size]
                   for nonempty in (True, False)
                   for s in range(0, sum(bool(p) == nonempty for p in order), self.batch_size)]
        for prefixes in tqdm(batches, desc="dla loglikelihood", disable=disable_tqdm):
            self._score_groups(prefixes, groups, items, results)
        out = []
        for (pair, _, _), res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", pair, res)
            out.append(res)
        return out

    def _score_groups(self, prefixes, groups, items, results) -> None:
        if prefixes[0]:
            cache, _ = prefill(self.model, [list(p) for p in prefixes], self._pad, self.chunk_size)
        else:
            cache = None
        rows = [(g, j) for g, p in enumerate(prefixes) for j in groups[p]]
        for s in range(0, len(rows), self.batch_size):
            part = rows[s:s + self.batch_size]
            sub = select_cache(cache, torch.tensor([g for g, _ in part])) if cache is not None else new_cache(self.model)
            tails, valid = right_pad([items[j][2] for _, j in part], self._pad)
            conts, _ = right_pad([items[j][3] for _, j in part], -1)
            logp, greedy, _ = score_tokens(self.model, tails, conts, cache=sub, chunk_size=self.chunk_size)
            for r, (_, j) in enumerate(part):
                n = len(items[j][3])
                results[items[j][0]] = (float(logp[r, :n].sum()), bool(greedy[r, :n].all()))

    # rolling ------------------------------------------------------------------------------------------------------

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
        """Sum of log-probabilities of each whole text (``rolling=windows``: lm-eval's disjoint windows)."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for req in tqdm(requests, desc="dla loglikelihood_rolling", disable=disable_tqdm):
            (text,) = req.args
            ids = self.tok_encode(text, add_special_tokens=False)
            if not ids:
                out.append(0.0)
                continue
            if self.rolling == "carry":
                if self.limit is not None and len(ids) > self.limit:
                    raise ValueError(f"context: rolling=carry scores {len(ids) + 1} tokens in one pass, more than "
                                     f"this checkpoint supports ({self.limit}: {self._limit_reason()}); use "
                                     f"rolling=windows")
                inp = torch.tensor([[self.prefix_token_id] + ids[:-1]])
                logp, _, _ = score_tokens(self.model, inp, torch.tensor([ids]), chunk_size=self.chunk_size)
                total = float(logp.sum())
            else:
                windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                    token_list=ids, prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1)]
                reqs = [((None, None), ctx, cont) for ctx, cont in windows]
                total = sum(lp for lp, _ in self._loglikelihood_tokens(reqs, disable_tqdm=True))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    # generation ---------------------------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
        """Greedy (or sampled) continuations, cut at the first stop string; one prefill per prompt."""
        results: List[Optional[str]] = [None] * len(requests)
        by_kwargs: Dict[str, List[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            by_kwargs[json.dumps(req.args[1], sort_keys=True, default=str)].append(i)
        bar = tqdm(total=len(requests), desc="dla generate_until", disable=disable_tqdm)
        for key, idx in by_kwargs.items():
            opts = self._gen_options(requests[idx[0]].args[1])
            budget = self.max_length - opts["max_gen_toks"]
            if budget < 1:
                raise ValueError(f"max_gen_toks: {opts['max_gen_toks']} leaves no room for the prompt within "
                                 f"max_length={self.max_length}")
            prompts = {}
            for i in idx:
                ids = self.tok_encode(requests[i].args[0]) or [self.prefix_token_id]
                prompts[i] = self._fit(ids, budget, "a generate_until prompt")
            idx = sorted(idx, key=lambda i: -len(prompts[i]))
            for s in range(0, len(idx), self.batch_size):
                part = idx[s:s + self.batch_size]
                for i, text in zip(part, self._generate([prompts[i] for i in part], opts)):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(part))
        bar.close()
        return results

    def _gen_options(self, gen_kwargs: Dict[str, Any]) -> Dict[str, Any]:
        if not isinstance(gen_kwargs, dict):
            raise ValueError(f"gen_kwargs: expected a dict, got {type(gen_kwargs).__name__}")
        opts = dict(normalize_gen_kwargs(gen_kwargs, default_max_gen_toks=self.max_gen_toks))
        unknown = sorted(set(opts) - set(GEN_KWARGS))
        if unknown:
            raise ValueError(f"gen_kwargs: {', '.join(unknown)} not supported by the dla model; allowed: "
                             f"{', '.join(GEN_KWARGS)}")
        until = [s for s in opts["until"] if s]
        if not all(isinstance(s, str) for s in until):
            raise ValueError(f"until: expected strings, got {opts['until']!r}")
        eos = self.tokenizer.decode([self.eot_token_id])
        opts["until"] = until + ([eos] if eos and eos not in until else [])
        opts["max_gen_toks"] = _as_int("max_gen_toks", opts["max_gen_toks"])
        return opts

    def _generate(self, prompts: List[List[int]], opts: Dict[str, Any]) -> List[str]:
        until = opts["until"]

        def stop(_: int, ids: List[int]) -> bool:
            if ids[-1] == self.eot_token_id:
                return True
            tail = self.tok_decode(ids[-64:])
            return any(s in tail for s in until)

        generated = decode(self.model, prompts, max_new_tokens=opts["max_gen_toks"], pad_id=self._pad, stop=stop,
                           do_sample=bool(opts.get("do_sample")), temperature=float(opts.get("temperature") or 0.0),
                           top_k=opts.get("top_k"), top_p=opts.get("top_p"), generator=self.generator,
                           chunk_size=self.chunk_size)
        texts = []
        for ids in generated:
            if ids and ids[-1] == self.eot_token_id:
                ids = ids[:-1]
            text = self.tok_decode(ids)
            for s in until:
                text = text.split(s)[0]
            texts.append(text)
        return texts


__all__ = ["DLALM", "GEN_KWARGS", "TRUNCATIONS", "ROLLING_MODES"]

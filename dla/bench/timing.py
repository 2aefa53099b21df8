"""The benchmarks' one timer: median milliseconds of a call, CUDA events on a GPU, the wall clock on CPU."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Optional, Union

if TYPE_CHECKING:
    import torch


def median_ms(fn: Callable[[], object], device: Union[str, "torch.device"] = "cuda", reps: int = 10,
              budget_s: Optional[float] = None) -> float:
    """Median milliseconds of ``fn`` over ``reps`` calls after one warm-up call.

    Args:
        fn: the call to time (no arguments).
        device: ``"cuda"`` (or a CUDA ``torch.device``): each call timed by CUDA events around it, synchronised;
            anything else: ``time.perf_counter`` around the call.
        reps: repetitions (at most, with ``budget_s``); at least 1.
        budget_s: seconds of repetitions to aim for: one more untimed call measures ``fn``, and the repetitions are
            cut to ``budget_s`` over that time (at least one), so that slow ops do not take ``reps`` calls.
    Returns:
        The median of the timed calls (the upper one for an even count), in milliseconds.
    """
    import torch

    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise ValueError(f"reps: expected an int >= 1, got {reps!r}")
    cuda = torch.device(device).type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    fn()
    sync()
    n = reps
    if budget_s is not None:
        start = time.perf_counter()
        fn()
        sync()
        n = max(1, min(reps, int(budget_s / max(time.perf_counter() - start, 1e-6))))
    times = []
    for _ in range(n):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]

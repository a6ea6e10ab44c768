"""Prompts encoded beside the batch, not in it: a voice's recording, or a sentence's own audio as the prompt of
the sentences after it, through the VAE's encoder on a thread of their own.

An encoding takes a few hundred milliseconds on a CPU; on the loop thread it stops every stream in the batch
for that long, and a job whose items all ended their first sentence in one step (each then encodes it as its
voice) stopped them for seconds. Here the loop goes on; the request waiting for its prompt gives up its slot
and is admitted again once the prompt is there (``Scheduler.park``).

Two threads, one encoding at a time each: live requests' (never queued behind a job's) and background ones',
at the lowest CPU priority (on a machine whose cores the batch keeps busy, it takes what the live streams
leave: at normal priority beside them it slowed their steps 1.5x). Each runs torch on one CPU thread
(``threadpoolctl``, for that thread only): a second OpenMP team beside the loop thread's left every later step
of the batch 2.5x slower on a 2-core machine, long after the encoding (OpenMP's idle threads spinning). The
numbers: ``benchmarks/README.md``, Live requests beside a job. (``concurrent.futures`` has no priorities or
thread niceness: the two pools and the ``setpriority`` are the part written here.)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from threadpoolctl import threadpool_limits

BACKGROUND_NICENESS = 19  # Linux's lowest priority: CPU time only where nothing else wants it


def _one_cpu_thread() -> None:
    """This thread's torch work on this thread alone: no OpenMP team of its own (OpenMP's limit is per thread)."""
    threadpool_limits(1, user_api="openmp")


def _one_cpu_thread_lowest_priority() -> None:
    """As ``_one_cpu_thread``, at the lowest CPU priority (an unprivileged process may lower a thread's)."""
    _one_cpu_thread()
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed: the same work at the same priority
        pass


class PromptWorkers:
    def __init__(self) -> None:
        self._live = ThreadPoolExecutor(1, "voxcpm-prompts", initializer=_one_cpu_thread)
        self._background = ThreadPoolExecutor(
            1, "voxcpm-prompts-background", initializer=_one_cpu_thread_lowest_priority
        )

    def deferral(self, background: bool) -> Callable[[Callable[[], Any]], Future[Any]]:
        """How a request of this priority has its prompts encoded: each a future."""
        return (self._background if background else self._live).submit

    def close(self) -> None:
        """Encodings not started are dropped (their requests are being failed); a running one ends on its own."""
        for pool in (self._live, self._background):
            pool.shutdown(wait=False, cancel_futures=True)

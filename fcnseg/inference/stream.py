"""Streaming for batch prediction: decoding ahead of the model and encoding behind it.

``prefetch(fn, items, workers, ahead)`` maps ``fn`` over ``items`` in worker threads, in order,
with at most ``ahead`` results waiting, so decoding the next images overlaps the model's work
on the current batch and memory stays bounded whatever the folder's size. ``Writer`` runs the
output encoding (PNG, JPEG, .npy) in worker threads behind the model, at most ``pending`` jobs
queued, and re-raises the first error at ``close``. Threads, not processes: Pillow's decoders and
encoders and zlib release the GIL, and images need not be pickled between processes.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetch(fn: Callable[[T], R], items: Iterable[T], *, workers: int = 2, ahead: int = 8) -> Iterator[R]:
    """``fn(item)`` for each item, in order, computed up to ``ahead`` items in advance by
    ``workers`` threads (``workers=0``: in the caller's thread). Exceptions raised by ``fn``
    are re-raised at their item's turn."""
    if workers <= 0:
        yield from (fn(item) for item in items)
        return
    it = iter(items)
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fcnseg-decode") as pool:
        window: collections.deque[cf.Future] = collections.deque()
        for item in it:
            window.append(pool.submit(fn, item))
            if len(window) >= ahead:
                break
        while window:
            done = window.popleft()
            nxt = next(it, _END)
            if nxt is not _END:
                window.append(pool.submit(fn, nxt))
            yield done.result()


_END = object()


class Writer:
    """Runs write jobs in ``workers`` threads; ``submit`` blocks while ``pending`` jobs wait."""

    def __init__(self, workers: int = 2, pending: int = 16) -> None:
        self._pool = cf.ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="fcnseg-write") if workers > 0 else None
        self._pending: collections.deque[cf.Future] = collections.deque()
        self._limit = max(1, pending)
        self.results: list[Any] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._pool is None:
            self.results.append(fn(*args))
            return
        while len(self._pending) >= self._limit:
            self.results.append(self._pending.popleft().result())
        self._pending.append(self._pool.submit(fn, *args))

    def close(self) -> list[Any]:
        """Waits for every job; returns their results in submission order (the first error is
        raised after the remaining jobs finish)."""
        error = None
        while self._pending:
            try:
                self.results.append(self._pending.popleft().result())
            except BaseException as e:  # noqa: BLE001 - re-raised below
                error = error or e
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if error is not None:
            raise error
        return self.results

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            for f in self._pending:
                f.cancel()
            if self._pool is not None:
                self._pool.shutdown(wait=True)

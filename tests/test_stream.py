"""Streaming helpers of batch prediction (fcnseg.inference.stream): ordered, bounded prefetch and
background writes that report their errors."""

from __future__ import annotations

import threading
import time

import pytest

from fcnseg.inference.stream import Writer, prefetch


def test_prefetch_keeps_order_and_bounds_what_waits():
    started = []
    lock = threading.Lock()

    def slow(i):
        with lock:
            started.append(i)
        time.sleep(0.002 * (5 - i % 5))  # later items finish first
        return i * i

    seen = []
    for i, v in enumerate(prefetch(slow, range(40), workers=3, ahead=4)):
        seen.append(v)
        with lock:
            assert len(started) <= i + 1 + 4  # never more than `ahead` beyond the consumer
    assert seen == [i * i for i in range(40)]
    assert list(prefetch(lambda x: x + 1, [1, 2], workers=0)) == [2, 3]


def test_prefetch_raises_at_the_items_turn():
    def boom(i):
        if i == 3:
            raise ValueError("item 3")
        return i

    got = []
    with pytest.raises(ValueError, match="item 3"):
        for v in prefetch(boom, range(6), workers=2, ahead=3):
            got.append(v)
    assert got == [0, 1, 2]


def test_writer_runs_jobs_and_reports_the_first_error_after_the_rest():
    done = []
    w = Writer(workers=2, pending=2)
    for i in range(6):
        w.submit(lambda i=i: done.append(i) or i)
    assert sorted(w.close()) == list(range(6)) and sorted(done) == list(range(6))

    w = Writer(workers=2, pending=2)
    w.submit(lambda: (_ for _ in ()).throw(OSError("disk full")))
    w.submit(lambda: done.append("after"))
    with pytest.raises(OSError, match="disk full"):
        w.close()
    assert done[-1] == "after"

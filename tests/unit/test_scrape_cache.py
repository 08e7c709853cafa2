"""The metrics page cache and accept budget (zramd/scrape.py) with a fake
clock and a renderer that counts, and blocks when told to."""

from __future__ import annotations

import threading

from zramd.scrape import AcceptBudget, PageCache


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Renderer:
    def __init__(self):
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self) -> bytes:
        self.calls += 1
        self.started.set()
        self.gate.wait(10)
        return b"page %d" % self.calls


def test_a_page_is_reused_until_it_is_max_age_old():
    clock, render = Clock(), Renderer()
    cache = PageCache(render, max_age_seconds=1.0, clock=clock)
    assert cache.fresh() is None
    assert cache.page(1) == b"page 1"
    clock.now += 0.99
    assert cache.page(1) == b"page 1" and cache.fresh() == b"page 1"
    clock.now += 0.02
    assert cache.fresh() is None
    assert cache.page(1) == b"page 2"
    assert render.calls == cache.reads == 2


def test_concurrent_scrapes_wait_for_the_one_read_in_flight():
    clock, render = Clock(), Renderer()
    cache = PageCache(render, max_age_seconds=1.0, clock=clock)
    render.gate.clear()
    got: list[bytes | None] = []
    threads = [threading.Thread(target=lambda: got.append(cache.page(10))) for _ in range(8)]
    threads[0].start()
    assert render.started.wait(10)
    for t in threads[1:]:
        t.start()
    render.gate.set()
    for t in threads:
        t.join()
    assert got == [b"page 1"] * 8
    assert render.calls == 1


def test_a_waiter_gives_up_after_its_wait_with_the_older_page():
    clock, render = Clock(), Renderer()
    cache = PageCache(render, max_age_seconds=1.0, clock=clock)
    cache.page(1)
    clock.now += 5
    render.gate.clear()
    render.started.clear()
    reader = threading.Thread(target=cache.page, args=(10,))
    reader.start()
    assert render.started.wait(10)
    clock.now += 1  # the waiter's deadline is behind it: it does not start a read
    assert cache.page(0) == b"page 1"
    render.gate.set()
    reader.join()
    assert render.calls == 2


def test_a_failed_read_keeps_the_older_page_and_the_next_scrape_reads_again():
    clock = Clock()
    calls = []

    def render() -> bytes:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("boom")
        return b"page"

    cache = PageCache(render, max_age_seconds=1.0, clock=clock)
    assert cache.page(1) == b"page"
    clock.now += 2
    try:
        cache.page(1)
    except OSError:
        pass
    assert cache.fresh() is None
    assert cache.page(1) == b"page" and len(calls) == 3


def test_the_accept_budget_allows_a_burst_then_the_rate():
    clock = Clock()
    budget = AcceptBudget(per_second=100, burst=20, clock=clock)
    for _ in range(20):
        assert budget.wait_seconds() == 0
        budget.spend()
    assert budget.wait_seconds() == 0.01
    clock.now += 0.01
    assert budget.wait_seconds() == 0
    budget.spend()
    clock.now += 3600  # idle for long: still only a burst
    for _ in range(20):
        budget.spend()
    assert budget.wait_seconds() > 0

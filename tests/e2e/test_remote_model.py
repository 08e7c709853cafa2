"""The page store with the remote tier against a model (a bytearray), with
nbdkit's error filter failing a fifth of the remote's reads, writes and
trims.

Hypothesis drives writes (whole pages of text, noise, zeros; sub-page
writes), trims, writebacks (huge, idle) through the writeback thread and
reads, on a PageStore whose backing is a RemoteBacking on a real ``nbdkit
memory`` behind ``--filter=error``.  After every step: no divergence (a
read returns exactly what the model holds), and every EIO is a read that
touched a written-back page and whose remote read failed
(``remote_read_errors`` moved by exactly that read); a page never fails
authentication (``bd_auth_errors`` stays 0: the remote never lost or
changed a page).  ``REMOTE_MODEL_EXAMPLES=300`` searches harder (30 by
default)."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from remotes import Remote
from zramd.engine.codecs import make_codec
from zramd.engine.remote import RemoteBacking
from zramd.engine.store import PageStore
from zramd.engine.writeback import Writeback

PAGE = 4096
PAGES = 24  # more than the write window: writes wait for acknowledgements
SIZE_BYTES = PAGES * PAGE
TEXT = (b"the quick brown zram page compresses well " * 100)[:PAGE]
ERROR_RATE = "20%"

pytest.importorskip("nbd", reason="libnbd Python bindings missing (python3-libnbd)")


@pytest.fixture(scope="module")
def flaky_remote(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("remote")
    filt = ("error", {"error-pread-rate": ERROR_RATE, "error-pwrite-rate": ERROR_RATE,
                      "error-trim-rate": ERROR_RATE})
    with Remote(str(workdir), size="1M", filters=[filt]) as remote:
        yield remote


page_indexes = st.integers(0, PAGES - 1)


@st.composite
def page_payloads(draw) -> bytes:
    shape = draw(st.sampled_from(["text", "random", "zero", "bytes"]))
    if shape == "text":
        start = draw(st.integers(0, PAGE - 1))
        return (TEXT[start:] + TEXT)[:PAGE]
    if shape == "random":
        return os.urandom(PAGE)
    if shape == "zero":
        return bytes(PAGE)
    return draw(st.binary(min_size=1, max_size=64)).ljust(PAGE, b"\x01")


class RemoteStoreModel(RuleBasedStateMachine):
    URI = ""
    # over the whole run: the test must have met the remote's faults
    TOTALS = {"eio": 0, "written": 0, "write_errors": 0}

    def __init__(self):
        super().__init__()
        self.backing = RemoteBacking(self.URI, SIZE_BYTES, timeout_s=10)
        self.store = PageStore(SIZE_BYTES, make_codec("lz4"), backing=self.backing)
        self.writeback = Writeback(self.store, self.backing)
        self.writeback.start()
        self.model = bytearray(SIZE_BYTES)
        self.eio = 0

    def teardown(self):
        self.TOTALS["eio"] += self.eio
        self.TOTALS["write_errors"] += self.backing.write_failures
        self.writeback.stop()  # closes the backing too

    def _states(self, first: int, last: int) -> list[str]:
        return [self.store.block_state(i) for i in range(first, last + 1)]

    def _read(self, offset: int, length: int) -> None:
        states = self._states(offset // PAGE, (offset + length - 1) // PAGE)
        errors = self.backing.read_errors
        buf = bytearray(length)
        try:
            self.store.read(memoryview(buf), offset)
        except OSError as exc:
            assert exc.errno == 5, exc  # EIO
            assert "backed" in states, (states, exc)
            assert self.backing.read_errors > errors, exc  # its remote read failed
            self.eio += 1
            return
        assert bytes(buf) == bytes(self.model[offset : offset + length])

    @rule(index=page_indexes, data=st.data())
    def write_page(self, index, data):
        payload = data.draw(page_payloads())
        self.store.write(payload, index * PAGE)
        self.model[index * PAGE : (index + 1) * PAGE] = payload

    @rule(index=page_indexes, at=st.integers(0, PAGE - 1), data=st.data())
    def write_bytes(self, index, at, data):
        """A sub-page write of a written-back page reads it from the remote
        first: a failed read fails the write, which changes nothing."""
        payload = data.draw(st.binary(min_size=1, max_size=PAGE - at))
        offset = index * PAGE + at
        errors = self.backing.read_errors
        state = self.store.block_state(index)
        try:
            self.store.write(payload, offset)
        except OSError as exc:
            assert state == "backed" and self.backing.read_errors > errors, exc
            return
        self.model[offset : offset + len(payload)] = payload

    @rule(index=page_indexes, pages=st.integers(1, 3))
    def trim(self, index, pages):
        length = min(pages, PAGES - index) * PAGE
        self.store.discard(index * PAGE, length)
        if self.backing.has_freed():
            self.backing.discard_freed()  # before the reply, as device.py does
        self.model[index * PAGE : index * PAGE + length] = bytes(length)

    @rule(kind=st.sampled_from(["huge", "idle"]))
    def writeback_pages(self, kind):
        if kind == "idle":
            self.store.mark_idle()
        result = self.writeback.request(kind, timeout=60)
        assert "elapsed_s" in result, result
        self.TOTALS["written"] += result["written"]
        if result["error"]:
            assert "write failed" in result["error"] or "full" in result["error"], result

    @rule(index=page_indexes)
    def read_page(self, index):
        self._read(index * PAGE, PAGE)

    @rule(index=page_indexes, pages=st.integers(1, 4))
    def read_pages(self, index, pages):
        self._read(index * PAGE, min(pages, PAGES - index) * PAGE)

    @invariant()
    def nothing_diverges(self):
        for index in range(PAGES):
            self._read(index * PAGE, PAGE)
        assert self.backing.auth_errors == 0
        self.store.audit()


def test_remote_store_matches_a_bytearray_with_a_failing_remote(flaky_remote):
    RemoteStoreModel.URI = flaky_remote.uri
    run_state_machine_as_test(
        RemoteStoreModel,
        settings=settings(max_examples=int(os.environ.get("REMOTE_MODEL_EXAMPLES", "30")),
                          stateful_step_count=30, deadline=None),
    )
    totals = RemoteStoreModel.TOTALS
    assert totals["written"] and totals["eio"] and totals["write_errors"], totals

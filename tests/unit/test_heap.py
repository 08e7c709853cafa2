"""heap.trim, which the compact command runs after compacting the arena."""

import weakref

from zramd.engine import heap


class Node:
    pass


def test_trim_collects_cycles_and_trims_malloc():
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    gone = weakref.ref(a)
    del a, b
    assert heap.trim() is True  # glibc: malloc_trim exists
    assert gone() is None

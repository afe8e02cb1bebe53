"""Cyclic garbage: rings and doubly linked structures that only the cycle collector frees.

Every structure refers to itself, so reference counting alone never frees it; the
generational collector runs many times and frees whole generations. Argument: scale
(default 1.0). Prints a checksum.
"""
import gc
import sys

scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0


class Node:
    __slots__ = ("prev", "next", "payload", "__weakref__")

    def __init__(self, payload):
        self.prev = self.next = None
        self.payload = payload


def ring(n, seed):
    first = Node([seed])
    last = first
    for i in range(1, n):
        node = Node({"i": i, "seed": seed})
        node.prev = last
        last.next = node
        last = node
    last.next = first
    first.prev = last
    return first


checksum = 0
for round_ in range(int(180 * scale) or 1):
    keep = []
    for r in range(300):
        head = ring(50 + r % 50, r)
        if r % 10 == 0:
            keep.append(head)
        checksum += head.prev.payload["i"]
    del head
    checksum += gc.collect()
    checksum += len(keep)
print(checksum)

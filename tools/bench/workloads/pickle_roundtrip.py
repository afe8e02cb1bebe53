"""pickle round trip: object graphs (instances, dicts, lists, tuples, bytes) dumped and loaded.

Unpickling allocates every object of the graph anew; the old graph is freed each time.
Argument: scale (default 1.0). Prints a checksum.
"""
import pickle
import random
import sys

scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0


class Node:
    def __init__(self, name, weight, children):
        self.name = name
        self.weight = weight
        self.children = children


rng = random.Random(4)


def tree(depth):
    children = [tree(depth - 1) for _ in range(rng.randrange(2, 5))] if depth else []
    return Node(f"n{rng.randrange(10**6)}", (rng.random(), rng.randrange(100)), children)


graph = {"trees": [tree(4) for _ in range(20)], "blob": bytes(range(256)) * 4,
         "table": {i: str(i) for i in range(2000)}}
checksum = 0
for _ in range(int(300 * scale) or 1):
    data = pickle.dumps(graph, protocol=pickle.HIGHEST_PROTOCOL)
    graph = pickle.loads(data)
    checksum += len(data) + len(graph["trees"])
print(checksum)

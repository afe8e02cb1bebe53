"""JSON round trip: nested documents dumped to text and parsed back, again and again.

The json module's C accelerator builds and frees dicts, lists, strings and floats at a high
rate. Argument: scale (default 1.0). Prints a checksum.
"""
import json
import random
import sys

scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
rng = random.Random(2)


def document(depth):
    if depth == 0:
        return rng.choice([rng.random(), rng.randrange(10**6), f"s{rng.randrange(1000)}", None])
    if rng.random() < 0.5:
        return [document(depth - 1) for _ in range(rng.randrange(1, 6))]
    return {f"k{i}": document(depth - 1) for i in range(rng.randrange(1, 6))}


docs = [document(5) for _ in range(200)]
checksum = 0
for _ in range(int(60 * scale) or 1):
    for d in docs:
        text = json.dumps(d)
        back = json.loads(text)
        checksum += len(text) + len(back)
print(checksum)

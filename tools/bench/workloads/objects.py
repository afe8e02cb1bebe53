"""Object churn, dict and list heavy: records built as dicts, grouped, sorted, dropped.

Many small objects of many sizes live briefly (ints, tuples, dicts, lists), as in a data
processing script. Argument: scale (default 1.0). Prints a checksum of the results.
"""
import random
import sys

scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
rng = random.Random(1)
checksum = 0
for batch in range(int(40 * scale) or 1):
    records = [{"id": i, "group": rng.randrange(100), "value": rng.random(),
                "tags": [rng.randrange(10) for _ in range(rng.randrange(1, 6))]}
               for i in range(20000)]
    groups = {}
    for record in records:
        groups.setdefault(record["group"], []).append(record)
    for key, members in groups.items():
        members.sort(key=lambda r: r["value"])
        top = [(m["id"], len(m["tags"])) for m in members[:10]]
        checksum += key * len(members) + sum(i + n for i, n in top)
    del records, groups
print(checksum)

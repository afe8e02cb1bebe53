"""String and unicode building: formatting, joining, splitting, encoding, replacing.

Strings of every length are created and dropped, ASCII and non-ASCII (two kinds of
compact unicode), as in text processing. Argument: scale (default 1.0). Prints a checksum.
"""
import sys

scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
words = ["alpha", "beta", "gamma", "délta", "épsilon", "ζeta", "eta", "θeta", "iota"]
checksum = 0
for round_ in range(int(40 * scale) or 1):
    lines = []
    for i in range(20000):
        w = words[(i * 7 + round_) % len(words)]
        lines.append(f"{i:06d} {w.upper()} {w * (i % 5)} {i * 3.5:.2f}")
    text = "\n".join(lines)
    parts = text.split()
    encoded = text.encode("utf-8")
    replaced = text.replace("ALPHA", "omega").lower()
    counts = {}
    for p in parts:
        counts[p[:3]] = counts.get(p[:3], 0) + 1
    checksum += len(encoded) + len(replaced) + len(counts) + sum(map(len, parts[::97]))
print(checksum)

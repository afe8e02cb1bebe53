"""A small class-heavy simulation: bodies with vectors moving, colliding and being replaced.

Instances of user classes (with __dict__) and of a __slots__ class are created every step
and most die young, with method calls and attribute traffic around them. Argument: scale
(default 1.0). Prints a checksum.
"""
import random
import sys

scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0


class Vec:
    __slots__ = ("x", "y")

    def __init__(self, x, y):
        self.x = x
        self.y = y

    def __add__(self, other):
        return Vec(self.x + other.x, self.y + other.y)

    def scaled(self, k):
        return Vec(self.x * k, self.y * k)


class Body:
    def __init__(self, rng, ident):
        self.ident = ident
        self.pos = Vec(rng.random() * 100, rng.random() * 100)
        self.vel = Vec(rng.random() - 0.5, rng.random() - 0.5)
        self.history = []

    def step(self, dt):
        self.pos = self.pos + self.vel.scaled(dt)
        self.history.append((round(self.pos.x), round(self.pos.y)))
        if len(self.history) > 8:
            self.history = self.history[-4:]

    def outside(self):
        return not (0 <= self.pos.x <= 100 and 0 <= self.pos.y <= 100)


rng = random.Random(3)
bodies = [Body(rng, i) for i in range(2000)]
next_id = len(bodies)
checksum = 0
for tick in range(int(700 * scale) or 1):
    cells = {}
    for b in bodies:
        b.step(0.5)
        cells.setdefault((int(b.pos.x) // 10, int(b.pos.y) // 10), []).append(b)
    for members in cells.values():
        if len(members) > 30:
            for b in members[30:]:
                b.vel = b.vel.scaled(-1.0)
    survivors = []
    for b in bodies:
        if b.outside():
            checksum += b.ident
            survivors.append(Body(rng, next_id))
            next_id += 1
        else:
            survivors.append(b)
    bodies = survivors
print(checksum + next_id)

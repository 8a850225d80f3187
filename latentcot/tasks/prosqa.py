"""``prosqa``: ProsQA-style graph questions ("Every X is a Y … Is Tom a A or B?").

The facts form a DAG over made-up category words plus one person. Edge ``[u, v]`` reads
"Every u is a v" (or "Tom is a v" when u is the person). The question asks whether the person is
``target`` or ``neg_target``: the target is reachable from the person, the negative target is
not, so answering needs a search through the graph, with branches that lead nowhere useful.

Graph, by role (sizes are parameters):

- the *path*: person → m1 → … → m_hops = target (``hops`` edges; the gold steps follow it:
  ``Tom is a m1.``, ``Every m1 is a m2.``, …);
- *dead branches*: from each of the first ``branches`` nodes of the path (the person first), a
  branch of ``dead`` edges that never reaches either answer. With ``branches`` ≥ 2 and ``dead`` ≥ 2
  every step along the path has two children that both lead on, and only a look ahead to the
  target tells which one to follow: an *uncertain fork*, where a model that cannot yet resolve it
  spreads its next-token probability over both (COCONUT's case for a continuous thought keeping
  several frontier nodes alive);
- with ``mimic=1`` (and ``dead`` ≥ 2) a dead branch is shaped like the path beside it: its first node
  has as many children as the path node it sits beside, each starting a chain down to ``dead`` edges
  from the fork. Then out-degree does not tell the two children of a fork apart (with plain chains the
  right child is the one with two children), and every fork that needs a look-ahead of two facts or
  more past its children is uncertain;
- a *distractor chain* n0 → … → neg_target (``distract`` edges) that the person cannot reach;
- up to ``extra`` random edges, each kept only if the graph stays acyclic, the negative target
  stays unreachable and the shortest route to the target stays exactly ``hops`` long (tiny
  graphs may have room for fewer).

So ``hops`` is the reasoning depth, and the number of facts is ``hops + branches·dead + distract``
plus the extra edges (with ``mimic=1`` a branch beside a forking path node has ``2·dead − 1``).
``prosqa:hops=2,dead=0,distract=1,extra=0`` gives three-fact problems that a tiny model can learn on a CPU;
the defaults give eight facts.

Examples carry the COCONUT ProsQA fields in ``meta`` (``edges``, ``root``, ``target``,
``neg_target``, ``idx_to_symbol``; node indices point into ``idx_to_symbol``, which also holds the
person), so :func:`latentcot.tasks.io.write_coconut_json` writes files in that format.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from latentcot.tasks.base import GeneratorTask, Params, Problem
from latentcot.tasks.words import CONCEPTS, PEOPLE
from latentcot.validation import require


@dataclass(frozen=True)
class ProsQAParams(Params):
    """``hops``: path length to the target; ``dead``/``distract``: branch lengths; ``extra``;
    ``branches``: how many path nodes (from the person on) start a dead branch; ``mimic``: 1 shapes
    each dead branch like the path beside it (out-degree)."""

    task = "prosqa"
    added_later = ("branches", "mimic")
    hops: int = 3
    dead: int = 1
    distract: int = 2
    extra: int = 2
    branches: int = 1
    mimic: int = 0

    def __post_init__(self) -> None:
        self._require("hops", 1, 32)
        self._require("dead", 0, 32)
        self._require("distract", 1, 32)
        self._require("extra", 0, 64)
        self._require("branches", 1, self.hops)
        self._require("mimic", 0, 1)
        require(
            not self.mimic or self.dead >= 2,  # a one-node branch has no children to shape
            f"bad value for prosqa:dead: {self.dead}; mimic=1 needs dead >= 2",
        )


def reachable(edges: list[tuple[int, int]], start: int) -> set[int]:
    """Nodes reachable from ``start`` (itself included)."""
    children: dict[int, list[int]] = {}
    for u, v in edges:
        children.setdefault(u, []).append(v)
    seen, stack = {start}, [start]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def distance(edges: list[tuple[int, int]], start: int, goal: int) -> int | None:
    """Fewest edges from ``start`` to ``goal`` (breadth-first), or None."""
    frontier, seen, steps = [start], {start}, 0
    while frontier:
        if goal in frontier:
            return steps
        frontier = [v for u, v in edges if u in frontier and v not in seen]
        seen.update(frontier)
        steps += 1
    return None


class ProsQATask(GeneratorTask):
    name = "prosqa"
    domain = "planning"
    description = "ProsQA-style graph search: is the person a target or a distractor category?"
    answer_kind = "entity"
    params_type = ProsQAParams
    params: ProsQAParams

    def make(self, rng: random.Random) -> Problem:
        p = self.params
        fans = [self._fan(i) for i in range(p.branches)]  # children of each dead branch's first node
        sizes = [1 + fan * (p.dead - 1) for fan in fans] if p.mimic else [p.dead] * p.branches
        count = 1 + p.hops + sum(sizes) + p.distract + 1
        symbols = [rng.choice(PEOPLE)] + rng.sample(CONCEPTS, count - 1)
        order = list(range(count))
        rng.shuffle(order)  # node ids by role -> index in idx_to_symbol
        root = order[0]
        path = [root] + order[1 : 1 + p.hops]
        lines, start = [path], 1 + p.hops
        for i, size in enumerate(sizes):
            nodes = order[start : start + size]
            start += size
            if p.mimic:  # path[i] -> d, then `fan` chains from d, each dead - 1 edges long
                d, rest = nodes[0], nodes[1:]
                lines.append([path[i], d])
                lines += [[d] + rest[k * (p.dead - 1) : (k + 1) * (p.dead - 1)] for k in range(fans[i])]
            else:
                lines.append([path[i]] + nodes)
        chain = order[start:]
        lines.append(chain)
        edges = [e for line in lines for e in zip(line, line[1:])]
        target, neg_target = path[-1], chain[-1]
        self._add_extra(rng, edges, root, target, neg_target)
        rng.shuffle(edges)
        idx_to_symbol = [""] * count
        for role, index in enumerate(order):
            idx_to_symbol[index] = symbols[role]
        return self._problem(rng, edges, path, root, target, neg_target, idx_to_symbol)

    def _fan(self, i: int) -> int:
        """Out-degree of path node i + 1 from the path and the dead branches (before extra edges)."""
        p = self.params
        if i + 1 == p.hops:
            return 0  # the target
        return 2 if i + 1 < p.branches else 1

    def _add_extra(self, rng, edges, root, target, neg_target) -> None:
        nodes = sorted({n for e in edges for n in e})
        added = 0
        for _ in range(20 * self.params.extra):
            if added == self.params.extra:
                break
            u, v = rng.sample(nodes, 2)
            if v == root or (u, v) in edges or u in reachable(edges, v):
                continue
            trial = edges + [(u, v)]
            if neg_target not in reachable(trial, root) and distance(trial, root, target) == self.params.hops:
                edges.append((u, v))
                added += 1

    def _problem(self, rng, edges, path, root, target, neg_target, names) -> Problem:
        person = names[root]

        def fact(u: int, v: int) -> str:
            return f"{person} is a {names[v]}." if u == root else f"Every {names[u]} is a {names[v]}."

        options = [names[target], names[neg_target]]
        rng.shuffle(options)
        question = " ".join(fact(u, v) for u, v in edges)
        question += f" Is {person} a {options[0]} or {options[1]}?"
        steps = tuple(fact(u, v) for u, v in zip(path, path[1:]))
        meta = {
            "edges": [[u, v] for u, v in edges],
            "root": root,
            "target": target,
            "neg_target": neg_target,
            "idx_to_symbol": names,
        }
        return Problem(question, f"{person} is a {names[target]}.", steps, meta)

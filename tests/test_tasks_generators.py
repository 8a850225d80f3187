"""Synthetic generators: determinism, disjoint splits, and answers recomputed independently.

Each checker below re-derives the answer from the *question text* with its own parsing and
search, sharing no code with the generator it checks.
"""

from __future__ import annotations

import re
from collections import deque
from statistics import mean

import pytest

from latentcot.errors import InputError
from latentcot.tasks import load_task
from latentcot.tasks.base import split_of

SPECS = [
    "addition",
    "addition:n=3,digits=2,reverse=1",
    "phop",
    "igsm",
    "prosqa",
    "prosqa:hops=2,dead=0,distract=1,extra=0",
    "prontoqa",
]


@pytest.mark.parametrize("spec", SPECS)
def test_same_seed_same_examples_and_prefix_property(spec):
    first = load_task(spec).examples("test", 30, seed=3)
    again = load_task(spec).examples("test", 30, seed=3)
    assert first == again
    assert load_task(spec).examples("test", 10, seed=3) == first[:10]
    other = load_task(spec).examples("test", 30, seed=4)
    assert [e.question for e in other] != [e.question for e in first]
    assert [e.id for e in first] == [f"{spec.split(':')[0]}-test-{i}" for i in range(30)]
    assert all(e.domain == load_task(spec).domain and e.steps for e in first)


@pytest.mark.parametrize("spec", SPECS)
def test_splits_never_share_a_question(spec):
    task = load_task(spec)
    questions = {}
    for split, n in (("train", 400), ("valid", 60), ("test", 60)):
        for seed in (0, 1):
            batch = task.examples(split, n, seed)
            assert all(split_of(e.question) == split for e in batch)
            questions.setdefault(split, set()).update(e.question for e in batch)
    assert not questions["train"] & questions["test"]
    assert not questions["train"] & questions["valid"]
    assert not questions["valid"] & questions["test"]


def test_default_count_and_split_validation():
    task = load_task("addition:n=2,digits=1")
    assert len(task.examples("valid", None, 0)) == 500
    assert task.examples("test", 0, 0) == []
    with pytest.raises(InputError, match="unknown split 'dev'; valid splits: train, valid, test"):
        task.examples("dev", 5, 0)
    with pytest.raises(InputError, match="non-negative"):
        task.examples("test", -1, 0)


def test_tiny_problem_space_fails_with_a_clear_error_instead_of_looping():
    # 2 one-digit numbers give 100 questions; ~10 of them are test questions, so this works ...
    assert len(load_task("addition:n=2,digits=1").examples("test", 50, 0)) == 50
    # ... but p-hop over 3 symbols of {b, c} has two questions ("b c b", "c b c"), neither in valid
    with pytest.raises(InputError, match="too few distinct problems to fill the valid split"):
        load_task("phop:n=3,p=1,alphabet=2").examples("valid", 5, 0)
    with pytest.raises(InputError, match="almost no sequence allows 30 hops"):
        load_task("phop:n=40,p=30,alphabet=23").examples("test", 1, 0)


# ----------------------------------------------------------------- addition


@pytest.mark.parametrize("n,digits,reverse", [(4, 3, 0), (8, 3, 0), (3, 2, 1), (2, 5, 1)])
def test_addition_answers_equal_python_sum(n, digits, reverse):
    task = load_task(f"addition:n={n},digits={digits},reverse={reverse}")
    read = (lambda s: int(s[::-1])) if reverse else int
    for example in task.examples("test", 40, 0):
        operands = example.question.removesuffix(" =").split(" + ")
        assert len(operands) == n and all(len(o) == digits for o in operands)
        assert read(example.answer) == sum(read(o) for o in operands)
        assert len(example.steps) == n - 1
        running = read(operands[0])
        for step, operand in zip(example.steps, operands[1:]):
            left, right, total = re.fullmatch(r"(\d+) \+ (\d+) = (\d+)", step).groups()
            assert read(left) == running and right == operand
            running += read(operand)
            assert read(total) == running
        assert example.steps[-1].endswith(f"= {example.answer}")


@pytest.mark.parametrize("n,digits,reverse", [(5, 1, 1), (4, 2, 0)])
def test_shuffled_addition_adds_every_operand_once_in_a_random_order(n, digits, reverse):
    read = (lambda s: int(s[::-1])) if reverse else int
    orders = set()
    for example in load_task(f"addition:n={n},digits={digits},reverse={reverse},shuffle=1").examples("test", 60, 0):
        operands = example.question.removesuffix(" =").split(" + ")
        parsed = [re.fullmatch(r"(\d+) \+ (\d+) = (\d+)", step).groups() for step in example.steps]
        used = [parsed[0][0]] + [right for _, right, _ in parsed]
        assert sorted(used) == sorted(operands)  # each operand exactly once (as a multiset)
        running = read(used[0])
        for (left, _, total), operand in zip(parsed, used[1:]):
            assert read(left) == running
            running += read(operand)
            assert read(total) == running
        assert read(example.answer) == sum(read(o) for o in operands) == running
        orders.add(tuple(used) == tuple(operands))
    assert False in orders  # chains leave the question's order


def test_parameters_added_later_stay_out_of_the_spec_until_set():
    assert load_task("addition:n=4,digits=2,reverse=1").spec == "addition:n=4,digits=2,reverse=1"
    assert load_task("addition:shuffle=0").spec == load_task("addition").spec
    assert load_task("addition:shuffle=1").spec.endswith(",shuffle=1")
    assert load_task("prosqa:branches=1").spec == "prosqa:hops=3,dead=1,distract=2,extra=2"
    # the spec seeds the problems: an old spec still yields the problems it always did
    assert load_task("prosqa:branches=1").examples("test", 5, 0) == load_task("prosqa").examples("test", 5, 0)
    shipped = "prosqa:hops=4,dead=3,distract=1,extra=0,branches=2"
    assert load_task(shipped + ",mimic=0").spec == shipped
    assert load_task(shipped + ",mimic=0").examples("test", 5, 0) == load_task(shipped).examples("test", 5, 0)


def test_addition_reverse_writes_least_significant_digit_first():
    plain = load_task("addition:n=2,digits=3").examples("test", 20, 0)
    flipped = load_task("addition:n=2,digits=3,reverse=1").examples("test", 20, 0)
    for example in flipped:
        a, b = example.meta["numbers"]
        assert example.question == f"{str(a).zfill(3)[::-1]} + {str(b).zfill(3)[::-1]} ="
        assert example.answer == str(a + b)[::-1]
    assert all(e.answer == str(e.meta["total"]) for e in plain)


# ----------------------------------------------------------------- phop


def _phop_reference(symbols: list[str], hops: int) -> list[int]:
    """Independent p-hop: a forward pass records, for every position, the latest earlier
    position holding the same symbol; hops then follow that table."""
    previous, last_seen = {}, {}
    for position, symbol in enumerate(symbols, start=1):
        previous[position] = last_seen.get(symbol)
        last_seen[symbol] = position
    path = [len(symbols)]
    for _ in range(hops):
        earlier = previous[path[-1]]
        assert earlier is not None, "generator emitted a sequence where a hop is missing"
        path.append(earlier + 1)
    return path


@pytest.mark.parametrize("spec,p", [("phop", 3), ("phop:n=40,p=6,alphabet=3", 6), ("phop:n=16,p=1,alphabet=8", 1)])
def test_phop_answers_match_an_independent_hopper(spec, p):
    for example in load_task(spec).examples("test", 40, 0):
        symbols = re.match(r"Sequence: ([a-z ]+)\. ", example.question).group(1).split()
        assert f"hop {p} times" in example.question
        path = _phop_reference(symbols, p)
        assert all(a > b for a, b in zip(path, path[1:])), "every hop must move"
        assert example.answer == symbols[path[-1] - 1]
        assert len(example.steps) == p
        for k, (step, a, b) in enumerate(zip(example.steps, path, path[1:]), start=1):
            assert step == f"hop {k}: {symbols[a - 1]} at {a} -> {symbols[b - 1]} at {b}"


def test_phop_alphabet_parameter_limits_symbols():
    for example in load_task("phop:n=30,p=2,alphabet=3").examples("test", 20, 0):
        assert set(example.meta["sequence"]) <= set("bcd")


# ----------------------------------------------------------------- igsm

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _igsm_parse(question: str):
    mod = int(re.match(r"All values are mod (\d+)\. ", question).group(1))
    query = re.search(r"What is ([A-Z]#[A-Z])\?$", question).group(1)
    definitions = {}
    for name, body in re.findall(r"([A-Z]#[A-Z]) := ([^.]+)\.", question):
        assert name not in definitions
        definitions[name] = int(body) if body.isdigit() else tuple(body.split(" "))
    return mod, query, definitions


def _igsm_eval(definitions, mod, name, memo):
    if name not in memo:
        d = definitions[name]
        memo[name] = (
            d
            if isinstance(d, int)
            else _OPS[d[1]](_igsm_eval(definitions, mod, d[0], memo), _igsm_eval(definitions, mod, d[2], memo)) % mod
        )
    return memo[name]


def _igsm_closure(definitions, name):
    todo, seen = [name], set()
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            if not isinstance(definitions[node], int):
                todo += [definitions[node][0], definitions[node][2]]
    return seen


@pytest.mark.parametrize("ops,distractors,mod", [(4, 2, 7), (1, 0, 5), (9, 5, 11)])
def test_igsm_answers_match_an_independent_evaluator(ops, distractors, mod):
    task = load_task(f"igsm:ops={ops},distractors={distractors},mod={mod}")
    for example in task.examples("test", 30, 0):
        got_mod, query, definitions = _igsm_parse(example.question)
        assert got_mod == mod
        values = {}
        assert example.answer == str(_igsm_eval(definitions, mod, query, values))
        closure = _igsm_closure(definitions, query)
        operations = [n for n in closure if not isinstance(definitions[n], int)]
        assert len(operations) == ops == len(example.steps)
        assert len(definitions) - len(closure) == distractors
        known = {n for n in closure if isinstance(definitions[n], int)}
        for step in example.steps:  # a valid evaluation order with correct values
            name, a, op, b, va, vb, value = re.fullmatch(
                r"(\S+) = (\S+) ([-+*]) (\S+) = (\d+) \3 (\d+) = (\d+)", step
            ).groups()
            assert {a, b} <= known and definitions[name] == (a, op, b)
            assert (int(va), int(vb), int(value)) == (values[a], values[b], values[name])
            known.add(name)
        assert example.steps[-1].startswith(f"{query} =")


def test_igsm_more_ops_means_deeper_dependency_chains():
    depths = {
        ops: mean(e.meta["depth"] for e in load_task(f"igsm:ops={ops}").examples("test", 60, 0)) for ops in (2, 6, 12)
    }
    assert depths[2] < depths[6] < depths[12]


# ----------------------------------------------------------------- prosqa


def _prosqa_parse(question: str):
    person = re.search(r" Is (\w+) a (\w+) or (\w+)\?$", question)
    name, first, second = person.groups()
    graph: dict[str, set[str]] = {}
    for category, individual, sup in re.findall(rf"(?:Every (\w+)|({name})) is a (\w+)\.", question):
        graph.setdefault(category or individual, set()).add(sup)
    return name, (first, second), graph


def _bfs(graph, start):
    dist, queue = {start: 0}, deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph.get(node, ())):
            if nxt not in dist:
                dist[nxt] = dist[node] + 1
                queue.append(nxt)
    return dist


@pytest.mark.parametrize(
    "spec,hops",
    [
        ("prosqa", 3),
        ("prosqa:hops=5,dead=3,distract=3,extra=6", 5),
        ("prosqa:hops=2,dead=0,distract=1,extra=0", 2),
        ("prosqa:hops=3,dead=2,distract=1,extra=2,branches=3", 3),
        ("prosqa:hops=4,dead=3,distract=1,extra=0,branches=2,mimic=1", 4),
        ("prosqa:hops=5,dead=2,distract=2,extra=3,branches=4,mimic=1", 5),
    ],
)
def test_prosqa_answers_match_an_independent_graph_search(spec, hops):
    for example in load_task(spec).examples("test", 40, 0):
        person, options, graph = _prosqa_parse(example.question)
        dist = _bfs(graph, person)
        reachable = [o for o in options if o in dist]
        assert len(reachable) == 1, "exactly one option must be reachable"
        assert example.answer == f"{person} is a {reachable[0]}."
        assert dist[reachable[0]] == hops == len(example.steps)
        node = person
        for step in example.steps:  # the gold steps walk real edges from the person
            sub, sup = re.fullmatch(r"(?:Every )?(\w+) is a (\w+)\.", step).groups()
            assert sub == node and sup in graph[sub]
            node = sup
        assert node == reachable[0]


def test_prosqa_meta_is_the_coconut_graph_of_the_question():
    for example in load_task("prosqa").examples("test", 20, 0):
        m = example.meta
        names = m["idx_to_symbol"]
        person, _, graph = _prosqa_parse(example.question)
        assert names[m["root"]] == person
        assert {(names[u], names[v]) for u, v in m["edges"]} == {(a, b) for a, bs in graph.items() for b in bs}
        assert example.answer == f"{person} is a {names[m['target']]}."
        assert names[m["neg_target"]] in example.question.rsplit("Is", 1)[1]


def test_prosqa_branches_give_every_path_step_a_second_child_that_leads_nowhere():
    for example in load_task("prosqa:hops=3,dead=2,distract=1,extra=0,branches=3").examples("test", 30, 0):
        person, options, graph = _prosqa_parse(example.question)
        assert example.question.count(" is a ") == 3 + 3 * 2 + 1
        node = person
        for step in example.steps:
            sup = re.fullmatch(r"(?:Every )?\w+ is a (\w+)\.", step).group(1)
            (dead,) = graph[node] - {sup}  # exactly two children: the gold one and a dead branch
            assert dead in graph, "the dead child leads on, so only looking ahead separates the two"
            assert not set(options) & set(_bfs(graph, dead)), "a dead branch reaches neither answer"
            node = sup


@pytest.mark.parametrize("hops,dead,branches", [(4, 3, 2), (5, 2, 3), (3, 2, 3)])
def test_prosqa_mimic_gives_the_two_children_of_every_fork_the_same_out_degree(hops, dead, branches):
    spec = f"prosqa:hops={hops},dead={dead},distract=1,extra=0,branches={branches},mimic=1"
    plain = load_task(spec.removesuffix(",mimic=1")).examples("test", 30, 0)
    for example, unshaped in zip(load_task(spec).examples("test", 30, 0), plain):
        person, options, graph = _prosqa_parse(example.question)
        node = person
        for step in example.steps[:branches]:
            sup = re.fullmatch(r"(?:Every )?\w+ is a (\w+)\.", step).group(1)
            (dead_child,) = graph[node] - {sup}
            assert len(graph.get(dead_child, ())) == len(graph.get(sup, ())), "out-degree tells them apart"
            below = _bfs(graph, dead_child)
            assert not set(options) & set(below), "a dead branch reaches neither answer"
            depth = max(below.values())
            assert depth == (dead - 1 if graph.get(sup) else 0), "each dead branch is `dead` facts deep"
            node = sup
        # without mimic the dead branches are chains: at the person the right child has more children
        person, _, graph = _prosqa_parse(unshaped.question)
        right = re.fullmatch(r"\w+ is a (\w+)\.", unshaped.steps[0]).group(1)
        (dead_child,) = graph[person] - {right}
        assert len(graph[dead_child]) == 1 < len(graph[right])
    fans = [0 if i + 1 == hops else 2 if i + 1 < branches else 1 for i in range(branches)]
    facts = hops + sum(1 + fan * (dead - 1) for fan in fans) + 1
    assert all(e.question.count(" is a ") == facts for e in load_task(spec).examples("test", 10, 0))


def test_prosqa_mimic_needs_branches_with_children():
    with pytest.raises(InputError, match="prosqa:dead: 1; mimic=1 needs dead >= 2"):
        load_task("prosqa:dead=1,mimic=1")


def test_prosqa_small_parameter_set_gives_three_facts():
    for example in load_task("prosqa:hops=2,dead=0,distract=1,extra=0").examples("test", 20, 0):
        assert example.question.count(" is a ") == 3


# ----------------------------------------------------------------- prontoqa


def _pronto_truth(question: str) -> tuple[bool, int]:
    """Follow 'is a' links from the person until a category with a property fact; returns the
    truth of the queried statement and the number of rules applied."""
    person, polarity, adjective = re.search(r"True or false: (\w+) is (not )?(\w+)\.$", question).groups()
    category = re.search(rf"{person} is a (\w+)\.", question).group(1)
    parents = dict(re.findall(r"Every (\w+) is a (\w+)\.", question))
    props = {c: not neg for c, neg, adj in re.findall(r"Every (\w+) is (not )?(\w+)\.", question) if adj == adjective}
    rules = 0
    while category not in props:
        category, rules = parents[category], rules + 1
    return props[category] == (polarity is None), rules + 1


@pytest.mark.parametrize("hops,distractors", [(5, 2), (1, 1), (8, 4)])
def test_prontoqa_answers_match_independent_chain_following(hops, distractors):
    examples = load_task(f"prontoqa:hops={hops},distractors={distractors}").examples("test", 60, 0)
    for example in examples:
        truth, rules = _pronto_truth(example.question)
        assert example.answer == ("True" if truth else "False")
        assert rules == hops == len(example.steps)
    answers = {e.answer for e in examples}
    assert answers == {"True", "False"}


def test_prontoqa_distractors_state_the_opposite_property():
    for example in load_task("prontoqa:hops=3,distractors=2").examples("test", 20, 0):
        adjective = example.meta["property"]
        facts = re.findall(rf"Every \w+ is (not )?{adjective}\.", example.question)
        assert len(facts) == 2 and facts[0] != facts[1]


# ----------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    "spec,message",
    [
        ("addition:x=1", "unknown parameter 'x' for task addition; valid keys: n, digits, reverse"),
        ("addition:n=two", "bad value for addition:n: 'two' is not an integer"),
        ("addition:n=1", "bad value for addition:n: 1; expected an integer from 2 to 64"),
        ("addition:reverse=2", "addition:reverse"),
        ("phop:p=10,n=5", "bad value for phop:n: 5; expected an integer from 12 to 4096"),
        ("igsm:mod=1", "igsm:mod"),
        ("prosqa:distract=0", "prosqa:distract"),
        ("prontoqa:hops=0", "prontoqa:hops"),
        ("prontoqa:steps=3", "valid keys: hops, distractors"),
        ("addition:n", "bad task parameter 'n' in 'addition:n'; expected key=value"),
        ("addition:n=2,n=3", "given twice"),
    ],
)
def test_bad_parameters_are_input_errors(spec, message):
    with pytest.raises(InputError) as caught:
        load_task(spec)
    assert message in caught.value.message
    assert caught.value.where is None


@pytest.mark.parametrize(
    "knob,values,depth",
    [
        ("addition:n", (2, 5, 9), lambda e: len(e.steps)),
        ("phop:p", (1, 4, 7), lambda e: len(e.meta["positions"]) - 1),
        ("prosqa:hops", (1, 3, 6), lambda e: len(e.steps)),
        ("prontoqa:hops", (2, 5, 9), lambda e: len(e.steps)),
        ("igsm:ops", (1, 5, 10), lambda e: len(e.steps)),
    ],
)
def test_depth_knobs_set_the_number_of_reasoning_steps(knob, values, depth):
    name, key = knob.split(":")
    for value in values:
        extra = ",n=40" if name == "phop" else ""
        examples = load_task(f"{name}:{key}={value}{extra}").examples("valid", 15, 0)
        assert {depth(e) for e in examples} == {value - 1 if name == "addition" else value}

"""Where work units run: in this process (``local``) or on Ray actors that each hold one model (``ray``).

A work unit is a family of settings (those that decode with the same options, so they can share
prefixes) × a batch of examples of one task. The driver makes the units from what the run store has
not recorded yet; an executor decodes them with a :class:`Worker` and yields each unit's records; the
driver appends them, so it stays the only writer of the run. Arms that a full tree spilled are decoded
again within their unit. Rows are seeded by (run seed, example id), so a record does not depend on which worker
decoded it or which examples shared its batch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from latentcot.errors import InputError
from latentcot.experiment import Setting, check_runnable, load_examples, make_record
from latentcot.gates import make_gate
from latentcot.latent import make_latent
from latentcot.rollout import NAME as ROLLOUT
from latentcot.rollout import ProbeGate, fork_step, parse_rollout
from latentcot.sampling import row_seed
from latentcot.tree import Arm
from latentcot.types import Trace

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class WorkUnit:
    task: int  # index into the run's tasks
    family: int  # index into the families of settings
    examples: tuple[int, ...]  # indices into the task's examples (one domain where a threshold map needs it)
    arms: tuple[int, ...]  # positions in the family: the settings to decode
    skip: frozenset[tuple[int, int]] = frozenset()  # (example, arm) already recorded: decoded, not returned


@dataclass
class UnitResult:
    unit: WorkUnit
    records: list[dict]  # in (example, setting) order
    forward_rows: int = 0  # rows forwards computed (spilled arms decoded again included)
    trajectories: int = 0
    separate_rows: int = 0  # rows decoding every (example, setting) alone computes: the traces' steps
    traces: int = 0
    plain_rows: int = 0  # rows a tree of the settings alone computes (without rollout branches)
    worker: int = 0  # pid of the process that decoded the unit


def setting_families(settings: Sequence[Setting], share: bool) -> list[tuple[int, ...]]:
    """Indices of ``settings`` grouped into families that decode as one tree: same decoding options. Without
    ``share``, and for a latent mode that reads other rows of its batch (``shuffled``), one setting each."""
    families: dict[Any, list[int]] = {}
    for k, s in enumerate(settings):
        shareable = share and s.latent.kind != "shuffled"
        families.setdefault(s.decode if shareable else ("alone", k), []).append(k)
    return [tuple(ks) for ks in families.values()]


def make_units(
    tasks: Sequence[tuple[Any, Sequence]],
    settings: Sequence[Setting],
    families: Sequence[tuple[int, ...]],
    done: set[tuple[str, str, str]],
    batch_size: int,
) -> list[WorkUnit]:
    """One unit per batch of examples that miss a record of a family. Such an example is decoded with the
    whole family, as in an uninterrupted run (the same tree, so the same records to the last bit), and
    what is already recorded is skipped. A family with a threshold map gets one domain per unit."""
    units = []
    for t, (task, examples) in enumerate(tasks):
        for f, family in enumerate(families):
            ids = [settings[k].id for k in family]
            pending = [i for i, e in enumerate(examples) if any((task.spec, sid, e.id) not in done for sid in ids)]
            if any(settings[k].gate.threshold_map for k in family):
                by_domain: dict[str, list[int]] = {}
                for i in pending:
                    by_domain.setdefault(examples[i].domain or task.domain, []).append(i)
                groups = list(by_domain.values())
            else:
                groups = [pending]
            for group in groups:
                for start in range(0, len(group), batch_size):
                    batch = tuple(group[start : start + batch_size])
                    skip = frozenset(
                        (i, j) for i in batch for j, sid in enumerate(ids) if (task.spec, sid, examples[i].id) in done
                    )
                    units.append(WorkUnit(t, f, batch, tuple(range(len(family))), skip))
    return units


class Worker:
    """Decodes work units with one loaded backend: in the driver's process, or inside a Ray actor."""

    def __init__(
        self,
        engine,
        tasks: Sequence[tuple[Any, Sequence]],
        settings: Sequence[Setting],
        families: Sequence[tuple[int, ...]],
        *,
        seed: int,
        measure: Sequence[str] = (),
        max_rows: int | None = None,
    ):
        self.engine, self.tasks, self.settings, self.families = engine, tasks, settings, families
        self.seed, self.max_rows = seed, max_rows
        self.rollout = parse_rollout(tuple(measure))  # answer-level probes: extra arms of the tree
        self.observed = tuple(m for m in measure if m.partition(":")[0] != ROLLOUT)  # step observers

    def _resolved(self, task, family: tuple[int, ...], domain: str) -> list[Setting]:
        """The family's settings as they decode this task's examples of ``domain``: the task's stop strings
        added (its template says where an answer ends), a threshold map resolved to the domain's τ."""
        out = []
        for setting in (self.settings[k] for k in family):
            decode = dataclasses.replace(setting.decode, stop=tuple(dict.fromkeys(setting.decode.stop + task.stop)))
            out.append(dataclasses.replace(setting, gate=setting.gate.for_domain(domain), decode=decode))
        return out

    def decode(self, unit: WorkUnit) -> UnitResult:
        task, examples = self.tasks[unit.task]
        batch = [examples[i] for i in unit.examples]
        resolved = self._resolved(task, self.families[unit.family], batch[0].domain or task.domain)
        wanted = [resolved[j] for j in unit.arms]
        arms = [Arm(make_gate(s.gate), make_latent(s.latent), s.latent) for s in wanted]
        probes = [  # rollout: probe n of setting j is arm len(wanted) + j * spec.max + n
            Arm(ProbeGate(arm.gate, n, self.rollout), arm.latent, arm.latent_key)
            for arm in arms
            for n in range(self.rollout.max if self.rollout else 0)
        ]
        prompts, seeds = [task.prompt(e) for e in batch], [row_seed(self.seed, e.id) for e in batch]
        traces, (forward_rows, trajectories) = self._decode(prompts, seeds, arms + probes, wanted[0].decode)
        records = []
        for (i, j), trace in sorted(traces.items()):
            if j >= len(wanted) or (unit.examples[i], unit.arms[j]) in unit.skip:
                continue
            record = make_record(task, batch[i], wanted[j], trace).to_dict()
            if self.rollout:
                first = len(wanted) + j * self.rollout.max
                branches = [traces[(i, first + n)] for n in range(self.rollout.max)]
                record["steps"].update(rollout_arrays(task, batch[i], record, branches))
            records.append(record)
        main = [trace for (i, j), trace in traces.items() if j < len(wanted)]
        return UnitResult(
            unit,
            records,
            forward_rows=forward_rows,
            trajectories=trajectories,
            separate_rows=sum(t.n_steps for t in main),
            traces=len(main),
            plain_rows=trie_nodes(traces, [s.latent for s in wanted]),
            worker=os.getpid(),
        )

    def _decode(self, prompts, seeds, arms: list[Arm], decode) -> tuple[dict[tuple[int, int], Trace], tuple[int, int]]:
        """Every (prompt, arm) trace: one tree, then again for the arms a full tree spilled (the same seeds,
        so the same traces). Returns the traces and (forward rows, trajectories)."""
        if len(arms) == 1 or not hasattr(self.engine, "decode_tree"):
            traces = {}
            for j, arm in enumerate(arms):
                for i, trace in enumerate(
                    self.engine.generate(prompts, arm.gate, arm.latent, decode, seeds, self.observed)
                ):
                    traces[(i, j)] = trace
            return traces, (sum(t.n_steps for t in traces.values()), len(traces))
        traces, forward_rows, trajectories = {}, 0, 0
        pending = [(list(range(len(prompts))), list(range(len(arms))))]  # (prompt rows, arms)
        while pending:
            rows, arm_ids = pending.pop(0)
            tree = self.engine.decode_tree(
                [prompts[i] for i in rows], [arms[a] for a in arm_ids], decode, [seeds[i] for i in rows],
                self.observed, self.max_rows,
            )  # fmt: skip
            traces.update({(rows[i], arm_ids[j]): trace for (i, j), trace in tree.traces.items()})
            forward_rows, trajectories = forward_rows + tree.forward_rows, trajectories + tree.trajectories
            by_arms: dict[tuple[int, ...], list[int]] = {}
            for row, spilled in tree.spilled:
                by_arms.setdefault(tuple(arm_ids[j] for j in spilled), []).append(rows[row])
            pending += [(spilled_rows, list(ids)) for ids, spilled_rows in by_arms.items()]
        return traces, (forward_rows, trajectories)


def rollout_arrays(task, example, record: dict, branches: Sequence[Trace]) -> dict[str, list]:
    """Per step of ``record``: did the branch that fed the latent there change the answer, and is its answer
    correct (None where no branch left the trajectory)."""
    n = record["n_steps"]
    changed: list[bool | None] = [None] * n
    correct: list[bool | None] = [None] * n
    for branch in branches:
        t = fork_step(record["steps"]["mode"], branch.mode)
        if t is None:  # the probe never fired: fewer qualifying steps than probes
            continue
        prediction = task.extract(branch.completion).prediction
        changed[t] = prediction != record["prediction"]
        correct[t] = bool(task.score(example, prediction))
    return {"rollout_changed": changed, "rollout_correct": correct}


def trie_nodes(traces: dict[tuple[int, int], Trace], latents: Sequence[Any]) -> int:
    """Rows a tree of the settings alone computes: distinct (prompt, input prefix) pairs of the traces of
    arms 0 .. len(latents) - 1, whose latent modes are ``latents`` (a latent step's input is its mode's)."""
    nodes = set()
    for (i, j), trace in traces.items():
        if j >= len(latents):
            continue
        prefix: tuple = (i,)
        for mode, token in zip(trace.mode, trace.token_id):
            nodes.add(prefix)
            prefix = (*prefix, (mode, token if mode != "latent" else latents[j]))
    return len(nodes)


class LocalExecutor:
    """Decodes the units one after another in this process."""

    def __init__(self, worker: Worker):
        self.worker = worker

    def run(self, units: Sequence[WorkUnit]) -> Iterator[UnitResult]:
        for unit in units:
            yield self.worker.decode(unit)

    def close(self) -> None:
        pass


class RayExecutor:
    """Work units on Ray actors that each load the model once (``latentcot[ray]``). A unit goes to the
    next free actor (one in flight per actor, so a slow unit holds no other back); a unit whose actor died
    is decoded again on a fresh actor; results come back as they finish and the driver writes them."""

    def __init__(self, cfg, plan, families: Sequence[tuple[int, ...]], max_rows: int | None):
        import ray

        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            # "local": a new cluster on this machine (never one left over from another process)
            ray.init(address=cfg.address or "local", include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR", configure_logging=False)  # fmt: skip
        self._actor_class = ray.remote(num_cpus=1, num_gpus=cfg.gpus_per_worker)(RayWorker)
        self._args = (plan, tuple(families), max_rows, os.getcwd())
        self.actors = [self._actor_class.remote(*self._args) for _ in range(cfg.workers)]
        self.retried = 0  # units decoded again because their actor died

    def run(self, units: Sequence[WorkUnit]) -> Iterator[UnitResult]:
        ray = self._ray
        queue, idle = list(units), list(self.actors)
        in_flight: dict[Any, tuple[Any, WorkUnit]] = {}  # object ref -> (actor, unit)
        while queue or in_flight:
            while queue and idle:
                actor, unit = idle.pop(0), queue.pop(0)
                in_flight[actor.decode.remote(unit)] = (actor, unit)
            (ready,), _ = ray.wait(list(in_flight), num_returns=1)
            actor, unit = in_flight.pop(ready)
            try:
                result = ray.get(ready)
            except ray.exceptions.RayActorError:  # the actor's process died: its unit goes to a fresh one
                self.actors.remove(actor)
                fresh = self._actor_class.remote(*self._args)
                self.actors.append(fresh)
                idle.append(fresh)
                queue.insert(0, unit)
                self.retried += 1
                continue
            idle.append(actor)
            yield result

    def describe(self) -> dict[str, Any]:
        """The model's identity as a worker loaded it, once a worker has checked the plan against its model
        (InputError with the worker's reason when it cannot run it)."""
        refusal, identity = self._ray.get(self.actors[0].describe.remote())
        if refusal is not None:
            raise InputError(refusal)
        return identity

    def worker_pids(self) -> list[int]:
        return self._ray.get([actor.pid.remote() for actor in self.actors])

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        if self._owns_ray:
            self._ray.shutdown()


class RayWorker:
    """The body of a Ray actor: loads the backend and the tasks once, then decodes units. What the user can
    fix (a model that does not load, a plan it cannot run) is kept as a message for :meth:`describe`."""

    def __init__(self, plan, families: tuple[tuple[int, ...], ...], max_rows: int | None, cwd: str):
        from latentcot.backends import load_backend

        if os.path.isdir(cwd):  # relative task and model paths mean what they meant to the driver
            os.chdir(cwd)
        self.refusal: str | None = None
        self.identity: dict[str, Any] = {}
        try:
            loaded = load_backend(plan.model, plan.backend)
            tasks = load_examples(plan)
            check_runnable(plan, tasks, loaded.engine)
        except InputError as exc:
            self.refusal = str(exc)
            return
        self.identity = loaded.identity
        self.worker = Worker(loaded.engine, tasks, plan.settings, families, seed=plan.seed,
                             measure=plan.measure, max_rows=max_rows)  # fmt: skip

    def describe(self) -> tuple[str | None, dict[str, Any]]:
        """(why this worker cannot run the plan, or None; the loaded model's identity for the manifest)."""
        return self.refusal, self.identity

    def decode(self, unit: WorkUnit) -> UnitResult:
        return self.worker.decode(unit)

    def pid(self) -> int:
        return os.getpid()

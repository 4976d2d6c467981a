"""The stage contract: what every stage declares once, and what the base does for all of them.

A stage declares its ``name``, its run-directory ``folder``, the ``upstream`` stages whose output
it reads, its config section (``section`` + ``Config``), the inputs it fingerprints besides its
config and upstream, and ``run(ctx, out) -> summary``. :func:`execute` owns the rest, the same for
every stage:

1. every upstream stage must be complete (its ``_SUCCESS``), else an error naming the command;
2. fingerprint = stage name + version + upstream fingerprints + its config section + input stamps;
3. ``_SUCCESS`` with that fingerprint: skip. ``_STARTED`` with it: resume (finished work units
   are kept). Anything else: empty the stage and reject folders and start again;
4. the stage's input holds the rows its upstream summary claims (``input_rows``), else
   :class:`StageError`: an input moved or read from the wrong place never passes as empty;
5. ``run`` the stage; the summary must reconcile, ``in == out + sum(rejected)``, the parts on
   storage must hold exactly the rows it claims (``output_rows``, the reject folder), and at most
   ``max_failed_fraction`` of the input may be rejected for a failure (``failure_reasons``), else
   :class:`StageError` naming the stage and the numbers (a real check, not an ``assert``);
6. write ``_summary.json``, then ``_SUCCESS`` last.

Work units (:func:`run_units`) are Spark tasks that write their own part files and then a marker;
a re-run after a crash runs only the units without a marker: no duplicates, no holes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from curation.errors import InputError
from curation.rundir import RunDir, StageDir, fingerprint
from curation.storage import relative

log = logging.getLogger(__name__)

#: Input files inside the run directory up to this size are fingerprinted by content.
STAMP_CONTENT_BYTES = 64 << 20


class StageError(RuntimeError):
    """A stage's own consistency check failed; the message names the stage and the numbers."""


class Stage:
    """Base of every stage (one module per stage under ``jobs/stages/``; see ARCHITECTURE.md)."""

    #: Subcommand and reject-folder name.
    name: ClassVar[str] = ""
    #: Folder under the run directory (default: ``name``).
    folder: ClassVar[str | None] = None
    #: One line for ``metacurate --help``.
    help: ClassVar[str] = ""
    #: Stages whose outputs this one reads (their classes).
    upstream: ClassVar[tuple[type["Stage"], ...]] = ()
    #: Config section name and its dataclass (None: the stage has no settings).
    section: ClassVar[str | None] = None
    Config: ClassVar[type | None] = None
    section_doc: ClassVar[str] = ""
    #: More config sections the stage owns: ``{name: (dataclass, doc)}`` (fingerprinted too).
    extra_sections: ClassVar[dict[str, tuple[type, str]]] = {}
    #: Reject reasons that mean the tool or the infrastructure failed on a row (an unreadable file,
    #: a failed download shard, a connection error), not a curation decision. When more than
    #: ``max_failed_fraction`` of the input fails so, the stage fails instead of completing.
    failure_reasons: ClassVar[tuple[str, ...]] = ()
    #: Whether every rejected input becomes a row in ``rejects/<name>/`` (checked before
    #: ``_SUCCESS``). The metadata stage counts candidates it drops (duplicates, over a cap) in its
    #: summary and report instead: most never reach the driver as rows.
    reject_rows: ClassVar[bool] = True
    #: A CLI module with the stage's own actions (``add_actions(parser)``, ``run_action(args)``),
    #: named by path: the CLI sits above the stages and loads it; None: only ``--config`` runs.
    cli_actions: ClassVar[str | None] = None
    #: Cluster sizing (``infra/measure_sizing.py``): None = measured there on a generated pool;
    #: else an estimate ``(core-hours per million rows the stage sees, basis)`` for stages that
    #: need the network or real images and cannot be measured offline at scale.
    sizing_estimate: ClassVar[tuple[float, str] | None] = None
    #: Bump when a code change alters the outputs for the same inputs (re-runs the stage).
    version: ClassVar[str] = "1"

    @classmethod
    def dir_name(cls) -> str:
        return cls.folder or cls.name

    @classmethod
    def active(cls, ctx: "StageContext") -> bool:
        """Whether the config switches this stage on (an optional stage such as ``lid`` is off by
        default: ``run`` leaves it out and downstream stages do not wait for it). Default: on."""
        return True

    def check(self, ctx: "StageContext") -> None:
        """Cheap checks of the inputs before any Spark session starts (a wrong path should fail
        in a second, naming the key to fix). Default: nothing."""

    def inputs(self, ctx: "StageContext") -> list:
        """Extra fingerprint parts, e.g. ``(url, size, ETag/mtime)`` of input files. Default: none."""
        return []

    def fingerprint_settings(self, settings: Any) -> dict:
        """The part of the config section that decides the outputs (default: all of it)."""
        return dataclasses.asdict(settings)

    def run(self, ctx: "StageContext", out: StageDir) -> dict:
        """Do the work into ``out``; return the summary ``{"in", "out", "rejected": {reason: n}, ...}``."""
        raise NotImplementedError

    def input_rows(self, ctx: "StageContext") -> tuple[type["Stage"], int] | None:
        """``(upstream stage, rows its output holds on storage)`` for the data this stage reads, so
        an input that does not hold what its stage's summary claims (moved, half-copied, or not
        where the tasks look) stops the stage before it runs. Default: not checked."""
        return None

    def output_rows(self, ctx: "StageContext", out: StageDir) -> int | None:
        """Rows the stage's data on storage holds, compared with the summary's ``out`` before
        ``_SUCCESS`` is written. Default: not checked."""
        return None


@dataclass
class StageContext:
    """What a stage sees: the config, the run directory and a Spark session started on first use."""

    cfg: Any
    run: RunDir
    spark_factory: Callable[[], Any] | None = None
    _spark: Any = field(default=None, repr=False)

    @property
    def storage(self):
        return self.run.storage

    @property
    def spark(self):
        if self._spark is None:
            if self.spark_factory is None:
                raise RuntimeError("this stage needs Spark but no session was provided")
            self._spark = self.spark_factory()
        return self._spark

    def dir(self, stage: type[Stage] | Stage) -> StageDir:
        """The folder of a stage (by class or instance) in this run."""
        return self.run.stage(stage.name, stage.dir_name())

    def settings(self, stage: type[Stage] | Stage) -> Any:
        """The stage's config section (an instance of its ``Config``)."""
        if not stage.section:
            return None
        return getattr(self.cfg, stage.section)

    def stamp(self, url: str) -> tuple:
        """A fingerprint part for an input file. Files inside the run directory are named by their
        path relative to it and, when small, identified by their content: a copied or moved run
        (where mtimes and absolute paths change) is still complete. Others: ``Storage.stamp``."""
        rel = relative(url, self.run.url)
        if rel == url:
            return self.storage.stamp(url)
        size = self.storage.stamp(url)[1]
        if size is not None and size <= STAMP_CONTENT_BYTES:
            return rel, size, "blake2b:" + hashlib.blake2b(self.storage.read_bytes(url), digest_size=16).hexdigest()
        return rel, size, self.storage.stamp(url)[2]

    def upstream_summary(self, stage: type[Stage]) -> dict:
        summary = self.dir(stage).summary()
        if summary is None:
            raise InputError(f"{self.dir(stage).url} has no summary; run `metacurate {stage.name}` again")
        return summary


def stage_fingerprint(stage: Stage, ctx: StageContext) -> str:
    """What decides whether a completed stage can be reused."""
    ups = []
    for up in stage.upstream:
        if not up.active(ctx):
            ups.append(f"{up.name}:off")  # switching it on later must redo this stage
            continue
        done = ctx.dir(up).success()
        if not done:
            raise InputError(f"stage `{stage.name}` needs `{up.name}` to be complete under {ctx.run.url}; "
                             f"run it first (`metacurate {up.name} --config ...` or `metacurate run`)")
        # ``output_id`` differs from the fingerprint when the outputs changed without a new config
        # (``download --retry-failed``): later stages must then run again.
        ups.append(done.get("output_id") or done.get("fingerprint"))
    settings = ctx.settings(stage)
    section = stage.fingerprint_settings(settings) if settings is not None else None
    extra = {name: dataclasses.asdict(getattr(ctx.cfg, name)) for name in stage.extra_sections} or None
    parts = [stage.name, stage.version, ups, section, stage.inputs(ctx)] + ([extra] if extra else [])
    return fingerprint(*parts)


def reconcile(name: str, summary: dict) -> dict:
    """``in == out + sum(rejected)`` or a :class:`StageError` with the numbers."""
    for key in ("in", "out", "rejected"):
        if key not in summary:
            raise StageError(f"{name}: the summary lacks `{key}`")
    rejected = sum(int(v) for v in summary["rejected"].values())
    if int(summary["in"]) != int(summary["out"]) + rejected:
        raise StageError(f"{name}: rows do not reconcile: in={summary['in']:,} != out={summary['out']:,} + "
                         f"rejected={rejected:,} ({summary['rejected']}); the stage is not marked complete")
    return {"stage": name, **summary, "rejected": dict(sorted(summary["rejected"].items())), "reconciled": True}


def check_input(stage: Stage, ctx: StageContext) -> None:
    """The stage's input holds the rows its upstream summary claims, else a :class:`StageError`."""
    found = stage.input_rows(ctx)
    if found is None:
        return
    up, rows = found
    claimed = int(ctx.upstream_summary(up)["out"])
    if rows != claimed:
        raise StageError(f"{stage.name}: its input, the {up.name} stage's output under {ctx.dir(up).url}, holds "
                         f"{rows:,} rows but that stage's summary says {claimed:,}; the run directory changed "
                         f"since, or the tasks read another place (a relative run_dir on a cluster?). Run "
                         f"`metacurate {up.name}` again; nothing was marked complete")


def verify_outputs(stage: Stage, ctx: StageContext, out: StageDir, summary: dict) -> None:
    """The parts on storage hold exactly the rows the summary claims (data and rejects)."""
    rows = stage.output_rows(ctx, out)
    if rows is not None and rows != int(summary["out"]):
        raise StageError(f"{stage.name}: its data under {out.url} holds {rows:,} rows but the stage counted "
                         f"{int(summary['out']):,}; rows were lost or written twice (another job in this run "
                         "directory?); the stage is not marked complete")
    if out.rejects_url is not None and stage.reject_rows:
        rejected = sum(int(v) for v in summary["rejected"].values())
        found = out.reject_rows()
        if found != rejected:
            raise StageError(f"{stage.name}: {out.rejects_url} holds {found:,} reject rows but the stage counted "
                             f"{rejected:,}; the stage is not marked complete")


def check_failures(stage: Stage, ctx: StageContext, out: StageDir, summary: dict) -> None:
    """Too many rows rejected for a failure (``Stage.failure_reasons``): a :class:`StageError`."""
    limit = getattr(ctx.cfg, "max_failed_fraction", None)
    n_in = int(summary["in"])
    if limit is None or n_in == 0 or not stage.failure_reasons:
        return
    failed = {r: int(n) for r, n in summary["rejected"].items() if r in stage.failure_reasons and n}
    total = sum(failed.values())
    if total / n_in > limit:
        raise StageError(f"{stage.name}: {total:,} of {n_in:,} rows failed ({failed}), more than "
                         f"max_failed_fraction={limit:g}; the stage is not marked complete. The reasons are in "
                         f"{out.rejects_url}: fix the cause and run it again, or raise max_failed_fraction")


def execute(stage: Stage, ctx: StageContext, *, out: StageDir | None = None, force: bool = False) -> dict:
    """Run one stage under the contract above; returns its summary (the stored one when skipped).

    ``out`` overrides the stage folder (the standalone ``metacurate metadata build --out DIR``)."""
    d = out or ctx.dir(stage)
    fp = stage_fingerprint(stage, ctx)
    done = d.success()
    if done and done.get("fingerprint") == fp and not force:
        summary = d.summary()
        if summary is not None:
            log.info("%s: already complete (fingerprint %s), skipping", stage.name, fp)
            return summary
    started = d.started()
    if done or force or not started or started.get("fingerprint") != fp:
        d.reset()
        d.mark_started(fp)
    else:
        log.info("%s: resuming an interrupted run (fingerprint %s)", stage.name, fp)
    check_input(stage, ctx)
    t0 = time.perf_counter()
    summary = reconcile(stage.name, stage.run(ctx, d))
    summary.setdefault("wall_seconds", round(time.perf_counter() - t0, 3))
    # a task killed mid-write (a lost worker; Spark ran the unit again elsewhere) leaves its
    # temporary file; every task has finished now, so none is still being written
    leftovers = d.remove_temporaries()
    if leftovers:
        log.info("%s: removed %d temporary file(s) that killed tasks left", stage.name, leftovers)
    verify_outputs(stage, ctx, d, summary)
    check_failures(stage, ctx, d, summary)
    d.write_summary(summary)
    d.write_success(fp, stage=stage.name, version=stage.version)
    return summary


# --------------------------------------------------------------------------- work units
class PhaseClock:
    """Task time by phase, from ``perf_counter`` laps: units report it and the stage summary sums
    it (``task_seconds``), so where a stage's time goes shows in ``metacurate inspect`` for any
    run, not only under a profiler."""

    def __init__(self) -> None:
        self._t = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._t
        self._t = now

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.seconds.items()}


_ARROW_COMPUTE_READY = False


def arrow_compute_ready(clock: PhaseClock) -> None:
    """The first Arrow compute call of a process builds Arrow's kernel registry (a fraction of a
    second). Done once per worker and timed as ``worker_start``, so it is not charged to whichever
    phase calls Arrow first."""
    global _ARROW_COMPUTE_READY
    if not _ARROW_COMPUTE_READY:
        import pyarrow as pa
        import pyarrow.compute as pc

        pc.binary_length(pa.array([""]))
        _ARROW_COMPUTE_READY = True
        clock.lap("worker_start")


def throttle() -> None:
    """Failure-injection tests slow units down (the variable is set only by their test cluster)."""
    delay = float(os.environ.get("METACURATE_UNIT_DELAY_S", "0") or 0)
    if delay > 0:
        time.sleep(delay)


def merge_unit_summaries(units: list[dict]) -> dict:
    """Sum the units' in / out / rejected and their phase times (``task_seconds``)."""
    total: dict[str, Any] = {"in": 0, "out": 0, "rejected": {}}
    phases: dict[str, float] = {}
    for u in units:
        total["in"] += u["in"]
        total["out"] += u["out"]
        for k, v in u["rejected"].items():
            total["rejected"][k] = total["rejected"].get(k, 0) + v
        for k, v in u.get("phases", {}).items():
            phases[k] = phases.get(k, 0.0) + v
    total["rejected"] = dict(sorted(total["rejected"].items()))
    if phases:
        total["task_seconds"] = {k: round(v, 3) for k, v in phases.items()}
    return total


def run_units(ctx: StageContext, out: StageDir, units: list[dict], task: Callable[[dict, dict], dict],
              task_ctx: dict, label: str) -> list[dict]:
    """Run ``task(unit, task_ctx)`` as one Spark task per unit not yet done; returns every unit's
    summary (from its marker for units finished by an earlier attempt), sorted by unit id."""
    from jobs.spark import executor_errors, progress

    done = out.done_units()
    todo = [u for u in units if u["unit"] not in done]
    if done:
        log.info("%s: %d of %d units already done", label, len(units) - len(todo), len(units))
    results = list(done.values())
    if todo:
        log.info("%s: running %d units", label, len(todo))
        sc = ctx.spark.sparkContext
        rdd = sc.parallelize(todo, len(todo))
        with progress(sc, label), executor_errors():
            results += rdd.mapPartitions(lambda it: [task(u, task_ctx) for u in it]).collect()
    wanted = {u["unit"] for u in units}
    return sorted([r for r in results if r["unit"] in wanted], key=lambda r: r["unit"])

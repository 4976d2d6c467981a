"""The stage registry: every stage of a run, in pipeline order.

This tuple is the single list of stages. The CLI's stage subcommands, the config's sections and
the validation of its ``stages`` key, ``metacurate run``, the order of ``inspect`` and ``report``
all read it. Adding a stage is one module under ``jobs/stages/`` and one line here
(ARCHITECTURE.md, "Adding a stage").
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Sequence

from curation.errors import InputError
from curation.rundir import RunDir, RunLock
from jobs.stages import balance, count, dedup, download, lid, match, metadata, shard
from jobs.stages.base import Stage, StageContext, execute

log = logging.getLogger(__name__)

STAGES: tuple[Stage, ...] = (
    metadata.STAGE,
    lid.STAGE,
    match.STAGE,
    count.STAGE,
    balance.STAGE,
    download.STAGE,
    dedup.STAGE,
    shard.STAGE,
)


def names() -> list[str]:
    return [s.name for s in STAGES]


def get(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise InputError(f"unknown stage {name!r}; the stages are {names()}")


def by_folder(folder: str) -> Stage | None:
    return next((s for s in STAGES if s.dir_name() == folder), None)


def with_upstream(wanted: Sequence[str], ctx: StageContext) -> list[Stage]:
    """The wanted stages plus every incomplete stage they need, in pipeline order."""
    chosen = {get(n).name for n in wanted}
    changed = True
    while changed:
        changed = False
        for s in STAGES:
            if s.name not in chosen:
                continue
            for up in s.upstream:
                if up.name not in chosen and not ctx.dir(up).is_complete():
                    log.info("%s needs %s, which is not complete: running it too", s.name, up.name)
                    chosen.add(up.name)
                    changed = True
    return [s for s in STAGES if s.name in chosen]


def run_stages(cfg: Any, wanted: Sequence[str] | None = None, *, spark: Any = None,
               spark_factory: Callable[[], Any] | None = None, add_upstream: bool = True) -> dict[str, dict]:
    """Run stages of a config in pipeline order (each skipped when complete, resumed when
    interrupted); returns ``{stage: summary}``. Each stage's cheap input checks run before any Spark
    session starts; the run directory is locked while the stages run (``curation.rundir.RunLock``)."""
    run = RunDir(cfg.run_dir, cfg.storage.storage())
    factory = (lambda: spark) if spark is not None else spark_factory
    if factory is None:
        from jobs.spark import get_spark

        def factory():
            return get_spark(cfg.spark.master, conf=cfg.spark.conf)
    ctx = StageContext(cfg=cfg, run=run, spark_factory=factory)
    names = list(cfg.stages if wanted is None else wanted)
    chosen = with_upstream(names, ctx) if add_upstream else [get(n) for n in names]
    # a stage the config switches off runs only when asked for by name (and then says it is off)
    chosen = [s for s in chosen if s.active(ctx) or (wanted is not None and s.name in names)]
    for s in chosen:
        s.check(ctx)
    out = {}
    with RunLock(run, command=" ".join(s.name for s in chosen)):
        for i, s in enumerate(chosen, 1):
            t0 = time.time()
            log.info("[%d/%d] %s ...", i, len(chosen), s.name)
            out[s.name] = summary = execute(s, ctx)
            log.info("[%d/%d] %s done in %.1fs: in=%s out=%s rejected=%s", i, len(chosen), s.name,
                     time.time() - t0, summary.get("in"), summary.get("out"), summary.get("rejected"))
    return out

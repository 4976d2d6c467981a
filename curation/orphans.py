"""Worker processes that stop when the process that started them dies.

img2dataset's local distributor runs a ``spawn`` process pool under the driver. When the driver
is killed (SIGKILL, OOM killer, a lost terminal), Python's pool cannot clean up: its workers are
orphaned, keep downloading and keep writing tar files into the run directory for as long as their
current shard takes, while the user may already be re-running the stage over the same folder.

:class:`ContextsDieWithParent` stands in for the library's ``get_context``: every pool worker
starts, before its first task, a daemon thread that checks every ``interval`` seconds whether the worker's parent is still the
process that built the wrapper; once it is not (the worker was re-parented), the worker exits at
once (``os._exit``). A shard it leaves half written has no ``NNNNN_stats.json``, which is what
img2dataset's incremental mode takes as "done", so the re-run writes that shard again. It costs
one ``getppid`` per interval.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

#: Exit status of a worker that stopped because its parent died.
ORPHAN_EXIT = 75

_WATCHING: dict[int, int] = {}  # this process's pid -> the parent pid it watches
_LOCK = threading.Lock()


def watch_parent(parent_pid: int, interval: float = 0.5) -> bool:
    """Start (once per process) the thread that exits this process when its parent is no longer
    ``parent_pid``. Returns False where there is nothing to watch (this is the parent itself)."""
    me = os.getpid()
    if me == parent_pid:
        return False
    with _LOCK:
        if _WATCHING.get(me) == parent_pid:
            return True
        _WATCHING[me] = parent_pid
    if os.getppid() != parent_pid:  # already orphaned before the first call
        os._exit(ORPHAN_EXIT)

    def loop() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(ORPHAN_EXIT)
            time.sleep(interval)

    threading.Thread(target=loop, name="die-with-parent", daemon=True).start()
    return True


class ContextsDieWithParent:
    """Stands in for ``multiprocessing.get_context`` in a library that builds its own pool: the
    contexts it returns make pools whose every worker (replacements under ``maxtasksperchild``
    included) starts with :func:`watch_parent` on the process that built this, before any task,
    so an idle worker goes too."""

    def __init__(self, get_context: Callable[..., Any], interval: float = 0.5) -> None:
        self._get_context = get_context
        self.parent_pid = os.getpid()
        self.interval = float(interval)

    def __call__(self, method: str | None = None) -> "_Context":
        return _Context(self._get_context(method), self.parent_pid, self.interval)


class _Context:
    def __init__(self, ctx: Any, parent_pid: int, interval: float) -> None:
        self._ctx = ctx
        self._parent_pid = parent_pid
        self._interval = interval

    def Pool(self, processes: int | None = None, initializer: Callable[..., Any] | None = None,  # noqa: N802
             initargs: tuple = (), *args: Any, **kwargs: Any) -> Any:
        return self._ctx.Pool(processes, _start_worker, (self._parent_pid, self._interval, initializer, initargs),
                              *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def _start_worker(parent_pid: int, interval: float, initializer: Callable[..., Any] | None, initargs: tuple) -> None:
    watch_parent(parent_pid, interval)
    if initializer is not None:
        initializer(*initargs)

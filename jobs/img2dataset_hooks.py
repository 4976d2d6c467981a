"""Pieces of img2dataset's process layout that the download stage replaces while it runs.

img2dataset's ``download()`` starts a ``LoggerProcess`` (a ``spawn`` process that polls the
output folder's stats files until the driver tells it to stop) beside its worker pool. When the
driver is killed, nothing tells it: it polled the run directory for as long as the machine was up.
:class:`WatchedLoggerProcess` is the same process, started with ``curation.orphans.watch_parent``
on the driver. It lives in this small module because the spawned child imports the class by name.
"""
from __future__ import annotations

import os

from img2dataset.logger import LoggerProcess

from curation.orphans import watch_parent


class WatchedLoggerProcess(LoggerProcess):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.driver_pid = os.getpid()

    def run(self) -> None:
        watch_parent(self.driver_pid)
        super().run()

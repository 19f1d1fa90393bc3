"""What the command prints while it runs, and what it says when nothing moves.

Workers and trials send their progress lines and a heartbeat (what they are doing) to a `Progress`
actor; a thread of the driver prints the lines as they come (Ray's own forwarding of worker output is
off unless --verbose, so the console is plm-ray's progress and nothing else) and watches the
heartbeats. When no step, trial report or data progress has come for `run.stall_minutes`, it says
what the command is waiting for (resources, the tokenized cache, a collective or the first step) and,
with `run.exit_on_stall`, stops the command: it interrupts it as Ctrl-C does (the caller gets
`Stalled`, the CLI exits with code 3), and if the stage does not let go within GRACE_SECONDS it ends
the process with exit code 3 (Ray Train's own Ctrl-C handler waits on its controller, which may
itself be waiting for the resources that never come).
"""

from __future__ import annotations

import _thread
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import ray

from plm_ray.config import Config

GRACE_SECONDS = 30.0  # what a stalled command's stages get to stop after the interrupt
# What must still happen when a stall ends the process (the CLI keeps its logs in the run).
LAST_WORDS: list[Callable[[], None]] = []


_watching: Any = None  # the Progress actor of the command this driver runs now, for heartbeats


def heartbeat(doing: str) -> None:
    """A heartbeat from the driver itself (Tune's callbacks run there). Looked up when called, not
    held: Tune pickles its callbacks into the experiment, and a restored sweep runs under another
    command's monitor."""
    if _watching is not None:
        _watching.beat.remote(doing)


class Stalled(RuntimeError):
    """The command made no progress for run.stall_minutes and run.exit_on_stall is set."""


@ray.remote(num_cpus=0)
class Progress:
    """Lines to print and the latest heartbeat, from every worker and trial."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.last = (time.time(), "starting")

    def say(self, line: str) -> None:
        self.lines.append(line)
        self.beat("running")

    def beat(self, doing: str) -> None:
        self.last = (time.time(), doing)

    def take(self) -> tuple[list[str], tuple[float, str]]:
        lines, self.lines = self.lines, []
        return lines, self.last


class Reporter:
    """A worker's or trial's side: lines to print, and heartbeats at most every `every` seconds."""

    def __init__(self, progress: Any, every: float = 5.0):
        self.progress, self.every, self.sent = progress, every, 0.0

    def say(self, line: str) -> None:
        if self.progress is not None:
            self.progress.say.remote(line)

    def beat(self, doing: str) -> None:
        now = time.time()
        if self.progress is not None and now - self.sent >= self.every:
            self.sent = now
            self.progress.beat.remote(doing)


def _pending_resources() -> str:
    """Placement groups or actors Ray cannot place yet, and what the cluster has free."""
    from ray.util.state import list_actors, list_placement_groups

    groups = list_placement_groups(filters=[("state", "=", "PENDING")], detail=True)
    actors = list_actors(filters=[("state", "=", "PENDING_CREATION")])
    if not groups and not actors:
        return ""
    asks = [str(_field(b, "unit_resources")) for g in groups for b in _field(g, "bundles") or []]
    free = {k: round(v, 2) for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
    waiting = f"{len(groups)} placement group(s) and {len(actors)} actor(s) asking {', '.join(asks) or 'resources'}"
    return f"resources: {waiting}; free now {free}"


def _field(state: Any, name: str) -> Any:
    """A field of a Ray state record (a dict or a dataclass, by Ray version)."""
    return state.get(name) if isinstance(state, dict) else getattr(state, name, None)


class Monitor:
    """The driver's thread: prints what the Progress actor collects, watches for stalls."""

    def __init__(self, cfg: Config, extra: Callable[[], str] = lambda: ""):
        self.progress = Progress.remote()
        self.minutes, self.exit = cfg.run.stall_minutes, cfg.run.exit_on_stall
        self.extra = extra  # what else the command may wait for (the cache build), as a phrase
        self.stalled = ""  # what the last stall waited for
        self.halted = False  # the command was stopped for it (run.exit_on_stall)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Monitor:
        global _watching
        _watching = self.progress
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        global _watching
        _watching = None
        self._stop.set()
        self._thread.join()
        self._print()  # the last lines before the summary, never after it

    def _print(self) -> tuple[float, str]:
        lines, last = ray.get(self.progress.take.remote())
        for line in lines:
            print(line, flush=True)
        return last

    def _watch(self) -> None:
        warned = 0.0
        while not self._stop.wait(1.0):
            at, doing = self._print()
            quiet = time.time() - at
            if not self.minutes or quiet < self.minutes * 60 or at == warned:
                continue
            warned = at
            self.stalled = self.diagnose(doing, quiet)
            print(f"[plm-ray] {self.stalled}", flush=True)
            if self.exit:
                self._halt()
                return

    def _halt(self) -> None:
        """Interrupt the command as Ctrl-C does (Ray Train and Tune stop their runs on SIGINT;
        pipeline.execute then raises Stalled); end the process if that does not end it in time."""
        self.halted = True
        _thread.interrupt_main()
        if self._stop.wait(GRACE_SECONDS):
            return
        print(f"plm-ray: stalled: {self.stalled}", file=sys.stderr, flush=True)
        for last in LAST_WORDS:
            last()
        sys.stdout.flush()
        os._exit(3)

    def diagnose(self, doing: str, quiet: float) -> str:
        waits = _pending_resources() or self.extra()
        if not waits:
            waits = "a collective or a step that does not finish" if doing == "running" else doing
        return f"no progress for {quiet / 60:.1f} min; waiting for {waits}"

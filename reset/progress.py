"""Progress events of long steps, for whoever drives the pipeline.

Steps print human log lines as they go (every step's log keeps them). When RESET_PROGRESS=1 (the
local CLI sets it for its task processes), they also print one machine-readable line per event,

    ##reset {"event": "start", "step": "finetune-mtl"}
    ##reset {"event": "progress", "done": 12, "total": 24, "unit": "steps"}
    ##reset {"event": "end", "step": "finetune-mtl", "seconds": 81.2, "summary": "loss 2.93 -> 1.41"}
    ##reset {"event": "fail", "step": "select", "seconds": 0.3, "error": "SelectionError: ..."}

which the CLI turns into one line per step and a progress bar, while everything else goes to the
step's log file. Without RESET_PROGRESS nothing extra is printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

PREFIX = "##reset "
ENV = "RESET_PROGRESS"


def enabled() -> bool:
    return os.environ.get(ENV) == "1"


def emit(event: str, **fields: Any) -> None:
    """Print one event line (only when RESET_PROGRESS=1)."""
    if not enabled():
        return
    try:
        sys.stdout.write(PREFIX + json.dumps({"event": event, **fields}, default=str) + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):  # the reader is gone (a stopped driver): events are best effort
        pass


def parse(line: str) -> dict[str, Any] | None:
    """The event on a line printed by `emit` (leading whitespace allowed), or None."""
    text = line.strip()
    if not text.startswith(PREFIX):
        return None
    try:
        data = json.loads(text[len(PREFIX):])
    except ValueError:
        return None
    return data if isinstance(data, dict) and "event" in data else None


class Progress:
    """Reports done/total of a long loop, at most every `every_s` seconds (and always at the end)."""

    def __init__(self, total: int, unit: str, label: str = "", every_s: float = 1.0):
        self.total, self.unit, self.label, self.every_s = total, unit, label, every_s
        self._last = 0.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if done >= self.total or now - self._last >= self.every_s:
            self._last = now
            emit("progress", done=done, total=self.total, unit=self.unit, label=self.label)


# ------------------------------------------------------------------------- where a step's time goes
# The phases of the running step (model load, engine start, compute, ...), summed in seconds; the
# step run logs them as `phase.<name>_s` with `step.startup_s` (the process's start to the step's:
# the interpreter, kfp's executor, the imports) and `step.body_s`; bench/profile_run.py tables them.
_PHASES: dict[str, float] = {}


@contextlib.contextmanager
def timed(phase: str) -> Iterator[None]:
    """Add the time the block takes to `phase` of the running step."""
    t0 = time.monotonic()
    try:
        yield
    finally:
        add_phase(phase, time.monotonic() - t0)


def add_phase(phase: str, seconds: float) -> None:
    _PHASES[phase] = _PHASES.get(phase, 0.0) + max(0.0, float(seconds))


def take_phases() -> dict[str, float]:
    """The phases recorded since the last call (and forget them)."""
    out = dict(_PHASES)
    _PHASES.clear()
    return out


def process_age() -> float:
    """Seconds since this process started (Linux: /proc; 0.0 where that cannot be read)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0

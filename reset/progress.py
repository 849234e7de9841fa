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

import json
import os
import sys
import time
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

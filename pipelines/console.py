"""What a local run prints: one line per step as it starts and ends, a progress bar on long steps,
and nothing else. Everything the tasks print (kfp.local's executor dumps, library warnings,
download bars) goes to one log file per task under the run's folder; `--verbose` shows it inline.

kfp.local prints every line of a task's subprocess, and its own log records, to sys.stdout of the
driving process; the Console stands in for sys.stdout / sys.stderr while the pipeline runs, routes
each line to the log of the task that is running ("Executing task 'x'" starts a new one) and
renders the `##reset` progress events (reset.progress) that the steps print.
"""

from __future__ import annotations

import builtins
import io
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from pipelines.tasks import display
from reset import progress

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_EXECUTING = re.compile(r"Executing task '([^']+)'")
TAIL_LINES = 30


def _fmt_secs(s: float) -> str:
    return f"{s:.1f}s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


class Console(io.TextIOBase):
    """A text stream that files task output by task and shows only step lines on `out`."""

    def __init__(self, out: TextIO, log_dir: Path, verbose: bool = False):
        self.out = out
        self.log_dir = log_dir
        self.verbose = verbose
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        log_dir.mkdir(parents=True, exist_ok=True)
        self._all = open(log_dir / "pipeline.log", "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._task = "driver"
        self._task_log: TextIO | None = None
        self._buf = ""
        self._bar = False  # a progress bar is drawn on the current terminal line
        self._last_quarter = -1
        self.steps: dict[str, dict[str, Any]] = {}  # step -> start, seconds, status, summary, error, log
        self.current_step = ""
        self.task_logs: dict[str, Path] = {}
        self.failure: tuple[str, str] = ("", "")  # (step or task, reason), set by failure_report

    # -------------------------------------------------------------------------------- stream API
    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False  # tasks must not draw their own bars or colours into our logs

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def write(self, s: str) -> int:
        self._buf += s
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self._line(line)
        return len(s)

    def flush(self) -> None:
        for fh in (self._all, self._task_log):
            if fh and not fh.closed:
                fh.flush()
        self.out.flush()

    def close(self) -> None:
        if self._buf:
            self._line(self._buf)
            self._buf = ""
        self._end_bar()
        for fh in (self._all, self._task_log):
            if fh and not fh.closed:
                fh.close()

    # ------------------------------------------------------------------------------------ lines
    def _line(self, raw: str) -> None:
        line = _ANSI.sub("", raw)
        m = _EXECUTING.search(line)
        if m:
            self._switch(m.group(1))
        event = progress.parse(line)
        self._all.write(line + "\n")
        if self._task_log:
            self._task_log.write(line + "\n")
        if event is not None:
            self._event(event)
        elif self.verbose:
            self._show(line)

    def _switch(self, task: str) -> None:
        if self._task_log:
            self._task_log.close()
        task = display(task)  # kfp names a task by its component; the log by its step
        self._task = task
        path = self.log_dir / f"{task}.log"
        self.task_logs[task] = path
        self._task_log = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed on the next switch

    def _event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        if kind == "start":
            step = str(ev.get("step"))
            self.current_step = step
            self.steps[step] = {"start": time.monotonic(), "status": "running", "summary": "",
                                "log": self.task_logs.get(self._task), "task": self._task}
            self._last_quarter = -1
            self.say(f"  {step:<15} ...")
        elif kind == "note" and self.current_step in self.steps:
            self.steps[self.current_step]["summary"] = str(ev.get("text", ""))
        elif kind == "progress":
            self._progress(int(ev.get("done", 0)), int(ev.get("total", 0)), str(ev.get("unit", "")),
                           str(ev.get("label", "")))
        elif kind in ("end", "fail"):
            step = str(ev.get("step"))
            info = self.steps.setdefault(step, {"log": self.task_logs.get(self._task), "task": self._task})
            info["seconds"] = float(ev.get("seconds", 0.0))
            info["status"] = "ok" if kind == "end" else "failed"
            if kind == "fail":
                info["error"] = str(ev.get("error", ""))
                self.say(f"x {step:<15} failed after {_fmt_secs(info['seconds'])}: {info['error']}")
            else:
                summary = info.get("summary", "")
                self.say(f"  {step:<15} {_fmt_secs(info['seconds']):>7}  {summary}".rstrip())

    def _progress(self, done: int, total: int, unit: str, label: str) -> None:
        if total <= 0:
            return
        frac = min(1.0, done / total)
        info = self.steps.get(self.current_step, {})
        el = time.monotonic() - info.get("start", time.monotonic())
        eta = el / done * (total - done) if done else 0.0
        what = f"{label} " if label else ""
        text = f"{what}{done}/{total} {unit}"
        if self.tty:
            width = 24
            bar = "#" * int(frac * width) + "." * (width - int(frac * width))
            self.out.write(f"\r    [{bar}] {text}  eta {_fmt_secs(eta)}\x1b[K")
            self.out.flush()
            self._bar = True
        else:  # a log, a CI console: a line at each quarter, not a stream of bars
            quarter = int(frac * 4)
            if quarter > self._last_quarter and 0 < quarter < 4:
                self._last_quarter = quarter
                self.say(f"    {text} ({frac:.0%}, eta {_fmt_secs(eta)})")

    def _end_bar(self) -> None:
        if self._bar:
            self.out.write("\r\x1b[K")
            self._bar = False

    def _show(self, line: str) -> None:
        self._end_bar()
        self.out.write(line + "\n")
        self.out.flush()

    def say(self, text: str) -> None:
        """A line for the user (always shown)."""
        self._end_bar()
        self.out.write(text + "\n")
        self.out.flush()

    # -------------------------------------------------------------------------------- failures
    def failed_step(self) -> str:
        """The step that failed (or the one that was running when the pipeline stopped)."""
        for step, info in self.steps.items():
            if info.get("status") == "failed":
                return step
        running = [s for s, i in self.steps.items() if i.get("status") == "running"]
        return running[-1] if running else ""

    def failure_report(self, error: str) -> list[str]:
        """The failing step, its last TAIL_LINES log lines and the log's path. A task that failed
        before its step began (start-run, say) is named from kfp.local's error, with the last
        exception line of its log as the reason. Sets `failure` to (where, reason)."""
        step = self.failed_step()
        info = self.steps.get(step, {})
        task = "" if step else _failed_task(error)
        log = info.get("log") or self.task_logs.get(task) or self.task_logs.get(self._task) or \
            self.log_dir / "pipeline.log"
        self.flush()
        try:
            lines = Path(log).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            lines = []
        lines = [x for x in lines if progress.parse(x) is None and x.strip()]
        reason = info.get("error") or _last_exception(lines) or _ANSI.sub("", error)
        self.failure = (step or task or info.get("task") or "?", reason)
        out = [f"The pipeline failed in step {self.failure[0]}: {reason}",
               f"--- last {min(TAIL_LINES, len(lines))} lines of {log} ---", *lines[-TAIL_LINES:],
               f"--- full log: {log} (all tasks: {self.log_dir / 'pipeline.log'})"]
        return out


_INNER = re.compile(r"Inner task failed: '([^']+)'")
_EXCEPTION = re.compile(r"^\s*((?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt)\w*: .+)$")


def _failed_task(error: str) -> str:
    """The innermost task kfp.local names in its failure message ("" if none)."""
    m = _INNER.search(_ANSI.sub("", error))
    return display(m.group(1)) if m else ""


def _last_exception(lines: list[str]) -> str:
    """The last "SomeError: message" line of a log (a traceback's last line), or ""."""
    for line in reversed(lines):
        m = _EXCEPTION.match(line)
        if m:
            return m.group(1).strip()[:500]
    return ""


class captured:  # noqa: N801 - used as a context manager: `with captured(console):`
    """Route sys.stdout and sys.stderr (and the warnings module) into a Console; on the way out,
    put back builtins.print too. kfp.local indents a task's output by swapping builtins.print for
    the task and back, from one thread per ParallelFor iteration: two tasks at once can leave it
    swapped, and every later line this process prints (the next pipeline's, the results) indented."""

    def __init__(self, console: Console):
        self.console = console

    def __enter__(self) -> Console:
        self._saved = sys.stdout, sys.stderr, builtins.print
        sys.stdout = sys.stderr = self.console  # type: ignore[assignment]
        return self.console

    def __exit__(self, *exc: object) -> None:
        sys.stdout, sys.stderr, builtins.print = self._saved
        self.console.close()

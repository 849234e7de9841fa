"""Local processes: who runs a local pipeline, whether it is still alive, its descendants, and a
watchdog that stops a task whose driver died.

A process is identified by host, pid, its start time (clock ticks since boot, /proc/<pid>/stat)
and the kernel's boot id, so a pid reused after a crash or a reboot is never mistaken for the
process that wrote the identity. The MLflow runs of a local job carry this identity as tags
(reset.tracking), which is how `python -m pipelines runs cleanup` and the next local run tell a
run whose process died (marked KILLED) from one that is still going.

Linux only (/proc); elsewhere `alive` answers None (unknown) and nothing is marked.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

# The identity of the local driver (the `python -m pipelines run` process), as JSON, in the
# environment of its task processes.
DRIVER_ENV = "RESET_LOCAL_DRIVER"
PROC = Path("/proc")


def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after the command name), or None."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()


def _boot_id() -> str:
    try:
        return (PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return ""


def start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot ("" if unknown)."""
    fields = _stat(pid)
    return fields[19] if fields and len(fields) > 19 else ""


def identity(pid: int | None = None) -> dict[str, str]:
    """{host, pid, start, boot} of process `pid` (default: this one)."""
    pid = os.getpid() if pid is None else pid
    return {"host": socket.gethostname(), "pid": str(pid), "start": start_ticks(pid), "boot": _boot_id()}


def alive(ident: dict[str, str]) -> bool | None:
    """Is the process `ident` names still running? None when it cannot be told from here (another
    host, no /proc, an incomplete identity)."""
    if not ident.get("pid", "").isdigit() or ident.get("host") != socket.gethostname() or not PROC.is_dir():
        return None
    if ident.get("boot") and _boot_id() and ident["boot"] != _boot_id():
        return False  # the machine rebooted since
    fields = _stat(int(ident["pid"]))
    if fields is None or fields[0] in ("Z", "X"):  # gone, or a zombie nobody reaped
        return False
    return not ident.get("start") or fields[19] == ident["start"]


def driver() -> dict[str, str] | None:
    """The local driver's identity from DRIVER_ENV (None outside a local run)."""
    return identity_from_env(DRIVER_ENV)


def identity_from_env(name: str) -> dict[str, str] | None:
    """A process identity (`identity`) that environment variable `name` holds as JSON, or None."""
    raw = os.environ.get(name, "")
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        return None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None


def children_map() -> dict[int, list[int]]:
    """parent pid -> child pids, from /proc."""
    out: dict[int, list[int]] = {}
    for p in PROC.glob("[0-9]*"):
        fields = _stat(int(p.name))
        if fields and len(fields) > 1 and fields[1].isdigit():
            out.setdefault(int(fields[1]), []).append(int(p.name))
    return out


def cmdline(pid: int) -> str:
    """The command line of `pid`, arguments joined by spaces ("" if gone)."""
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def with_identity_in_env(name: str, ident: dict[str, str]) -> list[int]:
    """The running processes (of this user, readable) whose environment names process `ident` in
    variable `name` (as DRIVER_ENV names the driver to its tasks): what a dead driver left behind."""
    out = []
    prefix = f"{name}=".encode()
    for p in PROC.glob("[0-9]*"):
        try:
            env = (p / "environ").read_bytes()
        except OSError:
            continue
        for item in env.split(b"\0"):
            if item.startswith(prefix):
                try:
                    found = json.loads(item[len(prefix):])
                except ValueError:
                    break
                if isinstance(found, dict) and {str(k): str(v) for k, v in found.items()} == ident:
                    out.append(int(p.name))
                break
    return running(out)


def descendants(pid: int, tree: dict[int, list[int]] | None = None) -> list[int]:
    """Every process below `pid` (children first); `tree` from children_map()."""
    tree = children_map() if tree is None else tree
    out: list[int] = []
    todo = list(tree.get(pid, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def running(pids: Iterable[int]) -> list[int]:
    """The pids that are still running (zombies count as gone)."""
    out = []
    for p in pids:
        fields = _stat(p)
        if fields is not None and fields[0] not in ("Z", "X"):
            out.append(p)
    return out


def stop(pids: Iterable[int], grace_s: float = 10.0, sig: int = signal.SIGINT) -> list[int]:
    """Send `sig` to `pids`, wait up to `grace_s` for them to end, then SIGKILL what is left.
    Returns the pids that needed SIGKILL."""
    pids = list(pids)
    for p in pids:
        with contextlib.suppress(OSError):
            os.kill(p, sig)
    deadline = time.monotonic() + grace_s
    while running(pids) and time.monotonic() < deadline:
        _reap(pids)
        time.sleep(0.1)  # polling process exit with a deadline
    left = running(pids)
    for p in left:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)
    _reap(pids)
    return left


def _reap(pids: Iterable[int]) -> None:
    """Collect those of `pids` that are exited children of this process (no zombies left)."""
    for p in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(p, os.WNOHANG)


_watchdog: threading.Thread | None = None


def interruptible() -> bool:
    """Make SIGINT raise KeyboardInterrupt in this process when it was ignored (a process started
    as a background job of a shell inherits SIGINT ignored, and so would every process it starts:
    a Ctrl-C, a stop of the local driver or its watchdog would then not reach the step). Only the
    main thread can change it; True when SIGINT is handled afterwards."""
    try:
        if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, None):
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread
        return signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, None)
    return True


def watch_driver(ident: dict[str, str] | None = None, interval_s: float = 0.25, grace_s: float = 10.0,
                 on_death: Callable[[], None] | None = None) -> bool:
    """In a task process of a local run: when the driver (`ident`, default DRIVER_ENV) dies, stop
    this process as Ctrl-C would (SIGINT, which is made to raise first if it was ignored: the
    step's MLflow run is marked KILLED), and end it after `grace_s` if it does not stop (its step
    run is then marked KILLED by the next run on the store). Started once per process; False when
    there is no driver to watch."""
    global _watchdog
    ident = ident or driver()
    if not ident or alive(ident) is not True or _watchdog is not None:
        return False
    interruptible()

    def interrupt() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(grace_s)
        os._exit(137)

    def loop() -> None:
        while alive(ident) is True:
            time.sleep(interval_s)  # polling the driver's liveness
        with contextlib.suppress(OSError, ValueError):  # its end of our output pipe is gone with it
            print(f"[reset] the local driver (pid {ident.get('pid')}) is gone: stopping this task", flush=True)
        (on_death or interrupt)()

    _watchdog = threading.Thread(target=loop, name="reset-driver-watchdog", daemon=True)
    _watchdog.start()
    return True


# ------------------------------------------------------------------------ a task's quick exit
KFP_EXECUTOR = "kfp.dsl.executor_main"
_quick_exit_armed = False
_uncaught: list[BaseException] = []


def _kfp_task() -> bool:
    """This process is a pipeline task: kfp's executor (`python -m kfp.dsl.executor_main`, locally
    and on a cluster) is its main module."""
    import sys

    main = sys.modules.get("__main__")
    return getattr(getattr(main, "__spec__", None), "name", None) == KFP_EXECUTOR


def quick_exit_after_task() -> bool:
    """Once a step has finished, let its task process skip Python's own teardown: freeing the
    modules and objects of a process that loaded torch took 1.1-1.3 s (measured: the same imports
    and work, then a normal exit against os._exit), paid by every task of every run. At exit,
    everyone's atexit handlers still run first (MLflow's queues and trace export, temporary
    folders), then logging and the standard streams are flushed and the process exits 0. Only in a
    kfp task process, never where the step was called in-process (a test, a notebook); an uncaught
    exception after the step (kfp writing the task's outputs, say) exits as Python would (1)."""
    global _quick_exit_armed
    if _quick_exit_armed or not _kfp_task():
        return False
    import atexit
    import sys

    hook = sys.excepthook

    def noted(kind, value, tb):
        _uncaught.append(value)
        hook(kind, value, tb)

    sys.excepthook = noted
    atexit.register(_quick_exit)  # registered last: runs first, and runs the others itself
    _quick_exit_armed = True
    return True


def _quick_exit() -> None:
    import atexit
    import logging
    import sys

    if _uncaught:
        return  # Python's own exit, with its status
    atexit.unregister(_quick_exit)
    atexit._run_exitfuncs()  # the other handlers, in their own order (last registered first); it reports
    logging.shutdown()  # a failing handler itself and goes on, as Python's exit does
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)

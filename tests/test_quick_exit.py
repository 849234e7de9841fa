"""A task process skips Python's teardown once its step has finished (reset.procs.quick_exit_after_task):
run through kfp's own executor (`python -m kfp.dsl.executor_main`, as kfp.local and a cluster run a
task), the other atexit handlers still run and kfp's outputs are written; a failure after the step
still exits 1; a step called in-process (this test's own process) never arms it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from reset import procs

from .conftest import REPO

COMPONENT = textwrap.dedent('''
    from kfp import dsl

    @dsl.component(base_image="python:3.11")
    def task(out: str, arm: bool = True, fail_after: bool = False) -> str:
        import atexit
        import sys

        from reset import procs

        class Torn:  # finalized by Python's teardown of __main__, not by os._exit
            def __del__(self, _open=open, _path=out + ".teardown"):
                with _open(_path, "w") as fh:
                    fh.write("ran")

        sys.modules["__main__"].torn = Torn()
        atexit.register(lambda: open(out + ".before", "w").write("ran"))  # as MLflow's queues register
        armed = procs.quick_exit_after_task() if arm else False
        atexit.register(lambda: open(out + ".after", "w").write("ran"))
        print("the step's last line")  # a pipe: block-buffered, not yet written
        if fail_after:
            raise RuntimeError("kfp could not write the outputs")
        return str(armed)
''')


def _task(tmp_path: Path, **params) -> tuple[subprocess.CompletedProcess, Path]:
    (tmp_path / "comp.py").write_text(COMPONENT)
    out, output = tmp_path / "x", tmp_path / "executor_output.json"
    executor_input = {"inputs": {"parameterValues": {"out": str(out), **params}},
                      "outputs": {"parameters": {"Output": {"outputFile": str(tmp_path / "Output")}},
                                  "outputFile": str(output)}}
    proc = subprocess.run([sys.executable, "-m", procs.KFP_EXECUTOR, "--component_module_path",
                           str(tmp_path / "comp.py"), "--function_to_execute", "task",
                           "--executor_input", json.dumps(executor_input)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"})
    return proc, out


def _ran(out: Path) -> set[str]:
    return {p.suffix[1:] for p in out.parent.glob(out.name + ".*")}


def test_a_task_exits_0_without_teardown_after_everyones_atexit_handlers(tmp_path):
    proc, out = _task(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "executor_output.json").read_text()) == {"parameterValues": {"Output": "True"}}
    assert "Wrote executor output file" in proc.stdout  # kfp's log, flushed before the exit
    assert "the step's last line" in proc.stdout  # and what was printed
    assert _ran(out) == {"before", "after"}  # every atexit handler ran; Python's teardown did not


def test_without_it_python_tears_down(tmp_path):
    """The control: the same task, not armed, is finalized by Python's teardown."""
    proc, out = _task(tmp_path, arm=False)
    assert proc.returncode == 0, proc.stderr
    assert _ran(out) == {"before", "after", "teardown"}


def test_a_failure_after_the_step_still_exits_1(tmp_path):
    proc, out = _task(tmp_path, fail_after=True)
    assert proc.returncode == 1
    assert "RuntimeError: kfp could not write the outputs" in proc.stderr
    assert not (tmp_path / "executor_output.json").exists()


def test_a_step_called_in_process_never_arms_it():
    assert procs.quick_exit_after_task() is False
    assert not procs._quick_exit_armed

"""The quiet CLI's console: step lines and progress on the terminal, everything else in per-task logs."""

from __future__ import annotations

import io
from pathlib import Path

from pipelines.console import Console, captured
from pipelines.tasks import DISPLAY
from reset import progress


def _ev(event: str, **kw) -> str:
    import json

    return progress.PREFIX + json.dumps({"event": event, **kw}) + "\n"


def test_routes_task_output_to_logs_and_shows_step_lines(tmp_path: Path) -> None:
    DISPLAY.clear()  # no pipeline built here: kfp task names stand as they are
    out = io.StringIO()
    con = Console(out, tmp_path / "logs")
    con.write("19:00:00.1 - INFO - Executing task \x1b[96m'mix-data'\x1b[0m\n")
    con.write("    {\"executorInput\": {}}\n    some warning from a library\n")
    con.write("    " + _ev("start", step="mix"))
    con.write("    " + _ev("note", text="24 train"))
    con.write("    " + _ev("end", step="mix", seconds=1.5))
    con.write("Executing task 'finetune-mtl'\n    " + _ev("start", step="finetune-mtl"))
    for done in range(1, 9):
        con.write("    " + _ev("progress", done=done, total=8, unit="steps"))
    con.write("    [finetune] step 8/8 loss 1.0\n    " + _ev("end", step="finetune-mtl", seconds=70))
    con.close()
    shown = out.getvalue().splitlines()
    assert shown[0].split() == ["mix", "..."]
    assert shown[1].split() == ["mix", "1.5s", "24", "train"]
    assert [x.split()[0] for x in shown[3:6]] == ["2/8", "4/8", "6/8"]  # quarters, not a stream of bars
    assert shown[-1].split()[:2] == ["finetune-mtl", "1m10s"]
    assert "executorInput" not in out.getvalue() and "warning" not in out.getvalue()
    mix_log = (tmp_path / "logs" / "mix-data.log").read_text()
    assert "executorInput" in mix_log and "some warning" in mix_log and "[finetune]" not in mix_log
    assert "[finetune] step 8/8" in (tmp_path / "logs" / "finetune-mtl.log").read_text()
    assert "executorInput" in (tmp_path / "logs" / "pipeline.log").read_text()


def test_verbose_shows_everything_and_failures_report_the_log_tail(tmp_path: Path) -> None:
    DISPLAY.clear()
    out = io.StringIO()
    con = Console(out, tmp_path / "logs", verbose=True)
    con.write("Executing task 'select-samples'\n    " + _ev("start", step="select"))
    for i in range(50):
        con.write(f"    line {i}\n")
    con.write("    " + _ev("fail", step="select", seconds=0.2, error="SelectionError: too few"))
    assert "line 49" in out.getvalue()  # verbose: inline
    report = con.failure_report("Inner task failed: 'select-samples'")
    con.close()
    assert report[0] == "The pipeline failed in step select: SelectionError: too few"
    assert report[-2] == "    line 49" and report[2] == "    line 20"  # the last 30 log lines
    assert str(tmp_path / "logs" / "select-samples.log") in report[-1]


def test_progress_events_only_when_enabled(capsys, monkeypatch) -> None:
    monkeypatch.delenv(progress.ENV, raising=False)
    progress.emit("start", step="x")
    assert capsys.readouterr().out == ""
    monkeypatch.setenv(progress.ENV, "1")
    progress.emit("start", step="x")
    assert progress.parse(capsys.readouterr().out) == {"event": "start", "step": "x"}
    assert progress.parse("plain text") is None and progress.parse(progress.PREFIX + "{not json") is None


def test_a_pipeline_that_leaves_print_swapped_does_not_indent_what_the_driver_prints_next(tmp_path, capsys):
    """kfp.local runs ParallelFor iterations in threads, each task inside logging_utils.indented_print
    (builtins.print swapped for the task, then back). Two tasks interleaved as below leave print
    swapped; the console's capture puts the real one back when the pipeline ends."""
    import builtins
    import threading

    from kfp.local import logging_utils

    real = builtins.print
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def task_a() -> None:
        with logging_utils.indented_print():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def task_b() -> None:
        a_in.wait(10)
        with logging_utils.indented_print():
            b_in.set()
            a_out.wait(10)

    with captured(Console(io.StringIO(), tmp_path / "logs")):
        threads = [threading.Thread(target=t) for t in (task_a, task_b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert builtins.print is not real  # the race: A restored first, B put back A's indented print
    assert builtins.print is real
    capsys.readouterr()
    print("[run] results")
    assert capsys.readouterr().out == "[run] results\n"

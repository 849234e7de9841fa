"""Tasks named by their step (reset/config/steps.py): the display name a task gets is its step's
name, and the name its logs and the console use locally. kfp names a task by its component
(`finetune`, `finetune-2`, ...); DISPLAY maps those names back for kfp.local's messages."""

from __future__ import annotations

from kfp import dsl

DISPLAY: dict[str, str] = {}  # kfp's task name -> the step's name, for the pipelines built in this process


class Tasks(dict[str, dsl.PipelineTask]):
    """The tasks of one pipeline by step name (what the cluster settings and the caching go by).
    Building one starts DISPLAY afresh: a local run builds the pipeline it runs last."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        DISPLAY.clear()

    def add(self, name: str, component, **inputs) -> dsl.PipelineTask:
        task = component(**inputs).set_display_name(name)
        self[name] = task
        DISPLAY[task.name] = name
        return task


def display(task_name: str) -> str:
    """The step name of kfp's task `task_name` (itself when it is not one of ours)."""
    return DISPLAY.get(task_name, task_name)

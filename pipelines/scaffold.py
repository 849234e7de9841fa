"""What every training pipeline (ReSet, experiment) is wrapped in: the exit handler that closes the
MLflow parent run whatever happens, the run's volume on a cluster (created first, deleted after
the last step), and, once the DAG is built, the caching policy and the cluster settings.

    with pipeline_run("reset-steps", tracking, cluster, llm_judges) as run:
        start = run.step("start-run", start_run, ...)      # run.step names a task by its step
        ...
        run.last = reg                                     # the volume is deleted after it
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kfp import dsl

from components import finish_run
from pipelines import cluster as k8s
from pipelines.tasks import Tasks
from reset.config import ClusterConfig


@dataclass
class Run:
    tasks: Tasks
    volume: Any  # the run's PVC name (a pipeline channel) or None
    handoff: dict[str, Any] = field(default_factory=dict)  # what a fine-tuning task needs to hand off its training
    pvc: Any = None
    last: dsl.PipelineTask | None = None

    def step(self, name: str, component, **inputs) -> dsl.PipelineTask:
        task = self.tasks.add(name, component, **inputs)
        if self.pvc is not None and name == "start-run":
            task.after(self.pvc)
        return task


@contextmanager
def pipeline_run(name: str, tracking: dict, cluster: ClusterConfig | None, llm_judges: bool = False) -> Iterator[Run]:
    # The exit handler closes the MLflow parent run whatever happens. An exit task may not depend on
    # other tasks, so it finds the parent run by the KFP run id it was tagged with.
    finish = finish_run(tracking=tracking, kfp_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    tasks = Tasks({"finish-run": finish.set_display_name("finish-run")})
    with dsl.ExitHandler(finish, name=name):
        # the run's volume: the base-model cache, checkpoints and adapters, not KFP artifacts
        pvc, volume = k8s.run_volume(cluster)
        run = Run(tasks, volume, {"run_volume": volume} if k8s.hands_off(cluster) else {}, pvc)
        yield run
        if run.last is not None:
            k8s.delete_volume(cluster, pvc, after=run.last)
    k8s.set_caching(tasks, cluster)
    if cluster is not None:
        k8s.apply(cluster, tasks, volume, llm_judges=llm_judges)

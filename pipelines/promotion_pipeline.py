"""The promotion pipeline, separate from training: one step, `promote` (reset/promotion.py).

    champion and challenger (registry aliases, or a challenger version) re-scored on the frozen
    evaluation set register.promotion_data -> the gate on both axes -> the champion alias moved
    under the promotion lock, only if it still points at the version that was evaluated

Parameters: the config sections it reads (register, evaluate, model, judge, tracking) and
`challenger` (a version number; empty = the challenger alias). `build_promotion_pipeline(cluster)`
applies the cluster settings the training pipeline's steps get (image, resources of
`cluster.resources.promote`, Secrets, timeout, scratch); the models are downloaded to the existing
claim `cluster.storage.claim` when one is configured, else to the step's scratch volume.

    python -m pipelines promote --config C [--challenger 7]                    # locally (kfp.local)
    python -m pipelines promote --config C --host H --namespace NS --wait      # on a cluster
"""

from typing import Any

from kfp import dsl, kubernetes

from components import promote_challenger
from pipelines import cluster as k8s
from reset.config import ClusterConfig, PipelineConfig, to_dict

PIPELINE_NAME = "reset-promotion"
SECTIONS = ("register", "evaluate", "model", "judge", "tracking")


def promotion_arguments(cfg: PipelineConfig, challenger: str = "") -> dict[str, Any]:
    """The promotion pipeline's parameters from a config: its sections, and the challenger."""
    return {**{name: to_dict(getattr(cfg, name)) for name in SECTIONS}, "challenger": str(challenger or "")}


def build_promotion_pipeline(cluster: ClusterConfig | None = None, *, llm_judges: bool = False):
    """The @dsl.pipeline; with `cluster`, Kubernetes settings applied (kfp.local ignores them)."""

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="ReSet promotion: champion vs challenger on a frozen evaluation set; the champion "
                              "alias moves only when the gate passes, one promotion at a time.")
    def reset_promotion(register: dict, evaluate: dict, model: dict, judge: dict, tracking: dict,
                        challenger: str = "") -> dict:
        """Promote the challenger when it is no worse than the champion on both axes.

        Args:
            register: The register config section (JSON): model name, aliases, the gate's margins and
                alpha, promotion_data (the frozen evaluation set) and its sha256.
            evaluate: The evaluate config section (JSON): generation settings of the answers.
            model: The model config section (JSON): token budgets and the system prompt.
            judge: The judge config section (JSON): the judges that score the answers.
            tracking: The tracking config section (JSON): the MLflow server and experiment.
            challenger: The version to promote (empty: the challenger alias).
        """
        task = promote_challenger(
            register=register, evaluate=evaluate, model=model, judge=judge, tracking=tracking, challenger=challenger
        )
        task.set_display_name("promote").set_caching_options(False)  # it moves an alias: never from a cache
        if cluster is not None:
            _apply_cluster(cluster, task, llm_judges=llm_judges)
        return task.outputs["Output"]

    return reset_promotion


def _apply_cluster(cluster: ClusterConfig, task: dsl.PipelineTask, *, llm_judges: bool) -> None:
    """The training pipeline's settings (pipelines/cluster.py: image, resources of
    cluster.resources.promote, Secrets, scratch), and where the models are downloaded: the existing
    claim cluster.storage.claim when one is configured, else the step's scratch volume."""
    k8s.apply(cluster, {"promote": task}, None, llm_judges=llm_judges)
    if cluster.storage.claim:
        kubernetes.mount_pvc(task, pvc_name=cluster.storage.claim, mount_path=cluster.storage.mount_path)
        task.set_env_variable("RESET_CACHE_DIR", f"{cluster.storage.mount_path}/cache")
    else:
        task.set_env_variable("RESET_CACHE_DIR", "/scratch/cache")


def build_for(cfg: PipelineConfig, local: bool = False):
    """The promotion pipeline a config compiles to, with its cluster settings (none locally)."""
    return build_promotion_pipeline(None if local else cfg.cluster, llm_judges=k8s.uses_llm_judges(cfg))

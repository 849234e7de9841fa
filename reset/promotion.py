"""The promotion step: champion and challenger re-scored on one frozen evaluation set, the champion
alias moved only when the gate passes, never by two promotions at once.

    result = promote(cfg, challenger="")      # cfg: the typed config (register, evaluate, model, judge, tracking)

1. The versions: the champion (alias `register.champion_alias`) and the challenger (`challenger`,
   a version number, or the alias `register.challenger_alias`). No champion: the challenger
   becomes champion. The challenger already champion: nothing to do.
2. The frozen set `register.promotion_data` (JSONL of examples, local or s3://), its SHA-256 checked
   against `register.promotion_data_sha256` when that is set and recorded either way.
3. Both versions' plain weights downloaded from the registry (registry.version_checkpoint) and
   answered and scored by the library's evaluation, one model at a time (reset.evaluation.evaluate),
   then paired on the same examples: summarize(rows_by_arm, reference="champion").
4. The gate (reset.evaluation.gate, the rule against a champion): the challenger is non-inferior
   on both primary axes (instruction following, faithfulness) within register.margin_*, and with
   register.champion_superiority also superior on one; answers byte-identical to the champion's
   never pass. This use of the frozen set is counted in the registry first (registry.reserve_test_use),
   so repeated promotions against one set spend alpha (register.alpha_spending).
5. Passed: registry.move_champion, under the promotion lock and only if the champion is still the
   version that was evaluated (compare-and-set); a promotion that lost a race ends "aborted".

Everything is logged to one MLflow run (tag reset.role=promotion) in the tracking experiment: the
versions, the set's digest, every figure with its interval, the gate per axis, the outcome; the
challenger version gets the outcome as tags. Returns the outcome: promoted | kept | aborted |
already-champion.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reset import config as configs
from reset import progress, registry, tracking
from reset.data import storage
from reset.data.records import Example, read_jsonl, write_jsonl
from reset.models import loading

ROLE = "promotion"
STEP = "promote"


def _log(msg: str) -> None:
    print(msg, flush=True)


def frozen_set(rcfg: configs.RegisterConfig, cache_dir: str = "") -> tuple[list[Example], str, str]:
    """(examples, local path, sha256) of register.promotion_data; refuses a changed file."""
    if not rcfg.promotion_data.strip():
        raise configs.ConfigError("register.promotion_data: the promotion pipeline needs a frozen evaluation set "
                            "(a JSONL of examples, local or s3://; e.g. a run's held-out split, copied once)")
    local = storage.fetch(rcfg.promotion_data, Path(cache_dir or storage.default_cache_dir()) / "s3")
    digest = storage.sha256_file(local)
    if rcfg.promotion_data_sha256 and digest != rcfg.promotion_data_sha256:
        raise configs.ConfigError(f"register.promotion_data_sha256: {rcfg.promotion_data} has sha256 {digest}, not the "
                            f"frozen {rcfg.promotion_data_sha256}: the evaluation set changed")
    examples, _ = read_jsonl(local, Example)
    return examples, str(local), digest


def _version(client, rcfg: configs.RegisterConfig, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(rcfg.model_name, alias).version)
    except MlflowException:
        return None


def promote(cfg: configs.PipelineConfig, *, challenger: str = "", out_report: str = "", out_summary: str = "",
            cache_dir: str = "", log: Callable[[str], None] = _log) -> dict[str, Any]:
    import mlflow

    from reset.evaluation import evaluate, flat_metrics, gate, markdown_report, summarize, verdicts
    from reset.evaluation.decision import CHAMPION, rules_from_config
    from reset.evaluation.summary import identical_answers

    rcfg, ecfg, mcfg, jcfg, tcfg = cfg.register, cfg.evaluate, cfg.model, cfg.judge, cfg.tracking
    t0 = time.monotonic()
    progress.emit("start", step=STEP)
    exp = tracking.experiment_id(tcfg)
    client = mlflow.MlflowClient()
    name = rcfg.model_name
    chall = challenger.strip() or _version(client, rcfg, rcfg.challenger_alias)
    if not chall:
        raise ValueError(f"{name}: no version to promote (no @{rcfg.challenger_alias} alias and no challenger given)")
    client.get_model_version(name, chall)  # fails naming the version when it does not exist
    champ = _version(client, rcfg, rcfg.champion_alias)
    cache = Path(cache_dir or storage.default_cache_dir()) / "registry"
    tags = {"reset.role": ROLE, tracking.JOB_TAG: tracking.job_id(""), "reset.model_name": name,
            "reset.challenger_version": chall, "reset.champion_version": champ or ""}
    with mlflow.start_run(experiment_id=exp, run_name=f"promote {name} v{chall}", tags=tags) as run:
        holder = f"promotion run {run.info.run_id}"
        result: dict[str, Any] = {"model_name": name, "challenger_version": chall, "champion_version": champ,
                                  "run_id": run.info.run_id}
        try:
            if champ == chall:
                result.update(outcome="already-champion", reason=f"v{chall} is already @{rcfg.champion_alias}")
            elif champ is None:
                moved, why = registry.move_champion(client, rcfg, chall, expected=None, holder=holder,
                                                    reason=f"no @{rcfg.champion_alias} yet", log=log)
                result.update(outcome="promoted" if moved else "aborted", reason=why)
            else:
                examples, local, digest = frozen_set(rcfg, cache_dir)
                mlflow.set_tags({"reset.promotion_data": rcfg.promotion_data, "reset.promotion_data_sha256": digest})
                log(f"[promote] {name}: champion v{champ} vs challenger v{chall} on {len(examples)} frozen examples "
                    f"({rcfg.promotion_data}, sha256 {digest[:12]})")
                rows: dict[str, list[dict[str, Any]]] = {}
                digests: dict[str, str | None] = {}
                for arm, version in (("champion", champ), ("challenger", chall)):
                    path = registry.version_checkpoint(client, name, version, cache)
                    digests[arm] = loading.weights_digest(path)
                    _, rows[arm] = evaluate(path, examples, ecfg, mcfg, jcfg, model_name=arm, log=log)
                summary = summarize(rows, reference="champion", selection_judges=jcfg.judges,
                                    labels={"champion": f"champion v{champ}", "challenger": f"challenger v{chall}"})
                use = registry.reserve_test_use(rcfg, digest, holder=holder, client=client)
                decision = gate(summary, "challenger", rules_from_config(rcfg, use)[CHAMPION],
                                identical=identical_answers(rows, "champion").get("challenger"),
                                same_weights=digests["champion"] is not None
                                and digests["champion"] == digests["challenger"])
                mlflow.set_tag("reset.test_use", str(use))
                report = markdown_report(summary)
                lines = verdicts(summary)
                mlflow.log_metrics({k: v for k, v in flat_metrics(summary).items()})
                mlflow.log_dict(summary.to_dict(), "summary.json")
                mlflow.log_text(report, "comparison.md")
                mlflow.log_dict({"passed": decision.passed, "reason": decision.reason, "deltas": decision.deltas},
                                "gate.json")
                mlflow.set_tags({f"gate.{k}": v for k, v in decision.tags("vs_champion").items()})
                log("[promote] " + (lines[0] if lines else decision.reason))
                result.update(gate=decision.to_dict(), verdict=lines[0] if lines else "", promotion_data_sha256=digest,
                              summary=summary.to_dict(),
                              report="\n".join(f"**{x}**  " for x in lines) + "\n\n" + report)
                if out_summary:
                    write_jsonl(
                        str(Path(out_summary).with_suffix(".rows.jsonl")),
                        [r for arm_rows in rows.values() for r in arm_rows],
                    )
                if not decision.passed:
                    result.update(outcome="kept", reason=decision.reason)
                else:
                    moved, why = registry.move_champion(
                        client, rcfg, chall, expected=champ, holder=holder, reason=decision.reason, log=log
                    )
                    result.update(outcome="promoted" if moved else "aborted", reason=why)
        except BaseException as exc:
            progress.emit("fail", step=STEP, seconds=time.monotonic() - t0, error=f"{type(exc).__name__}: {exc}"[:300])
            raise
        # the step's outputs exist whatever happened (KFP uploads every declared output)
        report_text, summary_dict = result.pop("report", ""), result.pop("summary", None)
        for out, text in (
            (out_report, f"**{result['outcome']}**: {result['reason']}\n\n{report_text}"),
            (out_summary, json.dumps({**result, "summary": summary_dict}, indent=2, default=str)),
        ):
            if out:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                Path(out).write_text(text)
        mlflow.set_tags({"reset.outcome": result["outcome"], "reset.reason": result["reason"][:5000]})
        mlflow.log_metric("promoted", float(result["outcome"] == "promoted"))
        client.set_model_version_tag(name, chall, "promotion.outcome", result["outcome"])
        client.set_model_version_tag(name, chall, "promotion.reason", result["reason"][:5000])
        client.set_model_version_tag(name, chall, "promotion.run_id", run.info.run_id)
    log(f"[promote] {name} v{chall}: {result['outcome']}: {result['reason']}")
    progress.emit("note", text=f"v{chall} {result['outcome']} ({'vs v' + champ if champ else 'no champion'})")
    progress.emit("end", step=STEP, seconds=time.monotonic() - t0)
    return result


def champion_location(cfg: configs.PipelineConfig) -> dict[str, str]:
    """The champion's version and where its plain weights are (what KServe serves)."""
    import mlflow

    rcfg, tcfg = cfg.register, cfg.tracking
    client = mlflow.MlflowClient(tracking_uri=tracking.resolve_uri(tcfg))  # a read: no experiment created
    version = _version(client, rcfg, rcfg.champion_alias)
    if version is None:
        raise ValueError(f"{rcfg.model_name} has no @{rcfg.champion_alias} in {tracking.resolve_uri(tcfg)}")
    mv = client.get_model_version(rcfg.model_name, version)
    weights = (mv.tags or {}).get(registry.WEIGHTS_TAG, "")
    if not weights:
        raise ValueError(
            f"{rcfg.model_name} v{version} has no {registry.WEIGHTS_TAG} tag: it was registered before "
            "models were exported to S3; register it again (its weights are in the MLflow artifact store)"
        )
    return {"model_name": rcfg.model_name, "version": version, "source": mv.source, "weights_uri": weights}

"""The pipeline's steps as plain functions over files and config sections (dicts, as KFP passes
them). Each step validates its config, reads its inputs, calls the method module, writes its
outputs and logs a child MLflow run. The KFP components in components/ are one call to these;
a step can be run and debugged alone from Python with local paths.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reset import config as C
from reset import preflight, progress, tracking
from reset.data.records import Candidate, Example, Judgment, read_jsonl, write_jsonl
from reset.models import loading as modeling

Section = Mapping[str, Any] | None


def _log(msg: str) -> None:
    print(msg, flush=True)


def _note(text: str) -> None:
    """The one-line summary the CLI shows when the step ends."""
    progress.emit("note", text=text)


def _by_kind(rep: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for group, g in rep["per_group"].items():
        kind = group.rsplit("/", 1)[-1]
        acc = out.setdefault(kind, {"kept": 0, "prompts": 0})
        acc["kept"] += g["kept"]
        acc["prompts"] += g["prompts"]
    return out


def _tracking(d: Section) -> C.TrackingConfig:
    return C.section(C.TrackingConfig, dict(d or {}), "tracking")


def _read(path: str, cls):
    rows, _ = read_jsonl(path, cls)  # step-to-step files are ours: any bad row is a bug, so fail
    return rows


def _metric_name(name: str) -> str:
    """MLflow accepts letters, digits, _ - . space / : only; source names are free text."""
    return re.sub(r"[^\w\-. /:]", "_", name)


def _metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries, for mlflow.log_metrics; counts stay integers (MLflow shows 240, not 240.0)."""
    return {k: v for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}


# --------------------------------------------------------------------------------------------- steps
def start_run(tracking_cfg: Section, pipeline_config: Mapping[str, Any], job_id: str,
              tags: Mapping[str, str] | None = None) -> str:
    """Create the parent run of the pipeline job `job_id` (validating the whole config first). The
    first task of a cluster run also runs the preflight checks (the local CLI ran them already)."""
    whole = C.validate(C.PipelineConfig, dict(pipeline_config))  # fail fast, naming the bad key
    if os.environ.get(preflight.ENV) != "done":
        preflight.run(whole, where="cluster")  # PreflightError: one line per problem, nothing started
    cfg = _tracking(tracking_cfg)
    cfg = cfg.model_copy(update={"run_name": cfg.run_name or run_title(whole)})
    run_id = tracking.start_parent(cfg, pipeline_config, {**(tags or {}), tracking.JOB_TAG: job_id})
    _log(f"[mlflow] parent run {run_id} at {tracking.resolve_uri(cfg)} (experiment {cfg.experiment!r})")
    return run_id


def run_title(cfg: C.PipelineConfig, when: float | None = None) -> str:
    """A parent-run name that says what ran: 'ReSet · smollm2-135m-instruct · 192 train · 11-24 19:40'."""
    base = cfg.model.base.rstrip("/").split("/")[-1].removeprefix("builtin:")
    size = f"{cfg.data.train_size} train" if cfg.data.train_size else "all data"
    mode = "ReSet-S" if cfg.select.mode == "reset-s" else "ReSet"
    return f"{mode} · {base} · {size} · {time.strftime('%m-%d %H:%M', time.localtime(when))}"


def write_sections(path: str, config: Mapping[str, Any]) -> None:
    """The effective config sections as one JSON file (start-run's `sections` artifact)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(dict(config), indent=2, sort_keys=True, default=str), encoding="utf-8")


def read_sections(path: str) -> dict[str, Any]:
    """The sections `write_sections` wrote."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not the run's config sections (start-run's sections artifact): {exc}") from exc


def finish_run(tracking_cfg: Section, job_id: str) -> str:
    """Close the parent run of pipeline job `job_id`; "NONE" when the job failed before creating it."""
    cfg = _tracking(tracking_cfg)
    parent = tracking.find_parent(cfg, job_id)
    if parent is None:
        _log(f"[mlflow] no parent run for job {job_id}: the pipeline failed before it started")
        return "NONE"
    status = tracking.finish_parent(cfg, parent)
    _log(f"[mlflow] parent run {parent}: {status}")
    return status


def mix(data: Section, tracking_cfg: Section, parent_run_id: str, *, out_train: str, out_dev: str, out_test: str,
        out_seen: str, out_rejected: str, cache_dir: str = "", model: Section = None,
        out_card: str = "") -> dict[str, Any]:
    """Read every data source (any published format; local, s3:// or hf://), mix, write the
    splits and the quarantine, and the data card (Markdown to `out_card` when given; Markdown,
    HTML and JSON to MLflow). `model` gives the tokenizer and the limits the card measures against."""
    from reset.data import card as K
    from reset.data import mix as M

    cfg = C.section(C.DataConfig, dict(data or {}), "data")
    mcfg = C.section(C.ModelConfig, dict(model or {}), "model")
    with tracking.step_run(_tracking(tracking_cfg), parent_run_id, "mix", cfg.model_dump()):
        import mlflow

        meter = length_meter(mcfg, cache_dir)
        _log(f"[mix] lengths in {meter.unit}: {meter.note}")
        report = M.mix_to_files(cfg, out_train=out_train, out_dev=out_dev, out_test=out_test, out_seen=out_seen,
                                out_rejected=out_rejected, meter=meter, cache_dir=cache_dir, title="mix")
        for rep in report.sources:
            _log(f"[mix] {rep.path}: {rep.format}, {rep.rows} rows, {rep.kept} examples kept, "
                 f"{sum(rep.rejected.values())} not kept {rep.rejected or ''}")
        stats = report.stats
        _log(f"[mix] {json.dumps(stats)}")
        _note(f"{stats['train']} train, {stats['dev']} dev, {stats['test']} test, {stats['seen_prompts']} seen "
              f"prompts, {stats['rejected']} rejected")
        for r in report.quarantine.first[:10]:
            _log(f"[mix] rejected {r}")
        card = report.card
        markdown = K.to_markdown(card)
        if out_card:
            Path(out_card).parent.mkdir(parents=True, exist_ok=True)
            Path(out_card).write_text(markdown, encoding="utf-8")
        mlflow.log_metrics(_metrics(stats))
        mlflow.log_metrics({_metric_name(k): v for k, v in K.flat_metrics(card).items()})
        mlflow.log_artifact(out_rejected, "quarantine")
        mlflow.log_text(markdown, "data_card/data_card.md")
        mlflow.log_text(K.to_html(card), "data_card/data_card.html")
        mlflow.log_dict(card, "data_card/data_card.json")
        for rep in report.sources:
            for f in rep.files or [{"file": rep.path, "digest": "", "bytes": 0}]:
                _log_input(_meta_dataset(f["file"], rep.name, f["digest"]), context="source",
                                 tags={"format": rep.format, "slot": rep.slot})
        for name, out in report.outputs.items():
            _log_input(_meta_dataset(out["path"], "seen_prompts" if name == "seen" else name, out["digest"]),
                             context="seen_prompts" if name == "seen" else name, tags={"rows": str(out["rows"])})
        test_digest = report.outputs["test"]["digest"]
        stats["test_digest"] = test_digest
        _log(f"[mix] test split: {report.outputs['test']['rows']} rows, sha256 {test_digest} (frozen: read only by "
             "the final evaluation and the gate)")
        parent = mlflow.active_run().data.tags.get("mlflow.parentRunId", "")
        if parent:
            mlflow.MlflowClient().set_tag(parent, TEST_DIGEST_TAG, test_digest)
        mlflow.set_tag(TEST_DIGEST_TAG, test_digest)
    return stats


TEST_DIGEST_TAG = "reset.test_digest"  # the parent run's, the mix run's and the registered version's tag

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "chat_template.jinja", "config.json")


def _tokenizer(ref: str, cache_dir: str):
    """The tokenizer of model `ref` alone: an s3:// model's tokenizer files are fetched without its
    weights; builtin and local models are resolved as the other steps resolve them."""
    import shutil
    import tempfile

    from reset.data import storage

    if not storage.is_s3(ref):
        return modeling.load_tokenizer(modeling.resolve_model(ref, cache_dir))
    base = Path(cache_dir or storage.default_cache_dir())
    local = Path(tempfile.mkdtemp(prefix="tokenizer-", dir=base if base.exists() else None))
    found, first_error = [], ""
    for name in TOKENIZER_FILES:
        try:
            path = storage.fetch(f"{ref.rstrip('/')}/{name}", base / "s3")
        except Exception as exc:  # noqa: BLE001 - a tokenizer has some of these files, never all
            first_error = first_error or str(exc)
            continue
        shutil.copy(path, local / name)
        found.append(name)
    if not any(n != "config.json" for n in found):
        raise FileNotFoundError(f"no tokenizer files under {ref} ({first_error})")
    return modeling.load_tokenizer(local)


def length_meter(mcfg: C.ModelConfig, cache_dir: str = ""):
    """Lengths in tokens of the base model's tokenizer, through the chat template the training
    and generation steps use; whitespace words, with the reason, where it cannot be loaded."""
    from reset.data.card import LengthMeter, whitespace_meter
    from reset.models import chat

    try:
        tok = _tokenizer(mcfg.base, mcfg.cache_dir or cache_dir)
    except Exception as exc:  # noqa: BLE001 - any failure means: count words, and say why
        return whitespace_meter(mcfg.max_length, mcfg.max_prompt_length, f"{type(exc).__name__}: {exc}"[:300])
    system = mcfg.system_prompt
    cut = 64 * max(mcfg.max_length, mcfg.max_prompt_length)  # characters; bounds the tokenizer's work

    def bounded(ex: Example) -> Example:
        return Example(ex.id, ex.source, ex.kind, ex.instruction[:cut], ex.response[:cut],
                       ex.context[-cut:] if ex.context else None, ex.task)

    def render_each(ex: Example) -> tuple[str, str]:
        msgs = chat.messages(bounded(ex), system)
        prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": ex.response[:cut]}], tokenize=False)
        return prompt, full[len(prompt):].rstrip("\n") if full.startswith(prompt) else ex.response[:cut]

    # Templates put the user's text and the response in as they are: render once around markers and
    # fill them in (about 100x faster than a Jinja rendering per example); probes check that this
    # gives the same text as rendering each, else each is rendered.
    user_mark, reply_mark = "\x00USER\x00", "\x00REPLY\x00"
    head = [{"role": "system", "content": system}] if system else []
    p_tpl = tok.apply_chat_template(head + [{"role": "user", "content": user_mark}], add_generation_prompt=True,
                                    tokenize=False)
    f_tpl = tok.apply_chat_template(head + [{"role": "user", "content": user_mark},
                                            {"role": "assistant", "content": reply_mark}], tokenize=False)
    parts = None
    if p_tpl.count(user_mark) == 1 and f_tpl.startswith(p_tpl) and f_tpl[len(p_tpl):].count(reply_mark) == 1:
        parts = (*p_tpl.split(user_mark), *f_tpl[len(p_tpl):].split(reply_mark))

    def render_fast(ex: Example) -> tuple[str, str]:
        b = bounded(ex)
        user = chat.messages(b, "")[-1]["content"]
        return parts[0] + user + parts[1], (parts[2] + b.response + parts[3]).rstrip("\n")

    probes = [Example("p", "p", "grounded", "Name the city.  ", " It is Oslo. ", "Ann lives in Oslo.\n", "extractive"),
              Example("q", "q", "instruction", "Write one line.", "A line.", None)]
    render = render_fast if parts and all(render_fast(e) == render_each(e) for e in probes) else render_each

    def measure(examples):
        out = []
        for start in range(0, len(examples), 256):  # bounded batches: the tokenizer's buffers stay small
            pairs = [render(ex) for ex in examples[start:start + 256]]
            p = tok([a for a, _ in pairs], add_special_tokens=False)["input_ids"]
            c = tok([b for _, b in pairs], add_special_tokens=False)["input_ids"]
            out += [(len(x), len(x) + len(y)) for x, y in zip(p, c, strict=True)]
        return out

    probe = Example("x", "x", "grounded", "x", "z", "y", "extractive")
    prompt, completion = render(probe)
    overhead = len((prompt + completion).encode("utf-8")) - 3
    return LengthMeter("tokens", f"the tokenizer of {mcfg.base} (chat template included)", measure,
                       mcfg.max_length, mcfg.max_prompt_length, overhead)


def _digest(path: str) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _log_input(dataset, **kwargs) -> None:
    """mlflow.log_input, once more when another run inserted the same dataset (same experiment,
    name and digest) between MLflow's lookup and its insert: two runs of one pipeline at once on
    one store race there, and the second try finds the row and links to it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    for attempt in range(3):
        try:
            mlflow.log_input(dataset, **kwargs)
            return
        except MlflowException as e:
            if "UNIQUE constraint" not in str(e) and "duplicate key" not in str(e) or attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))


def _meta_dataset(uri: str, name: str, digest: str):
    """An MLflow dataset that records where data came from and its content digest (no copy)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.exceptions import MlflowException

    if uri.startswith("builtin:"):
        source = CodeDatasetSource({"reset.builtin": uri})
    elif uri.startswith("hf://datasets/"):
        source = HTTPDatasetSource(f"https://huggingface.co/datasets/{uri.removeprefix('hf://datasets/')}")
    else:
        try:
            source = resolve_dataset_source(uri if "://" in uri else os.path.abspath(uri))
        except MlflowException:  # a scheme MLflow has no source type for
            source = HTTPDatasetSource(uri)
    return MetaDataset(source, name=name, digest=(digest or "")[:16] or None)


def finetune(model: str | None, train_path: str, train: Section, model_cfg: Section, tracking_cfg: Section,
             parent_run_id: str, *, stage: str, out_dir: str, kinds: Sequence[str] = (),
             section: str = "") -> dict[str, Any]:
    """stage "mtl" (or another arm trained from the base model): `model` is None (the configured
    base model, model.base) or a model reference; stage "reset" (or another continued arm): the
    checkpoint it continues. `kinds` keeps only examples of those kinds (an experiment arm on the IF
    or the CD half); `section` names the config section in errors (default: continued_train for
    stage reset, else train)."""
    from reset.models.finetune import finetune as run_finetune

    section = section or ("continued_train" if stage == "reset" else "train")
    tcfg = C.section(C.TrainConfig, dict(train or {}), section)
    mcfg = C.section(C.ModelConfig, dict(model_cfg or {}), "model")
    examples = _read(train_path, Example)
    if kinds:
        examples = [e for e in examples if e.kind in kinds]
        if not examples:
            raise ValueError(f"finetune-{stage}: {train_path} holds no {' / '.join(kinds)} examples")
    with tracking.step_run(_tracking(tracking_cfg), parent_run_id, f"finetune-{stage}",
                           {"stage": stage, "train": tcfg.model_dump(), "model": mcfg.model_dump()}):
        import mlflow

        model = model or mcfg.base  # a reference, a model directory or a LoRA checkpoint (resolved there)
        metrics = run_finetune(
            model, examples, out_dir, tcfg, mcfg,
            provenance={"stage": stage, "source_model": model, "train_examples": len(examples)},
            log=_log, on_step=lambda step, loss: mlflow.log_metric("loss", loss, step=step),
        )
        mlflow.log_metrics(_metrics({k: v for k, v in metrics.items() if k != "loss_history"}))
        mlflow.log_dict(modeling.read_provenance(out_dir), "provenance.json")
        _log_input(_meta_dataset(train_path, "train" if section == "train" else "selected",
                                       _digest(train_path)), context="training")
        check = loss_check(metrics)
        mlflow.set_tag("reset.loss_check", check)
        _log(f"[finetune] loss check: {check}")
        _note(f"{metrics['steps']} steps on {metrics['examples']} examples, loss {metrics['first_loss']:.2f} -> "
              f"{metrics['final_loss']:.2f}, {metrics['tokens'] / max(metrics['seconds'], 1e-9):.0f} tokens/s")
    return metrics


def loss_check(metrics: Mapping[str, Any], min_drop: float = 0.1) -> str:
    """Did the model learn? 'ok' when the final loss (mean of the last fifth of the steps) is at
    least `min_drop` (relative) below the first step's, else a warning with the figures."""
    first, final = float(metrics["first_loss"]), float(metrics["final_loss"])
    drop = (first - final) / first if first > 0 else 0.0
    verdict = "ok" if drop >= min_drop else "warning: the loss barely moved"
    return f"{verdict}: {first:.3f} -> {final:.3f} ({-drop:+.0%}) over {metrics['steps']} steps"


def shard_step(step: str, shard: int, shards: int) -> str:
    """The name a shard of a step runs under (its MLflow run, its console line): generate-2of4."""
    return step if shards <= 1 else f"{step}-{shard + 1}of{shards}"


def generate(model_dir: str, seen_path: str, generate_cfg: Section, model_cfg: Section, tracking_cfg: Section,
             parent_run_id: str, *, out_candidates: str, shard: int = 0, shards: int = 1) -> dict[str, Any]:
    """Sample candidates for the seen prompts (or for shard `shard` of `shards` contiguous pieces of
    them: the same candidates, with the same seeds, as the unsharded step gives those prompts)."""
    from reset.data.shards import bounds, ordered
    from reset.models.generation import run as run_generate

    gcfg = C.section(C.GenerateConfig, dict(generate_cfg or {}), "generate")
    mcfg = C.section(C.ModelConfig, dict(model_cfg or {}), "model")
    examples = _read(seen_path, Example)
    lo, hi = bounds(len(examples), shard, shards)
    examples = examples[lo:hi]
    with tracking.step_run(_tracking(tracking_cfg), parent_run_id, shard_step("generate", shard, shards),
                           gcfg.model_dump()):
        import mlflow

        t0 = time.time()
        if shards > 1:
            _log(f"[generate] shard {shard + 1} of {shards}: seen prompts {lo}..{hi - 1}")
        result = run_generate(model_dir, examples, gcfg, mcfg, model_name="mtl", log=_log, offset=lo)
        cands = result.candidates
        if gcfg.include_reference:
            cands += [Candidate(id=f"{e.id}/ref", example_id=e.id, text=e.response,
                                decoding={"strategy": "reference"}, model="reference", is_reference=True)
                      for e in examples]
            cands = ordered(cands, [e.id for e in examples], lambda c: c.example_id, lambda c: c.id)
        write_jsonl(out_candidates, cands)
        secs = time.time() - t0
        gen = result.stats
        stats = {"prompts": len(examples), "candidates": len(cands), "seconds": secs,
                 "samples_per_second": len(cands) / secs if secs else 0.0,
                 "empty_candidates": sum(1 for c in cands if not c.text.strip()),
                 "engine_start_seconds": gen.get("engine_start_s", 0.0),
                 "generate_seconds": gen.get("generate_s", 0.0), "output_tokens": gen.get("output_tokens", 0),
                 "tokens_per_second": gen.get("tokens_per_s", 0.0), "prompts_cut": gen.get("prompts_cut", 0)}
        mlflow.log_metrics(_metrics(stats))
        mlflow.set_tags({"generate.backend": gen.get("backend", ""),
                         **({"generate.fallback_reason": gen["fallback_reason"]} if "fallback_reason" in gen else {})})
        _note(f"{len(cands)} candidates for {len(examples)} prompts with {gen.get('backend')} "
              f"({stats['tokens_per_second']:.0f} tokens/s, engine start {stats['engine_start_seconds']:.0f}s)")
    return stats


def judge(seen_path: str, candidates_path: str, judge_cfg: Section, tracking_cfg: Section, parent_run_id: str,
          *, out_judgments: str, cache_dir: str = "", shard: int = 0, shards: int = 1) -> dict[str, Any]:
    """Judge the candidates in `candidates_path` (a shard's, when generation was sharded: `shard`
    and `shards` only name the run)."""
    from reset.judging import build_judges, close_judges
    from reset.judging import judge as run_judge
    from reset.judging.gates import gate_flags

    jcfg = C.section(C.JudgeConfig, dict(judge_cfg or {}), "judge")
    examples = _read(seen_path, Example)
    cands = _read(candidates_path, Candidate)
    with tracking.step_run(_tracking(tracking_cfg), parent_run_id, shard_step("judge", shard, shards),
                           jcfg.model_dump()):
        import mlflow

        judges = build_judges(jcfg, cache_dir)
        _log(f"[judge] {len(cands)} candidates, judges: {', '.join(f'{j.name} ({j.axis})' for j in judges)}")
        try:
            judgments = run_judge(examples, cands, jcfg.weights, judges, jcfg.judge_weights)
            by_ex, by_c = {e.id: e for e in examples}, {c.id: c for c in cands}
            for j in judgments:  # the facts selection gates on (reset.judging.gates)
                j.details["gates"] = gate_flags(by_ex[j.example_id], by_c[j.candidate_id].text)
        finally:  # LLM judges: requests, retries, cache hits, tokens, cost (once per shared ledger)
            close_judges(judges)
            logged: set[int] = set()
            for j in judges:
                stats = getattr(j, "stats", None)
                ledger = id(getattr(j, "ledger", j))
                if callable(stats) and ledger not in logged:
                    logged.add(ledger)
                    values = _metrics(stats())
                    mlflow.log_metrics({f"llm.{k}": v for k, v in values.items()})
                    _log(f"[judge] LLM judge: {json.dumps(values)}")
        write_jsonl(out_judgments, judgments)
        stats = _axis_means(judgments)
        stats["judgments"] = len(judgments)
        _log(f"[judge] {json.dumps({k: round(v, 4) for k, v in stats.items()})}")
        _note(f"{len(judgments)} judged by {', '.join(j.name for j in judges)}; mean score {stats['mean_combined']:.3f}")
        mlflow.log_metrics(_metrics(stats))
        by_ex = {e.id: e for e in examples}
        by_c = {c.id: c for c in cands}
        table = {
            "example_id": [j.example_id for j in judgments],
            "candidate_id": [j.candidate_id for j in judgments],
            "source": [by_ex[j.example_id].source for j in judgments],
            "kind": [by_ex[j.example_id].kind for j in judgments],
            "instruction": [by_ex[j.example_id].instruction for j in judgments],
            "response": [by_c[j.candidate_id].text for j in judgments],
            "strategy": [str(by_c[j.candidate_id].decoding.get("strategy")) for j in judgments],
            "temperature": [by_c[j.candidate_id].decoding.get("temperature") for j in judgments],
            **{f"score_{a}": [j.scores.get(a) for j in judgments] for a in ("instruction", "faithfulness", "task")},
            **{f"judge_{n.name}": [j.details["by_judge"].get(n.name) for j in judgments] for n in judges},
            "combined": [j.combined for j in judgments],
            "rationale": [j.rationale for j in judgments],
        }
        mlflow.log_table(table, artifact_file="judged_samples.json")
    return stats


def _axis_means(judgments: list[Judgment]) -> dict[str, float]:
    out = {}
    for axis in ("instruction", "faithfulness", "task"):
        vals = [j.scores[axis] for j in judgments if j.scores.get(axis) is not None]
        if vals:
            out[f"mean_{axis}"] = sum(vals) / len(vals)
    out["mean_combined"] = sum(j.combined for j in judgments) / len(judgments) if judgments else 0.0
    return out



def gather(seen_path: str, candidate_paths: Sequence[str], judgment_paths: Sequence[str], *, out_candidates: str,
           out_judgments: str) -> dict[str, Any]:
    """The shards' candidates and judgments as one set each, in the unsharded step's order (seen
    prompt, then id); every seen prompt must have its candidates, none twice."""
    from reset.data.shards import ordered

    ids = [e.id for e in _read(seen_path, Example)]
    cands = ordered([c for p in candidate_paths for c in _read(p, Candidate)], ids,
                    lambda c: c.example_id, lambda c: c.id)
    judgments = ordered([j for p in judgment_paths for j in _read(p, Judgment)], ids,
                        lambda j: j.example_id, lambda j: j.candidate_id)
    missing = sorted(set(ids) - {c.example_id for c in cands})
    if missing:
        raise ValueError(f"no candidates for {len(missing)} seen prompts after gathering {len(candidate_paths)} "
                         f"shards (first: {missing[0]!r})")
    if {j.candidate_id for j in judgments} != {c.id for c in cands}:
        raise ValueError("the gathered judgments do not cover exactly the gathered candidates")
    write_jsonl(out_candidates, cands)
    write_jsonl(out_judgments, judgments)
    _log(f"[gather] {len(candidate_paths)} shards: {len(cands)} candidates, {len(judgments)} judgments")
    return {"shards": len(candidate_paths), "candidates": len(cands), "judgments": len(judgments)}

def select(seen_path: str, candidates_path: str, judgments_path: str, select_cfg: Section, tracking_cfg: Section,
           parent_run_id: str, *, out_selected: str, generate_cfg: Section = None, name: str = "select",
           out_report: str = "") -> dict[str, Any]:
    """Reject sampling over the judged candidates; with `generate_cfg`, only over the candidates a
    generation with that config would have sampled (an arm that shares a larger generation)."""
    from reset.selection import sampled_by
    from reset.selection import select as run_select

    scfg = C.section(C.SelectConfig, dict(select_cfg or {}), "select")
    examples = _read(seen_path, Example)
    cands = _read(candidates_path, Candidate)
    judgments = _read(judgments_path, Judgment)
    if generate_cfg is not None:
        mine = sampled_by(cands, C.section(C.GenerateConfig, dict(generate_cfg), "generate"))
        _log(f"[select] {len(mine)} of the {len(cands)} shared candidates are this arm's sampling plan")
        ids = {c.id for c in mine}
        cands, judgments = mine, [j for j in judgments if j.candidate_id in ids]
    with tracking.step_run(_tracking(tracking_cfg), parent_run_id, name, scfg.model_dump()):
        import mlflow

        sel = run_select(examples, cands, judgments, scfg)
        write_jsonl(out_selected, sel.examples)
        rep = sel.report
        _log(f"[select] mode {rep['mode']}: kept {rep['selected']}/{rep['prompts']} prompts "
             f"(keep rate {rep['keep_rate']:.2f}, mean score {rep['mean_selected_score']:.3f})")
        for group, g in rep["per_group"].items():
            _log(f"[select]   {group}: {g['kept']}/{g['prompts']} kept")
            mlflow.log_metric(_metric_name(f"keep_rate.{group.replace('/', '.')}"), g["keep_rate"])
        for task, g in rep["per_task"].items():
            _log(f"[select]   task {task}: {g['kept']}/{g['prompts']} kept")
            mlflow.log_metric(_metric_name(f"keep_rate.task.{task}"), g["keep_rate"])
        for fam, g in rep.get("per_family", {}).items():
            _log(f"[select]   constraint family {fam}: {g['kept']}/{g['prompts']} kept")
            mlflow.log_metric(_metric_name(f"keep_rate.family.{fam}"), g["keep_rate"])
        for gate_name, n in rep.get("gated_out", {}).items():
            _log(f"[select]   gate {gate_name}: {n} candidates failed it")
            mlflow.log_metric(_metric_name(f"gated_out.{gate_name}"), n)
        mlflow.log_metrics(_metrics(rep))
        ranks = rep.pop("ranks", {})
        mlflow.log_dict(rep, "selection_report.json")
        if out_report:  # the keep rates, for the evaluate step's report
            Path(out_report).parent.mkdir(parents=True, exist_ok=True)
            Path(out_report).write_text(json.dumps(rep, indent=2, default=str))
        rep["ranks"] = ranks
        mlflow.log_table(_judged_table(examples, cands, judgments, ranks), artifact_file="judged_samples.json")
        kinds = ", ".join(f"{k} {g['kept']}/{g['prompts']}" for k, g in _by_kind(rep).items())
        _note(f"kept {rep['selected']}/{rep['prompts']} prompts ({kinds}), mean score {rep['mean_selected_score']:.3f}")
    return rep


def _judged_table(examples, cands, judgments, ranks: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Every judged candidate with its scores, gates, rank within its prompt and whether it was selected."""
    by_ex, by_c = {e.id: e for e in examples}, {c.id: c for c in cands}
    rows = sorted(judgments, key=lambda j: (j.example_id, ranks.get(j.candidate_id, {}).get("rank", 0)))
    gates = sorted({g for j in rows for g in j.details.get("gates", {})})
    return {
        "example_id": [j.example_id for j in rows],
        "candidate_id": [j.candidate_id for j in rows],
        "kind": [by_ex[j.example_id].kind for j in rows],
        "task": [by_ex[j.example_id].task for j in rows],
        "instruction": [by_ex[j.example_id].instruction for j in rows],
        "response": [by_c[j.candidate_id].text for j in rows],
        "temperature": [by_c[j.candidate_id].decoding.get("temperature") for j in rows],
        **{f"score_{a}": [j.scores.get(a) for j in rows] for a in ("instruction", "faithfulness", "task")},
        **{f"gate_{g}": [j.details.get("gates", {}).get(g) for j in rows] for g in gates},
        "combined": [j.combined for j in rows],
        "rank": [ranks.get(j.candidate_id, {}).get("rank") for j in rows],
        "selected": [bool(ranks.get(j.candidate_id, {}).get("selected")) for j in rows],
    }


def _read_rows(path: str) -> list[dict[str, Any]]:
    """Evaluation rows (JSONL of dicts, as `evaluate_answers` writes them)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _models_to_evaluate(models: Mapping[str, str], mcfg, rcfg, include_base: bool, tmp: str) -> tuple[dict, Any]:
    """The configured base model ("base"), `models`, and the registry's current champion
    ("champion", downloaded under `tmp`) when register.compare_champion: (models, its version)."""
    from reset.registry import champion_checkpoint

    models = {"base": mcfg.base, **models} if include_base else dict(models)
    champion_version = None
    if rcfg is not None and rcfg.compare_champion:
        found = champion_checkpoint(rcfg, tmp)
        if found:
            champion_version, path = found
            models["champion"] = str(path)
            _log(f"[evaluate] also re-scoring the current champion, {rcfg.model_name} v{champion_version}")
    return models, champion_version


def evaluate_answers(models: Mapping[str, str], eval_path: str, evaluate_cfg: Section, model_cfg: Section,
                     judge_cfg: Section, tracking_cfg: Section, parent_run_id: str, *, out_rows: str,
                     register_cfg: Section = None, include_base: bool = True, shard: int = 0,
                     shards: int = 1, dev_path: str = "") -> dict[str, Any]:
    """One shard of the evaluation: every model's greedy answers to shard `shard` of `shards`
    contiguous pieces of the held-out set, scored, one row per (model, example) to `out_rows`
    (the champion's rows carry its registry version). `evaluate(..., rows_paths=...)` gathers them."""
    import tempfile

    from reset.data.shards import bounds
    from reset.evaluation import evaluate_models

    ecfg = C.section(C.EvaluateConfig, dict(evaluate_cfg or {}), "evaluate")
    mcfg = C.section(C.ModelConfig, dict(model_cfg or {}), "model")
    jcfg = C.section(C.JudgeConfig, dict(judge_cfg or {}), "judge")
    rcfg = C.section(C.RegisterConfig, dict(register_cfg or {}), "register") if register_cfg is not None else None
    examples = _read(split_path(ecfg, eval_path, dev_path), Example)
    lo, hi = bounds(len(examples), shard, shards)
    with tracking.step_run(_tracking(tracking_cfg), parent_run_id, shard_step("answer", shard, shards),
                           ecfg.model_dump()), tempfile.TemporaryDirectory(prefix="reset-champion-") as tmp:
        import mlflow

        models, champion_version = _models_to_evaluate(models, mcfg, rcfg, include_base, tmp)
        _log(f"[evaluate] shard {shard + 1} of {shards}: {len(models)} models ({', '.join(models)}) x held-out "
             f"prompts {lo}..{hi - 1}")
        rows_by_model, _, gen_stats = evaluate_models(models, examples[lo:hi], ecfg, mcfg, jcfg, log=_log, offset=lo)
        rows = [{**r, **({"registry_version": champion_version} if name == "champion" else {})}
                for name, model_rows in rows_by_model.items() for r in model_rows]
        write_jsonl(out_rows, rows)
        first = next(iter(gen_stats.values()), {})
        mlflow.log_metrics(_metrics({"rows": len(rows), "prompts": hi - lo,
                                     "tokens_per_second": first.get("tokens_per_s", 0.0)}))
        _note(f"{len(rows)} answers of {len(models)} models to {hi - lo} held-out prompts")
    return {"rows": len(rows), "models": list(models), "prompts": hi - lo}


def split_path(ecfg: C.EvaluateConfig, test_path: str, dev_path: str = "") -> str:
    """The held-out file evaluate.split names (dev needs the mix step's dev split)."""
    if ecfg.split == "dev":
        if not dev_path or not Path(dev_path).exists() or not Path(dev_path).stat().st_size:
            raise C.ConfigError("evaluate.split: dev, but the mix step wrote no dev split (data.dev_per_kind: 0?)")
        return dev_path
    return test_path


def evaluate(models: Mapping[str, str], eval_path: str, evaluate_cfg: Section, model_cfg: Section,
             judge_cfg: Section, tracking_cfg: Section, parent_run_id: str, *, out_metrics: str,
             out_report: str, out_rows: str, out_html: str = "", register_cfg: Section = None,
             include_base: bool = True, reference: str = "mtl", candidate: str = "reset",
             seed: int | None = None, rows_paths: Sequence[str] = (), dev_path: str = "",
             keep_rates_paths: Mapping[str, str] | None = None,
             extra_rows_paths: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Evaluate `models` (name -> checkpoint or reference, e.g. mtl, reset), the configured base
    model ("base", with `include_base`) and, when `register.compare_champion` and a champion exists,
    the registry's champion ("champion"), all on the same held-out split (`eval_path`, the test
    split; `dev_path` when evaluate.split is dev), from one vLLM engine for the models that share a
    base. The decision (reset.evaluation.decision): every figure with its interval, the gates of
    `candidate` against `reference` and the champion; on the test split of a pipeline that
    registers (`register_cfg`), this use of the split is counted in the registry first (the gate's
    alpha spending). Writes the payload (`out_metrics`, JSON), the Markdown report (`out_report`),
    the rows (`out_rows`) and the HTML report (`out_html`); logs one MLflow run per evaluated model
    and the headline figures on the parent run. With `rows_paths` (the outputs of
    `evaluate_answers` shards) nothing is generated: the shards' rows are gathered instead.
    `keep_rates_paths`: arm -> its select step's report (the keep rates in the reports);
    `extra_rows_paths`: model -> rows scored once elsewhere (the experiment's base model, evaluated
    once for every seed), joined as they are."""
    import tempfile

    from reset.evaluation import evaluate_models, markdown_report, point_metrics
    from reset.evaluation.decision import rules_from_config, run_decision
    from reset.evaluation.html import html_report
    from reset.evaluation.plot import tradeoff_plot
    from reset.evaluation.summary import flat_metrics

    ecfg = C.section(C.EvaluateConfig, dict(evaluate_cfg or {}), "evaluate")
    mcfg = C.section(C.ModelConfig, dict(model_cfg or {}), "model")
    jcfg = C.section(C.JudgeConfig, dict(judge_cfg or {}), "judge")
    rcfg = C.section(C.RegisterConfig, dict(register_cfg or {}), "register") if register_cfg is not None else None
    tcfg = _tracking(tracking_cfg)
    eval_path = split_path(ecfg, eval_path, dev_path)
    examples = _read(eval_path, Example)
    digest = _digest(eval_path)
    with tracking.step_run(tcfg, parent_run_id, "evaluate", ecfg.model_dump()) as run, \
            tempfile.TemporaryDirectory(prefix="reset-champion-") as tmp:
        import mlflow

        parent = run.data.tags.get("mlflow.parentRunId", "")
        _log_input(_meta_dataset(eval_path, ecfg.split, digest), context="evaluation")
        mlflow.set_tags({"reset.split": ecfg.split, f"reset.{ecfg.split}_digest": digest})
        if rows_paths:
            rows_by_model, champion_version = _gathered_rows(rows_paths, examples)
            results = {name: point_metrics(rs) for name, rs in rows_by_model.items()}
            gen_stats: dict[str, Any] = {}
        else:
            models, champion_version = _models_to_evaluate(models, mcfg, rcfg, include_base, tmp)
            _log(f"[evaluate] {len(models)} models ({', '.join(models)}) x {len(examples)} {ecfg.split} prompts")
            rows_by_model, results, gen_stats = evaluate_models(models, examples, ecfg, mcfg, jcfg, log=_log)
        for name, path in (extra_rows_paths or {}).items():  # scored once elsewhere, on this same split
            extra = _read_rows(path)
            if {r["example_id"] for r in extra} != {e.id for e in examples}:
                raise ValueError(f"{path}: the {name} rows are not this {ecfg.split} split's")
            rows_by_model = {name: extra, **rows_by_model}
            results = {name: point_metrics(extra), **results}
        keep_rates = _keep_rates(keep_rates_paths)
        use = _count_test_use(rcfg, ecfg.split, digest, candidate in rows_by_model)
        same = {ref: _same_weights(models.get(candidate), models.get(ref)) for ref in (reference, "champion")}
        decision = run_decision(rows_by_model, reference=reference, candidate=candidate,
                                rules=rules_from_config(rcfg, use), selection_judges=jcfg.judges, same_weights=same,
                                labels={"champion": f"champion v{champion_version}"} if champion_version else None,
                                split=ecfg.split)
        summary, lines = decision.summary, decision.lines
        if decision.gates:
            _log(f"[evaluate] decision on the {ecfg.split} split (use {use}): {decision.words()}")
        report = markdown_report(summary, keep_rates=keep_rates,
                                 extra=[f"Against the current champion: {x}" for x in lines if "vs champion" in x]
                                 + [f"Gate: {decision.words()}"] if decision.gates else ())
        headline = headline_text(summary, lines + ([f"Decision: {decision.words()}"] if decision.gates else []))
        _log(f"[evaluate] comparison on the {ecfg.split} split:\n" + report)
        _note(lines[0] if lines else f"{len(results)} models x {len(examples)} {ecfg.split} prompts")
        for out in (out_metrics, out_report):
            Path(out).parent.mkdir(parents=True, exist_ok=True)
        payload = {"seed": seed, "metrics": results, **decision.to_dict(), "split_digest": digest,
                   "champion_version": champion_version, "summary": summary.to_dict(), "generation": gen_stats,
                   "units": _unit_values(summary, rows_by_model)}
        Path(out_metrics).write_text(json.dumps(payload, indent=2, default=str))
        Path(out_report).write_text(report)
        all_rows = [r for rows in rows_by_model.values() for r in rows]
        write_jsonl(out_rows, all_rows)
        png = tradeoff_plot(summary)
        html = html_report(summary, rows_by_model, examples=examples, plot_png=png, keep_rates=keep_rates)
        if out_html:
            Path(out_html).parent.mkdir(parents=True, exist_ok=True)
            Path(out_html).write_text(html, encoding="utf-8")
        mlflow.log_metrics(_metrics({f"{name}.{k}": v for name, m in results.items() for k, v in m.items()}))
        mlflow.log_text(report, "comparison.md")
        mlflow.log_dict(payload["summary"], "summary.json")
        mlflow.log_dict(decision.to_dict(), "decision.json")
        mlflow.log_image(_png_image(png), "tradeoff.png")
        mlflow.log_text(html, "report.html")
        mlflow.log_table({k: [r.get(k) for r in all_rows] for k in all_rows[0]}, artifact_file="eval_samples.json")
        # one run per evaluated model, same metric keys: MLflow's compare view lines them up
        exp = tracking.experiment_id(tcfg)
        for name, m in results.items():
            with mlflow.start_run(experiment_id=exp, run_name=f"eval-{name}", nested=True,
                                  tags={"reset.model": name, tracking.STEP_TAG: "evaluate/" + name}):
                mlflow.log_metrics(_metrics(m))
        # the headline figures on the parent run: each arm on both axes, each arm against MTL
        if parent:
            client = mlflow.MlflowClient()
            head = list(flat_metrics(summary, keys=HEADLINE).items())
            for i in range(0, len(head), 500):
                client.log_batch(parent, metrics=[_metric(k, v) for k, v in head[i : i + 500]])
            client.set_tag(parent, "reset.verdict", lines[0] if lines else "")
            client.set_tag(parent, "reset.decision", decision.words()[:5000])
            client.log_text(parent, headline, "headline.md")
            client.log_text(parent, report, "comparison.md")
            client.log_text(parent, html, "report.html")
            client.log_image(parent, _png_image(png), "tradeoff.png")
    return payload


def _gathered_rows(rows_paths: Sequence[str], examples: Sequence[Example]) -> tuple[dict[str, list], str | None]:
    """The evaluation shards' rows, in the unsharded step's order, by model; the champion version
    they re-scored."""
    from reset.data.shards import ordered

    ids = [e.id for e in examples]
    gathered = ordered([r for p in rows_paths for r in _read_rows(p)], ids, lambda r: r["example_id"],
                       lambda r: (r["model"], r["example_id"]))
    rows_by_model: dict[str, list] = {}
    for r in gathered:
        rows_by_model.setdefault(r["model"], []).append(r)
    short = {m: len(rs) for m, rs in rows_by_model.items() if len(rs) != len(examples)}
    if short:
        raise ValueError(f"the {len(rows_paths)} evaluation shards hold {short} rows per model, "
                         f"expected {len(examples)} each")
    versions = {r.pop("registry_version", None) for r in rows_by_model.get("champion", [])}
    if len(versions) > 1:
        raise ValueError(f"the evaluation shards re-scored different champion versions: {sorted(versions)}")
    _log(f"[evaluate] gathered {len(gathered)} rows from {len(rows_paths)} shards: "
         f"{len(rows_by_model)} models x {len(examples)} held-out prompts")
    return rows_by_model, next(iter(versions), None)


def _keep_rates(paths: Mapping[str, str] | None) -> dict[str, Any] | None:
    """The select steps' reports by arm (one arm: its report alone), for the keep-rate tables."""
    reports = {arm: json.loads(Path(p).read_text()) for arm, p in (paths or {}).items() if p and Path(p).exists()}
    if not reports:
        return None
    return next(iter(reports.values())) if len(reports) == 1 else reports


def _count_test_use(rcfg, split: str, digest: str, has_candidate: bool) -> int:
    """This evaluation's use number of the test split against the registered model (counted in the
    registry: the gate's alpha spending); 1 where nothing is counted (no registry, dev)."""
    if rcfg is None or split != "test" or not has_candidate:
        return 1
    from reset.registry import reserve_test_use

    use = reserve_test_use(rcfg, digest, holder=f"evaluate {tracking.job_id('local')}")
    if use > 1:
        _log(f"[evaluate] use {use} of this test split against {rcfg.model_name} (sha256 {digest[:12]}): the gate "
             "spends alpha over uses")
    return use


def _same_weights(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    da, db = modeling.weights_digest(a), modeling.weights_digest(b)
    return da is not None and da == db


def _unit_values(summary, rows_by_model: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """arm -> primary metric -> {unit: value}: what the experiment's report pools across seeds."""
    from reset.evaluation.metrics import PRIMARY

    have = {m.key for m in summary.metrics}
    return {arm: {k: summary.metric(k).values(rows) for k in PRIMARY if k in have}
            for arm, rows in rows_by_model.items()}


HEADLINE = ("if_prompt_acc", "faithfulness")
HEADLINE_TABLE = ("if_prompt_acc", "faithfulness", "answer_correct", "counterfactual_rate", "answer_f1",
                  "rouge_l_abstractive")


def headline_text(summary, lines: list[str]) -> str:
    """What the CLI prints at the end of a run: the main figures with intervals, the verdicts."""
    from reset.evaluation.report import interval_table

    return interval_table(summary, HEADLINE_TABLE) + "\n\n" + "\n".join(lines)


def _metric(key: str, value: float):
    from mlflow.entities import Metric

    return Metric(key, value, int(time.time() * 1000), 0)


def _png_image(data: bytes):
    """PNG bytes as a PIL image (mlflow.log_image takes images, not bytes)."""
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data))


def register(model_dir: str, metrics_path: str, register_cfg: Section, evaluate_cfg: Section, model_cfg: Section,
             tracking_cfg: Section, parent_run_id: str, *, candidate: str = "reset") -> dict[str, Any]:
    """Register the candidate as challenger; champion only when the evaluate step's gates passed on
    the test split (a run evaluated on dev never promotes)."""
    from reset.evaluation import GateDecision
    from reset.registry import UNKNOWN, log_and_register

    rcfg = C.section(C.RegisterConfig, dict(register_cfg or {}), "register")
    ecfg = C.section(C.EvaluateConfig, dict(evaluate_cfg or {}), "evaluate")
    mcfg = C.section(C.ModelConfig, dict(model_cfg or {}), "model")
    payload = json.loads(Path(metrics_path).read_text())
    results = payload.get("metrics", payload)
    if candidate not in results:
        raise ValueError(f"{metrics_path}: no metrics for model {candidate!r} (have {sorted(results)})")
    split = payload.get("split", "test")
    gates = ({ref: GateDecision.from_dict(g) for ref, g in payload["gates"].items()}
             if payload.get("gates") and split == "test" else None)
    why_not = "" if gates is not None else (
        "evaluated on the dev split (evaluate.split: dev): a tuning run never promotes" if split == "dev"
        else "no paired evaluation to gate on")
    description = "\n".join(payload.get("verdicts", []) + ([f"Decision: {payload['decision']}"]
                                                            if payload.get("decision") else []))
    tags = {TEST_DIGEST_TAG if split == "test" else "reset.dev_digest": payload.get("split_digest", ""),
            "reset.test_use": str(payload.get("test_use", "")), "reset.decision": payload.get("decision", "")[:5000]}
    # the champion the gates compared against: the alias moves only if it still points there
    evaluated = payload.get("champion_version") if gates is not None and rcfg.compare_champion else UNKNOWN
    with tracking.step_run(_tracking(tracking_cfg), parent_run_id, "register", rcfg.model_dump()):
        import mlflow

        decision = log_and_register(model_dir, results[candidate], rcfg, ecfg.max_new_tokens, mcfg.system_prompt,
                                    gates=gates, description=description, evaluated_champion=evaluated,
                                    version_tags={k: v for k, v in tags.items() if v}, no_gate_reason=why_not)
        mlflow.log_metrics(_metrics({f"{candidate}.{k}": v for k, v in results[candidate].items()}))
        mlflow.log_metric("promoted", int(decision["promote"]))
        mlflow.set_tags({"registered_model": rcfg.model_name, "registered_version": decision["version"],
                         "promotion": decision["reason"]})
        verdict = "promoted to" if decision["promote"] else "NOT promoted to"
        _note(f"{rcfg.model_name} v{decision['version']} @{rcfg.challenger_alias}: {decision['reason']}")
        _log(f"[register] {rcfg.model_name} v{decision['version']} is @{rcfg.challenger_alias}; {verdict} "
             f"@{rcfg.champion_alias}: {decision['reason']}")
    return decision


def control_set(selected_path: str, seen_path: str, *, out_path: str) -> int:
    """The experiment's control data: the reference answers of the prompts ReSet kept."""
    from reset.experiments.arms import control_examples

    rows = control_examples(_read(selected_path, Example), _read(seen_path, Example))
    write_jsonl(out_path, rows)
    _log(f"[control] {len(rows)} reference answers of the prompts ReSet kept")
    return len(rows)


def experiment_report(payload_paths: Sequence[str], tracking_cfg: Section, *, out_report: str,
                      out_json: str = "") -> dict[str, Any]:
    """Across seeds: each arm's primary figures per seed, their mean and spread, and every arm
    against the reference per seed; logged on the parent run (found by the KFP run id) as
    experiment.md / experiment.json."""
    from reset.experiments.report import seed_report

    payloads = {}
    for p in payload_paths:  # each evaluate payload names its seed
        payload = json.loads(Path(p).read_text())
        payloads[int(payload.get("seed", len(payloads)))] = payload
    report, data = seed_report(payloads)
    Path(out_report).parent.mkdir(parents=True, exist_ok=True)
    Path(out_report).write_text(report, encoding="utf-8")
    if out_json:
        Path(out_json).write_text(json.dumps(data, indent=2))
    cfg = _tracking(tracking_cfg)
    parent = tracking.find_parent(cfg, tracking.job_id()) if tracking.job_id() else None
    if parent:
        import mlflow

        client = mlflow.MlflowClient()
        client.log_text(parent, report, "experiment.md")
        client.log_dict(parent, data, "experiment.json")
    _log("[experiment] across seeds:\n" + report)
    return data


def local_engine_server(cfg: C.PipelineConfig, folder: Path):
    """The vLLM worker for a local run of `cfg` (generate.vllm_engine_server), started; None where
    the steps would not use one (hf backend, vLLM in-process, no vLLM environment, a GPU)."""
    from reset.evaluation.runner import greedy_config
    from reset.models.generation import vllm_backend

    if not cfg.generate.vllm_engine_server or vllm_backend.gpu_visible():
        return None
    python = vllm_backend.engine_server_python([cfg.generate, greedy_config(cfg.evaluate)])
    if python is None:
        return None
    return vllm_backend.EngineServer.start(python, folder, vllm_backend.worker_env(cfg.generate),
                                           keep_s=cfg.generate.vllm_engine_keep_s)

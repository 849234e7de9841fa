"""Arms compared on the same examples: intervals, paired tests, verdict, Markdown, the plot and the
HTML report (its structure; tests/test_report_browser.py renders it in Chromium)."""

from __future__ import annotations

import base64
import io
import os
import random
import re
from html.parser import HTMLParser

import pytest
from PIL import Image
from scipy import stats

from reset.evaluation import markdown_report, summarize, verdict
from reset.evaluation.html import html_report
from reset.evaluation.metrics import score_example
from reset.evaluation.plot import tradeoff_plot
from reset.evaluation.report import interval_table, keep_rate_table, paired_table
from reset.evaluation.statistics import wilson_interval
from reset.evaluation.summary import flat_metrics, identical_answers

SELECTION_REPORT = {
    "per_group": {"demo-instruction/instruction": {"prompts": 40, "kept": 12, "keep_rate": 0.3},
                  "demo-grounded/grounded": {"prompts": 40, "kept": 31, "keep_rate": 0.775}},
    "per_task": {"open": {"prompts": 40, "kept": 12, "keep_rate": 0.3}},
    "per_family": {"change_case": {"prompts": 10, "kept": 0, "keep_rate": 0.0}},
}


def make_arms(demo, right: dict[str, float], seed: int = 0):
    """Rows of arms that answer each example with its reference (right) or a wrong text, with the
    given share of right answers; the same examples for every arm."""
    exs = demo[0][:30] + demo[1][:30]
    rng = random.Random(seed)
    draws = {e.id: rng.random() for e in exs}  # one draw per example, shared: arms nest (paired)
    out = {}
    for arm, share in right.items():
        rows = []
        for e in exs:
            text = e.response if draws[e.id] < share else "I am not sure about that."
            rows.append(score_example(e, text, model_name=arm))
        out[arm] = rows
    return exs, out


@pytest.fixture(scope="module")
def arms(demo):
    return make_arms(demo, {"base": 0.2, "mtl": 0.5, "reset": 0.8, "reset-s": 0.5})


def test_summary_pairs_by_example_and_counts_flips(arms):
    _, rows = arms
    s = summarize(rows, reference="mtl", n_resamples=2000)
    t = s.comparisons["reset"]["if_prompt_acc"]
    mine = {r["example_id"]: r["if_pass"] for r in rows["reset"] if r["if_pass"] is not None}
    ref = {r["example_id"]: r["if_pass"] for r in rows["mtl"] if r["if_pass"] is not None}
    wins = sum(1 for k in mine if mine[k] and not ref[k])
    losses = sum(1 for k in mine if ref[k] and not mine[k])
    assert (t.wins, t.losses, t.n) == (wins, losses, len(mine)) and wins > 0
    # McNemar's score test (no continuity correction): z = (wins - losses) / sqrt(wins + losses)
    assert t.p_value == pytest.approx(2 * stats.norm.sf(abs(wins - losses) / (wins + losses) ** 0.5))
    assert t.diff == pytest.approx((wins - losses) / len(mine))
    # the same rows in another order give the same comparison: pairs are by example id, not position
    shuffled = dict(rows, reset=list(reversed(rows["reset"])))
    assert summarize(shuffled, reference="mtl", n_resamples=2000).comparisons["reset"] == s.comparisons["reset"]
    # an arm identical to the reference differs by nothing
    same = s.comparisons["reset-s"]
    assert same["if_prompt_acc"].diff == 0 and same["if_prompt_acc"].p_value == 1.0
    assert same["faithfulness"].diff == 0 and same["faithfulness"].p_value == 1.0
    assert identical_answers(rows, "mtl")["reset-s"] == (60, 60)
    # every estimate carries its interval and n
    e = s.estimates["mtl"]["if_prompt_acc"]
    k = sum(1 for r in rows["mtl"] if r["if_pass"])
    assert (e.low, e.high) == pytest.approx(wilson_interval(k, e.n)) and e.n == len(ref)
    f = s.estimates["reset"]["faithfulness"]
    assert f.method == "bootstrap" and f.low <= f.value <= f.high


def test_only_paired_units_are_compared(arms):
    _, rows = arms
    fewer = dict(rows, reset=rows["reset"][:40])  # reset answered only 40 of the 60 examples
    s = summarize(fewer, reference="mtl", n_resamples=1000)
    ids = {r["example_id"] for r in rows["reset"][:40] if r["if_pass"] is not None}
    assert s.comparisons["reset"]["if_prompt_acc"].n == len(ids)


def test_verdict_line_and_selection_marks(arms):
    _, rows = arms
    s = summarize(rows, reference="mtl", selection_judges=["rules", "k-precision"], n_resamples=2000)
    line = verdict(s, "reset")
    num = r"[+-]\d\.\d\d\d"  # three digits: an interval end near 0 shows on which side it lies
    p = r"\(p(=\d\.\d+|<0\.01|<0\.001)\)"
    assert re.fullmatch(rf"ReSet vs MTL: IF {num} \[{num}, {num}\] {p}; faithfulness {num} \[{num}, {num}\] {p}",
                        line), line
    assert s.selection["if_prompt_acc"] == ("rules",) and "answer_f1" not in s.selection
    assert s.selection["k_precision_extractive"] == ("k-precision",)
    assert summarize(rows, reference="mtl", n_resamples=1000).selection == {}
    with pytest.raises(KeyError):
        verdict(s, "mtl")  # the reference is not compared with itself
    assert summarize(rows, reference=None, n_resamples=1000).comparisons == {}


def test_markdown_report(arms):
    _, rows = arms
    s = summarize(rows, reference="mtl", selection_judges=["rules"], n_resamples=2000)
    md = markdown_report(s, keep_rates=SELECTION_REPORT)
    for arm in ("base", "MTL", "ReSet", "ReSet-S"):
        assert re.search(rf"^\| {re.escape(arm)} \| \d\.\d\d \[\d\.\d\d, \d\.\d\d\] \|", md, re.M), arm
    assert verdict(s, "reset") in md and verdict(s, "base") in md
    assert "IF prompt acc\u2020" in md and "selection judge(s) rules" in md
    family_part = md.split("## Instruction following per constraint family")[1].split("## Selection")[0]
    assert "| change_case\u2020 |" in family_part.splitlines()[2]  # a column per family
    table = interval_table(s)
    assert len(table.splitlines()) == 2 + 4 + 1  # header, rule, one row per arm, n
    assert len(paired_table(s).splitlines()) == 2 + 3
    keep = keep_rate_table(SELECTION_REPORT)
    assert "| source / kind | demo-instruction/instruction | 12/40 | 0.30 [0.18, 0.45] |" in keep
    assert "| constraint family | change_case | 0/10 | 0.00 [0.00, 0.28] |" in keep
    by_arm = keep_rate_table({"reset": SELECTION_REPORT, "reset-s": SELECTION_REPORT})
    assert by_arm.count("| reset-s |") == 4


def test_flat_metrics_are_finite_and_named_by_arm(arms):
    _, rows = arms
    s = summarize(rows, reference="mtl", n_resamples=1000)
    flat = flat_metrics(s)
    assert flat["reset.vs_mtl.if_prompt_acc.p"] == s.comparisons["reset"]["if_prompt_acc"].p_value
    assert flat["mtl.if_prompt_acc.low"] == s.estimates["mtl"]["if_prompt_acc"].low
    assert all(v == v for v in flat.values())  # no NaN
    assert not any(k.startswith("mtl.vs_") for k in flat)


def test_tradeoff_plot_draws_every_arm(arms, tmp_path):
    _, rows = arms
    s = summarize(rows, reference="mtl", n_resamples=1000)
    png = tradeoff_plot(s, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes() == png
    img = Image.open(io.BytesIO(png)).convert("RGB")
    assert img.size[0] > 300 and img.size[1] > 300
    colours = set(img.getdata())
    # the reference (MTL) and ReSet points in their colours
    for rgb in ((0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28)):
        assert any(sum(abs(a - b) for a, b in zip(c, rgb, strict=True)) < 12 for c in colours), rgb


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.arm_rows: dict[str, list[str]] = {}
        self.imgs: list[dict[str, str]] = []
        self._table = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.urls += [v for k, v in attrs if k in ("src", "href", "action", "data") and v]
        if tag == "link" or (tag == "script" and "src" in a):
            self.urls.append(a.get("href") or a.get("src") or "")
        if tag == "table":
            self._table = a.get("id", "")
        if tag == "tr" and "data-arm" in a:
            self.arm_rows.setdefault(self._table, []).append(a["data-arm"])
        if tag == "img":
            self.imgs.append(a)


def test_html_report_is_self_contained_with_every_arm(arms):
    exs, rows = arms
    s = summarize(rows, reference="mtl", selection_judges=["rules"], n_resamples=1000)
    png = tradeoff_plot(s)
    page = html_report(s, rows, examples=exs, keep_rates=SELECTION_REPORT, plot_png=png)
    p = _Collect()
    p.feed(page)
    assert all(u.startswith("data:") or u.startswith("#") for u in p.urls), p.urls
    assert not re.search(r"https?://", page)  # nothing to fetch
    img = next(i for i in p.imgs if i.get("id") == "tradeoff")
    assert base64.b64decode(img["src"].split(",", 1)[1]) == png
    assert p.arm_rows["comparison"] == list(rows)
    assert p.arm_rows["paired"] == ["base", "reset", "reset-s"]
    assert page.count('class="sample"') == len(exs)
    assert page.count("<details>") >= len(exs)


def test_html_escapes_model_output(demo):
    ex = demo[0][0]
    evil = '<script>alert(1)</script><img src="http://example.invalid/x.png">'
    rows = {"mtl": [score_example(ex, ex.response, model_name="mtl")],
            "reset": [score_example(ex, evil, model_name="reset")]}
    s = summarize(rows, reference="mtl", n_resamples=200)
    page = html_report(s, rows, examples=[ex])
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    p = _Collect()
    p.feed(page)
    assert all(u.startswith("data:") or u.startswith("#") for u in p.urls)


def test_evaluate_step_writes_the_report_and_logs_it(tiny_model_dir, demo, tmp_path):
    """The pipeline's evaluate step on a real (tiny) model: report with the verdict, MLflow artifacts."""
    import json

    import mlflow

    from reset import steps, tracking
    from reset.config import TrackingConfig
    from reset.data.records import write_jsonl

    tcfg = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="ev")
    write_jsonl(tmp_path / "eval.jsonl", demo[0][:3] + demo[1][:3])
    try:
        os.environ[tracking.JOB_ENV] = "job-ev"  # as a task has it: the step finds its parent run by it
        parent = tracking.start_parent(tcfg, {}, {tracking.JOB_TAG: "job-ev"})
        out = {k: str(tmp_path / f"{k}.out") for k in ("out_metrics", "out_report", "out_rows")}
        cfg = steps.config(evaluate={"max_new_tokens": 4, "batch_size": 6, "backend": "hf"},
                           tracking=tcfg.model_dump())
        payload = steps.evaluate(
            {"mtl": str(tiny_model_dir), "reset": str(tiny_model_dir)},
            str(tmp_path / "eval.jsonl"),
            cfg,
            include_base=False,
            **out,
        )
        results = payload["metrics"]
        assert set(results) == {"mtl", "reset"} and results["mtl"]["n_examples"] == 6
        report = (tmp_path / "out_report.out").read_text()
        # the same model twice: no difference, and the report says so with p = 1
        assert "- ReSet vs MTL: IF +0.000 [" in report and "(p=1.00)" in report
        assert payload["verdicts"][0].startswith("ReSet vs MTL: IF +0.000")
        # ... and the gate never passes it: the same weights (and the same answers)
        assert not payload["gates"]["mtl"]["passed"]
        assert payload["gates"]["mtl"]["reason"].startswith("weights identical to MTL's")
        assert payload["identical_answers"]["reset"] == [6, 6] and payload["split"] == "test"
        assert json.loads((tmp_path / "out_metrics.out").read_text())["metrics"]["reset"]["n_examples"] == 6
        assert len((tmp_path / "out_rows.out").read_text().splitlines()) == 12
        client = mlflow.MlflowClient()
        exp = mlflow.get_experiment_by_name("ev").experiment_id
        run = client.search_runs([exp], "tags.`reset.step` = 'evaluate'")[0]
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"comparison.md", "summary.json", "tradeoff.png", "report.html", "eval_samples.json"} <= names
        assert run.data.metrics["reset.if_prompt_acc"] == results["reset"]["if_prompt_acc"]
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["test"]
        assert run.data.tags["reset.split"] == "test"
        # one run per evaluated model with the same keys (MLflow's compare view lines them up)
        per_model = client.search_runs([exp], "tags.`reset.model` != ''")
        assert sorted(r.data.tags["reset.model"] for r in per_model) == ["mtl", "reset"]
        assert all("if_prompt_acc" in r.data.metrics for r in per_model)
        # the parent carries the headline figures, the verdict and the report
        top = client.get_run(parent)
        assert "reset.vs_mtl.if_prompt_acc.diff" in top.data.metrics and "mtl.faithfulness.low" in top.data.metrics
        assert top.data.tags["reset.verdict"].startswith("ReSet vs MTL")
        assert {"headline.md", "report.html", "tradeoff.png"} <= {a.path for a in client.list_artifacts(parent)}
    finally:
        os.environ.pop(tracking.JOB_ENV, None)
        mlflow.set_tracking_uri(None)

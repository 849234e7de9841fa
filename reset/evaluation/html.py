"""One self-contained HTML report of an evaluation: no external URL, the plot embedded as a base64
PNG, inline CSS and a small inline script (the sample browser's filter; the page reads fine
without it).

    html = html_report(summary, rows_by_arm, examples=held_out, keep_rates=selection_report,
                       plot_png=tradeoff_plot(summary))
    write_html_report("report.html", summary, rows_by_arm, ...)

Sections: the verdict lines; the trade-off plot (#tradeoff); the comparison table (#comparison,
one row per arm, each figure with its 95% interval); the paired table against the reference
(#paired, difference, interval and p; green / red where significantly better / worse); every
metric (#all-metrics) and the per-family IF accuracy; identical answers to the reference; the
selection's keep rates (#keep-rates); the sample browser (#samples: per held-out prompt, the
prompt, passage and reference, then each arm's answer and its scores, in <details>).
"""

from __future__ import annotations

import base64
import html
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reset.data.records import Example
from reset.evaluation.report import DAGGER, footnotes, keep_rate_rows, table_keys
from reset.evaluation.statistics import format_p
from reset.evaluation.summary import Summary, axis_outcome, identical_answers, verdicts

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1200px;
 color:#1d1d1f;padding:0 16px;line-height:1.4}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.2em;margin-top:28px;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}
th{background:#f5f5f7}
td .ci{color:#666;font-size:.85em;white-space:nowrap}
td.better{background:#e6f4ea}td.worse{background:#fce8e6}
tr.reference td:first-child{font-weight:600}
#verdict li{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em}
#tradeoff{max-width:100%;height:auto;border:1px solid #eee}
.sample{border:1px solid #e3e3e3;border-radius:6px;margin:6px 0;padding:4px 10px}
.sample summary{cursor:pointer}
.sample .tag{display:inline-block;background:#eef;border-radius:4px;padding:0 5px;margin-right:4px;font-size:.8em}
.sample pre{white-space:pre-wrap;background:#fafafa;padding:6px;border-radius:4px;margin:4px 0;font-size:.88em}
.answers td{text-align:left}.answers td.scores{font-size:.82em;color:#333;white-space:nowrap}
.notes{font-size:.85em;color:#444}
.scroll{overflow-x:auto}
"""

_SCRIPT = """
(function(){
  var box=document.getElementById('filter'), differ=document.getElementById('differ');
  var items=document.querySelectorAll('#samples .sample'), count=document.getElementById('shown');
  function apply(){
    var q=(box.value||'').toLowerCase(), only=differ.checked, n=0;
    items.forEach(function(el){
      var show=(!q||el.textContent.toLowerCase().indexOf(q)>=0)&&(!only||el.dataset.differ==='1');
      el.style.display=show?'':'none'; if(show){n++;}
    });
    count.textContent=n;
  }
  box.addEventListener('input',apply); differ.addEventListener('change',apply); apply();
})();
"""

# Per-answer scores shown in the sample browser (row field, label), where they apply.
SAMPLE_SCORES = (
    ("if_pass", "IF pass"), ("answer_correct", "answer correct"), ("cf_outcome", "counterfactual"),
    ("faithfulness", "faithfulness"), ("answer_f1", "answer F1"), ("rouge_l", "ROUGE-L"), ("key_facts", "key facts"),
    ("k_precision", "K-Prec"), ("passage_copy", "copy"), ("combined", "combined"),
)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.2f}"
    return _e(v)


def _estimate_cell(e) -> str:
    if e.n == 0 or math.isnan(e.value):
        return "<td>n/a</td>"
    ci = "[n/a]" if math.isnan(e.low) else f"[{e.low:.2f}, {e.high:.2f}]"
    return f'<td title="n={e.n}, {e.method}">{e.value:.2f} <span class="ci">{ci}</span></td>'


def _figures_table(summary: Summary, keys: Sequence[str], table_id: str) -> str:
    head = "".join(f'<th title="{_e(summary.metric(k).description)}">{_e(summary.metric(k).label)}'
                   f'{DAGGER if k in summary.selection else ""}</th>' for k in keys)
    out = [f'<div class="scroll"><table id="{table_id}"><thead><tr><th>Model</th>{head}</tr></thead><tbody>']
    for a in summary.arms:
        cls = ' class="reference"' if a == summary.reference else ""
        cells = "".join(_estimate_cell(summary.estimates[a][k]) for k in keys)
        out.append(f'<tr data-arm="{_e(a)}"{cls}><td>{_e(summary.label(a))}</td>{cells}</tr>')
    ns = "".join(f"<td>{_e(_ns(summary, k))}</td>" for k in keys)
    out.append(f'<tr class="n"><td><i>n</i></td>{ns}</tr></tbody></table></div>')
    return "".join(out)


def _ns(summary: Summary, key: str) -> str:
    ns = sorted({summary.estimates[a][key].n for a in summary.arms})
    return str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"


def _paired_table(summary: Summary, keys: Sequence[str]) -> str:
    ref = summary.label(summary.reference or "")
    head = "".join(f"<th>{_e(summary.metric(k).label)}{DAGGER if k in summary.selection else ''}</th>" for k in keys)
    out = [f'<div class="scroll"><table id="paired"><thead><tr><th>vs {_e(ref)}</th>{head}</tr></thead><tbody>']
    for a in summary.arms:
        if a not in summary.comparisons:
            continue
        cells = []
        for k in keys:
            t = summary.comparisons[a][k]
            if t.n == 0 or math.isnan(t.diff):
                cells.append("<td>n/a</td>")
                continue
            outcome = axis_outcome(t, summary.metric(k).higher_is_better)
            cls = ' class="better"' if outcome == "better" else ' class="worse"' if outcome == "worse" else ""
            ci = "[n/a]" if math.isnan(t.low) else f"[{t.low:+.2f}, {t.high:+.2f}]"
            cells.append(f'<td{cls} title="n={t.n}, {t.test}; {t.wins} up / {t.losses} down">{t.diff:+.2f} '
                         f'<span class="ci">{ci} {format_p(t.p_value)}</span></td>')
        out.append(f'<tr data-arm="{_e(a)}"><td>{_e(summary.label(a))}</td>{"".join(cells)}</tr>')
    out.append("</tbody></table></div>")
    return "".join(out)


def _keep_rates(keep_rates: Mapping[str, Any] | None) -> str:
    rows = keep_rate_rows(keep_rates)
    if not rows:
        return "<p>(no keep rates given)</p>"
    with_arm = any(r.arm for r in rows)
    out = ['<table id="keep-rate-table"><thead><tr>' + ("<th>Selection</th>" if with_arm else "")
           + "<th>By</th><th>Group</th><th>Kept</th><th>Keep rate [95%]</th></tr></thead><tbody>"]
    for r in rows:
        arm = f"<td>{_e(r.arm)}</td>" if with_arm else ""
        out.append(f"<tr>{arm}<td>{_e(r.section)}</td><td>{_e(r.group)}</td><td>{r.kept}/{r.prompts}</td>"
                   f"<td>{_e(r.estimate.format())}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _samples(summary: Summary, rows_by_arm: Mapping[str, Sequence[Mapping[str, Any]]],
             examples: Sequence[Example] | None) -> tuple[str, int]:
    by_ex = {e.id: e for e in examples or []}
    rows = {a: {r["example_id"]: r for r in rows_by_arm.get(a, [])} for a in summary.arms}
    ids = list(dict.fromkeys(r["example_id"] for a in summary.arms for r in rows_by_arm.get(a, [])))
    out = []
    for eid in ids:
        ex = by_ex.get(eid)
        answers = [(a, rows[a].get(eid)) for a in summary.arms if rows[a].get(eid) is not None]
        first = answers[0][1] if answers else {}
        differ = len({r["response"] for _, r in answers}) > 1
        prompt = ex.instruction if ex else ""
        tags = [first.get("kind", ""), first.get("task", "")]
        if first.get("counterfactual"):
            tags.append("counterfactual")
        tags += list(first.get("if_ids") or [])
        head = (f'<span class="tag">{_e(eid)}</span>' + "".join(f'<span class="tag">{_e(t)}</span>' for t in tags if t)
                + f" {_e(prompt[:140])}{'...' if len(prompt) > 140 else ''}")
        body = []
        if ex is not None:
            body.append(f"<div><b>Prompt</b><pre>{_e(ex.instruction)}</pre></div>")
            if ex.context:
                body.append(f"<details><summary>Passage</summary><pre>{_e(ex.context)}</pre></details>")
            body.append(f"<details><summary>Reference</summary><pre>{_e(ex.response)}</pre></details>")
            facts = {k: ex.meta[k] for k in ("answer", "memory_answer", "counterfactual") if k in ex.meta}
            if facts:
                body.append("<div class='notes'>" + "; ".join(f"{_e(k)}: {_e(v)}" for k, v in facts.items()) + "</div>")
        trs = []
        for a, r in answers:
            scores = "<br>".join(f"{_e(label)}: {_value(r[f])}" for f, label in SAMPLE_SCORES if r.get(f) is not None)
            trs.append(f'<tr data-arm="{_e(a)}"><td>{_e(summary.label(a))}</td><td><pre>{_e(r["response"])}</pre></td>'
                       f'<td class="scores">{scores}</td></tr>')
        body.append('<table class="answers"><thead><tr><th>Model</th><th>Answer</th><th>Scores</th></tr></thead>'
                    f"<tbody>{''.join(trs)}</tbody></table>")
        out.append(f'<div class="sample" data-id="{_e(eid)}" data-differ="{int(differ)}"><details>'
                   f"<summary>{head}</summary>{''.join(body)}</details></div>")
    return "".join(out), len(ids)


def html_report(
    summary: Summary,
    rows_by_arm: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    examples: Sequence[Example] | None = None,
    keep_rates: Mapping[str, Any] | None = None,
    plot_png: bytes | None = None,
    title: str = "ReSet: held-out comparison",
    notes: Sequence[str] = (),
) -> str:
    """The report as one HTML document (a string)."""
    keys = table_keys(summary)
    all_keys = [m.key for m in summary.metrics if not m.key.startswith("if_family.")
                and any(summary.estimates[a][m.key].n for a in summary.arms)]
    families = [m.key for m in summary.metrics if m.key.startswith("if_family.")]
    lines = verdicts(summary) if summary.reference is not None else []
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">{len(summary.arms)} models: {_e(", ".join(summary.label(a) for a in summary.arms))}; '
        f"{max(summary.n_examples.values(), default=0)} held-out examples; reference "
        f"{_e(summary.label(summary.reference) if summary.reference else 'none')}; "
        f"written {_e(time.strftime('%Y-%m-%d %H:%M'))}</p>",
    ]
    if lines:
        parts.append('<section id="verdict"><h2>Verdict</h2><ul>' + "".join(f"<li>{_e(v)}</li>" for v in lines)
                     + "</ul></section>")
    if plot_png:
        b64 = base64.b64encode(plot_png).decode("ascii")
        parts.append('<section id="plot"><h2>Trade-off</h2>'
                     f'<img id="tradeoff" alt="instruction following vs faithfulness, one point per model with 95% '
                     f'intervals" src="data:image/png;base64,{b64}"></section>')
    parts.append(f'<section id="figures"><h2>Held-out figures (95% intervals)</h2>'
                 f"{_figures_table(summary, keys, 'comparison')}</section>")
    if summary.comparisons:
        parts.append(f'<section id="paired-section"><h2>Paired against {_e(summary.label(summary.reference or ""))}'
                     f"</h2>{_paired_table(summary, keys)}</section>")
    parts.append('<div class="notes"><ul>' + "".join(f"<li>{_e(n)}</li>" for n in [*footnotes(summary), *notes])
                 + "</ul></div>")
    same = identical_answers(rows_by_arm, summary.reference) if summary.reference else {}
    if same:
        cells = "".join(f"<tr><td>{_e(summary.label(a))}</td><td>{k}/{n}</td></tr>" for a, (k, n) in same.items())
        parts.append(f'<section id="identical"><h2>Answers identical to {_e(summary.label(summary.reference or ""))}'
                     f"</h2><table><tbody>{cells}</tbody></table></section>")
    parts.append('<section id="all-metrics"><details><summary>Every metric</summary>'
                 f"{_figures_table(summary, all_keys, 'all-metrics-table')}"
                 + "<ul class='notes'>" + "".join(f"<li><b>{_e(summary.metric(k).label)}</b> ({_e(k)}): "
                                                  f"{_e(summary.metric(k).description)}</li>" for k in all_keys)
                 + "</ul></details></section>")
    if families:
        parts.append('<section id="families"><h2>Instruction following per constraint family</h2>'
                     f"{_figures_table(summary, families, 'family-table')}</section>")
    parts.append(f'<section id="keep-rates"><h2>Selection keep rates</h2>{_keep_rates(keep_rates)}</section>')
    samples, n = _samples(summary, rows_by_arm, examples)
    parts.append('<section id="samples"><h2>Samples</h2><p><input id="filter" type="search" '
                 'placeholder="filter (id, text, constraint)"> <label><input id="differ" type="checkbox"> only '
                 f'prompts where the answers differ</label> <span class="meta"><span id="shown">{n}</span> of {n} '
                 f"shown</span></p>{samples}</section>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts)


def write_html_report(path: str | os.PathLike[str], summary: Summary,
                      rows_by_arm: Mapping[str, Sequence[Mapping[str, Any]]], **kwargs: Any) -> Path:
    """html_report(...) written to `path` (UTF-8); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html_report(summary, rows_by_arm, **kwargs), encoding="utf-8")
    return out

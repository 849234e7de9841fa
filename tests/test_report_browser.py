"""The HTML report in a real browser (headless Chromium, Debian's package): the plot decodes and
renders with a size, the comparison table shows every arm, nothing is fetched from anywhere, and
the sample browser's filter works."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from reset.evaluation import summarize
from reset.evaluation.html import write_html_report
from reset.evaluation.plot import tradeoff_plot
from tests.chromium import Chromium, chromium_binary
from tests.test_report import SELECTION_REPORT, make_arms


@pytest.fixture(scope="module")
def browser_binary() -> str:
    """Chromium, which `make test` installs: missing, the test fails (it never skips silently)."""
    binary = chromium_binary()
    if binary is None:
        pytest.fail("no Chromium or Chrome found (chromium, chromium-browser, google-chrome on PATH, or $CHROMIUM): "
                    "`make test` installs Debian's chromium; on Ubuntu install Google Chrome or the chromium snap")
    return binary


@pytest.fixture(scope="module")
def report(demo, tmp_path_factory):
    exs, rows = make_arms(demo, {"base": 0.2, "mtl": 0.5, "reset": 0.8, "reset-s": 0.6, "control": 0.55})
    s = summarize(rows, reference="mtl", selection_judges=["rules", "k-precision", "reference"], n_resamples=2000)
    path = tmp_path_factory.mktemp("report") / "report.html"
    write_html_report(path, s, rows, examples=exs, keep_rates={"reset": SELECTION_REPORT},
                      plot_png=tradeoff_plot(s))
    return path, s, exs


def test_report_renders_plot_and_table_in_chromium(report, browser_binary):
    path, summary, exs = report
    with Chromium(browser_binary) as browser:
        page = browser.open(path.as_uri())
        # the plot: decoded by the browser (img.decode() resolves), with its natural and laid-out size
        img = page.evaluate("""(async () => {
            const img = document.getElementById('tradeoff');
            await img.decode();
            img.scrollIntoView();
            const r = img.getBoundingClientRect();
            return {complete: img.complete, w: img.naturalWidth, h: img.naturalHeight,
                    box: {x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width, height: r.height}};
        })()""", await_promise=True)
        assert img["complete"] and img["w"] > 300 and img["h"] > 300
        assert img["box"]["width"] > 300 and img["box"]["height"] > 200
        # what the screen shows there is the plot: many colours, not an empty box
        shot = Image.open(io.BytesIO(page.screenshot(img["box"]))).convert("RGB")
        assert shot.size[0] > 300 and len(set(shot.getdata())) > 50
        # the comparison table: one visible row per arm, in order, with its label and an interval
        rows = page.evaluate("""JSON.stringify([...document.querySelectorAll('#comparison tbody tr[data-arm]')]
            .map(tr => ({arm: tr.dataset.arm, label: tr.cells[0].innerText, cell: tr.cells[1].innerText,
                         height: tr.getBoundingClientRect().height})))""")
        rows = json.loads(rows)
        assert [r["arm"] for r in rows] == summary.arms
        assert [r["label"] for r in rows] == [summary.label(a) for a in summary.arms]
        assert all(r["height"] > 0 for r in rows)
        assert all("[" in r["cell"] and "]" in r["cell"] for r in rows)
        paired = json.loads(page.evaluate(
            "JSON.stringify([...document.querySelectorAll('#paired tbody tr')].map(tr => tr.dataset.arm))"))
        assert paired == [a for a in summary.arms if a != "mtl"]
        assert page.evaluate("document.querySelectorAll('#keep-rate-table tbody tr').length") == 4
        # the sample browser: every prompt; the filter narrows it (the inline script runs)
        assert page.evaluate("document.querySelectorAll('#samples .sample').length") == len(exs)
        shown = page.evaluate(f"""(() => {{
            const box = document.getElementById('filter');
            box.value = {json.dumps(exs[0].id)};
            box.dispatchEvent(new Event('input'));
            return [...document.querySelectorAll('#samples .sample')].filter(e => e.style.display !== 'none')
                .map(e => e.dataset.id);
        }})()""")
        assert shown == [exs[0].id]
    # nothing but the file itself (and the embedded data: image) was requested
    assert browser.requests and all(u.startswith(("file://", "data:")) for u in browser.requests), browser.requests

"""The MLflow pages a user opens, rendered by a real `mlflow server` in headless Chromium: the
Evaluation runs list, ReSet and MTL compared example by example, one trace with its judges'
assessments and rationales, the Judges page, and the Overview's quality and usage (the LLM
judge's tokens). The store is written through the server by the same code a pipeline run uses
(docs/screenshots.py `sample`: reset.genai.log_evaluation and the LLM judge against
tests/fault_server.py); each page must show content that only that data puts there (the runs'
names, the judges, a rationale, the judge model), so an empty page fails. The same pages make the
screenshots in docs/img (`python docs/screenshots.py --sample`)."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from docs import screenshots
from tests.chromium import chromium_binary

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pages():
    if chromium_binary() is None:  # `make test` installs it: missing, the test fails (it never skips silently)
        pytest.fail("no Chromium or Chrome found (chromium, chromium-browser, google-chrome on PATH, or $CHROMIUM): "
                    "`make test` installs Debian's chromium; on Ubuntu install Google Chrome or the chromium snap")
    with tempfile.TemporaryDirectory(prefix="reset-mlflow-pages-") as tmp, \
            screenshots.serve(f"sqlite:///{Path(tmp) / 'mlflow.db'}", artifacts=str(Path(tmp) / "artifacts"),
                              allow_code_judges=True) as url:
        import mlflow

        try:
            ctx = screenshots.context(url, screenshots.sample(url, n=6))
            yield ctx, screenshots.capture(ctx, timeout_s=120)
        finally:
            mlflow.set_tracking_uri(None)


def test_every_page_shows_the_run(pages):
    ctx, shown = pages
    assert set(shown) == {p.slug for p in screenshots.PAGES}
    assert set(ctx.runs) == {"base", "mtl", "reset"} and ctx.judges == ["k-precision", "reference", "rules"]
    assert ctx.dataset.startswith("reset-test-") and ctx.llm_model == "judge-llm"
    for slug, page in shown.items():
        assert not page["missing"], f"{slug} ({page['url']}) does not show {page['missing']}"
        img = Image.open(io.BytesIO(page["png"])).convert("RGB")
        assert img.size == (screenshots.WIDTH, screenshots.HEIGHT) and len(set(img.getdata())) > 50


def test_pages_show_the_assessments_not_just_the_frame(pages):
    ctx, shown = pages
    # the comparison lists each judge's values for both runs, per example
    compare = shown["compare"]["text"]
    assert compare.count(ctx.instruction) >= 1 and all(compare.count(j) >= 1 for j in ctx.judges)
    # the trace: its feedback with the rationale the evaluation wrote, and the expected response
    trace = shown["trace"]["text"]
    assert "Rationale" in trace and any(t in trace for t in ctx.trace_texts[-1:])
    # the Judges page: each judge as a code-defined judge; quality: every judge and the pass / fail facts
    assert shown["judges"]["text"].count("Custom code") >= len(ctx.judges) + 2
    assert "answer_correct" in shown["quality"]["text"]
    # usage: the LLM judge's calls priced by model
    assert ctx.llm_model in shown["usage"]["text"] and "Token Usage" in shown["usage"]["text"]

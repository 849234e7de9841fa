"""docs/cluster.md and the CI workflow match the CLI and the manifests: every `python -m pipelines`
command they show parses with the CLI's own parser, and every manifests/ or configs/ path they name
exists."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from pipelines.cli import _parser

from .conftest import REPO

DOC = REPO / "docs" / "cluster.md"
CI = REPO / ".github" / "workflows" / "ci.yml"


def _doc_commands() -> list[str]:
    out, current = [], ""
    for line in DOC.read_text().splitlines():
        text = line.strip()
        if current:
            current += " " + text.rstrip("\\")
            if not text.endswith("\\"):
                out.append(current)
                current = ""
        elif text.startswith("python -m pipelines "):
            current = text.rstrip("\\").split("  #")[0]
            if not text.endswith("\\"):
                out.append(current)
                current = ""
    return out


def _ci_commands() -> list[str]:
    wf = yaml.safe_load(CI.read_text())
    runs = [step["run"] for job in wf["jobs"].values() for step in job["steps"] if "run" in step]
    return [" ".join(r.split()) for r in runs if "-m pipelines " in r]


def _argv(command: str) -> list[str]:
    command = re.sub(r"<[^>]+>", "x", command)  # the docs' placeholders
    argv = shlex.split(command, comments=True)
    return argv[argv.index("pipelines") + 1:]


@pytest.mark.parametrize("command", _doc_commands() + _ci_commands())
def test_every_command_shown_parses(command):
    try:
        _parser().parse_args(_argv(command))
    except SystemExit as exc:
        pytest.fail(f"{command!r} does not parse ({exc})")


def test_the_docs_and_ci_show_the_cluster_commands():
    shown = {_argv(c)[0] for c in _doc_commands()}
    assert {"compile", "upload", "submit", "schedule", "promote", "champion"} <= shown
    assert [_argv(c)[0] for c in _ci_commands()] == ["compile", "upload", "submit", "promote"]


def test_every_path_named_exists():
    text = DOC.read_text() + CI.read_text()
    paths = set(re.findall(r"\b((?:manifests|configs|images|reset|pipelines|tests)/[\w./-]*\w)", text))
    assert len(paths) > 10
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, missing

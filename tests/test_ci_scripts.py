"""The set-up checks `make test` and `make demo` run before anything else: .ci/check-python (Python
3.11 with venv, else what to install) and .ci/system-deps (what the tests need from the system), run
as the Makefile runs them, with stand-in Pythons and a PATH that lacks a tool; and the workflow's
test job, written for GitHub's non-root runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from .conftest import REPO

CHECK_PYTHON = REPO / ".ci" / "check-python"
SYSTEM_DEPS = REPO / ".ci" / "system-deps"


def _fake_python(tmp_path: Path, version: str, venv: bool = True) -> Path:
    """A stand-in for a Python: prints `version` for the version probe, fails the venv probe if asked."""
    path = tmp_path / f"python{version}"
    path.write_text("#!/bin/sh\n"
                    'case "$2" in\n'
                    f"  *ensurepip*) exit {0 if venv else 1} ;;\n"
                    f"  *) echo {version} ;;\n"
                    "esac\n")
    path.chmod(0o755)
    return path


def _run(script: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(script), *args], capture_output=True, text=True, timeout=60,
                          env=env or dict(os.environ))


def test_check_python_accepts_this_python_311():
    assert sys.version_info[:2] == (3, 11)
    done = _run(CHECK_PYTHON, sys.executable)
    assert done.returncode == 0 and done.stderr == ""


def test_check_python_names_a_wrong_version_and_what_to_install(tmp_path):
    done = _run(CHECK_PYTHON, str(_fake_python(tmp_path, "3.12")))
    assert done.returncode == 1
    assert "is Python 3.12; reset-kfp needs Python 3.11" in done.stderr
    assert "apt-get install python3.11 python3.11-venv" in done.stderr and "PYTHON=python3.11" in done.stderr


def test_check_python_names_a_missing_venv_module(tmp_path):
    done = _run(CHECK_PYTHON, str(_fake_python(tmp_path, "3.11", venv=False)))
    assert done.returncode == 1 and "sudo apt-get install python3.11-venv" in done.stderr


def test_check_python_names_a_python_that_is_not_there(tmp_path):
    done = _run(CHECK_PYTHON, str(tmp_path / "python3.11"))
    assert done.returncode == 1 and "no Python at" in done.stderr


def test_system_deps_names_what_is_missing_where_it_cannot_install(tmp_path):
    """A PATH with the shell's tools but no git and no apt-get: it says what is missing, exits 1,
    and installs nothing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "ls", "id", "cat", "unshare", "true", "sudo"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    done = _run(SYSTEM_DEPS, env={"PATH": str(bin_dir), "CHROMIUM": sys.executable})
    assert done.returncode == 1
    assert "make test needs: git" in done.stderr and "install them yourself here" in done.stderr


def test_the_workflow_test_job_runs_the_readme_command_as_the_runners_user():
    wf = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    job = wf["jobs"]["test"]
    assert job["runs-on"].startswith("ubuntu-") and "container" not in job  # GitHub's runner, its own user
    runs = [step["run"] for step in job["steps"] if "run" in step]
    assert runs[-1] == ".ci/run" and not any("sudo" in r for r in runs)  # make test asks for sudo itself
    setup = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python"))
    assert setup["with"]["python-version"] == "3.11"
    assert (REPO / ".ci" / "run").read_text().strip().endswith("make test")

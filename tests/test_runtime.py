"""Threads from the CPU quota: the affinity mask and the cgroup limit, not the node's core count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reset import runtime


def _affinity() -> int:
    return len(os.sched_getaffinity(0))


def test_no_cgroup_limit_uses_the_affinity_mask(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RESET_NUM_THREADS", raising=False)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert runtime.cpu_quota(tmp_path) == _affinity()


@pytest.mark.parametrize(("quota", "expected"), [("50000 100000", 1), ("150000 100000", 2), ("100000 100000", 1)])
def test_cgroup_v2_quota_caps_the_threads(tmp_path: Path, monkeypatch, quota: str, expected: int) -> None:
    monkeypatch.delenv("RESET_NUM_THREADS", raising=False)
    (tmp_path / "cpu.max").write_text(quota + "\n")
    assert runtime.cpu_quota(tmp_path) == min(expected, _affinity())


def test_cgroup_v1_quota(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RESET_NUM_THREADS", raising=False)
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert runtime.cpu_quota(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # no limit
    assert runtime.cpu_quota(tmp_path) == _affinity()


def test_env_override_and_torch(monkeypatch, tmp_path: Path) -> None:
    import torch

    monkeypatch.setenv("RESET_NUM_THREADS", "1")
    assert runtime.cpu_quota(tmp_path) == 1
    before = torch.get_num_threads()
    try:
        assert runtime.set_torch_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)

"""`data check`: read files the way the mix step does (same readers, format modules, checks and
deduplication) and say whether they are usable, without running anything else.

Usable means: every path could be read, its format was recognised, it kept at least one example,
and its invalid or oversize rows are within data.max_bad_fraction. Rows left out by a rule of the
recipe (an IF example with a context, a question without an answer) and duplicates are reported
but do not make a file unusable.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from reset.config import DataConfig, DataSource
from reset.data.card import LengthMeter
from reset.data.mix import Mixer
from reset.data.records import DataError, QuarantineWriter, Rejected
from reset.data.sources import SourceReport


@dataclass
class CheckResult:
    usable: bool
    problems: list[str]                 # one line each: why a path is not usable
    reports: list[SourceReport]
    card: dict[str, Any]
    rejected: list[Rejected] = field(default_factory=list)   # the first `show` rows not kept
    rejected_total: int = 0


def check(paths: Sequence[str], cfg: DataConfig | None = None, *, fmt: str = "auto", slot: str = "auto",
          meter: LengthMeter | None = None, cache_dir: str = "", quarantine_path: str | None = None,
          show: int = 50) -> CheckResult:
    """Check `paths` (local files or directories, s3:// or hf:// URIs). `slot` "auto" judges each
    file on its format's own side (IF formats as instruction data, NQ and CNN/DailyMail as
    grounded); "instruction" / "grounded" as the mix step would in that slot."""
    cfg = cfg or DataConfig()
    problems: list[str] = []
    q = QuarantineWriter(quarantine_path, keep=show)
    with tempfile.TemporaryDirectory(prefix="reset-data-check-") as spool:
        mixer = Mixer(cfg, quarantine=q, meter=meter, spool_dir=spool)
        try:
            for path in paths:
                src = DataSource(path=path, format=fmt) if fmt != "mapped" else DataSource(path=path)
                try:
                    mixer.read(src, slot, cache_dir)
                except DataError as exc:
                    problems.append(str(exc))
            mixer.finish(split=False)
            card = mixer.card(title=", ".join(paths))
            q.close()
        except BaseException:
            q.abort()
            raise
        finally:
            mixer.close()
    reports = [s.report for s in mixer.sources if s.report]
    for rep in reports:
        if rep.rows and not rep.kept and not any(rep.path in p for p in problems):
            problems.append(f"{rep.path}: no usable rows")
    usable = not problems and bool(reports) and all(r.kept for r in reports)
    return CheckResult(usable, problems, reports, card, list(q.first), q.total)

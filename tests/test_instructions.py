"""Verifiable instruction checks: IFEval's own checkers (lm-eval), strict and loose."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reset import instructions
from reset.instructions import (
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


# (constraint, a response that follows it, a response that does not), IFEval strict
CASES = [
    (c("length_constraints:number_words", relation="less than", num_words=5), "One two three four.",
     "One two three four five."),
    (c("length_constraints:number_words", relation="at least", num_words=5), "One two three four five.",
     "One two three four."),
    (c("length_constraints:number_sentences", relation="less than", num_sentences=3), "First one. Second one.",
     "First one. Second one. Third one."),
    (c("length_constraints:number_sentences", relation="at least", num_sentences=3), "One. Two! Three?",
     "One. Two!"),
    (c("length_constraints:number_paragraphs", num_paragraphs=2), "First.\n***\nSecond.", "First.\n***\n***\nThird."),
    (c("length_constraints:nth_paragraph_first_word", num_paragraphs=2, nth_paragraph=2, first_word="Then"),
     "First part.\n\n\"Then, the second part.", "First part.\n\nNext the second part."),
    (c("keywords:existence", keywords=["bike", "Health"]), "My BIKE is good for my health.",
     "Cycling is healthy."),
    (c("keywords:forbidden_words", forbidden_words=["car"]), "Cars and carpets are fine here.",
     "I drove the Car home."),
    (c("keywords:frequency", keyword="tree", relation="at least", frequency=2), "Tree after tree.", "One tree."),
    (c("keywords:letter_frequency", letter="z", let_relation="less than", let_frequency=2), "Zoo.", "Zizz."),
    (c("language:response_language", language="fr"),
     "Bonjour, je m'appelle Marie et j'habite à Paris depuis dix ans.",
     "Hello, my name is Mary and I have lived in Paris for ten years."),
    (c("detectable_format:number_bullet_lists", num_bullets=2), "Intro\n* first\n- second\n**bold** line",
     "* first\n* second\n* third"),
    (c("detectable_format:constrained_response"), "Well. My answer is no.", "No."),
    (c("detectable_format:number_highlighted_sections", num_highlights=2), "*one* and **two**", "*one* only"),
    (c("detectable_format:multiple_sections", section_spliter="Section", num_sections=2),
     "Section 1\nA\nSection 2\nB", "Section 1\nOnly one"),
    (c("detectable_format:json_format"), '```json\n{"a": 1}\n```', "{a: 1}"),
    (c("detectable_format:title"), "<<My Title>>\nBody text.", "<<  >> no real title, <no> <<"),
    (c("detectable_content:number_placeholders", num_placeholders=2), "Send to [name] at [address].",
     "Send to [name]."),
    (c("detectable_content:postscript", postscript_marker="P.S."), "Body.\n\nP.S. see you soon",
     "Body. PS no dots"),
    (c("detectable_content:postscript", postscript_marker="P.P.S"), "Body.\np.p.s extra", "Body.\nP.S. only"),
    (c("combination:repeat_prompt", prompt_to_repeat="Say hi."), "say hi. Hi!", "Hi! Say hi."),
    (c("combination:two_responses"), "Yes.\n******\nNo.", "Yes.\n******\nYes."),
    (c("startend:end_checker", end_phrase="Any other questions?"), '"Done here. any other questions?"  ',
     "Any other questions? Yes."),
    (c("startend:quotation"), '  "wrapped in quotes"\n', '"only at the start'),
    (c("change_case:capital_word_frequency", capital_frequency=2, capital_relation="at least"),
     "The NASA and ESA teams met.", "The Nasa team met."),
    (c("change_case:english_lowercase"), "all lower case, 42 times.", "Not all lower case."),
    (c("change_case:english_capital"), "ALL CAPS, 42 TIMES.", "ALL CAPS bUT ONE."),
    (c("punctuation:no_comma"), "No commas here at all.", "One, two."),
]

# (constraint, a response that IFEval's loose mode accepts but strict mode does not)
LOOSE_ONLY = [
    (c("punctuation:no_comma"), "Sure, here it is:\nNo commas in this answer."),  # chatty first line
    (c("startend:quotation"), 'Sure, here it is:\n"A quoted answer."'),
    (c("change_case:english_lowercase"), "Sure! Here is my answer:\nall of this text is written in lowercase."),
    (c("length_constraints:number_words", relation="less than", num_words=5), "Sure, here is my answer:\nOne two."),
    (c("startend:end_checker", end_phrase="Any other questions?"), "Done. **Any other questions?**"),  # markdown
    (c("detectable_format:json_format"), '```json\n{"a": 1}\n```\nHope this helps!'),  # chatty last line
    (c("combination:repeat_prompt", prompt_to_repeat="Say hi."), "Of course.\nSay hi. Hi!"),
    (c("detectable_format:constrained_response"), "Sure:\n**My answer is yes**."),
]


def test_every_ifeval_instruction_is_supported_and_has_a_case() -> None:
    assert set(SUPPORTED_IDS) == set(CHECKERS) == IFEVAL_IDS
    assert {case[0]["id"] for case in CASES} == IFEVAL_IDS


def test_checkers_are_lm_evals_own_classes() -> None:
    for iid, checker in CHECKERS.items():
        assert checker.cls.__module__ == "lm_eval.tasks.ifeval.instructions", iid
    # loading them ran neither lm_eval/__init__ nor lm_eval/tasks/__init__, and left sys.modules clean
    assert not any(name == "lm_eval" or name.startswith("lm_eval.") for name in sys.modules)


@pytest.mark.parametrize(("constraint", "good", "bad"), CASES, ids=[f"{x[0]['id']}-{i}" for i, x in enumerate(CASES)])
def test_follows_and_violates(constraint: dict, good: str, bad: str) -> None:
    assert check(constraint, good) is True
    assert check(constraint, bad) is False
    assert check(constraint, good, loose=True) is True  # loose is never below strict


@pytest.mark.parametrize(("constraint", "response"), LOOSE_ONLY,
                         ids=[f"{x[0]['id']}-{i}" for i, x in enumerate(LOOSE_ONLY)])
def test_loose_accepts_what_strict_rejects(constraint: dict, response: str) -> None:
    assert check(constraint, response) is False
    assert check(constraint, response, loose=True) is True


def test_loose_does_not_rescue_a_real_violation() -> None:
    assert check(c("punctuation:no_comma"), "One, two, three.", loose=True) is False
    assert check(c("detectable_format:title"), "Line one\nLine two\nLine three", loose=True) is False
    assert check(c("change_case:english_capital"), "Sure:\nNot capitals at all.\nBye", loose=True) is False


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
        from reset.instructions import PUNKT_DATA, count_sentences
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
    for constraint, _, _ in CASES:
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

"""Verifiable instruction checks (IFEval ids and kwargs)."""

from __future__ import annotations

import pytest

from reset.instructions import (
    CHECKERS,
    SUPPORTED_IDS,
    InstructionError,
    check,
    count_sentences,
    count_words,
    describe,
    instruction_score,
    validate_constraints,
)


def c(iid: str, **kwargs: object) -> dict:
    return {"id": iid, "kwargs": kwargs}


# (constraint, a response that follows it, a response that does not)
CASES = [
    (c("length_constraints:number_words", relation="less than", num_words=5), "One two three four.",
     "One two three four five."),
    (c("length_constraints:number_words", relation="at least", num_words=5), "One two three four five.",
     "One two three four."),
    (c("length_constraints:number_sentences", relation="less than", num_sentences=3), "First one. Second one.",
     "First one. Second one. Third one."),
    (c("length_constraints:number_sentences", relation="at least", num_sentences=3), "One. Two! Three?",
     "One. Two!"),
    (c("keywords:existence", keywords=["bike", "Health"]), "My BIKE is good for my health.",
     "Biker health is a topic."),
    (c("keywords:forbidden_words", forbidden_words=["car"]), "Cars and carpets are fine here.",
     "I drove the Car home."),
    (c("detectable_format:number_bullet_lists", num_bullets=2), "Intro\n* first\n- second\n**bold** line",
     "* first\n* second\n* third"),
    (c("change_case:english_lowercase"), "all lower case, 42 times.", "Not all lower case."),
    (c("change_case:english_capital"), "ALL CAPS, 42 TIMES.", "ALL CAPS bUT ONE."),
    (c("punctuation:no_comma"), "No commas here at all.", "One, two."),
    (c("startend:end_checker", end_phrase="Any other questions?"), '"Done here. any other questions?"  ',
     "Any other questions? Yes."),
    (c("startend:quotation"), '  "wrapped in quotes"\n', '"only at the start'),
    (c("detectable_format:title"), "<<My Title>>\nBody text.", "<<  >> no real title, <no> <<"),
    (c("detectable_content:postscript", postscript_marker="P.S."), "Body.\n\nP.S. see you soon",
     "Body. PS no dots"),
    (c("detectable_content:postscript", postscript_marker="P.P.S"), "Body.\np.p.s extra", "Body.\nP.S. only"),
    (c("detectable_format:number_highlighted_sections", num_highlights=2), "*one* and **two**", "*one* only"),
    (c("length_constraints:number_paragraphs", num_paragraphs=2), "First.\n***\nSecond.", "First.\n***\n***\nThird."),
    (c("keywords:frequency", keyword="tree", relation="at least", frequency=2), "Tree after tree.", "One tree."),
    (c("keywords:letter_frequency", letter="z", let_relation="less than", let_frequency=2), "Zoo.", "Zizz."),
    (c("detectable_format:json_format"), '```json\n{"a": 1}\n```', "{a: 1}"),
    (c("detectable_format:constrained_response"), "Well. My answer is no.", "No."),
    (c("detectable_format:multiple_sections", section_spliter="Section", num_sections=2),
     "Section 1\nA\nSection 2\nB", "Section 1\nOnly one"),
    (c("detectable_content:number_placeholders", num_placeholders=2), "Send to [name] at [address].",
     "Send to [name]."),
    (c("combination:repeat_prompt", prompt_to_repeat="Say hi."), "say hi. Hi!", "Hi! Say hi."),
    (c("combination:two_responses"), "Yes.\n******\nNo.", "Yes.\n******\nYes."),
]


def test_every_supported_id_has_a_case() -> None:
    assert {case[0]["id"] for case in CASES} == set(SUPPORTED_IDS) == set(CHECKERS)


@pytest.mark.parametrize(("constraint", "good", "bad"), CASES, ids=[f"{x[0]['id']}-{i}" for i, x in enumerate(CASES)])
def test_follows_and_violates(constraint: dict, good: str, bad: str) -> None:
    assert check(constraint, good) is True
    assert check(constraint, bad) is False


def test_empty_response_never_follows() -> None:
    assert check(c("punctuation:no_comma"), "   ") is False
    assert check(c("length_constraints:number_words", relation="less than", num_words=5), "") is False


def test_counting_matches_ifeval() -> None:
    assert count_words("Hello, world! It's 2024.") == 5  # \w+ tokens: Hello world It s 2024
    assert count_sentences("Dr. Smith went home. He slept at 3.5 p.m. today! Did he?") == 3
    assert count_sentences("One. Two. Three.") == 3


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
        ({"relation": "at most", "num_words": 40}, "relation"),
        ({"relation": "less than", "num_words": 40, "num_word": 3}, "num_word"),
    ],
)
def test_bad_kwargs_are_named(kwargs: dict, name: str) -> None:
    constraint = {"id": "length_constraints:number_words", "kwargs": kwargs}
    with pytest.raises(InstructionError, match=f"'{name}'") as err:
        check(constraint, "some text")
    assert "length_constraints:number_words" in str(err.value)


def test_list_kwarg_must_be_list_of_strings() -> None:
    with pytest.raises(InstructionError, match="'keywords'"):
        check(c("keywords:existence", keywords="bike"), "bike")
    with pytest.raises(InstructionError, match="'keywords'"):
        check(c("keywords:existence", keywords=[]), "bike")


def test_null_kwargs_are_ignored_as_in_ifeval_data() -> None:
    constraint = {"id": "punctuation:no_comma", "kwargs": {"num_words": None, "keywords": None}}
    assert check(constraint, "fine") is True
    assert check({"id": "punctuation:no_comma"}, "fine") is True
    assert check(c("length_constraints:number_words", relation="at least", num_words=2.0), "a b") is True


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
    for iid in SUPPORTED_IDS:
        case = next(x[0] for x in CASES if x[0]["id"] == iid)
        assert describe(case).strip()


def test_instruction_score() -> None:
    constraints = [c("punctuation:no_comma"), c("change_case:english_lowercase")]
    score, details = instruction_score(constraints, "no commas but Capital")
    assert score == 0.5
    assert details == [
        {"id": "punctuation:no_comma", "followed": True},
        {"id": "change_case:english_lowercase", "followed": False},
    ]
    assert instruction_score([], "anything") == (None, [])
    assert instruction_score(constraints, "all good here")[0] == 1.0


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

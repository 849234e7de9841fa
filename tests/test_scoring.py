"""Lexical scores: K-Precision, token F1, ROUGE-L."""

from __future__ import annotations

import pytest

from reset.judging.lexical import k_precision, normalize_tokens, rouge_l_f1, task_score, token_f1


def test_normalize_tokens_squad_style() -> None:
    assert normalize_tokens("The Cat's hat, an Apple!") == ["cats", "hat", "apple"]
    assert normalize_tokens("  A  theater\tthe\nend ") == ["theater", "end"]
    assert normalize_tokens("") == []


def test_k_precision() -> None:
    assert k_precision("Paris is big", "Paris is a big city") == 1.0
    # content words only by default: "is" is neutral, so 1 of 2 content words ("huge") is ungrounded
    assert k_precision("Paris is huge", "Paris is a big city") == pytest.approx(1 / 2)
    assert k_precision("Paris is huge", "Paris is a big city", content_only=False) == pytest.approx(2 / 3)
    # citing the source costs nothing, under the default
    assert k_precision("According to the passage, Paris is big.", "Paris is a big city") == 1.0
    assert k_precision("According to the passage, Paris is big.", "Paris is a big city",
                       content_only=False) == pytest.approx(3 / 6)
    assert k_precision("Rome", "Paris is a big city") == 0.0
    # membership, not counts: repeating a context word keeps it grounded
    assert k_precision("big big big", "a big city") == 1.0


def test_k_precision_empty() -> None:
    assert k_precision("", "Paris is a big city") == 0.0
    assert k_precision("the a an", "Paris") == 0.0
    assert k_precision("Paris", "") == 0.0


def test_token_f1() -> None:
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert token_f1("cat cat cat", "cat dog") == pytest.approx(0.4)  # overlap counted once per reference token
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("Cat!", "the cat") == 1.0
    assert token_f1("", "") == 1.0
    assert token_f1("cat", "") == 0.0
    assert token_f1("", "cat") == 0.0


def test_rouge_l_f1() -> None:
    assert rouge_l_f1("one two three four", "one three two four") == pytest.approx(0.75)
    assert rouge_l_f1("one two", "one two three four five six") == pytest.approx(0.5)
    assert rouge_l_f1("one two three", "one two three") == 1.0
    assert rouge_l_f1("four five", "one two three") == 0.0
    assert rouge_l_f1("", "") == 1.0
    assert rouge_l_f1("", "one") == 0.0


def test_task_score_dispatch() -> None:
    # token F1 ignores order, ROUGE-L does not
    assert task_score("one two three four", "one three two four", "extractive") == 1.0
    assert task_score("one two three four", "one three two four", "abstractive") == pytest.approx(0.75)
    assert task_score("one two three four", "one three two four", "open") == pytest.approx(0.75)
    with pytest.raises(ValueError, match="'summary'"):
        task_score("x", "x", "summary")


@pytest.mark.parametrize("task", ["extractive", "abstractive"])
def test_copying_the_passage_is_punished(task: str) -> None:
    passage = "The Eiffel Tower stands in Rome. It was finished in 1921 and is made of wrought iron."
    reference = "It stands in Rome."
    copy = task_score(passage, reference, task)
    assert k_precision(passage, passage) == 1.0
    assert copy < 0.6
    assert copy < task_score("The tower stands in Rome.", reference, task)


def test_scores_are_in_unit_interval() -> None:
    texts = ["", "a", "Paris is big", "big big Paris Paris city", "One, two; three!"]
    for x in texts:
        for y in texts:
            for value in (k_precision(x, y), token_f1(x, y), rouge_l_f1(x, y)):
                assert 0.0 <= value <= 1.0

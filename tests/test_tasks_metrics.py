"""Text metrics against hand-computed values (seqeval-style entities, SQuAD v2 EM / F1)."""

import math

import pytest

from metalr import text_metrics as tm


def test_bio_entities_conlleval_chunking():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-ORG", "B-ORG", "I-MISC", "I-PER"]
    assert tm.bio_entities(tags) == [("PER", 0, 1), ("LOC", 3, 4), ("ORG", 5, 5), ("ORG", 6, 6), ("MISC", 7, 7), ("PER", 8, 8)]
    assert tm.bio_entities(["O", "O"]) == []
    with pytest.raises(ValueError, match="not BIO"):
        tm.bio_entities(["PER"])


def test_entity_scores_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "B-LOC"]]
    # gold: PER(0,1) LOC(3,3) | ORG(0,0)   pred: PER(0,1) ORG(3,3) | ORG(0,0) LOC(1,1): tp=2, pred=4, gold=3
    s = tm.entity_scores(gold, pred)
    assert s["precision"] == pytest.approx(2 / 4)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    # a boundary error is a miss, not half a hit
    assert tm.entity_scores([["B-PER", "I-PER"]], [["B-PER", "O"]])["f1"] == 0.0
    assert tm.token_accuracy(gold, pred) == pytest.approx(4 / 6)


def test_entity_scores_match_seqeval_if_installed():
    seqeval = pytest.importorskip("seqeval.metrics")
    gold = [["B-PER", "I-PER", "O", "I-LOC"], ["B-ORG", "I-ORG", "B-PER"]]
    pred = [["B-PER", "O", "O", "I-LOC"], ["B-ORG", "I-ORG", "I-PER"]]
    assert tm.entity_scores(gold, pred)["f1"] == pytest.approx(seqeval.f1_score(gold, pred))


def test_squad_normalisation_and_scores_by_hand():
    assert tm.normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert tm.exact_match("the Eiffel tower.", "Eiffel Tower") == 1.0
    # pred "new york city" vs gold "new york": overlap 2, P = 2/3, R = 1 -> F1 = 0.8
    assert tm.f1_score("new york city", "New York") == pytest.approx(0.8)
    preds = ["new york city", "", "", "paris"]
    golds = [["New York", "NYC"], [], ["London"], []]
    s = tm.squad_v2_scores(preds, golds)
    # EM: 0, 1 (both no-answer), 0 (missed answer), 0 (answered an unanswerable) -> 1/4
    assert s["exact_match"] == pytest.approx(0.25)
    assert s["f1"] == pytest.approx((0.8 + 1 + 0 + 0) / 4)
    assert s["has_ans_f1"] == pytest.approx(0.4) and s["no_ans_exact_match"] == pytest.approx(0.5)
    assert math.isnan(tm.squad_v2_scores(["x"], [["x"]])["no_ans_f1"])
    with pytest.raises(ValueError):
        tm.squad_v2_scores(["a"], [])

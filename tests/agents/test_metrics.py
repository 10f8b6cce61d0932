"""Answer metrics and ranking parsing against hand-worked examples."""
import pytest

from alignax.agents.scoring import answer_metrics as metrics


def test_normalize_answer():
  assert metrics.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
  assert metrics.normalize_answer("An apple, a pear") == "apple pear"


@pytest.mark.parametrize("pred, golds, em, f1", [
    ("the Paris", ["Paris"], 1.0, 1.0),
    ("Paris France", ["Paris"], 0.0, 2 * 0.5 * 1.0 / 1.5),   # P=1/2, R=1
    ("new york city", ["New York", "NYC"], 0.0, 2 * (2 / 3) * 1.0 / (2 / 3 + 1)),
    ("london", ["Paris"], 0.0, 0.0),
    ("", ["Paris"], 0.0, 0.0),
    ("a", ["the"], 1.0, 1.0),  # both normalise to empty: SQuAD counts a match
    ("paris paris", ["paris"], 0.0, 2 * 0.5 * 1.0 / 1.5),
])
def test_em_and_f1(pred, golds, em, f1):
  assert metrics.exact_match(pred, golds) == em
  assert metrics.token_f1(pred, golds) == pytest.approx(f1)


def test_answer_accuracy_and_scores():
  assert metrics.answer_accuracy("it is in Paris, France", ["paris"]) == 1.0
  assert metrics.answer_accuracy("parisian", ["paris"]) == 0.0
  s = metrics.score_answers(["paris", "rome x"], [["Paris"], ["rome"]])
  assert s["em"] == 0.5 and s["accuracy"] == 1.0
  assert s["f1"] == pytest.approx((1.0 + 2 / 3) / 2)


def test_parse_ranking():
  assert metrics.parse_ranking("[2] > [9] > [2] > [1]", 3) == [1, 0, 2]
  assert metrics.parse_ranking("[2] > [9] > [2] > [1]", 3, complete=False) == [1, 0]
  assert metrics.parse_ranking("garbage", 4, 2) == [0, 1]
  assert metrics.parse_ranking("[3]>[1]", 5, k=3) == [2, 0, 1]
  assert metrics.parse_ranking("[0] [6] [5]", 5, complete=False) == [4]

import pytest

from s3core.errors import S3Error
from s3core.eval.scoring import score_answers

ITEMS = [
    ("Who?", "The Barack Obama!", ["Barack Obama"]),  # EM and span
    ("Who?", "It was Barack Obama.", ["Barack Obama"]),  # span only
    ("What?", "Obamacare", ["Obama"]),  # neither: goes to the judge
]


def test_judge_only_sees_span_misses_and_decides_genacc():
    asked = []

    def judge(items):
        asked.extend(items)
        return [True] * len(items)

    s = score_answers(ITEMS, judge)
    assert [x.em for x in s] == [True, False, False]
    assert [x.span for x in s] == [True, True, False]
    assert [x.judge for x in s] == [None, None, True]
    assert [x.genacc for x in s] == [True, True, True]
    assert asked == [("What?", "Obamacare", ["Obama"])]
    # "it was barack obama" vs "barack obama": precision 2/4, recall 2/2
    assert s[1].f1 == pytest.approx(2 * 0.5 * 1.0 / (0.5 + 1.0))


def test_without_judge_genacc_is_span():
    assert [x.genacc for x in score_answers(ITEMS)] == [True, True, False]


def test_judge_returning_wrong_count_is_an_error():
    with pytest.raises(S3Error, match="1 items"):
        score_answers(ITEMS, lambda items: [])

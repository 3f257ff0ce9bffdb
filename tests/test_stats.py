"""Intervals and paired tests of flowcore.stats, against hand computations."""
import pytest

from flowcore import stats


def test_wilson_hand_values():
    # 0/10: centre = (z^2/20)/(1+z^2/10), half the same, so [0, 2*centre]
    lo, hi = stats.wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(2 * (1.96**2 / 20) / (1 + 1.96**2 / 10))
    assert stats.accuracy([True, False, False, True]) == {"n": 4, "correct": 2, "accuracy": 0.5,
                                                           "ci95": list(stats.wilson(2, 4))}


def test_paired_difference_and_mcnemar_hand_values():
    a = [i in (0, 1, 2) for i in range(10)]          # right on 0, 1, 2
    b = [i in (2, 3, 4, 5, 6) for i in range(10)]    # right on 2..6
    d = stats.paired_difference(a, b)
    assert (d["only_a"], d["only_b"], d["n"]) == (2, 4, 10)
    assert d["difference"] == pytest.approx(-0.2)
    half = 1.96 * (2 + 4 - (2 - 4) ** 2 / 10) ** 0.5 / 10
    assert d["ci95"] == pytest.approx([-0.2 - half, -0.2 + half])
    assert d["p_value"] == pytest.approx(2 * (1 + 6 + 15) / 2**6)  # exact binomial, 2 of 6 discordant
    assert stats.paired_difference(b, a)["difference"] == pytest.approx(0.2)
    same = stats.paired_difference(a, a)
    assert same["difference"] == 0.0 and same["ci95"] == [0.0, 0.0] and same["p_value"] == 1.0
    assert stats.paired_difference([], [])["n"] == 0
    few = stats.paired_difference([True, True, False, True], [False, False, True, False])  # 3 vs 1 of 4: Wald > 1
    assert few["difference"] == pytest.approx(0.5) and few["ci95"][1] == 1.0 and -1.0 < few["ci95"][0] < 0.5
    with pytest.raises(ValueError):
        stats.paired_difference([True], [True, False])

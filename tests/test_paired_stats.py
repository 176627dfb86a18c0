"""The paired t-test papers/energy_zoo uses, against closed forms of Student's t."""
import math

import pytest

from train.workflows.paired_stats import paired_t, student_t_sf2


@pytest.mark.parametrize("t", [0.0, 0.5, 1.0, 2.92, 4.3, 10.0, -3.0])
def test_t_tail_matches_closed_forms(t):
    # df = 1 is the Cauchy distribution; df = 2 has p = 1 - |t| / sqrt(2 + t^2).
    assert student_t_sf2(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(abs(t)), abs=1e-9)
    assert student_t_sf2(t, 2) == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t), abs=1e-9)


def test_t_tail_tends_to_the_normal():
    assert student_t_sf2(1.96, 100_000) == pytest.approx(math.erfc(1.96 / math.sqrt(2)), abs=1e-4)


def test_paired_t_on_known_differences():
    res = paired_t([2.41, 2.43, 2.40], [2.45, 2.46, 2.44])      # differences -0.04, -0.03, -0.04
    assert res["diff"] == pytest.approx(-0.11 / 3)
    assert res["t"] == pytest.approx(-11.0)                     # mean / (std / sqrt(3))
    assert res["p"] == pytest.approx(1 - 11 / math.sqrt(123), abs=1e-9)
    same = paired_t([1.0, 2.0], [1.0, 2.0])
    assert same["diff"] == 0 and same["p"] == 1.0
    assert paired_t([1.0], [0.5])["p"] is None
    with pytest.raises(ValueError, match="equal lengths"):
        paired_t([1.0, 2.0], [1.0])

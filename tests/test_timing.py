"""energy_attn.timing: the turn order every benchmark relies on, and paired ratios."""
import pytest

from energy_attn.timing import paired_median, paired_ratios, summary, take_turns


def test_calls_take_turns_round_by_round():
    order, rounds_seen = [], []
    calls = {name: (lambda name=name: order.append(name) or 0.0) for name in ("a", "b", "c")}
    times = take_turns(calls, 3, on_round=lambda r, t: rounds_seen.append((r, sorted(t))))
    assert order == ["a", "b", "c"] * 3
    assert rounds_seen == [(r, ["a", "b", "c"]) for r in range(3)]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for ts in times.values() for t in ts)


def test_paired_ratio_is_the_median_of_same_round_ratios():
    # a is 2x b in every round, though the load changed 10x between rounds
    a, b = [2.0, 20.0, 4.0, 40.0], [1.0, 10.0, 2.0, 20.0]
    assert paired_ratios(a, b) == [2.0] * 4
    assert paired_median(a, b) == 2.0
    # rounds that pair unlike loads: the per-round median differs from the medians' ratio
    a, b = [2.0, 3.0, 40.0], [1.0, 20.0, 10.0]
    assert paired_median(a, b) == 2.0 and summary(a)["median_s"] / summary(b)["median_s"] == 0.3
    assert paired_median([1.0, 9.0, 2.0], [1.0, 1.0, 1.0]) == 2.0
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_ratios([1.0], [1.0, 2.0])
    assert summary([3.0, 1.0, 2.0]) == {"min_s": 1.0, "median_s": 2.0}

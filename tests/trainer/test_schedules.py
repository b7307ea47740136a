import math

import numpy as np
import pytest

from selfsup.trainer.schedules import cosine_schedule


def test_cosine_without_warmup_endpoints_and_formula():
    schedule = cosine_schedule(1.0, 0.1, total_steps=11)
    assert schedule.shape == (11,) and schedule.dtype == np.float64
    assert schedule[0] == pytest.approx(1.0)
    assert schedule[-1] == pytest.approx(0.1)
    # the middle of the cosine is the mean of the two ends
    assert schedule[5] == pytest.approx(0.55)
    expected = 0.1 + 0.9 * (1 + math.cos(math.pi * 3 / 10)) / 2
    assert schedule[3] == pytest.approx(expected)
    assert np.all(np.diff(schedule) < 0)


def test_cosine_with_warmup():
    schedule = cosine_schedule(0.8, 0.0, total_steps=14, warmup_steps=4, warmup_start_value=0.0)
    assert len(schedule) == 14
    np.testing.assert_allclose(schedule[:5], [0.0, 0.2, 0.4, 0.6, 0.8])
    assert schedule[-1] == pytest.approx(0.0)
    assert np.all(np.diff(schedule[:5]) > 0)
    assert np.all(np.diff(schedule[4:]) < 0)
    cosine_steps = 10
    for j in (1, 4, 7):
        assert schedule[4 + j] == pytest.approx(0.4 * (1 + math.cos(math.pi * j / (cosine_steps - 1))))


def test_cosine_warmup_start_value_and_edge_lengths():
    schedule = cosine_schedule(1.0, 0.5, total_steps=3, warmup_steps=2, warmup_start_value=0.5)
    np.testing.assert_allclose(schedule, [0.5, 0.75, 1.0])
    only_warmup = cosine_schedule(1.0, 0.0, total_steps=4, warmup_steps=4)
    np.testing.assert_allclose(only_warmup, [0.0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(cosine_schedule(0.3, 0.0, total_steps=1), [0.3])
    np.testing.assert_allclose(cosine_schedule(0.3, 0.0, total_steps=2), [0.3, 0.0])


@pytest.mark.parametrize("total, warmup, words", [
    (0, 0, "total_steps=0"), (-3, 0, "total_steps=-3"), (5, 6, "warmup_steps=6"), (5, -1, "warmup_steps=-1"),
])
def test_cosine_rejects_bad_lengths(total, warmup, words):
    with pytest.raises(ValueError, match=words):
        cosine_schedule(1.0, 0.0, total_steps=total, warmup_steps=warmup)


def test_warmup_larger_than_total_names_both_values():
    with pytest.raises(ValueError) as error:
        cosine_schedule(1.0, 0.0, 10, 20)
    assert "warmup_steps=20" in str(error.value) and "total_steps=10" in str(error.value)

"""The poller's backoff after failures in a row: a random time between half and all of
`interval x 2**n`, capped at 8 intervals."""

import pytest

from public_service import backoff_delay

# failures in a row -> (low, high) in intervals, written out by hand
BOUNDS = [(1, 1, 2), (2, 2, 4), *((failures, 4, 8) for failures in range(3, 12))]


@pytest.mark.parametrize(("failures", "low", "high"), BOUNDS)
@pytest.mark.parametrize("interval", [1.0, 2.0])
def test_backoff_lies_between_half_and_all_of_its_ceiling(failures, low, high, interval):
    assert backoff_delay(failures, interval, lambda: 0.0) == low * interval
    assert backoff_delay(failures, interval, lambda: 1.0) == high * interval
    for rand in (0.5, 0.999999):
        assert low * interval <= backoff_delay(failures, interval, lambda r=rand: r) <= high * interval


def test_backoff_is_jittered():
    assert backoff_delay(3, 1.0, lambda: 0.0) != backoff_delay(3, 1.0, lambda: 0.9)

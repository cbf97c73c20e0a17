"""messenger.backoff: the one wait-after-failure rule of the retry loops."""

import pytest

from messenger.backoff import Backoff, backoff_secs


def test_waits_double_from_the_first_up_to_the_cap() -> None:
    waits = [backoff_secs(attempt, 0.1, 5.0) for attempt in range(1, 9)]
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])


def test_an_attempt_below_one_waits_the_first_delay() -> None:
    assert backoff_secs(0, 0.1, 5.0) == backoff_secs(-3, 0.1, 5.0) == 0.1


def test_a_very_long_failure_stays_at_the_cap() -> None:
    """2 ** 10_000 does not fit a float: the doublings stop counting first."""
    assert backoff_secs(10_000, 0.1, 5.0) == 5.0


def test_jitter_draws_within_its_range_and_varies() -> None:
    for attempt in range(1, 6):
        full = 2.0 * 2 ** (attempt - 1)
        waits = {backoff_secs(attempt, 2.0, 600, jitter=(0.5, 1.0)) for _ in range(50)}
        assert all(full / 2 <= wait <= full for wait in waits)
        assert len(waits) > 1


def test_retry_after_is_a_floor_capped_at_the_maximum() -> None:
    assert backoff_secs(1, 2.0, 600, retry_after_secs=30) == 30
    assert backoff_secs(1, 2.0, 600, retry_after_secs=10_000) == 600
    assert backoff_secs(5, 2.0, 600, retry_after_secs=1) == 32  # longer already


def test_backoff_counts_failures_in_a_row_and_starts_over_after_a_success() -> None:
    retry = Backoff(0.1, 5.0)
    assert [retry.failed() for _ in range(3)] == pytest.approx([0.1, 0.2, 0.4])
    retry.reset()
    assert retry.failed() == pytest.approx(0.1)
    assert retry.failed(retry_after_secs=3) == 3


def test_backoff_repeats_the_doubling_loops_it_replaced() -> None:
    """The push worker's Redis loops waited 0.1 s, then twice as long each time,
    at most 5 s: the same sequence, to the last failure."""
    retry = Backoff(0.1, 5.0)
    wait, expected = 0.1, []
    for _ in range(20):
        expected.append(wait)
        wait = min(wait * 2, 5.0)
    assert [retry.failed() for _ in range(20)] == pytest.approx(expected)

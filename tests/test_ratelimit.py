"""The token bucket behind send_rate_limit (pure: time is passed in)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pns4ones.ratelimit import RateLimiter


class RateLimiterTests(SynchronousTestCase):
    def test_burst_then_rate(self) -> None:
        """A full bucket lets `burst` sends through at once, then one per 1/rate seconds."""
        limiter = RateLimiter(10, burst=3)
        self.assertEqual([limiter.take("a", 0.0) for _ in range(3)], [0.0, 0.0, 0.0])
        self.assertAlmostEqual(limiter.take("a", 0.0), 0.1)
        self.assertEqual(limiter.take("a", 0.1), 0.0)
        self.assertEqual(limiter.take("b", 0.1), 0.0)  # buckets are per key

    def test_batch_larger_than_burst_is_charged(self) -> None:
        """A batch dearer than the burst passes once and is paid back before the next send."""
        limiter = RateLimiter(10, burst=5)
        self.assertEqual(limiter.take("a", 0.0, cost=50), 0.0)
        self.assertGreater(limiter.take("a", 0.0), 4.5)  # 45 tokens of debt + 1, at 10/s
        self.assertGreater(limiter.take("a", 4.0, cost=50), 0.0)
        self.assertEqual(limiter.take("a", 5.1), 0.0)

    @given(st.lists(st.tuples(st.floats(0, 2), st.integers(1, 40)), max_size=60))
    def test_never_more_than_rate_allows(self, steps: list[tuple[float, int]]) -> None:
        """Over any run, what was let through never exceeds burst + rate x elapsed + the last batch."""
        limiter = RateLimiter(10, burst=5)
        now, passed, largest = 0.0, 0, 0
        for gap, cost in steps:
            now += gap
            if limiter.take("k", now, cost) == 0.0:
                passed += cost
                largest = max(largest, cost)
        self.assertLessEqual(passed, 5 + 10 * now + largest)

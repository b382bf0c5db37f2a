"""A token bucket per key (pure: time is passed in)."""

from __future__ import annotations


class RateLimiter:
    """
    ``rate`` events per second per key, with bursts of up to ``burst`` events.
    :meth:`take` answers 0 when the event may go ahead, else the seconds to wait.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now: float, cost: float = 1.0) -> float:
        """
        A batch dearer than the whole burst goes ahead when the bucket is full and
        leaves it in debt: the sends after it wait until it is paid for.
        """
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        need = min(cost, self.burst)
        if tokens >= need:
            self._buckets[key] = (tokens - cost, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (need - tokens) / self.rate

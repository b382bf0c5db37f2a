"""Jittered exponential backoff for reconnecting subscribers (pure)."""

from __future__ import annotations

import random


class Backoff:
    """
    Delays that double from ``initial`` up to ``maximum``, each drawn uniformly
    from [delay/2, delay] ("equal jitter"), so that a thousand clients cut off by
    one restart do not come back in the same second.
    """

    def __init__(self, initial: float = 0.5, maximum: float = 30.0, factor: float = 2.0, rng: random.Random | None = None) -> None:
        if not 0 < initial <= maximum or factor < 1:
            raise ValueError("backoff needs 0 < initial <= maximum and factor >= 1")
        self.initial, self.maximum, self.factor = initial, maximum, factor
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0

"""The canary router: a configured share of requests goes to the canary, the same `user` always the same way."""

from __future__ import annotations

import hashlib
import random
import threading

CHAMPION, CANARY = "champion", "canary"


class CanaryRouter:
    def __init__(self, share: float, seed: int = 0):
        if not 0 <= share <= 1:
            raise ValueError(f"canary share {share} is not within [0, 1]")
        self.share = share
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def _draw(self, user: str | None) -> float:
        if user:  # sticky: a hash of the user, uniform over [0, 1)
            return int.from_bytes(hashlib.sha256(user.encode()).digest()[:8], "big") / 2**64
        with self._lock:
            return self._rng.random()

    def route(self, user: str | None, canary_live: bool) -> str:
        """The alias that answers this request."""
        if not canary_live or self.share == 0:
            return CHAMPION
        return CANARY if self._draw(user) < self.share else CHAMPION

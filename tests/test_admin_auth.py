"""The admin panel's password hashing, sessions and login throttle, with a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pns4ones.admin import auth


class PasswordTests(SynchronousTestCase):
    def test_hash_and_verify(self) -> None:
        """Argon2id PHC strings with OWASP parameters and a fresh salt each time; only the right password verifies."""
        one, two = auth.hash_password("пароль 12345"), auth.hash_password("пароль 12345")
        self.assertTrue(one.startswith("$argon2id$v=19$m=19456,t=2,p=1$"))
        self.assertNotEqual(one, two)
        self.assertTrue(auth.verify_password("пароль 12345", one))
        self.assertFalse(auth.verify_password("пароль 1234", one))
        self.assertFalse(auth.verify_password("x", "not a hash"))


class SessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sessions = auth.Sessions(self.clock, idle=100, lifetime=1000, limit=3)

    def test_idle_and_lifetime_expiry(self) -> None:
        """A session ends after `idle` seconds without a request and `lifetime` after login, whatever the activity."""
        token, session = self.sessions.create("admin")
        self.assertIs(self.sessions.get(token), session)
        self.clock.advance(99)
        self.assertIs(self.sessions.get(token), session)
        for _ in range(9):
            self.clock.advance(99)
            self.assertIs(self.sessions.get(token), session)
        self.clock.advance(20)  # 1011 s after the login
        self.assertIsNone(self.sessions.get(token))
        token, _ = self.sessions.create("admin")
        self.clock.advance(101)
        self.assertIsNone(self.sessions.get(token))

    def test_polling_does_not_keep_alive(self) -> None:
        """Background polls (touch=False) see the session but do not extend it."""
        token, session = self.sessions.create("admin")
        for _ in range(3):
            self.clock.advance(30)
            self.assertIs(self.sessions.get(token, touch=False), session)
        self.clock.advance(11)
        self.assertIsNone(self.sessions.get(token, touch=False))

    def test_end_unknown_and_bounded(self) -> None:
        """Logout ends one session; unknown or empty tokens find nothing; at most `limit` sessions are kept."""
        tokens = [self.sessions.create("admin")[0] for _ in range(5)]
        self.assertEqual(len(self.sessions), 3)
        self.assertIsNone(self.sessions.get(tokens[0]))
        self.assertIsNotNone(self.sessions.get(tokens[4]))
        self.sessions.end(tokens[4])
        self.assertIsNone(self.sessions.get(tokens[4]))
        self.assertIsNone(self.sessions.get(""))
        self.assertIsNone(self.sessions.get("forged"))
        self.assertNotEqual(self.sessions.anonymous_csrf("a"), self.sessions.anonymous_csrf("b"))


class ThrottleTests(SynchronousTestCase):
    def test_backoff(self) -> None:
        """Five failures are free; then 1, 2, 4 ... seconds (capped) after the last one; success resets."""
        clock = Clock()
        throttle = auth.Throttle(clock, free=5, max_delay=8)
        for _ in range(5):
            self.assertEqual(throttle.wait(), 0)
            throttle.failed()
        self.assertEqual(throttle.wait(), 1)
        clock.advance(1)
        self.assertEqual(throttle.wait(), 0)
        throttle.failed()
        self.assertEqual(throttle.wait(), 2)
        for _ in range(10):
            throttle.failed()
        self.assertEqual(throttle.wait(), 8)
        throttle.succeeded()
        self.assertEqual(throttle.wait(), 0)

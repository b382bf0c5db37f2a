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
            self.assertEqual(throttle.wait("a"), 0)
            attempt = throttle.begin("a")
            assert isinstance(attempt, auth.Attempt)
            attempt.failed()
        self.assertEqual(throttle.begin("a"), auth.Refusal("throttled", 1.0))
        clock.advance(1)
        self.assertEqual(throttle.wait("a"), 0)
        attempt = throttle.begin("a")
        assert isinstance(attempt, auth.Attempt)
        attempt.failed()
        self.assertEqual(throttle.wait("a"), 2)
        for _ in range(10):
            clock.advance(10)
            attempt = throttle.begin("a")
            assert isinstance(attempt, auth.Attempt)
            attempt.failed()
        self.assertEqual(throttle.wait("a"), 8)
        clock.advance(8)
        attempt = throttle.begin("a")
        assert isinstance(attempt, auth.Attempt)
        attempt.succeeded()
        self.assertEqual(throttle.wait("a"), 0)

    def test_counted_before_the_check(self) -> None:
        """An attempt counts as a failure from its start: parallel attempts see each other, and at most one per address runs."""
        clock = Clock()
        throttle = auth.Throttle(clock, free=5, concurrency=100)
        first = throttle.begin("a")
        self.assertIsInstance(first, auth.Attempt)
        self.assertEqual(throttle.begin("a"), auth.Refusal("busy", 1.0))  # one check per address at a time
        assert isinstance(first, auth.Attempt)
        first.failed()
        admitted = 0
        for n in range(30):  # thirty at once, from thirty addresses of one client
            if isinstance(throttle.begin(f"b{n}"), auth.Attempt):
                admitted += 1
        self.assertEqual(admitted, 19)  # the overall throttle (20 free) counted the ones still being checked

    def test_per_address_and_overall(self) -> None:
        """One address's failures do not delay another; failures from many addresses delay everyone (overall)."""
        clock = Clock()
        throttle = auth.Throttle(clock, free=5, overall_free=20, overall_max_delay=60)
        for _ in range(5):
            attempt = throttle.begin("127.0.0.1")
            assert isinstance(attempt, auth.Attempt)
            attempt.failed()
        self.assertGreater(throttle.wait("127.0.0.1"), 0)
        self.assertEqual(throttle.wait("127.0.0.2"), 0)
        for n in range(15):
            attempt = throttle.begin(f"127.0.1.{n}")
            assert isinstance(attempt, auth.Attempt)
            attempt.failed()
        refusal = throttle.begin("127.0.0.3")
        self.assertEqual(refusal, auth.Refusal("throttled", 1.0))
        clock.advance(1)
        attempt = throttle.begin("127.0.0.3")
        assert isinstance(attempt, auth.Attempt)
        attempt.succeeded()  # the right password forgives the address and the overall count
        self.assertEqual(throttle.wait("127.0.0.4"), 0)
        attempt = throttle.begin("127.0.0.1")  # but not another address's own failures: its sixth waits 2 s
        assert isinstance(attempt, auth.Attempt)
        attempt.failed()
        self.assertEqual(throttle.wait("127.0.0.1"), 2)

    def test_concurrency_and_abandon(self) -> None:
        """At most `concurrency` checks at once; an abandoned attempt (store down) neither counts nor holds its slot."""
        clock = Clock()
        throttle = auth.Throttle(clock, concurrency=2)
        a, b = throttle.begin("a"), throttle.begin("b")
        self.assertEqual(throttle.begin("c"), auth.Refusal("busy", 1.0))
        assert isinstance(a, auth.Attempt) and isinstance(b, auth.Attempt)
        a.abandoned()
        a.failed()  # a second outcome is ignored
        self.assertEqual(throttle.failures, 1)
        c = throttle.begin("c")
        self.assertIsInstance(c, auth.Attempt)

    def test_bounded_table(self) -> None:
        """The per-address table keeps at most max_addresses records, dropping those with no delay left first."""
        clock = Clock()
        throttle = auth.Throttle(clock, free=1, overall_free=10**9, max_addresses=10)
        for n in range(50):
            clock.advance(5)
            attempt = throttle.begin(f"10.0.0.{n}")
            assert isinstance(attempt, auth.Attempt)
            attempt.failed()
        self.assertLessEqual(len(throttle._by_peer), 10)
        self.assertGreater(throttle.wait("10.0.0.49"), 0)

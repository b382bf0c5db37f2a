"""
Fuzzing (hypothesis) of the admin panel's forms and pages, in process: the
panel's site over the in-memory store with an administrator logged in
(:class:`tests.fuzz_harness.Panel`), so that every form is posted with a valid
session and CSRF token and its handler is really reached.

Every POST form but those that check a password on Argon2's threads (set-up,
login, password: walked against the real server by
``tests/test_routes_hostile.py``) gets random fields: the form's own, missing,
repeated, with hostile values (long, control characters, Unicode digits,
invalid UTF-8 once percent-decoded), random extra fields, a wrong or missing
CSRF token, a body that is no form; the application in the path is the real
one, a fresh one, or a hostile segment.  Every GET page gets random query
arguments.

Invariants: never a 5xx; an error is an HTML page with its message (or, for
the listener's own refusals, JSON); a redirect goes to a local path, and the
page it names renders (showing the action's result); the application list
still renders afterwards.
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from .fuzz_harness import FUZZ, Node, Panel, at_once, examples, form_body
from .http_support import Response
from .routes_support import PANEL_ERROR
from .test_routes_hostile import WalkBase

#: The forms posted here (the password-checking ones are the real-server walk's).
FORMS = {rule: fields for rule, fields in WalkBase.PANEL_POSTS.items() if rule not in ("/setup", "/login", "/password")}
#: Forms that change or remove the application they name: posted to a fresh one.
CHANGING = ("/rotate-server", "/rotate-client", "/reset-tokens", "/delete")

values = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        ["", " ", "ib1", "u1", "g1", "user", "group", "all", "60", "0", "-1", "NaN", "1e999", "²", "١٢", "9" * 25, "ru", "en", "/apps"]
    ),
    st.sampled_from(["x" * 5000, "a\nb\r\nc", "\x00", "<b>x</b>", "//evil.example", "/\\evil", "\u202e", "\U0001f600"]),
    st.binary(max_size=12),  # (percent-encoded as they are: may not be UTF-8)
)


@st.composite
def form_post(draw: Any) -> tuple[str, list[tuple[str, str | bytes]], str, str]:
    """(rule, form fields, CSRF case, application case)."""
    rule = draw(st.sampled_from(sorted(FORMS)))
    pairs: list[tuple[str, str | bytes]] = []
    for name, good in FORMS[rule].items():
        choice = draw(st.sampled_from(["good", "good", "hostile", "hostile", "absent", "twice"]))
        if choice == "good":
            pairs.append((name, good))
        elif choice == "hostile":
            pairs.append((name, draw(values)))
        elif choice == "twice":
            pairs += [(name, draw(values)), (name, good)]
    pairs += draw(st.lists(st.tuples(st.text(max_size=6), values), max_size=2))
    csrf = draw(st.sampled_from(["valid", "valid", "valid", "valid", "wrong", "missing", "twice"]))
    app = draw(st.sampled_from(["real", "real", "fresh", "unknown", "%FF", "%2F", ""]))
    return rule, draw(st.permutations(pairs)), csrf, app


class PanelFormFuzz(SynchronousTestCase):
    """One panel (and node) for the class: forms and pages with random input."""

    node: Node
    panel: Panel

    @classmethod
    def setUpClass(cls) -> None:
        cls.node = Node()
        cls.panel = Panel(cls.node)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.node.stop()

    def answer(
        self, method: bytes, target: bytes, body: bytes | None = None, content_type: bytes = b"application/x-www-form-urlencoded"
    ) -> Response:
        """One request: never a 5xx; an error is the panel's HTML page with a message, or JSON."""
        answer = self.panel.request(method, target, body, content_type)
        self.assertIsNotNone(answer, target)
        assert answer is not None
        self.assertLess(answer.status, 500, (method, target, body, answer))
        kind = answer.header(b"content-type") or b""
        if answer.status == 400 and not answer.headers and content_type.startswith(b"multipart/"):
            return answer  # twisted.web's own refusal of a multipart body it cannot parse (the panel never sends one)
        if answer.status >= 400 and method != b"HEAD":
            if kind.startswith(b"application/json"):
                self.assertIn(b'"reason"', answer.body)
            else:
                self.assertTrue(kind.startswith(b"text/html") and PANEL_ERROR.search(answer.body), (target, answer))
        return answer

    def app_segment(self, case: str, rule: str) -> bytes:
        if case == "fresh" or (case == "real" and rule.endswith(CHANGING)):
            app = at_once(self.node.store.create_application("Fresh", 0.0))
            at_once(self.node.core.reload())
            return app.id.encode()
        return {"real": self.node.app.id.encode(), "unknown": b"no-such-app"}.get(case, case.encode())

    @settings(FUZZ, max_examples=examples(150))
    @given(form_post())
    @example(("/apps/<app_id>/kept/withdraw", [("ib", "ib1"), ("user", "u1"), ("id", "²")], "valid", "real"))  # (a 500)
    def test_forms(self, post: tuple[str, list[tuple[str, str | bytes]], str, str]) -> None:
        """Any form, any fields, valid session: never a 5xx; redirects go to local pages that render; errors are pages with a message."""
        rule, pairs, csrf, app_case = post
        target = rule.replace("<app_id>", "%s").encode() % self.app_segment(app_case, rule) if "<app_id>" in rule else rule.encode()
        token = {"valid": [("csrf", self.panel.csrf)], "wrong": [("csrf", "x" * 43)], "missing": []}.get(
            csrf, [("csrf", "x"), ("csrf", self.panel.csrf)]
        )
        answer = self.answer(b"POST", target, form_body([*token, *pairs]))
        if answer.status == 303:
            location = answer.header(b"location") or b""
            self.assertTrue(location.startswith(b"/") and not location.startswith(b"//") and b"\\" not in location, location)
            page = self.answer(b"GET", location.split(b"#")[0])
            if location.split(b"#")[0] not in (b"/login", b"/setup"):
                self.assertIn(page.status, (200, 303, 404), location)  # (/ goes on to /apps)
        if rule == "/logout" and answer.status == 303:  # (logged out: a new session for the next examples)
            self.panel = Panel(self.node)
            type(self).panel = self.panel
        self.assertEqual(self.answer(b"GET", b"/apps").status, 200)

    @settings(FUZZ, max_examples=examples(60))
    @given(
        st.sampled_from(sorted(FORMS)),
        st.binary(max_size=80),
        st.sampled_from([b"multipart/form-data; boundary=x", b"application/json", b"text/plain", b""]),
    )
    def test_bodies_that_are_no_form(self, rule: str, body: bytes, content_type: bytes) -> None:
        """Any bytes as the body, with any content type: never a 5xx, never a traceback's page."""
        target = rule.replace("<app_id>", self.node.app.id).encode()
        self.answer(b"POST", target, body, content_type)

    @settings(FUZZ, max_examples=examples(100))
    @given(
        st.sampled_from(sorted(WalkBase.PANEL_GETS)),
        st.lists(st.tuples(st.sampled_from(["page", "ib", "name", "q", "user", "host", "app", "x"]), values), max_size=4),
    )
    @example("/audit", [("page", "²")])  # (a 500)
    def test_pages(self, rule: str, args: list[tuple[str, str | bytes]]) -> None:
        """Every GET page with random query arguments: never a 5xx, a page (or the panel's JSON) every time."""
        target = rule.replace("<app_id>", self.node.app.id).replace("<name>", "admin.js").replace("<seq>", "1").encode()
        query = form_body(args)
        self.answer(b"GET", target + (b"?" + query if query else b""))

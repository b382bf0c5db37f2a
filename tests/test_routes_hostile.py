"""
Every route of every HTTP listener walked with hostile values against a real
twistd: the send API (hot and cold routes, subscriptions, unknown paths), the
admin panel (every GET and POST route, logged in with a valid CSRF token, so
that the handlers are reached), the admin listener's ``/metrics`` and
``/status.json``, and ``metrics_listen``.  No answer is a 5xx but the
documented 503s; every error is a JSON document with a reason (the panel: an
HTML page with a message); the server stays healthy and logs no traceback.

The walk knows each route by name: a route added to the send API, the panel or
the subscriptions that the walk does not know fails
:class:`RouteInventoryTests` until a walk is written for it.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from twisted.trial.unittest import SynchronousTestCase

from .routes_support import Findings, Reply, exchange, form, json_problem, panel_problem, request, server_error
from .support import ServerProcess, free_port, wait_for

# -- hostile values ---------------------------------------------------------------------------------

#: Numbers as JSON texts (literals: NaN and the infinities are not JSON), and a number's wrong types.
JSON_NUMBERS = ("NaN", "Infinity", "-Infinity", "1e999", "-1e999", "-1", "0", "1.5", str(2**64), "1" + "0" * 400, "9" * 5000)
JSON_WRONG_TYPES = ('"5"', '"١٢"', '""', "{}", "[]", '{"a": 1}', "[1, 2]", "true", "false", "null")
#: Strings a field may be given: over-long, NUL, a lone surrogate, a slash, bidi control, astral.
JSON_STRINGS = ('"' + "x" * 100_000 + '"', '"\\u0000"', '"\\ud800"', '"a/b"', '"\\u202e"', '"\\ud83d\\ude00"')
JSON_VALUES = JSON_NUMBERS + JSON_WRONG_TYPES + JSON_STRINGS
#: Whole bodies that are not a document of the expected shape.
BODIES = (
    b"",
    b" ",
    b"{",
    b"null",
    b"[]",
    b"{}",
    b'"x"',
    b"NaN",
    b"\xff\xfe{}",
    b"\xef\xbb\xbf{}",
    b'{"a": "\xff"}',
    b"[" * 100_000,
    b'{"a": ' * 2000 + b"1" + b"}" * 2000,
    b"\x00",
    b"1e999",
)
#: Query values (already percent-encoded where they need to be).
QUERY_VALUES = (
    b"nan",
    b"NaN",
    b"inf",
    b"-Infinity",
    b"1e999",
    b"-1",
    b"0",
    b"1.5",
    b"0x10",
    b"18446744073709551616",
    b"9" * 2000,
    b"%D9%A1%D9%A2",  # Arabic-Indic digits
    b"%C2%B2",  # superscript two
    b"",
    b"%00",
    b"%FF",
    b"%2F",
    b"%ED%A0%80",  # an encoded surrogate
    b"x" * 6000,
    b"%",
)
#: Path segments.
SEGMENTS = (
    b"",
    b"%00",
    b"%2F",
    b"a%2Fb",
    b"%FF",
    b"%C0%AF",
    b"%ED%A0%80",
    b"..",
    b"%2E%2E",
    b"x" * 3000,
    b"%E2%80%AE",
    b"a%20b",
    b"%",
    b"%G1",
    b"\xd0\xb8",  # raw UTF-8 (not percent-encoded)
    b"\xff",  # raw, not UTF-8
    b"%F0%9F%98%80",
)
#: Authorization header values that are not a valid token.
BAD_AUTHORIZATION = (
    None,
    b"",
    b"Bearer",
    b"Bearer ",
    b"Bearer x",
    b"Basic dXNlcjpwYXNz",
    b"Bearer \xff\xfe",
    b"Bearer " + b"A" * 6000,
    b"Token abc",
)
#: The administrator's password in the walk.
PASSWORD = "correct horse 1"
#: Methods for the wrong-method walk (each route gets every one its rule does not take).
METHODS = (b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD", b"TRACE")


def leaves(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every member path of a JSON document (objects and their members, arrays' first elements)."""
    if path:
        yield path
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from leaves(value, (*path, key))
    elif isinstance(doc, list) and doc:
        yield from leaves(doc[0], (*path, 0))


def replaced(doc: Any, path: tuple[Any, ...], text: str) -> bytes:
    """``doc`` as JSON with the member at ``path`` replaced by the JSON text ``text`` (which may be no JSON at all: NaN)."""
    marker = "\x01MARK\x01"
    copy = json.loads(json.dumps(doc))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = marker
    return json.dumps(copy, ensure_ascii=False).replace(json.dumps(marker), text).encode("utf-8", "surrogatepass")


def mutations(doc: Any) -> Iterator[tuple[str, bytes]]:
    """``doc`` with each member given each hostile value, then the hostile whole bodies."""
    for path in leaves(doc):
        for value in JSON_VALUES:
            yield f"{'.'.join(map(str, path))}={value[:12]}", replaced(doc, path, value)
    for body in BODIES:
        yield f"body {body[:12]!r}", body


def query_variants(name: bytes, good: bytes) -> Iterator[bytes]:
    """Query strings for an argument: each hostile value, repeated (good then bad, bad then good), and absent."""
    for value in QUERY_VALUES:
        yield name + b"=" + value
    yield name + b"=" + good + b"&" + name + b"=NaN"
    yield name + b"=-1&" + name + b"=" + good
    yield name
    yield b"&&" + name + b"=&="
    yield b""


# -- what is walked ----------------------------------------------------------------------------------


def rule_text(rule: str) -> str:
    """A route's rule with its converters dropped: ``/apps/<string:app_id>`` -> ``/apps/<app_id>``."""
    return re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", rule)


def klein_routes(app: Any) -> set[tuple[str, str]]:
    """(method, rule) of every route of a Klein app (HEAD, which werkzeug adds to GET, aside)."""
    return {(method, rule_text(rule.rule)) for rule in app.url_map.iter_rules() for method in rule.methods or () if method != "HEAD"}


#: The send API's routes, and the test of HostileRoutes that walks each.
API_ROUTES = {
    ("GET", "/auth"): "test_auth",
    ("POST", "/sendmessage"): "test_sendmessage",
    ("POST", "/sendmessages"): "test_sendmessages",
    ("POST", "/tickets"): "test_tickets",
    ("GET", "/groups/<ib>"): "test_groups",
    ("GET", "/groups/<ib>/<group>"): "test_groups",
    ("PUT", "/groups/<ib>/<group>"): "test_groups",
    ("POST", "/groups/<ib>/<group>/members"): "test_groups",
    ("DELETE", "/groups/<ib>/<group>/members/<user>"): "test_groups",
    ("DELETE", "/groups/<ib>/<group>"): "test_groups",
    ("GET", "/presence/<ib>"): "test_presence",
    ("GET", "/presence/<ib>/<user>"): "test_presence",
    ("GET", "/health"): "test_health_ready_unknown_and_methods",
    ("GET", "/ready"): "test_health_ready_unknown_and_methods",
}
#: The children of /subscribe (twisted.web resources, walked by test_subscriptions).
SUBSCRIBE_CHILDREN = {b"ws", b"sse"}


# -- the walk -----------------------------------------------------------------------------------------


#: One probe: what it is (for the report), the raw request, the listener and what its errors are ("api", "metrics": JSON;
#: "panel": an HTML page; "json": a JSON route of the admin listener; "bare": twisted.web's own 400 on the admin listener),
#: and whether to read only the head (HEAD requests).
Probe = tuple[str, bytes, str, bool]


class RouteInventoryTests(SynchronousTestCase):
    """The walk knows every route: one added to the send API, the subscriptions or the panel fails here until it is walked."""

    def test_send_api_routes(self) -> None:
        """The send API's Klein routes are those of API_ROUTES, each walked by a test of HostileRoutes; the hot routes are among them."""
        from pns4ones.http.resources import SendAPI

        from .http_support import Setup

        self.assertEqual(klein_routes(SendAPI.app), set(API_ROUTES), "a route the hostile walk does not know: walk it, then list it here")
        for name in set(API_ROUTES.values()):
            self.assertTrue(callable(getattr(HostileRoutes, name, None)), name)
        setup = Setup()
        hot = {(method.decode(), path.decode()) for method, path in setup.front.routes}
        setup.stop()
        self.assertLessEqual(hot, set(API_ROUTES))

    def test_subscription_children(self) -> None:
        """/subscribe has the children ws and sse, and answers anything else itself (a JSON 404)."""
        from pns4ones import config
        from pns4ones.transports.web import WebSubscriptions

        from .http_support import Setup

        setup = Setup()
        root = WebSubscriptions(setup.core, config.build({}), setup.clock).resource()
        self.assertEqual(set(root.children), SUBSCRIBE_CHILDREN)

    def test_panel_routes(self) -> None:
        """The panel's Klein routes are those HostileRoutes walks: every GET page of PANEL_GETS and every form of PANEL_POSTS."""
        from pns4ones.admin.app import AdminPanel

        walked = {("GET", rule) for rule in WalkBase.PANEL_GETS} | {("POST", rule) for rule in WalkBase.PANEL_POSTS}
        self.assertEqual(klein_routes(AdminPanel.app), walked, "a panel route the hostile walk does not know: walk it, then list it")


@dataclass
class Browser:
    """A panel client's cookies and the CSRF token of its pages."""

    cookies: dict[str, str] = field(default_factory=dict)
    csrf: str = ""

    def cookie_header(self) -> list[tuple[bytes, bytes]]:
        return [(b"Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()).encode())] if self.cookies else []


class WalkBase(SynchronousTestCase):
    """What the hostile walks share: sending probes, judging the answers, the panel's forms; and, after each test, the server's health and log."""

    server: ServerProcess
    metrics_port = 0
    #: Whose cookies the panel's probes carry unless told.
    admin: Browser
    findings: Findings
    log_from = 0

    @classmethod
    def panel(cls, who: Browser, method: bytes, target: bytes, body: bytes | None = None) -> Reply:
        """A panel request with ``who``'s cookies (kept up to date from Set-Cookie)."""
        extra = [(b"Content-Type", b"application/x-www-form-urlencoded")] if body is not None else []
        reply = exchange(cls.server.admin_port, request(method, target, cls.server.admin_port, who.cookie_header() + extra, body))
        assert reply is not None, target
        for name, value in reply.fields:
            if name.lower() == b"set-cookie":
                key, _, rest = value.partition(b"=")
                who.cookies[key.decode()] = rest.split(b";", 1)[0].decode()
        return reply

    @classmethod
    def page_csrf(cls, who: Browser, path: bytes) -> str:
        """The CSRF token of a panel page (and the cookies it sets)."""
        reply = cls.panel(who, b"GET", path)
        found = re.search(rb'name="csrf" value="([^"]+)"', reply.body)
        assert found is not None, (reply.status, reply.body[:500])
        return found.group(1).decode()

    # -- checking --------------------------------------------------------------------------------

    def walk(self, probes: list[Probe]) -> list[Reply | None]:
        """Send every probe (a few at a time); collect what is wrong with the answers; the answers."""
        admin = self.server.admin_port
        ports = {"api": self.server.api_port, "panel": admin, "json": admin, "bare": admin, "host": admin, "metrics": self.metrics_port}
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda p: exchange(ports[p[2]], p[1], head_only=p[3]), probes))
        for (what, _, listener, head_only), reply in zip(probes, replies):
            self.findings.requests += 1
            if reply is None:
                self.findings.add(f"{listener} {what}", reply, "no answer")
                continue
            problem = server_error(reply)
            if listener == "bare":
                problem = "" if reply.status == 400 else f"answered {reply.status}, not twisted.web's 400"
            elif listener == "host":
                ok = (reply.status == 421 and reply.body) or reply.status == 400  # (400: twisted.web's own, a NUL in the field)
                problem = "" if ok else f"answered {reply.status}, not 421 with a reason"
            elif not problem and reply.status >= 400 and not head_only:
                problem = panel_problem(reply) if listener == "panel" else json_problem(reply)
            if problem:
                self.findings.add(f"{listener} {what}", reply, problem)
        return replies

    def setUp(self) -> None:
        self.findings = Findings()
        self.log_from = len(self.server.log())

    def tearDown(self) -> None:
        log = self.server.log()[self.log_from :]
        alive = self.server.proc is not None and self.server.proc.poll() is None
        health = exchange(self.server.api_port, request(b"GET", b"/health", self.server.api_port)) if alive else None
        problems = list(self.findings.lines)
        if health is None or health.status != 200:
            problems.append("the server is not healthy after the walk")
        for needle in ("Traceback", "Unhandled Error"):
            if needle in log:
                at = log.index(needle)
                problems.append(f"{needle} in the server's log: {log[max(0, at - 300) : at + 1500]}")
        if problems:
            self.fail(f"{len(problems)} problems in {self.findings.requests} requests:\n" + "\n".join(problems))
        self.assertGreater(self.findings.requests, 0)

    def page(
        self,
        what: str,
        method: bytes,
        target: bytes,
        body: bytes | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        listener: str = "panel",
        who: Browser | None = None,
    ) -> Probe:
        extra = [(b"Content-Type", b"application/x-www-form-urlencoded")] if body is not None else []
        cookies = (who or self.admin).cookie_header()
        raw = request(method, target, self.server.admin_port, cookies + extra + (headers or []), body)
        if not target.isascii():
            listener = "bare"  # twisted.web refuses a target with raw non-ASCII bytes itself: a bare 400, the connection closed
        return (f"{method.decode()} {target[:80]!r} {what}", raw, listener, method == b"HEAD")

    #: The panel's GET pages and the query arguments each reads.
    PANEL_GETS = {
        "/": (),
        "/setup": (),
        "/login": (),
        "/password": (),
        "/apps": (),
        "/apps/<app_id>": ("host",),
        "/apps/<app_id>/groups": ("ib", "q", "page"),
        "/apps/<app_id>/group": ("ib", "name", "q", "page"),
        "/apps/<app_id>/kept": ("page",),
        "/apps/<app_id>/kept/user": ("ib", "user", "page"),
        "/audit": ("page",),
        "/online": ("app", "ib", "q", "page"),
        "/online.json": ("app", "ib", "q", "page"),
        "/trace": ("app", "ib", "user", "id", "page"),
        "/trace/<seq>": ("user",),
        "/status": (),
        "/status/live": (),
        "/counts.json": ("app",),
        "/static/<name>": (),
    }
    #: The panel's POST forms and their fields (with a valid value each).
    PANEL_POSTS = {
        "/login": {"login": "admin", "password": "wrong password"},
        "/password": {"current": "wrong password", "password": "y" * 12, "password2": "z" * 12},
        "/lang": {"lang": "ru", "next": "/apps"},
        "/apps": {"title": "Made by the walk"},
        "/apps/<app_id>/rename": {"title": "Walked"},
        "/apps/<app_id>/send": {"ib": "ib1", "type": "user", "target": "u1", "title": "t", "body": "b", "ttl": "60"},
        "/apps/<app_id>/groups/add": {"ib": "ib1", "group": "g5", "members": "u1\nu2", "back": "/apps"},
        "/apps/<app_id>/groups/remove-member": {"ib": "ib1", "group": "g5", "user": "u2"},
        "/apps/<app_id>/groups/remove": {"ib": "ib1", "group": "g6"},
        "/apps/<app_id>/kept/withdraw": {"ib": "ib1", "user": "u1", "id": "1"},
        "/apps/<app_id>/kept/delete": {"ib": "ib1", "type": "user", "target": "u1"},
        "/apps/<app_id>/rotate-server": {},
        "/apps/<app_id>/rotate-client": {},
        "/apps/<app_id>/reset-tokens": {},
        "/apps/<app_id>/delete": {},
        "/setup": {"code": "(the server's)", "login": "admin", "password": "x" * 12, "password2": "y" * 12},
        "/online/disconnect": {"app": "app", "ib": "ib1", "user": "u1", "session": "", "back": "/online"},
        "/logout": {},
    }
    #: Form field values.
    FORM_VALUES: tuple[str | bytes, ...] = (
        "",
        " ",
        "x" * 5000,
        "x" * 900_000,
        b"\xff\xfe",
        "\x00",
        "NaN",
        "1e999",
        "-1",
        str(2**64),
        "9" * 5000,
        "١٢",
        "²",
        "../../etc",
        "//evil.example",
        "/\\evil",
        "<script>x</script>",
        "a\nb\r\nc",
        "\u202e",
    )

    def app_target(self, rule: str, app_id: bytes) -> bytes:
        rule = rule.replace("<seq>", "1")
        return rule.replace("<app_id>", "%s").encode() % app_id if "<app_id>" in rule else rule.encode()

    def post_probes(self, rule: str, fields: dict[str, str], app_id: bytes, who: Browser | None = None) -> list[Probe]:
        """A form's probes: bad CSRF and origins, bodies that are no form, then each field hostile, repeated, missing (with a good CSRF token)."""
        who = who or self.admin
        target = self.app_target(rule, app_id)
        good = [("csrf", who.csrf), *fields.items()]

        def page(what: str, body: bytes | None, headers: list[tuple[bytes, bytes]] | None = None) -> Probe:
            return self.page(what, b"POST", target, body, headers, who=who)

        probes = [
            page("no csrf", form(fields.items())),
            page("wrong csrf", form([("csrf", "x" * 40), *fields.items()])),
            page("csrf not UTF-8", form([("csrf", b"\xff" * 40), *fields.items()])),
            page("foreign origin", form(good), [(b"Origin", b"http://evil.example")]),
            page("origin not ASCII", form(good), [(b"Origin", b"http://\xff")]),
            page("cross-site fetch", form(good), [(b"Sec-Fetch-Site", b"cross-site")]),
            page("no body", None),
            page("multipart garbage", b"--x\r\nnot a part", [(b"Content-Type", b"multipart/form-data; boundary=x")]),
            page("multipart no boundary", b"--x\r\n", [(b"Content-Type", b"multipart/form-data")]),
            page("JSON", b'{"csrf": 1}', [(b"Content-Type", b"application/json")]),
            page("bare %", b"csrf=" + who.csrf.encode() + b"&%=%&title=%G1&a=%FF"),
        ]
        for name in fields:
            for value in self.FORM_VALUES:
                probes.append(page(f"{name}={value[:12]!r}", form([good[0], *((k, value if k == name else v) for k, v in fields.items())])))
            probes.append(page(f"{name} twice", form([*good, (name, b"\xff"), (name, "")])))
            probes.append(page(f"{name} missing", form([(k, v) for k, v in good if k != name])))
        if "<app_id>" in rule:
            for segment in SEGMENTS:
                probes.append(self.page("app id", b"POST", self.app_target(rule, segment), form(good), who=who))
        return probes

    def assert_reached(self, replies: list[Reply | None], rule: str) -> None:
        """Some of a form's probes got past the session and CSRF checks to its handler (not 403, 404, or off to the login)."""
        handled = [
            r for r in replies if r is not None and r.status not in (403, 404) and r.header(b"location") not in (b"/login", b"/setup")
        ]
        self.assertTrue(handled, f"no probe of {rule} reached its handler")


class HostileRoutes(WalkBase):
    """One real server for the class: the send API, the panel (an administrator logged in) and metrics_listen."""

    metrics_port: int
    app: dict[str, str]
    victim: dict[str, str]
    token: str
    ticket: str
    #: The administrator's session; a second one (for the logout form); a browser not logged in (for the login form).
    admin: Browser
    spare: Browser
    anonymous: Browser

    @classmethod
    def setUpClass(cls) -> None:
        cls.metrics_port = free_port()
        cls.server = ServerProcess(
            args=["--allowed_origins", "*", "--metrics_listen", f"127.0.0.1:{cls.metrics_port}", "--metrics_auth", "prom:s3cret"]
        )
        try:
            cls.app = cls.server.create_app("Walked")
            cls.victim = cls.server.create_app("Rotated and deleted")
            cls.server.start()
            cls.prepare()
        except BaseException:
            cls.server.cleanup()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.cleanup()

    # -- set-up: a token, a ticket, a logged-in administrator ----------------------------------------

    @classmethod
    def call(
        cls, port: int, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]] | None = None, body: bytes | None = None
    ) -> Reply:
        reply = exchange(port, request(method, target, port, headers or [], body))
        assert reply is not None, (method, target)
        return reply

    @classmethod
    def prepare(cls) -> None:
        api = cls.server.api_port
        cls.token = cls.call(api, b"GET", b"/auth?server_key=" + cls.app["server_key"].encode()).json()["access_token"]
        # (a subscriber with kept messages over send_buffer_limit is cut at once: one without any)
        body = b'{"IbId": "ib1", "UserId": "listener", "UserGroups": ["g1"]}'
        cls.ticket = cls.call(api, b"POST", b"/tickets", cls.bearer(), body).json()["ticket"]
        cls.call(api, b"PUT", b"/groups/ib1/g1", cls.bearer(), b'{"UserIds": ["u1", "u2"]}')
        # The administrator, through the set-up page and its one-time code (from the log); a second session; a stranger.
        cls.admin, cls.spare, cls.anonymous = Browser(), Browser(), Browser()
        pattern = r"set-up code ([A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4})"
        code = wait_for(lambda: re.findall(pattern, cls.server.log()), what="the set-up code")[-1]
        fields = [("code", code), ("login", "admin"), ("password", PASSWORD), ("password2", PASSWORD)]
        reply = cls.panel(cls.admin, b"POST", b"/setup", form([("csrf", cls.page_csrf(cls.admin, b"/setup")), *fields]))
        assert reply.status == 303, (reply.status, reply.body[:300])
        cls.admin.csrf = cls.page_csrf(cls.admin, b"/apps")
        reply = cls.panel(cls.spare, b"POST", b"/login", form([("csrf", cls.page_csrf(cls.spare, b"/login")), *fields[1:3]]))
        assert reply.status == 303, (reply.status, reply.body[:300])
        cls.spare.csrf = cls.page_csrf(cls.spare, b"/apps")
        cls.anonymous.csrf = cls.page_csrf(cls.anonymous, b"/login")

    @classmethod
    def bearer(cls, token: str | None = None) -> list[tuple[bytes, bytes]]:
        return [(b"Authorization", b"Bearer " + (token or cls.token).encode())]

    # -- the send API --------------------------------------------------------------------------------

    def api(
        self, what: str, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]] | None = None, body: bytes | None = None
    ) -> Probe:
        extra = [(b"Content-Type", b"application/json")] if body is not None else []
        raw = request(method, target, self.server.api_port, (headers if headers is not None else self.bearer()) + extra, body)
        return (f"{method.decode()} {target[:80]!r} {what}", raw, "api", method == b"HEAD")

    def bad_tokens(self, method: bytes, target: bytes, body: bytes | None) -> list[Probe]:
        out = []
        for value in BAD_AUTHORIZATION:
            headers = [] if value is None else [(b"Authorization", value)]
            out.append(self.api(f"Authorization {value!r:.30}", method, target, headers, body))
        # Two Authorization fields, a good one and a bad one, both orders.
        good = self.bearer()[0]
        out.append(self.api("good then bad Authorization", method, target, [good, (b"Authorization", b"Bearer x")], body))
        out.append(self.api("bad then good Authorization", method, target, [(b"Authorization", b"Bearer x"), good], body))
        return out

    def test_auth(self) -> None:
        """GET /auth: hostile, repeated, missing server keys."""
        probes = [self.api("", b"GET", b"/auth?" + q, []) for q in query_variants(b"server_key", self.app["server_key"].encode())]
        probes += [self.api("no query", b"GET", b"/auth", [])]
        self.walk(probes)

    SEND = {
        "Recipient": {"Type": "user", "IbId": "ib1", "UserId": "u1", "UserGroup": "g1"},
        "Message": {
            "Topic": "t",
            "TTL": 60,
            "Notification": {"Title": "a", "Body": "b", "Icon": "i", "Action": "x", "Important": True},
            "Data": {"k": "v"},
        },
    }

    def test_sendmessage(self) -> None:
        """POST /sendmessage: every member with every hostile value, hostile bodies, ?ttl=, bad tokens."""
        probes = [self.api(what, b"POST", b"/sendmessage", body=body) for what, body in mutations(self.SEND)]
        plain = json.dumps({"Recipient": {"Type": "group", "IbId": "ib1", "UserGroup": "g1"}, "Message": {"Topic": "t"}}).encode()
        probes += [self.api("", b"POST", b"/sendmessage?" + q, body=plain) for q in query_variants(b"ttl", b"30")]
        probes += self.bad_tokens(b"POST", b"/sendmessage", plain)
        self.walk(probes)

    def test_sendmessages(self) -> None:
        """POST /sendmessages: hostile elements and members, hostile arrays, bad tokens."""
        probes = [self.api(what, b"POST", b"/sendmessages", body=body) for what, body in mutations([self.SEND])]
        many = b"[" + b",".join([json.dumps(self.SEND).encode()] * 1001) + b"]"
        probes += [self.api("1001 messages", b"POST", b"/sendmessages", body=many)]
        probes += [self.api("1000 bad ones", b"POST", b"/sendmessages", body=b"[" + b",".join([b"NaN"] * 1000) + b"]")]
        probes += self.bad_tokens(b"POST", b"/sendmessages", b"[]")
        self.walk(probes)

    def test_tickets(self) -> None:
        """POST /tickets: every member with every hostile value, hostile bodies, bad tokens."""
        doc = {"IbId": "ib1", "UserId": "u1", "UserGroups": ["g1", "g2"], "TTL": 60}
        probes = [self.api(what, b"POST", b"/tickets", body=body) for what, body in mutations(doc)]
        probes += [
            self.api("101 groups", b"POST", b"/tickets", body=json.dumps({**doc, "UserGroups": [str(i) for i in range(101)]}).encode())
        ]
        probes += self.bad_tokens(b"POST", b"/tickets", json.dumps(doc).encode())
        self.walk(probes)

    def test_groups(self) -> None:
        """The groups API: hostile path segments on every route, hostile member lists, bad tokens."""
        routes = [
            (b"GET", b"/groups/%s", 1, None),
            (b"GET", b"/groups/%s/%s", 2, None),
            (b"PUT", b"/groups/%s/%s", 2, b'{"UserIds": ["u1"]}'),
            (b"POST", b"/groups/%s/%s/members", 2, b'{"UserIds": ["u3"]}'),
            (b"DELETE", b"/groups/%s/%s/members/%s", 3, None),
            (b"DELETE", b"/groups/%s/%s", 2, None),
        ]
        probes: list[Probe] = []
        for method, pattern, count, body in routes:
            for at in range(count):
                for segment in SEGMENTS:
                    parts = [b"ib1", b"g9", b"u1"][:count]
                    parts[at] = segment
                    probes.append(self.api(f"segment {at}", method, pattern % tuple(parts), body=body))
            probes += self.bad_tokens(method, pattern % (b"ib1", b"g9", b"u1")[:count], body)
        members = {"UserIds": ["u1", "u2"]}
        for method, target in ((b"PUT", b"/groups/ib1/g8"), (b"POST", b"/groups/ib1/g8/members")):
            probes += [self.api(what, method, target, body=body) for what, body in mutations(members)]
            probes.append(self.api("too many", method, target, body=json.dumps({"UserIds": [str(i) for i in range(10_001)]}).encode()))
            probes.append(self.api("a bare list", method, target, body=b'["u1"]'))
        self.walk(probes)

    def test_presence(self) -> None:
        """The presence API: hostile path segments, repeated and hostile query arguments, bad tokens."""
        probes = []
        for segment in SEGMENTS:
            probes.append(self.api("ib", b"GET", b"/presence/" + segment))
            probes.append(self.api("ib", b"GET", b"/presence/ib1/" + segment))
            probes.append(self.api("user", b"GET", b"/presence/" + segment + b"/u1"))
        for target in (b"/presence/ib1", b"/presence/ib1/u1"):
            probes += [self.api("query", b"GET", target + b"?" + q) for q in query_variants(b"x", b"1")]
            probes += self.bad_tokens(b"GET", target, None)
        self.walk(probes)

    def subscription(self, kind: bytes, query: bytes, headers: Sequence[tuple[bytes, bytes]] = (), upgrade: bool = True) -> bytes:
        fields = list(headers)
        if kind == b"ws" and upgrade:
            fields = [
                (b"Upgrade", b"websocket"),
                (b"Connection", b"Upgrade"),
                (b"Sec-WebSocket-Key", b"MDEyMzQ1Njc4OWFiY2RlZg=="),
                (b"Sec-WebSocket-Version", b"13"),
                *fields,
            ]
        raw = request(b"GET", b"/subscribe/" + kind + (b"?" + query if query else b""), self.server.api_port, fields)
        if kind == b"ws" and upgrade:  # (both Connection fields would go: keep the upgrade's)
            raw = raw.replace(b"Connection: close\r\n", b"")
        return raw

    def test_subscriptions(self) -> None:
        """/subscribe/ws and /subscribe/sse: hostile tickets, since= and Last-Event-ID, broken upgrades, wrong methods, unknown children."""
        ticket = self.ticket.encode()
        probes: list[Probe] = []
        for kind in (b"ws", b"sse"):
            for q in query_variants(b"ticket", ticket):
                probes.append((f"{kind!r} {q[:40]!r}", self.subscription(kind, q), "api", False))
            for q in query_variants(b"since", b"1"):
                probes.append((f"{kind!r} since {q[:40]!r}", self.subscription(kind, b"ticket=" + ticket + b"&" + q), "api", False))
            for value in BAD_AUTHORIZATION[1:]:
                probes.append(
                    (f"{kind!r} Authorization {value!r:.30}", self.subscription(kind, b"", [(b"Authorization", value)]), "api", False)
                )
            for origin in (b"null", b"http://\xff", b"x" * 6000, b""):
                probes.append(
                    (f"{kind!r} Origin {origin[:20]!r}", self.subscription(kind, b"ticket=" + ticket, [(b"Origin", origin)]), "api", False)
                )
        for value in (b"\xff", b"1e3", b"9" * 40, b"-1", b"", b"%C2%B2"):
            probes.append(
                (f"Last-Event-ID {value!r}", self.subscription(b"sse", b"ticket=" + ticket, [(b"Last-Event-ID", value)]), "api", False)
            )
        base = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")]
        for name, fields in {
            "no upgrade": [],
            "no key": [*base, (b"Sec-WebSocket-Version", b"13")],
            "bad key": [*base, (b"Sec-WebSocket-Key", b"\xff"), (b"Sec-WebSocket-Version", b"13")],
            "no version": [*base, (b"Sec-WebSocket-Key", b"MDEyMzQ1Njc4OWFiY2RlZg==")],
            "version 99": [*base, (b"Sec-WebSocket-Key", b"MDEyMzQ1Njc4OWFiY2RlZg=="), (b"Sec-WebSocket-Version", b"99")],
            "version x": [*base, (b"Sec-WebSocket-Key", b"MDEyMzQ1Njc4OWFiY2RlZg=="), (b"Sec-WebSocket-Version", b"x")],
            "upgrade h2c": [(b"Upgrade", b"h2c"), (b"Connection", b"Upgrade"), (b"Sec-WebSocket-Key", b"MDEyMzQ1Njc4OWFiY2RlZg==")],
        }.items():
            raw = self.subscription(b"ws", b"ticket=" + ticket, fields, upgrade=False)
            if name != "no upgrade":
                raw = raw.replace(b"Connection: close\r\n", b"")
            probes.append((f"ws {name}", raw, "api", False))
        for method in METHODS:
            for target in (
                b"/subscribe/ws",
                b"/subscribe/sse",
                b"/subscribe",
                b"/subscribe/",
                b"/subscribe/x",
                b"/subscribe/ws/x",
                b"/subscribe/%00",
            ):
                if method == b"GET" and target in (b"/subscribe/ws", b"/subscribe/sse"):
                    continue
                probes.append(self.api("", method, target + b"?ticket=" + ticket, []))
        self.walk(probes)

    def test_health_ready_unknown_and_methods(self) -> None:
        """/health, /ready, unknown paths, and every route with every method it does not take."""
        from pns4ones.http.resources import SendAPI

        probes: list[Probe] = []
        for target in (b"/health", b"/ready"):
            probes += [self.api("", b"GET", target + b"?" + q, []) for q in query_variants(b"x", b"1")]
            probes += self.bad_tokens(b"GET", target, None)
        for target in (
            b"/",
            b"/nothing",
            b"/%00",
            b"/%FF",
            b"/\xff",
            b"/health/x",
            b"/auth/",
            b"//auth",
            b"/" + b"x" * 7000,
            b"*",
            b"/a/../health",
        ):
            probes.append(self.api("unknown", b"GET", target))
        for rule in SendAPI.app.url_map.iter_rules():
            target = re.sub(r"<[^>]+>", "x", rule.rule).encode()
            for method in METHODS:
                if method.decode() not in (rule.methods or ()):
                    probes.append(self.api("wrong method", method, target, body=b"{}" if method in (b"POST", b"PUT", b"PATCH") else None))
        self.walk(probes)

    # -- the admin listener ----------------------------------------------------------------------------

    def test_panel_pages(self) -> None:
        """Every GET page of the panel, logged in: hostile app ids in the path, hostile and repeated query arguments."""
        app_id = quote(self.app["id"]).encode()
        probes: list[Probe] = []
        for rule, args in self.PANEL_GETS.items():
            listener = "json" if rule in ("/counts.json", "/status/live", "/online.json") else "panel"
            if rule == "/static/<name>":
                for segment in (*SEGMENTS, b"admin.js", b"..%2Fapp.py", b"admin.js%00"):
                    probes.append(self.page("static", b"GET", b"/static/" + segment))
                continue
            for arg in args:
                for q in query_variants(arg.encode(), b"1"):
                    probes.append(self.page(arg, b"GET", self.app_target(rule, app_id) + b"?" + q, listener=listener))
            if "<app_id>" in rule:
                for segment in SEGMENTS:
                    probes.append(self.page("app id", b"GET", self.app_target(rule, segment), listener=listener))
            probes.append(self.page("HEAD", b"HEAD", self.app_target(rule, app_id), listener=listener))
            probes.append(
                self.page(
                    "garbled cookie",
                    b"GET",
                    self.app_target(rule, app_id),
                    headers=[(b"Cookie", b"pns4ones_session=\xff\xfe; pns4ones_lang=\xff")],
                    listener=listener,
                )
            )
        for target in (b"/nothing", b"/apps/x/y/z", b"/%FF", b"/\xff", b"/" + b"x" * 7000):
            probes.append(self.page("unknown", b"GET", target))
        # The admin listener's own JSON routes (below them: the panel's pages).
        for target in (b"/metrics", b"/status.json", b"/metrics/x", b"/status.json?x=%FF", b"/status.json/x"):
            for headers in ([], [(b"Authorization", b"Bearer x")], [(b"Authorization", b"\xff")]):
                for method in METHODS:
                    listener = "panel" if target.endswith(b"/x") else "json"
                    probes.append(self.page(f"{headers}", method, target, headers=headers, listener=listener))
        # Every panel route with every method it does not take.
        rules = {rule: ("GET", "HEAD") for rule in self.PANEL_GETS}
        for rule in self.PANEL_POSTS:
            rules[rule] = (*rules.get(rule, ()), "POST")
        for rule, methods in rules.items():
            target = self.app_target(rule, self.app["id"].encode()).replace(b"<name>", b"admin.js")
            for method in METHODS:
                if method.decode() not in methods:
                    probes.append(self.page("wrong method", method, target, b"" if method in (b"POST", b"PUT", b"PATCH") else None))
        # Host fields the panel does not serve (DNS rebinding): 421, in plain text.
        for host in (b"", b"evil.example", b"127.0.0.1", b"\xff", b"x" * 7000, b"127.0.0.1:%d\x00" % self.server.admin_port):
            raw = request(b"GET", b"/apps", self.server.admin_port, self.admin.cookie_header(), host=host)
            probes.append((f"Host {host[:30]!r}", raw, "host", False))
        self.walk(probes)

    def test_panel_forms(self) -> None:
        """Every POST form of the panel (but set-up, login, password, logout), logged in with a valid CSRF token: hostile, repeated and missing fields, hostile app ids, bad CSRF."""
        app_id = self.app["id"].encode()
        changing = ("/rotate-server", "/rotate-client", "/reset-tokens", "/delete")
        for rule, fields in self.PANEL_POSTS.items():
            if rule in ("/logout", "/setup", "/password", "/login") or rule.endswith(changing):
                continue  # (the next tests; and below, on a second application)
            probes = self.post_probes(rule, fields, app_id)
            self.assert_reached(self.walk(probes), rule)
        # Forms that change the application's keys or remove it: on the second application, the removal last.
        for rule in (
            "/apps/<app_id>/rotate-server",
            "/apps/<app_id>/rotate-client",
            "/apps/<app_id>/reset-tokens",
            "/apps/<app_id>/delete",
        ):
            probes = self.post_probes(rule, {}, self.victim["id"].encode())
            self.assert_reached(self.walk(probes), rule)

    def test_panel_login_password_logout(self) -> None:
        """The login form (not logged in), the password form (logged in: every current password wrong), and the logout form (a second session)."""
        for rule, who in (("/login", self.anonymous), ("/password", self.admin)):
            probes = self.post_probes(rule, self.PANEL_POSTS[rule], b"", who)
            self.assert_reached(self.walk(probes), rule)
        self.walk(self.post_probes("/logout", {}, b"", self.spare))
        self.assertEqual(self.panel(self.spare, b"GET", b"/apps").header(b"location"), b"/login", "no probe logged the second session out")
        self.assertEqual(self.panel(self.admin, b"GET", b"/apps").status, 200, "the administrator's own session was ended")

    # -- metrics_listen ----------------------------------------------------------------------------------

    def test_metrics_listen(self) -> None:
        """metrics_listen: /metrics with right, wrong, garbled and missing credentials, every method, unknown paths."""
        good = b"Basic " + base64.b64encode(b"prom:s3cret")
        probes: list[Probe] = []
        credentials = (
            None,
            good,
            b"Basic " + base64.b64encode(b"prom:wrong"),
            b"Basic",
            b"Basic \xff\xfe",
            b"Basic !!!",
            b"Bearer x",
            b"Basic " + b"A" * 6000,
        )
        for value in credentials:
            headers = [] if value is None else [(b"Authorization", value)]
            for method in METHODS:
                for target in (b"/metrics", b"/metrics?x=%FF&x=1", b"/", b"/metrics/x", b"/%00", b"*", b"/" + b"x" * 7000):
                    raw = request(method, target, self.metrics_port, headers, b"{}" if method in (b"POST", b"PUT", b"PATCH") else None)
                    probes.append((f"{method.decode()} {target[:40]!r} {value!r:.20}", raw, "metrics", method == b"HEAD"))
        self.walk(probes)


class HostileFirstRun(WalkBase):
    """The set-up form, before there is an administrator (a server of its own): hostile fields with the right code, then wrong codes."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = ServerProcess()
        try:
            cls.server.start()
            cls.admin = Browser()
            cls.admin.csrf = cls.page_csrf(cls.admin, b"/setup")
        except BaseException:
            cls.server.cleanup()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.cleanup()

    def test_setup_form(self) -> None:
        """Every set-up field hostile, repeated or missing (with the right code: form errors), then hostile codes: no 5xx, no traceback, no administrator made."""
        code = wait_for(lambda: re.findall(r"set-up code ([A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4})", self.server.log()), what="the code")[-1]
        # The passwords never match (nor are both valid): each probe ends at a form error, and no administrator is made.
        fields = {"code": code, "login": "admin", "password": "x" * 12, "password2": "y" * 12}
        probes = self.post_probes("/setup", fields, b"")
        replies = self.walk([p for p in probes if "code" not in p[0]])
        self.assertIn(400, [r.status for r in replies if r is not None], "no probe reached the form's checks")
        self.walk([p for p in probes if "code" in p[0]])  # (wrong codes, throttled after a few)
        self.walk([self.page("", b"GET", b"/setup?" + q) for q in query_variants(b"code", code.encode())])
        self.assertEqual(self.panel(self.admin, b"GET", b"/setup").status, 200, "an administrator was made")


class LoneSurrogateTests(SynchronousTestCase):
    """JSON's lone surrogates ("\\ud800"): refused in ids and group names (stored and routed by), kept in message text."""

    def test_ids_refused_text_kept(self) -> None:
        """Recipient ids and group names with a lone surrogate are a 400 error naming the field; a title with one still renders (as an escape)."""
        from pns4ones.groups import GroupError, check_name
        from pns4ones.messages import MessageError, parse_send, render_addin_json

        for member in ("IbId", "UserId"):
            recipient = {"Type": "user", "IbId": "ib", "UserId": "u", member: "a\ud800"}
            with self.assertRaises(MessageError) as caught:
                parse_send(json.dumps({"Recipient": recipient, "Message": {"Topic": "t"}}).encode())
            self.assertEqual(caught.exception.field, f"Recipient.{member}")
        with self.assertRaises(GroupError) as refused:
            check_name("\udc00x", "Group")
        self.assertEqual((refused.exception.status, refused.exception.field), (400, "Group"))
        self.assertEqual(check_name("a\U0001f600", "Group"), "a\U0001f600")  # (a pair is one character: text)
        send = parse_send(b'{"Recipient": {"Type": "all", "IbId": "ib"}, "Message": {"Notification": {"Title": "\\ud800"}}}')
        self.assertIn(b"\\ud800", render_addin_json(send.message))

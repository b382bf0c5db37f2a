"""
The delivery trace of the real ``twistd -n pns4ones`` process: sends through
the API (user, group, everyone, a batch, kept with a TTL, to an offline user, a
test message from the panel), then ``pns4ones-admin trace`` (text and
``--json``), the admin listener's ``/trace.json`` and the panel's Trace pages
show them with the right figures; the send's answer id finds its record;
hostile user ids stay text; a Chromium walk of the Trace page with a filter.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from pns4ones_client import Subscriber

from .browser import screenshot, start_chromium
from .support import ADMIN, ServerProcess, wait_for
from .test_admin_panel import PASSWORD, PanelClient, setup_code

IB = "ib1"
#: User ids a sender may choose: markup and quotes must stay text on every page.
HOSTILE = '<script>alert("x")</script>'
HOSTILE_ATTR = '"><img src=x onerror=alert(1)>'


def api(server: ServerProcess, path: str, body: Any, token: str, source: str = "", forwarded: str = "") -> tuple[int, dict[str, str], Any]:
    """POST JSON to the send API; (status, headers, JSON answer)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if forwarded:
        headers["X-Forwarded-For"] = forwarded
    request = urllib.request.Request(server.url + path, json.dumps(body, ensure_ascii=False).encode(), headers, method="POST")
    opener = urllib.request.build_opener()
    if source:  # from another loopback address (a trusted proxy)
        import http.client

        class FromSource(http.client.HTTPConnection):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, source_address=(source, 0), **kwargs)

        class Handler(urllib.request.HTTPHandler):
            def http_open(self, req: Any) -> Any:
                return self.do_open(FromSource, req)

        opener = urllib.request.build_opener(Handler)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def message(kind: str, target: str = "", topic: str = "t", ttl: int | None = None, title: str = "Заголовок") -> dict[str, Any]:
    recipient = {"Type": kind, "IbId": IB}
    if kind == "user":
        recipient["UserId"] = target
    elif kind == "group":
        recipient["UserGroup"] = target
    body: dict[str, Any] = {"Topic": topic, "Notification": {"Title": title, "Body": "Текст"}}
    if ttl is not None:
        body["TTL"] = ttl
    return {"Recipient": recipient, "Message": body}


def access_token(server: ServerProcess, app: dict[str, str]) -> str:
    with urllib.request.urlopen(f"{server.url}/auth?server_key={app['server_key']}", timeout=5) as response:
        return json.loads(response.read())["access_token"]


def trace_cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ADMIN, "--data-dir", str(server.data_dir), "trace", *args], capture_output=True, text=True, timeout=60)


def trace_json(server: ServerProcess, *args: str) -> dict[str, Any]:
    result = trace_cli(server, "--json", *args)
    if result.returncode != 0:
        raise AssertionError(f"pns4ones-admin trace failed ({result.returncode}): {result.stderr}")
    return json.loads(result.stdout)


def rows(page: str) -> dict[int, dict[str, str]]:
    """The Trace page's rows by message id: their data- attributes."""
    out = {}
    for attrs in re.findall(r"<tr (data-seq=[^>]*)>", page):
        fields = {k: unescape(v) for k, v in re.findall(r'data-([a-z]+)="([^"]*)"', attrs)}
        out[int(fields["id"])] = fields
    return out


class TraceTests(SynchronousTestCase):
    """One server, its subscribers and sends of every kind; the trace read three ways."""

    server: ServerProcess
    app: dict[str, str]
    token: str
    subs: list[Subscriber]
    ids: dict[str, int]
    answers: dict[str, tuple[int, dict[str, str], Any]]

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = ServerProcess(ini="trusted_proxies = 127.0.0.2/32\n", args=["--node_name", "trace-node-a"])
        cls.app = cls.server.create_app("Склад")
        cls.server.start()
        cls.token = access_token(cls.server, cls.app)
        cls.subs = []
        for user, group in (("u1", "desk"), ("u2", ""), (HOSTILE, "")):
            before = cls.server.log().count("subscription registered")
            sub = Subscriber("127.0.0.1", cls.server.service_port, cls.app["id"], cls.app["client_key"], IB, user, group, timeout=5)
            cls.subs.append(sub.connect())
            wait_for(lambda before=before: cls.server.log().count("subscription registered") > before, what=f"the subscription of {user}")
        put = urllib.request.Request(
            f"{cls.server.url}/groups/{IB}/staff",
            json.dumps({"UserIds": ["u1", "u3"]}).encode(),
            {"Authorization": f"Bearer {cls.token}"},
            method="PUT",
        )
        with urllib.request.urlopen(put, timeout=5) as response:
            assert response.status == 200
        sends = {
            "user": ("/sendmessage", message("user", "u1", "to-u1")),
            "kept": ("/sendmessage", message("user", "u3", "to-u3-kept", ttl=600)),
            "staff": ("/sendmessage", message("group", "staff", "to-staff")),
            "desk": ("/sendmessage", message("group", "desk", "to-desk")),
            "all": ("/sendmessage", message("all", topic="to-all")),
            "offline": ("/sendmessage", message("user", "nobody", "to-nobody")),
            "hostile": ("/sendmessage", message("user", HOSTILE, "to-hostile")),
        }
        cls.answers, cls.ids = {}, {}
        for name, (path, body) in sends.items():
            cls.answers[name] = answer = api(cls.server, path, body, cls.token)
            assert answer[0] == 200, answer
            cls.ids[name] = answer[2]["id"]
        batch = [message("user", "u2", "batch-u2"), {"Recipient": {"Type": "user"}}, message("user", "u3", "batch-u3")]
        cls.answers["batch"] = answer = api(cls.server, "/sendmessages", batch, cls.token, source="127.0.0.2", forwarded="203.0.113.9")
        assert answer[0] == 200, answer
        cls.ids["batch-u2"], cls.ids["batch-u3"] = answer[2]["results"][0]["id"], answer[2]["results"][2]["id"]

    @classmethod
    def tearDownClass(cls) -> None:
        for sub in cls.subs:
            sub.close()
        cls.server.cleanup()

    def by_id(self, doc: dict[str, Any]) -> dict[int, dict[str, Any]]:
        return {s["id"]: s for s in doc["sends"]}

    def test_answers_carry_the_id(self) -> None:
        """/sendmessage answers "id" and X-Pns-Id; each good element of /sendmessages has its own "id"; all distinct."""
        status, headers, doc = self.answers["user"]
        self.assertEqual((status, doc["sessions"], doc["users"]), (200, 1, 1))
        self.assertEqual(headers["X-Pns-Id"], str(doc["id"]))
        results = self.answers["batch"][2]["results"]
        self.assertEqual([r["status"] for r in results], [200, 400, 200])
        self.assertNotIn("id", results[1])
        self.assertEqual(len(set(self.ids.values())), len(self.ids))

    def test_each_answer_id_finds_its_send_with_the_right_figures(self) -> None:
        """pns4ones-admin trace --id: exactly the send of that answer, with its recipient, peer and what it reached."""
        expected = {
            "user": ("api", "127.0.0.1", "user", "u1", "", "to-u1", 1, 1, False, ""),
            "kept": ("api", "127.0.0.1", "user", "u3", "", "to-u3-kept", 0, 0, True, "user-offline"),
            "staff": ("api", "127.0.0.1", "group", "", "staff", "to-staff", 1, 1, False, ""),
            "desk": ("api", "127.0.0.1", "group", "", "desk", "to-desk", 1, 1, False, ""),
            "all": ("api", "127.0.0.1", "all", "", "", "to-all", 3, 3, False, ""),
            "offline": ("api", "127.0.0.1", "user", "nobody", "", "to-nobody", 0, 0, False, "user-offline"),
            "batch-u2": ("batch", "203.0.113.9", "user", "u2", "", "batch-u2", 1, 1, False, ""),
            "batch-u3": ("batch", "203.0.113.9", "user", "u3", "", "batch-u3", 0, 0, False, "user-offline"),
        }
        for name, figures in expected.items():
            doc = trace_json(self.server, "--id", str(self.ids[name]))
            self.assertEqual(doc["matched"], 1, name)
            (s,) = doc["sends"]
            got = tuple(s[k] for k in ("source", "peer", "type", "user", "group", "topic", "sessions", "users", "stored", "why"))
            self.assertEqual(got, figures, name)
            self.assertEqual((s["app_id"], s["app"], s["ib"]), (self.app["id"], "Склад", IB))
        kept = self.by_id(trace_json(self.server, "--id", str(self.ids["kept"])))[self.ids["kept"]]
        self.assertEqual(kept["ttl"], 600)
        self.assertAlmostEqual(kept["expires_at"], kept["at"] + 600, places=2)
        self.assertEqual(
            sorted(self.by_id(trace_json(self.server, "--id", str(self.ids["all"])))[self.ids["all"]]["reached"]),
            sorted(["u1", "u2", HOSTILE]),
        )

    def test_a_users_trace(self) -> None:
        """--ib and --user: his own sends, his group's (member, offline: kept or not), everyone's; not the others'; newest first."""
        doc = trace_json(self.server, "--ib", IB, "--user", "u3")
        self.assertEqual([s["id"] for s in doc["sends"]], [self.ids[n] for n in ("batch-u3", "all", "staff", "kept")])
        outcomes = {s["id"]: (s["for_user"]["outcome"], s["for_user"]["kept"]) for s in doc["sends"]}
        self.assertEqual(outcomes[self.ids["kept"]], ("offline", True))
        self.assertEqual(outcomes[self.ids["staff"]], ("offline", False))
        self.assertEqual(outcomes[self.ids["all"]], ("offline", False))
        u1 = trace_json(self.server, "--ib", IB, "--user", "u1")
        self.assertEqual([s["id"] for s in u1["sends"]], [self.ids[n] for n in ("all", "desk", "staff", "user")])
        self.assertTrue(all(s["for_user"]["outcome"] == "reached" for s in u1["sends"]))

    def test_text_names_the_node_and_limits(self) -> None:
        """The text output names this node, says each node keeps its own trace, and shows --limit sends newest first."""
        result = trace_cli(self.server, "--limit", "2")
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        lines = result.stdout.splitlines()
        self.assertTrue(lines[0].startswith("node trace-node-a: 2 of "), lines[0])
        self.assertIn("every node keeps its own trace", lines[0])
        self.assertIn(f"id {self.ids['batch-u3']}  batch from 203.0.113.9  Склад: user u3 in ib1", result.stdout)
        self.assertIn("reached 0 sessions, 0 users: the user had no session connected (on any node)", result.stdout)
        self.assertIn("--limit N for more", lines[-1])
        kept = trace_cli(self.server, "--id", str(self.ids["kept"]), "--user", "u3")
        self.assertIn("kept for offline users until", kept.stdout)
        self.assertIn("for u3: not connected; he gets the kept copy when he connects", kept.stdout)
        bad = trace_cli(self.server, "--limit", "0")
        self.assertEqual(bad.returncode, 1)
        self.assertIn("--limit must be from 1", bad.stderr)

    def test_no_bodies_by_default(self) -> None:
        """Without trace_bodies no title or text is in the trace's answer."""
        raw = trace_cli(self.server, "--json", "--limit", "1000").stdout
        self.assertIn("to-u1", raw)
        self.assertNotIn("Заголовок", raw)
        self.assertNotIn("Текст", raw)
        self.assertNotIn('"body"', raw)

    def test_trace_json_needs_the_status_token(self) -> None:
        """/trace.json without the token of DATA_DIR/admin.json: 401; with it and a bad id: 400."""
        url = f"http://127.0.0.1:{self.server.admin_port}/trace.json"
        with self.assertRaises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        self.assertEqual(refused.exception.code, 401)
        token = json.loads((self.server.data_dir / "admin.json").read_text())["status_token"]
        request = urllib.request.Request(url + "?id=abc", headers={"Authorization": f"Bearer {token}"})
        with self.assertRaises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(request, timeout=5)
        self.assertEqual(bad.exception.code, 400)

    def test_panel_pages(self) -> None:
        """The Trace page lists the sends with their figures, filtered by user; a send's page says who got it and why not; ids escaped."""
        client = PanelClient(self.server.admin_port)
        client.setup(setup_code(self.server))
        status, _, page = client.request("GET", "/trace?" + urllib.parse.urlencode({"ib": IB, "user": "u3"}))
        self.assertEqual(status, 200)
        listed = rows(page)
        self.assertEqual(list(listed), [self.ids[n] for n in ("batch-u3", "all", "staff", "kept")])
        self.assertEqual(
            {listed[self.ids[n]]["outcome"] for n in ("batch-u3", "all", "staff", "kept")},
            {"offline"},
        )
        self.assertEqual((listed[self.ids["kept"]]["sessions"], listed[self.ids["kept"]]["stored"]), ("0", "true"))
        self.assertEqual((listed[self.ids["all"]]["sessions"], listed[self.ids["all"]]["users"]), ("3", "3"))
        self.assertIn("trace-node-a", page)
        _, _, everything = client.request("GET", "/trace")
        self.assertGreaterEqual(len(rows(everything)), 9)
        # one send's page: the users reached, and what it did for one user
        seq = listed[self.ids["staff"]]["seq"]
        status, _, detail = client.request("GET", f"/trace/{seq}?user=u3")
        self.assertEqual(status, 200)
        self.assertIn('data-outcome="offline"', detail)
        self.assertRegex(detail, r'id="send-members">\s*2\s*<')
        self.assertIn("<li><code>u1</code></li>", detail)
        _, _, other = client.request("GET", f"/trace/{seq}?user=u2")
        self.assertIn('data-outcome="not-member"', other)
        self.assertEqual(client.request("GET", "/trace/999999")[0], 404)
        self.assertEqual(client.request("GET", "/trace?id=12ab")[0], 200)
        # hostile user ids: text, never markup
        _, _, hostile = client.request("GET", "/trace?" + urllib.parse.urlencode({"ib": IB, "user": HOSTILE}))
        self.assertNotIn("<script>alert", hostile)
        self.assertIn("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;", hostile)
        self.assertIn(self.ids["hostile"], rows(hostile))
        _, _, hostile2 = client.request("GET", "/trace?" + urllib.parse.urlencode({"user": HOSTILE_ATTR}))
        self.assertNotIn("<img src=x", hostile2)

    def test_panel_test_message_recorded(self) -> None:
        """A test message from the panel is in the trace as "panel", from the browser's address, under the id its result names."""
        client = PanelClient(self.server.admin_port)
        if client.request("GET", "/setup")[0] == 200:
            client.setup(setup_code(self.server))
        else:
            token = client.csrf("/login")
            client.request("POST", "/login", {"csrf": token, "login": "admin", "password": PASSWORD})
        status, location = client.post(
            f"/apps/{self.app['id']}/send", {"ib": IB, "type": "user", "target": "u2", "title": "Из панели", "body": "", "ttl": ""}
        )
        self.assertEqual(status, 303, location)
        _, _, page = client.request("GET", location.split("#")[0])
        message_id = int(re.search(r"Идентификатор сообщения (\d+)", page).group(1))
        (s,) = trace_json(self.server, "--id", str(message_id))["sends"]
        self.assertEqual((s["source"], s["peer"], s["user"], s["sessions"]), ("panel", "127.0.0.1", "u2", 1))


class TraceOptionsTests(SynchronousTestCase):
    """trace_size bounds the trace, 0 turns it off; trace_bodies keeps the texts."""

    def test_bounded_with_bodies(self) -> None:
        """trace_size = 3 keeps the last 3 of 5 sends; with trace_bodies each keeps its add-in JSON."""
        server = ServerProcess(ini="trace_size = 3\ntrace_bodies = true\n")
        self.addCleanup(server.cleanup)
        app = server.create_app("Shop")
        server.start()
        token = access_token(server, app)
        ids = [api(server, "/sendmessage", message("user", "u1", f"t{i}", title=f"Title {i}"), token)[2]["id"] for i in range(5)]
        doc = trace_json(server)
        self.assertEqual((doc["size"], doc["held"], doc["recorded"], doc["bodies"]), (3, 3, 5, True))
        self.assertEqual([s["id"] for s in doc["sends"]], ids[:1:-1])
        self.assertEqual(
            doc["sends"][0]["body"], '{"topic": "t4", "notification": {"title": "Title 4", "body": "Текст", "important": false}}'
        )
        self.assertEqual(trace_json(server, "--id", str(ids[0]))["matched"], 0)

    def test_off(self) -> None:
        """trace_size = 0: nothing is kept, the CLI says the trace is off; sends still answer their id."""
        server = ServerProcess(ini="trace_size = 0\n")
        self.addCleanup(server.cleanup)
        app = server.create_app("Shop")
        server.start()
        status, _, doc = api(server, "/sendmessage", message("user", "u1"), access_token(server, app))
        self.assertEqual(status, 200)
        self.assertGreater(doc["id"], 0)
        self.assertEqual(trace_json(server)["sends"], [])
        result = trace_cli(server)
        self.assertIn("the delivery trace is off (trace_size = 0)", result.stdout)

    def test_dropped_kept_messages_and_the_python_client(self) -> None:
        """Sends through the Python client: its results carry the id, which finds each send; a kept one that pushed out an older one says "dropped"."""
        from pns4ones_client import Sender, SendResult

        server = ServerProcess(ini="max_kept_per_user = 1\n")
        self.addCleanup(server.cleanup)
        app = server.create_app("Shop")
        server.start()
        sender = Sender(server.url, app["server_key"])
        first = sender.send_to_user(IB, "late", "first", topic="k1", ttl=600)
        second = sender.send_to_user(IB, "late", "second", topic="k2", ttl=600)
        self.assertEqual((first.stored, first.dropped, second.stored, second.dropped), (True, 0, True, 1))
        batch = sender.send_batch([message("user", "u5", "b1"), {"Recipient": {"Type": "user"}}])
        ok = batch.results[0]
        assert isinstance(ok, SendResult)
        for result, topic, dropped in ((first, "k1", 0), (second, "k2", 1), (ok, "b1", 0)):
            self.assertIsInstance(result["id"], int)
            self.assertEqual(result.id, result.raw["id"])
            (s,) = trace_json(server, "--id", str(result["id"]))["sends"]
            self.assertEqual((s["topic"], s["dropped"], s["source"]), (topic, dropped, "batch" if topic == "b1" else "api"))
        text = trace_cli(server, "--id", str(second["id"])).stdout
        self.assertIn("kept for offline users until", text)
        self.assertIn("; 1 older kept message dropped", text)
        # In a batch too: an element whose keeping pushed an older one out says so.
        kept = sender.send_batch([message("user", "late", "b2", ttl=600)])
        (element,) = kept.results
        assert isinstance(element, SendResult)
        self.assertEqual((element.stored, element.dropped), (True, 1))
        self.assertNotIn("dropped", ok.raw)

    def test_no_server(self) -> None:
        """Without a running server the command says so and exits 1."""
        with tempfile.TemporaryDirectory() as tmp:
            result = subprocess.run([ADMIN, "--data-dir", tmp, "trace"], capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 1)
        self.assertIn("no pns4ones server runs", result.stderr)


class TraceNodesTests(SynchronousTestCase):
    """Two nodes on one store and a Redis hub: a send is in the trace of the node that took it, with the sessions it reached on the other."""

    def test_each_node_its_own_trace(self) -> None:
        """A send taken by node A to a user connected to node B: in A's trace (1 session), not in B's; each output names its node."""
        from .redis_support import SKIP, RedisServer

        if SKIP:
            raise SkipTest(SKIP)
        redis = RedisServer().start()
        self.addCleanup(redis.cleanup)
        store = Path(tempfile.mkdtemp(prefix="pns4ones-trace-nodes-")) / "pns.db"
        self.addCleanup(shutil.rmtree, store.parent, True)
        ini = f"store = sqlite://{store}\nhub = {redis.url}\nstore_poll_interval = 0.1\nsecrets_key_file = {store.parent}/secrets.key\n"
        a, b = (ServerProcess(ini=ini, args=["--node_name", name]) for name in ("A", "B"))
        for node in (a, b):
            self.addCleanup(node.cleanup)
            node.data_dir.mkdir(parents=True)  # (the service makes it only for a store of its own: here for the PID and admin.json)
        app = json.loads(a.admin("--config", str(a.ini), "create", "Shop", "--json").stdout)  # into the shared store
        for node in (a, b):
            node.start()
            wait_for(lambda node=node: "hub: connected to Redis" in node.log(), 10, what="the hub connection")
        sub = Subscriber("127.0.0.1", b.service_port, app["id"], app["client_key"], IB, "u1", "", timeout=5).connect()
        self.addCleanup(sub.close)
        wait_for(lambda: "subscription registered" in b.log(), what="the subscription on B")
        token = access_token(a, app)
        answer = wait_for(
            lambda: (doc := api(a, "/sendmessage", message("user", "u1", "across"), token)[2]) and doc["sessions"] == 1 and doc,
            what="node A seeing u1 on node B",
        )
        on_a, on_b = trace_json(a, "--id", str(answer["id"])), trace_json(b, "--id", str(answer["id"]))
        self.assertEqual((on_a["node"], on_a["matched"], on_a["sends"][0]["sessions"], on_a["sends"][0]["reached"]), ("A", 1, 1, ["u1"]))
        self.assertEqual((on_b["node"], on_b["matched"]), ("B", 0))
        self.assertTrue(trace_cli(b).stdout.startswith("node B: "))


@pytest.mark.browser
class TraceBrowserTests(SynchronousTestCase):
    """The Trace page in Chromium: the filter by information base and user, a send's page, in Russian and English."""

    def test_trace_page_with_a_filter(self) -> None:
        """Filter by base and user: his sends with what each did for him; a send's page; hostile ids shown as text; screenshots 40-42."""
        server = ServerProcess()
        self.addCleanup(server.cleanup)
        app = server.create_app("Склад")
        server.start()
        sub = Subscriber("127.0.0.1", server.service_port, app["id"], app["client_key"], IB, "u1", "", timeout=5).connect()
        self.addCleanup(sub.close)
        wait_for(lambda: "subscription registered" in server.log(), what="the subscription")
        token = access_token(server, app)
        ids = {}
        for name, body in (
            ("u1", message("user", "u1", "заказ 7")),
            ("kept", message("user", "u3", "заказ 8", ttl=600)),
            ("all", message("all", topic="обновление")),
            ("other", message("user", "u2", "чужое")),
            ("hostile", message("user", HOSTILE, "x")),
        ):
            ids[name] = api(server, "/sendmessage", body, token)[2]["id"]
        driver = start_chromium(self)
        driver.set_window_size(1280, 800)
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select, WebDriverWait

        wait = WebDriverWait(driver, 10, poll_frequency=0.05)
        base = f"http://127.0.0.1:{server.admin_port}"
        driver.get(base + "/")
        wait.until(lambda d: d.current_url.endswith("/setup"))
        for name, value in (("code", setup_code(server)), ("login", "admin"), ("password", PASSWORD), ("password2", PASSWORD)):
            driver.find_element(By.ID, name).send_keys(value)
        driver.find_element(By.ID, "submit").click()
        wait.until(lambda d: d.current_url.endswith("/apps"))
        driver.find_element(By.ID, "nav-trace").click()
        wait.until(lambda d: d.current_url.endswith("/trace"))
        self.assertEqual(len(driver.find_elements(By.CSS_SELECTOR, "#trace-sends tbody tr")), 5)
        form = driver.find_element(By.ID, "trace-filter")
        Select(form.find_element(By.NAME, "app")).select_by_visible_text("Склад")
        form.find_element(By.NAME, "ib").send_keys(IB)
        form.find_element(By.NAME, "user").send_keys("u3")
        form.find_element(By.ID, "trace-show").click()
        wait.until(lambda d: "user=u3" in d.current_url)
        shown = [int(tr.get_attribute("data-id")) for tr in driver.find_elements(By.CSS_SELECTOR, "#trace-sends tbody tr")]
        self.assertEqual(shown, [ids["all"], ids["kept"]])
        kept_row = driver.find_element(By.CSS_SELECTOR, f'#trace-sends tr[data-id="{ids["kept"]}"]')
        self.assertIn("сохранено для неподключённых до", kept_row.find_element(By.CSS_SELECTOR, ".reached").text)
        self.assertIn("получит сохранённую копию при подключении", kept_row.find_element(By.CSS_SELECTOR, ".for-user").text)
        screenshot(driver, "40-trace-filtered")
        kept_row.find_element(By.CSS_SELECTOR, "a.send-link").click()
        wait.until(lambda d: "/trace/" in d.current_url)
        self.assertEqual(driver.find_element(By.ID, "user-outcome").get_attribute("data-outcome"), "offline")
        self.assertIn("у пользователя не было подключённых сеансов", driver.find_element(By.ID, "reached-nobody").text)
        screenshot(driver, "41-trace-send")
        driver.find_element(By.ID, "lang-en").click()
        # (read by script: an element found before the new page loads would be stale)
        wait.until(lambda d: d.execute_script("return document.documentElement.lang") == "en")
        driver.get(base + "/trace?" + urllib.parse.urlencode({"user": HOSTILE}))
        target = driver.find_element(By.CSS_SELECTOR, f'#trace-sends tr[data-id="{ids["hostile"]}"] code.target')
        self.assertEqual(target.text, HOSTILE)
        self.assertEqual(driver.execute_script("return document.querySelectorAll('script:not([src])').length"), 0)
        self.assertIn("Delivery trace", driver.title)
        screenshot(driver, "42-trace-hostile-en")

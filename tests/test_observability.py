"""Metrics, health/readiness, JSON logs, the status command and the shipped dashboard/rules, against the real twistd."""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from pns4ones import compiled
from pns4ones_client import Subscriber
from pns4ones_client.protocol import ClientKey, registration_frame

from .pki import PKI
from .support import ServerProcess, free_port, http_client, run_twistd, wait_for
from .tools import need

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "contrib" / "grafana" / "pns4ones.json"
ALERTS = ROOT / "contrib" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "contrib" / "prometheus" / "alerts.test.yml"
#: Exported only with a hub between nodes (hub = redis); tests/test_redis_hub.py scrapes them there.
HUB_ONLY = {"pns4ones_hub_connected"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: dict[Any, float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


class ObservedServer(TestCase):
    ini = ""
    extra_args: list[str] = []
    log_level = "Information"

    def setUp(self) -> None:
        self.server = ServerProcess(ini=self.ini, args=self.extra_args, log_level=self.log_level)
        self.addCleanup(self.server.cleanup)
        self.prepare()
        self.app = self.server.create_app("Shop")
        self.server.start()
        self.http = http_client(self)

    def prepare(self) -> None:
        pass

    def subscribe(self, user: str, ib: str = "ib1") -> Subscriber:
        before = self.server.log().count('"registered"') + self.server.log().count("subscription registered")
        sub = Subscriber("127.0.0.1", self.server.service_port, self.app["id"], self.app["client_key"], ib, user, "", timeout=5).connect()
        self.addCleanup(sub.close)
        wait_for(
            lambda: self.server.log().count('"registered"') + self.server.log().count("subscription registered") > before,
            what=f"registration of {user}",
        )
        return sub

    def bad_signature(self) -> None:
        wrong = ClientKey(bytes(32), bytes(16))
        with socket.create_connection(("127.0.0.1", self.server.service_port), timeout=5) as s:
            s.sendall(registration_frame(wrong, self.app["id"], "ib1", "mallory", ""))
            try:
                self.assertEqual(s.recv(100), b"")  # the server closes (aborts)
            except ConnectionResetError:
                pass

    @inlineCallbacks
    def scrape(self, url: str | None = None) -> Any:
        response = yield self.http.get(url or f"http://127.0.0.1:{self.server.admin_port}/metrics")
        text = yield response.text()
        self.assertEqual(response.code, 200, text)
        return text

    @inlineCallbacks
    def send_all(self, ib: str = "ib1") -> Any:
        response = yield self.http.get(f"{self.server.url}/auth", params={"server_key": self.app["server_key"]})
        token = (yield response.json())["access_token"]
        body = {"Recipient": {"Type": "all", "IbId": ib}, "Message": {"Topic": "t", "Data": {"k": "v"}}}
        response = yield self.http.post(f"{self.server.url}/sendmessage", json=body, headers={"Authorization": f"Bearer {token}"})
        self.assertEqual(response.code, 200, (yield response.text()))


class MetricsTests(ObservedServer):
    extra_args = ["--registration_timeout", "0.5"]

    @inlineCallbacks
    def test_idle_connection_cut_is_counted(self) -> None:
        """A connection that never registers is cut after registration_timeout and counted as an idle cut."""
        with socket.create_connection(("127.0.0.1", self.server.service_port), timeout=5) as s:
            try:
                self.assertEqual(s.recv(10), b"")
            except ConnectionResetError:
                pass
        now = samples((yield self.scrape()))
        self.assertEqual(value(now, "pns4ones_subscriptions_cut_total", reason="idle"), 1)
        self.assertEqual(value(now, "pns4ones_subscriptions_cut_total", reason="slow-reader"), 0)

    @inlineCallbacks
    def test_counters_follow_subscribers_and_sends(self) -> None:
        """Subscriptions, registrations by result, sends, deliveries, bytes, latency, HTTP and tokens move with real traffic; no user id in any label."""
        app = self.app["id"]
        before = samples((yield self.scrape()))
        self.assertEqual(value(before, "pns4ones_subscriptions", application=app), 0)
        self.assertIn(("pns4ones_registrations_total", (("reason", "bad-signature"), ("result", "rejected"))), before)
        self.assertTrue(any(name == "process_cpu_seconds_total" for name, _ in before))
        a, b = self.subscribe("alice-user"), self.subscribe("bob-user")
        self.bad_signature()
        yield self.send_all()
        self.assertEqual(a.receive(5)["topic"], "t")
        self.assertEqual(b.receive(5)["topic"], "t")
        text = yield self.scrape()
        now = samples(text)
        self.assertEqual(value(now, "pns4ones_subscriptions", application=app), 2)
        self.assertEqual(value(now, "pns4ones_connections"), 2)
        self.assertEqual(value(now, "pns4ones_registrations_total", result="accepted", reason=""), 2)
        self.assertEqual(value(now, "pns4ones_registrations_total", result="rejected", reason="bad-signature"), 1)
        self.assertEqual(value(now, "pns4ones_messages_sent_total", application=app, recipient_type="all"), 1)
        self.assertEqual(value(now, "pns4ones_deliveries_total", application=app), 2)
        self.assertGreater(value(now, "pns4ones_frame_bytes_total", application=app), 2 * 8)
        self.assertEqual(value(now, "pns4ones_send_latency_seconds_count"), 1)
        self.assertEqual(value(now, "pns4ones_tokens_issued_total", application=app), 1)
        self.assertEqual(value(now, "pns4ones_http_requests_total", route="/sendmessage", status="200"), 1)
        self.assertEqual(value(now, "pns4ones_http_requests_total", route="/auth", status="200"), 1)
        self.assertEqual(value(now, "pns4ones_ready"), 1)
        for secret in ("alice-user", "bob-user", "mallory", "ib1", self.app["server_key"]):
            self.assertNotIn(secret, text)
        a.close()
        b.close()
        wait_for(lambda: self.server.log().count("subscription ended") >= 2, what="both subscriptions to end")
        after = samples((yield self.scrape()))
        self.assertEqual(value(after, "pns4ones_subscriptions", application=app), 0)
        self.assertEqual(value(after, "pns4ones_connections"), 0)

    @inlineCallbacks
    def test_health_and_ready(self) -> None:
        """GET /health and /ready answer small JSON on the send API listener without a token."""
        response = yield self.http.get(f"{self.server.url}/health")
        self.assertEqual((response.code, (yield response.json())), (200, {"status": "ok"}))
        response = yield self.http.get(f"{self.server.url}/ready")
        self.assertEqual((response.code, (yield response.json())), (200, {"ready": True, "status": "ready"}))

    def test_ready_is_503_during_graceful_stop(self) -> None:
        """After SIGTERM, while a slow request keeps the server draining, /ready on a kept-alive connection answers 503."""
        keep = http.client.HTTPConnection("127.0.0.1", self.server.api_port, timeout=5)
        self.addCleanup(keep.close)
        keep.request("GET", "/ready")
        first = keep.getresponse()
        self.assertEqual((first.status, json.loads(first.read())["ready"]), (200, True))
        slow = socket.create_connection(("127.0.0.1", self.server.api_port), timeout=5)
        self.addCleanup(slow.close)
        slow.sendall(b"POST /sendmessage HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(0.2)
        self.server.proc.send_signal(15)
        wait_for(lambda: "stopping: closing listeners" in self.server.log(), what="the graceful stop to begin")
        keep.request("GET", "/ready")
        second = keep.getresponse()
        self.assertEqual((second.status, json.loads(second.read())), (503, {"ready": False, "status": "stopping"}))
        slow.close()
        self.assertEqual(self.server.stop(), 0)

    def test_status_json_matches_connections(self) -> None:
        """pns4ones-admin status --json reports the subscriptions per application and information base, sends and listeners."""
        self.subscribe("u1", "ib1")
        self.subscribe("u2", "ib1")
        self.subscribe("u3", "ib2")
        result = self.server.admin("status", "--json")
        doc = json.loads(result.stdout)
        self.assertEqual(doc["subscriptions"], 3)
        self.assertEqual(doc["applications"][self.app["id"]], {"title": "Shop", "subscriptions": 3, "ibs": {"ib1": 2, "ib2": 1}})
        self.assertTrue(doc["ready"])
        self.assertGreater(doc["store"]["bytes"], 0)
        ports = {(item["name"], item["port"]) for item in doc["listeners"]}
        self.assertIn(("send API", self.server.api_port), ports)
        self.assertIn(("add-in subscriptions", self.server.service_port), ports)
        self.assertIn(("admin panel", self.server.admin_port), ports)
        self.assertLess(doc["uptime"], 120)
        text = self.server.admin("status").stdout
        self.assertIn("subscriptions: 3", text)
        # The build of the send path, as this suite installed it (tests/test_compiled.py), in the status and the start-up line.
        self.assertEqual(doc["build"], compiled.build())
        self.assertIn(f", {compiled.build()} send path), up ", text.splitlines()[0])
        self.assertIn(f"started ({compiled.build()} send path); data in", self.server.log())
        self.assertIn("information base ib2: 1", text)
        via_twistd = run_twistd("pns4ones", "admin", "--data-dir", str(self.server.data_dir), "status", "--json")
        self.assertEqual(via_twistd.returncode, 0, via_twistd.stderr)
        self.assertEqual(json.loads(via_twistd.stdout)["applications"], doc["applications"])
        admin_file = self.server.data_dir / "admin.json"
        self.assertEqual(admin_file.stat().st_mode & 0o777, 0o600)

    @inlineCallbacks
    def test_status_counts_last_minute_and_refuses_without_token(self) -> None:
        """Sends and deliveries of the last minute reach the status; /status.json without the file's token is 401."""
        self.subscribe("u1")
        yield self.send_all()
        yield self.send_all()
        doc = json.loads(self.server.admin("status", "--json").stdout)
        self.assertEqual(doc["last_minute"], {"sends": 2, "deliveries": 2})
        response = yield self.http.get(
            f"http://127.0.0.1:{self.server.admin_port}/status.json", headers={"Authorization": "Bearer guessed"}
        )
        self.assertEqual(response.code, 401)
        yield response.content()

    def test_status_when_not_running(self) -> None:
        """status says clearly, with exit code 1, that no server runs (and --admin-port to a closed port too)."""
        result = self.server.admin("status", "--admin-port", str(free_port()), check=False)
        self.assertEqual(result.returncode, 1)
        self.assertIn("no answer from the server's admin listener", result.stderr)
        self.server.stop()
        result = self.server.admin("status", check=False)
        self.assertEqual(result.returncode, 1)
        self.assertIn("no pns4ones server runs with data directory", result.stderr)
        self.assertFalse((self.server.data_dir / "admin.json").exists())


class MetricsListenTests(ObservedServer):
    def prepare(self) -> None:
        self.metrics_port = free_port()
        self.server.extra += ["--metrics_listen", f"127.0.0.1:{self.metrics_port}", "--metrics_auth", "prom:s3cret"]

    @inlineCallbacks
    def test_basic_auth(self) -> None:
        """metrics_listen serves /metrics only with the configured basic-auth credentials, and nothing else."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        for auth in (None, ("prom", "wrong"), ("other", "s3cret")):
            response = yield self.http.get(url, auth=auth)
            self.assertEqual(response.code, 401)
            self.assertIn(b"Basic", response.headers.getRawHeaders(b"www-authenticate")[0])
            yield response.content()
        response = yield self.http.get(url, auth=("prom", "s3cret"))
        self.assertEqual(response.code, 200)
        self.assertIn("pns4ones_subscriptions", (yield response.text()))
        response = yield self.http.get(f"http://127.0.0.1:{self.metrics_port}/status.json", auth=("prom", "s3cret"))
        self.assertEqual(response.code, 404)
        yield response.content()
        self.assertIn("metrics (HTTP, basic auth) on 127.0.0.1 port", self.server.log())


class JsonLogTests(ObservedServer):
    extra_args = ["--log_format", "json"]

    @inlineCallbacks
    def test_json_lines_parse_and_carry_fields(self) -> None:
        """With log_format=json every line is one JSON object; registrations, sends and rejections carry peer, application, IbId and event."""
        self.subscribe("u1")
        self.bad_signature()
        yield self.send_all()
        wait_for(lambda: '"send"' in self.server.log() and '"rejected"' in self.server.log(), what="the send and rejection events")
        events = [json.loads(line) for line in self.server.log().splitlines() if line.strip()]
        by_kind = {e.get("event"): e for e in events if e.get("event")}
        for kind in ("registered", "send", "rejected"):
            event = by_kind[kind]
            self.assertEqual((event["peer"], event["application"], event["IbId"]), ("127.0.0.1", self.app["id"], "ib1"), kind)
            self.assertIn("text", event)
        self.assertTrue(any("started" in e.get("text", "") for e in events))


def metric_names(text: str) -> set[str]:
    return set(re.findall(r"\b((?:pns4ones|process)_[a-z_]+)", text))


class ShippedDashboardTests(ObservedServer):
    def prepare(self) -> None:
        pki = PKI()
        cert, key = pki.server().write(self.server.dir, "server")
        self.server.ini.write_text(f"ssl_mode = FromFileWithPrivateKey\nssl_certificate = {cert}\nssl_certificate_key = {key}\n")

    @inlineCallbacks
    def test_every_named_metric_is_exported(self) -> None:
        """Every metric the Grafana dashboard and the alert rules name is in a live /metrics (with TLS, after a send and a cut)."""
        self.subscribe("u1")
        names_used = metric_names(DASHBOARD.read_text()) | metric_names(ALERTS.read_text())
        self.assertGreater(len(names_used), 8)
        json.loads(DASHBOARD.read_text())
        # One send over HTTPS (the stdlib client, certificate not checked: TLS is tested elsewhere).
        import ssl

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", self.server.api_port, context=ctx, timeout=5)
        self.addCleanup(conn.close)
        conn.request("GET", f"/auth?server_key={self.app['server_key']}")
        token = json.loads(conn.getresponse().read())["access_token"]
        conn.request(
            "POST",
            "/sendmessage",
            body=json.dumps({"Recipient": {"Type": "all", "IbId": "ib1"}, "Message": {"Topic": "x"}}),
            headers={"Authorization": f"Bearer {token}"},
        )
        self.assertEqual(conn.getresponse().status, 200)
        text = yield self.scrape()
        exported = {name for name, _ in samples(text)}
        missing = sorted(n for n in names_used - HUB_ONLY if n not in exported)
        self.assertEqual(missing, [], "named in contrib/ but not exported")
        expiry = value(samples(text), "pns4ones_tls_certificate_expiry_timestamp_seconds")
        self.assertLess(abs(expiry - (time.time() + 90 * 86400)), 3 * 86400)


class PromtoolTests(TestCase):
    def test_alert_rules_pass_promtool(self) -> None:
        """promtool check rules accepts contrib/prometheus/alerts.yml."""
        result = subprocess.run([need("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_alert_rules_unit_tests(self) -> None:
        """promtool test rules passes contrib/prometheus/alerts.test.yml: each alert fires on its recorded series, and only there."""
        result = subprocess.run(
            [need("promtool"), "test", "rules", ALERT_TESTS.name], capture_output=True, text=True, timeout=120, cwd=ALERT_TESTS.parent
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("SUCCESS", result.stdout)

    def test_unit_tests_catch_a_broken_rule(self) -> None:
        """The same unit tests fail on rules where Pns4onesDown waits an hour (the tests are real)."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="pns4ones-rules-") as tmp:
            rules = ALERTS.read_text(encoding="utf-8")
            broken = rules.replace('expr: up{job="pns4ones"} == 0\n        for: 2m', 'expr: up{job="pns4ones"} == 0\n        for: 1h')
            self.assertNotEqual(broken, rules)
            (Path(tmp) / "alerts.yml").write_text(broken, encoding="utf-8")
            (Path(tmp) / ALERT_TESTS.name).write_text(ALERT_TESTS.read_text(encoding="utf-8"), encoding="utf-8")
            result = subprocess.run(
                [need("promtool"), "test", "rules", ALERT_TESTS.name], capture_output=True, text=True, timeout=120, cwd=tmp
            )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("alertname: Pns4onesDown", result.stdout + result.stderr)


class AlertRuleCoverageTests(TestCase):
    def test_every_rule_fires_in_a_test_and_is_quiet_at_night(self) -> None:
        """Every alert of alerts.yml has a unit test where it fires, and is checked silent seven hours into the ordinary-night group."""
        import yaml  # type: ignore[import-untyped]

        rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
        names = {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
        tests = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))["tests"]
        (night,) = [t for t in tests if t["name"] == "an ordinary night fires nothing"]
        self.assertEqual(night["interval"], "1m")
        quiet = {case["alertname"] for case in night["alert_rule_test"] if not case.get("exp_alerts") and case["eval_time"] == "7h"}
        self.assertEqual(sorted(names - quiet), [], "alerts not checked silent on an ordinary night")
        fired = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case.get("exp_alerts")}
        self.assertEqual(sorted(names - fired), [], "alerts never seen firing in alerts.test.yml")
        self.assertNotIn("Pns4onesNoSubscriptions", names)

    def test_dashboard_shows_store_and_hub(self) -> None:
        """The Grafana dashboard has a Store panel on pns4ones_store_up and a Hub panel on pns4ones_hub_connected."""
        panels = {p["title"]: p for p in json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]}
        self.assertIn("pns4ones_store_up", panels["Store"]["targets"][0]["expr"])
        self.assertIn("pns4ones_hub_connected", panels["Hub (Redis)"]["targets"][0]["expr"])

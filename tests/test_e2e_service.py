"""The real ``twistd -n pns4ones`` process: sends over HTTP (treq), add-in subscribers over TCP."""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import time
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from pns4ones_client import Subscriber
from pns4ones_client.protocol import ClientKey, registration_frame

from .support import ServerProcess, http_client, run_twistd, wait_for, without_id


class ServiceTestBase(TestCase):
    ini = ""
    extra_args: list[str] = []

    def setUp(self) -> None:
        self.server = ServerProcess(ini=self.ini, args=self.extra_args)
        self.addCleanup(self.server.cleanup)
        self.app_a = self.server.create_app("Shop «A»")
        self.app_b = self.server.create_app("Other")
        self.server.start()
        self.subscribers: list[Subscriber] = []
        self.http = http_client(self)

    def subscribe(self, user: str, ib: str = "ib1", group: str = "", app: dict[str, str] | None = None, wait: bool = True) -> Subscriber:
        app = app or self.app_a
        before = self.server.log().count("subscription registered")
        sub = Subscriber("127.0.0.1", self.server.service_port, app["id"], app["client_key"], ib, user, group, timeout=5).connect()
        self.subscribers.append(sub)
        self.addCleanup(sub.close)
        if wait:
            wait_for(lambda: self.server.log().count("subscription registered") > before, what=f"registration of {user}")
        return sub

    @inlineCallbacks
    def token(self, app: dict[str, str] | None = None) -> Any:
        app = app or self.app_a
        response = yield self.http.get(f"{self.server.url}/auth", params={"server_key": app["server_key"]})
        self.assertEqual(response.code, 200)
        doc = yield response.json()
        return doc["access_token"]

    @inlineCallbacks
    def send(self, token: str, doc: Any, raw: bytes | None = None) -> Any:
        body = raw if raw is not None else json.dumps(doc).encode("utf-8")
        response = yield self.http.post(
            f"{self.server.url}/sendmessage", data=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        )
        content = yield response.content()
        return response, content


def to(kind: str, ib: str = "ib1", **fields: str) -> dict[str, Any]:
    recipient = {"Type": kind, "IbId": ib}
    recipient.update(fields)
    return recipient


class RoutingTests(ServiceTestBase):
    @inlineCallbacks
    def test_user_group_all_routing(self) -> None:
        """user reaches one user's sessions, group the registered group, all the whole IbId only."""
        u1a, u1b = self.subscribe("u1"), self.subscribe("u1")
        u2 = self.subscribe("u2", group="Менеджеры")
        other_ib = self.subscribe("u1", ib="ib2")
        token = yield self.token()
        response, body = yield self.send(token, {"Recipient": to("user", UserId="u1"), "Message": {"Topic": "one"}})
        self.assertEqual(response.code, 200)
        self.assertEqual(without_id(json.loads(body)), {"sessions": 2, "users": 1, "stored": False})
        self.assertEqual(response.headers.getRawHeaders("X-PNS-Sessions"), ["2"])
        response, _ = yield self.send(token, {"Recipient": to("group", UserGroup="Менеджеры"), "Message": {"Topic": "two"}})
        response, body = yield self.send(token, {"Recipient": to("all"), "Message": {"Topic": "three"}})
        self.assertEqual(json.loads(body)["sessions"], 3)
        self.assertEqual([m["topic"] for m in u1a.receive_all()], ["one", "three"])
        self.assertEqual([m["topic"] for m in u1b.receive_all()], ["one", "three"])
        self.assertEqual([m["topic"] for m in u2.receive_all()], ["two", "three"])
        self.assertEqual(other_ib.receive_all(), [])

    @inlineCallbacks
    def test_applications_do_not_leak(self) -> None:
        """Two applications on one IbId: each send reaches only its own application's clients."""
        sub_a = self.subscribe("u1", app=self.app_a)
        sub_b = self.subscribe("u1", app=self.app_b)
        token_a = yield self.token(self.app_a)
        token_b = yield self.token(self.app_b)
        yield self.send(token_a, {"Recipient": to("all"), "Message": {"Topic": "for A"}})
        yield self.send(token_b, {"Recipient": to("user", UserId="u1"), "Message": {"Topic": "for B"}})
        self.assertEqual(sub_a.receive_all(), [{"topic": "for A"}])
        self.assertEqual(sub_b.receive_all(), [{"topic": "for B"}])
        self.assertFalse(sub_a.closed_by_server or sub_b.closed_by_server)

    @inlineCallbacks
    def test_cyrillic_quotes_and_emoji_everywhere(self) -> None:
        """Cyrillic, quotes, backslashes and emoji survive in every field; the frame is what the add-in expects."""
        sub = self.subscribe('Пользователь "1"', ib="база\\1")
        token = yield self.token()
        message = {
            "Topic": 'Тема "в кавычках"',
            "Notification": {
                "Title": 'Заказ №5 "срочно" 😀',
                "Body": "строка\nвторая\\",
                "Icon": "Картинка",
                "Action": 'e1cib/data/Документ.Заказ?ref="x"',
                "Important": True,
            },
            "Data": {'ключ "1"': "значение 🚀", "пусто": ""},
        }
        response, _ = yield self.send(token, {"Recipient": to("user", ib="база\\1", UserId='Пользователь "1"'), "Message": message})
        self.assertEqual(response.code, 200)
        got = sub.receive(5)
        self.assertEqual(got["topic"], message["Topic"])
        self.assertEqual(
            got["notification"],
            {
                "title": message["Notification"]["Title"],
                "body": "строка\nвторая\\",
                "icon": "Картинка",
                "action": message["Notification"]["Action"],
                "important": True,
            },
        )
        self.assertEqual(got["data"], message["Data"])
        raw = sub.raw_frames[-1]
        self.assertTrue(raw.startswith(b'{"topic": '))
        self.assertIn(b"\\ud83d\\ude00", raw)
        self.assertFalse(any(b >= 0xF0 for b in raw))

    @inlineCallbacks
    def test_stock_extension_body(self) -> None:
        """A pretty-printed body with a BOM, nulls and odd member case is delivered."""
        sub = self.subscribe("u1")
        token = yield self.token()
        raw = "\ufeff" + json.dumps(
            {
                "recipient": {"type": "USER", "ibid": "ib1", "userid": "u1", "UserGroup": None},
                "message": {
                    "Topic": None,
                    "notification": {"title": "T", "body": "B", "Icon": None, "Action": None, "important": False},
                    "Data": None,
                },
            },
            indent=4,
        )
        response, _ = yield self.send(token, None, raw=raw.encode("utf-8"))
        self.assertEqual(response.code, 200)
        self.assertEqual(sub.receive(5), {"notification": {"title": "T", "body": "B", "important": False}})


class KeyAndTokenTests(ServiceTestBase):
    @inlineCallbacks
    def test_client_key_rotation_ends_old_subscriptions(self) -> None:
        """upd_cli_key ends old-key sessions of that app only; the new key works; remove ends the rest."""
        old = self.subscribe("u1")
        other = self.subscribe("u1", app=self.app_b)
        rotated = json.loads(self.server.admin("upd_cli_key", self.app_a["id"], "--json").stdout)
        self.assertNotEqual(rotated["client_key"], self.app_a["client_key"])
        self.assertTrue(old.wait_closed(5), "old-key subscription still open")
        fresh = self.subscribe("u1", app=rotated)
        token = yield self.token()
        yield self.send(token, {"Recipient": to("user", UserId="u1"), "Message": {"Topic": "new key"}})
        self.assertEqual(fresh.receive(5), {"topic": "new key"})
        self.assertEqual(other.receive(0.3), None)
        self.assertFalse(other.closed_by_server)
        self.server.admin("remove", self.app_a["id"])
        self.assertTrue(fresh.wait_closed(5))
        self.assertFalse(other.closed_by_server)

    @inlineCallbacks
    def test_token_policy(self) -> None:
        """/auth returns the current token again; the legacy-free default is unix time an hour ahead."""
        first = yield self.http.get(f"{self.server.url}/auth", params={"server_key": self.app_a["server_key"]})
        doc1 = yield first.json()
        second = yield self.http.get(f"{self.server.url}/auth", params={"server_key": self.app_a["server_key"]})
        doc2 = yield second.json()
        self.assertEqual(doc1, doc2)
        self.assertEqual(first.headers.getRawHeaders("Content-Type"), ["application/json"])
        self.assertLess(abs(doc1["expires_in"] - (time.time() + 3600)), 30)
        other = yield self.token(self.app_b)
        self.assertNotEqual(other, doc1["access_token"])

    @inlineCallbacks
    def test_server_key_rotation_and_reset_token_revoke(self) -> None:
        """upd_srv_key and reset_token revoke tokens in the running server; a new /auth works."""
        token = yield self.token()
        self.server.admin("reset_token", self.app_a["id"])
        yield self._wait_status(token, 401)
        token = yield self.token()
        response, _ = yield self.send(token, {"Recipient": to("all"), "Message": {}})
        self.assertEqual(response.code, 200)
        rotated = json.loads(self.server.admin("upd_srv_key", self.app_a["id"], "--json").stdout)
        yield self._wait_status(token, 401)
        old_key = yield self.http.get(f"{self.server.url}/auth", params={"server_key": self.app_a["server_key"]})
        self.assertEqual(old_key.code, 401)
        fresh = yield self.token(rotated)
        response, _ = yield self.send(fresh, {"Recipient": to("all"), "Message": {}})
        self.assertEqual(response.code, 200)

    @inlineCallbacks
    def _wait_status(self, token: str, status: int) -> Any:
        deadline = time.monotonic() + 5
        while True:
            response, _ = yield self.send(token, {"Recipient": to("all"), "Message": {}})
            if response.code == status or time.monotonic() > deadline:
                self.assertEqual(response.code, status)
                return
            time.sleep(0.1)

    @inlineCallbacks
    def test_restart_keeps_applications_and_tokens(self) -> None:
        """After a restart the applications and an issued token still work."""
        token = yield self.token()
        self.assertEqual(self.server.restart().proc.poll(), None)
        sub = self.subscribe("u1")
        response, _ = yield self.send(token, {"Recipient": to("user", UserId="u1"), "Message": {"Topic": "after restart"}})
        self.assertEqual(response.code, 200)
        self.assertEqual(sub.receive(5), {"topic": "after restart"})
        again = yield self.token()
        self.assertEqual(again, token)

    @inlineCallbacks
    def test_app_created_while_running(self) -> None:
        """An application created by the CLI while the server runs is usable within seconds."""
        app = self.server.create_app("late")
        deadline = time.monotonic() + 5
        while True:
            response = yield self.http.get(f"{self.server.url}/auth", params={"server_key": app["server_key"]})
            if response.code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(response.code, 200)


class ExpiryTests(ServiceTestBase):
    ini = "token_lifetime = 2\nexpires_in_format = legacy\n"

    @inlineCallbacks
    def test_expired_token_is_403_and_legacy_expiry(self) -> None:
        """An expired token answers 403; expires_in counts from 0001-01-01 in legacy mode."""
        response = yield self.http.get(f"{self.server.url}/auth", params={"server_key": self.app_a["server_key"]})
        doc = yield response.json()
        self.assertLess(abs(doc["expires_in"] - (time.time() + 2 + 62135596800)), 30)
        time.sleep(2.2)
        response, body = yield self.send(doc["access_token"], {"Recipient": to("all"), "Message": {}})
        self.assertEqual(response.code, 403)
        self.assertEqual(json.loads(body)["error"], "token_expired")


class BadHttpInputTests(ServiceTestBase):
    ini = "max_body_size = 2K\n"

    @inlineCallbacks
    def test_bad_requests(self) -> None:
        """Every malformed send is answered with its status and a JSON reason; the server keeps serving."""
        sub = self.subscribe("u1")
        token = yield self.token()
        cases = [
            ("", {"Recipient": to("all"), "Message": {}}, None, 401, None),
            ("not-a-token", {"Recipient": to("all"), "Message": {}}, None, 401, None),
            (token, None, b"{nope", 400, "body"),
            (token, {"Recipient": {"Type": "everyone", "IbId": "ib1"}, "Message": {}}, None, 400, "Recipient.Type"),
            (token, {"Recipient": {"Type": "all"}, "Message": {}}, None, 400, "Recipient.IbId"),
            (token, {"Recipient": to("user"), "Message": {}}, None, 400, "Recipient.UserId"),
            (token, {"Recipient": to("group"), "Message": {}}, None, 400, "Recipient.UserGroup"),
            (token, {"Recipient": to("all"), "Message": {"Data": {"n": 5}}}, None, 400, "Message.Data.n"),
        ]
        for tok, doc, raw, status, field in cases:
            response, body = yield self.send(tok, doc, raw)
            self.assertEqual(response.code, status, (doc, raw, body))
            reply = json.loads(body)
            self.assertTrue(reply["reason"])
            if field:
                self.assertEqual(reply["field"], field)
        response, body = yield self.send(token, {"Recipient": to("all"), "Message": {"Data": {"big": "x" * 5000}}})
        self.assertEqual(response.code, 413)
        self.assertEqual(json.loads(body)["error"], "payload_too_large")
        response = yield self.http.get(f"{self.server.url}/sendmessage")
        self.assertEqual(response.code, 405)
        self.assertEqual((yield response.json())["error"], "method_not_allowed")
        response = yield self.http.get(f"{self.server.url}/auth")
        self.assertEqual(response.code, 401)
        response = yield self.http.get(f"{self.server.url}/nothing-here")
        self.assertEqual(response.code, 404)
        self.assertEqual(sub.receive(0.3), None)
        response, _ = yield self.send(token, {"Recipient": to("all"), "Message": {"Topic": "still up"}})
        self.assertEqual(response.code, 200)
        self.assertEqual(sub.receive(5), {"topic": "still up"})


class BadRegistrationTests(ServiceTestBase):
    ini = "registration_timeout = 1\nmax_registration_size = 512\n"

    def _raw(self, data: bytes) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.server.service_port), timeout=5)
        self.addCleanup(s.close)
        if data:
            s.sendall(data)
        return s

    def _closed(self, s: socket.socket, timeout: float = 5) -> bool:
        s.settimeout(timeout)
        try:
            return s.recv(100) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    @inlineCallbacks
    def test_bad_registrations_are_closed_and_logged(self) -> None:
        """Bad signature, unknown app, missing NULs, oversized, truncated and silent clients are closed; others keep working."""
        good = self.subscribe("u1")
        key = ClientKey.decode(self.app_a["client_key"])
        wrong = ClientKey(bytes(32), bytes(16))
        frame = registration_frame(key, self.app_a["id"], "ib1", "u2")
        bad_sig = self._raw(registration_frame(wrong, self.app_a["id"], "ib1", "u2"))
        unknown = self._raw(registration_frame(key, "no-such-app", "ib1", "u2"))
        no_nul = self._raw(frame[:-1][:0] + struct.pack("<H", len(frame) - 3) + frame[2:-1])
        oversized = self._raw(struct.pack("<H", 60000) + b"x" * 100)
        truncated = self._raw(frame[:20])
        silent = self._raw(b"")
        for s in (bad_sig, unknown, no_nul, oversized):
            self.assertTrue(self._closed(s), "bad registration left open")
        for s in (truncated, silent):
            self.assertTrue(self._closed(s, 4), "incomplete registration not timed out")
        log = self.server.log()
        self.assertIn("bad signature", log)
        self.assertIn("unknown application 'no-such-app'", log)
        self.assertIn("exceeds 512", log)
        self.assertIn("sent no registration within 1", log)
        self.assertIn("127.0.0.1", log)
        token = yield self.token()
        yield self.send(token, {"Recipient": to("all"), "Message": {"Topic": "ok"}})
        self.assertEqual(good.receive(5), {"topic": "ok"})

    @inlineCallbacks
    def test_reregistration(self) -> None:
        """A second registration frame on one connection replaces the first."""
        key = ClientKey.decode(self.app_a["client_key"])
        s = self._raw(registration_frame(key, self.app_a["id"], "ib1", "first"))
        wait_for(lambda: "user=first" in self.server.log())
        s.sendall(registration_frame(key, self.app_a["id"], "ib1", "second"))
        wait_for(lambda: "user=second" in self.server.log())
        token = yield self.token()
        _, body = yield self.send(token, {"Recipient": to("user", UserId="first"), "Message": {}})
        self.assertEqual(json.loads(body)["sessions"], 0)
        _, body = yield self.send(token, {"Recipient": to("user", UserId="second"), "Message": {}})
        self.assertEqual(json.loads(body)["sessions"], 1)


class LoggingTests(ServiceTestBase):
    @inlineCallbacks
    def test_log_lines(self) -> None:
        """Registrations, ends and sends are logged with peer, application, IbId, user and group."""
        sub = self.subscribe("u1", group="g1")
        token = yield self.token()
        yield self.send(token, {"Recipient": to("user", UserId="u1"), "Message": {}})
        sub.close()
        wait_for(lambda: "subscription ended" in self.server.log())
        log = self.server.log()
        self.assertIn(f"subscription registered: peer=127.0.0.1 app={self.app_a['id']} ib=ib1 user=u1 group=g1", log)
        self.assertIn(f"send: app={self.app_a['id']} type=user ib=ib1 target=u1 sessions=1", log)
        self.assertIn("send API (HTTP) on 127.0.0.1 port", log)
        self.assertIn(f"data in {self.server.data_dir}", log)


class StartupTests(TestCase):
    def test_help_and_unknown_option(self) -> None:
        """-h prints the options and exits 0; an unknown option exits non-zero naming it."""
        result = run_twistd("pns4ones", "-h")
        self.assertEqual(result.returncode, 0)
        self.assertIn("--listen", result.stdout)
        result = run_twistd("-n", "--pidfile=", "pns4ones", "--bogus=1")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("bogus", result.stdout + result.stderr)

    def test_bad_values_refused(self) -> None:
        """A bad listen value or the manual's network-as-address stops the start with the option named."""
        result = run_twistd("-n", "--pidfile=", "pns4ones", "--config", os.devnull, "--listen", "1.2.3.999")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("'listen'", result.stdout + result.stderr)
        result = run_twistd("-n", "--pidfile=", "pns4ones", "--config", os.devnull, "/service", "192.168.10.0")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("service_allow=192.168.10.0/24", result.stdout + result.stderr)

    def test_port_in_use(self) -> None:
        """A taken port stops the start with exit code 1 and a message naming the option."""
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        server = ServerProcess()
        self.addCleanup(server.cleanup)
        result = run_twistd(*server.command()[1:-2], "--listen", f"127.0.0.1:{taken.getsockname()[1]}", timeout=30)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("cannot start: option 'listen'", result.stdout + result.stderr)

    def test_data_files_private(self) -> None:
        """The data directory is created 0700 and the store 0600; admin via twistd works too."""
        server = ServerProcess()
        self.addCleanup(server.cleanup)
        server.create_app("x")
        self.assertEqual(stat.S_IMODE(os.stat(server.data_dir).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(server.data_dir / "pns4ones.db").st_mode), 0o600)
        result = run_twistd("pns4ones", "admin", "--data-dir", str(server.data_dir), "list", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout)[0]["title"], "x")
        result = run_twistd("pns4ones", "admin", "--data-dir", str(server.data_dir), "remove", "nope")
        self.assertEqual(result.returncode, 1)
        self.assertIn("no application with id 'nope'", result.stderr)


class BatchTests(ServiceTestBase):
    ini = "max_batch = 5\n"

    @inlineCallbacks
    def test_batch_send(self) -> None:
        """POST /sendmessages delivers each element, answers one result per element, and bounds the batch."""
        u1, u2 = self.subscribe("u1"), self.subscribe("u2")
        token = yield self.token()
        batch = [
            {"Recipient": to("user", UserId="u1"), "Message": {"Topic": "a"}},
            {"Recipient": to("user"), "Message": {}},
            {"Recipient": to("user", UserId="u2"), "Message": {"Topic": "b"}},
            {"Recipient": to("all"), "Message": {"Topic": "c"}},
        ]
        response = yield self.http.post(f"{self.server.url}/sendmessages", json=batch, headers={"Authorization": f"Bearer {token}"})
        self.assertEqual(response.code, 200)
        doc = yield response.json()
        self.assertEqual([r["status"] for r in doc["results"]], [200, 400, 200, 200])
        self.assertEqual(doc["results"][1]["field"], "[1].Recipient.UserId")
        self.assertEqual((doc["sessions"], doc["accepted"]), (4, 3))
        self.assertEqual([m["topic"] for m in u1.receive_all()], ["a", "c"])
        self.assertEqual([m["topic"] for m in u2.receive_all()], ["b", "c"])
        response = yield self.http.post(f"{self.server.url}/sendmessages", json=batch * 2, headers={"Authorization": f"Bearer {token}"})
        self.assertEqual(response.code, 413)
        response = yield self.http.post(
            f"{self.server.url}/sendmessages", json={"not": "a list"}, headers={"Authorization": f"Bearer {token}"}
        )
        self.assertEqual(response.code, 400)
        response = yield self.http.post(f"{self.server.url}/sendmessages", json=batch, headers={"Authorization": "Bearer nope"})
        self.assertEqual(response.code, 401)

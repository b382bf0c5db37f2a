"""pns4ones_client against the real ``twistd -n pns4ones``: senders, listeners, the CLIs."""

from __future__ import annotations

import json
import os
import queue
import random
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pns4ones_client import (
    AuthenticationError,
    Backoff,
    BadRequest,
    BatchResult,
    Listener,
    PayloadTooLarge,
    Sender,
    SendResult,
    ServiceError,
    Subscriber,
    message,
    recipient,
)
from pns4ones_client._api import LEGACY_EPOCH_OFFSET, TokenCache, parse_auth, parse_send_result
from pns4ones_client.errors import RateLimited, error_from_response
from pns4ones_client.tx import TwistedListener, TwistedSender

from .support import BIN, ServerProcess, wait_for, without_id

ROOT = Path(__file__).resolve().parents[1]

SEND = str(BIN / "pns4ones-send")
LISTEN = str(BIN / "pns4ones-listen")


class ClientTestBase(TestCase):
    ini = ""

    def setUp(self) -> None:
        self.server = ServerProcess(ini=self.ini)
        self.addCleanup(self.server.cleanup)
        self.app = self.server.create_app("Shop")
        self.server.start()

    def registrations(self) -> int:
        return self.server.log().count("subscription registered")

    def subscribe(self, user: str, ib: str = "ib1", group: str = "") -> Subscriber:
        before = self.registrations()
        sub = Subscriber(
            "127.0.0.1", self.server.service_port, self.app["id"], self.app["client_key"], ib, user, group, timeout=5
        ).connect()
        self.addCleanup(sub.close)
        wait_for(lambda: self.registrations() > before, what=f"registration of {user}")
        return sub

    def sender(self, **options: Any) -> Sender:
        return Sender(self.server.url, self.app["server_key"], **options)

    def wait_revoked(self, token: str) -> None:
        """Until the running server answers 401 to ``token`` (the admin CLI's change reached it)."""

        def revoked() -> bool:
            request = urllib.request.Request(
                f"{self.server.url}/sendmessage",
                data=b'{"Recipient": {"Type": "all", "IbId": "x"}, "Message": {}}',
                headers={"Authorization": f"Bearer {token}"},
            )
            try:
                urllib.request.urlopen(request, timeout=5).close()
            except urllib.error.HTTPError as e:
                return e.code == 401
            return False

        wait_for(revoked, 5, 0.1, what="the token to be revoked")


def eventually(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """A Deferred firing once ``condition()`` holds, polling without blocking the reactor."""

    @inlineCallbacks
    def poll() -> Any:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            yield deferLater(reactor, 0.05, lambda: None)

    return poll()


class BlockingSenderTests(ClientTestBase):
    ini = "max_body_size = 2K\n"

    def test_one_auth_for_many_sends(self) -> None:
        """Twenty sends ask /auth once; each reaches the user with title, body, topic, data and importance."""
        sub = self.subscribe("u1")
        sender = self.sender()
        for n in range(20):
            result = sender.send_to_user("ib1", "u1", f"Заказ №{n}", 'body "quoted"', topic="orders", data={"n": str(n)}, important=n == 0)
            self.assertEqual(result, SendResult(sessions=1, users=1))
        self.assertEqual(sender.auth_requests, 1)
        self.assertEqual(self.server.log().count("issued an access token"), 1)
        received = sub.receive_all()
        self.assertEqual(len(received), 20)
        self.assertEqual(
            received[0],
            {"topic": "orders", "notification": {"title": "Заказ №0", "body": 'body "quoted"', "important": True}, "data": {"n": "0"}},
        )
        self.assertEqual(received[19]["notification"]["important"], False)

    def test_group_all_and_plain_send(self) -> None:
        """send_to_group, send_to_all and send(recipient, message) route as the API documents."""
        member = self.subscribe("u1", group="managers")
        other = self.subscribe("u2")
        sender = self.sender()
        self.assertEqual(sender.send_to_group("ib1", "managers", "to group"), SendResult(1, 1))
        self.assertEqual(sender.send_to_all("ib1", "to all"), SendResult(2, 2))
        self.assertEqual(sender.send({"Type": "user", "IbId": "ib1", "UserId": "u2"}, {"Data": {"raw": "yes"}}), SendResult(1, 1))
        self.assertEqual([m.get("notification", {}).get("title") for m in member.receive_all()], ["to group", "to all"])
        self.assertEqual(other.receive_all(), [{"notification": {"title": "to all", "important": False}}, {"data": {"raw": "yes"}}])

    def test_reauth_after_reset_token(self) -> None:
        """After reset_token the next send gets 401, asks /auth once more and succeeds."""
        sub = self.subscribe("u1")
        sender = self.sender()
        sender.send_to_user("ib1", "u1", "before")
        old = sender.token()
        self.server.admin("reset_token", self.app["id"])
        self.wait_revoked(old)
        self.assertEqual(sender.send_to_user("ib1", "u1", "after"), SendResult(1, 1))
        self.assertEqual((sender.auth_requests, sender.refused), (2, 1))
        self.assertNotEqual(sender.token(), old)
        self.assertEqual([m["notification"]["title"] for m in sub.receive_all()], ["before", "after"])

    def test_typed_errors_carry_the_reason(self) -> None:
        """400 names the field, 413 is PayloadTooLarge, a wrong key is a 401 AuthenticationError, no server a ServiceError."""
        sender = self.sender()
        with self.assertRaises(BadRequest) as caught:
            sender.send({"Type": "user", "IbId": "ib1"}, {})
        self.assertEqual(
            (caught.exception.status, caught.exception.field, caught.exception.reason), (400, "Recipient.UserId", "is required")
        )
        with self.assertRaises(PayloadTooLarge) as caught:
            sender.send_to_all("ib1", "big", "x" * 4096)
        self.assertEqual(caught.exception.status, 413)
        self.assertTrue(caught.exception.reason)
        with self.assertRaises(AuthenticationError) as caught:
            Sender(self.server.url, "wrong key").send_to_all("ib1", "x")
        self.assertEqual(caught.exception.status, 401)
        self.assertIn("401", str(caught.exception))
        with self.assertRaises(ServiceError) as caught:
            Sender(f"http://127.0.0.1:{_closed_port()}", "k").send_to_all("ib1", "x")
        self.assertIsNone(caught.exception.status)
        with self.assertRaises(ValueError):
            sender.send_to_user("ib1", "", "no user")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ExpiryTests(ClientTestBase):
    ini = "token_lifetime = 3\n"

    def test_refresh_before_expiry_and_403(self) -> None:
        """A token is renewed before it expires (no 403); a client whose clock lags gets 403, re-auths once and succeeds."""
        sub = self.subscribe("u1")
        sender = self.sender()
        frozen = self.sender(clock=lambda: 1_000_000.0)  # never sees its token age
        sender.send_to_user("ib1", "u1", "one")
        frozen.send_to_user("ib1", "u1", "one (frozen)")
        first = sender.token()
        time.sleep(3.3)
        sender.send_to_user("ib1", "u1", "two")
        self.assertEqual((sender.auth_requests, sender.refused), (2, 0))
        self.assertNotEqual(sender.token(), first)
        frozen.send_to_user("ib1", "u1", "two (frozen)")
        self.assertEqual((frozen.auth_requests, frozen.refused), (2, 1))
        self.assertEqual(len(sub.receive_all()), 4)


class TwistedSenderTests(ClientTestBase):
    @inlineCallbacks
    def test_concurrent_sends_share_one_auth_and_reauth(self) -> None:
        """Ten concurrent sends share one /auth; after reset_token a send re-auths once and succeeds."""
        sub = self.subscribe("u1")
        sender = TwistedSender(self.server.url, self.app["server_key"])
        self.addCleanup(sender.close)
        results = yield DeferredList(
            [sender.send_to_user("ib1", "u1", f"n{n}") for n in range(10)], fireOnOneErrback=True, consumeErrors=True
        )
        self.assertEqual([r for _, r in results], [SendResult(1, 1)] * 10)
        self.assertEqual(sender.auth_requests, 1)
        old = yield sender.token()
        self.server.admin("reset_token", self.app["id"])
        self.wait_revoked(old)
        result = yield sender.send_to_all("ib1", "after reset", data={"k": "v"})
        self.assertEqual(result, SendResult(1, 1))
        self.assertEqual((sender.auth_requests, sender.refused), (2, 1))
        self.assertEqual(len(sub.receive_all()), 11)

    @inlineCallbacks
    def test_typed_errors(self) -> None:
        """The Twisted sender raises the same typed errors with the server's reason."""
        sender = TwistedSender(self.server.url, self.app["server_key"])
        self.addCleanup(sender.close)
        with self.assertRaises(BadRequest) as caught:
            yield sender.send({"Type": "group", "IbId": "ib1"}, {})
        self.assertEqual(caught.exception.field, "Recipient.UserGroup")
        wrong = TwistedSender(self.server.url, "wrong")
        self.addCleanup(wrong.close)
        with self.assertRaises(AuthenticationError):
            yield wrong.send_to_all("ib1", "x")


def got(sub: Subscriber) -> dict[str, Any]:
    """The subscriber's next message, within 5 s."""
    message = sub.receive(5)
    assert message is not None, "no message within 5 s"
    return message


class SendApiTests(ClientTestBase):
    """The rest of the send API through the blocking Sender: TTL, batches, groups, presence, tickets."""

    ini = "max_kept_per_user = 2\n"

    def test_ttl_keeps_a_message_until_the_user_connects(self) -> None:
        """A send with ttl to a user not connected reports stored, and reaches him when he connects; without ttl nothing is kept."""
        sender = self.sender()
        kept = sender.send_to_user("ib1", "late", "Счёт согласован", ttl=600, data={"invoice": "7"})
        self.assertEqual((kept.sessions, kept.users, kept.stored, kept.dropped), (0, 0, True, 0))
        self.assertEqual(without_id(kept.raw), {"sessions": 0, "users": 0, "stored": True})
        lost = sender.send_to_user("ib1", "late", "online only")
        self.assertEqual(lost, SendResult(0, 0, stored=False))
        sub = self.subscribe("late")
        self.assertEqual(sub.receive(5), {"notification": {"title": "Счёт согласован", "important": False}, "data": {"invoice": "7"}})
        self.assertEqual(sub.receive_all(quiet=0.5), [])
        online = sender.send({"Type": "user", "IbId": "ib1", "UserId": "late"}, {"Topic": "now"}, ttl=600)
        self.assertEqual((online.sessions, online.stored), (1, False))

    def test_dropped_when_the_user_has_too_many_kept(self) -> None:
        """The third kept message for a user with max_kept_per_user = 2 reports one dropped; he gets the two newest."""
        sender = self.sender()
        results = [sender.send_to_user("ib1", "away", f"n{n}", ttl=600) for n in range(3)]
        self.assertEqual([(r.stored, r.dropped) for r in results], [(True, 0), (True, 0), (True, 1)])
        self.assertEqual(results[2]["dropped"], 1)
        sub = self.subscribe("away")
        self.assertEqual([got(sub)["notification"]["title"], got(sub)["notification"]["title"]], ["n1", "n2"])

    def test_batch_reports_each_message(self) -> None:
        """send_batch sends pairs and raw bodies in one POST /sendmessages; a bad one is its typed error and the others stand."""
        sub = self.subscribe("u1")
        sender = self.sender()
        batch = sender.send_batch(
            [
                (recipient("user", "ib1", user_id="u1"), message("first")),
                {"Recipient": {"Type": "group", "IbId": "ib1"}, "Message": {"Topic": "no group named"}},
                (recipient("user", "ib1", user_id="offline"), message("kept", ttl=60)),
            ]
        )
        self.assertIsInstance(batch, BatchResult)
        self.assertEqual((batch.sessions, batch.accepted), (1, 2))
        first, bad, kept = batch.results
        self.assertEqual(first, SendResult(1, 1))
        self.assertIsInstance(bad, BadRequest)
        assert isinstance(bad, BadRequest)
        self.assertEqual((bad.status, bad.field), (400, "[1].Recipient.UserGroup"))
        self.assertEqual(batch.errors, [(1, bad)])
        assert isinstance(kept, SendResult)
        self.assertEqual((kept.sessions, kept.stored), (0, True))
        self.assertEqual(sub.receive(5), {"notification": {"title": "first", "important": False}})
        self.assertEqual(sender.auth_requests, 1)
        self.assertRaises(ValueError, sender.send_batch, [])

    def test_groups(self) -> None:
        """set, add, list, members, remove and delete a group (a name with '/' and Cyrillic); a group send reaches its members."""
        sender = self.sender()
        name = "Склад/Москва"
        group = sender.set_group("ib1", name, ["u1", "u2"])
        self.assertEqual((group.ib_id, group.group, group.user_ids), ("ib1", name, ("u1", "u2")))
        self.assertEqual(sender.add_to_group("ib1", name, ["u3", "u1"]).raw["added"], 1)
        self.assertEqual(sender.groups("ib1"), {name: 3})
        self.assertEqual(sender.group("ib1", name).user_ids, ("u1", "u2", "u3"))
        removed = sender.remove_from_group("ib1", name, "u2")
        self.assertEqual((removed.user_ids, removed.raw["removed"]), (("u1", "u3"), True))
        u3, u2 = self.subscribe("u3"), self.subscribe("u2")
        self.assertEqual(sender.send_to_group("ib1", name, "to the store"), SendResult(1, 1))
        self.assertEqual(got(u3)["notification"]["title"], "to the store")
        self.assertEqual(u2.receive_all(quiet=0.5), [])
        self.assertEqual(sender.delete_group("ib1", name), 2)
        self.assertEqual(sender.groups("ib1"), {})
        self.assertEqual(sender.group("ib1", name).user_ids, ())
        with self.assertRaises(ValueError):
            sender.groups("")

    def test_presence(self) -> None:
        """presence counts users and sessions of an information base; user_presence lists one user's sessions."""
        self.subscribe("u1"), self.subscribe("u1"), self.subscribe("u2", group="g")
        self.subscribe("u9", ib="other-ib")
        sender = self.sender()
        everyone = sender.presence("ib1")
        self.assertEqual((everyone.ib_id, dict(everyone.users), everyone.online, everyone.sessions), ("ib1", {"u1": 2, "u2": 1}, 2, 3))
        one = sender.user_presence("ib1", "u2")
        self.assertEqual((one.user_id, one.online, len(one.sessions)), ("u2", True, 1))
        self.assertEqual((one.sessions[0]["group"], one.sessions[0]["peer"]), ("g", "127.0.0.1"))
        self.assertFalse(sender.user_presence("ib1", "nobody").online)

    def test_ticket_subscribes_over_websocket_and_sse(self) -> None:
        """A ticket from Sender.ticket lets a WebSocket and an SSE subscriber receive the user's messages."""
        from pns4ones_client.web import WebSubscriber

        sender = self.sender()
        ticket = sender.ticket("ib1", "web-user", groups=["g"], ttl=120)
        self.assertTrue(ticket.ticket)
        self.assertEqual(ticket.expires_in, 120)
        self.assertLess(abs(ticket.expires_at - (time.time() + 120)), 10)
        for transport in ("ws", "sse"):
            with WebSubscriber(self.server.url, ticket.ticket, transport=transport) as sub:
                self.assertEqual(sub.receive(5).get("event"), "ready")
                result = sender.send_to_user("ib1", "web-user", f"via {transport}")
                self.assertEqual(result.sessions, 1)
                self.assertEqual(sub.receive(5)["notification"]["title"], f"via {transport}")


def readme_blocks(start: str) -> list[str]:
    """The fenced Python blocks of clients/README.md that begin with ``start``."""
    text = (ROOT / "clients" / "README.md").read_text(encoding="utf-8")
    return [block for block in re.findall(r"```python\n(.*?)```", text, re.S) if block.startswith(start)]


class ReadmeExamplesTests(ClientTestBase):
    """The blocking Python examples of clients/README.md, run against the real server."""

    def run_block(self, block: str, user: str) -> list[str]:
        printed: list[str] = []
        namespace = {
            "SERVER_KEY": self.app["server_key"],
            "IB": "ib1",
            "USER": user,
            "print": lambda *args: printed.append(" ".join(map(str, args))),
        }
        exec(compile(block.replace("http://localhost:36696", self.server.url), "clients/README.md", "exec"), namespace)
        return printed

    def test_python_examples_run(self) -> None:
        """Both Sender examples run as written: the send reaches the user, the 2 MB message is refused (413), a TTL keeps, batch, groups, presence and a ticket answer."""
        first, second = readme_blocks("from pns4ones_client import Sender")
        sub = self.subscribe("reader")
        printed = self.run_block(first, "reader")
        self.assertEqual(printed[0], "1 1 False")
        self.assertRegex(printed[1], r"^413 ")
        self.assertEqual(got(sub)["notification"]["title"], "New order")
        printed = self.run_block(second, "away")
        self.assertEqual(printed[:2], ["True", "2 0"])
        self.assertEqual(
            printed[2:4], ["{'Managers': 3}", "('0b9e8f4c-3a2d-4c1b-9e8f-7a6b5c4d3e2f', 'a1f3c2d4-0000-4000-8000-000000000001', 'away')"]
        )
        self.assertEqual(printed[4:6], ["1 1 {'reader': 1}", "False"])  # reader, from the first block, is still connected
        self.assertRegex(printed[6], r"^\S+ \d+$")
        self.assertEqual(len(printed), 7)


class TwistedSendApiTests(ClientTestBase):
    @inlineCallbacks
    def test_the_whole_api_returns_deferreds(self) -> Generator[Deferred[Any], Any, None]:
        """TwistedSender: ttl, batch, groups, presence and a ticket, each a Deferred of the same result types."""
        sender = TwistedSender(self.server.url, self.app["server_key"])
        self.addCleanup(sender.close)
        kept = yield sender.send_to_user("ib1", "late", "kept", ttl=60)
        self.assertEqual((kept.sessions, kept.stored), (0, True))
        batch = yield sender.send_batch([(recipient("all", "ib1"), message("a")), (recipient("user", "ib1", user_id="late"), message("b"))])
        self.assertEqual((batch.accepted, batch.sessions), (2, 0))
        group = yield sender.set_group("ib1", "g", ["late", "x"])
        self.assertEqual(group.user_ids, ("late", "x"))
        added = yield sender.add_to_group("ib1", "g", ["y"])
        self.assertEqual(added.raw["added"], 1)
        removed = yield sender.remove_from_group("ib1", "g", "x")
        self.assertEqual(removed.user_ids, ("late", "y"))
        self.assertEqual((yield sender.groups("ib1")), {"g": 2})
        self.assertEqual((yield sender.group("ib1", "g")).user_ids, ("late", "y"))
        self.subscribe("late")
        presence = yield sender.presence("ib1")
        self.assertEqual(dict(presence.users), {"late": 1})
        self.assertTrue((yield sender.user_presence("ib1", "late")).online)
        ticket = yield sender.ticket("ib1", "late")
        self.assertEqual(ticket.expires_in, 300)
        self.assertEqual((yield sender.delete_group("ib1", "g")), 2)
        self.assertEqual(sender.auth_requests, 1)


def make_ca_and_certificate(directory: str) -> tuple[str, str, str]:
    """(ca.pem, server.pem, server.key) for 127.0.0.1, generated with cryptography."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pns4ones test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])).issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = [os.path.join(directory, name) for name in ("ca.pem", "server.pem", "server.key")]
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths[0], paths[1], paths[2]


class HTTPSTests(ClientTestBase):
    def setUp(self) -> None:
        """The server itself speaks HTTPS (ssl_mode FromFileWithPrivateKey) with a certificate of a test CA."""
        certs = tempfile.mkdtemp(prefix="pns4ones-certs-")
        self.addCleanup(shutil.rmtree, certs, True)
        self.ca, cert, key = make_ca_and_certificate(certs)
        self.ini = f"ssl_mode = FromFileWithPrivateKey\nssl_certificate = {cert}\nssl_certificate_key = {key}\n"
        super().setUp()
        self.https = f"https://127.0.0.1:{self.server.api_port}"

    @inlineCallbacks
    def test_https_with_ca_file(self) -> None:
        """Over HTTPS both senders succeed when trusting the CA file, and refuse a certificate the system does not trust."""
        sub = self.subscribe("u1")
        self.assertEqual(
            Sender(self.https, self.app["server_key"], ca_file=self.ca).send_to_user("ib1", "u1", "blocking"), SendResult(1, 1)
        )
        with self.assertRaises(ServiceError) as caught:
            Sender(self.https, self.app["server_key"]).send_to_user("ib1", "u1", "untrusted")
        self.assertIn("CERTIFICATE_VERIFY_FAILED", caught.exception.reason)
        sender = TwistedSender(self.https, self.app["server_key"], ca_file=self.ca)
        self.addCleanup(sender.close)
        result = yield sender.send_to_user("ib1", "u1", "twisted")
        self.assertEqual(result, SendResult(1, 1))
        untrusted = TwistedSender(self.https, self.app["server_key"])
        self.addCleanup(untrusted.close)
        with self.assertRaises(ServiceError):
            yield untrusted.send_to_user("ib1", "u1", "untrusted")
        self.assertEqual([m["notification"]["title"] for m in sub.receive_all()], ["blocking", "twisted"])


class ListenerTests(ClientTestBase):
    def test_blocking_listener_survives_restart(self) -> None:
        """The blocking Listener reconnects after the server restarts and receives what is sent afterwards."""
        got: queue.Queue[dict[str, Any]] = queue.Queue()
        events: list[str] = []
        listener = Listener(
            "127.0.0.1", self.server.service_port, self.app["id"], self.app["client_key"], "ib1", "u1",
            initial_delay=0.2, max_delay=1.0, on_status=lambda event, detail: events.append(event),
        )  # fmt: skip
        thread = threading.Thread(target=lambda: [got.put(m) for m in listener.messages()], daemon=True)
        thread.start()
        self.addCleanup(thread.join, 5)
        self.addCleanup(listener.stop)
        wait_for(lambda: self.registrations() == 1, what="the listener to register")
        sender = self.sender()
        sender.send_to_user("ib1", "u1", "before restart")
        self.assertEqual(got.get(timeout=5)["notification"]["title"], "before restart")
        self.server.restart()
        wait_for(lambda: self.registrations() == 2, 15, what="the listener to register again")
        self.assertEqual(sender.send_to_user("ib1", "u1", "after restart"), SendResult(1, 1))
        self.assertEqual(got.get(timeout=5)["notification"]["title"], "after restart")
        self.assertEqual(listener.connections, 2)
        self.assertIn("disconnected", events)
        listener.stop()
        thread.join(5)
        self.assertFalse(thread.is_alive())

    @inlineCallbacks
    def test_twisted_listener_survives_restart(self) -> None:
        """TwistedListener reconnects after a restart (and after failed attempts while the server is down)."""
        seen: list[dict[str, Any]] = []
        listener = TwistedListener(
            "127.0.0.1", self.server.service_port, self.app["id"], self.app["client_key"], "ib1", "u1",
            on_message=seen.append, initial_delay=0.2, max_delay=1.0,
        )  # fmt: skip
        listener.startService()
        self.addCleanup(listener.stopService)
        yield eventually(lambda: self.registrations() == 1, what="the listener to register")
        sender = TwistedSender(self.server.url, self.app["server_key"])
        self.addCleanup(sender.close)
        yield sender.send_to_user("ib1", "u1", "before")
        first = yield listener.next_message()
        self.assertEqual(first["notification"]["title"], "before")
        self.server.stop()
        yield deferLater(reactor, 1.0, lambda: None)  # a few refused connection attempts
        self.server.start()
        yield eventually(lambda: self.registrations() == 2, 15, what="the listener to register again")
        yield sender.send_to_user("ib1", "u1", "after")
        second = yield listener.next_message()
        self.assertEqual(second["notification"]["title"], "after")
        self.assertEqual(listener.connections, 2)
        self.assertEqual([m["notification"]["title"] for m in seen], ["before", "after"])


class CommandLineTests(ClientTestBase):
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PNS4ONES_URL": self.server.url,
            "PNS4ONES_SERVER_KEY": self.app["server_key"],
            "PNS4ONES_SERVICE": f"127.0.0.1:{self.server.service_port}",
            "PNS4ONES_APP_ID": self.app["id"],
            "PNS4ONES_CLIENT_KEY": self.app["client_key"],
            "PNS4ONES_IB": "ib1",
        }

    def test_send_with_ttl_reaches_a_later_listener(self) -> None:
        """pns4ones-send --ttl to a user not connected prints stored: true; pns4ones-listen started later gets the message."""
        sent = subprocess.run(
            [SEND, "user:u7", "kept for later", "--ttl", "600"], env=self.env(), capture_output=True, text=True, timeout=30
        )
        self.assertEqual((sent.returncode, sent.stderr), (0, ""))
        self.assertEqual(without_id(json.loads(sent.stdout)), {"sessions": 0, "users": 0, "stored": True})
        listen = subprocess.run([LISTEN, "--user", "u7", "--count", "1"], env=self.env(), capture_output=True, text=True, timeout=30)
        self.assertEqual(listen.returncode, 0, listen.stderr)
        self.assertEqual(json.loads(listen.stdout), {"notification": {"title": "kept for later", "important": False}})

    def test_send_reaches_listen(self) -> None:
        """pns4ones-send (user, group-less all) reaches pns4ones-listen, which prints one JSON line per message."""
        listen = subprocess.Popen([LISTEN, "--user", "u1", "--count", "2"], env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: listen.poll() is None and listen.kill())
        wait_for(lambda: self.registrations() == 1, what="pns4ones-listen to register")
        sent = subprocess.run(
            [SEND, "user:u1", "Заказ \"5\"", "строка 😀", "--data", "order=5", "--data", "eq=a=b", "--topic", "orders", "--important"],
            env=self.env(), capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        self.assertEqual((sent.returncode, sent.stderr), (0, ""))
        self.assertEqual(without_id(json.loads(sent.stdout)), {"sessions": 1, "users": 1, "stored": False})
        sent = subprocess.run(
            [SEND, "--url", self.server.url, "all", "--data", "only=data"], env=self.env(), capture_output=True, text=True, timeout=30
        )
        self.assertEqual(sent.returncode, 0, sent.stderr)
        out, err = listen.communicate(timeout=15)
        self.assertEqual(listen.returncode, 0, err)
        lines = out.decode("utf-8").splitlines()
        self.assertEqual(
            [json.loads(line) for line in lines],
            [
                {
                    "topic": "orders",
                    "notification": {"title": 'Заказ "5"', "body": "строка 😀", "important": True},
                    "data": {"order": "5", "eq": "a=b"},
                },
                {"data": {"only": "data"}},
            ],
        )
        self.assertIn("connected", err.decode())

    def test_help_and_errors(self) -> None:
        """-h works for both; a wrong key exits 1 with the server's reason; missing options exit 2 naming them."""
        for tool in (SEND, LISTEN):
            shown = subprocess.run([tool, "-h"], capture_output=True, text=True, timeout=30)
            self.assertEqual(shown.returncode, 0)
            self.assertIn("usage:", shown.stdout)
        env = {**self.env(), "PNS4ONES_SERVER_KEY": "wrong"}
        wrong = subprocess.run([SEND, "all", "x"], env=env, capture_output=True, text=True, timeout=30)
        self.assertEqual(wrong.returncode, 1)
        self.assertIn("401", wrong.stderr)
        bad = subprocess.run([SEND, "someone", "x"], env=self.env(), capture_output=True, text=True, timeout=30)
        self.assertEqual(bad.returncode, 2)
        self.assertIn("user:ID, group:NAME or all", bad.stderr)
        no_key = {k: v for k, v in self.env().items() if k != "PNS4ONES_CLIENT_KEY"}
        missing = subprocess.run([LISTEN, "--user", "u1"], env=no_key, capture_output=True, text=True, timeout=30)
        self.assertEqual(missing.returncode, 2)
        self.assertIn("--client-key", missing.stderr)
        garbled = subprocess.run(
            [LISTEN, "--user", "u1", "--client-key", "bm90IGEga2V5"], env=self.env(), capture_output=True, text=True, timeout=30
        )
        self.assertEqual(garbled.returncode, 1)
        self.assertIn("client key", garbled.stderr)

    def test_listen_wrong_key_hint_and_sigterm(self) -> None:
        """pns4ones-listen with another key keeps retrying, says the key may be wrong, and exits 0 on SIGTERM."""
        import base64
        import struct

        other_key = base64.b64encode(struct.pack("<ii", 32, 16) + os.urandom(48)).decode()
        err_path = self.server.dir / "listen.err"
        with open(err_path, "wb") as err:
            listen = subprocess.Popen(
                [LISTEN, "--user", "u1", "--client-key", other_key], env=self.env(), stdout=subprocess.PIPE, stderr=err
            )
        self.addCleanup(lambda: listen.poll() is None and listen.kill())
        wait_for(lambda: err_path.read_text().count("wrong application id or client key") >= 2, 15, what="two failed registrations")
        listen.terminate()
        self.assertEqual(listen.wait(10), 0)
        self.assertIn("retrying in", err_path.read_text())
        self.assertEqual(listen.stdout.read(), b"")
        listen.stdout.close()


class PureTests(SynchronousTestCase):
    def test_backoff(self) -> None:
        """Delays double from the initial one up to the maximum, jittered within [d/2, d], and reset."""
        backoff = Backoff(0.5, 4.0, rng=random.Random(1))
        delays = [backoff.next_delay() for _ in range(8)]
        for delay, ceiling in zip(delays, [0.5, 1, 2, 4, 4, 4, 4, 4]):
            self.assertTrue(ceiling / 2 <= delay <= ceiling, (delay, ceiling))
        self.assertEqual(len(set(delays)), 8)
        backoff.reset()
        self.assertLessEqual(backoff.next_delay(), 0.5)
        backoff.attempts = 10_000
        self.assertLessEqual(backoff.next_delay(), 4.0)

    def test_auth_expiry_forms(self) -> None:
        """expires_in as unix time (server clock from Date), as the original's 0001-01-01 seconds, or as a lifetime."""
        date = "Mon, 23 Nov 2026 10:00:00 GMT"
        server_now = 1795428000.0
        self.assertEqual(parse_auth(b'{"access_token": "t", "expires_in": %d}' % (server_now + 3600), date, 50.0), ("t", 3650.0))
        self.assertEqual(
            parse_auth(b'{"access_token": "t", "expires_in": %d}' % (server_now + 3600 + LEGACY_EPOCH_OFFSET), date, 50.0), ("t", 3650.0)
        )
        self.assertEqual(parse_auth(b'{"access_token": "t", "expires_in": 3600}', None, 50.0), ("t", 3650.0))
        with self.assertRaises(ServiceError):
            parse_auth(b"<html>", None, 0)

    def test_token_cache_margin(self) -> None:
        """A token is handed out until min(margin, a fifth of its life) before expiry, and dropped only if still current."""
        cache = TokenCache(margin=60)
        cache.store("a", 3600.0, 0.0)
        self.assertEqual(cache.current(3539.0), "a")
        self.assertIsNone(cache.current(3541.0))
        cache.store("b", 110.0, 100.0)  # ten seconds of life: renew two seconds early
        self.assertEqual(cache.current(107.9), "b")
        self.assertIsNone(cache.current(108.1))
        cache.drop("a")
        self.assertEqual(cache.token, "b")

    def test_send_result_keeps_every_field(self) -> None:
        """A send answer's stored, dropped and any field a newer service adds are kept (attribute and key); equality ignores raw."""
        result = parse_send_result(b'{"sessions": 2, "users": 1, "stored": true, "dropped": 3, "node": "B"}')
        self.assertEqual((result.sessions, result.users, result.stored, result.dropped), (2, 1, True, 3))
        self.assertEqual((result.node, result["node"]), ("B", "B"))
        self.assertEqual(result, SendResult(2, 1, True, 3))
        with self.assertRaises(AttributeError):
            result.no_such_field  # noqa: B018
        self.assertEqual(parse_send_result(b""), SendResult(-1, -1))  # the original's empty answer
        self.assertEqual(message("t", ttl=60), {"Notification": {"Title": "t", "Body": "", "Important": False}, "TTL": 60})
        for bad in (-1, float("nan"), True, "60"):
            self.assertRaises(ValueError, message, "t", ttl=bad)

    def test_builders_and_errors(self) -> None:
        """Builders refuse incomplete recipients and non-string data; 429 carries Retry-After; non-JSON errors keep the text."""
        self.assertEqual(recipient("group", "ib", group="g"), {"Type": "group", "IbId": "ib", "UserGroup": "g"})
        self.assertEqual(message(topic="t"), {"Topic": "t"})
        for bad in (
            lambda: recipient("user", "ib"),
            lambda: recipient("everyone", "ib"),
            lambda: recipient("all", ""),
            lambda: message(data={"n": 1}),
        ):
            self.assertRaises(ValueError, bad)
        limited = error_from_response(429, b'{"error": "rate_limited", "reason": "slow down"}', {"Retry-After": "2"})
        self.assertIsInstance(limited, RateLimited)
        self.assertEqual((limited.reason, limited.retry_after), ("slow down", 2.0))
        proxy = error_from_response(502, b"<html>Bad Gateway</html>", {})
        self.assertIsInstance(proxy, ServiceError)
        self.assertEqual((proxy.status, proxy.reason), (502, "<html>Bad Gateway</html>"))

"""HTTPS for the send API: every ssl_mode on the real twistd process, refusals, reload, reverse proxies."""

from __future__ import annotations

import http.client
import ipaddress
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web._newclient import ResponseFailed, ResponseNeverReceived
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from pns4ones import proxies, tls
from pns4ones.config import ConfigError
from pns4ones.tap import Options
from pns4ones_client import Subscriber

from .pki import DAY, NOW, PKI, ec_key
from .support import ADMIN, TWISTD, ServerProcess, free_port, http_client, wait_for

# One PKI for the whole module: key generation is the slow part.
CA = PKI()
SERVER = CA.server()  # RSA, signed by the intermediate: clients need the chain
OTHER_CA = PKI("someone else")


@implementer(IPolicyForHTTPS)
class TrustOnly:
    """treq's TLS policy: trust one root; check the URL's host name (or ``name`` instead)."""

    def __init__(self, root_pem: bytes, name: str | None = None) -> None:
        self.root = Certificate.loadPEM(root_pem)
        self.name = name

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return optionsForClientTLS(self.name or hostname.decode("ascii"), trustRoot=self.root)


def https_client(testcase: TestCase, root_pem: bytes = CA.root_pem, name: str | None = None) -> Any:
    import treq.client

    pool = HTTPConnectionPool(reactor, persistent=False)
    testcase.addCleanup(pool.closeCachedConnections)
    return treq.client.HTTPClient(Agent(reactor, contextFactory=TrustOnly(root_pem, name), pool=pool))


def stdlib_context(root: Path, **kwargs: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(root))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # asking for TLS 1.0/1.1 on purpose
        for name, value in kwargs.items():
            setattr(context, name, value)
    return context


class HttpsServerBase(TestCase):
    """A real server with TLS files written into its directory before it starts."""

    ini = ""

    def files(self, directory: Path) -> None:
        """Write the certificate files the INI names."""

    def setUp(self) -> None:
        self.server = ServerProcess(ini=self.ini)
        self.addCleanup(self.server.cleanup)
        self.root = self.server.dir / "root.pem"
        self.root.write_bytes(CA.root_pem)
        self.files(self.server.dir)
        self.app = self.server.create_app("Shop")
        self.server.start()
        self.https = https_client(self)

    @property
    def url(self) -> str:
        return f"https://localhost:{self.server.api_port}"

    @inlineCallbacks
    def token(self, client: Any = None) -> Any:
        response = yield (client or self.https).get(f"{self.url}/auth", params={"server_key": self.app["server_key"]})
        self.assertEqual(response.code, 200)
        return (yield response.json())["access_token"]

    def peer_certificate(self, **context: Any) -> tuple[x509.Certificate, str]:
        """The certificate a fresh connection gets, and the TLS version, via the stdlib client."""
        conn = http.client.HTTPSConnection("localhost", self.server.api_port, context=stdlib_context(self.root, **context), timeout=5)
        self.addCleanup(conn.close)
        conn.connect()
        return x509.load_der_x509_certificate(conn.sock.getpeercert(True)), conn.sock.version()


class PemChainTests(HttpsServerBase):
    # Relative paths in the INI file are relative to its directory.
    ini = "ssl_mode = FromFileWithPrivateKey\nssl_certificate = server.pem\nssl_certificate_key = keys/server.key\nssl_certificate_password = пароль 1\nmax_body_size = 2K\n"

    def files(self, directory: Path) -> None:
        (directory / "keys").mkdir()
        (directory / "server.pem").write_bytes(SERVER.chain_pem())
        (directory / "keys" / "server.key").write_bytes(SERVER.key_pem("пароль 1"))

    @inlineCallbacks
    def test_send_over_https(self) -> None:
        """Auth and send over HTTPS with an encrypted key and a chain file; the client trusts only the root."""
        sub = Subscriber(
            "127.0.0.1", self.server.service_port, self.app["id"], self.app["client_key"], "ib1", "u1", "", timeout=5
        ).connect()
        self.addCleanup(sub.close)
        wait_for(lambda: "subscription registered" in self.server.log(), what="the subscription")
        token = yield self.token()
        body = {"Recipient": {"Type": "user", "IbId": "ib1", "UserId": "u1"}, "Message": {"Topic": "по HTTPS"}}
        response = yield self.https.post(
            f"{self.url}/sendmessage", json=body, headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": "203.0.113.9"}
        )
        self.assertEqual(response.code, 200, (yield response.text()))
        self.assertEqual(sub.receive(5), {"topic": "по HTTPS"})
        response = yield self.https.post(f"{self.url}/sendmessage", data=b"x" * 5000, headers={"Authorization": f"Bearer {token}"})
        self.assertEqual(response.code, 413)
        self.assertEqual((yield response.json())["error"], "payload_too_large")
        log = self.server.log()
        self.assertIn("send API (HTTPS, ssl_mode=FromFileWithPrivateKey) on 127.0.0.1 port", log)
        self.assertIn(f"serial {SERVER.serial:#x}", log)
        self.assertIn("chain of 2", log)
        # No trusted_proxies: the X-Forwarded-For of a direct sender is ignored.
        self.assertIn("sessions=1 peer=127.0.0.1", log)
        self.assertNotIn("203.0.113.9", log)

    @inlineCallbacks
    def test_refused_connections(self) -> None:
        """A wrong host name, an untrusted root, plain HTTP and TLS 1.1 all fail; TLS 1.2 and 1.3 work."""
        for client, expected in (
            (https_client(self, name="wrong.example"), VerificationError),
            (https_client(self, root_pem=OTHER_CA.root_pem), SSL.Error),
        ):
            with self.assertRaises(ResponseNeverReceived) as ctx:
                yield client.get(f"{self.url}/auth", params={"server_key": self.app["server_key"]})
            self.assertTrue(any(r.check(expected) for r in ctx.exception.reasons), ctx.exception.reasons)
        with self.assertRaises((ResponseNeverReceived, ResponseFailed)):  # no plain HTTP on the HTTPS port
            yield http_client(self).get(f"http://127.0.0.1:{self.server.api_port}/auth", params={"server_key": self.app["server_key"]})
        with self.assertRaises(ssl.SSLError):
            self.peer_certificate(minimum_version=ssl.TLSVersion.TLSv1, maximum_version=ssl.TLSVersion.TLSv1_1)
        cert, version = self.peer_certificate(maximum_version=ssl.TLSVersion.TLSv1_2)
        self.assertEqual((cert.serial_number, version), (SERVER.serial, "TLSv1.2"))
        self.assertEqual(self.peer_certificate()[1], "TLSv1.3")
        token = yield self.token()  # the server is unharmed
        self.assertTrue(token)


class EcKeyTests(HttpsServerBase):
    # An unencrypted key ignores the password (the manual: only used where needed).
    ini = "ssl_mode = FromFileWithPrivateKey\nssl_certificate = ec.pem\nssl_certificate_key = ec.key\nssl_certificate_password = unused\n"

    def files(self, directory: Path) -> None:
        server = CA.server(key=ec_key(), via_intermediate=False)
        (directory / "ec.pem").write_bytes(server.chain_pem())
        (directory / "ec.key").write_bytes(server.key_pem(traditional=True))
        self.serial = server.serial

    @inlineCallbacks
    def test_ec_certificate(self) -> None:
        """An EC certificate with a traditional 'EC PRIVATE KEY' file serves HTTPS."""
        token = yield self.token()
        self.assertTrue(token)
        cert, _ = self.peer_certificate()
        self.assertIsInstance(cert.public_key(), ec.EllipticCurvePublicKey)
        self.assertEqual(cert.serial_number, self.serial)


class PfxTests(HttpsServerBase):
    ini = "ssl_mode = FromFileWithPassword\nssl_certificate = server.pfx\nssl_certificate_password = pfx-secret\n"

    def files(self, directory: Path) -> None:
        (directory / "server.pfx").write_bytes(SERVER.pfx("pfx-secret"))

    @inlineCallbacks
    def test_pfx(self) -> None:
        """A PFX with key, certificate and intermediate serves HTTPS with the whole chain."""
        token = yield self.token()
        self.assertTrue(token)
        self.assertIn("ssl_mode=FromFileWithPassword", self.server.log())
        self.assertEqual(self.peer_certificate()[0].serial_number, SERVER.serial)


class StoreByNameTests(HttpsServerBase):
    ini = "ssl_mode = FromStorage\nssl_certificate = shop\n"

    def files(self, directory: Path) -> None:
        (directory / "certs").mkdir()
        SERVER.write(directory / "certs", "shop")
        CA.server(cn="decoy").write(directory / "certs", "decoy")

    @inlineCallbacks
    def test_store_by_file_name(self) -> None:
        """FromStorage: certs/NAME.pem + certs/NAME.key next to the INI file."""
        token = yield self.token()
        self.assertTrue(token)
        self.assertIn(str(self.server.dir / "certs" / "shop.pem"), self.server.log())
        self.assertEqual(self.peer_certificate()[0].serial_number, SERVER.serial)


class StoreByCommonNameTests(HttpsServerBase):
    ini = "ssl_mode = FromStorage\nssl_certificate = CN=localhost\nssl_certificate_password = s3cret\n"

    def files(self, directory: Path) -> None:
        store = directory / "certs"
        store.mkdir()
        (store / "2026-renewed.pfx").write_bytes(SERVER.pfx("s3cret"))
        old = CA.server(not_before=NOW - 100 * DAY, not_after=NOW - 10 * DAY)
        (store / "2025-old.pfx").write_bytes(old.pfx("s3cret"))
        (store / "broken.pem").write_bytes(b"not a certificate")

    @inlineCallbacks
    def test_store_by_common_name(self) -> None:
        """FromStorage finds a PFX by its subject CN and prefers the valid one over an expired namesake."""
        token = yield self.token()
        self.assertTrue(token)
        self.assertEqual(self.peer_certificate()[0].serial_number, SERVER.serial)
        self.assertNotIn("expired", self.server.log())


class ExpiredTests(HttpsServerBase):
    ini = "ssl_mode = FromFileWithPrivateKey\nssl_certificate = old.pem\nssl_certificate_key = old.key\n"

    def files(self, directory: Path) -> None:
        CA.server(not_before=NOW - 100 * DAY, not_after=NOW - DAY).write(directory, "old")

    @inlineCallbacks
    def test_expired_certificate_starts_with_warning(self) -> None:
        """An expired certificate starts the server with a warning; verifying clients refuse it."""
        self.assertIn("expired on", self.server.log())
        self.assertIn("HTTPS clients will refuse it", self.server.log())
        with self.assertRaises(ResponseNeverReceived):
            yield self.https.get(f"{self.url}/auth", params={"server_key": self.app["server_key"]})
        with self.assertRaises(ssl.SSLCertVerificationError):
            self.peer_certificate()


def own_ports() -> list[str]:
    """Free loopback ports for every listener of a server started by a refusal test (never the defaults others may use)."""
    return ["--listen", f"127.0.0.1:{free_port()}", "--service", f"127.0.0.1:{free_port()}", "--admin-port", str(free_port())]


def stop_all(procs: dict[int, subprocess.Popen[str]]) -> None:
    """Kill whatever is still running (a server that started where it should have refused)."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


class RefusalTests(TestCase):
    def test_refusals(self) -> None:
        """Every bad TLS setting stops the start (exit code 1, before listening), naming the option and the file."""
        d = Path(tempfile.mkdtemp(prefix="pns4ones-tls-"))
        self.addCleanup(shutil.rmtree, d)
        SERVER.write(d, "good")
        SERVER.write(d, "enc", password="right")
        (d / "other.key").write_bytes(CA.server().key_pem())
        (d / "garbage.pem").write_text("hello\n")
        (d / "garbage.pfx").write_bytes(os.urandom(300))
        (d / "server.pfx").write_bytes(SERVER.pfx("right"))
        (d / "adir").mkdir()
        (d / "certs").mkdir()
        pem, key = ["--ssl_mode", "FromFileWithPrivateKey"], ["--ssl_mode", "FromFileWithPassword"]
        # (args, option, message fragments, real): one case of each kind runs the real twistd;
        # the variants go through Options.parseOptions in-process, which is what twistd calls first.
        cases: list[tuple[list[str], str, list[str], bool]] = [
            (pem, "ssl_certificate", ["is required"], False),
            (pem + ["--ssl_certificate", f"{d}/good.pem"], "ssl_certificate_key", ["is required"], True),
            (
                pem + ["--ssl_certificate", f"{d}/missing.pem", "--ssl_certificate_key", f"{d}/good.key"],
                "ssl_certificate",
                [f"{d}/missing.pem", "does not exist"],
                True,
            ),
            (
                pem + ["--ssl_certificate", f"{d}/adir", "--ssl_certificate_key", f"{d}/good.key"],
                "ssl_certificate",
                [f"{d}/adir", "is a directory"],
                True,
            ),
            (
                pem + ["--ssl_certificate", f"{d}/garbage.pem", "--ssl_certificate_key", f"{d}/good.key"],
                "ssl_certificate",
                [f"{d}/garbage.pem", "not a PEM certificate"],
                True,
            ),
            (
                pem + ["--ssl_certificate", f"{d}/good.key", "--ssl_certificate_key", f"{d}/good.pem"],
                "ssl_certificate",
                [f"{d}/good.key", "holds a private key"],
                False,
            ),
            (
                pem + ["--ssl_certificate", f"{d}/good.pem", "--ssl_certificate_key", f"{d}/garbage.pem"],
                "ssl_certificate_key",
                [f"{d}/garbage.pem", "not a PEM private key"],
                False,
            ),
            (
                pem + ["--ssl_certificate", f"{d}/good.pem", "--ssl_certificate_key", f"{d}/missing.key"],
                "ssl_certificate_key",
                [f"{d}/missing.key", "does not exist"],
                False,
            ),
            (
                pem + ["--ssl_certificate", f"{d}/enc.pem", "--ssl_certificate_key", f"{d}/enc.key"],
                "ssl_certificate_password",
                [f"{d}/enc.key", "is encrypted"],
                False,
            ),
            (
                pem + ["--ssl_certificate", f"{d}/enc.pem", "--ssl_certificate_key", f"{d}/enc.key", "--ssl_certificate_password", "wrong"],
                "ssl_certificate_password",
                [f"{d}/enc.key", "wrong password"],
                True,
            ),
            (
                pem + ["--ssl_certificate", f"{d}/good.pem", "--ssl_certificate_key", f"{d}/other.key"],
                "ssl_certificate_key",
                [f"{d}/other.key", f"{d}/good.pem", "does not match"],
                True,
            ),
            (key, "ssl_certificate", ["is required"], False),
            (
                key + ["--ssl_certificate", f"{d}/server.pfx", "--ssl_certificate_password", "wrong"],
                "ssl_certificate_password",
                [f"{d}/server.pfx", "wrong password"],
                True,
            ),
            (key + ["--ssl_certificate", f"{d}/server.pfx"], "ssl_certificate_password", [f"{d}/server.pfx", "is required"], False),
            (
                key + ["--ssl_certificate", f"{d}/good.pem", "--ssl_certificate_password", "x"],
                "ssl_certificate",
                [f"{d}/good.pem", "not PFX"],
                False,
            ),
            (
                key + ["--ssl_certificate", f"{d}/garbage.pfx", "--ssl_certificate_password", "x"],
                "ssl_certificate",
                [f"{d}/garbage.pfx", "not a PFX"],
                False,
            ),
            (
                key + ["--ssl_certificate", f"{d}/missing.pfx", "--ssl_certificate_password", "x"],
                "ssl_certificate",
                [f"{d}/missing.pfx", "does not exist"],
                False,
            ),
            (["--ssl_mode", "FromFile"], "ssl_mode", ["'FromFile' is not one of"], True),
            (["--ssl_mode", "FromStorage"], "ssl_certificate", ["is required"], False),
            (["--ssl_mode", "FromStorage", "--ssl_certificate", "nope"], "ssl_certificate", [f"{d}/certs", "no certificate 'nope'"], False),
            (["--trusted_proxies", "10.0.0.300/8"], "trusted_proxies", ["not a network"], False),
        ]
        if os.geteuid() != 0:  # root reads everything
            (d / "secret.key").write_bytes(SERVER.key_pem())
            (d / "secret.key").chmod(0)
            cases.append(
                (
                    pem + ["--ssl_certificate", f"{d}/good.pem", "--ssl_certificate_key", f"{d}/secret.key"],
                    "ssl_certificate_key",
                    [f"{d}/secret.key", "permission denied"],
                    True,
                )
            )
        ini = d / "empty.ini"
        ini.write_text("")
        common = ["--config", str(ini), "--data-dir", str(d)]
        procs: dict[int, subprocess.Popen[str]] = {}
        self.addCleanup(stop_all, procs)  # a case that wrongly starts must not outlive the test
        for i, (args, _, _, real) in enumerate(cases):
            if real:  # ports of its own: a case that wrongly starts cannot make another fail to bind (and pass)
                command = [TWISTD, "-n", "--pidfile=", "pns4ones", *common, *own_ports(), *args]
                procs[i] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=d)
        for i, (args, option, fragments, real) in enumerate(cases):
            if real:
                output, _ = procs[i].communicate(timeout=60)
                self.assertEqual(procs[i].returncode, 1, (args, output))
                self.assertNotIn("Traceback", output)
                self.assertNotIn("started", output)
                message = output.strip().splitlines()[-1]
            else:
                with self.assertRaises(usage.UsageError, msg=args) as ctx:
                    Options().parseOptions([*common, *args])
                message = str(ctx.exception)
            self.assertIn(f"option '{option}'", message, (args, message))
            for fragment in fragments:
                self.assertIn(fragment, message, (args, message))
        self.assertGreaterEqual(len(procs), 8)
        self.assertFalse((d / "pns4ones.pid").exists())

    def test_ini_refusal_names_the_file(self) -> None:
        """A refusal for a value from the INI file names the INI line and the certificate file."""
        d = Path(tempfile.mkdtemp(prefix="pns4ones-tls-"))
        self.addCleanup(shutil.rmtree, d)
        ini = d / "pns4ones.ini"
        ini.write_text("ssl_mode = FromFileWithPrivateKey\nssl_certificate = nowhere.pem\nssl_certificate_key = nowhere.key\n")
        result = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "pns4ones", "--config", str(ini), "--data-dir", str(d), *own_ports()],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"option 'ssl_certificate' (from {ini}:2): file {d}/nowhere.pem does not exist", result.stderr + result.stdout)


class ReloadTests(HttpsServerBase):
    ini = "ssl_mode = FromFileWithPrivateKey\nssl_certificate = live/cert.pem\nssl_certificate_key = live/key.pem\n"

    def files(self, directory: Path) -> None:
        (directory / "live").mkdir()
        self.first = CA.server()
        self.install(self.first, directory)

    def install(self, issued: Any, directory: Path | None = None) -> None:
        live = (directory or self.server.dir) / "live"
        (live / "cert.pem").write_bytes(issued.chain_pem())
        (live / "key.pem").write_bytes(issued.key_pem())

    def get(self, conn: http.client.HTTPSConnection) -> int:
        conn.request("GET", f"/auth?server_key={self.app['server_key']}")
        response = conn.getresponse()
        response.read()
        return response.status

    def serial_of(self, conn: http.client.HTTPSConnection) -> int:
        return x509.load_der_x509_certificate(conn.sock.getpeercert(True)).serial_number

    def test_reload(self) -> None:
        """SIGHUP and reload_tls swap the certificate for new connections; old ones keep going; a bad file keeps the old one."""
        context = stdlib_context(self.root)
        old = http.client.HTTPSConnection("localhost", self.server.api_port, context=context, timeout=5)
        self.addCleanup(old.close)
        self.assertEqual(self.get(old), 200)
        old_socket = old.sock
        self.assertEqual(self.serial_of(old), self.first.serial)
        pid_file = self.server.data_dir / "pns4ones.pid"
        self.assertEqual(pid_file.read_text().strip(), str(self.server.proc.pid))

        second = CA.server(key=ec_key())
        self.install(second)
        self.server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: certificate reloaded" in self.server.log(), what="the reload")
        self.assertEqual(self.peer_certificate()[0].serial_number, second.serial)
        self.assertEqual(self.get(old), 200)  # the old connection still works, on the old certificate
        self.assertIs(old.sock, old_socket)
        self.assertEqual(self.serial_of(old), self.first.serial)

        (self.server.dir / "live" / "key.pem").write_bytes(CA.server().key_pem())  # half-renewed: key of another cert
        result = self.admin_reload()
        self.assertEqual(result.returncode, 1, result)
        self.assertIn("certificate reload failed, keeping the current one", result.stdout)
        self.assertIn("does not match", result.stdout)
        self.assertIn("SIGHUP: certificate reload failed, keeping the current one", self.server.log())
        self.assertEqual(self.peer_certificate()[0].serial_number, second.serial)

        third = CA.server()
        self.install(third)
        result = self.admin_reload()
        self.assertEqual(result.returncode, 0, result)
        self.assertIn(f"certificate reloaded: CN=localhost, serial {third.serial:#x}", result.stdout)
        self.assertEqual(self.peer_certificate()[0].serial_number, third.serial)
        self.assertIsNone(self.server.proc.poll())

        self.assertEqual(self.server.stop(), 0)  # a graceful stop on SIGTERM exits 0
        self.assertFalse(pid_file.exists())
        result = self.admin_reload()
        self.assertEqual(result.returncode, 1)
        self.assertIn("no pns4ones server runs with data directory", result.stderr)

    def admin_reload(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ADMIN, "--data-dir", str(self.server.data_dir), "reload_tls"], capture_output=True, text=True, timeout=30)


class PlainReloadTests(TestCase):
    def test_sighup_without_tls(self) -> None:
        """With ssl_mode=None, SIGHUP neither stops the server nor changes anything; it says so."""
        server = ServerProcess()
        self.addCleanup(server.cleanup)
        server.start()
        result = subprocess.run([ADMIN, "--data-dir", str(server.data_dir), "reload_tls"], capture_output=True, text=True, timeout=30)
        self.assertEqual(result.returncode, 0, result)
        self.assertIn("ssl_mode=None: no certificate to reload", result.stdout)
        self.assertIsNone(server.proc.poll())
        self.assertIn("send API (HTTP) on", server.log())


class ProxyTests(TestCase):
    def setUp(self) -> None:
        self.server = ServerProcess(ini="trusted_proxies = 127.0.0.1/32, ::1\n")
        self.addCleanup(self.server.cleanup)
        self.app = self.server.create_app("Shop")
        self.server.start()
        self.http = http_client(self)

    @inlineCallbacks
    def send(self, **headers: str) -> Any:
        response = yield self.http.get(f"{self.server.url}/auth", params={"server_key": self.app["server_key"]})
        token = (yield response.json())["access_token"]
        body = {"Recipient": {"Type": "all", "IbId": "ib1"}, "Message": {}}
        response = yield self.http.post(
            f"{self.server.url}/sendmessage", json=body, headers={"Authorization": f"Bearer {token}", **headers}
        )
        self.assertEqual(response.code, 200)

    @inlineCallbacks
    def test_forwarded_for_from_trusted_proxy(self) -> None:
        """Behind a trusted proxy the log shows the sender from X-Forwarded-For, never a spoofed left entry."""
        yield self.send(**{"X-Forwarded-For": "198.51.100.1, 203.0.113.7", "X-Forwarded-Proto": "https"})
        yield self.send()
        wait_for(lambda: self.server.log().count("send: app=") == 2, what="two send lines")
        log = self.server.log()
        self.assertIn("sessions=0 peer=203.0.113.7", log)
        self.assertIn("sessions=0 peer=127.0.0.1", log)
        self.assertNotIn("198.51.100.1", log)


class ProxyAddressTests(SynchronousTestCase):
    trusted = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))

    def test_walk(self) -> None:
        """X-Forwarded-For is read from the right, skipping trusted hops, only when the peer is trusted."""
        cases = [
            ("192.0.2.1", ["203.0.113.7"], "192.0.2.1"),  # untrusted peer: header ignored
            ("10.1.1.1", ["203.0.113.7"], "203.0.113.7"),
            ("10.1.1.1", ["6.6.6.6, 203.0.113.7, 10.2.2.2"], "203.0.113.7"),
            ("10.1.1.1", ["6.6.6.6", "203.0.113.7"], "203.0.113.7"),  # two header lines
            ("::ffff:10.1.1.1", ["2001:db8::5"], "2001:db8::5"),  # dual-stack peer
            ("::1", ["[2001:db8::5]:4711"], "2001:db8::5"),
            ("10.1.1.1", ["garbage, 10.3.3.3"], "10.3.3.3"),  # malformed: stop at the last good hop
            ("10.1.1.1", [], "10.1.1.1"),
        ]
        for peer, header, expected in cases:
            self.assertEqual(proxies.client_address(peer, header, self.trusted), expected, (peer, header))

    def test_proto(self) -> None:
        """X-Forwarded-Proto counts only from a trusted peer, its nearest value, http or https only."""
        self.assertEqual(proxies.forwarded_proto("10.0.0.1", ["http, https"], self.trusted), "https")
        self.assertIsNone(proxies.forwarded_proto("192.0.2.1", ["https"], self.trusted))
        self.assertIsNone(proxies.forwarded_proto("10.0.0.1", ["gopher"], self.trusted))


class LoadTests(SynchronousTestCase):
    """tls.load on its own: what the end-to-end tests do not reach cheaply."""

    def settings(
        self, directory: Path, mode: str = "FromFileWithPrivateKey", certificate: str = "", key: str = "", password: str = ""
    ) -> tls.Settings:
        return tls.Settings(mode, certificate, key, password, directory / "certs", {})

    def test_chain_order_and_combined_pem(self) -> None:
        """The leaf is the certificate matching the key wherever it is in the file; a store PEM may hold its key."""
        d = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, d)
        (d / "rev.pem").write_bytes(SERVER.chain[0].public_bytes(serialization.Encoding.PEM) + SERVER.pem())
        (d / "k.pem").write_bytes(SERVER.key_pem())
        material = tls.load(self.settings(d, certificate=str(d / "rev.pem"), key=str(d / "k.pem")))
        self.assertEqual(material.serial, SERVER.serial)
        self.assertEqual([c.subject for c in material.chain], [SERVER.chain[0].subject])
        (d / "certs").mkdir()
        (d / "certs" / "web.pem").write_bytes(SERVER.chain_pem() + SERVER.key_pem())
        material = tls.load(self.settings(d, mode="FromStorage", certificate="web"))
        self.assertEqual(material.files, (str(d / "certs" / "web.pem"),))

    def test_not_yet_valid_and_soon_expiring(self) -> None:
        """A not-yet-valid or nearly expired certificate loads with a warning saying so."""
        d = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, d)
        for stem, issued, words in (
            ("future", CA.server(not_before=NOW + DAY, not_after=NOW + 90 * DAY), "is not valid before"),
            ("soon", CA.server(not_after=NOW + 3 * DAY), "renew it soon"),
        ):
            cert, key = issued.write(d, stem)
            material = tls.load(self.settings(d, certificate=str(cert), key=str(key)))
            self.assertEqual(len(material.warnings), 1)
            self.assertIn(words, material.warnings[0])
        cert, key = SERVER.write(d, "fine")
        self.assertEqual(tls.load(self.settings(d, certificate=str(cert), key=str(key)), now=NOW).warnings, ())

    def test_store_rejects_path_names(self) -> None:
        """A store name with a path in it is not looked up as a file outside the store."""
        d = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, d)
        (d / "certs").mkdir()
        SERVER.write(d, "outside")
        with self.assertRaises(ConfigError) as ctx:
            tls.load(self.settings(d, mode="FromStorage", certificate="../outside"))
        self.assertIn("no certificate '../outside'", str(ctx.exception))

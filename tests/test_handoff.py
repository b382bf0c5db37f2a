"""Restarts that 1C clients never notice: live subscriptions handed over to a new process (issue 13), on the real twistd."""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase, TestCase

from pns4ones import handoff
from pns4ones_client.protocol import ClientKey, FrameDecoder, registration_frame
from pns4ones_client.web import WebSubscriber

from .handoff_support import Fleet, Sender, alive, check_exactly_once, server_pid
from .support import ADMIN, ServerProcess, wait_for

ROOT = Path(__file__).resolve().parent.parent


class HandoffServer(ServerProcess):
    """A server whose process may change: stop() ends whichever process serves now."""

    def __init__(self, ini: str = "log_level = Warning\n") -> None:
        super().__init__(ini=ini)

    def command(self) -> list[str]:
        cmd = super().command()
        i = cmd.index("--log_level")
        return cmd[:i] + cmd[i + 2 :]  # the log level comes from the INI file, so a restart can change it

    def pid(self) -> int:
        return server_pid(self.data_dir)

    def restart_handoff(self, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.admin("restart", check=check)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        current = self.pid()
        if self.proc is not None and current and current != self.proc.pid and alive(current):
            os.kill(current, sig)
            wait_for(lambda: not alive(current), timeout, what=f"process {current} to stop")
        return super().stop(sig, timeout)


#: twistd, or, when a restart starts it again (PNS4ONES_HANDOFF set), a new process
#: that says the hello written in the file beside it, then waits to be killed.
IMPOSTOR = """#!{python}
import os, socket, sys, time
path = os.environ.get("PNS4ONES_HANDOFF")
if path:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(path)
        with open(sys.argv[0] + ".hello", "rb") as f:
            s.sendall(f.read())
        time.sleep(20)
    sys.exit(0)
from twisted.scripts.twistd import run
sys.exit(run())
"""


class ImpostorServer(HandoffServer):
    """A server whose restart starts a new process that says a malformed hello (:attr:`hello`)."""

    def __init__(self) -> None:
        super().__init__("log_level = Warning\n")
        self.script = self.dir / "twistd-impostor"
        self.script.write_text(IMPOSTOR.format(python=sys.executable))
        self.script.chmod(0o755)
        self.hello = Path(f"{self.script}.hello")

    def command(self) -> list[str]:
        return [str(self.script), *super().command()[1:]]


class HandoffTests(TestCase):
    def start(self, ini: str = "log_level = Warning\n", env: dict[str, str] | None = None) -> HandoffServer:
        server = HandoffServer(ini)
        self.addCleanup(server.cleanup)
        self.app = server.create_app("handoff")
        saved = dict(os.environ)
        os.environ.update(env or {})
        try:
            server.start()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return server

    def fleet(self, server: HandoffServer, count: int) -> Fleet:
        fleet = Fleet(server.service_port, self.app, count)
        self.addCleanup(fleet.close)
        # Every subscriber registered: a probe message reaches all of them.
        probe = Sender(server.api_port, self.app)
        self.addCleanup(probe.stop)
        wait_for(lambda: probe.send_one() and all(fleet.received), 10, interval=0.1, what="every subscriber to register")
        return fleet

    def sending(self, server: HandoffServer) -> Sender:
        sender = Sender(server.api_port, self.app, interval=0.002)
        sender.seq = 1_000_000  # after the probes
        sender.start()
        self.addCleanup(sender.stop)
        return sender

    def assert_served_by(self, server: HandoffServer, fleet: Fleet, pid: int) -> None:
        """Messages sent now reach every subscriber, from process ``pid``."""
        self.assertEqual(server.pid(), pid)
        probe = Sender(server.api_port, self.app)
        self.addCleanup(probe.stop)
        probe.seq = 2_000_000 + 1000 * len(fleet.received[0])
        self.assertTrue(probe.send_one())
        wait_for(lambda: all(r and r[-1][0] == probe.seq - 1 for r in fleet.received), 10, what="the probe at every subscriber")

    def test_restart_hands_over_200_subscriptions_while_sending(self) -> None:
        """pns4ones-admin restart under a continuous sender: new PID, the old process exits 0, every send accepted, all 200 sockets get every message once, in order, frames intact."""
        server = self.start()
        old = server.pid()
        fleet = self.fleet(server, 200)
        sender = self.sending(server)
        wait_for(lambda: len(sender.accepted) > 20, 10, what="sends before the restart")
        result = server.restart_handoff()
        self.assertIn("200 subscriptions handed over", result.stdout)
        new = server.pid()
        self.assertNotEqual(new, old)
        self.assertEqual(server.proc.wait(10), 0)  # the old process has exited, cleanly
        self.assertTrue(alive(new))
        before = len(sender.accepted)
        wait_for(lambda: len(sender.accepted) > before + 20, 10, what="sends after the restart")
        sender.stop()
        wait_for(lambda: not check_exactly_once(fleet, sender), 10, interval=0.2, what="every accepted message at every subscriber")
        self.assertEqual(check_exactly_once(fleet, sender), [])
        self.assertEqual(fleet.closed, set())
        self.assertEqual(sender.failed, [])  # a keep-alive sender was told Connection: close, never cut off
        self.assertIn(f"took over 200 subscriptions from process {old}", server.log())
        self.assert_served_by(server, fleet, new)

    def test_three_restarts_in_a_row_pick_up_the_configuration(self) -> None:
        """Three restarts in a row keep every subscription and message; a log level changed in the INI file is in effect after the restart."""
        server = self.start()
        fleet = self.fleet(server, 20)
        sender = self.sending(server)
        self.assertNotIn("send: app=", server.log())  # Warning: no line per send
        pids = [server.pid()]
        for round in range(3):
            if round == 0:
                server.ini.write_text("log_level = Information\n")
            wait_for(lambda round=round: len(sender.accepted) > 10 * (round + 1), 10, what="sends")
            server.restart_handoff()
            pids.append(server.pid())
            self.assertFalse(alive(pids[-2]))
        self.assertEqual(len(set(pids)), 4)
        before = len(sender.accepted)
        wait_for(lambda: len(sender.accepted) > before + 10, 10, what="sends after the restarts")
        sender.stop()
        wait_for(lambda: not check_exactly_once(fleet, sender), 10, interval=0.2, what="every accepted message at every subscriber")
        self.assertEqual(check_exactly_once(fleet, sender), [])
        self.assertIn("send: app=", server.log())  # Information is now in effect

    def test_new_process_that_fails_to_start_leaves_the_old_one_serving(self) -> None:
        """A configuration the new process rejects: restart exits 1 with the reason, the old process keeps every subscription and the send API."""
        server = self.start()
        old = server.pid()
        fleet = self.fleet(server, 20)
        sender = self.sending(server)
        server.ini.write_text("log_level = Chatty\n")
        result = server.restart_handoff(check=False)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn(f"restart failed, this process (pid {old}) keeps serving every connection", result.stdout)
        self.assertIn("the new process exited with code 1", result.stdout)
        self.assertIn("restart failed; the running server keeps serving", result.stderr)
        self.assertIn("log_level", server.log())  # the new process said why
        self.assertIsNone(server.proc.poll())
        before = len(sender.accepted)
        wait_for(lambda: len(sender.accepted) > before + 10, 10, what="sends after the failed restart")
        sender.stop()
        wait_for(lambda: not check_exactly_once(fleet, sender), 10, interval=0.2, what="every accepted message at every subscriber")
        self.assertEqual(check_exactly_once(fleet, sender), [])
        self.assert_served_by(server, fleet, old)
        # Fixed: the next restart goes through.
        server.ini.write_text("log_level = Warning\n")
        server.restart_handoff()
        self.assertNotEqual(server.pid(), old)
        self.assert_served_by(server, fleet, server.pid())

    def test_crash_during_adoption_leaves_the_old_one_serving(self) -> None:
        """The new process dies holding every handed-over socket: the old process takes them back, with their queued bytes, and keeps serving; nothing lost or doubled."""
        server = self.start(env={"PNS4ONES_TEST_HANDOFF_CRASH": "1"})
        old = server.pid()
        fleet = self.fleet(server, 50)
        sender = self.sending(server)
        wait_for(lambda: len(sender.accepted) > 10, 10, what="sends before the restart")
        result = server.restart_handoff(check=False)
        self.assertEqual(result.returncode, 1)
        self.assertIn("the new process exited with code 3", result.stdout)
        self.assertIn("keeps serving every connection", server.log())
        before = len(sender.accepted)
        wait_for(lambda: len(sender.accepted) > before + 10, 10, what="sends after the failed restart")
        sender.stop()
        wait_for(lambda: not check_exactly_once(fleet, sender), 10, interval=0.2, what="every accepted message at every subscriber")
        self.assertEqual(check_exactly_once(fleet, sender), [])
        self.assert_served_by(server, fleet, old)

    def test_failure_after_commit_closes_the_handed_over_connections(self) -> None:
        """The new process takes the connections over and writes to them, then never says serving: restart exits 1 saying the handed-over subscriptions were closed; each of them ends without a repeated or cut frame; the old process (same pid) serves new subscribers."""
        stall = {"PNS4ONES_TEST_HANDOFF_STALL": "1", "PNS4ONES_TEST_HANDOFF_STEP_TIMEOUT": "3"}
        server = self.start("log_level = Warning\nsend_buffer_limit = 16M\n", env=stall)
        old = server.pid()
        fleet = self.fleet(server, 20)
        # Three subscribers that stop reading: megabytes queued for them move as pending bytes, which the new process writes.
        stalled = Fleet(server.service_port, self.app, 3, ib="slow", rcvbuf=4096)
        self.addCleanup(stalled.close)
        big = Sender(server.api_port, self.app, ib="slow", padding=400_000)
        self.addCleanup(big.stop)
        wait_for(lambda: big.send_one() and all(stalled.received), 10, interval=0.1, what="the stalled subscribers to register")
        stalled.stall()
        for _ in range(15):
            self.assertTrue(big.send_one(), big.failed)
        sender = self.sending(server)  # and new frames, written by the new process while it holds the connections
        wait_for(lambda: len(sender.accepted) > 10, 10, what="sends before the restart")
        restart = subprocess.Popen(
            [ADMIN, "--data-dir", str(server.data_dir), "restart"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.addCleanup(lambda: restart.poll() is None and restart.kill())
        wait_for(lambda: "took over 23 subscriptions" in server.log(), 20, what="the new process to take the connections over")
        stalled.read_again()  # the new process writes them their pending bytes
        stdout, stderr = restart.communicate(timeout=60)
        self.assertEqual(restart.returncode, 1, stdout + stderr)
        self.assertEqual(server.pid(), old)
        self.assertIsNone(server.proc.poll())
        sender.stop()

        def ended() -> bool:
            return len(fleet.closed) == 20 and len(stalled.closed) == 3

        try:
            wait_for(ended, 10, what="every handed-over connection to end")
        except AssertionError:
            pass  # (the frames are checked first: they say more)
        problems = fleet.errors + stalled.errors
        for name, subscribers in (("fleet", fleet), ("stalled", stalled)):
            for i, got in enumerate(subscribers.received):
                seqs = [seq for seq, _ in got]
                if any(b <= a for a, b in itertools.pairwise(seqs)):
                    problems.append(f"{name} subscriber {i}: a repeated frame: {seqs[-30:]}")
        self.assertEqual(problems[:10], [], f"{len(problems)} problems")
        self.assertTrue(ended(), f"connections still open: {set(range(20)) - fleet.closed} {set(range(3)) - stalled.closed}")
        # A subscriber that connects now is served by the old process.
        late = Fleet(server.service_port, self.app, 1, first=100)
        self.addCleanup(late.close)
        probe = Sender(server.api_port, self.app)
        self.addCleanup(probe.stop)
        wait_for(lambda: probe.send_one() and all(late.received), 10, interval=0.1, what="a new subscriber to get a message")
        self.assertEqual(late.closed, set())
        self.assertIn(f"restart failed after the handover, this process (pid {old}) keeps serving", stdout)
        self.assertIn("did not start serving within 3.01 s", stdout)
        self.assertIn("the 23 handed-over subscriptions were closed", stdout)
        self.assertIn("the 23 handed-over subscriptions were closed", server.log())
        self.assertNotIn("Traceback", server.log())

    def test_incompatible_version_is_refused(self) -> None:
        """The new process refuses a handoff from an incompatible handoff protocol with a clear message; the old process keeps serving."""
        server = self.start(env={"PNS4ONES_TEST_HANDOFF_PROTOCOL": "0"})
        old = server.pid()
        fleet = self.fleet(server, 5)
        result = server.restart_handoff(check=False)
        self.assertEqual(result.returncode, 1)
        self.assertIn("cannot take over from pns4ones", result.stdout)
        self.assertIn("handoff protocol 0", result.stdout)
        self.assertIn("systemctl restart pns4ones", result.stdout)
        self.assertIsNone(server.proc.poll())
        self.assert_served_by(server, fleet, old)
        self.assertFalse((server.data_dir / handoff.SOCKET_NAME).exists())
        self.assertIn("cannot take over from the previous process: pns4ones", server.log())  # the new process's own word

    def test_malformed_hello_is_refused_in_one_line_and_the_old_process_serves_on(self) -> None:
        """A new process whose hello is malformed: the old process logs one line saying what was wrong at the hello step, no traceback, and keeps serving."""
        server = ImpostorServer()
        self.addCleanup(server.cleanup)
        self.app = server.create_app("handoff")
        server.start()
        old = server.pid()
        fleet = self.fleet(server, 3)
        cases = [
            (b"J[]", "expected a 'hello' packet, got a JSON array"),
            (b"Jnull", "expected a 'hello' packet, got a JSON null"),
            (b"J{not json", "garbled handoff packet (not JSON)"),
            (b"B\x00\x01", "expected a 'hello' packet, got 2 raw bytes"),
            (b'J{"type": "ready"}', "expected a 'hello' packet, got a 'ready' packet"),
            (b'J{"type": "hello", "handoff": "2"}', "its handoff protocol is '2', not a positive integer"),
        ]
        for i, (hello, problem) in enumerate(cases):
            server.hello.write_bytes(hello)
            result = server.restart_handoff(check=False)
            self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
            said = f"restart failed, this process (pid {old}) keeps serving every connection: malformed handoff packet from the new process at the 'hello' step: {problem}"
            self.assertIn(said, result.stdout)
            failures = [line for line in server.log().splitlines() if "restart failed" in line]
            self.assertEqual(len(failures), i + 1, hello)
            self.assertTrue(failures[-1].endswith(said), failures[-1])
            self.assertIsNone(server.proc.poll())
            self.assertFalse((server.data_dir / handoff.SOCKET_NAME).exists())
        self.assertNotIn("Traceback", server.log())
        self.assertEqual(fleet.closed, set())
        self.assert_served_by(server, fleet, old)

    def test_subscriptions_of_a_rotated_key_end_at_the_restart(self) -> None:
        """A client key rotated before the old process noticed: the new process ends those subscriptions instead of sending frames they cannot decrypt."""
        server = self.start("log_level = Information\nstore_poll_interval = 60\n")
        fleet = self.fleet(server, 5)
        server.admin("upd_cli_key", self.app["id"])  # the old process polls the store once a minute
        server.restart_handoff()
        wait_for(lambda: len(fleet.closed) == 5, 10, what="the subscriptions of the rotated key to end")
        self.assertIn("5 handed-over subscriptions ended", server.log())

    def test_https_listener_is_handed_over_and_a_new_certificate_taken(self) -> None:
        """With ssl_mode set, the HTTPS listener moves too; the new process serves the certificate now on disk."""
        import http.client
        import json

        from cryptography import x509

        from .pki import ec_key
        from .test_tls import CA, stdlib_context

        server = HandoffServer(
            "log_level = Warning\nssl_mode = FromFileWithPrivateKey\nssl_certificate = s.pem\nssl_certificate_key = s.key\n"
        )
        self.addCleanup(server.cleanup)
        (server.dir / "root.pem").write_bytes(CA.root_pem)

        def certificate() -> int:
            cert = CA.server(key=ec_key(), via_intermediate=False)
            (server.dir / "s.pem").write_bytes(cert.chain_pem())
            (server.dir / "s.key").write_bytes(cert.key_pem(traditional=True))
            return cert.serial

        first = certificate()
        self.app = server.create_app("tls")
        server.start()
        fleet = Fleet(server.service_port, self.app, 3)
        self.addCleanup(fleet.close)

        def send(seq: int) -> int:
            conn = http.client.HTTPSConnection("localhost", server.api_port, context=stdlib_context(server.dir / "root.pem"), timeout=10)
            self.addCleanup(conn.close)
            conn.request("GET", f"/auth?server_key={self.app['server_key']}")
            token = json.loads(conn.getresponse().read())["access_token"]
            body = json.dumps({"Recipient": {"Type": "all", "IbId": "ib"}, "Message": {"Data": {"seq": str(seq)}}})
            conn.request("POST", "/sendmessage", body, {"Authorization": f"Bearer {token}"})
            self.assertEqual(conn.getresponse().status, 200)
            return x509.load_der_x509_certificate(conn.sock.getpeercert(True)).serial_number

        wait_for(lambda: send(0) == first and all(fleet.received), 10, interval=0.1, what="every subscriber to register")
        second = certificate()
        server.restart_handoff()
        self.assertEqual(send(1), second)
        wait_for(lambda: all(r[-1][0] == 1 for r in fleet.received), 10, what="the message after the restart")
        self.assertEqual(fleet.closed, set())

    def test_connections_mid_registration_finish_registering_on_the_new_process(self) -> None:
        """Three connections holding half a registration frame during the restart: it succeeds, and the rest of their frames registers them on the new process."""
        server = self.start()
        fleet = self.fleet(server, 5)
        key = ClientKey.decode(self.app["client_key"])
        frames = [registration_frame(key, self.app["id"], "ib", f"r{i}") for i in range(3)]
        halves = []
        for frame in frames:
            s = socket.create_connection(("127.0.0.1", server.service_port), timeout=10)
            self.addCleanup(s.close)
            s.sendall(frame[: len(frame) // 2])
            halves.append(s)
        wait_for(lambda: server.admin("status", "--json", check=False).returncode == 0, 10, what="the status command")
        wait_for(lambda: json.loads(server.admin("status", "--json").stdout)["connections"] == 8, 10, what="8 connections")
        old = server.pid()
        result = server.restart_handoff()
        self.assertIn("8 subscriptions handed over (3 still registering", result.stdout)
        self.assertNotEqual(server.pid(), old)
        for s, frame in zip(halves, frames):
            s.sendall(frame[len(frame) // 2 :])
        sender = Sender(server.api_port, self.app)
        self.addCleanup(sender.stop)
        for i, s in enumerate(halves):
            decoder = FrameDecoder(key)

            def delivered(s: socket.socket = s, decoder: FrameDecoder = decoder, user: str = f"r{i}") -> bool:
                """A message to the user reaches its socket (sent until the registration has gone through)."""
                report = sender.send_to_user(user)
                if not report["sessions"]:
                    return False
                s.settimeout(5)
                messages = decoder.feed_messages(s.recv(1 << 16))
                return bool(messages) and messages[0]["data"]["user"] == user

            wait_for(delivered, 10, interval=0.1, what=f"r{i} to register on the new process")
        self.assert_served_by(server, fleet, server.pid())
        self.assertNotIn("Traceback", server.log())

    def test_every_byte_queued_for_stalled_subscribers_is_handed_over(self) -> None:
        """Subscribers that stopped reading, with megabytes queued for them in the old process: once they read again, each accepted message arrives exactly once, in order, frames intact."""
        server = self.start("log_level = Warning\nsend_buffer_limit = 16M\n")
        fleet = Fleet(server.service_port, self.app, 3, rcvbuf=4096)
        self.addCleanup(fleet.close)
        probe = Sender(server.api_port, self.app)
        self.addCleanup(probe.stop)
        wait_for(lambda: probe.send_one() and all(fleet.received), 10, interval=0.1, what="every subscriber to register")
        fleet.stall()
        sender = Sender(server.api_port, self.app, padding=400_000)
        sender.seq = 1_000_000
        self.addCleanup(sender.stop)
        # 6 MB to each: past what the kernel buffers for a loopback connection (its send buffer grows to about 4 MB).
        for _ in range(15):
            self.assertTrue(sender.send_one(), sender.failed)
        result = server.restart_handoff()
        queued = int(re.search(r"(\d+) bytes queued for them", result.stdout).group(1))  # type: ignore[union-attr]
        self.assertGreater(queued, 3 * 1_000_000, "the test needs bytes waiting in the old process: " + result.stdout)
        sender.reconnect()  # its idle keep-alive connection ended with the old process
        for _ in range(3):
            self.assertTrue(sender.send_one(), sender.failed)  # and some sent by the new process, behind them
        fleet.read_again()
        wait_for(lambda: not check_exactly_once(fleet, sender), 30, interval=0.2, what="every accepted message at every subscriber")
        self.assertEqual(check_exactly_once(fleet, sender), [])
        self.assertEqual(fleet.closed, set())

    def test_web_clients_resume_after_a_restart_with_what_they_missed(self) -> None:
        """WebSocket and SSE clients that resume from their last id after a restart get what was sent meanwhile on both processes, once, in order, with no "missed"."""
        server = self.start()
        token = Sender(server.api_port, self.app)
        self.addCleanup(token.stop)

        def send(topic: str) -> None:
            token.send_to_user("w", topic=topic)

        subscribers = {}
        for transport in ("ws", "sse"):
            sub = WebSubscriber(server.url, token.ticket("w"), transport, timeout=5).connect()
            self.addCleanup(sub.close)
            self.assertEqual(sub.receive(5)["event"], "ready")
            subscribers[transport] = sub
        send("before")
        last = {t: sub.receive(5) for t, sub in subscribers.items()}
        self.assertEqual({t: m["topic"] for t, m in last.items()}, {"ws": "before", "sse": "before"})
        for sub in subscribers.values():
            sub.close()
        send("to the old process")
        server.restart_handoff()
        send("to the new process")
        resumed = {}
        for transport in ("ws", "sse"):
            sub = resumed[transport] = WebSubscriber(
                server.url, token.ticket("w"), transport, since=last[transport]["id"], timeout=5
            ).connect()
            self.addCleanup(sub.close)
            events = [sub.receive(5) for _ in range(3)]
            self.assertEqual(
                [e.get("event") or e["topic"] for e in events], ["to the old process", "to the new process", "ready"], transport
            )
        send("live")
        for transport, sub in resumed.items():
            self.assertEqual(sub.receive(5)["topic"], "live", f"{transport}: nothing twice before the live message")

    def test_systemd_reload_runs_the_units_command_and_follows_the_new_main_pid(self) -> None:
        """The unit's ExecReload, run as systemd runs it, hands over; the new process tells the notify socket MAINPID=<its pid> and READY=1 (so Type=notify, NotifyAccess=all)."""
        unit = (ROOT / "scripts/pns4ones.service").read_text().splitlines()
        for line in ("Type=notify", "NotifyAccess=all"):
            self.assertIn(line, unit)
        [reload_line] = [line for line in unit if line.startswith("ExecReload=")]
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(notify.close)
        notify.settimeout(20)
        server = HandoffServer("log_level = Warning\n")
        self.addCleanup(server.cleanup)
        server.ini.write_text(f"log_level = Warning\ndata_dir = {server.data_dir}\n")
        notify.bind(str(server.dir / "notify"))
        self.app = server.create_app("systemd")
        saved = dict(os.environ)
        os.environ["NOTIFY_SOCKET"] = str(server.dir / "notify")
        try:
            server.start()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.assertEqual(notify.recv(256), b"READY=1")
        fleet = self.fleet(server, 5)
        old = server.pid()
        installed = {"/opt/pns4ones/venv/bin/pns4ones-admin": ADMIN, "/etc/pns4ones/pns4ones.ini": str(server.ini)}
        command = [installed.get(arg, arg) for arg in shlex.split(reload_line.removeprefix("ExecReload="))]
        self.assertEqual(command[0], ADMIN, "ExecReload runs the installed pns4ones-admin")
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        new = server.pid()
        self.assertNotEqual(new, old)
        self.assertEqual(notify.recv(256), f"MAINPID={new}\nREADY=1".encode())
        self.assertFalse(alive(old), "the old process exits before the reload command returns")
        self.assert_served_by(server, fleet, new)

    def test_sigterm_after_a_restart_still_ends_subscriptions(self) -> None:
        """A plain SIGTERM to the process that took over ends every subscription with end of stream."""
        server = self.start()
        fleet = self.fleet(server, 10)
        server.restart_handoff()
        new = server.pid()
        os.kill(new, signal.SIGTERM)
        wait_for(lambda: len(fleet.closed) == 10, 15, what="every subscription to end")
        wait_for(lambda: not alive(new), 15, what="the new process to exit")
        self.assertIn("stopping gracefully", server.log())


class PieceTests(SynchronousTestCase):
    def test_child_argv_keeps_the_command_line_without_twistds_pid_file(self) -> None:
        """The new process runs the same command line, with twistd's own --pidfile emptied (the old process still holds it)."""
        import sys

        from .support import TWISTD

        saved = getattr(sys, "orig_argv", None)
        self.addCleanup(setattr, sys, "orig_argv", saved)
        sys.orig_argv = ["python3", "/v/bin/twistd", "-n", "--pidfile", "/run/x.pid", "pns4ones", "--config", "/etc/p.ini"]
        self.assertEqual(handoff.child_argv(), [sys.executable, "/v/bin/twistd", "-n", "--pidfile=", "pns4ones", "--config", "/etc/p.ini"])
        # Started through twistd's #! line: run the script itself, so an upgraded venv brings its own interpreter.
        sys.orig_argv = ["/old/release/bin/python", TWISTD, "--nodaemon", "--pidfile=", "pns4ones"]
        self.assertEqual(handoff.child_argv(), [TWISTD, "--nodaemon", "--pidfile=", "pns4ones"])

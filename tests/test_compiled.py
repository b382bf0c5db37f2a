"""
The compiled send path (``setup.py``, :mod:`pns4ones.compiled`).  The suite runs
against the installed package, so where the send path's modules could be
compiled it tests the compiled copies, as users get them; and the same source,
run as plain Python (what a machine without a C compiler installs), passes the
send path's own tests, its twistd processes included.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import SkipTest

from twisted.internet.interfaces import ILoggingContext, IProtocol, IPushProducer
from twisted.trial.unittest import SynchronousTestCase

from pns4ones import compiled
from pns4ones.http.connection import FrontConnection
from pns4ones.hub import Delivery
from pns4ones.messages import Message, Recipient, SendRequest

from .tools import require

CHECKOUT = Path(__file__).resolve().parent.parent
#: The tests of the compiled modules (and of the send path through twistd), run again on the pure source.
SEND_PATH_TESTS = (
    "tests/test_http_connection.py",
    "tests/test_send_path.py",
    "tests/test_api_handlers.py",
    "tests/test_messages.py",
    "tests/test_wire.py",
    "tests/test_vectors.py",
    "tests/test_recovery.py",
    "tests/test_trace.py",
    "tests/test_hub_contract.py",
    "tests/test_txinternals.py",
    "tests/test_addin_protocol.py",
)


def pure_env() -> dict[str, str]:
    """This environment with the checkout's src/ first on the path: its .py files, never a compiled copy."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": str(CHECKOUT / "src") + (os.pathsep + path if path else "")}


class DeclarationTests(SynchronousTestCase):
    def test_each_pxd_declares_its_classes_slots(self) -> None:
        """Each .pxd declares its classes' C fields: exactly the attributes of their __slots__ (both builds refuse others)."""
        pxds = sorted((CHECKOUT / "src").rglob("*.pxd"))
        self.assertIn(CHECKOUT / "src" / "pns4ones" / "http" / "connection.pxd", pxds)
        for pxd in pxds:
            module = importlib.import_module(".".join(pxd.relative_to(CHECKOUT / "src").with_suffix("").parts))
            for name, body in re.findall(r"^cdef class (\w+):\n((?:(?:    .*)?\n)+)", pxd.read_text(), re.MULTILINE):
                with self.subTest(pxd=pxd.name, cls=name):
                    cls = getattr(module, name)
                    declared = set(re.findall(r"^    cdef public \w+ (\w+)$", body, re.MULTILINE))
                    weak = "    cdef object __weakref__" in body
                    self.assertEqual(declared | ({"__weakref__"} if weak else set()), set(cls.__slots__))
                    self.assertTrue(declared)

    def test_delivery_init_takes_its_fields(self) -> None:
        """Delivery's written-out __init__ (compiled, unlike a generated one) takes every field, with its default, in order."""
        self.assert_init_takes_fields(Delivery)
        d = Delivery(2, 1, message_id=7, reached=("u",))
        self.assertEqual((d.sessions, d.users, d.stored, d.dropped, d.message_id, d.reached), (2, 1, False, 0, 7, ("u",)))
        self.assertEqual(Delivery(2, 1).reached, frozenset())
        self.assertEqual(dataclasses.replace(d, stored=True, dropped=3), Delivery(2, 1, True, 3, 7))
        self.assertEqual(d, Delivery(2, 1, message_id=7, reached=("v", "w")))  # (reached is not compared,
        self.assertEqual(repr(d), "Delivery(sessions=2, users=1, stored=False, dropped=0, message_id=7)")  # nor shown)
        self.assertNotEqual(d, Delivery(2, 1, message_id=8))
        with self.assertRaises(TypeError):
            hash(d)

    def assert_init_takes_fields(self, cls: type) -> None:
        """``cls.__init__`` (written out) takes every field of the dataclass in order, by position and by
        name (tried: an extension type's __init__ has no signature to read)."""
        fields = dataclasses.fields(cls)
        values = [object() for _ in fields]
        for made in (cls(*values), cls(**{f.name: v for f, v in zip(fields, values, strict=True)})):
            self.assertEqual([getattr(made, f.name) for f in fields], values)

    def test_send_values_init_take_their_fields(self) -> None:
        """Message, Recipient and SendRequest: the same written-out __init__ (a send builds all three)."""
        for cls in (Message, Recipient, SendRequest):
            self.assert_init_takes_fields(cls)
        message = Message("t", None, {"k": "v"})
        recipient = Recipient("user", "ib", "u")
        send = SendRequest(recipient, message, 5)
        self.assertEqual((send.recipient, send.message, send.ttl), (Recipient("user", "ib", "u", ""), Message("t", None, {"k": "v"}), 5))
        self.assertEqual((recipient.type, recipient.ib_id, recipient.user_id, recipient.group), ("user", "ib", "u", ""))
        self.assertEqual((Message().topic, Message().notification, Message().data, send.message.data), ("", None, {}, {"k": "v"}))
        self.assertIsNone(SendRequest(recipient, message).ttl)
        self.assertIsNot(Message().data, Message().data)
        self.assertEqual(hash(recipient), hash(Recipient("user", "ib", "u")))
        self.assertEqual(dataclasses.replace(recipient, user_id="w"), Recipient("user", "ib", "w"))

    def test_front_connection_is_an_iprotocol_and_a_push_producer(self) -> None:
        """Not a subclass of Protocol: what the reactor and the TLS wrapper ask of it is declared (both builds)."""
        self.assertTrue(IProtocol.implementedBy(FrontConnection))
        self.assertTrue(IPushProducer.implementedBy(FrontConnection))
        self.assertTrue(ILoggingContext.implementedBy(FrontConnection))
        connection = FrontConnection.__new__(FrontConnection)
        with self.assertRaises(AttributeError):  # (slots in the pure build, C fields in the compiled one)
            connection.undeclared = 1  # type: ignore[attr-defined]


class CompiledTests(SynchronousTestCase):
    def test_installed_send_path_is_compiled(self) -> None:
        """scripts/test's install compiled every module of the send path (so the suite tests what users get)."""
        if os.environ.get("PNS4ONES_PURE", "") not in ("", "0"):
            raise SkipTest("PNS4ONES_PURE is set: the send path was installed as pure Python")
        require("gcc", "python3-dev")
        self.assertEqual({name: True for name in compiled.HOT}, compiled.compiled())
        self.assertEqual(compiled.build(), "compiled")
        result = subprocess.run([sys.executable, "-m", "pns4ones.compiled"], capture_output=True, text=True, timeout=60)
        self.assertEqual((result.returncode, result.stdout.splitlines()[-1]), (0, "send path: compiled"))

    def test_pxd_classes_are_extension_types(self) -> None:
        """Each class a .pxd declares is an extension type in the compiled build (its attributes C fields), not a
        Python class that Cython's compiler passed over (a .pxd it did not read, or one out of step with its .py)."""
        if os.environ.get("PNS4ONES_PURE", "") not in ("", "0"):
            raise SkipTest("PNS4ONES_PURE is set: the send path was installed as pure Python")
        heap_type = 1 << 9  # (Py_TPFLAGS_HEAPTYPE: a class made at run time, by a class statement or type())
        for pxd in sorted((CHECKOUT / "src").rglob("*.pxd")):
            module = importlib.import_module(".".join(pxd.relative_to(CHECKOUT / "src").with_suffix("").parts))
            for name in re.findall(r"^cdef class (\w+):", pxd.read_text(), re.MULTILINE):
                with self.subTest(pxd=pxd.name, cls=name):
                    self.assertFalse(getattr(module, name).__flags__ & heap_type)

    def test_typed_arguments_hold_in_the_compiled_build(self) -> None:
        """The C methods of the send path take the values' classes (their .pxd types them), so a wrong one is a
        TypeError when compiled: the typing is in effect (the pure build takes anything, as Python does)."""
        if os.environ.get("PNS4ONES_PURE", "") not in ("", "0"):
            raise SkipTest("PNS4ONES_PURE is set: the send path was installed as pure Python")
        from pns4ones.hub.local import LocalHub
        from pns4ones.hub.outbound import Outbound
        from pns4ones.trace import Trace

        send = SendRequest(Recipient("user", "ib", "u1", ""), Message("t"))
        delivered = Delivery(1, 1, message_id=1, reached=("u1",))
        Trace(10).sent(1.0, "api", "p", "app", send, 0.0, delivered)
        with self.assertRaises(TypeError):
            Trace(10).sent(1.0, "api", "p", "app", send, 0.0, {"sessions": 1})
        hub = LocalHub()
        self.assertEqual(hub.publish("app", send.recipient, Outbound(send.message)).sessions, 0)
        with self.assertRaises(TypeError):
            hub.publish("app", ("user", "ib", "u1"), Outbound(send.message))

    def test_the_source_runs_pure_from_src(self) -> None:
        """With src/ first on the path every module of the send path is the .py file (the premise of the next test)."""
        result = subprocess.run(
            [sys.executable, "-m", "pns4ones.compiled"], capture_output=True, text=True, timeout=60, env=pure_env(), cwd=CHECKOUT
        )
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(result.stdout.splitlines()[-1], "send path: pure")
        self.assertIn("pns4ones.http.connection: pure Python", result.stdout)

    def test_pure_source_passes_the_send_path_tests(self) -> None:
        """The send path's tests, again, on the pure source (in one process: the suite's workers share the cores)."""
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", *SEND_PATH_TESTS],
            capture_output=True,
            text=True,
            timeout=600,
            env=pure_env(),
            cwd=CHECKOUT,
        )
        self.assertEqual(result.returncode, 0, result.stdout[-5000:] + result.stderr[-3000:])
        self.assertRegex(result.stdout.splitlines()[-1], r"^\d+ passed")

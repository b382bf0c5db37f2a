"""The add-in's byte protocol against the project's wire vectors (tests/vectors/wire.json)."""

from __future__ import annotations

import copy
import pickle
import struct
import threading

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pns4ones import crypto, wire
from pns4ones_client.protocol import ClientKey as ClientSideKey
from pns4ones_client.protocol import FrameDecoder as ClientSideDecoder
from pns4ones_client.protocol import registration_frame

from .vectors import WIRE

KEY = wire.ClientKey.decode(WIRE["client_key"]["base64"])

_ID = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40)
#: (app, ib, user, group) as a registration may carry them: app and ib not empty.
REGISTRATIONS = st.tuples(_ID.filter(bool), _ID.filter(bool), _ID, _ID)
#: Valid payloads cut short, or with one byte changed.
SPOILED = st.tuples(REGISTRATIONS, st.integers(0, 400), st.integers(0, 255)).map(
    lambda t: (lambda p: p[: t[1]] if t[1] < len(p) and t[2] % 2 else p[: t[1] % len(p)] + bytes([t[2]]) + p[t[1] % len(p) + 1 :])(
        wire.encode_registration(KEY, *t[0])[2:]
    )
)


def _decoded(raw: bytes) -> str:
    """An id as the server reads it: UTF-8, else the stock add-in's Latin-1."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _fresh_cbc(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    """AES-256-CBC with PKCS#7 padding, as the library does it with a fresh encryptor and padder."""
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(padder.update(plaintext) + padder.finalize()) + encryptor.finalize()


class AesCbcTests(SynchronousTestCase):
    """crypto.AesCbc keeps its contexts and re-chains them to the IV: each message must be what a fresh encryptor writes."""

    @settings(max_examples=200, deadline=None)
    @given(
        st.binary(min_size=32, max_size=32), st.binary(min_size=16, max_size=16), st.lists(st.binary(max_size=300), min_size=1, max_size=12)
    )
    def test_each_message_as_from_a_fresh_encryptor(self, key: bytes, iv: bytes, plaintexts: list[bytes]) -> None:
        aes = crypto.AesCbc(key, iv)
        for plaintext in plaintexts:  # (in a row: each after the chain the one before left)
            ciphertext = aes.encrypt(plaintext)
            self.assertEqual(ciphertext, _fresh_cbc(key, iv, plaintext))
            self.assertEqual(crypto.aes_cbc_decrypt(key, iv, ciphertext), plaintext)

    def test_block_boundaries_and_the_vectors_key(self) -> None:
        aes = KEY.aes
        for n in [*range(0, 66), 1000, 4096, 65536]:
            plaintext = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
            self.assertEqual(aes.encrypt(plaintext), _fresh_cbc(KEY.key, KEY.iv, plaintext), n)

    def test_a_copy_has_its_own_contexts(self) -> None:
        """A copied key (deepcopy, pickle) must not share the contexts: each chain is its owner's."""
        key = wire.ClientKey.generate()
        key.aes.encrypt(b"before the copy")
        for copied in (copy.deepcopy(key), copy.copy(key), pickle.loads(pickle.dumps(key))):
            for plaintext in (b"a", b"bb" * 20, b"c" * 33):
                self.assertEqual(copied.aes.encrypt(plaintext), _fresh_cbc(key.key, key.iv, plaintext))
                self.assertEqual(key.aes.encrypt(plaintext), _fresh_cbc(key.key, key.iv, plaintext))

    def test_threads_each_get_their_own_chain(self) -> None:
        aes = crypto.AesCbc(bytes(range(32)), bytes(range(16)))
        wrong: list[int] = []
        start = threading.Barrier(4)

        def work(seed: int) -> None:
            start.wait()
            for i in range(400):
                plaintext = b"%d-%d" % (seed, i) * (i % 7 + 1)
                if aes.encrypt(plaintext) != _fresh_cbc(bytes(range(32)), bytes(range(16)), plaintext):
                    wrong.append(i)

        threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        self.assertEqual(wrong, [])


class ClientKeyTests(SynchronousTestCase):
    def test_decode_vector(self) -> None:
        """The vector's client key decodes to its AES key and IV."""
        self.assertEqual(KEY.key.hex(), WIRE["client_key"]["aes_key_hex"])
        self.assertEqual(KEY.iv.hex(), WIRE["client_key"]["aes_iv_hex"])

    def test_encode_vector(self) -> None:
        """Encoding the key and IV gives the vector's base64 text back."""
        self.assertEqual(KEY.encode(), WIRE["client_key"]["base64"])

    def test_generate_round_trip(self) -> None:
        """A generated key survives encode/decode and has the documented header."""
        key = wire.ClientKey.generate()
        self.assertEqual(wire.ClientKey.decode(key.encode()), key)
        self.assertEqual(struct.unpack_from("<ii", __import__("base64").b64decode(key.encode())), (32, 16))

    def test_bad_keys(self) -> None:
        """Non-base64, wrong length and wrong header are WireErrors."""
        for text in ("not base64!", "AAAA", __import__("base64").b64encode(struct.pack("<ii", 16, 16) + bytes(48)).decode()):
            with self.assertRaises(wire.WireError):
                wire.ClientKey.decode(text)


class RegistrationTests(SynchronousTestCase):
    def test_vectors_parse_and_verify(self) -> None:
        """Each vector frame parses to its fields and verifies with the vector key."""
        for vector in WIRE["registration_frames"]:
            frame = bytes.fromhex(vector["frame_hex"])
            (n,) = struct.unpack_from("<H", frame)
            self.assertEqual(n, len(frame) - 2)
            reg = wire.parse_registration(frame[2:])
            self.assertEqual(
                (reg.app_id, reg.ib_id, reg.user_id, reg.group), (vector["app_id"], vector["ib_id"], vector["user_id"], vector["group"])
            )
            self.assertTrue(reg.verify(KEY))
            self.assertFalse(reg.verify(wire.ClientKey.generate()))

    def test_encode_vectors(self) -> None:
        """Encoding a registration reproduces the vector bytes, on both sides."""
        for vector in WIRE["registration_frames"]:
            args = (vector["app_id"], vector["ib_id"], vector["user_id"], vector["group"])
            self.assertEqual(wire.encode_registration(KEY, *args).hex(), vector["frame_hex"])
            self.assertEqual(registration_frame(ClientSideKey(KEY.key, KEY.iv), *args).hex(), vector["frame_hex"])

    def test_latin1_ids(self) -> None:
        """Ids that are not UTF-8 (the stock add-in's low bytes) decode as Latin-1."""
        body = b"app\x00ib\x00\xc0\xe1\xe2\x00\x00"
        payload = struct.pack("<H", 32) + crypto.hmac_sha256(KEY.key, body) + body
        reg = wire.parse_registration(payload)
        self.assertEqual(reg.user_id, "\xc0\xe1\xe2")
        self.assertTrue(reg.verify(KEY))

    def test_malformed(self) -> None:
        """Truncated, wrong signature length, missing NULs: WireError with a reason."""
        good = bytes.fromhex(WIRE["registration_frames"][1]["frame_hex"])[2:]
        cases = {
            "truncated": good[:20],
            "signature-length": struct.pack("<H", 31) + good[2:],
            "malformed": good[:-1],
        }
        for reason, payload in cases.items():
            with self.assertRaises(wire.WireError) as ctx:
                wire.parse_registration(payload)
            self.assertEqual(ctx.exception.reason, reason)
        three_fields = struct.pack("<H", 32) + bytes(32) + b"app\x00ib\x00u\x00"
        with self.assertRaises(wire.WireError):
            wire.parse_registration(three_fields)

    @settings(max_examples=500, deadline=None)
    @given(st.one_of(st.binary(max_size=300), REGISTRATIONS.map(lambda r: wire.encode_registration(KEY, *r)[2:]), SPOILED))
    def test_any_payload_parses_to_what_it_holds_or_says_why_not(self, payload: bytes) -> None:
        """Any bytes either parse into exactly the fields, body and signature they hold, or raise WireError with a documented reason."""
        try:
            reg = wire.parse_registration(payload)
        except wire.WireError as e:
            self.assertIn(e.reason, ("truncated", "signature-length", "malformed"))
            self.assertTrue(e.detail)
            return
        self.assertEqual(struct.unpack_from("<H", payload), (32,))
        self.assertEqual((reg.signature, reg.body), (payload[2:34], payload[34:]))
        raw = payload[34:].split(b"\x00")
        self.assertEqual(raw[4:], [b""], "four NUL-terminated fields")
        self.assertEqual([reg.app_id, reg.ib_id, reg.user_id, reg.group], [_decoded(r) for r in raw[:4]])
        self.assertTrue(reg.app_id and reg.ib_id)

    @settings(max_examples=300, deadline=None)
    @given(REGISTRATIONS)
    def test_encoded_registrations_parse_back_and_verify(self, fields: tuple[str, str, str, str]) -> None:
        """Whatever the ids (any text without NUL), an encoded registration has the right length prefix, parses back to them and verifies."""
        frame = wire.encode_registration(KEY, *fields)
        self.assertEqual(struct.unpack_from("<H", frame), (len(frame) - 2,))
        reg = wire.parse_registration(frame[2:])
        self.assertEqual((reg.app_id, reg.ib_id, reg.user_id, reg.group), fields)
        self.assertTrue(reg.verify(KEY))


class FrameTests(SynchronousTestCase):
    def test_message_vectors(self) -> None:
        """Encrypting each vector plaintext gives the vector frame byte for byte."""
        for vector in WIRE["message_frames"]:
            plaintext = vector["plaintext_utf8"].encode("utf-8")
            self.assertEqual(wire.encode_frame(KEY, plaintext).hex(), vector["frame_hex"])

    def test_header_fields(self) -> None:
        """L = 4 + ciphertext length, P = exact plaintext length."""
        frame = wire.encode_frame(KEY, b'{"topic": "x"}')
        length, plain = struct.unpack_from("<ii", frame)
        self.assertEqual(length, len(frame) - 4)
        self.assertEqual(plain, 14)

    def test_refuses_non_object(self) -> None:
        """A plaintext not starting with '{' is never framed."""
        with self.assertRaises(wire.WireError):
            wire.encode_frame(KEY, b" {}")

    def test_decoder_split_everywhere(self) -> None:
        """The decoders reassemble frames split at every byte position."""
        frames = b"".join(bytes.fromhex(v["frame_hex"]) for v in WIRE["message_frames"])
        expected = [v["plaintext_utf8"].encode() for v in WIRE["message_frames"]]
        for cut in range(len(frames) + 1):
            for decoder in (wire.FrameDecoder(KEY), ClientSideDecoder(ClientSideKey(KEY.key, KEY.iv))):
                got = decoder.feed(frames[:cut]) + decoder.feed(frames[cut:])
                self.assertEqual(got, expected)

    def test_decoder_rejects_wrong_key(self) -> None:
        """A frame under another key is an error, as for the add-in."""
        frame = bytes.fromhex(WIRE["message_frames"][1]["frame_hex"])
        with self.assertRaises(wire.WireError):
            wire.FrameDecoder(wire.ClientKey.generate()).feed(frame)

"""
Pure cryptographic helpers: no I/O.

Everything secret comes from :mod:`secrets` (the operating system's CSPRNG);
comparisons of secrets are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from collections.abc import Callable

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_ALPHABET = string.ascii_letters + string.digits

#: Length of server keys, as in the original (64 alphanumerics, ~381 bits).
SERVER_KEY_LENGTH = 64


def random_key(length: int = SERVER_KEY_LENGTH) -> str:
    """A random alphanumeric string from the CSPRNG (server keys)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def random_aes_material() -> tuple[bytes, bytes]:
    """A fresh AES-256 key and CBC IV for a client key."""
    return secrets.token_bytes(32), secrets.token_bytes(16)


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def verify_hmac_sha256(key: bytes, message: bytes, signature: bytes) -> bool:
    """Constant-time check of an HMAC-SHA256 signature."""
    return hmac.compare_digest(hmac_sha256(key, message), signature)


#: PKCS#7 padding by its length: 1 to 16 bytes, each holding the count (RFC 5652, 6.3).
_PADDING = tuple(bytes([n]) * n for n in range(17))


class AesCbc:
    """
    AES-256-CBC with PKCS#7 padding under one key and IV (what the add-in
    decrypts): every message is encrypted from the IV, as by a fresh
    ``Cipher(AES(key), CBC(iv)).encryptor()``, byte for byte.

    A fresh encryptor costs about twice the encryption of a short message
    (cryptography checks its arguments against abstract classes each time), so
    the contexts are kept and re-chained instead.  A CBC encryptor's state is
    the last ciphertext block ``L`` it wrote; fed the block ``D(IV) xor L``
    (``D``: AES decryption under the key), it writes ``IV`` and its state is
    the IV again, as if fresh.  That block comes from a CBC decryptor kept
    alongside, whose state is the last block it read (the IV): fed ``L`` then
    ``IV``, its second output block is ``D(IV) xor L``.  AES, CBC and every
    XOR stay in OpenSSL; this class only chooses which blocks to feed, and
    drops the first block of the output (the IV).  Pairs of contexts are kept
    in a free list (``pop`` and ``append`` are atomic): a thread takes one,
    never shares it.  Kept by the key it belongs to
    (:class:`pns4ones.wire.ClientKey`): one per application key.
    """

    __slots__ = ("_cipher", "_idle", "_iv", "_key")

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._cipher = Cipher(algorithms.AES(key), modes.CBC(iv))
        self._key = key
        self._iv = iv
        #: Idle (encryptor's update, decryptor's update, the encryptor's last ciphertext block).
        self._idle: list[tuple[Callable[[bytes], bytes], Callable[[bytes], bytes], bytes]] = []

    def __reduce__(self) -> tuple[type[AesCbc], tuple[bytes, bytes]]:
        """Copied or pickled: a new one under the same key and IV (contexts are never shared, their chains would break)."""
        return AesCbc, (self._key, self._iv)

    def encrypt(self, plaintext: bytes) -> bytes:
        """
        The ciphertext of ``plaintext``.  The padding is the block's missing
        length, written that many times (the same bytes as
        ``padding.PKCS7(128).padder()``, without its two objects per message).
        """
        try:
            encrypt, decrypt, last = self._idle.pop()
        except IndexError:  # none idle: a new pair, both chained at the IV
            encrypt, decrypt, last = self._cipher.encryptor().update, self._cipher.decryptor().update, self._iv
        # Padded to whole blocks, CBC's update() gives every block: finalize() would add nothing.
        out = encrypt(decrypt(last + self._iv)[16:] + plaintext + _PADDING[16 - len(plaintext) % 16])
        self._idle.append((encrypt, decrypt, out[-16:]))
        return out[16:]


def aes_cbc_decrypt(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    """Inverse of :meth:`AesCbc.encrypt`; raises ``ValueError`` on bad padding."""
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def token_digest(token: str) -> bytes:
    """What the store keeps of an access token: its SHA-256."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def derive_token(server_key: str, token_id: bytes) -> str:
    """
    The access token for ``token_id``, bound to the application's server key.

    The store keeps only the token's digest and its random id; the token itself
    is re-derived when ``/auth`` hands out the current token again.  A token
    derived from an old server key never matches again after a rotation.
    """
    mac = hmac_sha256(server_key.encode("utf-8"), b"pns4ones-token\x00" + token_id)
    return (token_id + mac[:24]).hex()


def new_token_id() -> bytes:
    return secrets.token_bytes(16)


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))

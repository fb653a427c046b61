"""ESP transforms: the table both data paths and the control plane share.

A :class:`Suite` fixes everything the data path needs to know about an SA's
algorithms: key, salt, IV, block and ICV sizes (spec §5.6), and how it maps
onto the OID layer's ``AlgoInfo`` identifiers and strongSwan's proposal
keywords (DESIGN "Pythonic layer").
"""

from __future__ import annotations

import dataclasses
import enum

from ._constants import ConfAlgo, IntegrityAlgo
from ._redact import shown

__all__ = ["Cipher", "Mac", "Suite", "SUITES", "parse_suite", "suite_for_algos", "suite_names"]


class Cipher(enum.IntEnum):
    """Confidentiality transform (values shared with the Cython kernels)."""

    NULL = 0               # RFC 2410
    AES_CBC = 1            # RFC 3602
    TRIPLE_DES_CBC = 2     # RFC 2451
    AES_GCM = 3            # RFC 4106 (AEAD)
    CHACHA20_POLY1305 = 4  # RFC 7634 (AEAD)
    AES_GMAC = 5           # RFC 4543: integrity only, GCM over an empty plaintext


class Mac(enum.IntEnum):
    """Separate integrity transform (values shared with the Cython kernels)."""

    NONE = 0
    HMAC_MD5_96 = 1        # RFC 2403
    HMAC_SHA1_96 = 2       # RFC 2404
    HMAC_SHA256_128 = 3    # RFC 4868
    HMAC_SHA384_192 = 4
    HMAC_SHA512_256 = 5


@dataclasses.dataclass(frozen=True)
class Suite:
    """One ESP transform combination.

    ``enc_key_len`` excludes the AEAD salt; ``key_len`` is what the user
    supplies (encryption key, salt, then integrity key).
    """

    name: str                 # canonical strongSwan keyword, without "-esn"
    cipher: Cipher
    mac: Mac
    conf_algo: ConfAlgo
    integ_algo: IntegrityAlgo
    enc_key_len: int
    salt_len: int
    auth_key_len: int
    iv_len: int
    block_size: int           # ciphertext multiple (1: stream/AEAD)
    icv_len: int

    @property
    def aead(self) -> bool:
        """Whether the cipher authenticates too (AES-GCM, AES-GMAC, ChaCha20-Poly1305): no MAC."""
        return self.cipher in (Cipher.AES_GCM, Cipher.CHACHA20_POLY1305, Cipher.AES_GMAC)

    @property
    def has_integrity(self) -> bool:
        """Whether packets carry an ICV (an AEAD, or a MAC): what anti-replay rests on."""
        return self.aead or self.mac is not Mac.NONE

    @property
    def key_len(self) -> int:
        """Octets of key material: the encryption key, the salt (AEADs), then the integrity key."""
        return self.enc_key_len + self.salt_len + self.auth_key_len

    @property
    def conf_key_len(self) -> int:
        """``AlgoInfo.key_len`` of the confidentiality algorithm (salt included)."""
        return self.enc_key_len + self.salt_len if self.conf_algo else 0

    @property
    def integ_key_len(self) -> int:
        """``AlgoInfo.key_len`` of the integrity algorithm (GMAC: key + salt)."""
        if self.cipher is Cipher.AES_GMAC:
            return self.enc_key_len + self.salt_len
        return self.auth_key_len


_MACS = {
    # keyword: (Mac, IntegrityAlgo, key octets, ICV octets) — RFC 2403/2404/4868
    "md5": (Mac.HMAC_MD5_96, IntegrityAlgo.MD5, 16, 12),
    "sha1": (Mac.HMAC_SHA1_96, IntegrityAlgo.SHA, 20, 12),
    "sha256": (Mac.HMAC_SHA256_128, IntegrityAlgo.SHA_256, 32, 16),
    "sha384": (Mac.HMAC_SHA384_192, IntegrityAlgo.SHA_384, 48, 24),
    "sha512": (Mac.HMAC_SHA512_256, IntegrityAlgo.SHA_512, 64, 32),
}
_CBC = {
    # keyword: (Cipher, ConfAlgo, key octets, IV octets, block octets)
    "aes128": (Cipher.AES_CBC, ConfAlgo.AES_CBC_128, 16, 16, 16),
    "aes192": (Cipher.AES_CBC, ConfAlgo.AES_CBC_192, 24, 16, 16),
    "aes256": (Cipher.AES_CBC, ConfAlgo.AES_CBC_256, 32, 16, 16),
    "3des": (Cipher.TRIPLE_DES_CBC, ConfAlgo.TRIPLE_DES, 24, 8, 8),
    "null": (Cipher.NULL, ConfAlgo.NONE, 0, 0, 1),
}
_GCM_ALGO = {16: ConfAlgo.AES_GCM_128, 24: ConfAlgo.AES_GCM_192, 32: ConfAlgo.AES_GCM_256}
_GMAC_ALGO = {16: IntegrityAlgo.AES_GMAC_128, 24: IntegrityAlgo.AES_GMAC_192, 32: IntegrityAlgo.AES_GMAC_256}


def _build() -> dict[str, Suite]:
    suites: dict[str, Suite] = {}
    for bits in (128, 192, 256):
        klen = bits // 8
        for icv in (8, 12, 16):
            name = f"aes{bits}gcm{icv}"
            suites[name] = Suite(name, Cipher.AES_GCM, Mac.NONE, _GCM_ALGO[klen], IntegrityAlgo.NONE,
                                 klen, 4, 0, 8, 1, icv)
        name = f"aes{bits}gmac"
        suites[name] = Suite(name, Cipher.AES_GMAC, Mac.NONE, ConfAlgo.NONE, _GMAC_ALGO[klen],
                             klen, 4, 0, 8, 1, 16)
    suites["chacha20poly1305"] = Suite("chacha20poly1305", Cipher.CHACHA20_POLY1305, Mac.NONE,
                                       ConfAlgo.CHACHA20_POLY1305, IntegrityAlgo.NONE, 32, 4, 0, 8, 1, 16)
    for enc, (cipher, calgo, klen, ivlen, block) in _CBC.items():
        for mac_name, (mac, ialgo, mlen, icv) in _MACS.items():
            name = f"{enc}-{mac_name}"
            suites[name] = Suite(name, cipher, mac, calgo, ialgo, klen, 0, mlen, ivlen, block, icv)
    return suites


#: Every suite natt implements, by canonical strongSwan keyword.
SUITES: dict[str, Suite] = _build()

# strongSwan spells some transforms several ways (proposal keywords in
# strongSwan's proposal_keywords_static.txt); accept the common aliases.
_ALIASES = {"sha": "sha1", "sha2_256": "sha256", "sha2_384": "sha384", "sha2_512": "sha512",
            "aes": "aes128"}


def suite_names() -> list[str]:
    """Canonical suite keywords, sorted."""
    return sorted(SUITES)


def parse_suite(text: str) -> tuple[Suite, bool]:
    """Parse a strongSwan ESP proposal keyword into ``(suite, esn)``.

    Accepts e.g. ``aes128gcm16``, ``aes256-sha256-esn``, ``3des-md5``,
    ``aes128gcm128`` (ICV in bits), ``aes128gcm`` (= 16-octet ICV).
    Raises ``ValueError`` naming the keyword when it is not a natt suite.
    """
    if not isinstance(text, str):
        raise ValueError(f"suite: expected a string such as 'aes128gcm16', got {type(text).__name__}")
    words = text.strip().lower().split("-")
    esn = False
    if len(words) > 1 and words[-1] in ("esn", "noesn"):
        esn = words.pop() == "esn"
    words = [_ALIASES.get(w, w) for w in words]
    name = "-".join(words)
    if len(words) == 1 and "gcm" in name:
        base, _, icv = name.partition("gcm")
        icv_octets = {"": 16, "8": 8, "12": 12, "16": 16, "64": 8, "96": 12, "128": 16}.get(icv)
        if icv_octets is not None:
            name = f"{base}gcm{icv_octets}"
    suite = SUITES.get(name)
    if suite is None:
        respelled = _respelled(text)
        hint = f" (did you mean {respelled!r}?)" if respelled else ""
        raise ValueError(f"suite: unknown ESP proposal {shown(text)}{hint}; natt knows {', '.join(suite_names())}")
    return suite, esn


def _squashed(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum())


# Keyword by its letters and digits alone, for the hint of parse_suite: OpenSSL, Linux and
# other IKE daemons spell the same transforms with other separators ("aes-128-gcm-16",
# "chacha20-poly1305", "aes128_sha1"). Only a match of every letter and digit is suggested: a
# nearest match could name another ICV length or hash, which would fail every packet.
_BY_SQUASHED = {_squashed(n): n for n in SUITES} | {
    _squashed(n.removesuffix("16")): n for n in SUITES if SUITES[n].cipher is Cipher.AES_GCM and n.endswith("gcm16")}


def _respelled(text: str) -> str | None:
    """The keyword ``text`` spells with other separators (``-esn`` kept), or None."""
    squashed = _squashed(text)
    for suffix in ("noesn", "esn", ""):
        if squashed.endswith(suffix):
            name = _BY_SQUASHED.get(squashed[:len(squashed) - len(suffix)])
            if name is not None:
                return f"{name}-{suffix}" if suffix else name
    return None


def suite_for_algos(conf_algo: int, integ_algo: int) -> Suite | None:
    """The suite for an OID layer (ConfAlgo, IntegrityAlgo) pair, ``None`` if unsupported.

    Confidentiality-only CBC SAs (integrity NONE) are allowed in the OID layer
    (RFC 4303 §3.2 makes it a MAY); they have no strongSwan keyword.
    """
    for s in SUITES.values():
        # A GCM identifier names the key size only; the ICV length comes from icv_len (default 16).
        if s.conf_algo == conf_algo and s.integ_algo == integ_algo and (
                s.cipher is not Cipher.AES_GCM or s.icv_len == 16):
            return s
    if integ_algo == IntegrityAlgo.NONE:
        for enc, (cipher, calgo, klen, ivlen, block) in _CBC.items():
            if calgo == conf_algo and cipher is not Cipher.NULL:
                return Suite(f"{enc}-none", cipher, Mac.NONE, calgo, IntegrityAlgo.NONE,
                             klen, 0, 0, ivlen, block, 0)
    return None

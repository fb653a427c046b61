"""Names and numbers of the public contract (DESIGN.md, "API contract").

Every value here is fixed: tests outside this repository compare against them.
NDIS values are those of ``ntddndis.h`` (spec/udp-esp-offload.md §3); the
``natt.Status`` numbering is natt's own and equally fixed.
"""

from __future__ import annotations

import enum
import operator
from typing import TYPE_CHECKING, Any, Union, overload

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "OID_TCP_TASK_OFFLOAD",
    "OID_TCP_TASK_IPSEC_ADD_UDPESP_SA",
    "OID_TCP_TASK_IPSEC_DELETE_UDPESP_SA",
    "OFFLOAD_INBOUND_SA",
    "OFFLOAD_OUTBOUND_SA",
    "OFFLOAD_MAX_SAS",
    "UdpEncapType",
    "Operation",
    "NdisStatus",
    "ConfAlgo",
    "IntegrityAlgo",
    "Status",
    "ndis_receive_info",
]

OID_TCP_TASK_OFFLOAD = 0xFC010201
OID_TCP_TASK_IPSEC_ADD_UDPESP_SA = 0xFC010205
OID_TCP_TASK_IPSEC_DELETE_UDPESP_SA = 0xFC010206

OFFLOAD_INBOUND_SA = 1
OFFLOAD_OUTBOUND_SA = 2
#: Size of ``SecAssoc[]`` in OFFLOAD_IPSEC_ADD_UDPESP_SA (spec §3.1).
OFFLOAD_MAX_SAS = 3

#: What an outbound tunnel SA does with the DF bit of the outer IPv4 header encap writes
#: (``df_bit``): RFC 4301 §8.1 asks that it be configurable per SA as "set, clear, copy from
#: inner header". "copy" (the default) is what natt always did. Not part of ``__all__``: the
#: values are the strings themselves.
DF_BIT_MODES = ("copy", "set", "clear")

#: Octets encap may add to a packet: outer IPv4 (20) + UDP (8) + non-IKE marker (8)
#: + ESP header (8) + IV (≤16) + padding, pad length and next header (≤17) + ICV (≤32).
#: Here, not in natt._batch (which exports it): natt._fastpath checks its own copy against it
#: at import, and importing natt._batch from there made the two modules import each other.
ENCAP_OVERHEAD = 128


class _Named(enum.IntEnum):
    """An IntEnum that prints as its name: ``str(Status.AUTH_FAILED)`` and ``f"{status}"`` say
    ``AUTH_FAILED`` where Python 3.11's IntEnum says ``7`` (``f"{status:d}"`` and ``int()`` still
    give the number, and comparisons, JSON and numpy see the integer)."""

    def __str__(self) -> str:
        return self.name

    def __format__(self, spec: str) -> str:
        return self.name if not spec else int.__format__(int(self), spec)


class UdpEncapType(_Named):
    """UDP_ENCAP_TYPE of a parser entry (spec §1.1, §1.3).

    ``OTHER`` is RFC 3948 framing (normally port 4500); ``IKE`` is the legacy
    draft framing with an 8-octet zero non-IKE marker before ESP.
    """

    IKE = 0
    OTHER = 1


class Operation(_Named):
    """OFFLOAD_OPERATION_E."""

    AUTHENTICATE = 1
    ENCRYPT = 2


class NdisStatus(_Named):
    """NDIS_STATUS values returned by the control plane."""

    SUCCESS = 0x00000000
    FAILURE = 0xC0000001
    INVALID_PARAMETER = 0xC000000D
    RESOURCES = 0xC000009A
    NOT_SUPPORTED = 0xC00000BB
    INVALID_LENGTH = 0xC0010014
    INVALID_DATA = 0xC0010015
    INVALID_OID = 0xC0010017


class ConfAlgo(_Named):
    """OFFLOAD_CONF_ALGO: NDIS v1 values, NDIS v2 AES values, natt's ChaCha20."""

    NONE = 0
    DES = 1
    RESERVED = 2
    TRIPLE_DES = 3
    AES_GCM_128 = 0x8
    AES_GCM_192 = 0x10
    AES_GCM_256 = 0x20
    AES_CBC_128 = 0x40
    AES_CBC_192 = 0x80
    AES_CBC_256 = 0x100
    CHACHA20_POLY1305 = 0x200


class IntegrityAlgo(_Named):
    """OFFLOAD_INTEGRITY_ALGO: NDIS v1 values, NDIS v2 values, natt's SHA-384/512."""

    NONE = 0
    MD5 = 1
    SHA = 2
    SHA_256 = 0x4
    AES_GMAC_128 = 0x8
    AES_GMAC_192 = 0x10
    AES_GMAC_256 = 0x20
    SHA_384 = 0x400
    SHA_512 = 0x800


class Status(_Named):
    """Per-packet result of ``decap`` / ``encap`` (uint8, fixed numbering).

    ``res.status`` holds the numbers; ``Status(res.status[i])`` names one, and
    ``res.counts()`` tallies a batch. What each means, and what ``res[i]`` then holds
    (docs/semantics.md has the exact rules and the order decap tries them in):

    - ``OK`` (0): decap: ICV verified, decrypted, padding checked; output the inner
      packet. encap: output the ESP-in-UDP packet.
    - ``NOT_ESP`` (1): not IPv4/UDP to a parser entry's port; input unchanged.
    - ``IKE`` (2): an IKE message on an encapsulation port; input unchanged.
    - ``KEEPALIVE`` (3): a NAT keepalive (one 0xFF octet); input unchanged.
    - ``FRAGMENT`` (4): an outer IPv4 fragment, not processed; input unchanged.
    - ``NO_SA`` (5): no inbound SA for this SPI (and destination) on that port; input unchanged.
    - ``MALFORMED`` (6): lengths, header fields or padding inconsistent (encap: the inner
      packet is not a datagram the SA can carry); input unchanged.
    - ``AUTH_FAILED`` (7): ICV or AEAD tag mismatch (wrong key, corrupted); input unchanged.
    - ``REPLAY`` (8): sequence number already seen or left of the window; input unchanged.
    - ``DUMMY`` (9): next header 59, a dummy packet, verified and dropped; output empty.
    - ``PROTOCOL`` (10): next header not allowed for the SA's mode (tunnel: IPv4 or IPv6 only);
      input unchanged.
    - ``SEQ_OVERFLOW`` (11): encap: the SA's sequence number would wrap (rekey); output empty.
    - ``ERROR`` (12): internal failure (the crypto library failed); input unchanged. Also a
      segment that no longer lies inside the batch's buffer (its arrays rewritten after the
      batch was made): output empty, no SA touched.

    Only ``OK`` outputs are cleartext (decap) or safe to send (encap: a failed packet's
    "input unchanged" is the cleartext inner packet).
    """

    OK = 0
    NOT_ESP = 1
    IKE = 2
    KEEPALIVE = 3
    FRAGMENT = 4
    NO_SA = 5
    MALFORMED = 6
    AUTH_FAILED = 7
    REPLAY = 8
    DUMMY = 9
    PROTOCOL = 10
    SEQ_OVERFLOW = 11
    ERROR = 12


# CryptoStatus values of NDIS (spec §4.2); Linux's xfrm bit flags differ.
_CRYPTO_SUCCESS = 0
_CRYPTO_GENERIC_ERROR = 1
_CRYPTO_TRANSPORT_ESP_AUTH_FAILED = 3
_CRYPTO_TUNNEL_ESP_AUTH_FAILED = 5
_CRYPTO_INVALID_PACKET_SYNTAX = 6
_CRYPTO_INVALID_PROTOCOL = 7


@overload
def ndis_receive_info(status: Union[int, np.integer[Any]], tunnel: Union[bool, np.bool_]
                      ) -> tuple[int, int, int]: ...
@overload
def ndis_receive_info(status: np.ndarray, tunnel: Union[bool, np.bool_, np.ndarray]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def ndis_receive_info(status: Any, tunnel: Any) -> Any:
    """Map a decap :class:`Status` onto NDIS per-packet receive info.

    Returns ``(crypto_done, next_crypto_done, crypto_status)`` as the
    ``NDIS_IPSEC_OFFLOAD_V1_NET_BUFFER_LIST_INFO.Receive`` fields (spec §4.2).
    ``tunnel`` says whether the SA that handled the packet is a tunnel SA; it
    only matters for AUTH_FAILED.

    One packet's status (an element of ``res.status`` will do) gives three ints.
    A whole integer array of them (``res.status``) gives three arrays of its shape
    (uint8, uint8, uint32), with ``tunnel`` one bool or a bool array for each packet,
    e.g. ``np.isin(res.sa, tunnel_handles)``.

    Anything but a status (or an integer array of them) is a ``ValueError``, a
    ``tunnel`` that is not True or False (or a bool array) a ``TypeError`` (a string
    such as "no" would read as a tunnel).
    """
    import numpy as np              # here: the rest of this module is plain names and numbers

    from ._redact import shown

    if isinstance(status, np.ndarray):
        return _ndis_receive_info_array(status, tunnel)
    if not isinstance(tunnel, (bool, np.bool_)):
        raise TypeError(f"tunnel: expected True or False, got {shown(tunnel)}")
    s = None
    if not isinstance(status, (bool, np.bool_)):
        try:
            s = Status(operator.index(status))
        except (TypeError, ValueError):
            pass
    if s is None:
        raise ValueError(f"status: expected a natt.Status (0 .. {int(max(Status))}), got {shown(status)}")
    if s is Status.AUTH_FAILED and tunnel:
        return (1, 0, _CRYPTO_TUNNEL_ESP_AUTH_FAILED)
    return _RECEIVE_INFO[s]


# Statuses that mean the NIC checked the ESP payload (CryptoDone = 1, spec §4.2); every other
# one passed the packet up unprocessed, (0, 0, 0). AUTH_FAILED's code is a transport SA's; a
# tunnel SA's is _CRYPTO_TUNNEL_ESP_AUTH_FAILED.
_RECEIVE_INFO = {s: (0, 0, _CRYPTO_SUCCESS) for s in Status} | {
    Status.OK: (1, 0, _CRYPTO_SUCCESS), Status.DUMMY: (1, 0, _CRYPTO_SUCCESS),
    Status.MALFORMED: (1, 0, _CRYPTO_INVALID_PACKET_SYNTAX), Status.PROTOCOL: (1, 0, _CRYPTO_INVALID_PROTOCOL),
    Status.REPLAY: (1, 0, _CRYPTO_GENERIC_ERROR), Status.ERROR: (1, 0, _CRYPTO_GENERIC_ERROR),
    Status.AUTH_FAILED: (1, 0, _CRYPTO_TRANSPORT_ESP_AUTH_FAILED)}


def _ndis_receive_info_array(status: np.ndarray, tunnel: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`ndis_receive_info` over an array of statuses: one table lookup each."""
    import numpy as np

    from ._redact import shown

    if status.dtype.kind not in "iu":
        raise ValueError(f"status: expected an integer array of natt.Status values, got dtype {status.dtype}")
    bad = (status < 0) | (status > int(max(Status)))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"status: element {i} is {int(status.flat[i])}, not a natt.Status "
                         f"(0 .. {int(max(Status))})")
    if isinstance(tunnel, np.ndarray):
        if tunnel.dtype != np.bool_:
            raise TypeError(f"tunnel: expected True or False or a bool array, got dtype {tunnel.dtype}")
        try:
            tunnel = np.broadcast_to(tunnel, status.shape)
        except ValueError:
            raise ValueError(f"tunnel: shape {tunnel.shape} does not fit status's {status.shape}") from None
    elif not isinstance(tunnel, (bool, np.bool_)):
        raise TypeError(f"tunnel: expected True or False or a bool array, got {shown(tunnel)}")
    table = np.array([_RECEIVE_INFO[s] for s in Status], np.uint32)
    crypto = np.where((status == Status.AUTH_FAILED) & tunnel, np.uint32(_CRYPTO_TUNNEL_ESP_AUTH_FAILED),
                      table[status, 2])
    return table[status, 0].astype(np.uint8), table[status, 1].astype(np.uint8), crypto

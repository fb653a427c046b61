"""OID-layer request structures (DESIGN "OID layer"; spec §3).

These mirror ``OFFLOAD_ALGO_INFO``, ``OFFLOAD_SECURITY_ASSOCIATION``,
``OFFLOAD_IPSEC_UDPESP_ENCAPTYPE_ENTRY``, ``OFFLOAD_IPSEC_ADD_UDPESP_SA`` and
``OFFLOAD_IPSEC_DELETE_UDPESP_SA`` field for field (snake_case), plus natt's
extensions. Like the NDIS buffers they model, requests are mutable: a
successful add writes ``offload_handle`` and ``encap_type_entry_offld_handle``
back into the request.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any, Optional, Union

from ._constants import OFFLOAD_INBOUND_SA, ConfAlgo, IntegrityAlgo, NdisStatus, Operation, UdpEncapType

__all__ = [
    "Address",
    "AlgoInfo",
    "OffloadSecurityAssociation",
    "EncapTypeEntry",
    "AddUdpEspSa",
    "DeleteUdpEspSa",
    "OffloadCapabilities",
    "OffloadError",
]

#: An IPv4 address as natt accepts it: host-order int of the dotted quad, text, or IPv4Address; 0 = any.
Address = Union[int, str, ipaddress.IPv4Address]


class OffloadError(Exception):
    """A control-plane request was refused.

    ``status`` is the :class:`NdisStatus` the OID layer would return; the
    message names the field at fault. Never contains key material.
    """

    def __init__(self, status: NdisStatus, message: str) -> None:
        super().__init__(message)
        self.status = NdisStatus(status)

    def __str__(self) -> str:
        return f"{self.args[0]} ({self.status.name})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's default rebuilds from self.args (the message alone); a process pool or
        # a Dask worker must hand the caller the same error, status included.
        return (type(self), (self.status, self.args[0]), self.__dict__)


@dataclasses.dataclass
class AlgoInfo:
    """OFFLOAD_ALGO_INFO: an algorithm identifier and its key length in octets.

    ``identifier`` is a :class:`ConfAlgo` or :class:`IntegrityAlgo` value;
    ``key_len`` includes the 4-octet salt for AEAD algorithms (GCM, GMAC,
    ChaCha20-Poly1305); ``rounds`` is carried for fidelity and ignored.
    """

    identifier: int = 0
    key_len: int = 0
    rounds: int = 0


@dataclasses.dataclass
class OffloadSecurityAssociation:
    """OFFLOAD_SECURITY_ASSOCIATION: one IPsec operation of an SA set."""

    operation: int = Operation.ENCRYPT
    spi: int = 0
    integrity_algo: AlgoInfo = dataclasses.field(default_factory=AlgoInfo)
    conf_algo: AlgoInfo = dataclasses.field(default_factory=AlgoInfo)


@dataclasses.dataclass
class EncapTypeEntry:
    """OFFLOAD_IPSEC_UDPESP_ENCAPTYPE_ENTRY: a parser entry (encapsulation type, UDP port)."""

    udp_encap_type: int = UdpEncapType.OTHER
    dst_encap_port: int = 4500


@dataclasses.dataclass
class AddUdpEspSa:
    """OFFLOAD_IPSEC_ADD_UDPESP_SA plus natt's extensions (checked as docs/semantics.md §6 lists).

    Pass to ``Offload.set_oid(OID_TCP_TASK_IPSEC_ADD_UDPESP_SA, req)``. On
    success ``offload_handle`` and ``encap_type_entry_offld_handle`` are
    written back, as NDIS does: a request used again as a template then
    names that parser entry, which is refused once the entry is deleted
    (``dataclasses.replace(req, offload_handle=0, encap_type_entry_offld_handle=0)``
    asks for a new one). A failed add sets ``offload_handle`` to 0. ``key_mat`` holds,
    per ``sec_assoc`` element, the confidentiality key then the integrity key; it never
    appears in ``repr``.
    """

    src_addr: Address = 0
    src_mask: Address = 0
    dst_addr: Address = 0
    dst_mask: Address = 0
    protocol: int = 0
    src_port: int = 0
    dst_port: int = 0
    src_tunnel_addr: Address = 0
    dst_tunnel_addr: Address = 0
    flags: int = OFFLOAD_INBOUND_SA
    sec_assoc: list[OffloadSecurityAssociation] = dataclasses.field(default_factory=list)
    offload_handle: int = 0
    encap_type_entry: EncapTypeEntry = dataclasses.field(default_factory=EncapTypeEntry)
    encap_type_entry_offld_handle: int = 0
    # bytes, bytearray or memoryview (e.g. a bytearray the caller wipes after the add): the add copies it.
    key_mat: Union[bytes, bytearray, memoryview] = dataclasses.field(default=b"", repr=False)
    # Extensions beyond NDIS v1.
    replay_window: int = 64
    esn: bool = False
    icv_len: Optional[int] = None
    encap_src_port: int = 4500
    encap_dst_port: int = 4500
    nat_oa_src: Address = 0
    nat_oa_dst: Address = 0
    replay_seq: int = 0
    replay_oseq: int = 0
    #: Inbound with a window: the replay bitmap to start from (bit i = number replay_seq - i),
    #: as ``Offload.replay_state`` exports it; None = every number <= replay_seq seen. Kept out
    #: of ``repr``: a 65536-bit int exceeds Python's int-to-decimal limit (repr would raise).
    replay_bitmap: Optional[int] = dataclasses.field(default=None, repr=False)
    #: Inbound ESN SAs: consecutive AUTH_FAILED packets so far, the RFC 4303 Appendix A3 count
    #: ``Offload.sa_stats`` exports as ``replay_fail_run`` (docs/semantics.md §3).
    replay_fail_run: int = 0
    #: Outbound tunnel SAs: the DF bit of the outer IPv4 header, "copy" (from an inner IPv4
    #: header; clear for inner IPv6), "set" or "clear" (RFC 4301 §8.1: configurable per SA).
    #: Inbound and transport SAs take "copy" only (docs/semantics.md §2, step 7).
    df_bit: str = "copy"


@dataclasses.dataclass
class DeleteUdpEspSa:
    """OFFLOAD_IPSEC_DELETE_UDPESP_SA: a non-zero entry handle deletes the parser entry too."""

    offload_handle: int = 0
    encap_type_entry_offld_handle: int = 0


@dataclasses.dataclass(frozen=True)
class OffloadCapabilities:
    """What ``query_oid(OID_TCP_TASK_OFFLOAD)`` reports (cf. NDIS_IPSEC_OFFLOAD_V1, spec §3.7)."""

    backend: str
    conf_algos: tuple[ConfAlgo, ...]
    integrity_algos: tuple[IntegrityAlgo, ...]
    encap_types: tuple[UdpEncapType, ...]
    #: V1 ``Supported.Flags`` UDP-ESP subtype bits natt handles: transport and tunnel,
    #: OTHER (0x10, 0x20) and IKE (0x01, 0x02) framings (spec §1.4).
    udp_esp_flags: int
    transport: bool
    tunnel: bool
    esn: bool
    replay_window_min: int
    replay_window_max: int
    max_sas: int
    max_parser_entries: int
    sa_count: int
    parser_entry_count: int

"""natt: software IPsec task offload for UDP-encapsulated ESP (NAT traversal, RFC 3948).

A NIC-style control plane (``Offload.set_oid`` / ``query_oid`` with the NDIS
OIDs, or ``add_sa`` / ``delete_sa``) in front of batch data paths that
decapsulate and encapsulate ESP-in-UDP packets held in numpy buffers.
See README.md for the API and docs/semantics.md for the exact rules.
"""

from ._version import __version__
from ._constants import (
    OFFLOAD_INBOUND_SA,
    OFFLOAD_MAX_SAS,
    OFFLOAD_OUTBOUND_SA,
    OID_TCP_TASK_IPSEC_ADD_UDPESP_SA,
    OID_TCP_TASK_IPSEC_DELETE_UDPESP_SA,
    OID_TCP_TASK_OFFLOAD,
    ConfAlgo,
    IntegrityAlgo,
    NdisStatus,
    Operation,
    Status,
    UdpEncapType,
    ndis_receive_info,
)
from ._batch import DecapResult, EncapResult, PacketBatch
from ._suites import Suite, parse_suite, suite_names
from ._oid import (
    AddUdpEspSa,
    AlgoInfo,
    DeleteUdpEspSa,
    EncapTypeEntry,
    OffloadCapabilities,
    OffloadError,
    OffloadSecurityAssociation,
)
from ._offload import Offload, SaStats, backends

__all__ = [
    "__version__",
    "OID_TCP_TASK_OFFLOAD", "OID_TCP_TASK_IPSEC_ADD_UDPESP_SA", "OID_TCP_TASK_IPSEC_DELETE_UDPESP_SA",
    "OFFLOAD_INBOUND_SA", "OFFLOAD_OUTBOUND_SA", "OFFLOAD_MAX_SAS",
    "UdpEncapType", "Operation", "NdisStatus", "ConfAlgo", "IntegrityAlgo", "Status", "ndis_receive_info",
    "PacketBatch", "DecapResult", "EncapResult",
    "Suite", "parse_suite", "suite_names",
    "AlgoInfo", "OffloadSecurityAssociation", "EncapTypeEntry", "AddUdpEspSa", "DeleteUdpEspSa",
    "OffloadCapabilities", "OffloadError",
    "Offload", "SaStats", "backends",
]

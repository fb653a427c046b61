"""natt: software IPsec task offload for UDP-encapsulated ESP (NAT traversal, RFC 3948).

A NIC-style control plane (``Offload.set_oid`` / ``query_oid`` with the NDIS
OIDs, or ``add_sa`` / ``delete_sa``) in front of batch data paths that
decapsulate and encapsulate ESP-in-UDP packets held in numpy buffers.
See README.md for the API and docs/semantics.md for the exact rules.
"""

import importlib
from typing import TYPE_CHECKING, Any

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
from ._oid import (
    AddUdpEspSa,
    AlgoInfo,
    DeleteUdpEspSa,
    EncapTypeEntry,
    OffloadCapabilities,
    OffloadError,
    OffloadSecurityAssociation,
)

# The modules below import numpy (and the extension), most of the command's startup. They load
# on the first use of a name of theirs, not with the package: the ``natt`` command's entry point
# (natt/_entry.py) is imported through this package, and it can turn a Ctrl-C that comes during
# startup into a message only if startup's heavy imports happen inside it.
if TYPE_CHECKING:
    from ._batch import DecapResult, EncapResult, PacketBatch
    from ._suites import Suite, parse_suite, suite_names
    from ._offload import Offload, SaStats, backends
else:
    def __getattr__(name: str) -> Any:
        """PEP 562: the first name this module does not have yet imports the deferred modules
        and takes their names of ``__all__``; from then on natt is as an eager import left it,
        its submodules (``natt._offload``) attributes included."""
        g = globals()
        # import_module, not ``from . import``: that asks this module for the submodule first,
        # which (not loaded yet) would come back here.
        for module in map(importlib.import_module, ("natt._batch", "natt._suites", "natt._offload")):
            g.update((n, getattr(module, n)) for n in module.__all__ if n in __all__)
        if name in g:
            return g[name]
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(__all__))

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

"""The control plane: OID layer and Pythonic layer (DESIGN "OID layer", docs/semantics.md §5).

The request checks are table-driven: ``FAULTS`` holds one or more faulty requests per row of the
§5 check table. Each must reach its row's status and leave nothing installed; and for every pair of
faults from different rows, with different statuses and touching different fields, a request carrying
both reports the earlier row (985 pairs covering 130 row pairs).

Installed state is always observed from outside: later adds and deletes, ``query_oid`` capabilities,
and what decap does with the derived framing fixtures of spec test-vectors.md §6 (D1 is the GCM-B
ESP packet to 198.51.100.2:4500, D2 a keepalive, D3 an IKE message).
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import logging
import pickle
import sys
import traceback
import types
from typing import Any, Callable, Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import natt
from natt import traffic
from natt._backend import COUNTER_NAMES, SaConfig
from natt._suites import parse_suite
from _vectors import esp_vector, framing_fixtures, udp_wrap

NS = natt.NdisStatus
Status = natt.Status
ADD = natt.OID_TCP_TASK_IPSEC_ADD_UDPESP_SA
DELETE = natt.OID_TCP_TASK_IPSEC_DELETE_UDPESP_SA

GCM_B = esp_vector("gcm-b")
FIXTURES = {f.name: f.packet for f in framing_fixtures()}
D1, D2, D3 = FIXTURES["D1"], FIXTURES["D2"], FIXTURES["D3"]
D1_DST = "198.51.100.2"     # destination of the framing fixtures


def _sa_element(conf=natt.ConfAlgo.AES_GCM_128, conf_len=20, integ=natt.IntegrityAlgo.NONE, integ_len=0,
                spi=GCM_B.spi, operation=natt.Operation.ENCRYPT) -> natt.OffloadSecurityAssociation:
    return natt.OffloadSecurityAssociation(operation=operation, spi=spi,
                                           integrity_algo=natt.AlgoInfo(integ, integ_len),
                                           conf_algo=natt.AlgoInfo(conf, conf_len))


def base_request(**changes: Any) -> natt.AddUdpEspSa:
    """A valid inbound transport SA for GCM-B (SPI 0xa5f8), under which D1 decapsulates OK."""
    req = natt.AddUdpEspSa(dst_addr=D1_DST, flags=natt.OFFLOAD_INBOUND_SA, sec_assoc=[_sa_element()],
                           key_mat=GCM_B.key, replay_window=64, replay_seq=GCM_B.seq - 1)
    for k, v in changes.items():
        setattr(req, k, v)
    if req.flags == natt.OFFLOAD_OUTBOUND_SA and "replay_seq" not in changes:
        req.replay_seq = 0      # an outbound SA continues from replay_oseq; replay_seq is refused
    return req


def other_request(spi: int = 0x2001, port: int = 4500, encap: natt.UdpEncapType = natt.UdpEncapType.OTHER,
                  flags: int = natt.OFFLOAD_INBOUND_SA, **changes: Any) -> natt.AddUdpEspSa:
    """A valid SA unrelated to D1 (another SPI), on parser entry (encap, port)."""
    return base_request(**{"sec_assoc": [_sa_element(spi=spi)], "flags": flags,
                           "encap_type_entry": natt.EncapTypeEntry(encap, port), **changes})


def add(nic: natt.Offload, req: Any) -> NS:
    status = nic.set_oid(ADD, req)
    assert isinstance(status, NS)
    return status


def install(nic: natt.Offload, req: natt.AddUdpEspSa) -> natt.AddUdpEspSa:
    assert add(nic, req) is NS.SUCCESS
    return req


def counts(nic: natt.Offload) -> tuple[int, int]:
    caps = nic.query_oid(natt.OID_TCP_TASK_OFFLOAD)
    return caps.sa_count, caps.parser_entry_count


def decap_status(nic: natt.Offload, *packets: bytes) -> list[Status]:
    return [Status(s) for s in nic.decap(list(packets)).status]


# --------------------------------------------------------------------------- the §5 check table

@dataclasses.dataclass
class Fault:
    """One way to break a request. ``fields`` names what it touches: faults with disjoint fields
    can be combined. ``setup`` installs state first; ``nic_kwargs`` configure the Offload."""

    id: str
    row: int
    status: NS
    fields: frozenset
    apply: Callable[[natt.AddUdpEspSa, natt.Offload], Any]
    setup: Optional[Callable[[natt.Offload], None]] = None
    nic_kwargs: dict = dataclasses.field(default_factory=dict)


def _set(**changes: Any) -> Callable[..., natt.AddUdpEspSa]:
    def apply(req: natt.AddUdpEspSa, nic: Optional[natt.Offload] = None) -> natt.AddUdpEspSa:
        for k, v in changes.items():
            setattr(req, k, v)
        return req
    return apply


def _sa(**changes: Any) -> Callable[..., natt.AddUdpEspSa]:
    def apply(req: natt.AddUdpEspSa, nic: Optional[natt.Offload] = None) -> natt.AddUdpEspSa:
        for k, v in changes.items():
            setattr(req.sec_assoc[0], k, v)
        return req
    return apply


def _algos(conf, conf_len, integ, integ_len, key_len: int, **more: Any) -> Callable[..., natt.AddUdpEspSa]:
    def apply(req: natt.AddUdpEspSa, nic: Optional[natt.Offload] = None) -> natt.AddUdpEspSa:
        req.sec_assoc[0].conf_algo = natt.AlgoInfo(conf, conf_len)
        req.sec_assoc[0].integrity_algo = natt.AlgoInfo(integ, integ_len)
        req.key_mat = bytes(range(key_len))
        for k, v in more.items():
            setattr(req, k, v)
        return req
    return apply


def _unchanged(req: natt.AddUdpEspSa, nic: natt.Offload) -> natt.AddUdpEspSa:
    return req


def _not_a_request(req: natt.AddUdpEspSa, nic: Optional[natt.Offload] = None) -> Any:
    return natt.DeleteUdpEspSa(offload_handle=1)


def _duck_typed(req: natt.AddUdpEspSa, nic: Optional[natt.Offload] = None) -> Any:
    # Same attributes, wrong type: the OID layer checks the buffer type first (row 1), so even a
    # second fault inside it (flags) is never looked at.
    d = {f.name: getattr(req, f.name) for f in dataclasses.fields(req)}
    d["flags"] = 0
    return types.SimpleNamespace(**d)


def _install_other_on(encap: natt.UdpEncapType, port: int) -> Callable[[natt.Offload], None]:
    def setup(nic: natt.Offload) -> None:
        install(nic, other_request(encap=encap, port=port))
    return setup


def _entry_of_4501(req: natt.AddUdpEspSa, nic: natt.Offload) -> natt.AddUdpEspSa:
    # The entry the setup created for (OTHER, 4501), as its SA's stats report it.
    (h,) = nic.sa_handles()
    req.encap_type_entry_offld_handle = nic.sa_stats(h)["entry_handle"]
    return req


def _setup_entry_4501(nic: natt.Offload) -> None:
    install(nic, other_request(port=4501))


def _install_base(nic: natt.Offload) -> None:
    install(nic, base_request())


def _install_outbound(nic: natt.Offload) -> None:
    install(nic, other_request(flags=natt.OFFLOAD_OUTBOUND_SA))


A = natt.ConfAlgo
def _released(data: bytes) -> memoryview:
    view = memoryview(data)
    view.release()
    return view


I = natt.IntegrityAlgo
SEC = frozenset({"sec_assoc", "operation", "spi", "algos", "key_mat"})   # anything inside sec_assoc

FAULTS = [
    Fault("1-delete-request", 1, NS.INVALID_LENGTH, frozenset({"*"}), _not_a_request),
    Fault("1-duck-typed", 1, NS.INVALID_LENGTH, frozenset({"*"}), _duck_typed),
    Fault("1-none", 1, NS.INVALID_LENGTH, frozenset({"*"}), lambda req, nic: None),
    Fault("2-flags-0", 2, NS.INVALID_PARAMETER, frozenset({"flags"}), _set(flags=0)),
    Fault("2-flags-both", 2, NS.INVALID_PARAMETER, frozenset({"flags"}), _set(flags=3)),
    Fault("2-flags-true", 2, NS.INVALID_PARAMETER, frozenset({"flags"}), _set(flags=True)),
    # An array's == gives an array, whose truth value raises: refused like any non-integer.
    Fault("2-flags-array", 2, NS.INVALID_PARAMETER, frozenset({"flags"}),
          _set(flags=np.array([natt.OFFLOAD_INBOUND_SA, natt.OFFLOAD_OUTBOUND_SA]))),
    Fault("3-empty", 3, NS.INVALID_DATA, SEC, _set(sec_assoc=[])),
    Fault("3-four", 3, NS.INVALID_DATA, SEC, lambda r, nic: _set(sec_assoc=[r.sec_assoc[0]] * 4)(r)),
    Fault("4-two", 4, NS.NOT_SUPPORTED, SEC, lambda r, nic: _set(sec_assoc=[r.sec_assoc[0]] * 2)(r)),
    # OFFLOAD_MAX_SAS (3) elements still pass row 3's count (spec §3.1: SecAssoc[3]); row 4 refuses them.
    Fault("4-three", 4, NS.NOT_SUPPORTED, SEC, lambda r, nic: _set(sec_assoc=[r.sec_assoc[0]] * 3)(r)),
    Fault("4-ah", 4, NS.NOT_SUPPORTED, frozenset({"operation"}), _sa(operation=natt.Operation.AUTHENTICATE)),
    Fault("5-op-7", 5, NS.INVALID_PARAMETER, frozenset({"operation"}), _sa(operation=7)),
    Fault("5-op-0", 5, NS.INVALID_PARAMETER, frozenset({"operation"}), _sa(operation=0)),
    Fault("6-spi-0", 6, NS.INVALID_PARAMETER, frozenset({"spi"}), _sa(spi=0)),
    Fault("6-spi-2**32", 6, NS.INVALID_PARAMETER, frozenset({"spi"}), _sa(spi=2**32)),
    Fault("6-spi-negative", 6, NS.INVALID_PARAMETER, frozenset({"spi"}), _sa(spi=-1)),
    Fault("7-des", 7, NS.NOT_SUPPORTED, frozenset({"algos", "key_mat"}), _algos(A.DES, 8, I.SHA, 20, 28)),
    Fault("7-reserved", 7, NS.NOT_SUPPORTED, frozenset({"algos", "key_mat"}), _algos(A.RESERVED, 8, I.SHA, 20, 28)),
    Fault("7-unknown-conf", 7, NS.NOT_SUPPORTED, frozenset({"algos"}), _sa(conf_algo=natt.AlgoInfo(0x4000, 20))),
    Fault("7-unknown-integ", 7, NS.NOT_SUPPORTED, frozenset({"algos"}), _sa(integrity_algo=natt.AlgoInfo(0x1000, 0))),
    Fault("7-gcm-with-hmac", 7, NS.NOT_SUPPORTED, frozenset({"algos", "key_mat"}),
          _algos(A.AES_GCM_128, 20, I.SHA, 20, 40)),
    Fault("7-cbc-with-gmac", 7, NS.NOT_SUPPORTED, frozenset({"algos", "key_mat"}),
          _algos(A.AES_CBC_128, 16, I.AES_GMAC_128, 20, 36)),
    Fault("8-both-none", 8, NS.INVALID_PARAMETER, frozenset({"algos", "key_mat"}), _algos(A.NONE, 0, I.NONE, 0, 0)),
    Fault("9-gcm-without-salt", 9, NS.INVALID_DATA, frozenset({"algos"}),
          _sa(conf_algo=natt.AlgoInfo(A.AES_GCM_128, 16))),
    Fault("9-aead-with-integrity-key", 9, NS.INVALID_DATA, frozenset({"algos"}),
          _sa(integrity_algo=natt.AlgoInfo(I.NONE, 4))),
    Fault("10-key-mat-short", 10, NS.INVALID_DATA, frozenset({"key_mat"}), _set(key_mat=GCM_B.key[:-1])),
    Fault("10-key-mat-long", 10, NS.INVALID_DATA, frozenset({"key_mat"}), _set(key_mat=GCM_B.key + b"\0")),
    Fault("10-key-mat-str", 10, NS.INVALID_DATA, frozenset({"key_mat"}), _set(key_mat="x" * 20)),
    Fault("10-key-mat-released", 10, NS.INVALID_DATA, frozenset({"key_mat"}), _set(key_mat=_released(GCM_B.key))),
    Fault("11-gcm-icv-10", 11, NS.INVALID_PARAMETER, frozenset({"icv_len"}), _set(icv_len=10)),
    Fault("11-gcm-icv-0", 11, NS.INVALID_PARAMETER, frozenset({"icv_len"}), _set(icv_len=0)),
    Fault("11-sha1-icv-16", 11, NS.INVALID_PARAMETER, frozenset({"algos", "key_mat", "icv_len"}),
          _algos(A.AES_CBC_128, 16, I.SHA, 20, 36, icv_len=16)),
    # A float equal to the one allowed length is still not an integer (a GCM suite would refuse it
    # anyway, having no "aes128gcm12.0"; HMAC suites have one ICV length and must check the type).
    Fault("11-sha1-icv-float", 11, NS.INVALID_PARAMETER, frozenset({"algos", "key_mat", "icv_len"}),
          _algos(A.AES_CBC_128, 16, I.SHA, 20, 36, icv_len=12.0)),
    Fault("12-dst-not-an-address", 12, NS.INVALID_PARAMETER, frozenset({"dst_addr"}), _set(dst_addr="10.0.0.256")),
    Fault("12-dst-ipv6", 12, NS.INVALID_PARAMETER, frozenset({"dst_addr"}), _set(dst_addr="2001:db8::1")),
    Fault("12-dst-2**32", 12, NS.INVALID_PARAMETER, frozenset({"dst_addr"}), _set(dst_addr=2**32)),
    Fault("12-dst-negative", 12, NS.INVALID_PARAMETER, frozenset({"dst_addr"}), _set(dst_addr=-1)),
    Fault("12-src-float", 12, NS.INVALID_PARAMETER, frozenset({"src_addr"}), _set(src_addr=1.5)),
    # A netmask is contiguous ones then zeros; anything else matches no CIDR prefix (§1 step 6's
    # "most specific mask" would be undefined).
    Fault("12-dst-mask-not-contiguous", 12, NS.INVALID_PARAMETER, frozenset({"dst_mask"}),
          _set(dst_mask="255.0.255.0")),
    Fault("12-src-mask-not-contiguous", 12, NS.INVALID_PARAMETER, frozenset({"src_mask"}),
          _set(src_mask="0.255.255.255")),
    Fault("12-one-tunnel-end", 12, NS.INVALID_PARAMETER, frozenset({"tunnel"}), _set(src_tunnel_addr="192.0.2.1")),
    Fault("12-other-tunnel-end", 12, NS.INVALID_PARAMETER, frozenset({"tunnel"}),
          _set(dst_tunnel_addr=ipaddress.IPv4Address("192.0.2.1"))),
    Fault("13-window-16", 13, NS.INVALID_PARAMETER, frozenset({"replay_window"}), _set(replay_window=16)),
    Fault("13-window-65537", 13, NS.INVALID_PARAMETER, frozenset({"replay_window"}), _set(replay_window=65537)),
    Fault("13-esn-without-window", 13, NS.INVALID_PARAMETER, frozenset({"replay_window", "esn"}),
          _set(esn=True, replay_window=0)),
    Fault("13-esn-on-confidentiality-only", 13, NS.INVALID_PARAMETER,
          frozenset({"algos", "key_mat", "esn"}), _algos(A.AES_CBC_128, 16, I.NONE, 0, 16, esn=True)),
    Fault("14-replay-seq-negative", 14, NS.INVALID_PARAMETER, frozenset({"replay_seq"}), _set(replay_seq=-1)),
    Fault("14-replay-seq-2**32", 14, NS.INVALID_PARAMETER, frozenset({"replay_seq", "esn"}),
          _set(replay_seq=2**32, esn=False)),
    Fault("14-replay-oseq-2**32", 14, NS.INVALID_PARAMETER, frozenset({"replay_oseq", "esn"}),
          _set(replay_oseq=2**32, esn=False)),
    Fault("14-esn-replay-seq-2**64", 14, NS.INVALID_PARAMETER, frozenset({"replay_seq", "esn"}),
          _set(replay_seq=2**64, esn=True)),
    # An outbound SA sends from replay_oseq: a replay_seq there was meant as replay_oseq, and
    # sending from 1 again would reuse GCM nonces under the key.
    Fault("14-replay-seq-outbound", 14, NS.INVALID_PARAMETER, frozenset({"replay_seq", "flags"}),
          _set(flags=natt.OFFLOAD_OUTBOUND_SA, replay_seq=5)),
    Fault("15-encap-src-port-0", 15, NS.INVALID_PARAMETER, frozenset({"encap_src_port"}), _set(encap_src_port=0)),
    Fault("15-encap-dst-port-65536", 15, NS.INVALID_PARAMETER, frozenset({"encap_dst_port"}),
          _set(encap_dst_port=65536)),
    Fault("16-nat-oa-on-tunnel", 16, NS.INVALID_PARAMETER, frozenset({"tunnel", "nat_oa"}),
          _set(src_tunnel_addr="192.0.2.1", dst_tunnel_addr=D1_DST, nat_oa_src="10.1.1.1")),
    Fault("16-nat-oa-on-outbound", 16, NS.INVALID_PARAMETER, frozenset({"flags", "nat_oa"}),
          _set(flags=natt.OFFLOAD_OUTBOUND_SA, nat_oa_dst="10.1.1.1")),
    # df_bit (RFC 4301 §8.1): one of three words, and other than "copy" on an outbound tunnel SA only.
    Fault("16-df-bit-unknown", 16, NS.INVALID_PARAMETER, frozenset({"df_bit"}), _set(df_bit="sometimes")),
    Fault("16-df-bit-not-a-string", 16, NS.INVALID_PARAMETER, frozenset({"df_bit"}), _set(df_bit=1)),
    Fault("16-df-bit-upper-case", 16, NS.INVALID_PARAMETER, frozenset({"df_bit"}), _set(df_bit="SET")),
    Fault("16-df-bit-on-inbound-tunnel", 16, NS.INVALID_PARAMETER, frozenset({"tunnel", "df_bit"}),
          _set(src_tunnel_addr="192.0.2.1", dst_tunnel_addr=D1_DST, df_bit="set")),
    Fault("16-df-bit-on-outbound-transport", 16, NS.INVALID_PARAMETER, frozenset({"flags", "df_bit"}),
          _set(flags=natt.OFFLOAD_OUTBOUND_SA, df_bit="clear")),
    Fault("17-encap-type-2", 17, NS.NOT_SUPPORTED, frozenset({"entry"}),
          _set(encap_type_entry=natt.EncapTypeEntry(2, 4500))),
    Fault("18-port-0", 18, NS.INVALID_PARAMETER, frozenset({"entry"}),
          _set(encap_type_entry=natt.EncapTypeEntry(natt.UdpEncapType.OTHER, 0))),
    Fault("18-port-65536", 18, NS.INVALID_PARAMETER, frozenset({"entry"}),
          _set(encap_type_entry=natt.EncapTypeEntry(natt.UdpEncapType.OTHER, 65536))),
    Fault("19-unknown-entry-handle", 19, NS.INVALID_PARAMETER, frozenset({"entry_handle"}),
          _set(encap_type_entry_offld_handle=4242)),
    Fault("19-entry-of-another-port", 19, NS.INVALID_PARAMETER, frozenset({"entry_handle", "state"}),
          _entry_of_4501, setup=_setup_entry_4501),
    Fault("20-port-parsed-as-ike", 20, NS.INVALID_PARAMETER, frozenset({"state"}), _unchanged,
          setup=_install_other_on(natt.UdpEncapType.IKE, 4500)),
    Fault("21-duplicate", 21, NS.INVALID_DATA, frozenset({"state"}), _unchanged, setup=_install_base),
    Fault("22-sa-table-full", 22, NS.RESOURCES, frozenset({"state"}), _unchanged,
          setup=_install_outbound, nic_kwargs={"max_sas": 1}),
    Fault("22-entry-table-full", 22, NS.RESOURCES, frozenset({"state"}), _unchanged,
          setup=_install_other_on(natt.UdpEncapType.OTHER, 4501), nic_kwargs={"max_parser_entries": 1}),
    Fault("23-backend-failure", 23, NS.FAILURE, frozenset({"backend"}), _unchanged),
]


def _break_backend(nic: natt.Offload, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the data path refuse to install (as on out-of-memory): the only way to reach row 23."""
    def refuse(cfg: SaConfig) -> None:
        raise MemoryError("simulated")
    monkeypatch.setattr(nic._backend, "add_sa", refuse)


def _run(backend: str, faults: list[Fault],
         monkeypatch: pytest.MonkeyPatch) -> tuple[natt.Offload, NS, Any, tuple]:
    """Build the Offload and the faulty request, issue it; also return the state seen just before."""
    kwargs: dict = {}
    for f in faults:
        kwargs.update(f.nic_kwargs)
    nic = natt.Offload(backend=backend, **kwargs)
    for f in faults:
        if f.setup:
            f.setup(nic)
    if any("backend" in f.fields for f in faults):
        _break_backend(nic, monkeypatch)
    req: Any = base_request()
    for f in reversed(faults):     # the later row's fault first: the earlier one must still win
        req = f.apply(req, nic)
    before = (nic.sa_handles(), counts(nic))
    return nic, add(nic, req), req, before


def test_every_check_row_is_covered() -> None:
    assert {f.row for f in FAULTS} == set(range(1, 24))


def test_base_request_is_valid(backend: str) -> None:
    with natt.Offload(backend=backend) as nic:
        assert add(nic, base_request()) is NS.SUCCESS
        assert decap_status(nic, D1, D2, D3) == [Status.OK, Status.KEEPALIVE, Status.IKE]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.id)
def test_check_row_reaches_its_status_and_installs_nothing(backend: str, fault: Fault,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    nic, status, req, before = _run(backend, [fault], monkeypatch)
    with nic:
        assert status is fault.status
        if isinstance(req, natt.AddUdpEspSa):
            # Handles are written back on SUCCESS only.
            assert req.offload_handle == 0
        assert (nic.sa_handles(), counts(nic)) == before
        if fault.setup is None:
            # Nothing at all is installed: no parser entry for D1/D2/D3 to match.
            assert counts(nic) == (0, 0)
            assert decap_status(nic, D1, D2, D3) == [Status.NOT_ESP] * 3
            # ... and the fault was the only obstacle: the same SA installs and works.
            monkeypatch.undo()
            install(nic, base_request())
            assert decap_status(nic, D1) == [Status.OK]


def _combinable(a: Fault, b: Fault) -> bool:
    return (a.row < b.row and a.status != b.status and not (a.fields & b.fields)
            and "*" not in a.fields | b.fields)


@pytest.mark.parametrize("first", FAULTS, ids=lambda f: f.id)
def test_the_earliest_failing_check_gives_the_status(backend: str, first: Fault,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    later = [b for b in FAULTS if _combinable(first, b)]
    for second in later:
        nic, status, _, _ = _run(backend, [first, second], monkeypatch)
        with nic:
            assert status is first.status, f"{first.id} + {second.id}: got {status.name}"
        monkeypatch.undo()
    if first.row < 23 and "*" not in first.fields:
        assert later, f"{first.id} is combined with no later fault"


def test_duck_typed_request_is_invalid_length_even_with_other_faults(backend: str) -> None:
    with natt.Offload(backend=backend) as nic:
        assert add(nic, _duck_typed(base_request(), nic)) is NS.INVALID_LENGTH
        assert nic.set_oid(DELETE, base_request()) is NS.INVALID_LENGTH


def test_duplicate_in_a_full_table_is_invalid_data(backend: str) -> None:
    # Row 21 before row 22: a duplicate is reported as such even when no room is left.
    with natt.Offload(backend=backend, max_sas=1) as nic:
        install(nic, base_request())
        assert add(nic, base_request()) is NS.INVALID_DATA


def test_duplicate_is_judged_on_the_masked_destination(backend: str) -> None:
    # Row 21 compares destinations under their mask: 198.51.100.2/24 and 198.51.100.77/24 are the
    # same network, so a second SA with the same SPI on the same entry could never be looked up
    # (semantics §1 step 6 picks the most specific mask, and the masks are equal).
    with natt.Offload(backend=backend) as nic:
        install(nic, base_request(dst_mask="255.255.255.0"))
        assert add(nic, base_request(dst_addr="198.51.100.77", dst_mask="255.255.255.0")) is NS.INVALID_DATA
        assert counts(nic) == (1, 1)
        assert decap_status(nic, D1) == [Status.OK]
    # Written with host bits set, the network still matches every host in it.
    with natt.Offload(backend=backend) as nic:
        install(nic, base_request(dst_addr="198.51.100.77", dst_mask="255.255.255.0"))
        assert decap_status(nic, D1) == [Status.OK]


def test_other_type_port_in_a_full_entry_table_is_invalid_parameter(backend: str) -> None:
    with natt.Offload(backend=backend, max_parser_entries=1) as nic:
        install(nic, other_request(encap=natt.UdpEncapType.IKE, port=4500))
        assert add(nic, base_request()) is NS.INVALID_PARAMETER


# --------------------------------------------------------------------------- atomicity

def test_failed_adds_never_touch_an_existing_entry_refcount(backend: str, monkeypatch) -> None:
    with natt.Offload(backend=backend) as nic:
        first = install(nic, base_request())
        entry = first.encap_type_entry_offld_handle
        # Refused adds that name the entry explicitly or find it by (type, port).
        assert add(nic, base_request(encap_type_entry_offld_handle=entry)) is NS.INVALID_DATA
        assert add(nic, other_request(encap_type_entry_offld_handle=entry, replay_window=7)) is NS.INVALID_PARAMETER
        assert add(nic, other_request(replay_seq=-1)) is NS.INVALID_PARAMETER
        _break_backend(nic, monkeypatch)
        assert add(nic, other_request(encap_type_entry_offld_handle=entry)) is NS.FAILURE
        monkeypatch.undo()
        assert counts(nic) == (1, 1)
        # Had any of them counted itself on the entry, this delete would be refused as "in use".
        assert nic.set_oid(DELETE, natt.DeleteUdpEspSa(first.offload_handle, entry)) is NS.SUCCESS
        assert counts(nic) == (0, 0)
        assert decap_status(nic, D1, D2, D3) == [Status.NOT_ESP] * 3


def test_backend_failure_rolls_back_a_new_entry(backend: str, monkeypatch) -> None:
    with natt.Offload(backend=backend) as nic:
        _break_backend(nic, monkeypatch)
        req = base_request()
        assert add(nic, req) is NS.FAILURE
        assert (req.offload_handle, req.encap_type_entry_offld_handle) == (0, 0)
        assert counts(nic) == (0, 0)
        assert decap_status(nic, D2, D3) == [Status.NOT_ESP] * 2
        monkeypatch.undo()
        install(nic, base_request())
        assert decap_status(nic, D1) == [Status.OK]


def test_failed_add_leaves_no_sa_behind_on_a_live_entry(backend: str) -> None:
    with natt.Offload(backend=backend) as nic:
        install(nic, other_request())               # the (OTHER, 4500) entry exists, SPI 0x2001 only
        for bad in (base_request(replay_window=1), base_request(icv_len=12, key_mat=b"short"),
                    base_request(nat_oa_src="10.0.0.1", src_tunnel_addr="1.2.3.4", dst_tunnel_addr=D1_DST)):
            assert add(nic, bad) is not NS.SUCCESS
            assert decap_status(nic, D1, D3) == [Status.NO_SA, Status.IKE]
        assert counts(nic) == (1, 1)


# --------------------------------------------------------------------------- parser entries and handles

def test_entry_found_or_created_and_shared(backend: str) -> None:
    with natt.Offload(backend=backend) as nic:
        a = install(nic, base_request())
        e = a.encap_type_entry_offld_handle
        assert e != 0 and a.offload_handle != 0 and e != a.offload_handle
        # Handle 0: "find or create" finds the same (OTHER, 4500) entry.
        b = install(nic, other_request(spi=0x2002))
        assert b.encap_type_entry_offld_handle == e
        # A non-zero handle shares the named entry.
        c = install(nic, other_request(spi=0x2003, encap_type_entry_offld_handle=e))
        assert c.encap_type_entry_offld_handle == e
        # Another port, or the legacy framing on another port: a new entry each.
        d = install(nic, other_request(spi=0x2004, port=4501))
        f = install(nic, other_request(spi=0x2005, port=500, encap=natt.UdpEncapType.IKE))
        assert len({e, d.encap_type_entry_offld_handle, f.encap_type_entry_offld_handle}) == 3
        assert counts(nic) == (5, 3)


def test_a_failed_add_leaves_no_handle_in_a_reused_request(backend: str) -> None:
    # OffloadHandle is an output, NULL for a failed SA (spec §3.3, §3.5). A request reused as a
    # template still held the handle of the SA its earlier add installed, so code that read
    # req.offload_handle after a refused add got another SA's handle.
    with natt.Offload(backend=backend, max_sas=2) as nic:
        req = install(nic, base_request())
        first = req.offload_handle
        assert add(nic, req) is NS.INVALID_DATA                  # the same SPI and destination again
        assert req.offload_handle == 0
        req.sec_assoc = [_sa_element(spi=0x2001)]
        assert add(nic, req) is NS.SUCCESS and req.offload_handle not in (0, first)
        req.sec_assoc = [_sa_element(spi=0x2002)]
        assert add(nic, req) is NS.RESOURCES and req.offload_handle == 0
        nic.close()
        req.offload_handle = first
        assert add(nic, req) is NS.FAILURE and req.offload_handle == 0
        # The entry handle is an input too ("find or create" when 0): left as the caller set it.
        assert req.encap_type_entry_offld_handle != 0


def test_outbound_sa_uses_no_entry(backend: str) -> None:
    with natt.Offload(backend=backend, max_parser_entries=1) as nic:
        install(nic, other_request(port=4501))                 # fills the entry table
        # The entry handle and port of an outbound request are ignored (spec §2.2), even bogus ones.
        out = install(nic, other_request(flags=natt.OFFLOAD_OUTBOUND_SA, encap_type_entry_offld_handle=999,
                                         encap_type_entry=natt.EncapTypeEntry(natt.UdpEncapType.OTHER, 0)))
        assert out.offload_handle != 0
        assert out.encap_type_entry_offld_handle == 0
        assert counts(nic) == (2, 1)
        # Deleting it with entry handle 0 is the only sensible delete; the inbound entry is untouched.
        assert nic.set_oid(DELETE, natt.DeleteUdpEspSa(out.offload_handle)) is NS.SUCCESS
        assert counts(nic) == (1, 1)


def test_handles_are_unique_and_never_reused(backend: str) -> None:
    seen: set[int] = set()
    with natt.Offload(backend=backend) as nic:
        for i in range(10):
            req = install(nic, base_request())
            for h in (req.offload_handle, req.encap_type_entry_offld_handle):
                assert h >= 1 and h not in seen
                seen.add(h)
            assert nic.set_oid(DELETE, natt.DeleteUdpEspSa(req.offload_handle,
                                                           req.encap_type_entry_offld_handle)) is NS.SUCCESS
    # One counter shared by SAs and entries, starting at 1 (docs/semantics.md §5).
    assert seen == set(range(1, 21))


def test_delete_with_entry_handle_removes_the_entry(backend: str) -> None:
    with natt.Offload(backend=backend) as nic:
        a = install(nic, base_request())
        e = a.encap_type_entry_offld_handle
        assert nic.set_oid(DELETE, natt.DeleteUdpEspSa(a.offload_handle, e)) is NS.SUCCESS
        assert counts(nic) == (0, 0)
        assert decap_status(nic, D1, D2, D3) == [Status.NOT_ESP] * 3
        # The handle is dead: naming it on add is refused, and nothing gets installed.
        assert add(nic, base_request(encap_type_entry_offld_handle=e)) is NS.INVALID_PARAMETER
        assert counts(nic) == (0, 0)


def test_entry_delete_refused_while_other_sas_use_it(backend: str) -> None:
    with natt.Offload(backend=backend) as nic:
        a = install(nic, base_request())
        b = install(nic, other_request())
        e = a.encap_type_entry_offld_handle
        assert nic.set_oid(DELETE, natt.DeleteUdpEspSa(a.offload_handle, e)) is NS.INVALID_PARAMETER
        # Refused means refused: the SA is still there and still decapsulates.
        assert counts(nic) == (2, 1)
        assert decap_status(nic, D1) == [Status.OK]
        assert nic.set_oid(DELETE, natt.DeleteUdpEspSa(b.offload_handle, 0)) is NS.SUCCESS
        assert nic.set_oid(DELETE, natt.DeleteUdpEspSa(a.offload_handle, e)) is NS.SUCCESS
        assert counts(nic) == (0, 0)


def test_entry_survives_a_delete_with_handle_0(backend: str) -> None:
    with natt.Offload(backend=backend) as nic:
        a = install(nic, base_request())
        e = a.encap_type_entry_offld_handle
        assert nic.set_oid(DELETE, natt.DeleteUdpEspSa(a.offload_handle, 0)) is NS.SUCCESS
        assert counts(nic) == (0, 1)
        # The entry keeps classifying the port: IKE and keepalives still recognised, ESP has no SA.
        res = nic.decap([D1, D2, D3])
        assert [Status(s) for s in res.status] == [Status.NO_SA, Status.KEEPALIVE, Status.IKE]
        assert res[0] == D1 and res.sa[0] == 0
        # The entry can be named again, and finally deleted along with its new SA.
        b = install(nic, base_request(encap_type_entry_offld_handle=e))
        assert b.encap_type_entry_offld_handle == e
        assert decap_status(nic, D1) == [Status.OK]
        assert nic.set_oid(DELETE, natt.DeleteUdpEspSa(b.offload_handle, e)) is NS.SUCCESS
        assert counts(nic) == (0, 0)


class _Raising:
    """A value whose comparisons and integer conversion raise (a broken or hostile object)."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("unreadable")

    __hash__ = object.__hash__

    def __index__(self) -> int:
        raise RuntimeError("unreadable")


class _Unreadable(list):
    """A sec_assoc list that cannot even say how long it is."""

    def __len__(self) -> int:
        raise RuntimeError("no length")


def test_set_oid_answers_a_status_whatever_the_request_holds(backend: str, caplog) -> None:
    with natt.Offload(backend=backend) as nic:
        req = base_request(sec_assoc=_Unreadable([_sa_element()]))
        with caplog.at_level(logging.DEBUG, logger="natt"):
            assert add(nic, req) is NS.INVALID_PARAMETER
        assert "could not be read (RuntimeError)" in caplog.text
        assert counts(nic) == (0, 0) and req.offload_handle == 0


def test_refused_deletes_are_logged_at_debug(backend: str, caplog) -> None:
    with natt.Offload(backend=backend) as nic:
        with caplog.at_level(logging.DEBUG, logger="natt"):
            assert nic.set_oid(DELETE, natt.DeleteUdpEspSa(9999)) is NS.INVALID_PARAMETER
        assert "delete refused: offload_handle: 9999 names no SA (INVALID_PARAMETER)" in caplog.text


def test_delete_request_checks(backend: str) -> None:
    with natt.Offload(backend=backend) as nic:
        a = install(nic, base_request())
        b = install(nic, other_request(port=4501))
        ea, eb = a.encap_type_entry_offld_handle, b.encap_type_entry_offld_handle
        for bad in (natt.DeleteUdpEspSa(0), natt.DeleteUdpEspSa(9999), natt.DeleteUdpEspSa(ea),  # entry, not SA
                    natt.DeleteUdpEspSa(a.offload_handle, 9999),      # unknown entry
                    natt.DeleteUdpEspSa(a.offload_handle, eb),        # not this SA's entry
                    natt.DeleteUdpEspSa(a.offload_handle, a.offload_handle),
                    natt.DeleteUdpEspSa("1"), natt.DeleteUdpEspSa(True)):
            assert nic.set_oid(DELETE, bad) is NS.INVALID_PARAMETER, bad
        assert nic.set_oid(DELETE, base_request()) is NS.INVALID_LENGTH
        assert nic.set_oid(DELETE, None) is NS.INVALID_LENGTH
        # A field that cannot be read is a status, as in an add (never an exception).
        assert nic.set_oid(DELETE, natt.DeleteUdpEspSa(_Raising())) is NS.INVALID_PARAMETER
        assert nic.set_oid(DELETE, natt.DeleteUdpEspSa(a.offload_handle, _Raising())) is NS.INVALID_PARAMETER

        class Broken(natt.DeleteUdpEspSa):
            @property
            def offload_handle(self) -> int:
                raise AttributeError("gone")

            @offload_handle.setter
            def offload_handle(self, value: int) -> None:
                pass
        assert nic.set_oid(DELETE, Broken(a.offload_handle)) is NS.INVALID_PARAMETER
        assert counts(nic) == (2, 2)
        assert nic.set_oid(DELETE, natt.DeleteUdpEspSa(a.offload_handle)) is NS.SUCCESS
        # Deleted once: the handle is gone.
        assert nic.set_oid(DELETE, natt.DeleteUdpEspSa(a.offload_handle)) is NS.INVALID_PARAMETER


# --------------------------------------------------------------------------- table limits

def test_sa_table_full_gives_resources(backend: str) -> None:
    with natt.Offload(backend=backend, max_sas=2) as nic:
        x = install(nic, other_request(spi=0x2001))
        install(nic, other_request(spi=0x2002, flags=natt.OFFLOAD_OUTBOUND_SA))
        req = base_request()
        assert add(nic, req) is NS.RESOURCES
        assert req.offload_handle == 0
        assert decap_status(nic, D1) == [Status.NO_SA]
        assert nic.query_oid(natt.OID_TCP_TASK_OFFLOAD).max_sas == 2
        assert nic.set_oid(DELETE, natt.DeleteUdpEspSa(x.offload_handle)) is NS.SUCCESS
        install(nic, req)
        assert decap_status(nic, D1) == [Status.OK]


def test_entry_table_full_gives_resources(backend: str) -> None:
    with natt.Offload(backend=backend, max_parser_entries=2) as nic:
        install(nic, other_request(port=4501))
        install(nic, other_request(port=4502))
        assert add(nic, base_request()) is NS.RESOURCES              # (OTHER, 4500) would be a third entry
        assert counts(nic) == (2, 2)
        assert decap_status(nic, D1, D2, D3) == [Status.NOT_ESP] * 3
        # An existing entry needs no room.
        install(nic, other_request(spi=0x2002, port=4501))
        assert nic.query_oid(natt.OID_TCP_TASK_OFFLOAD).max_parser_entries == 2


@pytest.mark.parametrize("limit", ["max_sas", "max_parser_entries"])
@pytest.mark.parametrize("value", [0, -1, True, 1.5], ids=["0", "-1", "True", "1.5"])
def test_table_limits_must_be_positive_integers(backend: str, limit: str, value: Any) -> None:
    # A table with room for no SA (or no parser entry) could never install anything: 0 is refused
    # like a negative size, and 1 is the smallest limit there is.
    with pytest.raises(ValueError, match=limit):
        natt.Offload(backend=backend, **{limit: value})
    with natt.Offload(backend=backend, **{limit: 1}) as nic:
        assert getattr(nic.query_oid(natt.OID_TCP_TASK_OFFLOAD), limit) == 1


# --------------------------------------------------------------------------- duplicates and lookup keys

def test_duplicate_spi_is_invalid_data_and_other_keys_are_allowed(backend: str) -> None:
    with natt.Offload(backend=backend) as nic:
        install(nic, base_request())
        assert add(nic, base_request()) is NS.INVALID_DATA
        # The same destination written another way is still the same key.
        assert add(nic, base_request(dst_addr=ipaddress.IPv4Address(D1_DST))) is NS.INVALID_DATA
        assert add(nic, base_request(dst_addr=int(ipaddress.IPv4Address(D1_DST)))) is NS.INVALID_DATA
        # Same SPI, other destination key / other parser entry / outbound: all allowed.
        install(nic, base_request(dst_addr="198.51.100.3"))
        install(nic, base_request(dst_addr=0))
        install(nic, base_request(dst_addr="198.51.100.0", dst_mask="255.255.255.0"))
        install(nic, base_request(encap_type_entry=natt.EncapTypeEntry(natt.UdpEncapType.OTHER, 4501)))
        install(nic, base_request(src_tunnel_addr="192.0.2.1", dst_tunnel_addr="192.0.2.2"))
        install(nic, base_request(flags=natt.OFFLOAD_OUTBOUND_SA))
        install(nic, base_request(flags=natt.OFFLOAD_OUTBOUND_SA))
        assert counts(nic) == (8, 2)


def test_most_specific_destination_wins(backend: str) -> None:
    """Two SAs share GCM-B's SPI: the right key for 198.51.100.2/32, a wrong one for any address.
    D1 (to .2) must pick the /32 SA; the same ESP to .9 falls back to the wildcard SA and fails."""
    wrong_key = bytes(20)
    to_9 = udp_wrap(GCM_B.esp, src=int(ipaddress.IPv4Address("192.0.2.1")),
                    dst=int(ipaddress.IPv4Address("198.51.100.9")))
    with natt.Offload(backend=backend) as nic:
        wild = install(nic, base_request(dst_addr=0, key_mat=wrong_key)).offload_handle
        exact = install(nic, base_request()).offload_handle
        res = nic.decap([D1, to_9])
        assert [Status(s) for s in res.status] == [Status.OK, Status.AUTH_FAILED]
        assert list(res.sa) == [exact, wild]


@pytest.mark.parametrize("form", [int, str, ipaddress.IPv4Address], ids=["int", "str", "IPv4Address"])
def test_addresses_accept_int_str_and_ipv4address(backend: str, form) -> None:
    def conv(text: str):
        a = ipaddress.IPv4Address(text)
        return int(a) if form is int else (text if form is str else a)
    with natt.Offload(backend=backend) as nic:
        install(nic, base_request(dst_addr=conv(D1_DST), dst_mask=conv("255.255.255.255"),
                                  src_addr=conv("192.0.2.1"), src_mask=conv("255.255.255.0"),
                                  nat_oa_src=conv("10.0.0.1"), nat_oa_dst=conv("10.0.0.2")))
        assert decap_status(nic, D1) == [Status.OK]
        # The address was read, not ignored: an SA for another host does not take D1.
        nic2 = natt.Offload(backend=backend)
        with nic2:
            install(nic2, base_request(dst_addr=conv("198.51.100.3")))
            assert decap_status(nic2, D1) == [Status.NO_SA]
        # Tunnel ends too (RFC 7634's tunnel-mode example, outer header of our choosing).
        v = esp_vector("rfc7634-appendix-a")
        pkt = udp_wrap(v.esp, src=int(ipaddress.IPv4Address("192.0.2.1")), dst=int(ipaddress.IPv4Address(D1_DST)))
        install(nic, base_request(sec_assoc=[_sa_element(conf=natt.ConfAlgo.CHACHA20_POLY1305, conf_len=36,
                                                         spi=v.spi)],
                                  key_mat=v.key, replay_seq=0, icv_len=16,
                                  src_tunnel_addr=conv("192.0.2.1"), dst_tunnel_addr=conv(D1_DST)))
        res = nic.decap([pkt])
        assert Status(res.status[0]) is Status.OK and res[0] == v.payload


# --------------------------------------------------------------------------- algorithms and keys

def _oid_algos() -> list[tuple[str, Any, int, Any, int]]:
    """(suite, conf id, conf key_len, integrity id, integrity key_len) for every natt suite."""
    out = []
    for name in natt.suite_names():
        s, _ = parse_suite(name)
        out.append((name, s.conf_algo, s.conf_key_len, s.integ_algo, s.integ_key_len))
    return out


@pytest.mark.parametrize("name,conf,conf_len,integ,integ_len", _oid_algos(), ids=[a[0] for a in _oid_algos()])
def test_oid_key_lengths(backend: str, name, conf, conf_len, integ, integ_len) -> None:
    icv = parse_suite(name)[0].icv_len
    def req(cl: int, il: int, key_len: Optional[int] = None) -> natt.AddUdpEspSa:
        return base_request(sec_assoc=[_sa_element(conf, cl, integ, il)], icv_len=icv,
                            key_mat=bytes(range((cl + il) if key_len is None else key_len)))
    with natt.Offload(backend=backend) as nic:
        for cl, il in ((conf_len + 1, integ_len), (conf_len, integ_len + 1),
                       (max(conf_len - 1, 0), integ_len), (conf_len, max(integ_len - 1, 0))):
            if (cl, il) != (conf_len, integ_len):
                assert add(nic, req(cl, il)) is NS.INVALID_DATA, (cl, il)
        assert add(nic, req(conf_len, integ_len, conf_len + integ_len + 1)) is NS.INVALID_DATA
        assert counts(nic) == (0, 0)
        assert add(nic, req(conf_len, integ_len)) is NS.SUCCESS


def test_aead_key_len_includes_the_salt(backend: str) -> None:
    for conf, n in ((natt.ConfAlgo.AES_GCM_128, 16), (natt.ConfAlgo.AES_GCM_192, 24),
                    (natt.ConfAlgo.AES_GCM_256, 32), (natt.ConfAlgo.CHACHA20_POLY1305, 32)):
        with natt.Offload(backend=backend) as nic:
            key = bytes(range(n + 4))
            assert add(nic, base_request(sec_assoc=[_sa_element(conf, n)], key_mat=key[:n])) is NS.INVALID_DATA
            assert add(nic, base_request(sec_assoc=[_sa_element(conf, n)], key_mat=key)) is NS.INVALID_DATA
            assert add(nic, base_request(sec_assoc=[_sa_element(conf, n + 4)], key_mat=key)) is NS.SUCCESS


def test_single_des_is_not_supported(backend: str) -> None:
    with natt.Offload(backend=backend) as nic:
        for integ, ilen in ((natt.IntegrityAlgo.SHA, 20), (natt.IntegrityAlgo.MD5, 16), (natt.IntegrityAlgo.NONE, 0)):
            req = base_request(sec_assoc=[_sa_element(natt.ConfAlgo.DES, 8, integ, ilen)], key_mat=bytes(8 + ilen),
                               replay_window=0)
            assert add(nic, req) is NS.NOT_SUPPORTED
        with pytest.raises(natt.OffloadError) as e:
            nic.add_sa(0x1001, bytes(28), "des-sha1")
        assert e.value.status is NS.NOT_SUPPORTED
        caps = nic.query_oid(natt.OID_TCP_TASK_OFFLOAD)
        assert natt.ConfAlgo.DES not in caps.conf_algos
        assert natt.ConfAlgo.TRIPLE_DES in caps.conf_algos


def test_gcm_icv_lengths(backend: str) -> None:
    with natt.Offload(backend=backend) as nic:
        for icv in (8, 12, 16, None):
            assert add(nic, other_request(spi=0x3000 + (icv or 0), icv_len=icv)) is NS.SUCCESS
        for icv in (4, 10, 20, 32, "16", 16.0):
            assert add(nic, other_request(spi=0x3100, icv_len=icv)) is NS.INVALID_PARAMETER, icv


@pytest.mark.parametrize("window", [0, 32, 64, 65536])
def test_confidentiality_only_sa(backend: str, window: int) -> None:
    """RFC 4303 §3.2 allows confidentiality-only ESP; it is an OID-only SA and has no anti-replay
    (§3.4.3: it rests on the ICV), whatever valid replay_window the request carries."""
    with natt.Offload(backend=backend) as nic:
        req = base_request(sec_assoc=[_sa_element(natt.ConfAlgo.AES_CBC_128, 16)], key_mat=bytes(16),
                           replay_window=window, replay_seq=0)
        assert add(nic, req) is NS.SUCCESS
        assert nic.sa_stats(req.offload_handle)["replay_window"] == 0


# --------------------------------------------------------------------------- query / set OIDs

def test_query_capabilities(backend: str) -> None:
    with natt.Offload(backend=backend, max_sas=7, max_parser_entries=3) as nic:
        caps = nic.query_oid(natt.OID_TCP_TASK_OFFLOAD)
        assert caps.backend == backend == nic.backend
        assert (caps.max_sas, caps.max_parser_entries) == (7, 3)
        assert (caps.sa_count, caps.parser_entry_count) == (0, 0)
        assert set(caps.encap_types) == {natt.UdpEncapType.IKE, natt.UdpEncapType.OTHER}
        assert natt.ConfAlgo.AES_GCM_128 in caps.conf_algos and natt.IntegrityAlgo.SHA_256 in caps.integrity_algos
        assert natt.ConfAlgo.RESERVED not in caps.conf_algos
        assert caps.esn and caps.transport and caps.tunnel
        # UDP-ESP subtype bits (spec §1.4): transport and tunnel, both framings.
        assert caps.udp_esp_flags & 0x33 == 0x33
        install(nic, base_request())
        assert counts(nic) == (1, 1)


@pytest.mark.parametrize("oid", [natt.OID_TCP_TASK_IPSEC_ADD_UDPESP_SA, natt.OID_TCP_TASK_IPSEC_DELETE_UDPESP_SA,
                                 0, 0xFC010202, 0xFFFFFFFF, -1, "OID_TCP_TASK_OFFLOAD", None])
def test_query_of_other_oids_is_invalid_oid(backend: str, oid) -> None:
    with natt.Offload(backend=backend) as nic:
        with pytest.raises(natt.OffloadError) as e:
            nic.query_oid(oid)
        assert e.value.status is NS.INVALID_OID


@pytest.mark.parametrize("oid, logged", [
    (natt.OID_TCP_TASK_OFFLOAD, "oid: 0xFC010201 (OID_TCP_TASK_OFFLOAD: a query, see query_oid) is not one natt sets"),
    (0xFC010202, "oid: 0xFC010202 (OID_TCP_TASK_IPSEC_ADD_SA: ESP/AH without UDP encapsulation) is not one natt sets"),
    (np.uint32(0xFC010207), "oid: 0xFC010207 is not one natt sets"),
    (0, "oid: 0x00000000 is not one natt sets"),
    ("add", "oid: 'add' is not an OID"),
    (None, "oid: None is not an OID"),
])
def test_set_of_other_oids_is_invalid_oid_and_logged_at_debug(backend: str, oid, logged, caplog) -> None:
    # A driver developer whose set_oid got INVALID_OID finds why on the natt logger, as for a
    # refused add or delete: the OID in hex, and its name when natt knows it.
    with natt.Offload(backend=backend) as nic:
        with caplog.at_level(logging.DEBUG, logger="natt"):
            assert nic.set_oid(oid, base_request()) is NS.INVALID_OID
        assert counts(nic) == (0, 0)
    [record] = [r for r in caplog.records if r.name == "natt"]
    assert record.levelno == logging.DEBUG
    assert record.getMessage().startswith(f"set refused: {logged}") and record.getMessage().endswith(" (INVALID_OID)")


_GARBAGE = st.sampled_from([None, -1, 0, 1, 2, 3, 2**32, 2**64, 2**100, 1.5, float("nan"), "", "x", "1.2.3.4",
                            b"", b"\x00" * 20, [], [1], {}, True, False, object(), natt.AlgoInfo(),
                            natt.EncapTypeEntry(), ipaddress.IPv4Address("1.2.3.4")])
_REQ_FIELDS = [f.name for f in dataclasses.fields(natt.AddUdpEspSa)]
_SA_FIELDS = ["operation", "spi", "integrity_algo", "conf_algo"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_set_oid_never_raises_on_garbage(backend: str, data) -> None:
    """``set_oid`` answers every request with a status (DESIGN: never raises for bad contents)."""
    req = base_request()
    for name in data.draw(st.lists(st.sampled_from(_REQ_FIELDS), max_size=4)):
        setattr(req, name, data.draw(_GARBAGE))
    if isinstance(req.sec_assoc, list) and req.sec_assoc and isinstance(req.sec_assoc[0], natt.OffloadSecurityAssociation):
        sa = req.sec_assoc[0]
        for name in data.draw(st.lists(st.sampled_from(_SA_FIELDS), max_size=2)):
            setattr(sa, name, data.draw(_GARBAGE))
        for algo in (sa.integrity_algo, sa.conf_algo):
            if isinstance(algo, natt.AlgoInfo) and data.draw(st.booleans()):
                setattr(algo, data.draw(st.sampled_from(["identifier", "key_len", "rounds"])), data.draw(_GARBAGE))
    with natt.Offload(backend=backend) as nic:
        status = nic.set_oid(ADD, req)
        assert isinstance(status, NS)
        if status is not NS.SUCCESS:
            assert counts(nic) == (0, 0)
        delete = natt.DeleteUdpEspSa(data.draw(_GARBAGE), data.draw(_GARBAGE))
        assert isinstance(nic.set_oid(DELETE, delete), NS)


# --------------------------------------------------------------------------- Pythonic layer

@pytest.mark.parametrize("name", natt.suite_names())
def test_add_sa_every_suite_and_esn(backend: str, name: str) -> None:
    suite, _ = parse_suite(name)
    with natt.Offload(backend=backend) as nic:
        key = bytes(range(suite.key_len))
        h_in = nic.add_sa(0x1001, key, name, "in", mode="transport", dst=D1_DST)
        h_esn = nic.add_sa(0x1002, key, f"{name}-esn", "in", mode="tunnel",
                           src="192.0.2.1", dst=D1_DST, replay_window=32)
        h_out = nic.add_sa(0x1001, key, name, "out", mode="tunnel", src="192.0.2.1", dst=D1_DST)
        assert len({h_in, h_esn, h_out}) == 3
        s_in, s_esn, s_out = (nic.sa_stats(h) for h in (h_in, h_esn, h_out))
        assert (s_in["suite"], s_in["esn"], s_in["direction"], s_in["mode"]) == (name, False, "in", "transport")
        assert (s_esn["suite"], s_esn["esn"], s_esn["mode"], s_esn["replay_window"]) == (name, True, "tunnel", 32)
        assert (s_out["direction"], s_out["entry_handle"]) == ("out", 0)
        assert s_in["entry_handle"] == s_esn["entry_handle"] != 0
        for s in (s_in, s_esn, s_out):
            assert set(COUNTER_NAMES) <= set(s) and all(s[c] == 0 for c in COUNTER_NAMES)
        # The key length is the suite's, exactly.
        for n in (suite.key_len - 1, suite.key_len + 1):
            with pytest.raises(natt.OffloadError) as e:
                nic.add_sa(0x1003, bytes(n), name, "in", mode="transport")
            assert e.value.status is NS.INVALID_DATA and "key" in str(e.value)
        for h in (h_in, h_esn, h_out):
            nic.delete_sa(h)
        assert counts(nic) == (0, 0)


@pytest.mark.parametrize("esn,suite,message", [
    (1, "aes128gcm16", r"esn: expected True or False, got 1"),
    (0, "aes128gcm16", r"esn: expected True or False, got 0"),
    (None, "aes128gcm16", r"esn: expected True or False, got None"),
    ([], "aes128gcm16", r"esn: expected True or False, got <list of 0 items"),
    (True, "aes128gcm16-noesn", r"esn: True, but the suite is aes128gcm16-noesn"),
])
def test_add_sa_esn_is_a_bool_that_agrees_with_the_suite(backend: str, esn: Any, suite: str, message: str) -> None:
    # esn was taken by truthiness (esn=0 and [] meant False, while the OID layer refused them),
    # and "-noesn" with esn=True turned ESN on; natt.keys refuses both, and so does add_sa now.
    with natt.Offload(backend=backend) as nic:
        with pytest.raises(natt.OffloadError, match=message) as e:
            nic.add_sa(0x1001, bytes(20), suite, "in", mode="transport", esn=esn)
        assert e.value.status is NS.INVALID_PARAMETER and counts(nic) == (0, 0)
        # The suffix alone, or esn=True alone, turns ESN on.
        for kw in ({"suite": "aes128gcm16-esn"}, {"suite": "aes128gcm16", "esn": True}):
            args: dict[str, Any] = {"suite": "aes128gcm16", **kw}
            h = nic.add_sa(0x1002, bytes(20), direction="in", mode="transport", **args)
            assert nic.sa_stats(h)["esn"] is True
            nic.delete_sa(h)


@pytest.mark.parametrize("value", [b"1.2.3.4", 1.5, [1, 2, 3, 4]])
def test_an_address_of_the_wrong_type_names_the_forms_taken(backend: str, value: Any) -> None:
    # "expected an integer" read as though a dotted quad were not taken.
    with natt.Offload(backend=backend) as nic:
        with pytest.raises(natt.OffloadError, match="^dst: expected a dotted quad, an IPv4Address or an integer, "
                                                    f"got {type(value).__name__}"):
            nic.add_sa(0x1001, bytes(20), "aes128gcm16", "in", mode="transport", dst=value)
        req = base_request(dst_addr=value)
        assert add(nic, req) is NS.INVALID_PARAMETER and counts(nic) == (0, 0)


def test_add_sa_decaps_a_published_esn_vector(backend: str) -> None:
    """GCM-A (draft-mcgrew-gcm-test-01) is an ESN packet: strongSwan's ``aes128gcm16-esn`` keyword."""
    v = esp_vector("gcm-a")
    with natt.Offload(backend=backend) as nic:
        h = nic.add_sa(v.spi, v.key, "aes128gcm16-esn", "in", mode="transport", replay_seq=v.seq - 1)
        pkt = udp_wrap(v.esp, src=0xC0000201, dst=0xC6336402)
        res = nic.decap([pkt, pkt])
        assert [Status(s) for s in res.status] == [Status.OK, Status.REPLAY]
        assert res.seq[0] == v.seq
        stats = nic.sa_stats(h)
        assert (stats["packets"], stats["replays"], stats["replay_seq"]) == (1, 1, v.seq)
        assert stats["bytes"] == len(res[0])


def test_add_sa_suite_spellings(backend: str) -> None:
    with natt.Offload(backend=backend) as nic:
        for text, name, esn in (("aes128gcm128", "aes128gcm16", False), ("AES256-SHA256-ESN", "aes256-sha256", True),
                                ("aes128-sha1-noesn", "aes128-sha1", False), ("aes128gcm", "aes128gcm16", False)):
            suite, _ = parse_suite(name)
            h = nic.add_sa(0x1001, bytes(range(suite.key_len)), text, "out", mode="transport")
            s = nic.sa_stats(h)
            assert (s["suite"], s["esn"]) == (name, esn), text


def test_a_suite_spelled_with_other_separators_is_refused_with_the_keyword_it_spells() -> None:
    # OpenSSL and Linux write "aes-128-gcm", "chacha20-poly1305": the hint names the keyword, and
    # only one that every letter and digit matches (a nearest match could be another ICV or hash).
    for text, hint in (("aes128-gcm16", "aes128gcm16"), ("chacha20-poly1305", "chacha20poly1305"),
                       ("AES-128-GCM-ESN", "aes128gcm16-esn"), ("aes128_sha1", "aes128-sha1"),
                       ("aes_256_sha2_256", None), ("aes-gcm-128", None), ("rot13", None)):
        with pytest.raises(ValueError) as e:
            parse_suite(text)
        message = str(e.value)
        assert message.startswith(f"suite: unknown ESP proposal {text!r}"
                                  + (f" (did you mean {hint!r}?); natt knows " if hint else "; natt knows ")), message
    with natt.Offload(backend="reference") as nic:
        with pytest.raises(natt.OffloadError, match=r"^suite: unknown ESP proposal 'aes-128-gcm-16' "
                                                    r"\(did you mean 'aes128gcm16'\?\); natt knows "):
            nic.add_sa(0x1001, bytes(20), "aes-128-gcm-16", "in", mode="transport")


def test_add_sa_takes_the_framing_by_name(backend: str) -> None:
    # Like direction and mode, and as key files spell it.
    with natt.Offload(backend=backend) as nic:
        keepalive_on_500 = traffic.udp_encapsulate(b"\xff", "198.51.100.2", "203.0.113.5", sport=500, dport=500)
        ike = nic.add_sa(0x1001, bytes(20), "aes128gcm16", mode="transport", encap="IKE", port=500)
        other = nic.add_sa(0x1002, bytes(20), "aes128gcm16", mode="transport", encap=" other ", port=4500)
        assert nic.sa_stats(ike)["encap"] == "IKE" and nic.sa_stats(other)["encap"] == "OTHER"
        assert decap_status(nic, keepalive_on_500) == [Status.KEEPALIVE]
        with pytest.raises(natt.OffloadError, match=r"^encap: 'GRE' is neither 'OTHER' \(RFC 3948\) nor 'IKE'") as e:
            nic.add_sa(0x1003, bytes(20), "aes128gcm16", mode="transport", encap="GRE")
        assert e.value.status == natt.NdisStatus.NOT_SUPPORTED


def test_delete_sa_removes_the_entry_with_its_last_sa(backend: str) -> None:
    with natt.Offload(backend=backend) as nic:
        a = nic.add_sa(GCM_B.spi, GCM_B.key, "aes128gcm16", mode="transport", dst=D1_DST, replay_seq=GCM_B.seq - 1)
        b = nic.add_sa(0x2001, GCM_B.key, "aes128gcm16", mode="transport")
        assert counts(nic) == (2, 1)
        assert decap_status(nic, D1) == [Status.OK]
        nic.delete_sa(a)
        assert counts(nic) == (1, 1)
        assert decap_status(nic, D1, D3) == [Status.NO_SA, Status.IKE]
        nic.delete_sa(b)
        assert counts(nic) == (0, 0)
        assert decap_status(nic, D1, D3) == [Status.NOT_ESP, Status.NOT_ESP]


@pytest.mark.parametrize("kwargs,status,field", [
    ({"spi": 0}, NS.INVALID_PARAMETER, "spi"),
    ({"spi": 2**32}, NS.INVALID_PARAMETER, "spi"),
    ({"suite": "aes128gcm17"}, NS.NOT_SUPPORTED, "suite"),
    ({"suite": "des-sha1"}, NS.NOT_SUPPORTED, "suite"),
    ({"key": bytes(19)}, NS.INVALID_DATA, "key"),
    ({"key": "k" * 20}, NS.INVALID_DATA, "key"),
    ({"direction": "sideways"}, NS.INVALID_PARAMETER, "direction"),
    ({"mode": "beet"}, NS.INVALID_PARAMETER, "mode"),
    ({"mode": "tunnel", "src": None}, NS.INVALID_PARAMETER, "src"),
    ({"mode": "tunnel", "dst": None}, NS.INVALID_PARAMETER, "dst"),
    # Two zero tunnel addresses mean transport in the OID layer: a tunnel asked for is refused.
    ({"mode": "tunnel", "src": 0, "dst": 0}, NS.INVALID_PARAMETER, "src"),
    ({"mode": "tunnel", "src": "0.0.0.0"}, NS.INVALID_PARAMETER, "src"),
    ({"mode": "tunnel", "dst": ipaddress.IPv4Address(0)}, NS.INVALID_PARAMETER, "dst"),
    ({"mode": "tunnel", "src": -1}, NS.INVALID_PARAMETER, "src"),
    ({"spi": _Raising()}, NS.INVALID_PARAMETER, "spi"),
    ({"direction": _Raising()}, NS.INVALID_PARAMETER, "direction"),
    ({"mode": _Raising()}, NS.INVALID_PARAMETER, "mode"),
    ({"dst": "198.51.100.300"}, NS.INVALID_PARAMETER, "dst"),
    ({"replay_window": 31}, NS.INVALID_PARAMETER, "replay_window"),
    ({"esn": True, "replay_window": 0}, NS.INVALID_PARAMETER, "esn"),
    ({"suite": "aes128gcm16-esn", "replay_window": 0}, NS.INVALID_PARAMETER, "esn"),
    ({"replay_seq": 2**32}, NS.INVALID_PARAMETER, "replay_seq"),
    ({"port": 0}, NS.INVALID_PARAMETER, "port"),
    ({"encap": 5}, NS.NOT_SUPPORTED, "encap"),
    ({"sport": 70000, "direction": "out"}, NS.INVALID_PARAMETER, "sport"),
    ({"nat_oa_src": "10.0.0.1"}, NS.INVALID_PARAMETER, "nat_oa_src"),
    ({"df_bit": "sometimes", "direction": "out"}, NS.INVALID_PARAMETER, "df_bit"),
    ({"df_bit": None, "direction": "out"}, NS.INVALID_PARAMETER, "df_bit"),
    ({"df_bit": b"set", "direction": "out"}, NS.INVALID_PARAMETER, "df_bit"),
    ({"df_bit": "set"}, NS.INVALID_PARAMETER, "df_bit"),                  # inbound
    ({"df_bit": "clear", "direction": "out", "mode": "transport", "src": None, "dst": None},
     NS.INVALID_PARAMETER, "df_bit"),
])
def test_offload_error_status_and_field(backend: str, kwargs: dict, status: NS, field: str) -> None:
    # The field is named at the start, as every OffloadError of add_sa does.
    e = _refused_add_sa(backend, **kwargs)
    assert e.status is status
    assert isinstance(e.status, NS)
    assert str(e).startswith(field)


def _refused_add_sa(backend: str, **changes: Any) -> natt.OffloadError:
    """The OffloadError of an add_sa that ``changes`` break (a valid inbound tunnel SA otherwise),
    after checking that nothing was installed."""
    args = {"spi": 0x1001, "key": bytes(20), "suite": "aes128gcm16", "direction": "in", "mode": "tunnel",
            "src": "192.0.2.1", "dst": D1_DST}
    args.update(changes)
    with natt.Offload(backend=backend) as nic:
        with pytest.raises(natt.OffloadError) as e:
            nic.add_sa(**args)
        assert counts(nic) == (0, 0)
    return e.value


def test_add_sa_measures_a_key_in_octets_whatever_its_item_size(backend: str) -> None:
    import array

    key = memoryview(array.array("I", bytes(range(20))))       # five 4-octet items, 20 octets
    with natt.Offload(backend=backend) as nic:
        h = nic.add_sa(0x1001, key, "aes128gcm16", "in", mode="transport")
        assert nic.sa_stats(h)["spi"] == 0x1001
        with pytest.raises(natt.OffloadError, match="^key: cannot be read") as e:
            nic.add_sa(0x1002, _released(bytes(20)), "aes128gcm16", "in", mode="transport")
        assert e.value.status is NS.INVALID_DATA and counts(nic) == (1, 1)


def test_add_sa_takes_a_key_in_any_buffer_and_its_words_in_any_case(backend: str, caplog) -> None:
    # suite and encap took any case, direction, mode and df_bit only lower case; memoryview(a) of a
    # numpy array was a key, the array itself not.
    key = np.arange(40, dtype=np.uint8)[::2]                    # not even contiguous
    inner = bytes.fromhex("4500001c0001000040017cdd0a0000010a000002" "0800f7ff00000000")
    with natt.Offload(backend=backend) as nic:
        tx = nic.add_sa(0x1001, key, "AES128GCM16", " OUT", mode="Tunnel", src="198.51.100.2",
                        dst="203.0.113.5", df_bit="Set")
        rx = nic.add_sa(0x1001, bytes(key), "aes128gcm16", "In", mode="TUNNEL", src="198.51.100.2",
                        dst="203.0.113.5")
        assert (nic.sa_stats(tx)["df_bit"], nic.sa_stats(rx)["direction"]) == ("set", "in")
        res = nic.decap(nic.encap([inner], tx).batch())
        assert res.status.tolist() == [Status.OK] and res[0] == inner
        # A string is most likely the key in hex, as key files and ip xfrm print it: say how to
        # pass it, without quoting it.
        hint = r" \(a key in hex\? pass bytes\.fromhex\(\.\.\.\)\)"
        with pytest.raises(natt.OffloadError, match=rf"^key: expected bytes, got str{hint} \(INVALID_DATA\)$"):
            nic.add_sa(0x1002, "k" * 20, "aes128gcm16", "in", mode="transport")
        req = natt.AddUdpEspSa(key_mat="ab" * 20, sec_assoc=[natt.OffloadSecurityAssociation(
            natt.Operation.ENCRYPT, 0x1003, conf_algo=natt.AlgoInfo(natt.ConfAlgo.AES_GCM_128, 20))])
        with caplog.at_level(logging.DEBUG, logger="natt"):
            assert nic.set_oid(natt.OID_TCP_TASK_IPSEC_ADD_UDPESP_SA, req) is NS.INVALID_DATA
        assert "add refused: key_mat: expected bytes, got str (a key in hex? pass bytes.fromhex(...))" in caplog.text
        assert "ab" * 20 not in caplog.text
        # Its buffer holds 8 addresses: 64 octets, an aes256-sha256 key's length.
        objects = np.array([b"k"] * 8, dtype=object)
        with pytest.raises(natt.OffloadError, match=r"^key: expected bytes, got ndarray of Python objects "):
            nic.add_sa(0x1002, objects, "aes256-sha256", "in", mode="transport")
        with pytest.raises(natt.OffloadError, match=r"^key: a memoryview of Python objects holds no key octets "):
            nic.add_sa(0x1002, memoryview(objects), "aes256-sha256", "in", mode="transport")


KEY_HEX = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4"
KEY_B64 = "obLD1OX2BxgpOktcbX6PkKGyw9Q="                      # KEY_HEX's octets in base64


@pytest.mark.parametrize("swap", [
    {"suite": KEY_HEX, "key": b"aes128gcm16"},                 # add_sa(spi, suite, key, ...)
    {"suite": "0x" + KEY_HEX}, {"suite": KEY_HEX.upper()},
    {"suite": ":".join(KEY_HEX[i:i + 2] for i in range(0, 40, 2))},
    {"direction": KEY_HEX}, {"direction": bytes.fromhex(KEY_HEX)}, {"mode": KEY_HEX}, {"src": KEY_HEX},
    {"df_bit": KEY_HEX}, {"df_bit": bytes.fromhex(KEY_HEX)},
    {"suite": KEY_B64}, {"suite": KEY_B64 + "-esn"}, {"direction": KEY_B64}, {"mode": KEY_B64.rstrip("=")},
    {"src": KEY_B64}, {"df_bit": KEY_B64},
])
def test_add_sa_errors_never_echo_a_key_given_in_the_wrong_place(backend: str, swap: dict) -> None:
    assert base64.b64decode(KEY_B64) == bytes.fromhex(KEY_HEX)
    text = str(_refused_add_sa(backend, **swap))
    assert KEY_B64[:8] not in text and KEY_B64[-12:-4] not in text
    text = text.lower()
    assert "a1b2c3d4" not in text and "a1:b2:c3" not in text and "\\xa1\\xb2" not in text
    assert next(iter(swap)) in text                       # the field is still named


def test_no_entry_point_echoes_a_key_given_in_the_wrong_place(backend: str, caplog) -> None:
    """SECURITY.md: keys never appear in messages or logs, even when the caller passes one where a
    handle, an OID, a flag or a count belongs (the key as bytes, hex text, hex with a suffix,
    or an integer)."""
    key = bytes.fromhex(KEY_HEX)
    forms = [key, bytearray(key), KEY_HEX, KEY_HEX + "-esn", int(KEY_HEX, 16)]
    with natt.Offload(backend=backend) as nic:
        caplog.set_level(logging.DEBUG, logger="natt")
        for k in forms:
            calls: list[Callable[[], Any]] = [
                lambda: nic.delete_sa(k), lambda: nic.sa_stats(k), lambda: nic.replay_state(k),
                lambda: nic.encap([D1], k), lambda: nic.claim_after_fork(k), lambda: nic.query_oid(k),
                lambda: nic.decap([D1], threads=k),
                lambda: nic.add_sa(0x1001, bytes(20), "aes128gcm16", "in", mode="transport", esn=k),
                lambda: nic.add_sa(0x1001, bytes(20), "aes128gcm16", "in", mode="transport", encap=k),
                lambda: nic.add_sa(0x1001, bytes(20), "aes128gcm16", "out", src="192.0.2.1", dst=D1_DST, df_bit=k),
                lambda: nic.add_sa(0x1001, bytes(20), k, "in", mode="transport"),
                lambda: nic.add_sa(k, bytes(20), "aes128gcm16", "in", mode="transport"),
                lambda: natt.Offload(backend=k),
            ]
            if not isinstance(k, int):          # a huge table limit is a valid limit
                calls += [lambda: natt.Offload(backend=backend, max_sas=k),
                          lambda: natt.Offload(backend=backend, max_parser_entries=k)]
            for call in calls:
                with pytest.raises((natt.OffloadError, ValueError)) as e:
                    call()
                assert not _leaks(str(e.value), key) and str(int(KEY_HEX, 16))[:12] not in str(e.value)
            requests = [
                base_request(flags=k), base_request(esn=k), base_request(encap_type_entry_offld_handle=k),
                base_request(sec_assoc=[_sa_element(spi=k)]),
                base_request(sec_assoc=[_sa_element(operation=k)]),
                base_request(sec_assoc=[_sa_element(conf=k)]), base_request(sec_assoc=[_sa_element(conf_len=k)]),
                base_request(encap_type_entry=natt.EncapTypeEntry(k, 4500)),
                base_request(flags=natt.OFFLOAD_OUTBOUND_SA, src_tunnel_addr="192.0.2.1",
                             dst_tunnel_addr=D1_DST, df_bit=k),
            ]
            for req in requests:
                assert add(nic, req) is not NS.SUCCESS
            for req in (natt.DeleteUdpEspSa(k), natt.DeleteUdpEspSa(1, k)):
                assert nic.set_oid(DELETE, req) is NS.INVALID_PARAMETER
            assert nic.set_oid(k, base_request()) is NS.INVALID_OID    # logged, naming the oid
        assert caplog.records and not _leaks(caplog.text, key) and str(int(KEY_HEX, 16))[:12] not in caplog.text
        assert counts(nic) == (0, 0)


def test_oid_fields_take_numpy_integers(backend: str) -> None:
    # As the Pythonic layer does (test_numpy_integers_are_integers_everywhere): numbers read from
    # numpy arrays are integers in every integer field of the OID structures too.
    with natt.Offload(backend=backend) as nic:
        req = base_request(flags=np.uint16(natt.OFFLOAD_INBOUND_SA),
                           sec_assoc=[_sa_element(conf=np.int64(natt.ConfAlgo.AES_GCM_128), conf_len=np.int64(20),
                                                  integ=np.int32(natt.IntegrityAlgo.NONE), integ_len=np.uint8(0),
                                                  operation=np.int8(natt.Operation.ENCRYPT))],
                           encap_type_entry=natt.EncapTypeEntry(np.int64(natt.UdpEncapType.OTHER), np.uint16(4500)))
        assert add(nic, req) is NS.SUCCESS
        assert nic.sa_stats(req.offload_handle)["suite"] == "aes128gcm16"
        h = nic.add_sa(0x2002, bytes(20), "aes128gcm16", "out", mode="transport", encap=np.int64(0))
        assert nic.sa_stats(h)["encap"] == "IKE"
        assert add(nic, base_request(flags=np.float64(1))) is NS.INVALID_PARAMETER


def test_every_sec_assoc_element_is_checked_before_the_count(backend: str) -> None:
    # semantics.md §6: row 3 (an element not an OffloadSecurityAssociation) before row 4.
    with natt.Offload(backend=backend) as nic:
        assert add(nic, base_request(sec_assoc=[None, None])) is NS.INVALID_DATA
        assert add(nic, base_request(sec_assoc=[_sa_element(), None])) is NS.INVALID_DATA
        assert add(nic, base_request(sec_assoc=[_sa_element(), _sa_element()])) is NS.NOT_SUPPORTED
        assert counts(nic) == (0, 0)


def test_add_sa_still_echoes_a_mistyped_name(backend: str) -> None:
    with natt.Offload(backend=backend) as nic:
        with pytest.raises(natt.OffloadError, match="'aes128gmc16'"):
            nic.add_sa(0x1001, bytes(20), "aes128gmc16", "in", mode="transport")
        with pytest.raises(natt.OffloadError, match="^spi: 4294967296 is outside 1..4294967295"):
            nic.add_sa(2**32, bytes(20), "aes128gcm16", "in", mode="transport")


def test_numpy_integers_are_integers_everywhere(backend: str) -> None:
    # Numbers taken from numpy arrays (a saved replay state, a table of SPIs) are plain integers
    # to the caller; bools and floats stay refused (test_offload_error_status_and_field).
    with natt.Offload(backend=backend) as nic:
        h = nic.add_sa(np.uint32(0x1001), bytes(20), "aes128gcm16", "in", mode="transport",
                       replay_window=np.int64(64), replay_seq=np.uint64(70), replay_bitmap=np.int64(3))
        assert nic.replay_state(np.int64(h)) == (70, 3)
        with pytest.raises(natt.OffloadError, match="^replay_seq: expected an integer, got float64"):
            nic.add_sa(0x1002, bytes(20), "aes128gcm16", "in", mode="transport", replay_seq=np.float64(7))
        packets = [bytes(40)] * 600
        assert nic.decap(packets, threads=np.int64(2)).status.tolist() == [Status.NOT_ESP] * 600
        with pytest.raises(ValueError, match=r"^threads: expected None or an integer 1..256, got np.float64\(2.0\)"):
            nic.decap(packets, threads=np.float64(2))


def test_query_oid_names_a_negative_oid(backend: str) -> None:
    with natt.Offload(backend=backend) as nic:
        with pytest.raises(natt.OffloadError, match="^oid: -1 is not an OID"):
            nic.query_oid(-1)


def test_offload_error_survives_pickle_and_copy(backend: str) -> None:
    # A process pool or a Dask worker hands errors back pickled: the caller must get the same
    # OffloadError, status included (Exception's default rebuilds from the message alone).
    import copy

    with natt.Offload(backend=backend) as nic:
        with pytest.raises(natt.OffloadError) as e:
            nic.add_sa(0x1001, bytes(19), "aes128gcm16", "in", mode="transport")
    for back in (pickle.loads(pickle.dumps(e.value)), copy.copy(e.value)):
        assert type(back) is natt.OffloadError
        assert back.status is NS.INVALID_DATA and str(back) == str(e.value)


@pytest.mark.parametrize("handle", [0, 9999, -1, "1", None, True, 1.0])
def test_unknown_handles_raise_invalid_parameter(backend: str, handle) -> None:
    with natt.Offload(backend=backend) as nic:
        nic.add_sa(0x1001, bytes(20), "aes128gcm16", "out", mode="transport")
        for call in (lambda: nic.delete_sa(handle), lambda: nic.sa_stats(handle),
                     lambda: nic.encap([D1], handle)):
            with pytest.raises(natt.OffloadError) as e:
                call()
            assert e.value.status is NS.INVALID_PARAMETER


def test_deleted_entry_and_inbound_handles_raise_invalid_parameter(backend: str) -> None:
    with natt.Offload(backend=backend) as nic:
        req = install(nic, base_request())
        with pytest.raises(natt.OffloadError) as e:
            nic.encap([D1], req.offload_handle)              # inbound SA cannot encap
        assert e.value.status is NS.INVALID_PARAMETER
        with pytest.raises(natt.OffloadError) as e:
            nic.sa_stats(req.encap_type_entry_offld_handle)  # an entry is not an SA
        assert e.value.status is NS.INVALID_PARAMETER
        nic.delete_sa(req.offload_handle)
        for call in (lambda: nic.delete_sa(req.offload_handle), lambda: nic.sa_stats(req.offload_handle)):
            with pytest.raises(natt.OffloadError) as e:
                call()
            assert e.value.status is NS.INVALID_PARAMETER


def test_handles_from_results_are_accepted(backend: str) -> None:
    """``res.sa`` holds numpy int64 handles; passing one back to ``sa_stats``/``delete_sa`` must work."""
    with natt.Offload(backend=backend) as nic:
        install(nic, base_request())
        res = nic.decap([D1])
        h = res.sa[0]
        assert nic.sa_stats(h)["packets"] == 1
        nic.delete_sa(h)
        assert counts(nic) == (0, 0)


# --------------------------------------------------------------------------- key hygiene

# Distinctive keys: printable (a leak shows up as text) and high-bit (a leak shows up as \x escapes).
KEY_TEXT = b"natt-SECRET-key#0123"      # 20 octets: AES-128-GCM key + salt
KEY_BIN = bytes(range(0xA0, 0xE0))      # 64 octets: AES-256-CBC key + HMAC-SHA-256 key


def _leaks(text: str, key: bytes) -> list[str]:
    """Every 6-octet window of ``key`` looked for as hex, raw text, bytes-literal escapes; and base64."""
    found = []
    low = text.lower()
    for i in range(len(key) - 5):
        w = key[i:i + 6]
        found += [n for n in (w.hex(), " ".join(f"{b:02x}" for b in w)) if n in low]
        found += [n for n in (w.decode("latin-1"), repr(w)[2:-1]) if n in text]
    if base64.b64encode(key).decode() in text:
        found.append("base64")
    return found


def _exercise(nic: natt.Offload, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Do everything that might print, log or raise about an SA keyed with KEY_TEXT / KEY_BIN."""
    texts: list[str] = []
    req = base_request(key_mat=KEY_TEXT)
    texts += [repr(req), str(req), repr(req.sec_assoc)]
    assert add(nic, req) is NS.SUCCESS
    texts += [repr(req), str(req), repr(nic), str(nic)]
    stats = nic.sa_stats(req.offload_handle)
    texts += [repr(stats), str(stats), repr(nic.query_oid(natt.OID_TCP_TASK_OFFLOAD))]
    # Refused requests: duplicate, bad lengths, bad window (each message built after the key was read).
    for bad in (base_request(key_mat=KEY_TEXT), base_request(key_mat=KEY_TEXT + b"!"),
                base_request(key_mat=KEY_TEXT, replay_window=3),
                base_request(key_mat=KEY_TEXT, sec_assoc=[_sa_element(conf_len=16)])):
        assert add(nic, bad) is not NS.SUCCESS
        texts.append(repr(bad))
    h = nic.add_sa(0x5001, KEY_BIN, "aes256-sha256", "in", mode="tunnel", src="192.0.2.1", dst=D1_DST)
    texts += [repr(nic.sa_stats(h))]
    for kwargs in ({"key": KEY_BIN[:63]}, {"key": KEY_BIN, "replay_window": 1},
                   {"key": KEY_BIN}, {"key": KEY_TEXT, "suite": "nonsense"}):
        args = {"spi": 0x5001, "key": KEY_BIN, "suite": "aes256-sha256", "direction": "in",
                "mode": "tunnel", "src": "192.0.2.1", "dst": D1_DST}
        args.update(kwargs)
        with pytest.raises(natt.OffloadError) as e:
            nic.add_sa(**args)
        texts += [str(e.value), repr(e.value), "".join(traceback.format_exception(e.value))]
    # A backend that fails to install (the warning path).
    _break_backend(nic, monkeypatch)
    assert add(nic, base_request(key_mat=KEY_TEXT, sec_assoc=[_sa_element(spi=0x6001)])) is NS.FAILURE
    monkeypatch.undo()
    res = nic.decap([D1, D2])
    texts.append(repr(res))
    nic.delete_sa(h)
    assert nic.set_oid(DELETE, natt.DeleteUdpEspSa(req.offload_handle, req.encap_type_entry_offld_handle)) \
        is NS.SUCCESS
    cfg = SaConfig(handle=1, inbound=True, spi=1, suite=parse_suite("aes128gcm16")[0], tunnel=False, dst_addr=0,
                   dst_mask=0, src_tunnel_addr=0, dst_tunnel_addr=0, entry_handle=1,
                   encap_type=natt.UdpEncapType.OTHER, port=4500, encap_src_port=4500, encap_dst_port=4500,
                   replay_window=64, esn=False, replay_seq=0, replay_oseq=0, nat_oa_src=0, nat_oa_dst=0,
                   key=bytearray(KEY_TEXT))
    texts += [repr(cfg), str(cfg)]
    for record in caplog.records:
        texts += [record.getMessage(), repr(record.args), record.msg if isinstance(record.msg, str) else ""]
    texts.append(caplog.text)
    return texts


def test_key_material_never_shown(backend: str, caplog: pytest.LogCaptureFixture,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    with natt.Offload(backend=backend) as nic:
        texts = _exercise(nic, caplog, monkeypatch)
    assert caplog.records, "natt logged nothing at DEBUG: the log check would be vacuous"
    for text in texts:
        assert not _leaks(text, KEY_TEXT), text
        assert not _leaks(text, KEY_BIN), text


def _chain_texts(e: BaseException) -> list[str]:
    """str and repr of ``e`` and of every exception it chains (__cause__ and __context__, shown
    in a traceback or not: a caller can reach them all)."""
    texts: list[str] = []
    todo, seen = [e], set()
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        texts += [str(x), repr(x)]
        todo += [x.__cause__, x.__context__]
    return texts


_MISPLACED = {
    "direction=key array": dict(direction=np.frombuffer(KEY_BIN, np.uint8)),
    "mode=[key hex]": dict(mode=[KEY_BIN.hex()]),
    "src=key hex": dict(mode="tunnel", src=KEY_BIN.hex(), dst="192.0.2.9"),
    "dst=(key,)": dict(mode="tunnel", src="192.0.2.1", dst=(KEY_BIN,)),
    "encap=key hex": dict(encap=KEY_BIN.hex()),
    "encap={key: 1}": dict(encap={KEY_BIN.hex(): 1}),
}


@pytest.mark.parametrize("where", list(_MISPLACED))
def test_a_key_in_the_wrong_argument_is_never_shown_nor_chained(backend: str, where: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    # Arguments get swapped or wrapped; the message names the field, never echoes what is in it,
    # and the exception does not keep a parser's error that quotes it as its __context__.
    caplog.set_level(logging.DEBUG)
    args: dict[str, Any] = {"spi": 0x7001, "key": KEY_BIN, "suite": "aes256-sha256", "direction": "in",
                            "mode": "transport"}
    args.update(_MISPLACED[where])
    with natt.Offload(backend=backend) as nic:
        with pytest.raises(natt.OffloadError) as e:
            nic.add_sa(**args)
        assert nic.query_oid(natt.OID_TCP_TASK_OFFLOAD).sa_count == 0
        req = base_request(key_mat=KEY_TEXT, flags=[KEY_TEXT])
        assert add(nic, req) is NS.INVALID_PARAMETER
    texts = _chain_texts(e.value) + ["".join(traceback.format_exception(e.value)), caplog.text]
    assert len(texts) >= 4
    for text in texts:
        assert not _leaks(text, KEY_BIN) and not _leaks(text, KEY_TEXT), text


def test_leak_detector_finds_leaks() -> None:
    # The detector itself must be able to fail, or the test above proves nothing.
    assert _leaks(repr(KEY_TEXT), KEY_TEXT)
    assert _leaks(KEY_BIN.hex().upper(), KEY_BIN)
    assert _leaks(repr(KEY_BIN[10:20]), KEY_BIN)
    assert _leaks(f"AddUdpEspSa(key_mat={KEY_TEXT!r})", KEY_TEXT)
    assert _leaks("key " + " ".join(f"{b:02X}" for b in KEY_TEXT[3:12]), KEY_TEXT)
    assert _leaks(base64.b64encode(KEY_BIN).decode(), KEY_BIN)
    assert not _leaks(repr(base_request()), KEY_TEXT)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_offload_cannot_be_pickled(backend: str, protocol: int) -> None:
    with natt.Offload(backend=backend) as nic:
        nic.add_sa(0x1001, KEY_TEXT, "aes128gcm16", "out", mode="transport")
        with pytest.raises(TypeError):
            pickle.dumps(nic, protocol=protocol)


# ---------------------------------------------------------------------------------------------- fork


def _in_child(body: Callable[[], None], timeout: int = 60) -> None:
    """Run ``body`` in a forked child; fail if it raises, fails an assertion or hangs."""
    import os
    import signal
    import time
    pid = os.fork()
    if pid == 0:                                    # pragma: no cover - runs in the child
        code = 0
        try:
            signal.alarm(timeout)                   # a hang ends the child with SIGALRM
            body()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    deadline = time.monotonic() + timeout + 10
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.02)
    assert os.WIFEXITED(status), f"the forked child died of signal {os.WTERMSIG(status)} (SIGALRM: it hung)"
    assert os.WEXITSTATUS(status) == 0, "the forked child failed (its traceback is on stderr)"


def _gcm_pair(backend: str) -> tuple[natt.Offload, int, int, bytes]:
    """An Offload with an AES-GCM transport SA pair (out, in) and an inner packet for it."""
    nic = natt.Offload(backend=backend)
    key = bytes(range(20))
    tx = nic.add_sa(0x1001, key, "aes128gcm16", "out", mode="transport")
    rx = nic.add_sa(0x1001, key, "aes128gcm16", "in", mode="transport")
    return nic, tx, rx, traffic.udp_datagram("10.0.0.1", "10.0.0.2", 1, 2, 100)


def test_a_fork_during_another_threads_batch_leaves_the_child_a_working_offload(backend: str) -> None:
    # The batch's lock is held when the process forks unless the fork waits for the batch: the
    # child, which has no such thread, would then hang on its first call, or on close().
    import threading
    import time
    nic, tx, rx, inner = _gcm_pair(backend)
    big = natt.PacketBatch.from_packets([inner] * 20000)
    stop = threading.Event()

    def keep_sending() -> None:
        while not stop.is_set():
            nic.encap(big, tx)
    busy = threading.Thread(target=keep_sending)
    busy.start()

    def child() -> None:
        assert nic.decap([inner]).status.tolist() == [Status.NOT_ESP]
        nic.claim_after_fork(tx)
        wire = nic.encap([inner], tx)
        assert nic.decap(wire.batch()).status.tolist() == [Status.OK] and nic.sa_stats(rx)["packets"] == 1
        nic.close()
    try:
        for _ in range(3):
            time.sleep(0.02)                        # busy is inside a batch most of the time
            _in_child(child)
    finally:
        stop.set()
        busy.join()
    assert nic.encap([inner], tx).status.tolist() == [Status.OK]      # the parent is never restricted
    nic.close()


def test_outbound_sas_from_before_a_fork_send_only_where_claimed(backend: str) -> None:
    # Both processes would otherwise send the same sequence numbers: for AES-GCM the same nonces
    # under one key (RFC 4106 §3.1).
    nic, tx, rx, inner = _gcm_pair(backend)
    key = bytes(range(20))

    def child() -> None:
        with pytest.raises(natt.OffloadError, match=rf"^handle: SA {tx} was installed before this process "
                                                    rf"forked.*call claim_after_fork\({tx}\)") as e:
            nic.encap([inner], tx)
        assert e.value.status == natt.NdisStatus.INVALID_PARAMETER
        with pytest.raises(natt.OffloadError, match="inbound"):
            nic.claim_after_fork(rx)
        fresh = nic.add_sa(0x2002, key, "aes128gcm16", "out", mode="transport")   # made here: no claim
        assert nic.encap([inner], fresh).status.tolist() == [Status.OK]
        nic.claim_after_fork(tx)
        nic.claim_after_fork(tx)                    # idempotent
        assert nic.encap([inner], tx).seq.tolist() == [1]
    _in_child(child)
    assert nic.encap([inner], tx).seq.tolist() == [1]                  # the parent's own sequence


def test_a_default_offload_without_the_compiled_backend_says_so(monkeypatch) -> None:
    """Offload() falls back to the reference backend when natt._fastpath cannot be imported (a
    source checkout shadowing the installed package): with a warning naming the cause and the
    way out, never silently ten times slower. A backend asked for by name gives no warning."""
    import warnings

    from natt import _offload
    monkeypatch.setattr(_offload, "_fast_unavailable", lambda: "No module named 'natt._fastpath'")
    assert natt.backends() == ["reference"]
    with pytest.warns(RuntimeWarning, match=r"compiled 'fast' backend cannot be imported \(No module named "
                                            r"'natt._fastpath'\).*source tree"):
        nic = natt.Offload()
    assert nic.backend == "reference"
    nic.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        natt.Offload(backend="reference").close()
    monkeypatch.setitem(sys.modules, "natt._fastpath", None)        # import fails: asked by name, an error
    with pytest.raises(ValueError, match="'fast' is not available"):
        natt.Offload(backend="fast")


class _Index:
    """An integer by __index__ only, with the default (identity) hash."""

    def __init__(self, v: int) -> None:
        self.v = v

    def __index__(self) -> int:
        return self.v


@pytest.mark.parametrize("enum_cls", [natt.Status, natt.NdisStatus, natt.UdpEncapType, natt.Operation,
                                      natt.ConfAlgo, natt.IntegrityAlgo])
def test_the_enums_print_their_names_and_stay_their_numbers(enum_cls):
    # Python 3.11's IntEnum prints the number: "add failed: 3221291029" for INVALID_DATA.
    for m in enum_cls:
        assert str(m) == f"{m}" == "%s" % m == m.name
        assert f"{m:d}" == str(int(m)) and int(m) == m.value and m == m.value
        assert json.loads(json.dumps({"v": m})) == {"v": m.value}
    assert np.array(list(enum_cls)).tolist() == [m.value for m in enum_cls]


def test_numpy_and_index_values_are_the_numbers_they_hold(nic):
    # sa_stats handed the caller's handle object to the backend: the reference backend raised
    # TypeError for a 0-d array and KeyError for an __index__ object the check had accepted.
    # esn=np.True_ and max_sas=np.int64 were refused, and messages showed numpy integers as
    # "<int64, not shown>".
    h = nic.add_sa(0x1001, bytes(20), "aes128gcm16", "in", src="192.0.2.1", dst="192.0.2.2", esn=np.True_)
    for handle in (np.array(h), np.int64(h), _Index(h)):
        stats = nic.sa_stats(handle)
        assert stats["handle"] == h and stats["packets"] == 0 and stats["esn"] is True
    with pytest.raises(natt.OffloadError, match=r"^handle: 99 names no SA") as ei:
        nic.sa_stats(np.int64(99))
    assert ei.value.status == natt.NdisStatus.INVALID_PARAMETER
    with natt.Offload(backend=nic.backend, max_sas=np.int64(1), max_parser_entries=np.int32(1)) as small:
        assert (small.max_sas, small.max_parser_entries) == (1, 1) and type(small.max_sas) is int
    with pytest.raises(natt.OffloadError, match=r"esn: expected True or False, got 1"):
        nic.add_sa(0x1002, bytes(20), "aes128gcm16", "in", src="192.0.2.1", dst="192.0.2.2", esn=np.int8(1))

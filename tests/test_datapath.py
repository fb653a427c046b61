"""Data-path semantics (docs/semantics.md §1–§4) through the public API, on every backend.

Packets are built by hand (tests/_packets.py, independent of natt's data paths) so that
each numbered decap step is reached on purpose and produces its status there, not by
accident at a neighbouring step. Expected outputs are computed from scratch.
"""

from __future__ import annotations

import dataclasses
import random
import struct
import typing
from typing import Any, Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import natt
from natt import Status
from natt._suites import SUITES, Suite, suite_for_algos

from _packets import (IPIP, IPV6, NO_NEXT, TCP, UDP, addr, checksum, esp_open, esp_seal, ipv4, ipv6,
                      key_for, l4_checksum, outer, tcp, trailer, udp)

SPI = 0x0000A5F8
PEER = addr("198.51.100.2")          # outer source: the peer as the NAT rewrote it
US = addr("203.0.113.5")             # outer destination: this host
OTHER_HOST = addr("203.0.113.77")
GCM = SUITES["aes128gcm16"]
CBC_SHA1 = SUITES["aes128-sha1"]
ICMP = 1


# --------------------------------------------------------------------------------------- helpers

@dataclasses.dataclass
class Peer:
    """The remote end of one SA: builds the ESP packets it would send."""

    suite: Suite
    key: bytes
    spi: int = SPI
    esn: bool = False
    tunnel: bool = False

    def plain_payload(self, seq: int) -> bytes:
        seg = tcp(f"payload {seq}".encode(), src=PEER, dst=US)
        return ipv4(seg, src=addr("192.168.7.2"), dst=addr("10.9.0.1"), ident=seq & 0xFFFF) if self.tunnel else seg

    def esp(self, seq: int, payload: Optional[bytes] = None, nh: Optional[int] = None, **trailer_kw: Any) -> bytes:
        if payload is None:
            payload = self.plain_payload(seq)
        if nh is None:
            nh = IPIP if self.tunnel else TCP
        return esp_seal(self.suite, self.key, self.spi, seq, trailer(payload, nh, self.suite, **trailer_kw),
                        esn=self.esn)

    def packet(self, seq: int, payload: Optional[bytes] = None, nh: Optional[int] = None, *,
               marker: bytes = b"", dport: int = 4500, dst: int = US, **trailer_kw: Any) -> bytes:
        return outer(self.esp(seq, payload, nh, **trailer_kw), dst=dst, dport=dport, marker=marker)


def add_in(nic: natt.Offload, suite: Suite = GCM, *, spi: int = SPI, seed: int = 1, mode: str = "transport",
           esn: bool = False, **kw: Any) -> tuple[int, Peer]:
    """Install an inbound SA (Pythonic layer) and return its handle and the matching peer."""
    key = key_for(suite, seed)
    if mode == "tunnel":
        kw.setdefault("src", PEER)
        kw.setdefault("dst", US)
    h = nic.add_sa(spi, key, suite.name, "in", mode=mode, esn=esn, **kw)
    return h, Peer(suite, key, spi, esn, mode == "tunnel")


def add_oid(nic: natt.Offload, suite: Suite, key: bytes, *, spi: int = SPI, inbound: bool = True,
            **fields: Any) -> natt.AddUdpEspSa:
    """Install an SA through OID_TCP_TASK_IPSEC_ADD_UDPESP_SA; returns the filled-in request."""
    req = natt.AddUdpEspSa(
        flags=natt.OFFLOAD_INBOUND_SA if inbound else natt.OFFLOAD_OUTBOUND_SA,
        sec_assoc=[natt.OffloadSecurityAssociation(
            natt.Operation.ENCRYPT, spi,
            integrity_algo=natt.AlgoInfo(suite.integ_algo, suite.integ_key_len),
            conf_algo=natt.AlgoInfo(suite.conf_algo, suite.conf_key_len))],
        key_mat=key, **fields)
    assert nic.set_oid(natt.OID_TCP_TASK_IPSEC_ADD_UDPESP_SA, req) == natt.NdisStatus.SUCCESS
    return req


def statuses(res: natt.DecapResult | natt.EncapResult) -> list[Status]:
    return [Status(s) for s in res.status]


def decap1(nic: natt.Offload, packet: bytes) -> tuple[Status, natt.DecapResult]:
    res = nic.decap([packet])
    return Status(res.status[0]), res


def transport_out(received: bytes, nh: int, payload: bytes) -> bytes:
    """What transport decap must emit (semantics §1 "Outputs"), computed from scratch."""
    ihl = (received[0] & 15) * 4
    h = bytearray(received[:ihl])
    h[9] = nh
    h[2:4] = (ihl + len(payload)).to_bytes(2, "big")
    h[10:12] = b"\0\0"
    h[10:12] = checksum(bytes(h)).to_bytes(2, "big")
    return bytes(h) + payload


def stats(nic: natt.Offload, h: int) -> dict[str, Any]:
    return nic.sa_stats(h)


# --------------------------------------------------------------------------------------- step 1–4

class TestOuterHeader:
    """Steps 1–4: IPv4, header consistency, UDP, fragments, parser-entry port."""

    @pytest.fixture
    def rx(self, nic):
        h, peer = add_in(nic)
        return nic, h, peer

    def test_ok_baseline(self, rx):
        nic, h, peer = rx
        p = peer.packet(1)
        s, res = decap1(nic, p)
        assert s is Status.OK and res.sa[0] == h and res.seq[0] == 1 and res.next_header[0] == TCP

    @pytest.mark.parametrize("packet", [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x45" + bytes(18), id="19-octets"),
        pytest.param(ipv6(b"x" * 40, nh=UDP), id="ipv6"),
        pytest.param(ipv4(b"x" * 20, proto=UDP, version=5), id="version-5"),
    ])
    def test_not_ipv4_is_not_esp(self, rx, packet):
        nic = rx[0]
        s, res = decap1(nic, packet)
        assert s is Status.NOT_ESP
        assert res[0] == packet and res.sa[0] == 0 and res.seq[0] == 0 and res.next_header[0] == 0

    def test_malformed_header_step2(self, rx):
        nic, _, peer = rx
        good = peer.packet(1)
        cases = {
            "ihl<5": ipv4(good[20:], proto=UDP, src=PEER, dst=US, ihl=4),
            "tl<ihl*4": ipv4(good[20:], proto=UDP, src=PEER, dst=US, total_length=19),
            "tl>len": ipv4(good[20:], proto=UDP, src=PEER, dst=US, total_length=len(good) + 1),
            "options-past-tl": ipv4(good[20:], proto=UDP, src=PEER, dst=US, options=bytes(8), total_length=24),
        }
        res = nic.decap(list(cases.values()))
        assert statuses(res) == [Status.MALFORMED] * len(cases)
        assert [res[i] for i in range(len(cases))] == list(cases.values())
        assert list(res.sa) == [0] * len(cases)       # no SA consulted, no counter touched
        assert stats(nic, rx[1])["malformed"] == 0

    def test_step2_comes_before_protocol(self, rx):
        # A non-UDP packet with a bad header is MALFORMED (step 2), not NOT_ESP (step 3).
        s, _ = decap1(rx[0], ipv4(b"x" * 30, proto=TCP, ihl=3))
        assert s is Status.MALFORMED

    def test_not_udp_is_not_esp(self, rx):
        nic, _, peer = rx
        p = ipv4(peer.packet(1)[20:], proto=50, src=PEER, dst=US)   # raw ESP: natt only parses UDP
        assert decap1(nic, p)[0] is Status.NOT_ESP

    # offset-4096: only the top bit of the 13-bit fragment offset (RFC 791) set, so a check that
    # masks fewer than 13 bits (or reads only the low octet) misses it.
    @pytest.mark.parametrize("flags,frag", [(1, 0), (0, 1), (0, 0x1FFF), (3, 0), (2, 185), (0, 0x1000),
                                            (0, 0x100)],
                             ids=["MF", "offset-1", "offset-max", "DF+MF", "DF+offset", "offset-4096",
                                  "offset-256"])
    def test_fragment(self, rx, flags, frag):
        nic, h, peer = rx
        p = outer(peer.esp(1), dst=US, flags=flags, frag=frag)
        s, res = decap1(nic, p)
        assert s is Status.FRAGMENT and res[0] == p and res.sa[0] == 0
        # Not processed: seq 1 is still fresh afterwards.
        assert decap1(nic, peer.packet(1))[0] is Status.OK

    @pytest.mark.parametrize("flags", [2, 4, 6], ids=["DF", "reserved", "DF+reserved"])
    def test_df_and_reserved_bits_ignored(self, rx, flags):
        nic, _, peer = rx
        assert decap1(nic, outer(peer.esp(1), dst=US, flags=flags))[0] is Status.OK

    def test_fragment_before_port(self, rx):
        # Step 3 (fragment) is decided before step 4 (port): a fragment to any port is FRAGMENT.
        p = outer(rx[2].esp(1), dst=US, dport=9999, flags=1)
        assert decap1(rx[0], p)[0] is Status.FRAGMENT

    def test_udp_header_incomplete(self, rx):
        p = ipv4(struct.pack("!HHH", 4500, 4500, 7) + b"\0", proto=UDP, src=PEER, dst=US)  # 7 octets of UDP
        s, res = decap1(rx[0], p)
        assert s is Status.MALFORMED and res[0] == p

    @pytest.mark.parametrize("dport", [4501, 9999], ids=["ike-entry", "no-entry"])
    def test_udp_header_incomplete_whatever_the_port(self, nic, dport):
        # Step 4 comes before the port lookup (step 4's end) and the framing (step 5): 7 octets of UDP
        # are MALFORMED even when the UDP length field agrees with them. Seen on an OTHER entry's port
        # this is indistinguishable from an empty RFC 3948 payload (MALFORMED too), so the check is
        # pinned here on an IKE-framing port (an empty payload there would be IKE) and on a port
        # nobody parses (NOT_ESP).
        h, _ = add_in(nic, encap=natt.UdpEncapType.IKE, port=4501)
        p = ipv4(struct.pack("!HHH", 4500, dport, 7) + b"\0", proto=UDP, src=PEER, dst=US)
        s, res = decap1(nic, p)
        assert s is Status.MALFORMED and res[0] == p and res.sa[0] == 0
        assert stats(nic, h)["malformed"] == 0      # rejected before any SA was found

    @pytest.mark.parametrize("delta", [-1, 1, 100])
    def test_udp_length_mismatch(self, rx, delta):
        nic, _, peer = rx
        esp = peer.esp(1)
        p = outer(esp, dst=US, udp_length=8 + len(esp) + delta)
        assert decap1(nic, p)[0] is Status.MALFORMED
        # The length check (step 4) precedes the port check: same result on a port nobody parses.
        assert decap1(nic, outer(esp, dst=US, dport=9999, udp_length=8 + len(esp) + delta))[0] is Status.MALFORMED

    def test_port_without_entry_is_not_esp(self, rx):
        nic, _, peer = rx
        for port in (500, 4501, 1):
            s, res = decap1(nic, peer.packet(1, dport=port))
            assert s is Status.NOT_ESP and res.seq[0] == 0
        assert decap1(nic, peer.packet(1))[0] is Status.OK

    def test_udp_checksum_not_verified(self, rx):
        nic, _, peer = rx
        p = bytearray(peer.packet(1))
        p[26:28] = b"\xde\xad"              # a wrong non-zero UDP checksum (RFC 3948 §2.1: not relied on)
        assert decap1(nic, bytes(p))[0] is Status.OK

    def test_link_padding_ignored(self, rx):
        nic, _, peer = rx
        p = peer.packet(1)
        s, res = decap1(nic, p + b"\xaa" * 9)
        assert s is Status.OK
        assert res[0] == transport_out(p, TCP, peer.plain_payload(1))

    def test_link_padding_kept_when_passed_up(self, rx):
        nic, _, peer = rx
        p = peer.packet(1, dport=9999) + b"\xaa" * 9
        s, res = decap1(nic, p)
        assert s is Status.NOT_ESP and res[0] == p and res.lengths[0] == len(p)


# --------------------------------------------------------------------------------------- step 5

class TestFraming:
    """Step 5: what follows the UDP header, for both parser-entry types."""

    @pytest.fixture
    def rx(self, nic):
        h_other, peer = add_in(nic)                                      # OTHER on 4500
        h_ike, _ = add_in(nic, encap=natt.UdpEncapType.IKE, port=4501)   # IKE framing on 4501, same key
        return nic, h_other, h_ike, peer

    @pytest.mark.parametrize("payload,expected", [
        (b"\xff", Status.KEEPALIVE),
        (b"\0\0\0\0", Status.IKE),
        (b"\0\0\0\0" + bytes.fromhex("0011223344556677") + bytes(20), Status.IKE),
        (b"", Status.MALFORMED),
        (b"\x01", Status.MALFORMED),
        (b"\xff\xff", Status.MALFORMED),
        (b"\xff\xff\xff", Status.MALFORMED),
        (b"\0\0\xa5\xf8\0\0\0", Status.MALFORMED),     # 7 octets: no whole SPI + sequence number
    ], ids=["keepalive", "ike-marker-only", "ike", "empty", "one-octet", "two-octets", "three-octets",
            "seven-octets"])
    def test_other(self, rx, payload, expected):
        nic, h, _, _ = rx
        p = outer(payload, dst=US)
        s, res = decap1(nic, p)
        assert s is expected and res[0] == p and res.sa[0] == 0 and res.seq[0] == 0
        assert stats(nic, h)["malformed"] == 0      # rejected before any SA was found

    def test_other_esp_starts_at_udp_payload(self, rx):
        nic, h, _, peer = rx
        assert decap1(nic, peer.packet(7))[0] is Status.OK

    def test_ike_framing_esp_after_marker(self, rx):
        nic, _, h_ike, peer = rx
        s, res = decap1(nic, peer.packet(3, dport=4501, marker=bytes(8)))
        assert s is Status.OK and res.sa[0] == h_ike and res.seq[0] == 3

    @pytest.mark.parametrize("payload,expected", [
        (b"\xff", Status.KEEPALIVE),
        (b"", Status.IKE),
        (b"\x00", Status.IKE),
        (bytes(16), Status.IKE),                     # marker + 8 octets: not "more than 16"
        (bytes(8) + b"\xff" * 8, Status.IKE),
        (bytes.fromhex("0011223344556677") + bytes(40), Status.IKE),   # an IKE header: no marker
        (bytes(4) + b"\x11" * 40, Status.IKE),       # the RFC 3948 marker means nothing here
    ], ids=["keepalive", "empty", "zero-octet", "marker+8", "marker+8-nonzero", "ike-header", "4-zero"])
    def test_ike_framing(self, rx, payload, expected):
        nic = rx[0]
        p = outer(payload, dst=US, dport=4501)
        s, res = decap1(nic, p)
        assert s is expected and res[0] == p and res.sa[0] == 0

    def test_ike_framing_without_marker_is_ike(self, rx):
        nic, _, _, peer = rx
        assert decap1(nic, peer.packet(1, dport=4501))[0] is Status.IKE

    def test_ike_framing_short_esp_after_marker(self, rx):
        # 17 octets: marker + 9 octets of "ESP" with our SPI -> SA found, then step 7 MALFORMED.
        nic, _, h_ike, _ = rx
        s, res = decap1(nic, outer(bytes(8) + struct.pack("!II", SPI, 4) + b"\x01", dst=US, dport=4501))
        assert s is Status.MALFORMED and res.sa[0] == h_ike and res.seq[0] == 4
        assert stats(nic, h_ike)["malformed"] == 1


# --------------------------------------------------------------------------------------- step 6

class TestLookup:
    def test_unknown_spi(self, nic):
        _, peer = add_in(nic)
        stranger = dataclasses.replace(peer, spi=SPI + 1)
        s, res = decap1(nic, stranger.packet(77))
        assert s is Status.NO_SA and res.sa[0] == 0 and res.seq[0] == 77 and res.next_header[0] == 0

    def test_wrong_destination(self, nic):
        h, peer = add_in(nic, dst=US)       # transport SA restricted to one destination
        s, res = decap1(nic, peer.packet(1, dst=OTHER_HOST))
        assert s is Status.NO_SA and res.sa[0] == 0 and res.seq[0] == 1
        assert decap1(nic, peer.packet(1))[0] is Status.OK

    def test_tunnel_sa_matches_tunnel_destination(self, nic):
        h, peer = add_in(nic, mode="tunnel", src=PEER, dst=US)
        assert decap1(nic, peer.packet(1, dst=OTHER_HOST))[0] is Status.NO_SA
        # The outer source is not matched (a NAT rewrites it, RFC 3948 §5).
        p = outer(peer.esp(1), src=addr("100.64.9.9"), dst=US)
        s, res = decap1(nic, p)
        assert s is Status.OK and res.sa[0] == h

    def test_most_specific_mask_wins(self, nic):
        k_any, k_net, k_host = key_for(GCM, 1), key_for(GCM, 2), key_for(GCM, 3)
        # Installed least specific first, so insertion order cannot explain the result.
        h_any = add_oid(nic, GCM, k_any).offload_handle
        h_net = add_oid(nic, GCM, k_net, dst_addr=US, dst_mask=addr("255.255.255.0")).offload_handle
        h_host = add_oid(nic, GCM, k_host, dst_addr=US, dst_mask=0xFFFFFFFF).offload_handle
        p_host = Peer(GCM, k_host).packet(1, dst=US)
        p_net = Peer(GCM, k_net).packet(1, dst=OTHER_HOST)             # same /24, other host
        p_any = Peer(GCM, k_any).packet(1, dst=addr("192.0.2.200"))
        res = nic.decap([p_host, p_net, p_any])
        assert statuses(res) == [Status.OK] * 3
        assert list(res.sa) == [h_host, h_net, h_any]
        # The /32 SA's key on a packet for another host reaches the /24 SA: its tag fails there.
        s, res = decap1(nic, Peer(GCM, k_host).packet(2, dst=OTHER_HOST))
        assert s is Status.AUTH_FAILED and res.sa[0] == h_net

    def test_most_specific_mask_wins_whatever_the_insertion_order(self, nic):
        # Semantics §1 step 6: the longest matching mask wins, not the first match found. The
        # test above installs the least specific SA first; a table that prepends to its chain
        # would then meet the most specific first and pass with a first-match walk. Installed
        # most specific first here, so such a walk would pick the 0/0 SA for every packet.
        k_any, k_net, k_host = key_for(GCM, 1), key_for(GCM, 2), key_for(GCM, 3)
        h_host = add_oid(nic, GCM, k_host, dst_addr=US, dst_mask=0xFFFFFFFF).offload_handle
        h_net = add_oid(nic, GCM, k_net, dst_addr=US, dst_mask=addr("255.255.255.0")).offload_handle
        h_any = add_oid(nic, GCM, k_any).offload_handle
        res = nic.decap([Peer(GCM, k_host).packet(1, dst=US), Peer(GCM, k_net).packet(1, dst=OTHER_HOST),
                         Peer(GCM, k_any).packet(1, dst=addr("192.0.2.200"))])
        assert statuses(res) == [Status.OK] * 3
        assert list(res.sa) == [h_host, h_net, h_any]

    def test_spi_is_per_parser_entry(self, nic):
        h1, p1 = add_in(nic, port=4500, seed=1)
        h2, p2 = add_in(nic, port=4501, seed=2)          # same SPI, other entry, other key
        h3, p3 = add_in(nic, port=4502, spi=SPI + 9)     # an entry that does not know SPI
        res = nic.decap([p1.packet(1), p2.packet(1, dport=4501), p1.packet(2, dport=4502)])
        assert statuses(res) == [Status.OK, Status.OK, Status.NO_SA]
        assert list(res.sa) == [h1, h2, 0]

    def test_spi_is_per_parser_entry_across_many_entries(self, backend):
        # Semantics §1 step 6: the lookup key is (parser entry, SPI); an SA of another entry with
        # the same SPI is never a match. With three entries (above) an implementation that keys
        # its table on (entry, SPI) but compares only the SPI within a hash chain still passes;
        # 200 entries sharing two SPIs put several such SAs into one chain. Each entry's own SA
        # must be found (right handle, its key authenticates), and the SPI an entry does not
        # have must be NO_SA even though a neighbouring entry has it.
        n = 200
        with natt.Offload(backend=backend, max_parser_entries=n) as nic:
            sas = []
            for k in range(n):
                spi = SPI + (k & 1)
                key = key_for(GCM, k + 1)
                h = nic.add_sa(spi, key, GCM.name, "in", mode="transport", port=5000 + k)
                sas.append((5000 + k, h, Peer(GCM, key, spi)))
            packets = [peer.packet(1, dport=port) for port, _, peer in sas]
            packets += [sas[(k + 1) % n][2].packet(2, dport=port) for k, (port, _, _) in enumerate(sas)]
            res = nic.decap(packets)
            assert statuses(res) == [Status.OK] * n + [Status.NO_SA] * n
            assert list(res.sa) == [h for _, h, _ in sas] + [0] * n

    def test_deleted_sa_is_no_sa_and_entry_goes_with_last_sa(self, nic):
        h, peer = add_in(nic)
        assert decap1(nic, peer.packet(1))[0] is Status.OK
        nic.delete_sa(h)
        # The Pythonic delete removes the entry with its last SA: the port is no longer parsed.
        assert decap1(nic, peer.packet(2))[0] is Status.NOT_ESP

    def test_entry_kept_by_oid_delete(self, nic):
        req = add_oid(nic, GCM, key_for(GCM))
        assert nic.set_oid(natt.OID_TCP_TASK_IPSEC_DELETE_UDPESP_SA,
                           natt.DeleteUdpEspSa(req.offload_handle, 0)) == natt.NdisStatus.SUCCESS
        res = nic.decap([Peer(GCM, key_for(GCM)).packet(1), outer(b"\xff", dst=US), outer(bytes(30), dst=US)])
        assert statuses(res) == [Status.NO_SA, Status.KEEPALIVE, Status.IKE]


# --------------------------------------------------------------------------------------- step 7

class TestLengths:
    @pytest.mark.parametrize("name", ["aes128gcm16", "aes128gcm8", "aes128-sha1", "3des-md5", "null-sha256",
                                      "chacha20poly1305", "aes256gmac"])
    def test_too_short_for_iv_icv_trailer(self, nic, name):
        s_ = SUITES[name]
        h, peer = add_in(nic, s_)
        need = 8 + s_.iv_len + s_.icv_len + 2
        esp = struct.pack("!II", SPI, 5) + bytes(need - 9)
        s, res = decap1(nic, outer(esp, dst=US))
        assert s is Status.MALFORMED and res.sa[0] == h and res.seq[0] == 5 and res.next_header[0] == 0
        assert stats(nic, h)["malformed"] == 1
        # Exactly the minimum length gets past step 7 (and fails later, on the ICV).
        # The shortest packet that passes step 7 (a CBC ciphertext needs one whole block) fails
        # later, on the ICV.
        shortest = 8 + s_.iv_len + s_.icv_len + max(2, s_.block_size)
        s, res = decap1(nic, outer(struct.pack("!II", SPI, 5) + bytes(shortest - 8), dst=US))
        assert s is Status.AUTH_FAILED

    @pytest.mark.parametrize("name,extra", [("aes128-sha1", 1), ("aes128-sha1", 15), ("3des-sha1", 4)])
    def test_cbc_partial_block(self, nic, name, extra):
        s_ = SUITES[name]
        h, peer = add_in(nic, s_)
        esp = peer.esp(1)
        body_end = len(esp) - s_.icv_len
        bad = esp[:body_end] + bytes(extra) + esp[body_end:]
        s, res = decap1(nic, outer(bad, dst=US))
        assert s is Status.MALFORMED and res.sa[0] == h and res.seq[0] == 1
        assert decap1(nic, outer(esp, dst=US))[0] is Status.OK   # seq 1 was not consumed

    def test_stream_suites_have_no_alignment(self, nic):
        # Block 1 (GCM, ChaCha20, NULL): an odd-length ciphertext is fine (trailer padding only to 4).
        for name, seed in (("aes128gcm16", 1), ("null-sha1", 2), ("chacha20poly1305", 3)):
            s_ = SUITES[name]
            h, peer = add_in(nic, s_, spi=SPI + seed, seed=seed)
            esp = peer.esp(1, payload=b"abc", pad=b"")            # 3 + 2 octets of plaintext
            assert decap1(nic, outer(esp, dst=US))[0] is Status.OK, name

    def test_length_check_precedes_replay(self, nic):
        h, _ = add_in(nic)
        # seq 0 would be a replay (step 8), but the packet is too short (step 7) first.
        assert decap1(nic, outer(struct.pack("!II", SPI, 0) + bytes(10), dst=US))[0] is Status.MALFORMED


# --------------------------------------------------------------------------------------- step 8–9

class TestReplayAndIntegrity:
    def test_duplicate(self, nic):
        h, peer = add_in(nic)
        p = peer.packet(5)
        assert statuses(nic.decap([p, p])) == [Status.OK, Status.REPLAY]
        assert statuses(nic.decap([p])) == [Status.REPLAY]
        st_ = stats(nic, h)
        assert st_["replays"] == 2 and st_["packets"] == 1 and st_["replay_seq"] == 5

    def test_seq_zero(self, nic):
        h, peer = add_in(nic)
        s, res = decap1(nic, peer.packet(0))
        assert s is Status.REPLAY and res.seq[0] == 0 and res.sa[0] == h

    def test_initial_replay_seq_counts_as_seen(self, nic):
        h, peer = add_in(nic, replay_seq=1000)
        res = nic.decap([peer.packet(n) for n in (1000, 937, 1001, 999, 936, 500)])
        assert statuses(res) == [Status.REPLAY, Status.REPLAY, Status.OK, Status.REPLAY, Status.REPLAY,
                                 Status.REPLAY]

    def test_replay_check_before_icv(self, nic):
        h, peer = add_in(nic)
        p = peer.packet(5)
        assert decap1(nic, p)[0] is Status.OK
        forged = p[:-1] + bytes([p[-1] ^ 1])
        assert decap1(nic, forged)[0] is Status.REPLAY          # step 8 decides before the tag
        assert stats(nic, h)["auth_failures"] == 0

    @pytest.mark.parametrize("name", ["aes128gcm16", "aes256gcm8", "aes128-sha1", "aes256-sha512", "3des-md5",
                                      "null-sha256", "chacha20poly1305", "aes128gmac"])
    @pytest.mark.parametrize("where", ["icv", "body", "seq", "iv"])
    def test_auth_failed(self, nic, name, where):
        s_ = SUITES[name]
        h, peer = add_in(nic, s_)
        esp = bytearray(peer.esp(9))
        pos = {"icv": len(esp) - 1, "body": len(esp) - s_.icv_len - 3, "seq": 7, "iv": 8}[where]
        if where == "iv" and s_.iv_len == 0:
            pos = 8                                                # NULL: the first payload octet
        esp[pos] ^= 0x40
        p = outer(bytes(esp), dst=US)
        seq = 9 ^ 0x40 if where == "seq" else 9
        s, res = decap1(nic, p)
        assert s is Status.AUTH_FAILED and res[0] == p and res.sa[0] == h and res.seq[0] == seq
        assert res.next_header[0] == 0
        # The window did not move: the genuine packet is still accepted.
        assert decap1(nic, peer.packet(9))[0] is Status.OK
        st_ = stats(nic, h)
        assert st_["auth_failures"] == 1 and st_["packets"] == 1

    def test_window_zero_no_check(self, nic):
        h, peer = add_in(nic, replay_window=0)
        p = peer.packet(5)
        res = nic.decap([p, p, peer.packet(0), peer.packet(3)])
        assert statuses(res) == [Status.OK] * 4
        assert list(res.seq) == [5, 5, 0, 3]
        assert stats(nic, h)["replay_seq"] == 5                   # highest authenticated
        forged = p[:-1] + bytes([p[-1] ^ 1])
        assert decap1(nic, forged)[0] is Status.AUTH_FAILED        # integrity still checked

    def test_late_packets_in_window(self, nic):
        h, peer = add_in(nic)                                     # W = 64
        res = nic.decap([peer.packet(n) for n in (100, 50, 99, 37, 36, 50, 101, 38, 37)])
        assert statuses(res) == [Status.OK, Status.OK, Status.OK, Status.OK, Status.REPLAY, Status.REPLAY,
                                 Status.OK, Status.OK, Status.REPLAY]
        assert stats(nic, h)["replay_seq"] == 101

    @pytest.mark.parametrize("window", [32, 64, 1000, 65536])
    @pytest.mark.parametrize("esn", [False, True], ids=["32bit", "esn"])
    def test_window_edges(self, nic, window, esn):
        base = (3 << 32 | 10**6) if esn else 10**6
        h, peer = add_in(nic, replay_window=window, esn=esn, replay_seq=base)
        w = window
        seqs = [base, base - w + 1, base - w,     # all seen initially (the bitmap starts full)
                base + w,                         # slide by exactly W: every old bit leaves
                base, base + 1, base + 1,         # left edge: base is out, base+1 is the new leftmost
                base + w - 1, base + w,           # rightmost unseen, then the top itself
                base + 2 * w - 1,                 # slide by W-1: the old top stays at the left edge
                base + w, base + w - 1, base + w + 1]
        R, OK = Status.REPLAY, Status.OK
        # Left of the window (indices 2, 4, 11): REPLAY without ESN. With ESN, RFC 4303 Appendix A
        # places such a seql in the *next* 2**32 epoch, so the ICV (sealed with the old high half)
        # fails instead, and res.seq shows the inferred number.
        left = R if not esn else Status.AUTH_FAILED
        expect = [R, R, left, OK, left, OK, R, OK, R, OK, R, left, OK]
        inferred = [n + (2**32 if esn and i in (2, 4, 11) else 0) for i, n in enumerate(seqs)]
        res = nic.decap([peer.packet(n) for n in seqs])
        assert statuses(res) == expect
        assert [int(x) for x in res.seq] == inferred
        st_ = stats(nic, h)
        assert st_["replay_seq"] == base + 2 * w - 1
        assert st_["replays"] == expect.count(Status.REPLAY)

    def test_big_jump_clears_window(self, nic):
        h, peer = add_in(nic, replay_window=1000)
        res = nic.decap([peer.packet(n) for n in (10, 2**31, 10, 2**31 - 999, 2**31 - 1000)])
        assert statuses(res) == [Status.OK, Status.OK, Status.REPLAY, Status.OK, Status.REPLAY]


class TestEsn:
    def test_crossing_2_32(self, nic):
        base = 2**32 - 10
        h, peer = add_in(nic, esn=True, replay_seq=base)
        seqs = [2**32 - 5, 2**32 + 3, 2**32 - 4, 2**32, 2**32 - 5, 2**32 + 3, 2**32 + 70, 2**32 + 7]
        res = nic.decap([peer.packet(n) for n in seqs])
        assert statuses(res) == [Status.OK, Status.OK, Status.OK, Status.OK, Status.REPLAY, Status.REPLAY,
                                 Status.OK, Status.OK]
        assert [int(x) for x in res.seq] == seqs          # the inferred 64-bit numbers
        assert stats(nic, h)["replay_seq"] == 2**32 + 70
        # Top 2**32 + 70 (case A): seql 6 = Tl - W is inferred into the next epoch, so the
        # packet sealed with seq_hi 1 fails its tag there.
        s, res = decap1(nic, peer.packet(2**32 + 6))
        assert s is Status.AUTH_FAILED and res.seq[0] == 2**33 + 6

    def test_wire_carries_low_half_only(self, nic):
        h, peer = add_in(nic, esn=True, replay_seq=(5 << 32) + 100)
        p = peer.packet((5 << 32) + 200)
        assert p[28 + 4:28 + 8] == (200).to_bytes(4, "big")
        s, res = decap1(nic, p)
        assert s is Status.OK and res.seq[0] == (5 << 32) + 200

    def test_wrong_high_bits_fail_auth(self, nic):
        h, peer = add_in(nic, esn=True, replay_seq=(1 << 32) + 100)
        p = peer.packet(200)               # sealed with seq_hi 0; the receiver infers 1
        s, res = decap1(nic, p)
        assert s is Status.AUTH_FAILED and res.seq[0] == (1 << 32) + 200

    def test_wrong_high_bits_hmac(self, nic):
        h, peer = add_in(nic, SUITES["aes256-sha256"], esn=True, replay_seq=(7 << 32) + 100)
        assert decap1(nic, peer.packet((6 << 32) + 200))[0] is Status.AUTH_FAILED
        assert decap1(nic, peer.packet((7 << 32) + 200))[0] is Status.OK

    def test_below_zero(self, nic):
        h, peer = add_in(nic, esn=True, replay_seq=5)
        seql = 2**32 - 16                  # case B: would be seq_hi = -1
        s, res = decap1(nic, peer.packet(seql))
        assert s is Status.REPLAY and res.seq[0] == seql and res.sa[0] == h
        assert stats(nic, h)["replays"] == 1

    def test_case_b_boundary_at_start(self, nic):
        # T = 0, W = 64: seql >= 2**32 - 63 infers seq_hi = -1 (replay); one below is a new number.
        h, peer = add_in(nic, esn=True)
        res = nic.decap([peer.packet(2**32 - 63), peer.packet(2**32 - 64)])
        assert statuses(res) == [Status.REPLAY, Status.OK]
        assert list(res.seq) == [2**32 - 63, 2**32 - 64]

    def test_case_b_late_packet_from_previous_epoch(self, nic):
        h, peer = add_in(nic, esn=True, replay_seq=2**33 - 100)
        # First move the top just past 2**33 (Tl = 10 < W - 1: case B from then on), then a late
        # packet of the previous epoch, an unseen one of the new epoch, a duplicate, a new top.
        seqs = [2**33 + 10, 2**33 - 20, 2**33 + 5, 2**33 - 20, 2**33 + 11]
        res = nic.decap([peer.packet(n) for n in seqs])
        assert statuses(res) == [Status.OK, Status.OK, Status.OK, Status.REPLAY, Status.OK]
        assert [int(x) for x in res.seq] == seqs

    def test_top_of_64_bit_space(self, nic):
        h, peer = add_in(nic, esn=True, replay_seq=2**64 - 1)
        # Every number is seen or would need seq_hi = 2**32: REPLAY, never a wrapped acceptance.
        res = nic.decap([peer.packet(2**64 - 1), peer.packet(2**64 - 64), peer.packet(5)])
        assert statuses(res) == [Status.REPLAY] * 3
        # Decision (reported for semantics §3): an unrepresentable number reports seql, as "below 0" does.
        assert [int(x) for x in res.seq] == [2**64 - 1, 2**64 - 64, 5]


class TestEsnResync:
    """RFC 4303 Appendix A3 (semantics §3): after 2**32 or more lost packets Appendix A infers a
    seq_hi too small and every packet fails; every ESN_RESYNC_TRIGGER-th consecutive failure is
    retried with the ESN_RESYNC_LIMIT seq_hi values above the inferred one."""

    TRIGGER, LIMIT = 64, 4          # natt._backend's values, fixed here so that a change shows
    T = (5 << 32) + 1000            # the receiver's top before the outage

    def test_constants(self):
        from natt._backend import ESN_RESYNC_LIMIT, ESN_RESYNC_TRIGGER
        assert (ESN_RESYNC_TRIGGER, ESN_RESYNC_LIMIT) == (self.TRIGGER, self.LIMIT)

    @pytest.mark.parametrize("suite", ["aes128gcm16", "aes256-sha256", "chacha20poly1305", "aes128gmac",
                                       "null-sha1", "aes192gcm8"])
    @pytest.mark.parametrize("threads", [None, 2])
    def test_the_trigger_th_failure_resynchronises(self, nic, suite, threads):
        h, peer = add_in(nic, SUITES[suite], esn=True, replay_seq=self.T, mode="tunnel")
        # 300 packets before the outage (so that threads=2 splits the batch), then the sender's
        # numbers 2**32 + 1000 further on: seql 2000.. is inferred into epoch 5, sealed in epoch 6.
        before = [self.T + 1 + k for k in range(300)]
        after = [(6 << 32) + 2000 + k for k in range(self.TRIGGER + 40)]
        packets = [peer.packet(n) for n in before + after]
        res = nic.decap(packets, threads=threads)
        nf = self.TRIGGER - 1
        assert statuses(res) == [Status.OK] * 300 + [Status.AUTH_FAILED] * nf + [Status.OK] * 41
        # The failed ones report the inferred number, the resynchronised one its real number.
        assert [int(x) for x in res.seq] == before + [n - (1 << 32) for n in after[:nf]] + after[nf:]
        assert [res[300 + nf + k] for k in range(41)] == [peer.plain_payload(n) for n in after[nf:]]
        st_ = stats(nic, h)
        assert (st_["auth_failures"], st_["esn_resyncs"], st_["packets"]) == (nf, 1, 300 + 41)
        assert st_["replay_seq"] == after[-1]
        # The window now is epoch 6's: the accepted numbers are replays, a failed one inside
        # the window was never accepted, and one left of it is inferred into epoch 7 (Appendix A).
        res2 = nic.decap([peer.packet(n) for n in (after[nf], after[-1], after[nf - 1], after[0], after[-1] + 1)])
        assert statuses(res2) == [Status.REPLAY, Status.REPLAY, Status.OK, Status.AUTH_FAILED, Status.OK]

    def test_an_authenticated_packet_restarts_the_count(self, nic):
        h, peer = add_in(nic, esn=True, replay_seq=self.T)
        lost = [(6 << 32) + 2000 + k for k in range(2 * self.TRIGGER)]
        # 40 failures, a late packet of the old epoch (authenticates: the run restarts), then the
        # failures count from 1 again: the retry comes at the TRIGGER-th after it.
        packets = [peer.packet(n) for n in lost[:40]] + [peer.packet(self.T + 1)] + \
            [peer.packet(n) for n in lost[40:40 + self.TRIGGER]]
        res = nic.decap(packets)
        assert statuses(res) == [Status.AUTH_FAILED] * 40 + [Status.OK] + \
            [Status.AUTH_FAILED] * (self.TRIGGER - 1) + [Status.OK]
        assert stats(nic, h)["esn_resyncs"] == 1 and res.seq[-1] == lost[40 + self.TRIGGER - 1]

    def test_a_forged_packet_at_the_trigger_defers_the_retry(self, nic):
        h, peer = add_in(nic, esn=True, replay_seq=self.T)
        lost = [(6 << 32) + 2000 + k for k in range(2 * self.TRIGGER)]
        packets = [peer.packet(n) for n in lost]
        forged = bytearray(packets[self.TRIGGER - 1])
        forged[-1] ^= 1                                   # its ICV: no seq_hi makes it verify
        packets[self.TRIGGER - 1] = bytes(forged)
        res = nic.decap(packets)
        assert statuses(res) == [Status.AUTH_FAILED] * (2 * self.TRIGGER - 1) + [Status.OK]
        st_ = stats(nic, h)
        assert (st_["auth_failures"], st_["esn_resyncs"]) == (2 * self.TRIGGER - 1, 1)

    @pytest.mark.parametrize("epochs,found", [(4, True), (5, False)])
    def test_the_retries_stop_at_the_limit(self, nic, epochs, found):
        h, peer = add_in(nic, esn=True, replay_seq=self.T)
        res = nic.decap([peer.packet(((5 + epochs) << 32) + 2000 + k) for k in range(self.TRIGGER)])
        last = Status.OK if found else Status.AUTH_FAILED
        assert statuses(res) == [Status.AUTH_FAILED] * (self.TRIGGER - 1) + [last]
        assert stats(nic, h)["esn_resyncs"] == int(found)
        assert stats(nic, h)["replay_seq"] == (((5 + epochs) << 32) + 2000 + self.TRIGGER - 1 if found else self.T)

    def test_the_count_runs_across_batches(self, nic):
        h, peer = add_in(nic, esn=True, replay_seq=self.T)
        packets = [peer.packet((6 << 32) + 2000 + k) for k in range(self.TRIGGER + 1)]
        got = [Status(s) for k in range(0, len(packets), 5) for s in nic.decap(packets[k:k + 5]).status]
        assert got == [Status.AUTH_FAILED] * (self.TRIGGER - 1) + [Status.OK, Status.OK]

    def test_the_count_is_32_bits_and_wraps(self, nic):
        # sa_stats' replay_fail_run is a 32-bit count on both backends: 2**32 - 1 failures in a
        # row, then one more gives 0, a multiple of the trigger, so that packet is retried.
        h, peer = add_in(nic, esn=True, replay_seq=self.T, replay_fail_run=2**32 - 2)
        lost = [peer.packet((6 << 32) + 2000 + k) for k in range(2)]
        s, _ = decap1(nic, lost[0])
        assert s is Status.AUTH_FAILED and stats(nic, h)["replay_fail_run"] == 2**32 - 1
        s, res = decap1(nic, lost[1])
        assert s is Status.OK and res.seq[0] == (6 << 32) + 2001
        assert stats(nic, h)["replay_fail_run"] == 0 and stats(nic, h)["esn_resyncs"] == 1
        # A failure no retry saves leaves the wrapped count, 0, not 2**32.
        h2, peer2 = add_in(nic, esn=True, replay_seq=self.T, replay_fail_run=2**32 - 1, spi=SPI + 1)
        forged = bytearray(peer2.packet(self.T + 1))
        forged[-1] ^= 1
        assert decap1(nic, bytes(forged))[0] is Status.AUTH_FAILED
        assert stats(nic, h2)["replay_fail_run"] == 0 and stats(nic, h2)["esn_resyncs"] == 0

    def test_no_retry_wraps_past_the_last_epoch(self, nic):
        # T in the last epoch: seq_hi + 1 does not exist, so nothing is retried (a wrap to 0
        # would retry numbers below T).
        top = ((2**32 - 1) << 32) + 1000
        h, peer = add_in(nic, esn=True, replay_seq=top)
        res = nic.decap([peer.packet(2000 + k) for k in range(self.TRIGGER)])
        assert statuses(res) == [Status.AUTH_FAILED] * self.TRIGGER
        assert stats(nic, h)["esn_resyncs"] == 0 and stats(nic, h)["replay_seq"] == top
        # One epoch below the last, the retry reaches the last epoch and stops there.
        h2, peer2 = add_in(nic, esn=True, replay_seq=top - (1 << 32), spi=SPI + 1)
        res = nic.decap([peer2.packet(top + 1000 + k) for k in range(self.TRIGGER)])
        assert statuses(res) == [Status.AUTH_FAILED] * (self.TRIGGER - 1) + [Status.OK]
        assert res.seq[-1] == top + 1000 + self.TRIGGER - 1


# --------------------------------------------------------------------------------------- step 10–12

class TestTrailer:
    def test_pad_len_too_long(self, nic):
        h, peer = add_in(nic)
        payload = b"abcdef"
        s, res = decap1(nic, peer.packet(1, payload=payload, nh=TCP, pad=b"", pad_len=len(payload) + 1))
        assert s is Status.MALFORMED and res.next_header[0] == TCP and res.sa[0] == h and res.seq[0] == 1
        assert stats(nic, h)["malformed"] == 1

    def test_pad_len_exactly_all(self, nic):
        h, peer = add_in(nic)
        p = peer.packet(1, payload=b"", nh=ICMP, pad=bytes(range(1, 7)))
        s, res = decap1(nic, p)
        assert s is Status.OK and res[0] == transport_out(p, ICMP, b"")

    @pytest.mark.parametrize("mode", ["transport", "tunnel"])
    def test_pad_len_one_past_all_whatever_precedes_the_plaintext(self, nic, mode):
        # RFC 4303 §2.4: Pad Length counts padding octets *inside* the ciphertext, which ends
        # with Pad Length and Next Header, so pad_len <= len(ciphertext) - 2. Here pad_len is
        # len - 1 and the plaintext is 02 03 | 03 | nh: a padding check that starts one octet
        # early, on the octet before the decrypted plaintext in the output buffer, would see the
        # default run 1, 2, 3 if that octet is 1. The out buffer is reused so that it is: octet
        # 19 of the slot in transport mode (where the IP header goes later), the octet before
        # slot 1 in tunnel mode (the tail of slot 0, which an OK packet 0 leaves as it was).
        h, peer = add_in(nic, mode=mode)
        bad = peer.packet(2, payload=b"", nh=TCP, pad=b"\x02\x03", pad_len=3)
        out = nic.decap([outer(b"\x01" * 400, dst=addr("192.0.2.1"), dport=9999)])
        assert statuses(out) == [Status.NOT_ESP] and out[0][19] == 1
        if mode == "transport":
            res = nic.decap([bad], out=out)
            k = 0
        else:
            res = nic.decap([peer.packet(1), bad], out=out)
            assert res.data[res.offsets[1] - 1] == 1            # the scenario: a 1 before slot 1
            k = 1
        assert statuses(res)[:k] == [Status.OK] * k
        assert statuses(res)[k] is Status.MALFORMED and res[k] == bad and res.next_header[k] == TCP
        st_ = stats(nic, h)
        assert (st_["malformed"], st_["packets"], st_["replay_seq"]) == (1, k, 2)

    @pytest.mark.parametrize("pad", [b"\0\0", b"\x01\x03", b"\x02\x01", b"\x01\x02\x03\x05", b"\xff"])
    def test_bad_pad_octets(self, nic, pad):
        h, peer = add_in(nic)
        p = peer.packet(1, payload=b"xyz", nh=UDP, pad=pad)
        s, res = decap1(nic, p)
        assert s is Status.MALFORMED and res[0] == p and res.next_header[0] == UDP

    def test_window_moves_after_icv_even_if_padding_bad(self, nic):
        h, peer = add_in(nic)
        bad = peer.packet(1, pad=b"\x07")
        assert statuses(nic.decap([bad, peer.packet(1)])) == [Status.MALFORMED, Status.REPLAY]
        assert stats(nic, h)["replay_seq"] == 1

    @pytest.mark.parametrize("name", ["aes128-sha256", "3des-sha1"])
    def test_cbc_padding(self, nic, name):
        s_ = SUITES[name]
        h, peer = add_in(nic, s_)
        # A non-default but block-aligned padding run is MALFORMED; the default run is OK.
        payload = b"q" * 10
        n = -(len(payload) + 2) % s_.block_size
        wrong = bytes(range(2, n + 2))
        assert decap1(nic, peer.packet(1, payload=payload, nh=UDP, pad=wrong))[0] is Status.MALFORMED
        assert decap1(nic, peer.packet(2, payload=payload, nh=UDP))[0] is Status.OK

    def test_dummy(self, nic):
        h, peer = add_in(nic)
        s, res = decap1(nic, peer.packet(3, payload=b"\x99" * 30, nh=NO_NEXT))
        assert s is Status.DUMMY and res.lengths[0] == 0 and res[0] == b""
        assert res.next_header[0] == NO_NEXT and res.sa[0] == h and res.seq[0] == 3
        st_ = stats(nic, h)
        assert (st_["dummy"], st_["packets"], st_["bytes"]) == (1, 1, 0)
        assert decap1(nic, peer.packet(3))[0] is Status.REPLAY      # the window moved

    def test_dummy_on_tunnel(self, nic):
        h, peer = add_in(nic, mode="tunnel")
        assert decap1(nic, peer.packet(3, payload=b"", nh=NO_NEXT))[0] is Status.DUMMY

    @pytest.mark.parametrize("nh", [TCP, UDP, ICMP, 0, 50, 255])
    def test_tunnel_protocol(self, nic, nh):
        h, peer = add_in(nic, mode="tunnel")
        p = peer.packet(4, nh=nh)
        s, res = decap1(nic, p)
        assert s is Status.PROTOCOL and res[0] == p and res.next_header[0] == nh and res.sa[0] == h
        assert stats(nic, h)["protocol"] == 1
        assert decap1(nic, peer.packet(4))[0] is Status.REPLAY      # verified: the window moved

    def test_transport_takes_any_next_header(self, nic):
        h, peer = add_in(nic)
        res = nic.decap([peer.packet(n + 1, payload=b"inner", nh=nh) for n, nh in enumerate((IPIP, IPV6, 0, 200))])
        assert statuses(res) == [Status.OK] * 4
        assert list(res.next_header) == [IPIP, IPV6, 0, 200]


# --------------------------------------------------------------------------------------- outputs

class TestOutputs:
    def test_transport_header_fields_kept(self, nic):
        h, peer = add_in(nic)
        options = b"\x94\x04\0\0" + b"\x01\x01\x01\x00"       # router alert, NOPs, end of list
        payload = peer.plain_payload(1)
        p = outer(peer.esp(1, payload), dst=US, tos=0xB8, ident=0xBEEF, flags=2, ttl=17, options=options)
        s, res = decap1(nic, p)
        assert s is Status.OK
        out = res[0]
        assert out == transport_out(p, TCP, payload)
        # Spelled out: everything but protocol, total length and checksum is as received.
        assert out[0] == 0x47 and out[1] == 0xB8 and out[4:9] == p[4:9] and out[12:28] == p[12:28]
        assert checksum(out[:28]) == 0 and out[28:] == payload

    def test_tunnel_output_is_inner_datagram_with_tfc_padding(self, nic):
        h, peer = add_in(nic, mode="tunnel")
        inner = peer.plain_payload(1) + bytes(13)          # RFC 4303 §2.7 TFC padding is not trimmed
        s, res = decap1(nic, peer.packet(1, payload=inner))
        assert s is Status.OK and res[0] == inner and res.next_header[0] == IPIP

    def test_tunnel_ipv6_inner(self, nic):
        h, peer = add_in(nic, mode="tunnel")
        inner = ipv6(b"v6 payload", nh=UDP)
        s, res = decap1(nic, peer.packet(1, payload=inner, nh=IPV6))
        assert s is Status.OK and res[0] == inner and res.next_header[0] == IPV6

    def test_non_ok_output_is_input(self, nic):
        h, peer = add_in(nic)
        packets = [peer.packet(1, dport=9), outer(b"\xff", dst=US), peer.packet(0),
                   dataclasses.replace(peer, spi=1).packet(1), peer.packet(2, pad=b"\x05")]
        res = nic.decap(packets)
        assert statuses(res) == [Status.NOT_ESP, Status.KEEPALIVE, Status.REPLAY, Status.NO_SA, Status.MALFORMED]
        assert list(res) == packets

    def test_out_reuse(self, nic):
        h, peer = add_in(nic)
        out = nic.decap([peer.packet(1)])
        again = nic.decap([peer.packet(2), peer.packet(3)], out=out)
        assert again is out and statuses(again) == [Status.OK, Status.OK] and list(again.seq) == [2, 3]


# --------------------------------------------------------------------------------------- NAT-OA

class TestNatOa:
    OA_SRC = addr("192.168.1.10")      # the peer's address before its NAT (RFC 3947 NAT-OAi)
    OA_DST = addr("10.0.0.99")         # our address as the peer knew it

    def _run(self, nic, proto, *, oa_src, oa_dst, data=b"some inner data!", zero_udp=False):
        kw = {}
        if oa_src:
            kw["nat_oa_src"] = oa_src
        if oa_dst:
            kw["nat_oa_dst"] = oa_dst
        h, peer = add_in(nic, **kw)
        # The sender computed the inner checksum over its own view of the addresses.
        sender_src, sender_dst = oa_src or PEER, oa_dst or US
        if proto == TCP:
            seg = tcp(data, src=sender_src, dst=sender_dst)
        else:
            seg = udp(data, src=sender_src, dst=sender_dst, with_checksum=not zero_udp)
        p = peer.packet(1, payload=seg, nh=proto)
        s, res = decap1(nic, p)
        assert s is Status.OK
        out = res[0]
        assert out[12:20] == p[12:20]                         # received addresses kept
        return seg, out[20:]

    @pytest.mark.parametrize("proto", [TCP, UDP], ids=["tcp", "udp"])
    @pytest.mark.parametrize("which", ["both", "src", "dst"])
    def test_checksum_repaired(self, nic, proto, which):
        oa_src = self.OA_SRC if which in ("both", "src") else 0
        oa_dst = self.OA_DST if which in ("both", "dst") else 0
        seg, got = self._run(nic, proto, oa_src=oa_src, oa_dst=oa_dst)
        off = 16 if proto == TCP else 6
        # From scratch, over the addresses the stack will see (the received ones).
        assert int.from_bytes(got[off:off + 2], "big") == l4_checksum(PEER, US, proto, seg)
        assert got[:off] == seg[:off] and got[off + 2:] == seg[off + 2:]
        assert got[off:off + 2] != seg[off:off + 2]           # it really changed

    def test_udp_zero_checksum_stays_zero(self, nic):
        seg, got = self._run(nic, UDP, oa_src=self.OA_SRC, oa_dst=self.OA_DST, zero_udp=True)
        assert got == seg and got[6:8] == b"\0\0"

    def test_udp_result_zero_written_as_ffff(self, nic):
        # Choose two data octets so that the checksum over the received addresses comes out as 0.
        data = bytearray(b"\0\0abcd")
        seg0 = udp(bytes(data), with_checksum=False)
        pseudo = struct.pack("!IIBBH", PEER, US, 0, UDP, len(seg0))
        data[0:2] = (0xFFFF - (~checksum(pseudo + seg0) & 0xFFFF)).to_bytes(2, "big")
        seg = udp(bytes(data), with_checksum=False)
        assert checksum(struct.pack("!IIBBH", PEER, US, 0, UDP, len(seg)) + seg) == 0   # sum is -0
        _, got = self._run(nic, UDP, oa_src=self.OA_SRC, oa_dst=0, data=bytes(data))
        assert got[6:8] == b"\xff\xff"

    def test_short_tcp_left_alone(self, nic):
        h, peer = add_in(nic, nat_oa_src=self.OA_SRC)
        seg = b"\x01" * 17                                   # TCP needs >= 18 octets for its checksum
        s, res = decap1(nic, peer.packet(1, payload=seg, nh=TCP))
        assert s is Status.OK and res[0][20:] == seg

    def test_tcp_of_exactly_18_octets_is_repaired(self, nic):
        # The boundary of test_short_tcp_left_alone: 18 octets end with the checksum field
        # (offset 16), so RFC 3948 §3.1.2 repair applies; the result verifies over the received
        # addresses as in test_checksum_repaired.
        h, peer = add_in(nic, nat_oa_src=self.OA_SRC)
        seg = b"\x01" * 16 + b"\0\0"
        seg = seg[:16] + l4_checksum(self.OA_SRC, US, TCP, seg).to_bytes(2, "big")
        s, res = decap1(nic, peer.packet(1, payload=seg, nh=TCP))
        got = res[0][20:]
        assert s is Status.OK and len(got) == 18 and got[:16] == seg[:16]
        assert int.from_bytes(got[16:18], "big") == l4_checksum(PEER, US, TCP, seg)
        assert got[16:18] != seg[16:18]

    def test_short_udp_left_alone(self, nic):
        h, peer = add_in(nic, nat_oa_src=self.OA_SRC)
        seg = b"\x01" * 7
        s, res = decap1(nic, peer.packet(1, payload=seg, nh=UDP))
        assert s is Status.OK and res[0][20:] == seg

    def test_other_protocols_left_alone(self, nic):
        h, peer = add_in(nic, nat_oa_src=self.OA_SRC, nat_oa_dst=self.OA_DST)
        seg = bytes(range(40))
        s, res = decap1(nic, peer.packet(1, payload=seg, nh=ICMP))
        assert s is Status.OK and res[0][20:] == seg

    def test_without_nat_oa_nothing_changes(self, nic):
        h, peer = add_in(nic)
        seg = tcp(b"data", src=self.OA_SRC, dst=self.OA_DST)
        s, res = decap1(nic, peer.packet(1, payload=seg, nh=TCP))
        assert s is Status.OK and res[0][20:] == seg


# --------------------------------------------------------------------------------------- counters

def test_counters(nic):
    h, peer = add_in(nic)
    ht, tpeer = add_in(nic, mode="tunnel", spi=SPI + 1, seed=5)
    ok1, ok2 = peer.packet(1), peer.packet(2)
    forged = bytearray(peer.packet(3))
    forged[-1] ^= 1
    batch = [ok1, ok2, bytes(forged), ok1,                                    # OK OK AUTH REPLAY
             outer(struct.pack("!II", SPI, 9) + bytes(4), dst=US),            # MALFORMED step 7
             peer.packet(10, pad=b"\x02"),                                    # MALFORMED step 10
             peer.packet(11, payload=b"", nh=NO_NEXT),                        # DUMMY
             dataclasses.replace(peer, spi=77).packet(1),                     # NO_SA: no SA's counter
             tpeer.packet(1, nh=TCP), tpeer.packet(2)]                        # PROTOCOL, OK (tunnel)
    res = nic.decap(batch)
    assert statuses(res) == [Status.OK, Status.OK, Status.AUTH_FAILED, Status.REPLAY, Status.MALFORMED,
                             Status.MALFORMED, Status.DUMMY, Status.NO_SA, Status.PROTOCOL, Status.OK]
    st_ = stats(nic, h)
    expected = {"packets": 3, "bytes": len(res[0]) + len(res[1]), "auth_failures": 1, "replays": 1,
                "malformed": 2, "dummy": 1, "protocol": 0, "seq_overflows": 0, "errors": 0,
                "replay_seq": 11}
    assert {k: st_[k] for k in expected} == expected
    stt = stats(nic, ht)
    assert (stt["packets"], stt["bytes"], stt["protocol"], stt["replay_seq"]) == (1, len(res[9]), 1, 2)
    assert not any(isinstance(v, (bytes, bytearray)) for v in st_.values())


def test_sa_stats_docstring_names_every_key(nic):
    """help(nic.sa_stats) is where a REPL user looks up what a counter counts."""
    h, _ = add_in(nic)
    out = nic.add_sa(SPI + 1, bytes(20), "aes128gcm16", "out", mode="transport")
    doc = natt.Offload.sa_stats.__doc__ or ""
    for handle in (h, out):
        missing = [k for k in nic.sa_stats(handle) if f"``{k}``" not in doc]
        assert not missing, missing


def _of_type(value: Any, hint: Any) -> bool:
    """``value`` is of TypedDict field type ``hint`` (int, bool, str or a Literal of strings)."""
    if typing.get_origin(hint) is typing.Literal:
        return value in typing.get_args(hint)
    return type(value) is hint        # exactly: a bool is no count, a numpy integer no int


def test_sa_stats_type_names_every_key_with_its_type(nic):
    """natt.SaStats, sa_stats' return annotation, is what a typed caller checks its reads against:
    it must name exactly the keys sa_stats gives (all of them required, as either direction has
    each one) and their types, for an inbound and an outbound SA of each mode."""
    hints = typing.get_type_hints(natt.SaStats)
    assert natt.SaStats.__required_keys__ == set(hints) and not natt.SaStats.__optional_keys__
    assert typing.get_type_hints(natt.Offload.sa_stats)["return"] is natt.SaStats
    handles = [add_in(nic)[0], add_in(nic, spi=SPI + 1, mode="tunnel", esn=True)[0],
               nic.add_sa(SPI + 2, bytes(20), "aes128gcm16", "out", mode="transport"),
               nic.add_sa(SPI + 3, bytes(48), "aes128-sha256", "out", src="192.0.2.1", dst="192.0.2.2",
                          df_bit="set")]
    for handle in handles:
        stats = nic.sa_stats(handle)
        assert list(stats) == list(hints)           # same keys, in the documented order
        wrong = {k: v for k, v in stats.items() if not _of_type(v, hints[k])}
        assert not wrong, wrong


@pytest.mark.parametrize("status", list(Status))
@pytest.mark.parametrize("tunnel", [False, True])
def test_ndis_receive_info_table(status, tunnel):
    expected = {
        Status.OK: (1, 0, 0), Status.DUMMY: (1, 0, 0),
        Status.AUTH_FAILED: (1, 0, 5 if tunnel else 3),
        Status.MALFORMED: (1, 0, 6), Status.PROTOCOL: (1, 0, 7),
        Status.REPLAY: (1, 0, 1), Status.ERROR: (1, 0, 1),
    }.get(status, (0, 0, 0))
    assert natt.ndis_receive_info(status, tunnel) == expected
    assert natt.ndis_receive_info(int(status), tunnel) == expected


def test_ndis_receive_info_refuses_what_is_not_a_status_or_a_bool():
    # "no" was read as a tunnel and [] as transport; a string status was echoed unredacted.
    assert natt.ndis_receive_info(np.uint8(7), np.True_) == (1, 0, 5)
    for tunnel in ("no", [], 1, None):
        with pytest.raises(TypeError, match=r"^tunnel: expected True or False, got "):
            natt.ndis_receive_info(Status.AUTH_FAILED, tunnel)
    key_hex = "a1b2c3d4e5f60718293a4b5c6d7e8f9001122334"
    for status in (13, -1, True, 7.0, key_hex, [0, 7]):
        with pytest.raises(ValueError, match=r"^status: expected a natt.Status \(0 \.\. 12\), got ") as ei:
            natt.ndis_receive_info(status, False)
        assert key_hex not in str(ei.value)


def test_ndis_receive_info_of_decap_results(nic):
    ht, tpeer = add_in(nic, mode="tunnel")
    hx, xpeer = add_in(nic, spi=SPI + 1, seed=2)
    bad_t = bytearray(tpeer.packet(1))
    bad_t[-1] ^= 1
    bad_x = bytearray(xpeer.packet(1))
    bad_x[-1] ^= 1
    res = nic.decap([bytes(bad_t), bytes(bad_x), tpeer.packet(2), outer(b"\xff", dst=US)])
    tunnel_of = {ht: True, hx: False, 0: False}
    info = [natt.ndis_receive_info(int(s), tunnel_of[int(h)]) for s, h in zip(res.status, res.sa)]
    assert info == [(1, 0, 5), (1, 0, 3), (1, 0, 0), (0, 0, 0)]
    # The whole result at once: the same, per packet.
    done, next_done, crypto = natt.ndis_receive_info(res.status, np.isin(res.sa, [ht]))
    assert list(zip(done.tolist(), next_done.tolist(), crypto.tolist())) == info
    assert (done.dtype, next_done.dtype, crypto.dtype) == (np.uint8, np.uint8, np.uint32)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.uint64])
def test_ndis_receive_info_of_an_array_is_the_table_per_element(dtype):
    status = np.array([s for s in Status] * 2, dtype).reshape(2, len(Status))
    tunnel = np.array([[False], [True]])
    done, next_done, crypto = natt.ndis_receive_info(status, tunnel)
    want = [[natt.ndis_receive_info(int(v), bool(tunnel[i, 0])) for v in row] for i, row in enumerate(status)]
    assert np.array_equal(np.stack([done, next_done, crypto], -1), np.array(want))
    # A 0-d array is an array too (its three results are 0-d).
    for v in Status:
        for t in (False, True, np.array(True)):
            got = natt.ndis_receive_info(np.array(v, dtype), t)
            assert [(x.shape, x.dtype) for x in got] == [((), np.uint8), ((), np.uint8), ((), np.uint32)]
            assert tuple(int(x) for x in got) == natt.ndis_receive_info(int(v), bool(t))
    for t in (True, np.False_):
        assert [tuple(x.tolist()) for x in natt.ndis_receive_info(status[0], t)] == [
            tuple(col) for col in zip(*[natt.ndis_receive_info(int(v), bool(t)) for v in status[0]])]


def test_ndis_receive_info_refuses_a_bad_array():
    with pytest.raises(ValueError, match=r"^status: element 2 is 13, not a natt.Status \(0 \.\. 12\)$"):
        natt.ndis_receive_info(np.array([0, 7, 13, -1]), False)
    with pytest.raises(ValueError, match=r"^status: element 1 is -1, not a natt.Status"):
        natt.ndis_receive_info(np.array([0, -1]), False)
    for status in (np.array([0.0, 7.0]), np.array([True, False]), np.array([0, 7], object)):
        with pytest.raises(ValueError, match=r"^status: expected an integer array of natt.Status values, got dtype"):
            natt.ndis_receive_info(status, False)
    with pytest.raises(TypeError, match=r"^tunnel: expected True or False or a bool array, got dtype int64$"):
        natt.ndis_receive_info(np.array([7, 7]), np.array([1, 0]))
    with pytest.raises(TypeError, match=r"^tunnel: expected True or False or a bool array, got 'no'$"):
        natt.ndis_receive_info(np.array([7, 7]), "no")
    with pytest.raises(ValueError, match=r"^tunnel: shape \(3,\) does not fit status's \(2,\)$"):
        natt.ndis_receive_info(np.array([7, 7]), np.array([True, False, True]))


# --------------------------------------------------------------------------------------- round trips

def _inner(n: int) -> bytes:
    """An inner IPv4/TCP datagram of about ``n`` payload octets (ID = n)."""
    seg = tcp(bytes(range(n % 256)) * (1 + n // 256), src=addr("10.1.0.1"), dst=addr("10.2.0.1"))
    return ipv4(seg, src=addr("10.1.0.1"), dst=addr("10.2.0.1"), ident=n, tos=0x10)


@pytest.mark.parametrize("esn", [False, True], ids=["32bit", "esn"])
@pytest.mark.parametrize("framing", [natt.UdpEncapType.OTHER, natt.UdpEncapType.IKE], ids=["other", "ike"])
@pytest.mark.parametrize("mode", ["transport", "tunnel"])
@pytest.mark.parametrize("suite_name", natt.suite_names())
def test_round_trip(nic, suite_name, mode, framing, esn):
    suite = SUITES[suite_name]
    key = key_for(suite)
    ends = dict(src=PEER, dst=US) if mode == "tunnel" else {}
    # Start near 2**32 so that ESN SAs cross into seq_hi = 1 within the batch.
    start = 2**32 - 3 if esn else 0
    h_out = nic.add_sa(SPI, key, suite_name, "out", mode=mode, encap=framing, esn=esn, replay_oseq=start,
                       sport=4500, dport=4500, **ends)
    h_in = nic.add_sa(SPI, key, suite_name, "in", mode=mode, encap=framing, esn=esn, replay_seq=start,
                      port=4500, **ends)
    inner = [_inner(n) for n in (0, 1, 13, 100, 333)]
    enc = nic.encap(inner, h_out)
    assert statuses(enc) == [Status.OK] * 5
    seqs = [start + 1 + i for i in range(5)]
    assert [int(x) for x in enc.seq] == seqs and list(enc.sa) == [h_out] * 5
    assert list(enc.next_header) == [IPIP if mode == "tunnel" else TCP] * 5
    # The independent oracle opens what encap produced, with default padding.
    marker = 8 if framing is natt.UdpEncapType.IKE else 0
    for pkt, seq, inn in zip(enc, seqs, inner):
        esp = pkt[28 + marker:]
        plain = esp_open(suite, key, esp, seq_hi=(seq >> 32) if esn else None)
        payload = inn if mode == "tunnel" else inn[20:]
        assert plain == trailer(payload, IPIP if mode == "tunnel" else TCP, suite)
    dec = nic.decap(enc.batch())
    assert statuses(dec) == [Status.OK] * 5
    assert list(dec) == inner            # transport: the header comes back field for field
    assert [int(x) for x in dec.seq] == seqs and list(dec.sa) == [h_in] * 5
    assert stats(nic, h_in)["replay_seq"] == seqs[-1] and stats(nic, h_out)["replay_oseq"] == seqs[-1]


@pytest.mark.parametrize("conf", [natt.ConfAlgo.AES_CBC_128, natt.ConfAlgo.AES_CBC_256, natt.ConfAlgo.TRIPLE_DES])
def test_confidentiality_only(nic, conf):
    suite = suite_for_algos(conf, natt.IntegrityAlgo.NONE)
    assert suite is not None and suite.icv_len == 0
    key = key_for(suite)
    # The request's default replay_window (64) is taken, and anti-replay is off: it rests on the
    # ICV (RFC 4303 §3.4.3), which this SA has not.
    h_in = add_oid(nic, suite, key).offload_handle
    h_out = add_oid(nic, suite, key, inbound=False).offload_handle
    assert stats(nic, h_in)["replay_window"] == 0
    inner = [_inner(n) for n in (5, 50)]
    enc = nic.encap(inner, h_out)
    assert statuses(enc) == [Status.OK] * 2
    assert len(enc[0]) == 28 + 8 + suite.iv_len + len(trailer(inner[0][20:], TCP, suite))   # no ICV
    for _ in range(2):                   # the second time too: no window to call it a replay
        dec = nic.decap(enc.batch())
        assert statuses(dec) == [Status.OK] * 2 and list(dec) == inner and list(dec.sa) == [h_in] * 2
    # And a hand-built packet: nothing to verify, so a flipped ciphertext bit is not AUTH_FAILED.
    peer = Peer(suite, key)
    p = bytearray(peer.packet(9, payload=b"x" * 40, nh=UDP))
    assert decap1(nic, bytes(p))[0] is Status.OK
    p[28 + 8 + suite.iv_len] ^= 1          # first ciphertext block: garbles plaintext block 1 only
    s, res = decap1(nic, bytes(p))
    assert s is Status.OK and res[0][20:20 + suite.block_size] != b"x" * suite.block_size


# --------------------------------------------------------------------------------------- encap

def test_encap_crypto_failure_uses_up_its_number(monkeypatch):
    # Semantics §2 step 2: a number handed to the crypto never goes out again (it is the AEAD
    # nonce), even when the crypto fails. The fast path hands out a batch's numbers before its
    # crypto runs, so it has this by construction, and nothing makes its libcrypto fail on cue:
    # the reference's seal is made to fail once instead.
    import natt._reference as ref

    seal, calls = ref._Sa.seal, []

    def fail_second(self, *args):
        calls.append(args[1])
        if len(calls) == 2:
            raise RuntimeError("crypto library failure")
        return seal(self, *args)

    monkeypatch.setattr(ref._Sa, "seal", fail_second)
    with natt.Offload(backend="reference") as nic:
        h = nic.add_sa(0x4242, key_for(GCM), GCM.name, "out", src="192.0.2.1", dst="198.51.100.9")
        res = nic.encap([_inner(n) for n in (5, 6, 7)], h)
        assert statuses(res) == [Status.OK, Status.ERROR, Status.OK]
        assert [int(x) for x in res.seq] == [1, 0, 3] and calls == [1, 2, 3]
        st = stats(nic, h)
        assert (st["replay_oseq"], st["packets"], st["errors"]) == (3, 2, 1)
        assert int(nic.encap([_inner(8)], h).seq[0]) == 4


class TestEncap:
    def _out(self, nic, suite=GCM, mode="tunnel", **kw):
        key = key_for(suite)
        if mode == "tunnel":
            kw.setdefault("src", addr("192.0.2.1"))
            kw.setdefault("dst", addr("198.51.100.9"))
        return nic.add_sa(0x4242, key, suite.name, "out", mode=mode, **kw), key

    def test_tunnel_outer_df_is_the_inner_ones(self, nic):
        # RFC 4301 §8.1: copying DF must be supported; it was always clear, so a sender's path MTU
        # discovery was lost and every packet could be fragmented (with IDs that repeat across
        # SAs between the same ends: RFC 6864 §4.1). MF and the offset are the inner packet's own.
        h, _ = self._out(nic)
        inners = [ipv4(b"a" * 40, flags=0), ipv4(b"b" * 40, flags=2), ipv4(b"c" * 40, flags=1, frag=3),
                  ipv4(b"d" * 40, flags=3), ipv6(b"e" * 40)]
        res = nic.encap(inners, h)
        assert statuses(res) == [Status.OK] * 5
        assert [pkt[6:8] for pkt in res] == [b"\0\0", b"\x40\0", b"\0\0", b"\x40\0", b"\0\0"]
        assert all(checksum(pkt[:20]) == 0 for pkt in res)

    # RFC 4301 §8.1: "it MUST be possible to configure the implementation's treatment of the DF
    # bit (set, clear, copy from inner header) for each SA". Inner packets: DF clear, DF set, a
    # fragment (MF, offset 3), DF with MF, IPv6 (no DF to copy).
    DF_INNERS = [ipv4(b"a" * 40, flags=0), ipv4(b"b" * 40, flags=2), ipv4(b"c" * 40, flags=1, frag=3),
                 ipv4(b"d" * 40, flags=3), ipv6(b"e" * 40)]

    @pytest.mark.parametrize("df_bit,outer_df", [
        ("copy", [0, 0x40, 0, 0x40, 0]),
        ("set", [0x40] * 5),
        ("clear", [0] * 5),
    ])
    def test_tunnel_outer_df_as_the_sa_says(self, nic, df_bit, outer_df):
        h, key = self._out(nic, df_bit=df_bit)
        res = nic.encap(self.DF_INNERS, h)
        assert statuses(res) == [Status.OK] * 5
        # Only DF: never MF, an offset or the reserved bit of the inner flags field.
        assert [pkt[6:8] for pkt in res] == [bytes((df, 0)) for df in outer_df]
        assert all(checksum(pkt[:20]) == 0 for pkt in res)
        assert stats(nic, h)["df_bit"] == df_bit
        # The inner packets are protected as they were, whatever the outer DF.
        h_in = nic.add_sa(0x4242, key, GCM.name, "in", src=addr("192.0.2.1"), dst=addr("198.51.100.9"))
        dec = nic.decap(res.batch())
        assert statuses(dec) == [Status.OK] * 5 and list(dec) == self.DF_INNERS
        assert stats(nic, h_in)["df_bit"] == "copy"

    @pytest.mark.parametrize("df_bit,outer_df", [("copy", 0), ("set", 0x40), ("clear", 0)])
    def test_tunnel_outer_df_through_the_oid_layer(self, nic, df_bit, outer_df):
        key = key_for(GCM)
        req = add_oid(nic, GCM, key, inbound=False, src_tunnel_addr="192.0.2.1", dst_tunnel_addr="198.51.100.9",
                      df_bit=df_bit)
        res = nic.encap([ipv4(b"x" * 20, flags=0), ipv6(b"y" * 20)], req.offload_handle)
        assert statuses(res) == [Status.OK] * 2 and [pkt[6] for pkt in res] == [outer_df] * 2

    @pytest.mark.parametrize("flags", [0, 2], ids=["inner-DF-clear", "inner-DF-set"])
    def test_transport_keeps_the_datagrams_own_df(self, nic, flags):
        # A transport SA writes no tunnel header: the outer header is the inner one, DF as the
        # sender set it ("copy" is all it takes, spelled out or by default).
        h, _ = self._out(nic, mode="transport", df_bit="copy")
        inner = ipv4(tcp(b"data", src=addr("10.0.0.1"), dst=addr("10.0.0.2")), flags=flags)
        res = nic.encap([inner], h)
        assert statuses(res) == [Status.OK] and res[0][6:8] == inner[6:8]

    @pytest.mark.parametrize("df_bit", ["set", "clear"])
    @pytest.mark.parametrize("direction,mode", [("out", "transport"), ("in", "transport"), ("in", "tunnel")])
    def test_df_bit_other_than_copy_only_on_outbound_tunnel_sas(self, nic, df_bit, direction, mode):
        # RFC 4301 §8.1 is about "the tunnel mode header that it emits": decap writes none, and a
        # transport SA's header is the datagram's own (docs/semantics.md §2 step 7). Refused, as
        # NAT-OA is where it does not apply, rather than silently ignored.
        ends = {"src": addr("192.0.2.1"), "dst": addr("198.51.100.9")} if mode == "tunnel" else {}
        with pytest.raises(natt.OffloadError, match=rf"^df_bit: '{df_bit}' applies to "
                                                    rf"{'outbound' if direction == 'in' else 'tunnel'} SAs only") as e:
            nic.add_sa(0x4242, key_for(GCM), GCM.name, direction, mode=mode, df_bit=df_bit, **ends)
        assert e.value.status is natt.NdisStatus.INVALID_PARAMETER and nic.sa_handles() == []
        # "copy" is what each of them does anyway.
        h = nic.add_sa(0x4242, key_for(GCM), GCM.name, direction, mode=mode, df_bit="copy", **ends)
        assert stats(nic, h)["df_bit"] == "copy"

    def test_tunnel_outer_header(self, nic):
        h, key = self._out(nic, sport=4501, dport=61000, replay_oseq=0x1FFFE)
        inner = ipv4(b"z" * 33, tos=0xB9, ident=7, ttl=3, flags=2)
        res = nic.encap([inner, inner], h)
        assert statuses(res) == [Status.OK] * 2
        for pkt, seq in zip(res, (0x1FFFF, 0x20000)):
            ip, u, esp = pkt[:20], pkt[20:28], pkt[28:]
            assert ip[0] == 0x45 and ip[1] == 0xB9 and int.from_bytes(ip[2:4], "big") == len(pkt)
            # DF copied from the inner header (RFC 4301 §8.1), nothing else of its flags field
            assert int.from_bytes(ip[4:6], "big") == seq & 0xFFFF and ip[6:8] == b"\x40\0"
            assert ip[8] == 64 and ip[9] == UDP and checksum(ip) == 0
            assert ip[12:16] == addr("192.0.2.1").to_bytes(4, "big")
            assert ip[16:20] == addr("198.51.100.9").to_bytes(4, "big")
            assert struct.unpack("!HHHH", u) == (4501, 61000, 8 + len(esp), 0)
            assert esp[:8] == struct.pack("!II", 0x4242, seq)
            assert esp[8:16] == seq.to_bytes(8, "big")                 # GCM IV = the 64-bit seq
            assert esp_open(GCM, key, esp) == trailer(inner, IPIP, GCM)

    def test_tunnel_ipv6_inner(self, nic):
        h, key = self._out(nic)
        inner = ipv6(b"hello", nh=UDP, traffic_class=0xA4) + b"link"
        res = nic.encap([inner], h)
        assert statuses(res) == [Status.OK] and res.next_header[0] == IPV6
        pkt = res[0]
        assert pkt[1] == 0xA4
        assert esp_open(GCM, key, pkt[28:]) == trailer(inner[:45], IPV6, GCM)

    def test_transport_keeps_inner_header(self, nic):
        h, key = self._out(nic, mode="transport")
        options = b"\x01\x01\x01\x00"
        seg = tcp(b"data", src=addr("10.0.0.1"), dst=addr("10.0.0.2"))
        inner = ipv4(seg, options=options, tos=4, ident=0x4321, ttl=9, flags=2) + b"\xee" * 5   # link padding
        res = nic.encap([inner], h)
        assert statuses(res) == [Status.OK] and res.next_header[0] == TCP
        pkt = res[0]
        assert pkt[0] == 0x46 and pkt[1] == 4 and pkt[4:9] == inner[4:9] and pkt[12:24] == inner[12:24]
        assert pkt[9] == UDP and int.from_bytes(pkt[2:4], "big") == len(pkt) and checksum(pkt[:24]) == 0
        assert esp_open(GCM, key, pkt[24 + 8:]) == trailer(seg, TCP, GCM)   # link padding dropped
        assert res.lengths[0] == len(pkt)

    def test_ike_framing_marker(self, nic):
        h, key = self._out(nic, encap=natt.UdpEncapType.IKE, sport=500, dport=500)
        res = nic.encap([ipv4(b"x")], h)
        pkt = res[0]
        assert pkt[20:22] == b"\x01\xf4" and pkt[22:24] == b"\x01\xf4" and pkt[26:28] == b"\0\0"
        assert pkt[28:36] == bytes(8) and pkt[36:40] == (0x4242).to_bytes(4, "big")

    @pytest.mark.parametrize("name", ["aes128-sha1", "aes256-sha256", "3des-md5", "null-sha1", "aes128gcm8",
                                      "chacha20poly1305", "aes256gmac"])
    def test_default_padding(self, nic, name):
        s_ = SUITES[name]
        h, key = self._out(nic, s_)
        inner = [ipv4(b"p" * n) for n in range(0, 20)]
        res = nic.encap(inner, h)
        align = max(4, s_.block_size)
        for pkt, inn in zip(res, inner):
            plain = esp_open(s_, key, pkt[28:])
            pad_len = plain[-2]
            assert len(plain) % align == 0 and pad_len < align
            assert plain[:len(inn)] == inn and plain[len(inn):-2] == bytes(range(1, pad_len + 1))

    def test_cbc_iv_is_fresh(self, nic):
        h, key = self._out(nic, CBC_SHA1)
        res = nic.encap([ipv4(b"same")] * 4, h)
        ivs = {pkt[36:52] for pkt in res}
        bodies = {pkt[52:] for pkt in res}
        assert len(ivs) == 4 and len(bodies) == 4

    def test_null_has_no_iv(self, nic):
        s_ = SUITES["null-sha256"]
        h, key = self._out(nic, s_)
        inner = ipv4(b"12")                     # 22 octets + 2 -> padded to 24
        pkt = nic.encap([inner], h)[0]
        assert len(pkt) == 28 + 8 + 24 + s_.icv_len
        assert pkt[36:36 + 22] == inner         # NULL: the payload travels in clear

    def test_esn_iv_and_icv_use_full_seq(self, nic):
        h, key = self._out(nic, esn=True, replay_oseq=(9 << 32) + 41)
        pkt = nic.encap([ipv4(b"q")], h)[0]
        seq = (9 << 32) + 42
        assert pkt[28:36] == struct.pack("!II", 0x4242, 42)
        assert pkt[36:44] == seq.to_bytes(8, "big")
        assert esp_open(GCM, key, pkt[28:], seq_hi=9) == trailer(ipv4(b"q"), IPIP, GCM)

    @pytest.mark.parametrize("mode,packet", [
        ("transport", b""),
        ("transport", ipv4(b"x")[:19]),
        ("transport", ipv6(b"x")),
        ("transport", ipv4(b"x", ihl=4)),
        ("transport", ipv4(b"x", total_length=22)),
        ("transport", ipv4(b"x", total_length=19)),
        ("tunnel", b"\x45"),
        ("tunnel", ipv4(b"x", version=5)),
        ("tunnel", ipv4(b"xyz", total_length=24)),
        ("tunnel", ipv6(b"x" * 10)[:39]),
        ("tunnel", ipv6(b"x" * 10, payload_length=11)),
        ("transport", ipv4(b"x" * 8, flags=1)),
        ("transport", ipv4(b"x" * 8, frag=3)),
    ], ids=["empty", "short-v4", "v6-on-transport", "ihl<5", "tl>len", "tl<ihl", "one-octet", "version-5",
            "tunnel-tl>len", "short-v6", "v6-plen>len", "transport-MF", "transport-offset"])
    def test_inner_malformed(self, nic, mode, packet):
        h, _ = self._out(nic, mode=mode)
        res = nic.encap([packet, ipv4(b"fine")], h)
        assert statuses(res) == [Status.MALFORMED, Status.OK]
        assert res[0] == packet and res.seq[0] == 0
        assert res.seq[1] == 1                                     # the counter did not advance
        st_ = stats(nic, h)
        assert (st_["malformed"], st_["packets"], st_["replay_oseq"]) == (1, 1, 1)

    def test_tunnel_carries_inner_fragments(self, nic):
        # RFC 4303 §3.3.4 forbids transport mode on fragments only; a tunnel carries any datagram.
        h, _ = self._out(nic, mode="tunnel")
        frag = ipv4(b"x" * 8, flags=1)
        res = nic.encap([frag], h)
        assert statuses(res) == [Status.OK]
        assert struct.unpack_from("!H", res[0], 6)[0] == 0      # the outer header is no fragment

    def test_too_big(self, nic):
        h, _ = self._out(nic, mode="transport")
        big = ipv4(bytes(65535 - 20), proto=UDP)
        res = nic.encap([big, ipv4(bytes(100))], h)
        assert statuses(res) == [Status.MALFORMED, Status.OK]
        assert res[0] == big and res.seq[1] == 1
        # Step 2 assigned seq 1 before step 8 refused the packet; res.sa is set only on OK (§2 step 8).
        assert res.seq[0] == 1 and list(res.sa) == [0, h] and res.next_header[0] == 0

    def test_largest_that_fits(self, nic):
        h, key = self._out(nic, mode="tunnel")
        # Outer 20 + UDP 8 + ESP 8 + IV 8 + ICV 16 = 60, plus the inner packet and its trailer
        # padded to 4: an inner of 65470 octets gives 65532; 65471 would give 65536.
        res = nic.encap([ipv4(bytes(65470 - 20)), ipv4(bytes(65471 - 20))], h)
        assert statuses(res) == [Status.OK, Status.MALFORMED]
        assert len(res[0]) == 65532

    def test_seq_overflow(self, nic):
        h, key = self._out(nic, replay_oseq=2**32 - 2)
        res = nic.encap([ipv4(b"a")] * 3, h)
        assert statuses(res) == [Status.OK, Status.SEQ_OVERFLOW, Status.SEQ_OVERFLOW]
        assert res.seq[0] == 2**32 - 1 and list(res.lengths[1:]) == [0, 0]
        # No number was assigned (2**32 is not one): res.seq 0; res.sa only on OK (§2 step 8).
        assert list(res.seq[1:]) == [0, 0] and list(res.sa) == [h, 0, 0]
        st_ = stats(nic, h)
        assert (st_["seq_overflows"], st_["packets"], st_["replay_oseq"]) == (2, 1, 2**32 - 1)

    def test_esn_goes_past_2_32(self, nic):
        h_out, key = self._out(nic, esn=True, replay_oseq=2**32 - 1)
        h_in = nic.add_sa(0x4242, key, GCM.name, "in", mode="tunnel", src=addr("192.0.2.1"),
                          dst=addr("198.51.100.9"), esn=True, replay_seq=2**32 - 2)
        res = nic.encap([ipv4(b"a"), ipv4(b"b")], h_out)
        assert statuses(res) == [Status.OK] * 2 and list(res.seq) == [2**32, 2**32 + 1]
        assert res[0][32:36] == bytes(4)                          # seql 0 on the wire
        dec = nic.decap(res.batch())
        assert statuses(dec) == [Status.OK] * 2 and list(dec.seq) == [2**32, 2**32 + 1]
        assert list(dec.sa) == [h_in] * 2

    def test_esn_overflow(self, nic):
        h, _ = self._out(nic, esn=True, replay_oseq=2**64 - 2)
        res = nic.encap([ipv4(b"a")] * 2, h)
        assert statuses(res) == [Status.OK, Status.SEQ_OVERFLOW]
        assert res.seq[0] == 2**64 - 1 and res.seq[1] == 0     # 2**64 does not fit: 0
        assert stats(nic, h)["replay_oseq"] == 2**64 - 1

    def test_counters(self, nic):
        h, _ = self._out(nic)
        inner = [ipv4(b"a" * 10), b"junk", ipv4(b"b" * 30)]
        nic.encap(inner, h)
        st_ = stats(nic, h)
        assert (st_["packets"], st_["bytes"], st_["malformed"]) == (2, 30 + 50, 1)


# --------------------------------------------------------------------------------------- batches

def test_order_within_batch_decides(nic):
    h, peer = add_in(nic)
    good5 = peer.packet(5)
    bad5 = good5[:-1] + bytes([good5[-1] ^ 1])
    assert statuses(nic.decap([bad5, good5])) == [Status.AUTH_FAILED, Status.OK]
    h2, peer2 = add_in(nic, spi=SPI + 1, seed=2)
    g = peer2.packet(5)
    b = g[:-1] + bytes([g[-1] ^ 1])
    assert statuses(nic.decap([g, b])) == [Status.OK, Status.REPLAY]
    h3, peer3 = add_in(nic, spi=SPI + 2, seed=3)
    assert statuses(nic.decap([peer3.packet(100), peer3.packet(5)])) == [Status.OK, Status.REPLAY]
    h4, peer4 = add_in(nic, spi=SPI + 3, seed=4)
    assert statuses(nic.decap([peer4.packet(5), peer4.packet(100)])) == [Status.OK, Status.OK]


def _mixed_traffic(rng: random.Random, peers: list[Peer]) -> list[bytes]:
    packets = []
    for _ in range(160):
        peer = rng.choice(peers)
        kind = rng.random()
        seq = rng.randrange(1, 300) + (2**32 - 150 if peer.esn else 0)   # ESN: across 2**32
        if kind < 0.6:
            p = peer.packet(seq)
        elif kind < 0.7:
            p = bytearray(peer.packet(seq))
            p[-1] ^= 1
            p = bytes(p)
        elif kind < 0.75:
            # Wrong padding octets, still a whole number of cipher blocks.
            align = max(4, peer.suite.block_size)
            n = -(len(peer.plain_payload(seq)) + 2) % align + align
            p = peer.packet(seq, pad=b"\x09" * n)
        elif kind < 0.8:
            p = outer(b"\xff", dst=US)
        elif kind < 0.85:
            p = dataclasses.replace(peer, spi=0x77).packet(seq)
        elif kind < 0.9:
            p = peer.packet(seq, nh=NO_NEXT, payload=b"")
        else:
            p = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        packets.append(p)
        if rng.random() < 0.2:
            packets.append(p)                 # an immediate duplicate
    return packets


def _setup_mixed(backend: str) -> natt.Offload:
    nic = natt.Offload(backend=backend)
    add_in(nic, GCM, seed=1)
    add_in(nic, CBC_SHA1, spi=SPI + 1, seed=2, replay_window=32)
    add_in(nic, SUITES["chacha20poly1305"], spi=SPI + 2, seed=3, esn=True, replay_seq=2**32 - 100)
    return nic


def _peers() -> list[Peer]:
    return [Peer(GCM, key_for(GCM, 1)), Peer(CBC_SHA1, key_for(CBC_SHA1, 2), SPI + 1),
            Peer(SUITES["chacha20poly1305"], key_for(SUITES["chacha20poly1305"], 3), SPI + 2, esn=True)]


def _snapshot(results: list[natt.DecapResult]) -> list[tuple]:
    rows = []
    for r in results:
        for i in range(len(r)):
            rows.append((int(r.status[i]), int(r.sa[i]), int(r.seq[i]), int(r.next_header[i]), r[i]))
    return rows


@pytest.mark.parametrize("seed", [1, 2])
def test_split_batches_identical(backend, seed):
    rng = random.Random(seed)
    packets = _mixed_traffic(rng, _peers())
    with _setup_mixed(backend) as whole_nic:
        whole = _snapshot([whole_nic.decap(packets)])
        whole_stats = [whole_nic.sa_stats(h) for h in whole_nic.sa_handles()]
    with _setup_mixed(backend) as split_nic:
        parts, i = [], 0
        while i < len(packets):
            n = rng.randrange(0, 9)
            parts.append(split_nic.decap(packets[i:i + n]))
            i += n
        assert _snapshot(parts) == whole
        assert [split_nic.sa_stats(h) for h in split_nic.sa_handles()] == whole_stats
    with _setup_mixed(backend) as threaded_nic:
        assert _snapshot([threaded_nic.decap(packets, threads=2)]) == whole
    # The mix really exercised the window: several statuses occur.
    assert {row[0] for row in whole} >= {Status.OK, Status.REPLAY, Status.AUTH_FAILED, Status.MALFORMED}


def test_packet_batch_offsets_respected(nic):
    # Segments at arbitrary offsets in one buffer, with gaps, are read where the batch says.
    h, peer = add_in(nic)
    a, b = peer.packet(1), peer.packet(2)
    data = np.frombuffer(b"\x77" * 5 + a + b"\x66" * 3 + b, dtype=np.uint8).copy()
    batch = natt.PacketBatch(data, np.array([5, 5 + len(a) + 3], np.int64), np.array([len(a), len(b)], np.int64))
    res = nic.decap(batch)
    assert statuses(res) == [Status.OK, Status.OK]
    assert res[1] == transport_out(b, TCP, peer.plain_payload(2))


# --------------------------------------------------------------------------------------- robustness

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_never_raises_on_mutated_packets(nic, data):
    if not nic.sa_handles():
        add_in(nic, CBC_SHA1)
        add_in(nic, encap=natt.UdpEncapType.IKE, port=500, spi=SPI + 1)
    peer = Peer(CBC_SHA1, key_for(CBC_SHA1))
    base = bytearray(peer.packet(data.draw(st.integers(1, 2**32 - 1))))
    for _ in range(data.draw(st.integers(0, 4))):
        pos = data.draw(st.integers(0, len(base) - 1))
        base[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(base)))
    packets = [bytes(base[:cut]), bytes(base), data.draw(st.binary(max_size=120))]
    res = nic.decap(packets)
    assert len(res) == 3
    for i, s in enumerate(res.status):
        s = Status(s)
        assert s is not Status.ERROR
        if s not in (Status.OK, Status.DUMMY):
            assert res[i] == packets[i]
        else:
            assert len(res[i]) <= len(packets[i])


# --------------------------------------------------------------------------------------- key wiping

def _backend_instance(name: str):
    from natt._offload import _make_backend
    return _make_backend(name)


def test_backend_remove_sa_wipes_key(backend):
    from natt._backend import SaConfig
    b = _backend_instance(backend)
    key = bytearray(key_for(GCM))
    cfg = SaConfig(handle=7, inbound=True, spi=SPI, suite=GCM, tunnel=False, dst_addr=0, dst_mask=0,
                   src_tunnel_addr=0, dst_tunnel_addr=0, entry_handle=3, encap_type=natt.UdpEncapType.OTHER,
                   port=4500, encap_src_port=4500, encap_dst_port=4500, replay_window=64, esn=False,
                   replay_seq=0, replay_oseq=0, nat_oa_src=0, nat_oa_dst=0, key=key)
    b.add_entry(3, natt.UdpEncapType.OTHER, 4500)
    b.add_sa(cfg)
    assert key != bytearray(len(key))
    b.remove_sa(7)
    assert key == bytearray(len(key))
    key2 = bytearray(key_for(GCM, 2))
    b.add_sa(dataclasses.replace(cfg, handle=8, key=key2))
    assert key_for(GCM, 2).hex() not in repr(b) and key_for(GCM, 2).hex() not in str(b.counters(8))
    b.close()
    assert key2 == bytearray(len(key2))


def test_internal_failure_is_error_not_exception(monkeypatch):
    """ERROR (status 12) has no packet that provokes it; force a crypto failure in the
    reference path and check the contract: no exception, input unchanged, ``errors`` counted."""
    import natt._reference as ref

    def broken(self, esp, seq_hi):
        raise RuntimeError("simulated crypto library failure")

    with natt.Offload(backend="reference") as nic:
        h, peer = add_in(nic)
        monkeypatch.setattr(ref._Sa, "open", broken)
        p = peer.packet(1)
        res = nic.decap([p, outer(b"\xff", dst=US)])
        assert statuses(res) == [Status.ERROR, Status.KEEPALIVE]
        assert res[0] == p and res.sa[0] == h
        assert int(res.seq[0]) == 1                     # set once the ESP header parsed (§1 step 6)
        assert stats(nic, h)["errors"] == 1
        monkeypatch.undo()
        assert decap1(nic, p)[0] is Status.OK          # the failure did not consume seq 1


# --------------------------------------------------------------------------------------- concurrency

def test_concurrent_decap_accepts_each_number_once(backend):
    """Two threads decap the same packets on one SA: the window is shared state, so across both
    results every sequence number is accepted exactly once (RFC 4303 §3.4.3)."""
    import threading

    with natt.Offload(backend=backend) as nic:
        h, peer = add_in(nic, replay_window=1024)
        packets = [peer.packet(n) for n in range(1, 401)]
        results: list[natt.DecapResult] = []
        start = threading.Barrier(2)

        def worker() -> None:
            start.wait()
            results.append(nic.decap(packets, threads=2))

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ok = np.zeros(400, np.int64)
        for r in results:
            assert set(statuses(r)) <= {Status.OK, Status.REPLAY}
            ok += (r.status == Status.OK)
        assert list(ok) == [1] * 400
        assert stats(nic, h)["packets"] == 400 and stats(nic, h)["replays"] == 400


def test_decap_while_sas_come_and_go(backend):
    """Control calls racing the data path: no crash, and every packet gets a status that one of
    the table states it could have seen explains."""
    import threading

    with natt.Offload(backend=backend) as nic:
        keeper, peer = add_in(nic, port=4500)                 # keeps the parser entry alive
        victim_key = key_for(GCM, 9)
        victim = Peer(GCM, victim_key, SPI + 1)
        packets = [victim.packet(n) for n in range(1, 301)]
        stop = threading.Event()

        def churn() -> None:
            while not stop.is_set():
                h = nic.add_sa(SPI + 1, victim_key, GCM.name, "in", mode="transport", replay_window=0)
                nic.delete_sa(h)

        t = threading.Thread(target=churn)
        t.start()
        try:
            seen: set[Status] = set()
            for _ in range(5):
                seen |= set(statuses(nic.decap(packets)))
        finally:
            stop.set()
            t.join()
        assert seen <= {Status.OK, Status.NO_SA}
        assert decap1(nic, peer.packet(1))[0] is Status.OK


class _Gated:
    """A backend whose decap/encap wait at a gate before running: holds a call inside the
    data path while the test makes a second one (what two Python threads can do at any time)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.inside = __import__("threading").Event()
        self.go = __import__("threading").Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _gate(self) -> None:
        self.inside.set()
        assert self.go.wait(30)

    def decap(self, *args: Any) -> None:
        self._gate()
        self._inner.decap(*args)

    def encap(self, *args: Any) -> None:
        self._gate()
        self._inner.encap(*args)


@pytest.mark.parametrize("call", ["decap", "encap"])
def test_a_result_being_filled_is_refused_as_another_calls_out(backend, call):
    """Growing a result replaces its arrays: a result passed as out= to a second call while a
    first is filling it would lose (fast backend: free under) the first call's output."""
    import threading

    with natt.Offload(backend=backend) as nic:
        tx = nic.add_sa(SPI, key_for(GCM, 1), GCM.name, "out", mode="transport")
        run = {"decap": lambda out, n: nic.decap([bytes(40)] * n, out=out),
               "encap": lambda out, n: nic.encap([ipv4(bytes(8), proto=UDP)] * n, tx, out=out)}[call]
        res = natt.DecapResult() if call == "decap" else natt.EncapResult()
        gated = nic._backend = _Gated(nic._backend)
        first = threading.Thread(target=run, args=(res, 3))
        first.start()
        try:
            assert gated.inside.wait(30)
            with pytest.raises(ValueError, match="^out: .*another decap/encap call"):
                run(res, 5)
        finally:
            gated.go.set()
            first.join()
        assert len(res) == 3
        assert len(run(res, 5)) == 5                  # free again once the first call is done


@pytest.mark.parametrize("threads", [None, 2])
@pytest.mark.parametrize("call", ["decap", "encap"])
def test_a_close_landing_before_a_fast_batch_takes_the_mutex_raises_failure(call, threads):
    """semantics §6: after close, decap and encap raise OffloadError(FAILURE). The fast backend
    runs batches outside Offload's lock, so another thread's close() can land after Offload saw
    the instance open and before the batch takes the backend's mutex. The batch then ran on the
    emptied tables: a decap gave every packet NOT_ESP (as if no parser entry had ever been
    installed) and an encap said its SA did not exist (INVALID_PARAMETER). The reference backend
    cannot see this: its batches run under Offload's lock, which close() takes."""
    nic = natt.Offload(backend="fast")
    _, peer = add_in(nic)
    tx = nic.add_sa(SPI + 1, key_for(GCM, 2), GCM.name, "out", mode="transport")
    out: natt.DecapResult | natt.EncapResult
    out = nic.decap([peer.packet(1)]) if call == "decap" else nic.encap([ipv4(bytes(8), proto=UDP)], tx)
    assert statuses(out) == [Status.OK]                   # a result to reuse: left as it was or empty
    gated = nic._backend = _Gated(nic._backend)
    gated.go.set()
    real_gate = gated._gate
    gated._gate = lambda: (nic.close(), real_gate())      # close() from "another thread", just then
    if call == "decap":
        with pytest.raises(natt.OffloadError) as e:
            nic.decap([peer.packet(n) for n in range(2, 40)], threads=threads, out=out)
    else:
        with pytest.raises(natt.OffloadError) as e:
            nic.encap([ipv4(bytes(8), proto=UDP)] * 40, tx, threads=threads, out=out)
    assert e.value.status is natt.NdisStatus.FAILURE and "closed" in str(e.value)
    assert len(out) == 0


def test_encap_of_an_sa_deleted_after_the_handle_check_raises(backend):
    """semantics §5: encap of an SA deleted meanwhile raises OffloadError on both backends, also
    when the delete lands between Offload's handle check and the batch."""
    with natt.Offload(backend=backend) as nic:
        tx = nic.add_sa(SPI, key_for(GCM, 1), GCM.name, "out", mode="transport")
        gated = nic._backend = _Gated(nic._backend)
        gated.go.set()
        real_gate = gated._gate
        gated._gate = lambda: (nic.delete_sa(tx), real_gate())
        with pytest.raises(natt.OffloadError) as e:
            nic.encap([ipv4(bytes(8), proto=UDP)], tx)
        assert e.value.status is natt.NdisStatus.INVALID_PARAMETER and "handle" in str(e.value)

"""Published and derived ESP vectors through the public API, on every backend.

Every vector in ``tests/vectors/`` (see ``tests/_vectors.py``) is wrapped in IPv4/UDP and decapsulated
through an SA installed with the OID layer, exactly as a stack would offload it. The expected outputs
are built here from the vector's published plaintext, never from natt.

Encap is not checked against these vectors: natt's AEAD IV is the 64-bit sequence number
(docs/semantics.md §2 step 4) and no vector's IV equals its sequence number; CBC encap draws a random
IV. A vector encap could reproduce does not exist, so none is forced.
"""

from __future__ import annotations

import ipaddress

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

import natt
from _vectors import (
    ESP_FILES,
    FRAMING_FILE,
    EspVector,
    esp_vector,
    esp_vectors,
    framing_fixtures,
    rebuild_header,
    source,
    udp_wrap,
)

Status = natt.Status
VECTORS = esp_vectors()
AUTHENTICATED = [v for v in VECTORS if v.icv_len]
ESN_VECTORS = [v for v in VECTORS if v.esn]

# Outer addresses for vectors that publish no outer header (documentation ranges, RFC 5737).
PEER = int(ipaddress.IPv4Address("198.51.100.7"))
LOCAL = int(ipaddress.IPv4Address("203.0.113.9"))
WINDOW = 64


def _ids(vectors: list[EspVector]) -> list[str]:
    return [v.name for v in vectors]


def _tunnel_ends(v: EspVector) -> tuple[int, int]:
    """(source, destination) of the outer header: the published one when there is one."""
    if v.ip_header_esp is not None:
        return (int.from_bytes(v.ip_header_esp[12:16], "big"), int.from_bytes(v.ip_header_esp[16:20], "big"))
    return PEER, LOCAL


def _is_tunnel(v: EspVector) -> bool:
    # The draft-mcgrew GCM vectors say nothing about mode and all end in next header 1 (ICMP): per
    # docs/semantics.md §1 step 11 a tunnel SA would answer PROTOCOL for them, so they are installed
    # as transport SAs, for which any next header is legitimate (spec §7 item 13).
    return v.mode == "tunnel"


def _request(v: EspVector, *, tunnel: bool | None = None, replay_seq: int | None = None,
             esn: bool | None = None, dst: object = None, window: int | None = None) -> natt.AddUdpEspSa:
    """The OID request a stack would issue for the SA the vector belongs to."""
    tunnel = _is_tunnel(v) if tunnel is None else tunnel
    src, dst_addr = _tunnel_ends(v)
    # RFC 3602 cases carry no ICV: a confidentiality-only SA, which takes the window but runs
    # without anti-replay (docs/semantics.md §6 check 13), as a stack passing it would expect.
    if window is None:
        window = WINDOW
    req = natt.AddUdpEspSa(
        flags=natt.OFFLOAD_INBOUND_SA,
        sec_assoc=[natt.OffloadSecurityAssociation(
            operation=natt.Operation.ENCRYPT, spi=v.spi,
            integrity_algo=natt.AlgoInfo(v.integrity_algo, v.integ_key_len),
            conf_algo=natt.AlgoInfo(v.conf_algo, v.conf_key_len))],
        key_mat=v.key,
        replay_window=window,
        esn=v.esn if esn is None else esn,
        icv_len=v.icv_len or None,
        # The number just below the vector's is the highest already seen: the Appendix A inference
        # then lands on the vector's high-order bits (T + 1 always infers to itself).
        replay_seq=(v.seq - 1 if window else 0) if replay_seq is None else replay_seq,
    )
    if tunnel:
        req.src_tunnel_addr, req.dst_tunnel_addr = src, dst_addr
    else:
        req.dst_addr = dst_addr if dst is None else dst
    return req


def _install(nic: natt.Offload, req: natt.AddUdpEspSa) -> int:
    status = nic.set_oid(natt.OID_TCP_TASK_IPSEC_ADD_UDPESP_SA, req)
    assert status == natt.NdisStatus.SUCCESS, status
    assert req.offload_handle != 0
    return req.offload_handle


def _packet(v: EspVector, esp: bytes | None = None) -> bytes:
    """The vector's ESP packet as it arrives: IPv4 / UDP 4500 → 4500 / ESP."""
    src, dst = _tunnel_ends(v)
    return udp_wrap(v.esp if esp is None else esp, src=src, dst=dst, header=v.ip_header_esp)


def _expected_output(v: EspVector, packet: bytes, tunnel: bool) -> bytes:
    if tunnel:
        return v.payload
    # Transport: the received outer header, protocol = next header, length and checksum fixed.
    return rebuild_header(packet[:20], v.next_header, len(v.payload)) + v.payload


def _flip(data: bytes, index: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[index] ^= 1 << bit
    return bytes(b)


# --------------------------------------------------------------------------- the data files

def test_every_vector_file_cites_its_source() -> None:
    for name in (*ESP_FILES, FRAMING_FILE):
        src = source(name)
        assert src["document"] and src["section"] and src["transcription_note"], name
        assert src["spec"].startswith("spec/test-vectors.md §"), name
    for v in VECTORS:
        assert v.citation and v.provenance in ("published", "derived"), v
        # Derived vectors live in the derived file only, and say so.
        assert (v.provenance == "derived") == v.name.startswith("derived-"), v
    for f in framing_fixtures():
        assert f.citation.startswith("spec/test-vectors.md §6"), f


def test_vector_set_is_the_one_the_spec_lists() -> None:
    names = set(_ids(VECTORS))
    assert {f"rfc3602-case{n}" for n in (5, 6, 7, 8)} <= names
    gcm = {n for n in names if n.startswith("gcm-")}
    # Every draft-mcgrew case A..P except GCM-D, whose SPI 0 is illegal on the wire (RFC 4303 §2.1).
    assert gcm == {f"gcm-{c}" for c in "abcefghijklmnop"}
    assert "rfc7634-appendix-a" in names
    assert len([n for n in names if n.startswith("derived-")]) == 4
    assert [f.name for f in framing_fixtures()] == ["D1", "D2", "D3", "D4"]


@pytest.mark.parametrize("v", VECTORS, ids=_ids(VECTORS))
def test_vector_data_is_self_consistent(v: EspVector) -> None:
    """Re-check each record with ``cryptography`` (guards the JSON against hand edits)."""
    spi_seql = v.spi.to_bytes(4, "big") + (v.seq & 0xFFFFFFFF).to_bytes(4, "big")
    assert v.esp[:8] == spi_seql
    assert v.esp[8:8 + len(v.iv)] == v.iv
    assert v.plaintext == v.payload + bytes(range(1, v.pad_len + 1)) + bytes([v.pad_len, v.next_header])
    body = v.esp[8 + len(v.iv):]
    seq_hi = (v.seq >> 32).to_bytes(4, "big") if v.esn else b""
    if v.conf_algo.name.startswith("AES_GCM") or v.conf_algo is natt.ConfAlgo.CHACHA20_POLY1305:
        key, salt = v.key[:-4], v.key[-4:]
        aead = ChaCha20Poly1305(key) if v.conf_algo is natt.ConfAlgo.CHACHA20_POLY1305 else AESGCM(key)
        aad = spi_seql[:4] + seq_hi + spi_seql[4:]
        assert aead.decrypt(salt + v.iv, body, aad) == v.plaintext
    else:
        ct = body[:len(body) - v.icv_len]
        d = Cipher(algorithms.AES(v.key[:16]), modes.CBC(v.iv)).decryptor()
        assert d.update(ct) + d.finalize() == v.plaintext


# --------------------------------------------------------------------------- decap

@pytest.mark.parametrize("v", VECTORS, ids=_ids(VECTORS))
def test_decap_vector(backend: str, v: EspVector) -> None:
    tunnel = _is_tunnel(v)
    with natt.Offload(backend=backend) as nic:
        h = _install(nic, _request(v))
        pkt = _packet(v)
        res = nic.decap([pkt])
        assert Status(res.status[0]) is Status.OK
        assert res[0] == _expected_output(v, pkt, tunnel)
        assert res.next_header[0] == v.next_header
        assert res.seq[0] == v.seq          # the full 64-bit number for ESN vectors
        assert res.sa[0] == h
        stats = nic.sa_stats(h)
        assert stats["packets"] == 1 and stats["bytes"] == len(res[0])


def test_rfc3602_case5_restores_the_published_original_header(backend: str) -> None:
    """RFC 3602 publishes case #5's IPv4 header before and after ESP: transport decap must undo it."""
    v = esp_vector("rfc3602-case5")
    with natt.Offload(backend=backend) as nic:
        _install(nic, _request(v))
        res = nic.decap([_packet(v)])
        assert Status(res.status[0]) is Status.OK
        assert res[0] == v.ip_header_original + v.payload


@pytest.mark.parametrize("threads", [None, 2])
def test_all_vectors_in_one_batch(backend: str, threads: int | None) -> None:
    """Every vector's SA installed side by side, each keyed to its own destination address (several
    vectors share an SPI, e.g. GCM-E/F/J and GCM-I/K), and all packets decapsulated in one batch."""
    src = int(ipaddress.IPv4Address("192.0.2.1"))
    base = int(ipaddress.IPv4Address("10.0.0.0"))
    with natt.Offload(backend=backend) as nic:
        handles, packets, expected = [], [], []
        for i, v in enumerate(VECTORS, start=1):
            req = _request(v, dst=base + i)
            if _is_tunnel(v):
                req.src_tunnel_addr, req.dst_tunnel_addr = src, base + i
            handles.append(_install(nic, req))
            pkt = udp_wrap(v.esp, src=src, dst=base + i)
            packets.append(pkt)
            expected.append(_expected_output(v, pkt, _is_tunnel(v)))
        res = nic.decap(packets, threads=threads)
        assert [Status(s) for s in res.status] == [Status.OK] * len(VECTORS)
        assert list(res) == expected
        assert list(res.sa) == handles
        assert list(res.seq) == [v.seq for v in VECTORS]
        assert list(res.next_header) == [v.next_header for v in VECTORS]


@pytest.mark.parametrize("v", VECTORS, ids=_ids(VECTORS))
def test_decap_vector_twice(backend: str, v: EspVector) -> None:
    """The second copy is a replay when anti-replay is on, and accepted again when it is off."""
    with natt.Offload(backend=backend) as nic:
        _install(nic, _request(v))
        pkt = _packet(v)
        res = nic.decap([pkt, pkt])
        second = Status.REPLAY if v.icv_len else Status.OK
        assert [Status(s) for s in res.status] == [Status.OK, second]
        if second is Status.REPLAY:
            assert res[1] == pkt          # refused packets come back unchanged


@pytest.mark.parametrize("v", ESN_VECTORS, ids=_ids(ESN_VECTORS))
@pytest.mark.parametrize("behind", [1, WINDOW - 1, WINDOW, 2**31])
def test_esn_inference_finds_the_vector_high_bits(backend: str, v: EspVector, behind: int) -> None:
    """RFC 4303 App. A: with T anywhere up to 2**31 below the vector, seq_hi is inferred right."""
    replay_seq = max(v.seq - behind, 0)
    with natt.Offload(backend=backend) as nic:
        _install(nic, _request(v, replay_seq=replay_seq))
        res = nic.decap([_packet(v)])
        assert Status(res.status[0]) is Status.OK
        assert res.seq[0] == v.seq
        assert nic.sa_stats(int(res.sa[0]))["replay_seq"] == v.seq


WRONG_SUBSPACE = [v for v in ESN_VECTORS if v.seq > 2**32]


@pytest.mark.parametrize("v", WRONG_SUBSPACE, ids=_ids(WRONG_SUBSPACE))
def test_esn_high_bits_enter_the_icv(backend: str, v: EspVector) -> None:
    """Put T just below the same low half one 2**32 subspace earlier: the inference then picks
    seq_hi - 1, and the ICV/AAD computed with it must fail (seq_hi is authenticated, never sent)."""
    wrong = v.seq - 2**32
    with natt.Offload(backend=backend) as nic:
        h = _install(nic, _request(v, replay_seq=wrong - 1))
        pkt = _packet(v)
        res = nic.decap([pkt])
        assert Status(res.status[0]) is Status.AUTH_FAILED
        assert res.seq[0] == wrong
        assert res[0] == pkt
        assert nic.sa_stats(h)["auth_failures"] == 1


@pytest.mark.parametrize("v", ESN_VECTORS, ids=_ids(ESN_VECTORS))
def test_esn_vector_on_a_32_bit_sa_fails_authentication(backend: str, v: EspVector) -> None:
    # Without ESN no seq_hi enters the AAD/ICV; the vector's tag covers one, so it cannot verify.
    # Anti-replay is off here because GCM-A's low half is 0, which a 32-bit window refuses as a
    # replay before any tag is checked (docs/semantics.md §3).
    with natt.Offload(backend=backend) as nic:
        _install(nic, _request(v, esn=False, replay_seq=0, window=0))
        res = nic.decap([_packet(v)])
        assert Status(res.status[0]) is Status.AUTH_FAILED
        assert res.seq[0] == v.seq & 0xFFFFFFFF


NH_ICMP_GCM = [v for v in VECTORS if v.name.startswith("gcm-")]


@pytest.mark.parametrize("v", NH_ICMP_GCM, ids=_ids(NH_ICMP_GCM))
def test_gcm_vector_on_a_tunnel_sa_is_protocol(backend: str, v: EspVector) -> None:
    """The draft's trailers all say next header 1 (spec §7 item 13). On a tunnel SA that is not an
    inner IP datagram (4 or 41): PROTOCOL (docs/semantics.md §1 step 11), after the tag verified,
    so the replay window has moved and a second copy is a REPLAY (step 9)."""
    with natt.Offload(backend=backend) as nic:
        _install(nic, _request(v, tunnel=True))
        pkt = _packet(v)
        res = nic.decap([pkt, pkt])
        assert [Status(s) for s in res.status] == [Status.PROTOCOL, Status.REPLAY]
        assert res[0] == pkt
        assert res.next_header[0] == 1


# --------------------------------------------------------------------------- integrity

def _flip_positions(v: EspVector) -> dict[str, int]:
    """Octet offsets (into the ESP packet) of one octet in each authenticated region past the SPI."""
    n = len(v.esp)
    return {"seq": 6, "iv": 8, "ciphertext": 8 + len(v.iv), "last-ciphertext": n - v.icv_len - 1,
            "icv-first": n - v.icv_len, "icv-last": n - 1}


@pytest.mark.parametrize("v", AUTHENTICATED, ids=_ids(AUTHENTICATED))
@pytest.mark.parametrize("where", ["seq", "iv", "ciphertext", "last-ciphertext", "icv-first", "icv-last"])
def test_flipped_bit_fails_authentication(backend: str, v: EspVector, where: str) -> None:
    """Spec test-vectors.md §5: one flipped bit of SPI..ICV must give AUTH_FAILED. The bit flipped
    is bit 1 (in the sequence number: ±2**9). The SA's highest seen number is put 2**20 below the
    vector's, so a corrupted sequence number still lies right of the window, the preliminary replay
    check passes, and the ICV decides."""
    i = _flip_positions(v)[where]
    bad = _flip(v.esp, i, 1)
    with natt.Offload(backend=backend) as nic:
        h = _install(nic, _request(v, replay_seq=max(v.seq - 2**20, 0)))
        pkt = _packet(v, bad)
        good = _packet(v)
        res = nic.decap([pkt, good])
        # A failed ICV must not move the window: the genuine packet is still accepted afterwards.
        assert [Status(s) for s in res.status] == [Status.AUTH_FAILED, Status.OK]
        assert res[0] == pkt
        assert nic.sa_stats(h)["auth_failures"] == 1


@pytest.mark.parametrize("v", AUTHENTICATED, ids=_ids(AUTHENTICATED))
def test_flipped_spi_bit_finds_no_sa(backend: str, v: EspVector) -> None:
    # The SPI selects the SA before any ICV is computed (RFC 4303 §3.4.2), so a corrupted SPI is
    # NO_SA rather than AUTH_FAILED: the one exception to spec §5's "any bit" sentence.
    with natt.Offload(backend=backend) as nic:
        _install(nic, _request(v))
        res = nic.decap([_packet(v, _flip(v.esp, 3, 0))])
        assert Status(res.status[0]) is Status.NO_SA
        assert res.sa[0] == 0


DERIVED_HMAC = [v for v in VECTORS if v.provenance == "derived"]


@pytest.mark.parametrize("v", DERIVED_HMAC, ids=_ids(DERIVED_HMAC))
def test_hmac_vector_every_single_bit_flip_after_the_spi(backend: str, v: EspVector) -> None:
    """All 8·(len-4) one-bit corruptions of seq..ICV in one batch: none may pass. Flips that turn
    seq into 0 or push it left of the window are REPLAY before the ICV is checked (§1 step 8)."""
    bad = [_flip(v.esp, i, b) for i in range(4, len(v.esp)) for b in range(8)]
    with natt.Offload(backend=backend) as nic:
        _install(nic, _request(v))
        res = nic.decap([_packet(v, e) for e in bad])
        statuses = {Status(s) for s in res.status}
        assert Status.OK not in statuses
        assert statuses <= {Status.AUTH_FAILED, Status.REPLAY}
        # Only seq flips can be replays: every flip from the IV on is an authentication failure.
        iv_on = [Status(s) for s in res.status[8 * 4:]]
        assert set(iv_on) == {Status.AUTH_FAILED}


# --------------------------------------------------------------------------- framing fixtures

@pytest.mark.parametrize("fixture", framing_fixtures(), ids=lambda f: f.name)
def test_framing_fixture(backend: str, fixture) -> None:
    gcm_b = esp_vector("gcm-b")
    with natt.Offload(backend=backend) as nic:
        req = _request(gcm_b, tunnel=False, dst=0)
        req.encap_type_entry = natt.EncapTypeEntry(fixture.entry_type, fixture.entry_port)
        h = _install(nic, req)
        res = nic.decap([fixture.packet])
        status = Status(res.status[0])
        assert status is fixture.expected_status
        if status is Status.OK:
            assert res[0] == rebuild_header(fixture.packet[:20], 1, len(gcm_b.payload)) + gcm_b.payload
            assert res.sa[0] == h and res.seq[0] == gcm_b.seq
        else:
            # IKE and keepalives are handed up unprocessed (RFC 3948 §2.2, §2.3).
            assert res[0] == fixture.packet
            assert res.sa[0] == 0


@pytest.mark.parametrize("fixture", framing_fixtures(), ids=lambda f: f.name)
def test_framing_fixture_on_the_other_framing(backend: str, fixture) -> None:
    """Each fixture on an entry of the other encapsulation type, same port: the framing decides.

    RFC 3948 ESP (D1) on a legacy entry has no 8-octet zero marker: IKE. The legacy packet (D4) on an
    RFC 3948 entry starts with four zero octets: IKE. Keepalives are keepalives on both; D3's first
    8 octets are not all zero (the IKE SPI follows the marker), so it stays IKE.
    """
    other = {natt.UdpEncapType.OTHER: natt.UdpEncapType.IKE, natt.UdpEncapType.IKE: natt.UdpEncapType.OTHER}
    expected = {"D1": Status.IKE, "D2": Status.KEEPALIVE, "D3": Status.IKE, "D4": Status.IKE}
    with natt.Offload(backend=backend) as nic:
        req = _request(esp_vector("gcm-b"), tunnel=False, dst=0)
        req.encap_type_entry = natt.EncapTypeEntry(other[fixture.entry_type], fixture.entry_port)
        _install(nic, req)
        res = nic.decap([fixture.packet])
        assert Status(res.status[0]) is expected[fixture.name]
        assert res[0] == fixture.packet


def test_framing_fixtures_without_sa_or_entry(backend: str) -> None:
    fixtures = {f.name: f for f in framing_fixtures()}
    packets = [fixtures[n].packet for n in ("D1", "D2", "D3", "D4")]
    with natt.Offload(backend=backend) as nic:
        # No parser entry at all: nothing is UDP-ESP.
        assert [Status(s) for s in nic.decap(packets).status] == [Status.NOT_ESP] * 4
        # An RFC 3948 entry on 4500 with an SA for another SPI: D1 has no SA, D4 (port 500) is not parsed.
        other = esp_vector("gcm-c")
        _install(nic, _request(other, tunnel=False, dst=0))
        assert [Status(s) for s in nic.decap(packets).status] == [
            Status.NO_SA, Status.KEEPALIVE, Status.IKE, Status.NOT_ESP]

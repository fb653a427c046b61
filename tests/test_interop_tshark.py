"""Interoperability with Wireshark (tshark) and scapy.

* tshark decrypts natt's encap output with the esp_sa table natt wrote, and every ICV checks;
* a hand-written esp_sa with text keys (no ``0x``) reads to the same keys in tshark and natt;
* natt's esp_sa for ESN SAs (newer Wireshark's SN and ESN High Bits columns) still loads in
  tshark 4.0, which skips those columns, and verifies every ICV in a tshark that has them (4.4);
  it reads back in natt to SAs that decap the packets;
* natt decaps ESP-in-UDP that scapy's ``SecurityAssociation`` sealed;
* ``natt decap``'s output, read back by tshark, shows the inner ICMP / UDP / TCP.
* a pcapng opt_endofopt with a length is read, or refused, by natt as by tshark.
* an obsolete Packet Block's drop count reads the same in tshark from natt's output.

tshark comes from Debian's ``tshark`` package (CI installs it). Without it these tests are
skipped on a developer machine and fail under CI (``CI`` set), so a CI without tshark cannot
pass silently. CI runs them twice: with Debian 12's tshark (4.0) and, through
``ci/interop-newer-tshark.sh``, with Debian 13's (4.4).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys

import pytest

import natt
from natt import cli, keys, pcap, traffic

TSHARK = shutil.which("tshark")
if TSHARK is None:
    if os.environ.get("CI"):
        raise RuntimeError("tshark is required in CI (apt-get install tshark)")
    pytest.skip("tshark not installed", allow_module_level=True)

TUNNEL = ("198.51.100.2", "203.0.113.5")
# Suites Wireshark 4.0's ESP dissector can decrypt (it has no ChaCha20-Poly1305 or GMAC).
WIRESHARK_SUITES = ["aes128gcm16", "aes192gcm12", "aes256gcm8", "aes128-sha1", "aes256-sha256",
                    "aes192-sha384", "aes256-sha512", "3des-md5", "null-sha1"]


def inner_packets(src: str, dst: str) -> list[bytes]:
    # Ports without a Wireshark dissector of their own: a random payload on, say, NTP's port
    # can make that dissector throw before ESP's trailer (and ICV verdict) is added.
    return [traffic.icmp_echo(src, dst, seq=1, payload=48),
            traffic.udp_datagram(src, dst, 40000, 40001, b"natt" * 20),
            traffic.tcp_segment(src, dst, 40002, 40003, b"x" * 300)]


def tshark(capture, *fields: str, config_dir=None, display_filter: str | None = None, stderr: list | None = None
           ) -> list[list[str]]:
    """Rows of ``fields``; tshark's warnings go to ``stderr`` (a list) when one is given.

    A boolean field reads ``1``/``0`` as tshark 4.0 prints it; tshark 4.4 prints ``True``/``False``
    (checked with 4.4.19 from Debian 13)."""
    args = [TSHARK, "-n", "-r", str(capture), "-o", "esp.enable_encryption_decode:TRUE",
            "-o", "esp.enable_authentication_check:TRUE", "-T", "fields"]
    for f in fields:
        args += ["-e", f]
    if display_filter:
        args += ["-Y", display_filter]
    env = dict(os.environ)
    if config_dir is not None:
        env["XDG_CONFIG_HOME"] = str(config_dir)   # tshark's personal profile: <dir>/wireshark/
    p = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    if stderr is not None:
        stderr.append(p.stderr)
    return [[_BOOL.get(v, v) for v in line.split("\t")] for line in p.stdout.splitlines()]


_BOOL = {"True": "1", "False": "0"}


def wireshark_profile(tmp_path, specs) -> "os.PathLike[str]":
    """A tshark profile whose esp_sa is natt's own file for ``specs``, or ``specs`` itself when
    it is the text of a table written by hand."""
    cfg = tmp_path / "xdg"
    (cfg / "wireshark").mkdir(parents=True)
    if isinstance(specs, str):
        (cfg / "wireshark" / "esp_sa").write_text(specs, encoding="utf-8")
    else:
        keys.save(cfg / "wireshark" / "esp_sa", specs)     # exactly the file natt writes, comments included
    return cfg


@pytest.mark.parametrize("backend", natt.backends())
@pytest.mark.parametrize("mode", ["tunnel", "transport"])
def test_tshark_decrypts_natt_encap_with_natt_esp_sa(tmp_path, mode, backend):
    specs, datagrams = [], []
    tx = natt.Offload(backend=backend)
    for i, suite in enumerate(WIRESHARK_SUITES):
        key = os.urandom(natt.parse_suite(suite)[0].key_len)
        s = keys.SaSpec(spi=0x4000 + i, suite=suite, key=key, direction="out", mode=mode,
                        src=TUNNEL[0] if mode == "tunnel" else "10.1.0.2",
                        dst=TUNNEL[1] if mode == "tunnel" else "10.2.0.7")
        (h,) = keys.install(tx, [s])
        res = tx.encap(inner_packets("10.1.0.2", "10.2.0.7"), h)
        assert res.status.tolist() == [natt.Status.OK] * 3
        specs.append(s)
        datagrams += list(res)
    cap = tmp_path / "natt.pcap"
    pcap.write_datagrams(cap, datagrams)
    rows = tshark(cap, "esp.spi", "esp.icv_good", "esp.protocol", "ip.proto", config_dir=wireshark_profile(tmp_path, specs))
    assert len(rows) == len(datagrams)
    for k, (spi, icv_good, next_header, protos) in enumerate(rows):
        assert int(spi, 16) == 0x4000 + k // 3
        assert icv_good == "1", f"{WIRESHARK_SUITES[k // 3]}: tshark did not verify the ICV of packet {k}"
        inner_proto = [1, 17, 6][k % 3]
        if mode == "tunnel":
            assert int(next_header, 16) == 4 and protos.split(",") == ["17", str(inner_proto)]
        else:
            assert int(next_header, 16) == inner_proto and protos == "17"


def test_tshark_sees_bad_icv_as_bad(tmp_path):
    key = os.urandom(36)
    s = keys.SaSpec(spi=0x4100, suite="aes128-sha1", key=key, direction="out", src=TUNNEL[0], dst=TUNNEL[1])
    tx = natt.Offload(backend="reference")
    (h,) = keys.install(tx, [s])
    good, bad = tx.encap(inner_packets("10.1.0.2", "10.2.0.7")[:2], h)
    bad = bad[:-1] + bytes([bad[-1] ^ 1])
    cap = tmp_path / "c.pcap"
    pcap.write_datagrams(cap, [good, bad])
    rows = tshark(cap, "esp.icv_good", "esp.icv_bad", config_dir=wireshark_profile(tmp_path, [s]))
    assert rows == [["1", "0"], ["0", "1"]]


def test_tshark_and_natt_read_text_keys_of_a_hand_written_esp_sa_alike(tmp_path):
    # Wireshark's packet-ipsec.c (compute_ascii_key) reads an esp_sa key as hex only after "0x";
    # anything else is the field's own octets, once the UAT reader (uat_unesc) has undone its
    # escapes. Tables written by hand or by other tools use such text keys, so natt must read
    # them the same way or the one table decrypts different packets in the two (docs/keys.md).
    cbc_key, sha1_key = b"natt-interop-k16", b"RFC 3948 ESP-in-UDP!"       # 16 + 20 characters
    # AES-128-GCM: 16 key octets then the 4-octet salt (RFC 4106 section 8.1). A '"' or '\\'
    # cannot stand bare in a quoted UAT field; Wireshark's own writer escapes them as \xNN.
    gcm_key = b'AES\\GCM "natt!" salt'
    gcm_field = r"AES\x5cGCM \x22natt!\x22 salt"
    esp_sa = (  # by hand, not keys.save(): no 0x anywhere
        "# hand-written: text keys\n"
        f'"IPv4","{TUNNEL[0]}","{TUNNEL[1]}","0x00004200","AES-CBC [RFC3602]","natt-interop-k16",'
        f'"HMAC-SHA-1-96 [RFC2404]","RFC 3948 ESP-in-UDP!"\n'
        f'"IPv4","{TUNNEL[0]}","{TUNNEL[1]}","0x00004201","AES-GCM with 16 octet ICV [RFC4106]",'
        f'"{gcm_field}","NULL",""\n')
    sealed = [(0x4200, "aes128-sha1", cbc_key + sha1_key), (0x4201, "aes128gcm16", gcm_key)]
    inner = inner_packets("10.1.0.2", "10.2.0.7")
    tx = natt.Offload(backend="reference")
    datagrams = []
    for spi, suite, key in sealed:
        (h,) = keys.install(tx, [keys.SaSpec(spi=spi, suite=suite, key=key, direction="out",
                                             src=TUNNEL[0], dst=TUNNEL[1])])
        res = tx.encap(inner, h)
        assert res.status.tolist() == [natt.Status.OK] * len(inner)
        datagrams += list(res)
    cap = tmp_path / "text-keys.pcap"
    pcap.write_datagrams(cap, datagrams)
    cfg = wireshark_profile(tmp_path, esp_sa)

    # tshark: every ICV checks (the GCM tag covers key and salt; HMAC-SHA1-96 only its own key),
    # and the decrypted trailer and inner header show the AES-CBC key was right too.
    rows = tshark(cap, "esp.spi", "esp.icv_good", "esp.icv_bad", "esp.protocol", "ip.proto", config_dir=cfg)
    assert len(rows) == len(datagrams)
    for k, (spi, good, bad, next_header, protos) in enumerate(rows):
        assert int(spi, 16) == sealed[k // len(inner)][0]
        assert (good, bad) == ("1", "0"), f"tshark did not verify the ICV of packet {k} (spi {spi})"
        assert int(next_header, 16) == 4 and protos.split(",") == ["17", str([1, 17, 6][k % len(inner)])]

    # natt reads the same file to exactly the octets it sealed with, and decaps with them.
    loaded = keys.load(cfg / "wireshark" / "esp_sa")
    assert [(s.spi, s.suite, s.key, s.src, s.dst) for s in loaded] == \
        [(spi, suite, key, *TUNNEL) for spi, suite, key in sealed]
    assert_decaps_on_every_backend(loaded, datagrams, inner * len(sealed))


def test_natt_esp_sa_with_esn_columns_loads_in_tshark_and_reads_back_in_natt(tmp_path):
    # Two ESN SAs, one past 2**32 packets (high bits 5, which only the table says), and a 32-bit
    # SA beside them. natt writes the ESN SAs with newer Wireshark's SN and ESN High Bits columns.
    sealed = [(0x4400, "aes128-sha256", True, (5 << 32) + 6), (0x4401, "aes256gcm16", True, 0),
              (0x4402, "aes128-sha1", False, 41)]
    inner = inner_packets("10.1.0.2", "10.2.0.7")
    tx = natt.Offload(backend="reference")
    specs, datagrams = [], []
    for spi, suite, esn, oseq in sealed:
        s = keys.SaSpec(spi=spi, suite=suite, key=os.urandom(natt.parse_suite(suite)[0].key_len), direction="out",
                        src=TUNNEL[0], dst=TUNNEL[1], esn=esn, replay_oseq=oseq)
        (h,) = keys.install(tx, [s])
        res = tx.encap(inner, h)
        assert res.status.tolist() == [natt.Status.OK] * len(inner)
        specs.append(s)
        datagrams += list(res)
    cap = tmp_path / "esn.pcap"
    pcap.write_datagrams(cap, datagrams)
    cfg = wireshark_profile(tmp_path, specs)
    table = [line for line in (cfg / "wireshark" / "esp_sa").read_text().splitlines() if not line.startswith("#")]
    assert [line.split('","')[8:] for line in table] == [['64-bit', '5"'], ['64-bit', '0"'], []]

    err: list[str] = []
    rows = tshark(cap, "esp.spi", "esp.icv_good", "esp.icv_bad", config_dir=cfg, stderr=err)
    assert len(rows) == len(datagrams)
    verdicts = {spi: {(r[1], r[2]) for r in rows if int(r[0], 16) == spi} for spi, *_ in sealed}
    # ci/interop-newer-tshark.sh runs these tests with a tshark that has the columns, and says so.
    newer = bool(os.environ.get("NATT_TSHARK_ESN_COLUMNS"))
    if "More fields than required" in err[0] and not newer:
        # A tshark without the columns (4.0.17 here) warns for exactly the two ESN lines, loads
        # every line, takes the ESN SAs as 32-bit (ICV bad) and still verifies the other SA.
        assert re.findall(r"esp_sa:(\d+): More fields than required", err[0]) == ["5", "6"]   # after 4 comments
        assert verdicts == {0x4400: {("0", "1")}, 0x4401: {("0", "1")}, 0x4402: {("1", "0")}}
    else:
        # A Wireshark that knows SN and ESN High Bits verifies every ICV, high bits 5 included.
        assert verdicts == {spi: {("1", "0")} for spi, *_ in sealed}, err[0]

    # natt reads the table to the SAs it sealed with and decaps every packet with them.
    loaded = keys.load(cfg / "wireshark" / "esp_sa")
    assert [(s.spi, s.suite, s.key, s.esn) for s in loaded] == [(s.spi, s.suite, s.key, s.esn) for s in specs]
    assert_decaps_on_every_backend(loaded, datagrams, inner * len(sealed))


def assert_decaps_on_every_backend(specs, datagrams, inner):
    """``specs``, installed inbound, decap every datagram to ``inner`` on each backend."""
    for backend in natt.backends():
        rx = natt.Offload(backend=backend)
        keys.install(rx, specs, direction="in")
        dec = rx.decap(datagrams)
        assert dec.status.tolist() == [natt.Status.OK] * len(datagrams), backend
        assert list(dec) == inner


def scapy_sealed_capture(tmp_path):
    """ESP-in-UDP packets sealed by scapy (tunnel mode, RFC 3948 framing), as a pcap."""
    scapy_all = pytest.importorskip("scapy.all")
    from scapy.layers.ipsec import ESP, SecurityAssociation
    cases = [  # scapy algorithm names -> natt suite
        ("AES-GCM", 20, None, 0, "aes128gcm16"),
        ("AES-CBC", 16, "HMAC-SHA1-96", 20, "aes128-sha1"),
        ("AES-CBC", 32, "SHA2-256-128", 32, "aes256-sha256"),
        ("3DES", 24, "HMAC-MD5-96", 16, "3des-md5"),
    ]
    specs, frames, inner_all = [], [], []
    for i, (crypt, klen, auth, alen, suite) in enumerate(cases):
        ckey, akey = os.urandom(klen), os.urandom(alen) if alen else None
        spi = 0x3000 + i
        sa = SecurityAssociation(ESP, spi=spi, crypt_algo=crypt, crypt_key=ckey, auth_algo=auth, auth_key=akey,
                                 tunnel_header=scapy_all.IP(src=TUNNEL[0], dst=TUNNEL[1]),
                                 nat_t_header=scapy_all.UDP(sport=4500, dport=4500))
        inner = inner_packets(f"10.1.{i}.2", "10.2.0.7")
        for p in inner:
            enc = sa.encrypt(scapy_all.IP(p))
            frames.append(scapy_all.Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / enc)
        inner_all += inner
        specs.append(keys.SaSpec(spi=spi, suite=suite, key=ckey + (akey or b""), direction="in",
                                 src=TUNNEL[0], dst=TUNNEL[1]))
    cap = tmp_path / "scapy.pcap"
    scapy_all.wrpcap(str(cap), frames)
    return cap, specs, inner_all


def test_natt_decaps_scapy_sealed_nat_t_and_tshark_shows_inner_protocols(tmp_path, capsys):
    cap, specs, inner = scapy_sealed_capture(tmp_path)
    keyfile = tmp_path / "keys.json"
    keys.save(keyfile, specs)
    out = tmp_path / "clear.pcap"
    assert cli.main(["decap", str(cap), "-k", str(keyfile), "-o", str(out), "--backend", "reference"]) == 0
    capsys.readouterr()
    got = pcap.read_frames(out)
    assert [g[3] for g in got] == inner
    # Wireshark, with no keys at all, now sees the inner protocols of the decapsulated capture.
    rows = tshark(out, "ip.src", "ip.dst", "_ws.col.Protocol", config_dir=tmp_path / "empty-profile")
    assert [r[2] for r in rows] == ["ICMP", "UDP", "TCP"] * 4
    assert [r[0] for r in rows] == [f"10.1.{i}.2" for i in range(4) for _ in range(3)]


def test_natt_decap_output_of_its_own_demo_shows_inner_protocols(tmp_path, capsys):
    assert cli.main(["demo", "--out-dir", str(tmp_path), "--packets", "100", "--backend", "reference"]) == 0
    capsys.readouterr()
    rows = tshark(tmp_path / "demo-decap.pcap", "ip.proto", "udp.port", config_dir=tmp_path / "empty")
    assert len(rows) == 100
    # Decapsulated: single IP headers of the inner packets, no UDP 4500 left anywhere.
    assert {r[0] for r in rows} <= {"1", "6", "17"} and len({r[0] for r in rows}) == 3
    assert not any("4500" in r[1].split(",") for r in rows)
    # And the demo's own esp_sa makes tshark decrypt demo.pcap with every ICV verified.
    cfg = tmp_path / "xdg"
    (cfg / "wireshark").mkdir(parents=True)
    shutil.copy(tmp_path / "demo.esp_sa", cfg / "wireshark" / "esp_sa")
    rows = tshark(tmp_path / "demo.pcap", "esp.icv_good", "esp.icv_bad", config_dir=cfg)
    assert len(rows) == 100
    assert not any(r[1] == "1" for r in rows)
    # Random inner payloads on well-known ports can make tshark's inner dissector throw before
    # it adds ESP's verdict (seen with NTP); most packets still carry it.
    assert sum(r[0] == "1" for r in rows) >= 80


@pytest.mark.parametrize("linktype", [pcap.LINKTYPE_ETHERNET, pcap.LINKTYPE_IPV4])
def test_natt_decap_of_inner_ipv6_is_ipv6_to_tshark(tmp_path, capsys, linktype):
    # A tunnel SA may carry IPv6 (next header 41). The frame natt writes must say IPv6 in its
    # link header (Ethertype 0x86dd; a raw-IPv4 capture becomes raw IP): tshark called the
    # IPv6 packet behind the kept 0x0800 a "Bogus IPv4 version".
    key = bytes(range(20))
    sealer = traffic.EspSealer("aes128gcm16", key, 0x6006)
    inner = [traffic.icmp6_echo("2001:db8::1", "2001:db8::2", seq=i) for i in range(3)]
    inner4 = traffic.icmp_echo("10.9.0.1", "10.9.0.2")
    wire = [traffic.esp_in_udp(sealer, i + 1, p, tunnel=True, src=TUNNEL[0], dst=TUNNEL[1])
            for i, p in enumerate(inner + [inner4])]
    cap, out = tmp_path / "v6.pcap", tmp_path / "clear.pcap"
    pcap.write_datagrams(cap, wire, linktype=linktype)
    keyfile = tmp_path / "keys.json"
    keys.save(keyfile, [keys.SaSpec(0x6006, "aes128gcm16", key, "in", "tunnel", *TUNNEL)])
    assert cli.main(["decap", str(cap), "-k", str(keyfile), "-o", str(out), "--backend", "reference"]) == 0
    assert "4 written" in capsys.readouterr().out
    stderr: list[str] = []
    rows = tshark(out, "ipv6.dst", "ip.dst", "_ws.col.Protocol", config_dir=tmp_path / "empty", stderr=stderr)
    assert rows == [["2001:db8::2", "", "ICMPv6"]] * 3 + [["", "10.9.0.2", "ICMP"]]
    assert not any("Bogus" in line for line in stderr)


@pytest.mark.parametrize("variant", ["rh6_1pcap", "nokiapcap", "suse6_3pcap", "modpcap"])
def test_natt_decaps_the_pcap_variants_editcap_writes_as_it_decaps_the_original(tmp_path, capsys, variant):
    # Old patched libpcaps lengthened the record header and kept a magic; editcap still writes
    # those files and tshark reads them. natt refused three ("corrupt pcap record").
    editcap = shutil.which("editcap")
    assert editcap, "editcap (Wireshark's command-line tools) is not installed"
    assert cli.main(["demo", "--out-dir", str(tmp_path), "--packets", "40", "--backend", "reference"]) == 0
    old = tmp_path / f"{variant}.pcap"
    subprocess.run([editcap, "-F", variant, str(tmp_path / "demo.pcap"), str(old)], check=True, timeout=60)
    assert old.read_bytes() != (tmp_path / "demo.pcap").read_bytes()
    want = pcap.read_frames(tmp_path / "demo-decap.pcap")
    out = tmp_path / f"{variant}-decap.pcap"
    assert cli.main(["decap", str(old), "-k", str(tmp_path / "demo.esp_sa"), "-o", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    got = pcap.read_frames(out)
    # editcap writes microseconds, so a nanosecond demo loses the digits below them.
    assert [g[2:] for g in got] == [w[2:] for w in want]
    assert [g[0] // 1000 for g in got] == [w[0] // 1000 for w in want]
    assert len(tshark(out, "frame.number")) == len(want)


_PAD50 = bytes.fromhex("020000000002020000000001" "0800" "4500001c0001000040117cce7f0000017f000001"
                       "0035003500080172") + bytes(8)


@pytest.mark.parametrize("order,linktype,snaplen,records", [
    (">", 101, 1500, [(0, 667323, b"", 24), (35900, 807062, b"", 1), (0, 785106, b"", 0)]),
    (">", 1, 96, [(0, 190020, _PAD50, 0), (0, 753098, b"", 0), (0, 135255, b"", 0)]),
    (">", 0, 1500, [(1700000000, 415978, b"", 4), (0, 895208, bytes.fromhex("e1b084277ab484de6e"), 1)]),
    ("<", 1, 65535, [(0, 618177, _PAD50, 50), (2589208447, 4942, bytes.fromhex("ea57827ebea0f60a"), 0)]),
], ids=["redhat-empty-records", "redhat-cap-over-orig", "nokia-orig-1", "nokia-orig-0"])
def test_short_standard_captures_with_empty_records_read_as_tshark_reads_them(tmp_path, order, linktype, snaplen,
                                                                                records):
    # Standard captures of two or three records, like those test_pcap's generator makes of what a
    # fuzz run found, that natt read as Red Hat 6.1 (the first two) or Nokia ones (the others):
    # a record's odd original length counted against the standard header, whose records fit.
    # tshark 4.0 and 4.4 read all four as standard.
    cap = tmp_path / "short.pcap"
    cap.write_bytes(struct.pack(order + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype) + b"".join(
        struct.pack(order + "IIII", sec, frac, len(frame), orig) + frame for sec, frac, frame, orig in records))
    with pcap.PcapReader(cap) as r:
        got = [[str(int(c.origlen[i])), str(int(c.caplen[i]))] for c in r for i in range(len(c))]
    assert got == tshark(cap, "frame.len", "frame.cap_len") == [[str(orig), str(len(frame))]
                                                                for _, _, frame, orig in records]


def _pcapng(order: str, frames: list[bytes], frame_options: list[list[tuple[int, bytes]]],
            shb_options: list[tuple[int, bytes]], idb_options: list[tuple[int, bytes]]) -> bytes:
    """A one-interface Ethernet pcapng in byte order ``order``, built by hand (not by natt)."""
    def opts(options):
        if not options:
            return b""
        return b"".join(struct.pack(order + "HH", c, len(v)) + v + b"\0" * (-len(v) % 4) for c, v in options) \
            + struct.pack(order + "HH", 0, 0)

    def block(btype, body):
        return struct.pack(order + "II", btype, 12 + len(body)) + body + struct.pack(order + "I", 12 + len(body))

    out = block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1) + opts(shb_options))
    out += block(1, struct.pack(order + "HHI", pcap.LINKTYPE_ETHERNET, 0, 0) + opts(idb_options))
    for i, (frame, fo) in enumerate(zip(frames, frame_options)):
        out += block(6, struct.pack(order + "IIIII", 0, 0, i, len(frame), len(frame)) + frame
                     + b"\0" * (-len(frame) % 4) + opts(fo))
    return out


@pytest.mark.parametrize("order", ["<", ">"])
def test_comments_and_directions_stay_on_their_frames_through_natt_decap(tmp_path, capsys, order):
    """pcapng comments (some added by editcap -a) and epb_flags directions, read by tshark from
    natt decap's output, are on the frames they were on; the section's comment, hardware and OS
    and the interface's description too. natt dropped every option."""
    editcap, capinfos = shutil.which("editcap"), shutil.which("capinfos")
    assert editcap and capinfos, "editcap and capinfos (Wireshark's command-line tools) are not installed"
    assert cli.main(["demo", "--out-dir", str(tmp_path), "--packets", "40", "--backend", "reference"]) == 0
    capsys.readouterr()
    frames = [f for _, _, f, _ in pcap.read_frames(tmp_path / "demo.pcap")]
    directions = [i % 3 for i in range(len(frames))]         # epb_flags: none, inbound, outbound
    frame_options = [[(2, struct.pack(order + "I", d))] if d else [] for d in directions]
    frame_options[5].insert(0, (1, "natt, frame six \u2713".encode()))
    frame_options[30].append((1, b"thirty-one"))
    src = tmp_path / "src.pcapng"
    src.write_bytes(_pcapng(order, frames, frame_options,
                            [(1, b"ESP capture"), (2, b"x86_64"), (3, b"Linux 6.1"), (4, b"dumpcap")],
                            [(2, b"eth0"), (3, b"uplink to the VPN gateway")]))
    if order == "<":
        # editcap writes little-endian: the big-endian file keeps the comments built into it.
        annotated = tmp_path / "annotated.pcapng"
        subprocess.run([editcap, "-a", "3:third frame", "-a", "17:seventeen", str(src), str(annotated)],
                       check=True, timeout=60, capture_output=True)
        src = annotated
    out = tmp_path / "clear.pcapng"
    assert cli.main(["decap", str(src), "-k", str(tmp_path / "demo.esp_sa"), "-o", str(out), "--no-progress"]) == 0
    assert f"{len(frames)} written" in capsys.readouterr().out
    fields = ("frame.comment", "frame.p2p_dir", "frame.interface_description", "esp.spi")
    before = tshark(src, *fields, config_dir=tmp_path / "empty")
    after = tshark(out, *fields, config_dir=tmp_path / "empty")
    assert len(before) == len(after) == len(frames)
    assert [row[:3] for row in after] == [row[:3] for row in before]
    comments = {i + 1: row[0] for i, row in enumerate(after) if row[0]}
    want = {6: "natt, frame six \u2713", 31: "thirty-one"}
    assert comments == (want | {3: "third frame", 17: "seventeen"} if order == "<" else want)
    assert [row[1] for row in after] == [["", "1", "0"][d] for d in directions]     # tshark: 1 in, 0 out
    assert {row[2] for row in after} == {"uplink to the VPN gateway"}
    assert all(row[3] for row in before) and not any(row[3] for row in after), "decrypted: no ESP left"
    info = subprocess.run([capinfos, str(out)], check=True, capture_output=True, text=True, timeout=60).stdout
    for line in ("Capture comment:     ESP capture", "Capture hardware:    x86_64", "Capture oper-sys:    Linux 6.1",
                 f"Capture application: natt {natt.__version__}"):
        assert line in info, info


@pytest.mark.parametrize("order", ["<", ">"])
def test_an_end_of_options_with_a_length_reads_in_natt_as_in_tshark(tmp_path, order):
    """An opt_endofopt with a length (pcapng §3.5 gives it none): one that fits its block ends the
    list for tshark and natt alike, the comment after it unread; one whose length runs past the
    block makes both refuse the file."""
    frame = traffic.udp_datagram("192.0.2.1", "192.0.2.2", 40000, 40001, b"x")
    eth = bytes.fromhex("020000000002020000000001") + b"\x08\x00" + frame
    data = _pcapng(order, [eth], [[(1, b"kept"), (0, b"junk"), (1, b"hidden")]], [], [])
    fits = tmp_path / "fits.pcapng"
    fits.write_bytes(data)
    assert tshark(fits, "frame.comment", config_dir=tmp_path / "empty") == [["kept"]]
    with pcap.PcapReader(fits) as r:
        assert [c.frame_options(0) for c in r] == [[(1, b"kept")]]
    end = struct.pack(order + "HH", 0, 4) + b"junk"
    assert data.count(end) == 1
    past = tmp_path / "past.pcapng"
    past.write_bytes(data.replace(end, struct.pack(order + "HH", 0, 200) + b"junk"))
    p = subprocess.run([TSHARK, "-n", "-r", str(past)], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "empty")))
    assert p.returncode != 0 and "Not enough data to handle option of length 200" in p.stderr, p.stderr
    with pytest.raises(pcap.PcapError, match=r"option \(code 0, length 200\).*runs past"):
        pcap.read_frames(past)


@pytest.mark.parametrize("order", ["<", ">"])
def test_tshark_reads_the_drop_counts_of_packet_blocks_from_natts_output_as_from_its_input(tmp_path, order):
    """Obsolete Packet Blocks (Drops Count 7, 0xFFFF "not available", 0, and 5 with an
    epb_dropcount of 9 in the block), written by natt as Enhanced Packet Blocks: tshark's
    frame.drop_count is the same in both files."""
    eth = bytes.fromhex("020000000002020000000001") + b"\x08\x00" + traffic.udp_datagram(
        "192.0.2.1", "192.0.2.2", 40000, 40001, b"x")

    def block(btype, body):
        return struct.pack(order + "II", btype, 12 + len(body)) + body + struct.pack(order + "I", 12 + len(body))

    def pb(drops, opts=b""):
        return block(2, struct.pack(order + "HHIIII", 0, drops, 0, 0, len(eth), len(eth)) + eth
                     + b"\0" * (-len(eth) % 4) + opts)

    src = tmp_path / "pb.pcapng"
    src.write_bytes(block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))
                    + block(1, struct.pack(order + "HHI", pcap.LINKTYPE_ETHERNET, 0, 0))
                    + pb(7) + pb(0xFFFF) + pb(0)
                    + pb(5, struct.pack(order + "HHQ", 4, 8, 9) + struct.pack(order + "HH", 0, 0)))
    out = tmp_path / "out.pcapng"
    with pcap.PcapReader(src) as r, pcap.PcapWriter.like(r, out) as w:
        for c in r:
            w.write_chunk(c)
    before = tshark(src, "frame.drop_count", config_dir=tmp_path / "empty")
    assert before == [["7"], [""], ["0"], ["9"]]
    assert tshark(out, "frame.drop_count", config_dir=tmp_path / "empty") == before


@pytest.mark.parametrize("decrypting", [False, True], ids=["plain", "decrypting"])
def test_natt_explain_reads_tsharks_hex_dump_of_a_frame(tmp_path, capsys, decrypting):
    """The example of natt explain --help, as printed: tshark -x's dump of frame 7 of the demo
    capture, piped in, walks to OK from the IPv4 header. With the keys in tshark's profile,
    tshark adds a dump of the decrypted data after the frame's: the frame's is read."""
    assert cli.main(["demo", "--out-dir", str(tmp_path), "--packets", "50", "--backend", "reference"]) == 0
    capsys.readouterr()
    (tmp_path / "demo.pcap").rename(tmp_path / "cap.pcap")
    (tmp_path / "demo.esp_sa").rename(tmp_path / "esp_sa")
    cli.main(["explain", "--help"])
    text = capsys.readouterr().out
    example = next(line for line in text.splitlines() if "tshark -r" in line).strip()
    command = example.replace("natt explain", f"{sys.executable} -m natt explain", 1).replace("tshark", TSHARK, 1)
    env = dict(os.environ, PYTHONWARNINGS="ignore", XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    if decrypting:
        (tmp_path / "xdg" / "wireshark").mkdir(parents=True)
        (tmp_path / "xdg" / "wireshark" / "esp_sa").write_bytes((tmp_path / "esp_sa").read_bytes())
        command = command.replace(" -x ", " -o esp.enable_encryption_decode:TRUE -x ", 1)
    p = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "frame: an Ethernet frame; the walk starts at its IPv4 header, octet 15"
    assert lines[-1] == "=> OK (step 12)"
    frame = pcap.read_frames(tmp_path / "cap.pcap")[6][2]
    assert (f"natt explain: note: HEX holds more than one hex dump; the first ({len(frame)} octets) is explained"
            in p.stderr) == decrypting

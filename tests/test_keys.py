"""natt.keys: JSON key files, Wireshark esp_sa tables, installing SA sets."""

from __future__ import annotations

import itertools
import dataclasses
import errno
import io
import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import natt
import natt._files
from natt import keys
from natt import traffic

K16 = bytes(range(16))
K20 = bytes(range(100, 120))


def spec(**kw):
    base = dict(spi=0x1001, suite="aes128gcm16", key=K20, direction="in", mode="tunnel",
                src="198.51.100.2", dst="203.0.113.5")
    base.update(kw)
    return keys.SaSpec(**base)


# ---------------------------------------------------------------------------------------------- JSON


def test_json_round_trip_keeps_every_field(tmp_path):
    specs = [
        spec(),
        keys.SaSpec(spi=0xDEADBEEF, suite="aes256-sha256-esn", key=bytes(64), direction="out",
                    mode="tunnel", src="192.0.2.1", dst=None, encap=natt.UdpEncapType.IKE, port=500,
                    sport=1234, dport=4501, esn=True, replay_window=0, replay_seq=7, replay_oseq=9,
                    nat_oa_src="10.0.0.1", nat_oa_dst="10.0.0.2", inner_src="10.1.0.0/16",
                    inner_dst="10.2.3.0/24", df_bit="clear", name="peer-b"),
        spec(spi=0x1002, suite="aes128gcm16-esn", esn=True, replay_seq=(3 << 32) + 5, replay_bitmap=0x15,
             replay_fail_run=2**32 - 1),
    ]
    path = tmp_path / "k.json"
    keys.save(path, specs)
    back = keys.load(path)
    for a, b in zip(specs, back):
        assert dataclasses_equal(a, b)
    # Where each was read, for install's errors; not a field of the file.
    assert [b.origin for b in back] == [f"{path}: SA #1", f"{path}: SA #2", f"{path}: SA #3"]


def test_json_carries_an_exported_replay_state(tmp_path):
    # replay_state out, a key file, and back in: the SA elsewhere decides every number as the
    # one it came from (a 1024-number window: its bitmap has more digits than json reads).
    inner = traffic.inner_traffic(2, 1)
    for backend in natt.backends():
        tx = natt.Offload(backend=backend)
        out = spec(suite="aes128gcm16-esn", direction="out", replay_oseq=(3 << 32) - 900)
        (txh,) = keys.install(tx, [out])
        sealed = list(tx.encap(inner * 1200, txh))
        first = natt.Offload(backend=backend)
        (h,) = keys.install(first, [spec(suite="aes128gcm16-esn", replay_window=1024,
                                         replay_seq=(3 << 32) - 901)])
        assert first.decap(sealed[:1100:3] + sealed[1000:1005]).status.tolist().count(natt.Status.OK) == 371
        top, bitmap = first.replay_state(h)
        moved = spec(suite="aes128gcm16-esn", replay_window=1024, replay_seq=top, replay_bitmap=bitmap)
        path = tmp_path / f"{backend}.json"
        keys.save(path, [moved])
        assert json.loads(path.read_text())[0]["replay_bitmap"] == f"0x{bitmap:x}"
        (back,) = keys.load(path)
        assert back.replay_bitmap == bitmap and back.replay_seq == top
        second = natt.Offload(backend=backend)
        keys.install(second, [back])
        # Every number the first SA took is a replay on the second; the rest pass on both.
        assert second.decap(sealed).status.tolist() == first.decap(sealed).status.tolist()


def test_json_carries_an_esn_sa_run_of_failed_packets(tmp_path):
    # An ESN SA saved in the middle of a run of ICV failures (2**32 packets lost, RFC 4303
    # Appendix A3): restored from the file, it resynchronises at the same packet as the original.
    inner = traffic.inner_traffic(2, 1)
    for backend in natt.backends():
        tx = natt.Offload(backend=backend)
        (txh,) = keys.install(tx, [spec(suite="aes128gcm16-esn", direction="out",
                                        replay_oseq=(6 << 32) + 2000)])
        lost = list(tx.encap((inner * 64)[:64], txh))
        first = natt.Offload(backend=backend)
        (h,) = keys.install(first, [spec(suite="aes128gcm16-esn", replay_seq=(5 << 32) + 1000)])
        assert set(first.decap(lost[:50]).status.tolist()) == {natt.Status.AUTH_FAILED}
        top, bitmap = first.replay_state(h)
        run = first.sa_stats(h)["replay_fail_run"]
        assert run == 50
        path = tmp_path / f"{backend}.json"
        keys.save(path, [spec(suite="aes128gcm16-esn", replay_seq=top, replay_bitmap=bitmap,
                              replay_fail_run=run)])
        assert json.loads(path.read_text())[0]["replay_fail_run"] == 50
        (back,) = keys.load(path)
        assert back.replay_fail_run == 50
        second = natt.Offload(backend=backend)
        (h2,) = keys.install(second, [back])
        assert second.sa_stats(h2)["replay_fail_run"] == 50
        want = first.decap(lost[50:])
        assert want.status.tolist() == [natt.Status.AUTH_FAILED] * 13 + [natt.Status.OK]
        got = second.decap(lost[50:])
        assert got.status.tolist() == want.status.tolist() and got.seq.tolist() == want.seq.tolist()


def dataclasses_equal(a, b):
    """Equal in every key-file field (``origin`` says where a spec was read, not what it is)."""
    import dataclasses
    return ({**dataclasses.asdict(a), "origin": None} == {**dataclasses.asdict(b), "origin": None})


def test_json_accepts_sas_object_int_spi_and_spaced_hex():
    text = json.dumps({"sas": [{"spi": 4097, "suite": "aes128-sha1",
                                "key": "0x" + " ".join(f"{b:02x}" for b in bytes(36))}]})
    (s,) = keys.loads(text)
    assert s.spi == 4097 and s.key == bytes(36) and s.direction == "in" and s.mode == "tunnel"


def test_json_key_prefix_0x_in_either_case():
    # "0x" and "0X" both mark hex (as int(..., 0) reads them for the SPI, and esp_sa key columns).
    for prefix in ("0x", "0X"):
        (s,) = keys.loads(json.dumps([{"spi": 1, "suite": "aes128gcm16", "key": prefix + K20.hex()}]))
        assert s.key == K20


def test_inner_selectors_take_networks_and_plain_addresses():
    (s,) = keys.loads(json.dumps([{"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "direction": "out",
                                   "inner_src": "10.1.0.0/16", "inner_dst": "192.0.2.7"}]))
    assert (s.inner_src, s.inner_dst) == ("10.1.0.0/16", "192.0.2.7/32")


def test_suite_esn_suffix_sets_esn():
    (s,) = keys.loads(json.dumps([{"spi": 1, "suite": "aes128gcm16-esn", "key": K20.hex()}]))
    assert s.esn and s.uses_esn


def test_explicit_esn_must_agree_with_the_suite_suffix():
    sa = {"spi": 1, "suite": "aes128gcm16-esn", "key": K20.hex()}
    with pytest.raises(keys.KeyFileError, match=r"SA #1 \(spi 0x00000001\): esn: false, but the suite is "
                                                r"aes128gcm16-esn") as ei:
        keys.loads(json.dumps([dict(sa, esn=False)]))
    assert K20.hex() not in str(ei.value)
    assert keys.loads(json.dumps([dict(sa, esn=True)]))[0].esn
    assert keys.loads(json.dumps([dict(sa, suite="aes128gcm16", esn=True)]))[0].uses_esn
    with pytest.raises(keys.KeyFileError, match=r"esn: true, but the suite is aes128gcm16-noesn"):
        keys.loads(json.dumps([dict(sa, suite="aes128gcm16-noesn", esn=True)]))
    assert not keys.loads(json.dumps([dict(sa, suite="aes128gcm16-noesn")]))[0].uses_esn


@pytest.mark.parametrize("text, message", [
    # json itself keeps the last of a repeated name: the first value would be silently ignored.
    ('[{"spi": 1, "suite": "aes128gcm16", "key": "%s", "replay_window": 0, "replay_window": 64}]' % K20.hex(),
     r"^SA #1: field\(s\) 'replay_window' given more than once$"),
    ('[{"spi": 1, "suite": "aes128gcm16", "key": "%s", "key": "%s"}]' % (K16.hex(), K20.hex()),
     r"^SA #1: field\(s\) 'key' given more than once$"),
    ('{"sas": [], "sas": [{"spi": 1}]}', r"^the key file: field\(s\) 'sas' given more than once$"),
    ('{"replay_windw": 0, "sas": []}', r"^unknown top-level field\(s\) 'replay_windw': SA fields go in each SA"),
    ("[" * 100_000 + "]" * 100_000, r"^not a key file: JSON nested too deeply$"),
], ids=["repeated-field", "repeated-key", "repeated-sas", "top-level-field", "deep"])
def test_json_mistakes_json_itself_would_let_through(text, message):
    with pytest.raises(keys.KeyFileError, match=message) as ei:
        keys.loads(text)
    assert K20.hex() not in str(ei.value) and K16.hex() not in str(ei.value)


@pytest.mark.parametrize("sa,message", [
    ({"suite": "aes128gcm16", "key": K20.hex()}, "missing field 'spi'"),
    ({"spi": 0, "suite": "aes128gcm16", "key": K20.hex()}, "spi"),
    ({"spi": "0x1g", "suite": "aes128gcm16", "key": K20.hex()}, "spi"),
    ({"spi": 1, "suite": "rot13", "key": K20.hex()}, "unknown ESP proposal"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K16.hex()}, "16 octets, aes128gcm16 needs 20"),
    ({"spi": 1, "suite": "aes128gcm16", "key": "zz" + K20.hex()}, "not a hex string"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "direction": "up"}, "direction"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "src": "300.1.1.1"}, "src"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "port": 70000}, "port"),
    # The edges just past the valid ranges, refused while reading rather than at install time.
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "dport": 65536}, r"dport: must be 1 \.\. 65535"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "replay_seq": -1},
     "replay_seq: must be a non-negative integer"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "encap": "GRE"}, "encap"),
    # ipaddress and UdpEncapType read these as 0.0.0.1 and IKE; a key file means neither.
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "src": True}, "src: True is not an IPv4 address"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "dst": 1}, "dst: 1 is not an IPv4 address"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "nat_oa_src": False}, "nat_oa_src: False is not"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "inner_dst": True}, "inner_dst: True is not an IPv4 network"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "encap": False}, "encap: .* got False"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "colour": "red"}, "unknown field"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "inner_src": "10.0.0.1/8"},
     r"inner_src: '10.0.0.1/8' has host bits set \(the network is 10.0.0.0/8"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "inner_dst": "10.0.0.0/33"},
     "inner_dst: .* not an IPv4 network"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "replay_bitmap": "ff"},
     r"replay_bitmap: expected a non-negative integer or \"0x…\" hex, got 'ff'"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "replay_bitmap": -1}, "replay_bitmap: expected"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "replay_bitmap": True}, "replay_bitmap: expected"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "replay_bitmap": 1, "direction": "out"},
     r"replay_bitmap: only an inbound SA with anti-replay has one \(direction 'out', replay_window 64\)"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "replay_bitmap": 0, "replay_window": 0},
     r"replay_bitmap: only an inbound SA .*replay_window 0"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "replay_bitmap": "0x1" + "0" * 16, "replay_window": 64},
     r"replay_bitmap: has bits past the 64-number window"),
    ({"spi": 1, "suite": "aes128gcm16-esn", "key": K20.hex(), "replay_fail_run": -1},
     "replay_fail_run: must be a non-negative integer, got -1"),
    ({"spi": 1, "suite": "aes128gcm16-esn", "key": K20.hex(), "replay_fail_run": "3"},
     "replay_fail_run: must be a non-negative integer, got '3'"),
    ({"spi": 1, "suite": "aes128gcm16-esn", "key": K20.hex(), "replay_fail_run": 1 << 32},
     r"replay_fail_run: 0 .. 2\*\*32-1, got 4294967296"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "replay_fail_run": 5},
     r"replay_fail_run: only an inbound ESN SA counts its failed packets \(direction 'in', esn False\)"),
    ({"spi": 1, "suite": "aes128gcm16-esn", "key": K20.hex(), "replay_fail_run": 5, "direction": "out"},
     r"replay_fail_run: only an inbound ESN SA .*\(direction 'out', esn True\)"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "df_bit": "sometimes"},
     r"df_bit: 'copy', 'set' or 'clear', got 'sometimes'"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "df_bit": True}, r"df_bit: 'copy', 'set' or 'clear', got True"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "df_bit": None}, r"df_bit: 'copy', 'set' or 'clear', got None"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "df_bit": K20.hex()}, r"df_bit: .*not shown: a key\?"),
    ({"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "df_bit": "set", "mode": "transport", "direction": "out"},
     r"df_bit: 'set' is for tunnel-mode SAs"),
])
def test_json_errors_name_the_sa_and_field_never_the_key(sa, message):
    with pytest.raises(keys.KeyFileError, match=message) as ei:
        keys.loads(json.dumps([sa]))
    assert "SA #1" in str(ei.value)
    assert K20.hex() not in str(ei.value) and K16.hex() not in str(ei.value)


@pytest.mark.parametrize("fmt", ["json", "esp_sa"])
def test_a_leading_byte_order_mark_is_skipped(tmp_path, fmt):
    path = tmp_path / f"k.{fmt}"
    path.write_bytes(b"\xef\xbb\xbf" + keys.dumps([spec()], fmt).encode())
    (s,) = keys.load(path)
    assert (s.spi, s.key) == (spec().spi, spec().key)


def test_an_spi_too_wide_for_32_bits_is_not_shown_beside_another_error():
    # An SA missing its key named its SPI in hex, however wide: a key put in the spi field.
    wide = int.from_bytes(bytes(range(1, 21)), "big")
    with pytest.raises(keys.KeyFileError, match=r"^SA #1 \(spi <a 153-bit integer, not shown: a key\?>\): "
                                                r"missing field 'key'$") as ei:
        keys.loads(json.dumps([{"spi": wide, "suite": "aes128gcm16"}]))
    assert f"{wide:x}" not in str(ei.value) and str(wide) not in str(ei.value)


def test_a_json_number_python_cannot_read_is_a_key_file_error(tmp_path):
    # A 65 536-bit replay_bitmap in decimal: Python reads no integer of more than 4 300 digits.
    path = tmp_path / "k.json"
    path.write_text('[{"spi": 1, "suite": "aes128gcm16", "key": "%s", "replay_window": 65536, '
                    '"replay_bitmap": 1%s}]' % (K20.hex(), "0" * 19727))
    with pytest.raises(keys.KeyFileError, match=r"k\.json: not a usable key file: a JSON number has more than "
                                                r"\d+ digits \(write a wide replay_bitmap as \"0x…\" hex\)$"):
        keys.load(path)


def test_invalid_json_reports_position_only():
    secret = "00112233445566778899aabbccddeeff"
    with pytest.raises(keys.KeyFileError, match="line 1") as ei:
        keys.loads('[{"spi": 1, "key": "' + secret + '",,}]')
    assert secret not in str(ei.value)
    with pytest.raises(keys.KeyFileError, match=r"^not valid JSON: Unterminated string starting at: line 2 column 9$"):
        keys.loads('[{"spi": 1,\n "key": "' + secret)


def _everything_reachable(obj, seen=None, depth=0):
    """The strings and octets reachable from an exception: its message, chained exceptions and
    their attributes, as anything that logs or walks an exception could reach them."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 6:
        return
    seen.add(id(obj))
    if isinstance(obj, (str, bytes, bytearray, memoryview)):
        yield bytes(obj) if not isinstance(obj, str) else obj
        return
    if isinstance(obj, BaseException):
        yield str(obj)
        for nxt in (obj.__context__, obj.__cause__, *obj.args, *vars(obj).values()):
            yield from _everything_reachable(nxt, seen, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _everything_reachable(x, seen, depth + 1)


@pytest.mark.parametrize("text", [
    '[{"spi": 1, "suite": "aes128gcm16", "key": "KEY",,}]',              # not valid JSON
    '[' * 100000 + '"KEY"' + ']' * 100000,                                # nested too deeply
    '[{"spi": 1, "suite": "aes128gcm16", "key": "KEY", "replay_bitmap": 1%s}]' % ("0" * 19727),
], ids=["invalid", "deep", "long-number"])
def test_a_refused_key_file_leaves_its_keys_nowhere_in_the_exception(tmp_path, text):
    # raise ... from None hides a JSONDecodeError only from tracebacks: it stayed the
    # KeyFileError's __context__, whose ``doc`` is the whole file, keys included.
    secret = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4"
    text = text.replace("KEY", secret)
    with pytest.raises(keys.KeyFileError) as ei:
        keys.loads(text)
    found = list(_everything_reachable(ei.value))
    assert found and not [x for x in found if (secret in x if isinstance(x, str) else secret.encode() in x)]
    path = tmp_path / "k.json"
    path.write_bytes(text.encode() + b"\xff")                           # and invalid UTF-8 at the end
    with pytest.raises(keys.KeyFileError, match=r"not a text file \(invalid UTF-8\)$") as ei:
        keys.load(path)
    found = list(_everything_reachable(ei.value))
    assert found and not [x for x in found if (secret in x if isinstance(x, str) else secret.encode() in x)]


def test_loads_reads_octets_as_utf8():
    # It said "a bytes-like object is required, not 'str'" when given bytes.
    text = keys.dumps([spec()])
    assert [s.spi for s in keys.loads(text.encode())] == [s.spi for s in keys.loads(text)] == [spec().spi]
    assert keys.loads(bytearray(b"# no SA here\r\n")) == []
    with pytest.raises(keys.KeyFileError, match=r"^not a text file \(invalid UTF-8\)$"):
        keys.loads(text.encode() + b"\xff")
    with pytest.raises(TypeError, match=r"^text: expected str or UTF-8 bytes, got int$"):
        keys.loads(17)


def test_load_stops_at_what_no_key_file_holds(tmp_path, monkeypatch):
    # ``-k /dev/zero`` grew the process to 24 GB until the OOM killer ended it: load read the
    # whole file before looking at it.
    with pytest.raises(keys.KeyFileError, match=r"^/dev/zero: not a text file \(a NUL octet at offset 0\)$"):
        keys.load("/dev/zero")
    path = tmp_path / "capture.pcap"
    path.write_bytes(b"# a comment line\n" * 100_000 + b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00")
    with pytest.raises(keys.KeyFileError, match=r"not a text file \(a NUL octet at offset 1700005\)$"):
        keys.load(path)
    # A text file past the limit is refused once the limit is passed, not read to its end.
    monkeypatch.setattr(keys, "_MAX_KEY_FILE", 3 << 20)
    big = tmp_path / "big.txt"
    big.write_bytes(b"#" * (5 << 20))
    reads: list[int] = []
    real_open = open

    def counting_open(*args, **kwargs):
        f = real_open(*args, **kwargs)
        real_read = f.read
        f.read = lambda n=-1: reads.append(n) or real_read(n)
        return f

    monkeypatch.setattr("builtins.open", counting_open)
    with pytest.raises(keys.KeyFileError, match=r"big.txt: not a key file: larger than 3 MiB$"):
        keys.load(big)
    assert reads == [keys._READ_CHUNK] * 4


def test_utf16_key_file_is_named(tmp_path):
    # PowerShell's ">" saves UTF-16 with a byte order mark: it was "not a text file (invalid UTF-8)".
    text = keys.dumps([spec()])
    for encoding in ("utf-16", "utf-16-be", "utf-32", "utf-32-be"):
        path = tmp_path / "k.json"
        octets = text.encode(encoding)
        if encoding.endswith("-be"):      # Python writes no byte order mark for these
            octets = "\ufeff".encode(encoding) + octets
        path.write_bytes(octets)
        with pytest.raises(keys.KeyFileError, match=r"k.json: UTF-16 or UTF-32 text .*save the key file as UTF-8$"):
            keys.load(path)
        with pytest.raises(keys.KeyFileError, match=r"^UTF-16 or UTF-32 text"):
            keys.loads(octets)
    assert [s.spi for s in keys.loads(text.encode("utf-8-sig"))] == [spec().spi]


def test_repr_hides_key():
    s = spec(key=bytes.fromhex("a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4"))
    assert "a1b2c3d4" not in repr(s) and "a1b2c3d4" not in str(s)
    assert "key" not in repr(s)


def test_saved_files_are_private(tmp_path):
    for name in ("k.json", "esp_sa"):
        keys.save(tmp_path / name, [spec()])
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600


def test_saving_over_a_readable_file_makes_it_private_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "k.json"
    path.write_text("{}")
    path.chmod(0o644)
    keys.save(path, [spec()])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert keys.load(path)[0].spi == spec().spi
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.json"]



def test_a_save_that_cannot_write_leaves_no_temporary(tmp_path, monkeypatch):
    # A full disk shows when the buffered text is flushed, after the block: the temporary file
    # was then closed with that flush failing again, and not deleted. Each failed save left a
    # partial key file behind, the first octets of the keys included.
    class FullDisk(io.FileIO):
        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(natt._files, "open", lambda fd, mode: io.BufferedWriter(FullDisk(fd, mode)), raising=False)
    path = tmp_path / "k.json"
    path.write_text("[]")
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for _ in range(20):
        with pytest.raises(OSError) as e:
            keys.save(path, [spec()])
        assert e.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.json"] and path.read_text() == "[]"
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) == fds

def test_saving_through_a_symlink_replaces_the_file_it_names(tmp_path):
    # e.g. ~/.config/wireshark/esp_sa linked into a dotfiles repository
    real = tmp_path / "dotfiles" / "esp_sa"
    real.parent.mkdir()
    real.write_text("")
    link = tmp_path / "esp_sa"
    link.symlink_to(real)
    keys.save(link, [spec()])
    assert link.is_symlink() and keys.load(real)[0].spi == spec().spi


@pytest.mark.parametrize("name", ["k.json", "k.esp_sa"])
def test_save_writes_only_what_load_reads_back(tmp_path, name):
    # esp_sa too: it used to write a bad address, key length or SPI that load then refused.
    path = tmp_path / name
    for bad, error, message in [
            (spec(suite="nope"), keys.KeyFileError, r"^SA #1 \(spi 0x[0-9a-f]{8}\): suite: unknown ESP proposal 'nope'"),
            (spec(src="192.0.2.300"), keys.KeyFileError, r"src: '192.0.2.300' is not an IPv4 address"),
            (spec(key=K16[:5]), keys.KeyFileError, r"^SA #1 \(spi 0x00001001\): key: 5 octets, aes128gcm16 needs 20$"),
            (spec(spi=0), keys.KeyFileError, r"^SA #1: spi: must be 1 \.\. 2\*\*32-1, got 0$"),
            (spec(spi=2**33), keys.KeyFileError, r"^SA #1: spi: must be 1 \.\. 2\*\*32-1"),
            (spec(port=np.uint32(70000)), keys.KeyFileError, r"^SA #1 \(spi 0x00001001\): port: must be 1 \.\. 65535"),
            (spec(key="00" * 20), TypeError, r"^specs\[0\]\.key: expected bytes or bytearray, got str$"),
            ("aes128gcm16", TypeError, r"^specs\[0\]: expected an SaSpec, got str$")]:
        with pytest.raises(error, match=message):
            keys.save(path, [bad])
        assert not path.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["json", "esp_sa"])
def test_dumps_takes_the_spis_and_ports_install_takes(fmt):
    # A text or numpy SPI or port, as install accepts: written as the number it is.
    s = spec(spi="0x1001", port=np.uint16(4501), sport=np.int64(4502))
    back = keys.loads(keys.dumps([s], fmt))[0]
    assert back.spi == 0x1001 and back.label() == "spi=0x00001001 aes128gcm16"
    if fmt == "json":
        assert (back.port, back.sport) == (4501, 4502)
    assert s.label() == "spi='0x1001' aes128gcm16"


def test_saving_into_a_missing_directory_names_the_file_asked_for(tmp_path):
    path = tmp_path / "nodir" / "k.json"
    with pytest.raises(FileNotFoundError) as ei:
        keys.save(path, [spec()])
    assert ei.value.filename == str(path) and ".part" not in str(ei.value)


def test_a_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "k.json"
    keys.save(path, [spec()])
    before = path.read_bytes()

    def no_space(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        keys.save(path, [spec(), spec(spi=spec().spi + 1)])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.json"]


# ---------------------------------------------------------------------------------------------- esp_sa


WIRESHARK_LINES = [
    # (esp_sa line, suite natt must map it to)
    ('"IPv4","192.0.2.1","192.0.2.2","0x00000101","AES-GCM with 16 octet ICV [RFC4106]","0x{k20}","NULL",""',
     "aes128gcm16"),
    ('"IPv4","192.0.2.1","192.0.2.2","0x00000102","AES-GCM with 8 octet ICV [RFC4106]","0x{k36}","NULL",""',
     "aes256gcm8"),
    ('"IPv4","192.0.2.1","192.0.2.2","0x00000103","AES-GCM with 12 octet ICV [RFC4106]","0x{k28}","NULL",""',
     "aes192gcm12"),
    ('"IPv4","192.0.2.1","*","0x00000104","AES-CBC [RFC3602]","0x{k16}","HMAC-SHA-1-96 [RFC2404]","0x{k20}"',
     "aes128-sha1"),
    ('"IPv4","*","192.0.2.2","0x00000105","AES-CBC [RFC3602]","0x{k32}","HMAC-SHA-256-128 [RFC4868]","0x{k32}"',
     "aes256-sha256"),
    ('"IPv4","192.0.2.1","192.0.2.2","0x00000106","TripleDES-CBC [RFC2451]","0x{k24}","HMAC-MD5-96 [RFC2403]","0x{k16}"',
     "3des-md5"),
    ('"IPv4","192.0.2.1","192.0.2.2","0x00000107","NULL","","HMAC-SHA-1-96 [RFC2404]","0x{k20}"', "null-sha1"),
    ('"IPv4","192.0.2.1","192.0.2.2","0x00000108","AES-CBC [RFC3602]","0x{k24}","HMAC-SHA-384-192 [RFC4868]","0x{k48}"',
     "aes192-sha384"),
    ('"IPv4","192.0.2.1","192.0.2.2","0x00000109","AES-CBC [RFC3602]","0x{k32}","HMAC-SHA-512-256 [RFC4868]","0x{k64}"',
     "aes256-sha512"),
    ('"IPv4","192.0.2.1","192.0.2.2","0x0000010a","ChaCha20 with Poly1305 [RFC7634]","0x{k36}","NULL",""',
     "chacha20poly1305"),
    # strongSwan save-keys spellings: "TripleDes" and the ICV-less GCM name (read as 16 octets).
    ('"IPv4","192.0.2.1","192.0.2.2","0x0000010b","TripleDes-CBC [RFC2451]","0x{k24}","HMAC-SHA-1-96 [RFC2404]","0x{k20}"',
     "3des-sha1"),
    ('"IPv4","192.0.2.1","192.0.2.2","0x0000010c","AES-GCM [RFC4106]","0x{k20}","NULL",""', "aes128gcm16"),
]


def _fill(line):
    return line.format(**{f"k{n}": bytes(range(n)).hex() for n in (16, 20, 24, 28, 32, 36, 48, 64)})


@pytest.mark.parametrize("line,suite", WIRESHARK_LINES)
def test_esp_sa_algorithm_names_map_to_suites(line, suite):
    (s,) = keys.loads(_fill(line))
    assert s.suite == suite
    assert s.direction is None and s.mode == "tunnel"
    su = natt.parse_suite(suite)[0]
    assert len(s.key) == su.key_len


def test_esp_sa_wildcards_and_comments():
    text = "# a comment\n\n" + _fill(WIRESHARK_LINES[3][0]) + "\n" + _fill(WIRESHARK_LINES[4][0]) + "\n"
    a, b = keys.loads(text, mode="transport")
    assert (a.src, a.dst, b.src, b.dst) == ("192.0.2.1", None, None, "192.0.2.2")
    assert a.mode == b.mode == "transport"


def test_esp_sa_round_trip_every_wireshark_suite(tmp_path):
    specs = [spec(spi=0x200 + i, suite=name, key=os.urandom(natt.parse_suite(name)[0].key_len), direction=None)
             for i, name in enumerate(["aes128gcm8", "aes192gcm12", "aes256gcm16", "aes128-sha1", "aes192-sha256",
                                       "aes256-sha384", "aes128-sha512", "3des-md5", "null-sha256",
                                       "chacha20poly1305"])]
    path = tmp_path / "esp_sa"
    keys.save(path, specs)
    text = path.read_text()
    assert all(line.count('","') == 7 for line in text.splitlines() if not line.startswith("#"))
    back = keys.load(path)
    assert [(s.spi, s.suite, s.key, s.src, s.dst) for s in back] == \
        [(s.spi, s.suite, s.key, s.src, s.dst) for s in specs]


def test_the_esp_sa_to_json_conversion_of_keys_md_runs_as_printed(tmp_path):
    """docs/keys.md and natt decap's port hint give a one-line conversion of an esp_sa table to
    JSON (to add a "port"): it must run as printed and keep every SA."""
    specs = [spec(spi=0x300 + i, suite=name, key=os.urandom(natt.parse_suite(name)[0].key_len), direction=None)
             for i, name in enumerate(["aes128gcm16", "aes256-sha256"])]
    keys.save(tmp_path / "esp_sa", specs)
    doc = (Path(__file__).parent.parent / "docs" / "keys.md").read_text()
    command = re.search(r"`(python3 -c \"from natt import keys; keys\.save\('keys\.json', "
                        r"keys\.load\('esp_sa'\)\)\")`", doc).group(1)
    # python3 as this interpreter, which has natt.
    subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=tmp_path, check=True)
    back = keys.load(tmp_path / "keys.json")
    assert [(s.spi, s.suite, s.key, s.src, s.dst) for s in back] == \
        [(s.spi, s.suite, s.key, s.src, s.dst) for s in specs]


@pytest.mark.parametrize("line,message", [
    ('"IPv4","*","*","0x1","CAST5-CBC [RFC2144]","0x00","NULL",""', "CAST5-CBC"),
    ('"IPv4","*","*","0x1","AES-CBC [RFC3602]","0x{k16}","ANY 96 bit authentication [no checking]",""',
     "always verifies the ICV"),
    ('"IPv4","*","*","0x1","AES-CBC [RFC3602]","0x{k16}","NULL",""', "integrity algorithm"),
    ('"Any","*","*","0x1","NULL","","HMAC-SHA-1-96 [RFC2404]","0x{k20}"', "IPv4"),
    ('"IPv4","*","*","*","NULL","","HMAC-SHA-1-96 [RFC2404]","0x{k20}"', "SPI"),
    ('"IPv4","*","*","0x1","AES-CBC [RFC3602]","0x{k20}","HMAC-SHA-1-96 [RFC2404]","0x{k20}"', "AES-CBC needs"),
    ('"IPv4","*","*","0x1","AES-CBC [RFC3602]","0x{k16}","HMAC-SHA-1-96 [RFC2404]","0x{k16}"', "needs 16 \\+ 20"),
    ('"IPv4","*","*","0x1","AES-GCM with 16 octet ICV [RFC4106]","0x{k20}","HMAC-SHA-1-96 [RFC2404]","0x{k20}"',
     "must be NULL"),
    ('IPv4,*,*', "double-quoted"),
    ('"IPv4","*","*","0x1"', "8 quoted fields"),
    ('"IPv4","*","*","0x1","NULL","","HMAC-SHA-1-96 [RFC2404]"', "8 quoted fields"),    # 7: no auth key
])
def test_esp_sa_errors_name_the_line_never_the_key(line, message):
    with pytest.raises(keys.KeyFileError, match=message) as ei:
        keys.loads("# header\n" + _fill(line))
    assert "line 2" in str(ei.value)
    assert bytes(range(16)).hex() not in str(ei.value)


def test_esp_sa_ipv6_lines_are_left_out_with_a_warning_not_refused():
    # strongSwan's save-keys writes a dual-stack host's IPv6 SAs into the same table; the IPv4
    # SAs of the file must still load (one IPv6 line used to refuse the whole file).
    v4 = '"IPv4","198.51.100.2","203.0.113.5","0x1","NULL","","HMAC-SHA-1-96 [RFC2404]","0x{k20}"'
    v6 = '"IPv6","2001:db8::1","2001:db8::2","0x2","NULL","","HMAC-SHA-1-96 [RFC2404]","0x{k20}"'
    with pytest.warns(keys.KeyFileWarning) as record:
        specs = keys.loads(_fill("\n".join([v6, v4, v6])))
    assert [s.spi for s in specs] == [1]
    assert [str(w.message) for w in record] == [f"line {n}: an IPv6 SA, left out: natt handles IPv4 SAs only"
                                                for n in (1, 3)]
    assert all(bytes(range(20)).hex() not in str(w.message) for w in record)


def test_esp_sa_text_keys_in_the_wrong_field_are_never_shown():
    # Keys without 0x are text, any text: a line with fields swapped or shifted puts one where a
    # name or number belongs, and the error about that field must not print it. Every order of
    # the eight fields, and every field left out (the rest shifted left).
    enc_key, auth_key = "S3cr3tPassw0rd!!", "An0therS3cretKey1234"
    good = ["IPv4", "1.2.3.4", "5.6.7.8", "0x00001001", "AES-CBC [RFC3602]", enc_key, "HMAC-SHA-1-96 [RFC2404]",
            auth_key]
    lines = [[good[i] for i in order] for order in itertools.permutations(range(8))]
    lines += [good[:i] + good[i + 1:] + [""] for i in range(8)]
    refused = 0
    for fields in lines:
        try:
            keys.from_esp_sa(",".join(f'"{f}"' for f in fields))
        except keys.KeyFileError as e:
            refused += 1
            assert enc_key not in str(e) and auth_key not in str(e), str(e)
    assert refused > 40000
    # A misspelt algorithm is still named, with what was meant.
    misspelt = ",".join(f'"{f}"' for f in good).replace("HMAC-SHA-1-96 [RFC2404]", "HMAC-SHA1-96 [RFC2404]")
    with pytest.raises(keys.KeyFileError, match=r"'HMAC-SHA1-96 \[RFC2404\]' \(did you mean 'HMAC-SHA-1-96"):
        keys.from_esp_sa(misspelt)
    # Another algorithm is not taken for a misspelling of one natt has ("did you mean AES-CBC?").
    ctr = ",".join(f'"{f}"' for f in good).replace("AES-CBC [RFC3602]", "AES-CTR [RFC3686]")
    with pytest.raises(keys.KeyFileError, match=r"encryption algorithm 'AES-CTR \[RFC3686\]' is not one natt "
                                                r"implements \(natt knows: "):
        keys.from_esp_sa(ctr)


@pytest.mark.parametrize("enc,auth,said", [
    # scapy's names: Wireshark's without its reference, or the start of one.
    ("AES-CBC", "HMAC-SHA-1-96 [RFC2404]",
     "encryption algorithm 'AES-CBC' (did you mean 'AES-CBC [RFC3602]'?) is not one natt implements"),
    ("aes-gcm", "NULL",
     "encryption algorithm 'aes-gcm' (did you mean 'AES-GCM with 8 octet ICV [RFC4106]' or 'AES-GCM with 12 "
     "octet ICV [RFC4106]' or 'AES-GCM with 16 octet ICV [RFC4106]'?) is not one natt implements"),
    # Shorter than any key (8 octets: DES): shown, as keys.md says, not called a shifted key.
    ("3DES", "HMAC-SHA-1-96 [RFC2404]", "encryption algorithm '3DES' is not one natt implements"),
    ("AES-CBC [RFC3602]", "SHA1", "authentication algorithm 'SHA1' is not one natt implements"),
])
def test_a_short_algorithm_name_is_shown_and_completed(enc, auth, said):
    # A newcomer writing scapy's "AES-GCM" was told "<7 characters, not shown: no algorithm
    # name, maybe a key from a shifted field>": too short to be a key, and an algorithm name.
    line = f'"IPv4","1.2.3.4","5.6.7.8","0x00001001","{enc}","0x{bytes(16).hex()}","{auth}","0x{bytes(20).hex()}"'
    with pytest.raises(keys.KeyFileError) as e:
        keys.from_esp_sa(line)
    assert said in str(e.value)
    assert "not shown" not in str(e.value)


@pytest.mark.parametrize("field,said", [
    ("replay_windw", "'replay_windw' (did you mean 'replay_window'?)"),
    ("SPI", "'SPI' (did you mean 'spi'?)"),
    ("inner-src", "'inner-src' (did you mean 'inner_src'?)"),
    ("colour", "'colour'"),
])
def test_json_unknown_field_names_its_likely_spelling(field, said):
    # Only the field was named: a typo of a long name had to be found by eye in docs/keys.md.
    with pytest.raises(keys.KeyFileError) as ei:
        keys.loads(json.dumps([{"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), field: 64}]))
    assert str(ei.value) == f"SA #1: unknown field(s) {said}"


def test_json_unknown_field_names_are_not_shown_when_they_could_be_keys():
    with pytest.raises(keys.KeyFileError, match=r"unknown field\(s\) <40 hex digits, not shown") as ei:
        keys.loads('[{"spi": 1, "suite": "aes128gcm16", "key": "00", "%s": 1}]' % bytes(range(20)).hex())
    assert bytes(range(20)).hex() not in str(ei.value)


def test_esp_sa_exact_duplicates_are_dropped_conflicts_kept():
    line = _fill(WIRESHARK_LINES[0][0])
    other_key = line.replace("0x" + bytes(range(20)).hex(), "0x" + bytes(20).hex())
    assert len(keys.loads("\n".join([line, line]))) == 1
    specs = keys.loads("\n".join([line, other_key]))
    assert len(specs) == 2
    with pytest.raises(keys.KeyFileError, match=r"^line 2 \(spi 0x00000101\): "):
        keys.install(natt.Offload(backend="reference"), specs, direction="in")


# Keys as packet-ipsec.c's compute_ascii_key reads them (after uat_unesc); checked against tshark
# 4.0.17, which verifies every ICV with these fields.
ESP_SA_KEYS = [
    ("0X" + bytes(range(20)).hex().upper(), bytes(range(20))),
    ("0x1" + bytes(range(19)).hex(), b"\x01" + bytes(range(19))),          # odd count: a leading 0
    ("0123456789abcdefSALT", b"0123456789abcdefSALT"),                     # no 0x: the text's octets
    (bytes(range(20)).hex()[:20], bytes(range(20)).hex()[:20].encode()),   # hex digits, still text
    (r"0123456789abcdef\x01\xff\x22\x5c", b"0123456789abcdef\x01\xff\"\\"),
    (r"0123456789abcdef\t\007\101\x", b"0123456789abcdef\t\x07Ax"),
    ("0123456789abcdefgh\u00e9", "0123456789abcdefgh\u00e9".encode()),     # UTF-8 text, 2 octets for é
]


@pytest.mark.parametrize("field,key", ESP_SA_KEYS)
def test_esp_sa_keys_read_as_wireshark_reads_them(field, key):
    line = f'"IPv4","*","192.0.2.2","0x301","AES-GCM with 16 octet ICV [RFC4106]","{field}","NULL",""'
    (s,) = keys.loads(line)
    assert s.suite == "aes128gcm16" and s.key == key


def test_esp_sa_text_keys_choose_the_suite_by_their_length_and_are_written_back_as_hex(tmp_path):
    # The reviewer's table: hex without 0x. Wireshark takes the 32 characters as a 32-octet
    # AES-256 key, and so does natt now.
    hexkey, hmac = bytes(range(16)).hex(), "ABCDEFGHIJKLMNOPQRST"
    (s,) = keys.loads(f'"IPv4","*","192.0.2.2","0x302","AES-CBC [RFC3602]","{hexkey}",'
                      f'"HMAC-SHA-1-96 [RFC2404]","{hmac}"')
    assert s.suite == "aes256-sha1" and s.key == hexkey.encode() + hmac.encode()
    keys.save(tmp_path / "esp_sa", [s])
    line = next(ln for ln in (tmp_path / "esp_sa").read_text().splitlines() if not ln.startswith("#"))
    fields = line[1:-1].split('","')
    assert fields[5] == "0x" + s.key[:32].hex() and fields[7] == "0x" + s.key[32:].hex()
    assert keys.load(tmp_path / "esp_sa")[0].key == s.key


@pytest.mark.parametrize("field,message", [
    ("0x0011 2233445566778899aabbccddeeff00112233", "character 7 of 43 is not a hex digit"),
    ("0x00112233445566778899aabbccddeeff0011223g", "character 42 of 42 is not a hex digit"),
    (r'0123456789abcdef\"SAL', "one octet short"),
    (r"0123456789abcdef\x00SAL", "NUL"),
    (bytes(range(20)).hex(), "40 octets; AES-GCM needs 20, 28 or 36 .*without 0x is text"),
])
def test_esp_sa_key_errors_say_why_never_the_key(field, message):
    line = f'"IPv4","*","192.0.2.2","0x303","AES-GCM with 16 octet ICV [RFC4106]","{field}","NULL",""'
    with pytest.raises(keys.KeyFileError, match=r"line 1 \(spi 0x00000303\): .*" + message) as ei:
        keys.loads(line)
    assert "0123456789abcdef" not in str(ei.value) and "00112233" not in str(ei.value)


def test_gmac_cannot_go_to_wireshark():
    with pytest.raises(keys.KeyFileError, match="GMAC"):
        keys.to_esp_sa([spec(suite="aes128gmac", key=bytes(20))])


# Newer Wireshark's esp_sa (packet-ipsec.c esp_uat_flds) adds "SN" ("32-bit" / "64-bit") and
# "ESN High Bits" (hex) after the authentication key.
ESN_LINE = _fill('"IPv4","192.0.2.1","192.0.2.2","0x{{spi:08x}}","AES-CBC [RFC3602]","0x{k16}",'
                 '"HMAC-SHA-256-128 [RFC4868]","0x{k32}"')


def test_esp_sa_sn_column_sets_esn_and_the_high_bits_start_the_counters():
    lines = [(0x401, ',"64-bit","5"'), (0x402, ',"64-bit","0"'), (0x403, ',"64-bit"'), (0x404, ',"64-bit",""'),
             (0x405, ',"64-bit","0XfFfFfFfF"'), (0x406, ',"64-bit","0x1"'), (0x407, ',"32-bit","0"'),
             (0x408, ',"32-bit","7"'), (0x409, ''), (0x40A, ',"64-bit","a","more fields are ignored"')]
    text = "\n".join(ESN_LINE.format(spi=spi) + extra for spi, extra in lines)
    got = [(s.spi, s.suite, s.esn, s.uses_esn, s.replay_seq, s.replay_bitmap, s.replay_oseq)
           for s in keys.loads(text)]
    high = {0x401: 5, 0x405: 0xFFFFFFFF, 0x406: 1, 0x40A: 0xA}
    esn = {0x401, 0x402, 0x403, 0x404, 0x405, 0x406, 0x40A}
    # Encap sends from the epoch's first number; decap's window stands 63 numbers into the epoch
    # with nothing seen, so that every number of it infers these high bits.
    counters = {spi: ((h << 32) + 63, 0, (h << 32) - 1) for spi, h in high.items()}
    assert got == [(spi, "aes128-sha256", spi in esn, spi in esn, *counters.get(spi, (0, None, 0)))
                   for spi, _ in lines]


def test_esp_sa_esn_sa_decaps_packets_of_its_high_bits():
    # The SA has sent 5 * 2**32 + 6 packets: its next ones carry high bits 5, which only the
    # column says. natt infers them from the loaded counters, for both backends.
    out = spec(suite="aes256gcm16", key=os.urandom(36), direction="out", esn=True, replay_oseq=(5 << 32) + 6)
    line = keys.to_esp_sa([out]).splitlines()[-1]
    assert line.endswith('"NULL","","64-bit","5"')
    (loaded,) = keys.loads(line)
    assert loaded.esn and loaded.key == out.key and loaded.suite == "aes256gcm16"
    inner = traffic.inner_traffic(3, 4)
    for backend in natt.backends():
        tx = natt.Offload(backend=backend)
        (h,) = keys.install(tx, [out])
        sealed = tx.encap(inner, h)
        assert sealed.seq.tolist() == [(5 << 32) + 7 + i for i in range(4)]
        rx = natt.Offload(backend=backend)
        (h_in,) = keys.install(rx, [loaded], direction="in")
        res = rx.decap(list(sealed))
        assert res.status.tolist() == [natt.Status.OK] * 4 and list(res) == inner
        assert res.seq.tolist() == sealed.seq.tolist()
        # The same loaded SA as the sender starts at the first number of the epoch.
        tx2 = natt.Offload(backend=backend)
        (h2,) = keys.install(tx2, [loaded], direction="out")
        assert tx2.encap(inner[:1], h2).seq.tolist() == [5 << 32]


def test_esp_sa_esn_sa_decaps_the_last_numbers_of_its_epoch_and_on_into_the_next():
    # The sender is 6 numbers short of 6 * 2**32: the column says 5. Wireshark authenticates
    # those numbers with high bits 5 and, across the wrap, 6. A window just before the epoch
    # inferred high bits 4 for the last 64 numbers of epoch 5 and called them replays.
    out = spec(suite="aes128gcm16", key=os.urandom(20), direction="out", esn=True, replay_oseq=(6 << 32) - 7)
    line = keys.to_esp_sa([out]).splitlines()[-1]
    assert line.endswith('"64-bit","5"')
    (loaded,) = keys.loads(line)
    inner = traffic.inner_traffic(5, 12)
    for backend in natt.backends():
        tx = natt.Offload(backend=backend)
        sealed = tx.encap(inner, keys.install(tx, [out])[0])
        assert sealed.seq.tolist() == [(6 << 32) - 6 + i for i in range(12)]
        rx = natt.Offload(backend=backend)
        (h,) = keys.install(rx, [loaded], direction="in")
        res = rx.decap(list(sealed))
        assert res.status.tolist() == [natt.Status.OK] * 12, backend
        assert list(res) == inner and res.seq.tolist() == sealed.seq.tolist()
        assert rx.decap(list(sealed)[:1]).status.tolist() == [natt.Status.REPLAY]    # and seen now


@pytest.mark.parametrize("high", [1, 5, 0xFFFFFFFF])
def test_esp_sa_esn_window_takes_every_number_of_the_epoch_once(high):
    # Numbers from the whole epoch, out of order and far apart, each accepted with the column's
    # high bits (the window slides as they come), and a repeat of the last one refused.
    (loaded,) = keys.loads(ESN_LINE.format(spi=0x412) + f',"64-bit","{high:x}"')
    key = loaded.key
    lows = [0xFFFFFFFF, 1, 0xFFFFFFC0, 0xFFFFFFBF, 0x80000000, 63, 64]
    for backend in natt.backends():
        tx = natt.Offload(backend=backend)
        rx = natt.Offload(backend=backend)
        (h,) = keys.install(rx, [loaded], direction="in")
        got = []
        for low in lows:
            seq = (high << 32) | low
            txh = tx.add_sa(0x412, key, "aes128-sha256", "out", src="192.0.2.1", dst="192.0.2.2",
                            esn=True, replay_oseq=seq - 1)
            (pkt,) = tx.encap(traffic.inner_traffic(1, 1), txh)
            tx.delete_sa(txh)
            res = rx.decap([pkt])
            got.append((res.status[0], int(res.seq[0])))
        # In arrival order: the top jumps to ...ffff; Appendix A then puts every low half below
        # ...ffc0 (the window's last number) in the next epoch, where this key's ICV fails.
        nxt = (high + 1) << 32
        expect = [(natt.Status.OK, (high << 32) | 0xFFFFFFFF), (natt.Status.AUTH_FAILED, nxt | 1),
                  (natt.Status.OK, (high << 32) | 0xFFFFFFC0), (natt.Status.AUTH_FAILED, nxt | 0xFFFFFFBF),
                  (natt.Status.AUTH_FAILED, nxt | 0x80000000), (natt.Status.AUTH_FAILED, nxt | 63),
                  (natt.Status.AUTH_FAILED, nxt | 64)]
        if high == 0xFFFFFFFF:     # no next epoch: Appendix A's Th + 1 cannot be represented
            expect = [e if e[1] < 1 << 64 else (natt.Status.REPLAY, e[1] & 0xFFFFFFFF) for e in expect]
        assert got == expect, backend


@pytest.mark.parametrize("extra,message", [
    (',"64bit","0"', r"column 9 \(SN, sequence number length\): '64bit' is neither '32-bit' nor '64-bit'"),
    (',"64-BIT","0"', r"column 9 .*'64-BIT'"),
    (',"","0"', r"column 9 .*'' is neither"),
    (',"ESN"', r"column 9 .*'ESN'"),
    (',"0x5ec7e7aa5ec7e7aa5ec7e7aa5ec7e7aa","0"', r"column 9 .*<34 hex digits, not shown: a key\?>"),
    (',"64-bit","zz"', r"column 10 \(ESN High Bits\): 'zz' is not a hexadecimal number 0 \.\. ffffffff"),
    (',"64-bit","-1"', r"column 10 .*'-1'"),
    (',"64-bit","+5"', r"column 10 .*'\+5'"),
    (',"64-bit","0x"', r"column 10 .*'0x'"),
    (',"64-bit","5 "', r"column 10 .*'5 '"),
    (',"64-bit","100000000"', r"column 10 .*'100000000' is not a hexadecimal number 0 \.\. ffffffff"),
    (',"32-bit","1g"', r"column 10 .*'1g'"),
    (',"64-bit","5ec7e7aa5ec7e7aa5ec7e7aa5ec7e7aa"', r"column 10 .*<32 hex digits, not shown: a key\?>"),
])
def test_esp_sa_bad_sn_or_high_bits_name_line_and_column_never_the_key(extra, message):
    with pytest.raises(keys.KeyFileError, match=r"line 2 \(spi 0x00000410\): " + message) as ei:
        keys.loads("# header\n" + ESN_LINE.format(spi=0x410) + extra)
    assert bytes(range(16)).hex() not in str(ei.value) and "5ec7e7aa" not in str(ei.value)


def test_esp_sa_one_sa_as_32_and_64_bit_is_two_sas():
    line = ESN_LINE.format(spi=0x411)
    specs = keys.loads("\n".join([line + ',"32-bit","0"', line + ',"64-bit","0"', line + ',"64-bit","1"']))
    assert [(s.esn, s.replay_oseq) for s in specs] == [(False, 0), (True, 0), (True, (1 << 32) - 1)]
    with pytest.raises(keys.KeyFileError, match=r"^line 2 \(spi 0x00000411\): "):
        keys.install(natt.Offload(backend="reference"), specs, direction="in")


def test_esn_goes_to_wireshark_with_the_sn_and_high_bits_columns(tmp_path):
    specs = [spec(spi=0x1001, esn=True), spec(spi=0x1002, suite="aes128gcm16-esn"),
             spec(spi=0x1003, esn=True, direction="out", replay_oseq=(7 << 32) + 3, replay_seq=9 << 32),
             spec(spi=0x1004, esn=True, direction="in", replay_seq=(2 << 32) - 1, replay_oseq=9 << 32),
             spec(spi=0x1005, esn=True, direction=None, replay_seq=(3 << 32) + 8),
             spec(spi=0x1006, esn=True, direction="out", replay_oseq=2**64 - 1),
             spec(spi=0x1007)]
    keys.save(tmp_path / "x.esp_sa", specs)
    rows = [line[1:-1].split('","') for line in (tmp_path / "x.esp_sa").read_text().splitlines()
            if not line.startswith("#")]
    assert [r[8:] for r in rows] == [["64-bit", "0"], ["64-bit", "0"], ["64-bit", "7"], ["64-bit", "2"],
                                     ["64-bit", "3"], ["64-bit", "ffffffff"], []]   # a 32-bit SA keeps 8 fields
    back = keys.load(tmp_path / "x.esp_sa")
    assert [(s.spi, s.suite, s.key, s.esn, s.replay_oseq) for s in back] == [
        (0x1001, "aes128gcm16", K20, True, 0), (0x1002, "aes128gcm16", K20, True, 0),
        (0x1003, "aes128gcm16", K20, True, (7 << 32) - 1), (0x1004, "aes128gcm16", K20, True, (2 << 32) - 1),
        (0x1005, "aes128gcm16", K20, True, (3 << 32) - 1), (0x1006, "aes128gcm16", K20, True, 2**64 - 2**32 - 1),
        (0x1007, "aes128gcm16", K20, False, 0)]
    # Saved again, each SA keeps its high bits.
    again = [line[1:-1].split('","') for line in keys.to_esp_sa(back).splitlines() if not line.startswith("#")]
    assert again == rows


# ---------------------------------------------------------------------------------------------- install


def test_install_and_decap_what_the_peer_sent():
    specs = [spec(direction="out"), spec(spi=0x1002, suite="aes256-sha256", key=os.urandom(64))]
    tx = natt.Offload(backend="reference")
    out_handles = keys.install(tx, specs, direction="out")
    rx = natt.Offload(backend="reference")
    in_handles = keys.install(rx, specs, direction="in")
    inner = traffic.inner_traffic(3, 4)
    for o, i in zip(out_handles, in_handles):
        res = rx.decap(tx.encap(inner, o))
        assert res.status.tolist() == [natt.Status.OK] * 4
        assert set(res.sa.tolist()) == {i}
        assert list(res) == inner


def test_install_uses_own_directions_and_refuses_esp_sa_without_one():
    nic = natt.Offload(backend="reference")
    h_in, h_out = keys.install(nic, [spec(), spec(spi=0x2002, direction="out")])
    assert nic.sa_stats(h_in)["direction"] == "in" and nic.sa_stats(h_out)["direction"] == "out"
    with pytest.raises(keys.KeyFileError, match="no direction"):
        keys.install(nic, [spec(spi=0x3003, direction=None)])


@pytest.mark.parametrize("spi", [0, -1, 2**32])
def test_spi_errors_give_the_valid_range(spi):
    sa = {"spi": spi, "suite": "aes128gcm16", "key": K20.hex()}
    line = f'"IPv4","*","192.0.2.2","{spi:#x}","AES-GCM with 16 octet ICV [RFC4106]","0x{K20.hex()}","NULL",""'
    nic = natt.Offload(backend="reference")
    for load in (lambda: keys.loads(json.dumps([sa])), lambda: keys.loads(line),
                 lambda: keys.install(nic, [spec(spi=0x1001), spec(spi=spi)])):
        with pytest.raises(keys.KeyFileError, match=r"(SA #\d|line 1): spi: must be 1 \.\. 2\*\*32-1, got") as ei:
            load()
        assert "outside" not in str(ei.value)
    assert nic.sa_handles() == []


def test_nat_oa_is_installed_inbound_only():
    # NAT-OA checksum repair (RFC 3948 §3.1.2) is what a receiver does; the Offload refuses it on
    # an outbound SA, so install leaves it out there instead of refusing a key file that records it.
    nat = spec(mode="transport", nat_oa_src="192.168.1.10", nat_oa_dst="10.0.0.99")
    with natt.Offload(backend="reference") as nic:
        (h_out,) = keys.install(nic, [nat], direction="out")
        (h_in,) = keys.install(nic, [nat], direction="in")
        assert nic.sa_stats(h_out)["direction"] == "out" and nic.sa_stats(h_in)["direction"] == "in"


@pytest.mark.parametrize("df_bit", ["copy", "set", "clear"])
def test_df_bit_round_trips_and_reaches_encap(tmp_path, df_bit):
    # RFC 4301 §8.1: DF set, cleared or copied per SA. The file keeps the choice ("copy", the
    # default, is not written), and keys.install gives it to the SA it installs outbound.
    path = tmp_path / "k.json"
    keys.save(path, [spec(direction="out", df_bit=df_bit)])
    assert json.loads(path.read_text())[0].get("df_bit", "copy") == df_bit
    assert ("df_bit" in json.loads(path.read_text())[0]) == (df_bit != "copy")
    (back,) = keys.load(path)
    assert back.df_bit == df_bit
    inner = [traffic.icmp_echo("10.1.0.2", "10.2.0.7", ip_flags=flags) for flags in (0, traffic.IP_FLAG_DF)]
    expect = {"copy": [0, 0x40], "set": [0x40, 0x40], "clear": [0, 0]}[df_bit]
    for backend in natt.backends():
        with natt.Offload(backend=backend) as nic:
            (h,) = keys.install(nic, [back])
            assert nic.sa_stats(h)["df_bit"] == df_bit
            assert [p[6] for p in nic.encap(inner, h)] == expect


def test_df_bit_is_installed_outbound_only():
    # Like NAT-OA the other way round: the Offload takes "set"/"clear" on outbound SAs only, and
    # natt decap installs every SA inbound, so install leaves it out there, and an SA recorded in
    # both directions is still one SA to decap.
    out = spec(direction="out", df_bit="set")
    with natt.Offload(backend="reference") as nic:
        (h_in,) = keys.install(nic, [out], direction="in")
        (h_out,) = keys.install(nic, [spec(direction="in", df_bit="clear")], direction="out")
        assert nic.sa_stats(h_in)["df_bit"] == "copy" and nic.sa_stats(h_out)["df_bit"] == "clear"
    assert keys.same_sa([out, spec()], "in") == [0, 0]
    # A spec made in code skips the reader's check; the Offload's refusal names the SA and the field.
    with natt.Offload(backend="reference") as nic:
        with pytest.raises(keys.KeyFileError, match=r"^SA #1 \(spi 0x00001001\): df_bit: 'set' applies to tunnel"):
            keys.install(nic, [spec(direction="out", mode="transport", df_bit="set")])


def test_identical_specs_without_a_direction_are_not_merged():
    # Only install(direction=...) merges an SA given twice (see the test below); each spec in its
    # own direction is added as written, so the same inbound SA twice is the Offload's refusal.
    with natt.Offload(backend="reference") as nic:
        with pytest.raises(keys.KeyFileError, match=r"SA #2 \(spi 0x00001001\): .*already installed"):
            keys.install(nic, [spec(), spec()])
        assert nic.sa_handles() == []
    assert keys.same_sa([spec(), spec()]) == [0, 1] and keys.same_sa([spec(), spec()], "in") == [0, 0]


def test_install_is_all_or_nothing():
    nic = natt.Offload(backend="reference")
    bad = spec(spi=0x1002, replay_window=5)
    with pytest.raises(keys.KeyFileError, match=r"SA #2 \(spi 0x00001002\).*replay_window") as ei:
        keys.install(nic, [spec(), bad])
    assert isinstance(ei.value.__cause__, natt.OffloadError)
    assert nic.sa_handles() == []


@pytest.mark.parametrize("spi", [np.uint32(0x1002), np.int64(0x1002), "0x1002", "4098"])
def test_install_takes_an_spi_of_any_integer_type(spi):
    # A spec made in code may carry an SPI from a numpy column, or as text: add_sa gets the
    # number (it takes numpy integers, as the whole API does; text it refuses).
    nic = natt.Offload(backend="reference")
    [h] = keys.install(nic, [spec(spi=spi)])
    assert nic.sa_stats(h)["spi"] == 0x1002 and type(nic.sa_stats(h)["spi"]) is int


@pytest.mark.parametrize("spi", [np.uint32(0), np.int64(2**32), np.float64(4098.0), True])
def test_install_refuses_an_spi_out_of_range_or_not_an_integer(spi):
    nic = natt.Offload(backend="reference")
    with pytest.raises(keys.KeyFileError, match=r"SA #1: spi: must be 1 \.\. 2\*\*32-1, got "):
        keys.install(nic, [spec(spi=spi)])
    assert nic.sa_handles() == []


@pytest.mark.parametrize("backend", natt.backends())
def test_a_refused_install_keeps_a_parser_entry_it_did_not_add(backend):
    # An OID delete with entry handle 0 leaves UDP 4500's entry without SAs; an install that
    # fails must leave it there (and its handle usable), and take away only what it added.
    nic = natt.Offload(backend=backend)
    req = natt.AddUdpEspSa(
        dst_tunnel_addr="203.0.113.5", src_tunnel_addr="198.51.100.2", flags=natt.OFFLOAD_INBOUND_SA,
        sec_assoc=[natt.OffloadSecurityAssociation(natt.Operation.ENCRYPT, 0x2002,
                                                   conf_algo=natt.AlgoInfo(natt.ConfAlgo.AES_GCM_128, 20))],
        encap_type_entry=natt.EncapTypeEntry(natt.UdpEncapType.OTHER, 4500), key_mat=bytes(20))
    assert nic.set_oid(natt.OID_TCP_TASK_IPSEC_ADD_UDPESP_SA, req) == natt.NdisStatus.SUCCESS
    delete = natt.DeleteUdpEspSa(req.offload_handle, 0)
    assert nic.set_oid(natt.OID_TCP_TASK_IPSEC_DELETE_UDPESP_SA, delete) == natt.NdisStatus.SUCCESS
    keepalive = traffic.udp_encapsulate(b"\xff", "198.51.100.2", "203.0.113.5")
    on_4501 = spec(spi=0x1003, port=4501)
    with pytest.raises(keys.KeyFileError):
        keys.install(nic, [spec(), on_4501, spec(spi=0x1002, replay_window=5)])
    assert nic.sa_handles() == []
    assert nic.decap([keepalive]).status.tolist() == [natt.Status.KEEPALIVE]
    assert nic.query_oid(natt.OID_TCP_TASK_OFFLOAD).parser_entry_count == 1      # 4501's went
    entry = req.encap_type_entry_offld_handle          # written back by the first add: reuse it
    assert nic.set_oid(natt.OID_TCP_TASK_IPSEC_ADD_UDPESP_SA, req) == natt.NdisStatus.SUCCESS
    assert req.encap_type_entry_offld_handle == entry


def test_inbound_tunnel_sa_with_wildcard_source_is_installed():
    nic = natt.Offload(backend="reference")
    (h,) = keys.install(nic, [spec(src=None)], direction="in")
    assert nic.sa_stats(h)["mode"] == "tunnel"
    # Only dst is missing, and only dst is named (it said "needs src and dst").
    with pytest.raises(keys.KeyFileError, match=r"a tunnel-mode SA needs dst, its tunnel's destination end; "
                                                r"for a wildcard destination use transport mode$"):
        keys.install(nic, [spec(spi=0x1003, dst=None)], direction="in")


@pytest.mark.parametrize("text", [
    # esp_sa, authentication key and algorithm columns swapped
    '"IPv4","198.51.100.2","203.0.113.5","0x00001001","AES-CBC [RFC3602]","0x' + "11" * 16
    + '","0x5ec7e7aa5ec7e7aa5ec7e7aa5ec7e7aa5ec7e7aa","HMAC-SHA-1-96 [RFC2404]"\n',
    # esp_sa, encryption algorithm column missing: the key sits where the algorithm goes
    '"IPv4","198.51.100.2","203.0.113.5","0x00001001","0x5ec7e7aa5ec7e7aa5ec7e7aa5ec7e7aa5ec7e7aa","NULL","",""\n',
    # JSON, suite and key swapped
    '[{"spi": 4097, "suite": "5ec7e7aa5ec7e7aa5ec7e7aa5ec7e7aa5ec7e7aa", "key": "aes128gcm16"}]',
])
def test_a_key_in_a_name_column_is_not_echoed(text):
    with pytest.raises(keys.KeyFileError) as e:
        keys.loads(text)
    assert "5ec7e7aa" not in str(e.value).lower()


@pytest.mark.parametrize("spi,where", [("0xc0de000g", "character 10 is not a hex digit"),
                                       ("12ab", "character 3 is not a digit; hex needs 0x"),
                                       ("12 ab", "character 3 is not a digit"),
                                       ("0x12 34", "character 5 is not a hex digit"),
                                       # int(text, 0) refuses these without saying why: the message
                                       # said "is not a number" of a run of digits
                                       ("00001001", "a leading 0: hex needs 0x, and a decimal SPI has no leading zeros"),
                                       ("0x", "no digits")])
def test_an_spi_typo_is_located_even_where_the_value_is_not_shown(spi, where):
    # A 10-character value may be a key from a shifted field, so it is not shown; where the
    # number breaks still finds the typo.
    line = f'"IPv4","192.0.2.1","192.0.2.2","{spi}","AES-GCM with 16 octet ICV [RFC4106]","0x{K20.hex()}","NULL",""'
    with pytest.raises(keys.KeyFileError, match=rf"^line 1: spi: .* is not a number \({where}\)$"):
        keys.loads(line)


_SECRET = "5ec12e75a1b2c3d4e5f60718293a4b5c6d7e8f90"      # 20 octets written as text


@pytest.mark.parametrize("text", [
    # esp_sa: the key (no 0x) where the destination, the SPI or the source goes
    f'"IPv4","198.51.100.2","{_SECRET}","0x00001001","AES-GCM with 16 octet ICV [RFC4106]","0x{_SECRET}","NULL",""',
    f'"IPv4","198.51.100.2","203.0.113.5","{_SECRET}","AES-GCM with 16 octet ICV [RFC4106]","0x{_SECRET}","NULL",""',
    f'"IPv4","{_SECRET}","203.0.113.5","0x00001001","AES-GCM with 16 octet ICV [RFC4106]","0x{_SECRET}","NULL",""',
    # JSON: the key in a name field, bare or wrapped
    f'[{{"spi": 1, "suite": "aes128gcm16", "key": "{_SECRET}", "src": "{_SECRET}", "mode": "tunnel"}}]',
    f'[{{"spi": 1, "suite": "aes128gcm16", "key": "{_SECRET}", "mode": ["{_SECRET}"]}}]',
    f'[{{"spi": 1, "suite": "aes128gcm16", "key": "{_SECRET}", "encap": "{_SECRET}"}}]',
    f'[{{"spi": 1, "suite": "aes128gcm16", "key": "{_SECRET}", "encap": ["{_SECRET}"]}}]',
    f'[{{"spi": 1, "suite": "aes128gcm16", "key": "{_SECRET}", "inner_src": "{_SECRET}"}}]',
])
def test_a_key_in_a_name_field_is_not_kept_in_the_exception_chain(text):
    # "raise ... from None" hides the parser's error in a traceback but keeps it as __context__,
    # and ipaddress's and int()'s messages quote the text they were given.
    with pytest.raises(keys.KeyFileError) as ei:
        keys.loads(text)
    chain, e = [], ei.value
    while e is not None:
        chain += [str(e), repr(e)]
        e = e.__cause__ or e.__context__
    assert chain and not any("5ec12e75" in t.lower() for t in chain), chain


def test_a_json_sa_without_mode_takes_the_mode_passed_to_load():
    # natt --mode (keys.load(mode=...)) is the mode of every SA whose text does not say: an
    # esp_sa table's, and a JSON SA's without "mode"; one that says keeps its own.
    sas = [{"spi": 1, "suite": "aes128gcm16", "key": K20.hex()},
           {"spi": 2, "suite": "aes128gcm16", "key": K20.hex(), "mode": "tunnel", "src": "192.0.2.1",
            "dst": "192.0.2.2"}]
    text = json.dumps(sas)
    assert [s.mode for s in keys.loads(text)] == ["tunnel", "tunnel"]
    assert [s.mode for s in keys.loads(text, mode="transport")] == ["transport", "tunnel"]
    # What natt wrote says its mode, so it loads back the same whatever is passed.
    again = keys.loads(keys.dumps(keys.loads(text, mode="transport"), "json"), mode="tunnel")
    assert [s.mode for s in again] == ["transport", "tunnel"]


@pytest.mark.parametrize("obj,mode", [
    ({"mode": "transport", "inner_src": "10.99.0.0/16"}, "tunnel"),
    ({"mode": "transport", "inner_dst": "10.98.0.0/16"}, "tunnel"),
    ({"inner_src": "10.99.0.0/16"}, "transport"),            # the mode comes from load(mode=)
])
def test_traffic_selectors_on_a_transport_sa_are_refused(obj, mode):
    # natt encap chooses a transport SA by src/dst: inner_src/inner_dst were silently ignored,
    # and the SA carried every packet no other SA took.
    sa = {"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "direction": "out", **obj}
    field = "inner_src" if "inner_src" in obj else "inner_dst"
    with pytest.raises(keys.KeyFileError, match=rf"SA #1 \(spi 0x00000001\): {field}: traffic selectors are "
                                                r"for tunnel-mode SAs"):
        keys.loads(json.dumps([sa]), mode=mode)
    # On a tunnel SA they are what chooses it.
    tunnel = {**sa, "mode": "tunnel", "src": "192.0.2.1", "dst": "192.0.2.2"}
    assert getattr(keys.loads(json.dumps([tunnel]))[0], field) == obj[field]


def test_one_sa_in_both_directions_installs_once_when_the_direction_is_given():
    # A key file with an SA's two directions (same SPI, ends and key) made natt decap, which
    # installs every SA inbound, refuse its own round trip: "already installed".
    both = [keys.SaSpec(0x1001, "aes128gcm16", K20, d, "tunnel", "192.0.2.1", "192.0.2.2", name=d)
            for d in ("out", "in")]
    with natt.Offload(backend="reference") as nic:
        handles = keys.install(nic, both, direction="in")
        assert handles[0] == handles[1] and nic.query_oid(natt.OID_TCP_TASK_OFFLOAD).sa_count == 1
    assert keys.same_sa(both, "in") == [0, 0] and keys.same_sa(both) == [0, 1]
    assert keys.same_sa(both + [dataclasses.replace(both[1], key=K16 + b"salt")], "in") == [0, 0, 2]
    # Each in its own direction they are two SAs, as before.
    with natt.Offload(backend="reference") as nic:
        h_out, h_in = keys.install(nic, both)
        assert h_out != h_in and nic.sa_stats(h_out)["direction"] == "out"
    # What the outbound entry alone uses (its ports, the next number it sends, its DF rule)
    # does not make the two directions two inbound SAs.
    for extra in ({"dport": 61234}, {"sport": 61234}, {"replay_oseq": 100}, {"df_bit": "set"}):
        pair = [dataclasses.replace(both[0], **extra), both[1]]
        with natt.Offload(backend="reference") as nic:
            handles = keys.install(nic, pair, direction="in")
            assert handles[0] == handles[1] and nic.query_oid(natt.OID_TCP_TASK_OFFLOAD).sa_count == 1, extra
    # ... but it does outbound, where each is a different SA's setting.
    pair = [dataclasses.replace(both[0], dport=61234), both[0]]
    assert keys.same_sa(pair, "out") == [0, 1]
    # A different key under the same SPI and ends is still a clash, named.
    other = [both[0], keys.SaSpec(0x1001, "aes128gcm16", K16 + b"salt", "in", "tunnel", "192.0.2.1", "192.0.2.2")]
    with natt.Offload(backend="reference") as nic:
        with pytest.raises(keys.KeyFileError, match=r"SA #2 \(spi 0x00001001\): .*already installed"):
            keys.install(nic, other, direction="in")
        assert nic.query_oid(natt.OID_TCP_TASK_OFFLOAD).sa_count == 0


# ---------------------------------------------------------------------------------------------- long input (found by fuzzing)


def _peak_and_error(text):
    """(peak octets traced while loading ``text``, the KeyFileError's message)."""
    import tracemalloc
    tracemalloc.start()
    try:
        with pytest.raises(keys.KeyFileError) as ei:
            keys.loads(text)
        return tracemalloc.get_traced_memory()[1], str(ei.value)
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("field", ["x" * (2 << 20), r"\t" * (1 << 20)], ids=["text", "escapes"])
@pytest.mark.parametrize("closed", [True, False])
def test_a_long_esp_sa_field_costs_memory_in_proportion_to_it(field, closed):
    # The field pattern (?:[^"\\]|\\.)* kept a backtracking state per character: a 2 MiB
    # text key (a key file may be up to 1 GiB) took about 300 MiB to split into fields.
    line = _fill('"IPv4","192.0.2.1","192.0.2.2","0x00000101","NULL","",'
                 '"HMAC-SHA-1-96 [RFC2404]","') + field + ('"' if closed else "")
    peak, msg = _peak_and_error(line)
    assert peak < 8 * len(line) + (1 << 20), peak
    assert msg.startswith("line 1") and ("keys: 0 + " in msg if closed else "not a list of double-quoted" in msg)


@pytest.mark.parametrize("text", [
    # An algorithm field of 1 MiB of words: difflib looked for a close name in all of it, then
    # the message quoted it whole.
    '"IPv4","192.0.2.1","192.0.2.2","0x00000101","' + "xyz " * (1 << 18) + '","0x00","NULL",""',
    '"IPv4","192.0.2.1","192.0.2.2","0x00000101","NULL","","' + "xyz " * (1 << 18) + '","0x00"',
    '"IPv4","' + "xyz " * (1 << 18) + '","192.0.2.2","0x00000101","NULL","","HMAC-SHA-1-96 [RFC2404]","0x'
    + K20.hex() + '"',
    json.dumps([{"spi": 1, "suite": "xyz " * (1 << 18), "key": K20.hex()}]),
    json.dumps([{"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "mode": "xyz " * (1 << 18)}]),
    json.dumps([{"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "xyz " * (1 << 18): 1}]),
    json.dumps([{"spi": 1, "suite": "aes128gcm16", "key": K20.hex(), "src": "xyz " * (1 << 18)}]),
], ids=["esp_sa-encryption", "esp_sa-authentication", "esp_sa-source", "json-suite", "json-mode",
        "json-field-name", "json-src"])
def test_a_long_value_where_a_name_belongs_is_refused_cheaply_in_a_short_message(text):
    # difflib indexed the whole value to look for a close algorithm or field name (seconds and
    # 100 MiB for 1 MiB), natt._redact.shown matched its key patterns against all of it, and a
    # JSON value was then quoted whole in a one-line message of a megabyte.
    peak, msg = _peak_and_error(text)
    assert len(msg) < 1000 and "xyz xyz" not in msg, msg[:300]
    assert f"<{4 << 18} characters, not shown" in msg
    assert peak < 16 * len(text) + (1 << 20), peak


# ---------------------------------------------------------------------------------------------- property: any text


from hypothesis import given, settings, strategies as st  # noqa: E402

_HIDDEN = "5ec4e7c0ffee5ec4e7c0ffee5ec4e7c0ffee5ec4"     # a key (20 octets as hex) no message may show
_TEXT_KEY = "Zx9Qw3Er7Ty1Ui5Op2As"                        # one written as text (esp_sa without 0x)
_odd_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_esp_sa_field = st.one_of(
    st.sampled_from(["IPv4", "IPv6", "*", "", "192.0.2.1", "203.0.113.5", "0x00001001", "4097", "0x", "64-bit",
                     "32-bit", "5", "0xffffffff", "NULL", "AES-CBC [RFC3602]", "AES-GCM with 16 octet ICV [RFC4106]",
                     "TripleDES-CBC [RFC2451]", "HMAC-SHA-1-96 [RFC2404]", "ChaCha20 with Poly1305 [RFC7634]",
                     "0x" + _HIDDEN, _HIDDEN, _TEXT_KEY, "0x" + _HIDDEN[:32], "\\x41\\102\\t", "\\q", "\\"]),
    _odd_text)
_esp_sa_line = st.lists(_esp_sa_field, min_size=0, max_size=11).map(
    lambda fs: ",".join('"' + f.replace('"', "\\x22") + '"' for f in fs))
_json_value = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                        st.sampled_from(["0x" + _HIDDEN, _HIDDEN, _TEXT_KEY, "in", "out", "tunnel", "transport", "IKE",
                                         "aes128gcm16", "aes128-sha1-esn", "192.0.2.1", "10.0.0.0/8", "set"]),
                        _odd_text, st.lists(st.just(_HIDDEN), max_size=2))
_json_sa = st.dictionaries(st.sampled_from(sorted(keys._FIELDS) + ["colour", _HIDDEN]), _json_value, max_size=8)


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(
    st.lists(_esp_sa_line, min_size=1, max_size=4).map("\n".join),
    st.lists(_json_sa, min_size=1, max_size=3).map(json.dumps),
    st.lists(_json_sa, min_size=1, max_size=3).map(lambda sas: json.dumps({"sas": sas}))))
def test_any_key_file_text_gives_sas_or_a_one_line_key_file_error_without_its_keys(text):
    # What the fuzzing of this module checked, kept as a property: any esp_sa or JSON text,
    # fields of any kind in any place, reads as SAs or raises KeyFileError; its message is one
    # line and names no key, whichever field the key was put in.
    import warnings
    try:
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always", keys.KeyFileWarning)
            specs = keys.loads(text)
    except keys.KeyFileError as e:
        msg = str(e)
        assert "\n" not in msg and _HIDDEN not in msg.lower() and _TEXT_KEY not in msg, msg
        return
    assert not any(_HIDDEN in str(w.message).lower() or _TEXT_KEY in str(w.message) for w in notes)
    for s in specs:
        assert _HIDDEN not in repr(s) and _TEXT_KEY not in repr(s)
    for direction in ("in", "out"):
        with natt.Offload(backend="reference") as nic:
            try:
                keys.install(nic, specs, direction=direction)
            except keys.KeyFileError as e:
                assert "\n" not in str(e) and _HIDDEN not in str(e).lower() and _TEXT_KEY not in str(e), str(e)

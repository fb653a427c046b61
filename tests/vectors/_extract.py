"""Regenerate the JSON vector files in this directory from the spec's test-vectors.md.

Run by hand (``python tests/vectors/_extract.py /work/shared/spec/test-vectors.md``); the JSON
files are committed, so the test suite never reads the markdown. Hex is copied by program, not
retyped, and every vector is re-checked with ``cryptography`` before it is written: a
transcription slip fails here rather than turning into a wrong expectation in the tests.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sys
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

HERE = Path(__file__).resolve().parent
HEX = re.compile(r"^[0-9a-f]+$")
SPEC = "spec/test-vectors.md"


def _sections(text: str) -> dict[str, str]:
    """Map each ``###``/``####`` heading (and the ``##`` ones) to the text up to the next heading."""
    parts = re.split(r"^(#{2,4} .*)$", text, flags=re.M)
    return {parts[i].lstrip("#").strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def _fields(block: str) -> dict[str, str]:
    """``label: hex`` lines of a code block, hex continued on indented lines."""
    out: dict[str, str] = {}
    label = None
    for line in block.splitlines():
        if line.startswith((" ", "\t")) and label is not None:
            tok = line.split()
            if tok and HEX.match(tok[0]):
                out[label] += tok[0]
            continue
        m = re.match(r"^([^:]+?):\s*(.*)$", line)
        if not m:
            label = None
            continue
        label = m.group(1).strip()
        tok = m.group(2).split()
        out[label] = tok[0] if tok and HEX.match(tok[0]) else ""
    return out


def _code(section: str) -> str:
    return re.search(r"```\n(.*?)```", section, re.S).group(1)


def _pick(f: dict[str, str], prefix: str) -> str:
    keys = [k for k in f if k.startswith(prefix)]
    assert len(keys) == 1, (prefix, keys)
    return f[keys[0]]


def _trailer(plain: bytes) -> tuple[bytes, int, int]:
    pad_len, nh = plain[-2], plain[-1]
    pad = plain[len(plain) - 2 - pad_len: -2]
    assert pad == bytes(range(1, pad_len + 1)), "padding is not the RFC 4303 default run"
    return plain[: len(plain) - 2 - pad_len], pad_len, nh


def _note(section: str) -> str:
    """The prose before the first code block / sub-heading: the spec's transcription note."""
    prose = section.split("```")[0].split("\n#")[0]
    return " ".join(prose.split())


def rfc3602(secs: dict[str, str]) -> dict:
    head = next(k for k in secs if k.startswith("1. RFC 3602"))
    vectors = []
    for n in (5, 6, 7, 8):
        title = next(k for k in secs if k.startswith(f"RFC 3602 Case #{n} "))
        f = _fields(_code(secs[title]))
        key = bytes.fromhex(f["key"])
        iv = bytes.fromhex(f["IV (16)"])
        esp = bytes.fromhex(_pick(f, "ESP header+payload"))
        plain = bytes.fromhex(_pick(f, "plaintext fed to AES-CBC"))
        ct = bytes.fromhex(_pick(f, "ciphertext"))
        d = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        assert d.update(ct) + d.finalize() == plain, title
        assert esp == bytes.fromhex(f["SPI"] + f["sequence number"]) + iv + ct, title
        payload, pad_len, nh = _trailer(plain)
        assert payload.hex() == _pick(f, "protected payload"), title
        v = {
            "name": f"rfc3602-case{n}",
            "citation": f"RFC 3602 §4, Case #{n}: {title.split('(', 1)[1].rstrip(')')}",
            "provenance": "published",
            "conf_algo": "AES_CBC_128", "integrity_algo": "NONE", "icv_len": 0,
            "key": key.hex(), "spi": int(f["SPI"], 16), "seq": int(f["sequence number"], 16),
            "esn": False, "iv": iv.hex(), "esp": esp.hex(), "plaintext": plain.hex(),
            "payload": payload.hex(), "pad_len": pad_len, "next_header": nh,
            "mode": "tunnel" if "tunnel-mode" in title else "transport",
        }
        ip_esp = f.get("IP header of the ESP packet (protocol 0x32)")
        if ip_esp:
            v["ip_header_esp"] = ip_esp
        if f.get("original IP header (before ESP)"):
            v["ip_header_original"] = f["original IP header (before ESP)"]
        vectors.append(v)
    return {"source": {"document": "RFC 3602", "section": "4 (Test Vectors), cases 5-8",
                       "spec": f"{SPEC} §1", "transcription_note": _note(secs[head])},
            "vectors": vectors}


#: Cases whose inner IPv4 Total Length includes the ESP trailer (spec §2 notes).
_GCM_INNER_LENGTH_COVERS_TRAILER = ("GCM-A", "GCM-F", "GCM-G", "GCM-I")


def _ipv4_checksum_ok(header: bytes) -> bool:
    total = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, len(header), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def gcm(secs: dict[str, str]) -> dict:
    head = next(k for k in secs if k.startswith("2. draft-mcgrew-gcm-test-01"))
    vectors = []
    for title in [k for k in secs if k.startswith("GCM-")]:
        case = title.split()[0]
        if case == "GCM-D":
            # SPI 0: illegal on the wire, classified as IKE on port 4500 (spec §2 note).
            continue
        f = _fields(_code(secs[title]))
        aes_key = bytes.fromhex(_pick(f, "AES key"))
        salt = bytes.fromhex(_pick(f, "salt"))
        keymat = bytes.fromhex(_pick(f, "KEYMAT"))
        assert keymat == aes_key + salt, case
        seq_field = f["sequence number"]
        esn = len(seq_field) == 16
        seq = int(seq_field, 16)
        spi = bytes.fromhex(f["SPI"])
        iv = bytes.fromhex(f["explicit IV (8)"])
        aad = bytes.fromhex(_pick(f, "AAD"))
        assert aad == spi + (seq.to_bytes(8, "big") if esn else seq.to_bytes(4, "big")), case
        plain = bytes.fromhex(_pick(f, "plaintext"))
        ct_icv = bytes.fromhex(_pick(f, "ciphertext||ICV"))
        assert AESGCM(aes_key).decrypt(salt + iv, ct_icv, aad) == plain, case
        esp = bytes.fromhex(_pick(f, "ESP packet as transmitted"))
        assert esp == spi + (seq & 0xFFFFFFFF).to_bytes(4, "big") + iv + ct_icv, case
        payload, pad_len, nh = _trailer(plain)
        position = title.split("(", 1)[1].rstrip(")")
        notes = ["trailer next header is 01 whatever the payload (spec §7 item 13)"]
        if case in _GCM_INNER_LENGTH_COVERS_TRAILER:
            notes.append("inner IPv4 total length already covers pad/pad length/next header")
        if case in ("GCM-L", "GCM-N"):
            notes.append("sequence-number edge case: low 32 bits ffffffff")
        vectors.append({
            "name": case.lower(),
            "citation": f"draft-mcgrew-gcm-test-01 §4, {case} ({position})",
            "provenance": "published",
            "conf_algo": f"AES_GCM_{len(aes_key) * 8}", "integrity_algo": "NONE", "icv_len": 16,
            "key": keymat.hex(), "spi": int.from_bytes(spi, "big"), "seq": seq, "esn": esn,
            "iv": iv.hex(), "esp": esp.hex(), "plaintext": plain.hex(), "payload": payload.hex(),
            "pad_len": pad_len, "next_header": nh, "mode": None, "notes": notes,
        })
    return {"source": {"document": "draft-mcgrew-gcm-test-01 (D. McGrew, March 2009)",
                       "section": "4, every AES-GCM ESP packet except GCM-D (SPI 0)",
                       "spec": f"{SPEC} §2", "transcription_note": _note(secs[head])},
            "vectors": vectors}


def rfc7634(secs: dict[str, str]) -> dict:
    head = next(k for k in secs if k.startswith("3. RFC 7634"))
    block = _code(secs[head])
    f = _fields(block)
    key = bytes.fromhex(_pick(f, "ChaCha20 key"))
    salt = bytes.fromhex(re.search(r"salt: ([0-9a-f]{8})", block).group(1))
    spi = bytes.fromhex(re.search(r"SPI: ([0-9a-f]{8})", block).group(1))
    seq = int(re.search(r"sequence number: ([0-9a-f]{8})", block).group(1), 16)
    iv = bytes.fromhex(re.search(r"IV \(8\): ([0-9a-f]{16})", block).group(1))
    plain = bytes.fromhex(_pick(f, "plaintext"))
    ct_icv = bytes.fromhex(_pick(f, "ciphertext||ICV"))
    esp = bytes.fromhex(_pick(f, "ESP header+payload"))
    aad = spi + seq.to_bytes(4, "big")
    assert ChaCha20Poly1305(key).decrypt(salt + iv, ct_icv, aad) == plain
    assert esp == aad + iv + ct_icv
    payload, pad_len, nh = _trailer(plain)
    return {"source": {"document": "RFC 7634", "section": "Appendix A (ESP example, tunnel mode)",
                       "spec": f"{SPEC} §3", "transcription_note": _note(secs[head])},
            "vectors": [{
                "name": "rfc7634-appendix-a", "citation": "RFC 7634 Appendix A",
                "provenance": "published",
                "conf_algo": "CHACHA20_POLY1305", "integrity_algo": "NONE", "icv_len": 16,
                "key": (key + salt).hex(), "spi": int.from_bytes(spi, "big"), "seq": seq, "esn": False,
                "iv": iv.hex(), "esp": esp.hex(), "plaintext": plain.hex(), "payload": payload.hex(),
                "pad_len": pad_len, "next_header": nh, "mode": "tunnel",
            }]}


def derived_hmac(secs: dict[str, str], case5: dict) -> dict:
    head = next(k for k in secs if k.startswith("5. Derived integrity"))
    block = _code(secs[head])
    esp = bytes.fromhex(case5["esp"])
    specs = [("HMAC-SHA1-96", "SHA", "sha1", 12), ("HMAC-SHA-256-128", "SHA_256", "sha256", 16)]
    vectors = []
    for label, algo, hname, icv_len in specs:
        part = block.split(label, 1)[1]
        key = bytes.fromhex("".join(re.search(r"key \(\d+\) = ([0-9a-f]+)\s*\n(\s+[0-9a-f]+\n)?",
                                              part).group(0).split("=", 1)[1].split()))
        icv32 = re.search(r"ICV, 32-bit seq\s+= ([0-9a-f]+)", part).group(1)
        icv_esn = re.search(r"ICV, ESN with seq_hi = 00000001\s+= ([0-9a-f]+)", part).group(1)
        for esn, icv in ((False, icv32), (True, icv_esn)):
            msg = esp + (b"\x00\x00\x00\x01" if esn else b"")
            assert hmac.new(key, msg, getattr(hashlib, hname)).digest()[:icv_len].hex() == icv, label
            vectors.append({
                "name": f"derived-rfc3602-case5-{hname}{'-esn' if esn else ''}",
                "citation": f"{SPEC} §5: {label} ICV over RFC 3602 §4 Case #5"
                            + (" with ESN seq_hi 00000001" if esn else ", 32-bit seq"),
                "provenance": "derived",
                "conf_algo": "AES_CBC_128", "integrity_algo": algo, "icv_len": icv_len,
                "key": case5["key"] + key.hex(), "spi": case5["spi"],
                "seq": (1 << 32 | case5["seq"]) if esn else case5["seq"], "esn": esn,
                "iv": case5["iv"], "esp": esp.hex() + icv, "plaintext": case5["plaintext"],
                "payload": case5["payload"], "pad_len": case5["pad_len"],
                "next_header": case5["next_header"], "mode": "transport",
                "ip_header_original": case5["ip_header_original"],
            })
    return {"source": {"document": "derived (no RFC publishes an HMAC ESP packet)",
                       "section": "HMAC-SHA1-96 (RFC 2404) and HMAC-SHA-256-128 (RFC 4868) ICVs "
                                  "appended to RFC 3602 §4 Case #5",
                       "spec": f"{SPEC} §5", "transcription_note": _note(secs[head])},
            "vectors": vectors}


def framing(secs: dict[str, str], esp_by_name: dict[str, str]) -> dict:
    head = next(k for k in secs if k.startswith("6. Derived UDP framing"))
    block = _code(secs[head])
    expected = {"D1": ("OTHER", 4500, "OK"), "D2": ("OTHER", 4500, "KEEPALIVE"),
                "D3": ("OTHER", 4500, "IKE"), "D4": ("IKE", 500, "OK")}
    fixtures = []
    for m in re.finditer(r"^(D\d)  (.*?) \((\d+) octets\):\n((?:\s+[0-9a-f]+\n)+)", block, re.M):
        name, desc, n, hexlines = m.groups()
        packet = bytes.fromhex("".join(hexlines.split()))
        assert len(packet) == int(n), name
        assert _ipv4_checksum_ok(packet[:20]) and int.from_bytes(packet[2:4], "big") == len(packet), name
        assert int.from_bytes(packet[24:26], "big") == len(packet) - 20, name
        encap_type, port, status = expected[name]
        fixtures.append({"name": name, "citation": f"{SPEC} §6 {name}", "provenance": "derived",
                         "description": desc, "packet": packet.hex(), "entry_type": encap_type,
                         "entry_port": port, "expected_status": status,
                         "esp_vector": "gcm-b" if name in ("D1", "D4") else None})
        if name in ("D1", "D4"):
            marker = 8 if name == "D4" else 0
            assert packet[28:28 + marker] == bytes(marker), name
            assert packet[28 + marker:].hex() == esp_by_name["gcm-b"], name
    after = secs[head].split("```")[2]
    return {"source": {"document": "derived", "section": "UDP framing fixtures (RFC 3948 §2, legacy "
                       "draft-ietf-ipsec-udp-encaps-00/01 port-500 framing)",
                       "spec": f"{SPEC} §6", "transcription_note": _note(secs[head]),
                       "expected_classification": " ".join(after.split()),
                       "expected_status_note": "expected_status is natt's Status for the fixture on a "
                       "parser entry (entry_type, entry_port), per docs/semantics.md §1 step 5; the "
                       "ESP fixtures need the GCM-B SA (installed as a transport SA) to reach OK"},
            "fixtures": fixtures}


def main(path: str) -> None:
    secs = _sections(Path(path).read_text(encoding="utf-8"))
    files = {"rfc3602_esp.json": rfc3602(secs), "gcm_esp.json": gcm(secs),
             "rfc7634_chacha20poly1305.json": rfc7634(secs)}
    case5 = files["rfc3602_esp.json"]["vectors"][0]
    files["derived_hmac.json"] = derived_hmac(secs, case5)
    esp_by_name = {v["name"]: v["esp"] for v in files["gcm_esp.json"]["vectors"]}
    files["derived_framing.json"] = framing(secs, esp_by_name)
    for name, doc in files.items():
        (HERE / name).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        print(name, len(doc.get("vectors", doc.get("fixtures"))))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/spec/test-vectors.md")

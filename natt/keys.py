"""SA sets on disk: natt's JSON key files and Wireshark's ``esp_sa`` table.

An SA set is a list of :class:`SaSpec`. :func:`load` reads either format (told apart by
content), :func:`save` writes either (by ``fmt`` or the file name), and :func:`install` puts a
set into a :class:`natt.Offload`.

JSON schema
-----------

A JSON key file is a list of SA objects (or an object ``{"sas": [...]}``). Fields:

===================  ========================  ===================================================
field                type / default            meaning
===================  ========================  ===================================================
``spi``              int or ``"0x…"`` string   Security Parameters Index, 1 .. 2**32-1 (required)
``suite``            string                    strongSwan ESP proposal keyword, e.g. ``aes128gcm16``,
                                               ``aes256-sha256``, ``3des-sha1``, ``chacha20poly1305``;
                                               a ``-esn`` suffix means ``esn: true`` (required)
``key``              hex string                encryption key, then the 4-octet salt (AEADs), then
                                               the integrity key; ``0x`` prefix, spaces and ``:``
                                               allowed (required)
``direction``        ``"in"`` / ``"out"``      ``"in"`` (decap) or ``"out"`` (encap); default ``"in"``
``mode``             ``"tunnel"``/``"transport"``  default: the ``mode`` passed to :func:`load`,
                                               ``"tunnel"`` unless said (``natt --mode``)
``src``, ``dst``     dotted quad or null       outer addresses: tunnel end points, or transport
                                               hosts (``dst`` restricts an inbound transport SA)
``encap``            ``"OTHER"`` / ``"IKE"``   UDP framing: RFC 3948 (``OTHER``, default) or the
                                               legacy non-IKE-marker draft (``IKE``)
``port``             int, 4500                 parser-entry port (inbound)
``sport``,           int, 4500                 outer UDP ports written by encap (outbound)
``dport``
``esn``              bool, false               64-bit extended sequence numbers (RFC 4303 §2.2.1);
                                               ``false`` with a ``-esn`` suite is refused
``replay_window``    int, 64                   0 (off) or 32 .. 65536
``replay_seq``       int, 0                    inbound: highest sequence number already accepted
``replay_oseq``      int, 0                    outbound: last sequence number sent
``replay_bitmap``    int, ``"0x…"`` or null    inbound: which numbers up to ``replay_seq`` were
                                               seen (bit i = ``replay_seq - i``), as
                                               ``Offload.replay_state`` exports it; null = all
``replay_fail_run``  int, 0                    inbound ESN SAs: consecutive ICV failures so far
                                               (``Offload.sa_stats``; RFC 4303 Appendix A3),
                                               0 .. 2**32-1
``nat_oa_src``,      dotted quad or null       NAT-OA original addresses (inbound transport SAs,
``nat_oa_dst``                                 RFC 3948 §3.1.2)
``inner_src``,       CIDR, address or null     outbound tunnel SAs: which inner packets ``natt
``inner_dst``                                  encap`` sends through this SA (traffic selectors);
                                               no host bits (``10.0.0.1/8`` is refused); refused
                                               on a transport SA
``df_bit``           ``"copy"``/``"set"``/     tunnel SAs installed outbound: the outer header's
                     ``"clear"``, ``"copy"``   DF bit (RFC 4301 §8.1); ``"copy"`` takes it from an
                                               inner IPv4 header; refused on a transport SA unless
                                               ``"copy"``
``name``             string, ""                a label for reports
===================  ========================  ===================================================

Wireshark ``esp_sa``
--------------------

The UAT file Wireshark keeps in its profile directory (and strongSwan's ``save-keys`` plugin
writes), tshark 4.0 form: one SA per line, eight double-quoted, comma-separated fields::

    "IPv4","198.51.100.2","203.0.113.5","0x00001001","AES-GCM with 16 octet ICV [RFC4106]","0x…","NULL",""

protocol, source, destination (``*`` = any), SPI, encryption algorithm, encryption key,
authentication algorithm, authentication key. Algorithm names are those of Wireshark's
``packet-ipsec.c``; the key lengths choose among AES-128/192/256. Wireshark's AES-GCM key includes
the 4-octet salt, as natt's does. A key is read as Wireshark reads it: ``0x`` (or ``0X``) and hex
digits, else the octets of the text itself (a 16-character key is 16 octets); natt writes ``0x``
hex. Lines starting with ``#`` are comments. The table has no direction, mode or port: loaded
SAs get ``direction=None`` (see :func:`install`) and the ``mode`` passed to :func:`load`.

ESN. Newer Wireshark adds two fields (``esp_uat_flds`` of ``epan/dissectors/packet-ipsec.c``:
``sn_length`` and ``sn_upper``) after the authentication key::

    "IPv4","198.51.100.2","203.0.113.5","0x00001002","AES-CBC [RFC3602]","0x…","HMAC-SHA-256-128 [RFC4868]","0x…","64-bit","5"

9. ``SN`` (sequence number length): exactly ``32-bit`` or ``64-bit`` (ESN). Wireshark refuses
   any other value; so does natt, naming the line and the column.
10. ``ESN High Bits``: the upper 32 bits of the 64-bit sequence numbers, in hex (``0x`` optional,
    Wireshark writes ``%x``), 0 .. ffffffff; an empty field is 0. Wireshark authenticates the
    SA's packets with these high bits (with its sequence analysis on, one more or one less for
    numbers across a wrap of the low 32 bits from the first packet that verified).

A line with 8 fields, or ``"32-bit"``, is a 32-bit SA, and a 9-field line has high bits 0 (the
defaults Wireshark sets for the two fields are ``"32-bit"`` and ``"0"``). Fields past the tenth
are ignored. An ESN SA loads with ``esn=True`` on its plain suite name (``uses_esn`` is true).
For high bits above 0, encap sends from ``high << 32`` on (``replay_oseq = (high << 32) - 1``),
and decap's window starts with nothing seen and its top ``replay_window - 1`` numbers into the
epoch (``replay_seq = (high << 32) | 63``, ``replay_bitmap = 0``): RFC 4303 Appendix A then
infers these high bits for every number of the epoch, the last ones too, as Wireshark does. The
high bits of a 32-bit SA are ignored, as Wireshark ignores them.

:func:`to_esp_sa` writes an ESN SA with the two fields: ``"64-bit"`` and the high bits of the
SA's next sequence number (``replay_oseq + 1`` outbound, else ``replay_seq + 1``). Every other SA
keeps the 8-field line, so a table without ESN SAs is exactly the tshark 4.0 form. tshark 4.0
(no such fields) still loads a line with 10: it warns ``More fields than required. Discarding
…`` and takes the SA as 32-bit, failing that SA's ICVs, as it must fail any ESN SA. tshark
4.4.19 reads both fields and verifies the ICVs.

Keys never appear in a ``repr``, ``str`` or exception message of this module.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
import string
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

from ._constants import DF_BIT_MODES, UdpEncapType
from ._files import Replacement
from ._offload import _as_int
from ._redact import shown
from ._suites import Cipher, Mac, Suite, parse_suite

if TYPE_CHECKING:
    from ._offload import Offload

__all__ = ["SaSpec", "KeyFileError", "KeyFileWarning", "load", "loads", "save", "dumps", "install", "same_sa",
           "to_esp_sa", "from_esp_sa", "WIRESHARK_ENC", "WIRESHARK_AUTH"]

PathLike = Union[str, "os.PathLike[str]"]


class KeyFileError(ValueError):
    """A key file could not be read or an SA in it is not usable; names the place, never a key."""


class KeyFileWarning(UserWarning):
    """A line of a key file that was left out, not refused: an ``esp_sa`` line of an IPv6 SA."""


@dataclasses.dataclass(eq=False)
class SaSpec:
    """One SA as a key file describes it (see the module docstring for each field).

    ``key`` is excluded from ``repr`` (and there is no ``str`` that shows it); the readers give
    ``bytes``, and a spec made in code may hold a ``bytearray`` its owner wipes after use (not a
    memoryview: :mod:`natt.dask` pickles the specs).
    ``direction`` is ``None`` for SAs read from a Wireshark table, which has no direction.
    Specs compare by identity, not by field: an ``==`` over every field would compare keys, and
    not in constant time; compare the fields you mean (``hmac.compare_digest`` for keys).
    (:class:`natt.traffic.SaSpec` is another class: a traffic generator's SA, not a key file's.)
    """

    spi: int
    suite: str
    key: Union[bytes, bytearray] = dataclasses.field(repr=False)
    direction: Optional[str] = "in"
    mode: str = "tunnel"
    src: Optional[str] = None
    dst: Optional[str] = None
    encap: UdpEncapType = UdpEncapType.OTHER
    port: int = 4500
    sport: int = 4500
    dport: int = 4500
    esn: bool = False
    replay_window: int = 64
    replay_seq: int = 0
    replay_oseq: int = 0
    #: Inbound: the anti-replay bitmap at ``replay_seq`` (bit ``i`` = number ``replay_seq - i``
    #: seen), as ``Offload.replay_state`` exports it; ``None`` = every number up to
    #: ``replay_seq`` seen (docs/semantics.md §3).
    replay_bitmap: Optional[int] = None
    #: Inbound ESN: the SA's count of consecutive ICV failures (``Offload.sa_stats(h)
    #: ["replay_fail_run"]``), which paces RFC 4303 Appendix A3 resynchronisation; saved with
    #: the window so an SA restored from a file resyncs at the same packet (docs/semantics.md §3).
    replay_fail_run: int = 0
    nat_oa_src: Optional[str] = None
    nat_oa_dst: Optional[str] = None
    inner_src: Optional[str] = None
    inner_dst: Optional[str] = None
    #: Installed outbound (tunnel mode): the outer DF bit, ``"copy"``, ``"set"`` or ``"clear"``
    #: (RFC 4301 §8.1). Installed inbound it is not used, as ``sport``/``dport`` are not.
    df_bit: str = "copy"
    name: str = ""
    #: Where the SA was read (``"keys.json: SA #2"``, ``"esp_sa: line 5"``; "" for one made in
    #: code): :func:`install`'s errors name it. Not a key-file field; not compared.
    origin: str = dataclasses.field(default="", repr=False, compare=False)

    @property
    def suite_info(self) -> Suite:
        """The :class:`natt.Suite` of ``suite`` (ESN suffix stripped)."""
        return parse_suite(self.suite)[0]

    @property
    def uses_esn(self) -> bool:
        """Whether the SA has extended sequence numbers: ``esn``, or an ``-esn`` suite keyword."""
        return self.esn or parse_suite(self.suite)[1]

    def label(self) -> str:
        """``name`` or ``spi=0x… suite`` -- for tables and messages."""
        return self.name or f"spi={_spi_text(self.spi)} {self.suite}"


# ----------------------------------------------------------------------------------------------
# Field parsing (every error names the SA and the field, never the key's value)


def _spi_text(spi: Any) -> str:
    """``0x…`` for an SPI, ``shown()`` for anything else: a value in the SPI's place may be a key."""
    if isinstance(spi, int) and not isinstance(spi, bool) and 0 <= spi < 2**32:
        return f"0x{spi:08x}"
    return shown(spi)


def _where(i: int, spi: Any = None) -> str:
    return f"SA #{i + 1}" + (f" (spi {_spi_text(spi)})" if spi is not None else "")


def _installing(i: int, s: SaSpec) -> str:
    """Which SA :func:`install` is about: where it was read, else its place in ``specs``."""
    return f"{s.origin} (spi {_spi_text(s.spi)})" if s.origin else _where(i, s.spi)


def _canonical(specs: Iterable[SaSpec]) -> list[SaSpec]:
    """``specs`` with SPI and ports as Python ints. A spec made in code may hold ``"0x1001"`` or
    numpy integers, which :func:`install` accepts (as ``add_sa`` does) and the key-file readers
    never give; formatting and routing want ints. Raises :class:`KeyFileError` for an SPI or
    port that is no number in range."""
    def port(v: Any, where: str, field: str) -> int:
        n = _as_int(v)
        return _port(v if n is None else n, where, field)

    out = []
    for i, s in enumerate(specs):
        spi = _spi(s.spi, _where(i))
        w = _where(i, spi)
        ports = (port(s.port, w, "port"), port(s.sport, w, "sport"), port(s.dport, w, "dport"))
        if not all(type(v) is int for v in (s.spi, s.port, s.sport, s.dport)):
            s = dataclasses.replace(s, spi=spi, port=ports[0], sport=ports[1], dport=ports[2])
        out.append(s)
    return out


def _spi(v: Any, where: str, show: Callable[[Any], str] = shown) -> int:
    # Each failed parse raises after its except block: an exception raised inside one keeps the
    # parser's ValueError, which quotes the text (a key in the wrong column), as __context__.
    try:
        # Any integer type (a numpy SPI column too), as everywhere in natt's API.
        spi = int(v, 0) if isinstance(v, str) else _as_int(v)
    except ValueError:
        spi = None
    if spi is None and isinstance(v, str):
        # Where it breaks, by position: a typo is found even when the value is not shown.
        text = v.strip()
        prefix = 2 if text[:2] in ("0x", "0X") else 0
        digits = string.hexdigits if prefix else string.digits
        bad = next((i for i, c in enumerate(text[prefix:], prefix) if c not in digits), None)
        if bad is not None:
            # Hex digits alone are a hex SPI without its 0x (Wireshark's strtoul reads no number there).
            hint = "; hex needs 0x" if not prefix and all(c in string.hexdigits for c in text) else ""
            at = f" (character {bad + 1} is not a {'hex ' if prefix else ''}digit{hint})"
        elif text[prefix:]:
            # Only decimal digits, led by a 0: C (Wireshark) would read them as octal.
            at = " (a leading 0: hex needs 0x, and a decimal SPI has no leading zeros)"
        else:
            at = " (no digits)"
        raise KeyFileError(f"{where}: spi: {show(v)} is not a number{at}")
    if spi is None or not 0 < spi < 2**32:
        raise KeyFileError(f"{where}: spi: must be 1 .. 2**32-1, got {show(v)}")
    return spi


_HEX_JUNK = re.compile(r"[\s:]")


def _key(v: Any, where: str, field: str = "key") -> bytes:
    if not isinstance(v, str):
        raise KeyFileError(f"{where}: {field}: expected a hex string, got {type(v).__name__}")
    h = _HEX_JUNK.sub("", v)
    if h[:2].lower() == "0x":
        h = h[2:]
    try:
        return bytes.fromhex(h)
    except ValueError:
        # Say how long and where it broke, not what it holds.
        raise KeyFileError(f"{where}: {field}: not a hex string ({len(h)} characters)") from None


def _addr(v: Any, where: str, field: str, show: Callable[[Any], str] = shown) -> Optional[str]:
    if v is None or v == "*" or v == "":
        return None
    try:
        # Text only: ipaddress reads JSON's true or 1 as 0.0.0.1.
        if isinstance(v, str):
            return str(ipaddress.IPv4Address(v))
    except ValueError:
        pass        # raised below, without ipaddress's message (which quotes v) as __context__
    raise KeyFileError(f"{where}: {field}: {show(v)} is not an IPv4 address")


def _net(v: Any, where: str, field: str) -> Optional[str]:
    if v is None or v == "*" or v == "":
        return None
    if not isinstance(v, str):      # ipaddress reads JSON's true or 1 as 0.0.0.1/32
        raise KeyFileError(f"{where}: {field}: {shown(v)} is not an IPv4 network (a.b.c.d/len)")
    try:
        return str(ipaddress.IPv4Network(v))
    except (ValueError, TypeError):
        pass
    try:
        # 10.0.0.1/8 may mean 10.0.0.0/8 or the host 10.0.0.1: natt does not guess which.
        net = ipaddress.IPv4Network(v, strict=False)
    except (ValueError, TypeError):
        net = None
    if net is None:
        raise KeyFileError(f"{where}: {field}: {shown(v)} is not an IPv4 network (a.b.c.d/len)")
    raise KeyFileError(f"{where}: {field}: {shown(v)} has host bits set (the network is {net}; one host "
                       f"is an address without /len)")


_BITMAP_HEX = re.compile(r"0[xX]([0-9A-Fa-f]+)")


def _replay_bitmap(obj: dict[str, Any], where: str, direction: str, window: int) -> Optional[int]:
    """``replay_bitmap``: an integer or ``"0x…"`` hex (a 65 536-bit window has more decimal
    digits than Python's ``json`` reads), below ``2**replay_window``, inbound SAs only."""
    v = obj.get("replay_bitmap")
    if v is None:
        return None
    m = _BITMAP_HEX.fullmatch(v) if isinstance(v, str) else None
    if m is not None:
        bitmap = int(m.group(1), 16)
    elif isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        bitmap = v
    else:
        raise KeyFileError(f"{where}: replay_bitmap: expected a non-negative integer or \"0x…\" hex, "
                           f"got {shown(v)}")
    if direction != "in" or not window:
        raise KeyFileError(f"{where}: replay_bitmap: only an inbound SA with anti-replay has one "
                           f"(direction {shown(direction)}, replay_window {shown(window)})")
    if bitmap >> window:
        raise KeyFileError(f"{where}: replay_bitmap: has bits past the {window}-number window "
                           f"(bit i stands for number replay_seq - i)")
    return bitmap


def _replay_fail_run(obj: dict[str, Any], where: str, direction: str, esn: bool) -> int:
    """``replay_fail_run``: 0 .. 2**32-1, and not 0 only on an inbound ESN SA, as ``add_sa``
    takes it (RFC 4303 Appendix A3 resyncs only 64-bit numbers)."""
    v = _int(obj.get("replay_fail_run", 0), where, "replay_fail_run")
    if not 0 <= v < 2**32:
        raise KeyFileError(f"{where}: replay_fail_run: 0 .. 2**32-1, got {shown(v)}")
    if v and not (direction == "in" and esn):
        raise KeyFileError(f"{where}: replay_fail_run: only an inbound ESN SA counts its failed packets "
                           f"(direction {shown(direction)}, esn {shown(esn)})")
    return v


def _port(v: Any, where: str, field: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 65536:
        raise KeyFileError(f"{where}: {field}: must be 1 .. 65535, got {shown(v)}")
    return v


def _int(v: Any, where: str, field: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise KeyFileError(f"{where}: {field}: must be a non-negative integer, got {shown(v)}")
    return v


_FIELDS = {f.name for f in dataclasses.fields(SaSpec)} - {"origin"}


class _JsonObject(dict[str, Any]):
    """A JSON object that remembers the names it held more than once: json keeps the last value,
    so ``"replay_window": 0, "replay_window": 64`` would silently be 64."""

    repeated: tuple[str, ...] = ()

    @classmethod
    def of(cls, pairs: list[tuple[str, Any]]) -> "_JsonObject":
        obj = cls(pairs)
        if len(obj) != len(pairs):
            names = [k for k, _ in pairs]
            obj.repeated = tuple(sorted({k for k in names if names.count(k) > 1}))
        return obj


def _close_matches(word: str, candidates: list[str], cutoff: float) -> list[str]:
    """``difflib.get_close_matches(word, candidates, 1, cutoff)``, at once for a ``word`` too long
    to match: a ratio is at most 2 * min(len) / (sum of lens), below ``cutoff`` once ``word`` is
    (2 / cutoff - 1) times the longest candidate. difflib indexes ``word`` first, about 3 µs a
    character: 20 s for a 3 MB esp_sa field."""
    longest = max(map(len, candidates), default=0)
    if len(word) * cutoff > (2 - cutoff) * longest:
        return []
    return difflib.get_close_matches(word, candidates, n=1, cutoff=cutoff)


def _unknown_field(name: str) -> str:
    """An unknown JSON field as an error names it, with the field it is likely a typo of. Only
    a known name is suggested: the unknown one may be a key, which ``shown`` does not echo."""
    # 0.65: 'source' suggests 'src', while 'destination' suggests nothing rather than 'direction'.
    close = _close_matches(name.lower(), sorted(_FIELDS), 0.65)
    return shown(name) + (f" (did you mean {close[0]!r}?)" if close else "")


def _refuse_repeats(obj: Any, where: str) -> None:
    repeated = getattr(obj, "repeated", ())
    if repeated:
        raise KeyFileError(f"{where}: field(s) {', '.join(map(shown, repeated))} given more than once")


def _spec_from_json(i: int, obj: Any, default_mode: str = "tunnel") -> SaSpec:
    if not isinstance(obj, dict):
        raise KeyFileError(f"{_where(i)}: expected an object, got {type(obj).__name__}")
    _refuse_repeats(obj, _where(i))
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        raise KeyFileError(f"{_where(i)}: unknown field(s) {', '.join(map(_unknown_field, unknown))}")
    for req in ("spi", "suite", "key"):
        if req not in obj:
            raise KeyFileError(f"{_where(i, obj.get('spi'))}: missing field {req!r}")
    spi = _spi(obj["spi"], _where(i))
    w = _where(i, spi)
    try:
        suite, suite_esn = parse_suite(obj["suite"])
    except ValueError as e:
        raise KeyFileError(f"{w}: {e}") from None
    key = _key(obj["key"], w)
    if len(key) != suite.key_len:
        raise KeyFileError(f"{w}: key: {len(key)} octets, {suite.name} needs {suite.key_len}")
    direction = obj.get("direction", "in")
    if direction not in ("in", "out"):
        raise KeyFileError(f"{w}: direction: 'in' or 'out', got {shown(direction)}")
    mode = obj.get("mode", default_mode)
    if mode not in ("tunnel", "transport"):
        raise KeyFileError(f"{w}: mode: 'tunnel' or 'transport', got {shown(mode)}")
    encap = obj.get("encap", "OTHER")
    try:
        # JSON's false would be UdpEncapType(0), IKE.
        encap_t: Optional[UdpEncapType] = (UdpEncapType[encap.upper()] if isinstance(encap, str)
                                           else None if isinstance(encap, bool) else UdpEncapType(encap))
    except (KeyError, ValueError, TypeError):
        encap_t = None
    if encap_t is None:
        raise KeyFileError(f"{w}: encap: 'OTHER' (RFC 3948) or 'IKE' (non-IKE marker), got {shown(encap)}")
    esn = obj.get("esn", False)
    if not isinstance(esn, bool):
        raise KeyFileError(f"{w}: esn: expected true or false, got {shown(esn)}")
    if suite_esn and not esn and "esn" in obj:
        # Either one is a typo; picking the suffix would be the silent default keys.md rules out.
        raise KeyFileError(f"{w}: esn: false, but the suite is {suite.name}-esn (extended sequence "
                           f"numbers); make them agree")
    if esn and obj["suite"].strip().lower().endswith("-noesn"):
        raise KeyFileError(f"{w}: esn: true, but the suite is {suite.name}-noesn; make them agree")
    name = obj.get("name", "")
    if not isinstance(name, str):
        raise KeyFileError(f"{w}: name: expected a string")
    if mode == "transport" and (obj.get("inner_src") is not None or obj.get("inner_dst") is not None):
        # natt encap chooses a transport SA by src/dst: the selectors would be ignored, and the
        # SA would carry every packet no other SA takes.
        field = "inner_src" if obj.get("inner_src") is not None else "inner_dst"
        raise KeyFileError(f"{w}: {field}: traffic selectors are for tunnel-mode SAs; natt encap "
                           f"chooses a transport-mode SA by its src and dst")
    df_bit = obj.get("df_bit", "copy")
    if not isinstance(df_bit, str) or df_bit not in DF_BIT_MODES:
        raise KeyFileError(f"{w}: df_bit: 'copy', 'set' or 'clear', got {shown(df_bit)}")
    if mode == "transport" and df_bit != "copy":
        # The Offload refuses it (a transport SA writes no tunnel header, RFC 4301 §8.1): say so
        # when the file is read, as for inner_src, not when natt encap installs it.
        raise KeyFileError(f"{w}: df_bit: {df_bit!r} is for tunnel-mode SAs; a transport-mode SA keeps "
                           f"the datagram's own header, DF as its sender set it")
    replay_window = _int(obj.get("replay_window", 64), w, "replay_window")
    return SaSpec(
        spi=spi, suite=obj["suite"], key=key, direction=direction, mode=mode,
        src=_addr(obj.get("src"), w, "src"), dst=_addr(obj.get("dst"), w, "dst"), encap=encap_t,
        port=_port(obj.get("port", 4500), w, "port"), sport=_port(obj.get("sport", 4500), w, "sport"),
        dport=_port(obj.get("dport", 4500), w, "dport"), esn=esn or suite_esn,
        replay_window=replay_window, replay_seq=_int(obj.get("replay_seq", 0), w, "replay_seq"),
        replay_oseq=_int(obj.get("replay_oseq", 0), w, "replay_oseq"),
        replay_bitmap=_replay_bitmap(obj, w, direction, replay_window),
        replay_fail_run=_replay_fail_run(obj, w, direction, esn or suite_esn),
        nat_oa_src=_addr(obj.get("nat_oa_src"), w, "nat_oa_src"),
        nat_oa_dst=_addr(obj.get("nat_oa_dst"), w, "nat_oa_dst"),
        inner_src=_net(obj.get("inner_src"), w, "inner_src"),
        inner_dst=_net(obj.get("inner_dst"), w, "inner_dst"), df_bit=df_bit, name=name, origin=_where(i))


def _spec_to_json(s: SaSpec) -> dict[str, Any]:
    d: dict[str, Any] = {"spi": f"0x{s.spi:08x}", "suite": s.suite, "key": s.key.hex()}
    if s.direction is not None:
        d["direction"] = s.direction
    d["mode"] = s.mode
    defaults = SaSpec(0, "", b"")
    for f in ("src", "dst", "encap", "port", "sport", "dport", "esn", "replay_window", "replay_seq",
              "replay_oseq", "replay_fail_run", "nat_oa_src", "nat_oa_dst", "inner_src", "inner_dst", "df_bit", "name"):
        v = getattr(s, f)
        if f in ("src", "dst") or v != getattr(defaults, f):
            d[f] = v.name if isinstance(v, UdpEncapType) else v
    if s.replay_bitmap is not None:
        d["replay_bitmap"] = f"0x{s.replay_bitmap:x}"
    return d


# ----------------------------------------------------------------------------------------------
# Wireshark esp_sa

#: Wireshark's encryption algorithm names (packet-ipsec.c, esp_encryption_type_vals) that natt
#: implements -> natt cipher family. The AES key size follows from the key length.
WIRESHARK_ENC = {
    "NULL": "null",
    "TripleDES-CBC [RFC2451]": "3des",
    "AES-CBC [RFC3602]": "aes-cbc",
    "AES-GCM with 8 octet ICV [RFC4106]": "gcm8",
    "AES-GCM with 12 octet ICV [RFC4106]": "gcm12",
    "AES-GCM with 16 octet ICV [RFC4106]": "gcm16",
    # In Wireshark's development sources; tshark 4.0.17 and 4.4.19 refuse the line ("invalid
    # value") and load the others.
    "ChaCha20 with Poly1305 [RFC7634]": "chacha20poly1305",
}
# Accepted on reading only: the deprecated ICV-less GCM name (Wireshark reads it as a 16-octet
# ICV; strongSwan's save-keys writes it for every GCM ICV size) and save-keys' spelling of 3DES.
_ENC_READ_ALIASES = {"AES-GCM [RFC4106]": "gcm16", "TripleDes-CBC [RFC2451]": "3des"}

#: Wireshark's authentication algorithm names (esp_authentication_type_vals) -> natt MAC keyword.
WIRESHARK_AUTH = {
    "NULL": "",
    "HMAC-MD5-96 [RFC2403]": "md5",
    "HMAC-SHA-1-96 [RFC2404]": "sha1",
    "HMAC-SHA-256-128 [RFC4868]": "sha256",
    "HMAC-SHA-384-192 [RFC4868]": "sha384",
    "HMAC-SHA-512-256 [RFC4868]": "sha512",
}
_MAC_WIRESHARK = {v: k for k, v in WIRESHARK_AUTH.items()}
_MAC_KEYWORD = {Mac.HMAC_MD5_96: "md5", Mac.HMAC_SHA1_96: "sha1", Mac.HMAC_SHA256_128: "sha256",
                Mac.HMAC_SHA384_192: "sha384", Mac.HMAC_SHA512_256: "sha512"}

_UAT_OPEN = re.compile(r'\s*"')
_UAT_QUOTE_OR_ESCAPE = re.compile(r'["\\]')
_UAT_SEPARATOR = re.compile(r'\s*(?:,|$)')


def _uat_fields(line: str) -> Optional[list[str]]:
    """The fields of one UAT line, still escaped (see :func:`_uat_octets`): each is ``"`` then
    characters other than ``"`` and ``\\``, or ``\\`` and any character, up to a closing ``"``,
    then a ``,`` or the end of the line.

    Scanned from quote to quote, not matched as one pattern: ``(?:[^"\\]|\\.)*`` kept a
    backtracking state per character, about 150 octets each, so a 2 MiB field (a key file may be
    1 GiB) took 300 MiB."""
    fields, pos, end = [], 0, len(line)
    while pos < end:
        m = _UAT_OPEN.match(line, pos)
        if not m:
            return None
        start = q = m.end()
        while True:
            s = _UAT_QUOTE_OR_ESCAPE.search(line, q)
            if s is None:
                return None                     # no closing quote
            q = s.start()
            if line[q] == '"':
                break
            if q + 1 >= end or line[q + 1] == "\n":
                return None                     # a backslash escapes nothing
            q += 2
        fields.append(line[start:q])
        m = _UAT_SEPARATOR.match(line, q + 1)
        if not m:
            return None
        pos = m.end()
    return fields


_UAT_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)", re.DOTALL)
_UAT_C_ESCAPES = {"a": b"\a", "b": b"\b", "e": b"\x1b", "f": b"\f", "n": b"\n", "r": b"\r", "t": b"\t",
                  "v": b"\v", "x": b"x"}


def _uat_octets(field: str) -> tuple[bytes, bool]:
    """A UAT field's octets as Wireshark's ``uat_unesc`` makes them, and whether it holds an
    escape that function miscounts.

    Wireshark writes ``"``, ``\\`` and non-printable octets as ``\\xNN``; it reads C escapes,
    octal ``\\NNN`` and ``\\xNN``. A backslash before any other character keeps the character
    but is not counted, so Wireshark cuts the field's last octet for each one.
    """
    out, pos, miscounted = bytearray(), 0, False
    for m in _UAT_ESCAPE.finditer(field):
        out += field[pos:m.start()].encode()
        e = m.group(1)
        if len(e) == 3 and e[0] == "x":
            out.append(int(e[1:], 16))
        elif e[0] in "01234567":
            out.append(min(int(e, 8), 255))
        elif e in _UAT_C_ESCAPES:
            out += _UAT_C_ESCAPES[e]
        else:
            out += e.encode()
            miscounted = True
        pos = m.end()
    out += field[pos:].encode()
    return bytes(out), miscounted


def _uat_text(field: str) -> str:
    return _uat_octets(field)[0].decode("utf-8", "replace")


_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")

#: Newer Wireshark's ninth esp_sa field, ``SN`` (packet-ipsec.c esp_sn_length_vals) -> ESN.
_SN_LENGTHS = {"32-bit": False, "64-bit": True}
#: The table has no replay window: its SAs get SaSpec's default.
_ESP_SA_WINDOW: int = SaSpec.replay_window
# The tenth, ``ESN High Bits`` (UAT_FLD_HEX): what Wireshark's check (ws_basestrtou32, base 16)
# and its setter both read as that number. Anything else -- a sign, spaces, no digit after 0x --
# is refused: Wireshark refuses some of it and reads some as another number ("5 " as 0).
_UAT_HEX32 = re.compile(r"(?:0[xX])?([0-9a-fA-F]+)")


def _uat_key(field: str, where: str, name: str) -> tuple[bytes, bool]:
    """An esp_sa key as Wireshark's ``packet-ipsec.c`` reads it, and whether it was text.

    ``0x`` or ``0X`` then hex digits (an odd count as if led by a 0); anything else is the
    octets of the text itself -- so a hex key without ``0x`` is not hex to Wireshark, and natt
    reads it as Wireshark does: the same table must decrypt the same packets in both.
    """
    text, miscounted = _uat_octets(field)
    if miscounted:
        raise KeyFileError(f"{where}: {name}: a backslash escape other than \\xNN, \\NNN or a C escape "
                           f"(Wireshark reads such a key one octet short); write the octet as \\xNN")
    if 0 in text:
        # Wireshark keeps the key as a C string: it would end there.
        raise KeyFileError(f"{where}: {name}: holds a NUL octet, where Wireshark ends the key")
    if text[:2] not in (b"0x", b"0X"):
        return text, True
    digits = text[2:]
    bad = next((i for i, c in enumerate(digits) if c not in _HEX_DIGITS), None)
    if bad is not None:
        # Position only: the digits around it are part of the key.
        raise KeyFileError(f"{where}: {name}: starts with 0x but character {bad + 3} of {len(text)} is "
                           f"not a hex digit (Wireshark refuses the line too)")
    return bytes.fromhex("0" * (len(digits) % 2) + digits.decode()), False


def _uat_shown(syntax: str) -> Callable[[Any], str]:
    """How errors show an ``esp_sa`` field: the value when it has the field's own ``syntax`` or
    is shorter than any ESP key (8 octets: DES), else only its length. Any text is a key in that
    format (one without 0x), and a line whose fields have shifted puts one where a name or a
    number belongs. What :func:`natt._redact.shown` hides stays hidden."""
    pattern = re.compile(syntax)

    def show(value: Any) -> str:
        text = str(value)
        if len(text) < 8 or pattern.fullmatch(text.strip()) or shown(value) != repr(value):
            return shown(value)
        return f"<{len(text)} characters, not shown: maybe a key from a shifted field>"
    return show


_SHOW_PROTOCOL = _uat_shown(r"[A-Za-z0-9*]{1,6}")                   # IPv4, IPv6, Any, *
_SHOW_ADDRESS = _uat_shown(r"[0-9A-Fa-f.:*/]{1,43}")
_SHOW_SPI = _uat_shown(r"(0[xX])?[0-9A-Fa-f]{1,16}")
_SHOW_SN = _uat_shown(r"\d{1,3}(-?bits?)?")
_SHOW_HIGH_BITS = _SHOW_SPI


def _algorithm_shown(value: str, known: Iterable[str]) -> str:
    """How an error shows an algorithm field natt does not know. The field is free text, and a
    line whose fields have shifted puts a key there (a key without 0x is any text): the value is
    shown when it looks like a Wireshark algorithm name (they end in ``[RFC…]``, ``[draft…]`` or
    ``[no checking]``) or is close to one natt knows (a typo, named with its correction), or
    starts one (scapy's names, ``AES-CBC``, ``AES-GCM``: Wireshark's without
    the rest, named in full), or is shorter than any key (8 octets: DES, as
    :func:`_uat_shown`), else only its length."""
    close = _close_matches(value, list(known), 0.6)
    if value.rstrip().endswith("]"):
        # A whole name is a typo of a close one only if it has the same name or the same
        # reference: 'AES-CTR [RFC3686]' is another algorithm, not a misspelt 'AES-CBC [RFC3602]'.
        name, _, ref = value.rpartition("[")
        close = [k for k in close if k.rpartition("[")[0].strip() == name.strip() or k.rpartition("[")[2] == ref]
        return shown(value) + (f" (did you mean {close[0]!r}?)" if close else "")
    if close:
        return f"{shown(value)} (did you mean {close[0]!r}?)"
    start = value.strip().casefold()
    completions = [k for k in known if start and k.casefold().startswith(start)]
    if completions:
        return f"{shown(value)} (did you mean {' or '.join(map(repr, completions))}?)"
    if len(value) < 8:
        return shown(value)
    return f"<{len(value)} characters, not shown: no algorithm name, maybe a key from a shifted field>"


def _esp_sa_spec(lineno: int, fields: list[str], mode: str) -> SaSpec:
    where = f"line {lineno}"
    if len(fields) < 8:
        raise KeyFileError(f"{where}: expected 8 quoted fields (10 with newer Wireshark's SN and ESN "
                           f"High Bits), got {len(fields)}")
    proto, src, dst, spi_s, enc, auth = (_uat_text(fields[i]) for i in (0, 1, 2, 3, 4, 6))
    if proto != "IPv4":
        raise KeyFileError(f"{where}: protocol {_SHOW_PROTOCOL(proto)}: natt handles IPv4 SAs only")
    if spi_s.strip() in ("*", ""):
        raise KeyFileError(f"{where}: SPI '*': natt needs the SPI of each SA")
    spi = _spi(spi_s.strip(), where, _SHOW_SPI)
    where = f"line {lineno} (spi 0x{spi:08x})"
    ekey, ekey_text = _uat_key(fields[5], where, "encryption key")
    akey, akey_text = _uat_key(fields[7], where, "authentication key")
    # A forgotten 0x shows up as a key twice as long as meant; say why it is that length.
    hint = (" (a key without 0x is text: one octet per character, as in Wireshark)"
            if (ekey and ekey_text) or (akey and akey_text) else "")
    fam = WIRESHARK_ENC.get(enc) or _ENC_READ_ALIASES.get(enc)
    if fam is None:
        raise KeyFileError(f"{where}: encryption algorithm {_algorithm_shown(enc, WIRESHARK_ENC)} is not one "
                           f"natt implements "
                           f"(natt knows: {', '.join(WIRESHARK_ENC)})")
    if auth not in WIRESHARK_AUTH:
        why = " (natt always verifies the ICV, so it needs the real algorithm and key)" if auth.startswith("ANY ") else ""
        raise KeyFileError(f"{where}: authentication algorithm {_algorithm_shown(auth, WIRESHARK_AUTH)} is not "
                           f"one natt implements{why}")
    mac = WIRESHARK_AUTH[auth]
    aead = fam.startswith("gcm") or fam == "chacha20poly1305"
    if aead:
        if mac:
            raise KeyFileError(f"{where}: {enc} is an AEAD: its authentication algorithm must be NULL")
        bits = (len(ekey) - 4) * 8
        if fam == "chacha20poly1305":
            suite = "chacha20poly1305"
        elif bits in (128, 192, 256):
            suite = f"aes{bits}{fam}"
        else:
            raise KeyFileError(f"{where}: encryption key: {len(ekey)} octets; AES-GCM needs 20, 28 or 36 "
                               f"(key and 4-octet salt){hint}")
    else:
        if not mac:
            raise KeyFileError(f"{where}: authentication NULL with {enc}: natt needs an integrity "
                               f"algorithm for non-AEAD SAs")
        if fam == "aes-cbc":
            if len(ekey) not in (16, 24, 32):
                raise KeyFileError(f"{where}: encryption key: {len(ekey)} octets; AES-CBC needs 16, 24 or "
                                   f"32{hint}")
            suite = f"aes{len(ekey) * 8}-{mac}"
        else:
            suite = f"{fam}-{mac}"
    s, _ = parse_suite(suite)
    key = ekey + akey
    if len(key) != s.key_len:
        raise KeyFileError(f"{where}: keys: {len(ekey)} + {len(akey)} octets, {s.name} needs "
                           f"{s.enc_key_len + s.salt_len} + {s.auth_key_len}{hint}")
    esn, high = _esp_sa_esn(fields, where)
    # Encap sends from high << 32 on. Decap starts with nothing seen and its top W - 1 numbers
    # into the epoch: RFC 4303 Appendix A then infers `high` for every low half (case A,
    # Tl = W - 1), as Wireshark authenticates with the column's high bits. A top just before the
    # epoch would infer high - 1 for the last W numbers of it, and count them as seen.
    oseq = (high << 32) - 1 if esn and high else 0
    seq, bitmap = ((high << 32) | (_ESP_SA_WINDOW - 1), 0) if esn and high else (0, None)
    return SaSpec(spi=spi, suite=s.name, key=key, direction=None, mode=mode,
                  src=_addr(src, where, "source", _SHOW_ADDRESS), dst=_addr(dst, where, "destination", _SHOW_ADDRESS),
                  esn=esn, replay_window=_ESP_SA_WINDOW, replay_seq=seq, replay_oseq=oseq, replay_bitmap=bitmap,
                  origin=f"line {lineno}")


def _esp_sa_esn(fields: list[str], where: str) -> tuple[bool, int]:
    """``(esn, high bits)`` from newer Wireshark's ``SN`` and ``ESN High Bits`` fields (9, 10);
    ``(False, 0)`` for an 8-field line. The values are names or numbers, never keys, but a
    misplaced key could sit here: messages show them only when they look like what belongs."""
    if len(fields) < 9:
        return False, 0
    sn = _uat_text(fields[8])
    if sn not in _SN_LENGTHS:
        raise KeyFileError(f"{where}: column 9 (SN, sequence number length): {_SHOW_SN(sn)} is neither "
                           f"'32-bit' nor '64-bit' (Wireshark refuses the line too)")
    high = 0
    text = _uat_text(fields[9]) if len(fields) > 9 else ""
    if text:
        m = _UAT_HEX32.fullmatch(text)
        if m is None or int(m.group(1), 16) > 0xFFFFFFFF:
            raise KeyFileError(f"{where}: column 10 (ESN High Bits): {_SHOW_HIGH_BITS(text)} is not a hexadecimal "
                               f"number 0 .. ffffffff (Wireshark refuses the line too)")
        high = int(m.group(1), 16)
    return _SN_LENGTHS[sn], high


def from_esp_sa(text: str, *, mode: str = "tunnel") -> list[SaSpec]:
    """Parse Wireshark ``esp_sa`` UAT text (or strongSwan save-keys output).

    Lines of 8 fields (tshark 4.0) and of 9 or 10 (newer Wireshark: ``SN``, ``ESN High Bits``)
    may be mixed; see the module docstring for what ESN SAs load as.

    A line of an IPv6 SA is left out with a :class:`KeyFileWarning` (strongSwan's save-keys
    writes a dual-stack host's IPv6 SAs into the same table); any other protocol but ``IPv4`` is
    refused. A line that repeats an earlier SA exactly is dropped (tables that save-keys appends to
    across restarts can hold one SA twice); two different SAs with one SPI and destination
    (keys, or ESN, or ESN high bits apart) are kept, and :func:`install` refuses them.
    """
    specs: list[SaSpec] = []
    seen: set[tuple[Any, ...]] = set()
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = _uat_fields(line)
        if fields is None:
            raise KeyFileError(f"line {lineno}: not a list of double-quoted fields")
        if len(fields) >= 8 and _uat_text(fields[0]) == "IPv6":
            # save-keys writes a dual-stack host's IPv6 SAs into the same table. Their packets are
            # never IPv4, so leaving them out loses nothing natt could decrypt.
            warnings.warn(f"line {lineno}: an IPv6 SA, left out: natt handles IPv4 SAs only",
                          KeyFileWarning, stacklevel=2)
            continue
        s = _esp_sa_spec(lineno, fields, mode)
        ident = (s.spi, s.suite, s.key, s.src, s.dst, s.esn, s.replay_seq, s.replay_bitmap)
        if ident not in seen:
            seen.add(ident)
            specs.append(s)
    return specs


def to_esp_sa(specs: Iterable[SaSpec]) -> str:
    """Wireshark ``esp_sa`` UAT text for ``specs``: the tshark 4.0 form (8 fields), and for an
    ESN SA newer Wireshark's two more, ``"64-bit"`` and the ESN high bits (module docstring).

    A reader without those fields (tshark 4.0.17, tested) loads such a line with a warning
    and takes the SA as 32-bit: its ICVs fail there; those of the other SAs still verify.
    Raises :class:`KeyFileError` for a suite Wireshark cannot decrypt (AES-GMAC).
    """
    lines = ["# Wireshark ESP SA table (esp_sa), written by natt. Fields: protocol, source,",
             "# destination, SPI, encryption algorithm, encryption key, authentication algorithm,",
             "# authentication key; an ESN SA adds SN (\"64-bit\") and ESN High Bits (hex), fields",
             "# of newer Wireshark that tshark 4.0 warns about and ignores (failing that SA's ICVs)."]
    for s in _canonical(specs):
        su = s.suite_info
        enc_key = s.key[: su.enc_key_len + su.salt_len]
        auth_key = s.key[su.enc_key_len + su.salt_len:]
        if su.cipher is Cipher.AES_GCM:
            enc = f"AES-GCM with {su.icv_len} octet ICV [RFC4106]"
        elif su.cipher is Cipher.CHACHA20_POLY1305:
            enc = "ChaCha20 with Poly1305 [RFC7634]"
        elif su.cipher is Cipher.AES_CBC:
            enc = "AES-CBC [RFC3602]"
        elif su.cipher is Cipher.TRIPLE_DES_CBC:
            enc = "TripleDES-CBC [RFC2451]"
        elif su.cipher is Cipher.NULL:
            enc = "NULL"
        else:
            raise KeyFileError(f"spi {_spi_text(s.spi)}: Wireshark's esp_sa table has no {su.name} (AES-GMAC)")
        auth = _MAC_WIRESHARK[_MAC_KEYWORD[su.mac]] if su.mac is not Mac.NONE else "NULL"
        fields = ["IPv4", s.src or "*", s.dst or "*", f"0x{s.spi:08x}", enc,
                  f"0x{enc_key.hex()}" if enc_key else "", auth, f"0x{auth_key.hex()}" if auth_key else ""]
        if s.uses_esn:
            # The high bits of the next number the SA sends (outbound) or expects (inbound).
            nxt = (s.replay_oseq if s.direction == "out" else s.replay_seq) + 1
            fields += ["64-bit", f"{min(nxt >> 32, 0xFFFFFFFF):x}"]   # Wireshark writes "%x"
        lines.append(",".join(f'"{f}"' for f in fields))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Files


def loads(text: Union[str, bytes], *, mode: str = "tunnel") -> list[SaSpec]:
    """Parse a key file's text: JSON when it starts with ``[`` or ``{``, else ``esp_sa``. A leading
    UTF-8 byte order mark is skipped. Octets (``bytes``) are read as UTF-8.

    ``mode`` is the mode of SAs whose text does not say: every SA of an ``esp_sa`` table, and
    JSON SAs without a ``"mode"`` field.
    """
    if mode not in ("tunnel", "transport"):
        raise ValueError(f"mode: 'tunnel' or 'transport', got {shown(mode)}")
    if isinstance(text, (bytes, bytearray, memoryview)):
        octets = bytes(text)
        if octets.startswith(_UTF16_BOMS):
            raise KeyFileError(_UTF16)
        try:
            decoded: Optional[str] = octets.decode("utf-8")
        except UnicodeDecodeError:      # holds the octets (``object``): not the __context__
            decoded = None
        if decoded is None:
            raise KeyFileError("not a text file (invalid UTF-8)")
        text = decoded
    if not isinstance(text, str):
        raise TypeError(f"text: expected str or UTF-8 bytes, got {type(text).__name__}")
    # Editors on Windows start UTF-8 files with a byte order mark; it belongs to neither format.
    text = text.removeprefix("\ufeff")
    stripped = text.lstrip()
    if stripped[:1] in ("[", "{"):
        # Raised after the except clauses, not in them: a JSONDecodeError holds the whole text,
        # keys included (its ``doc``), and would stay reachable as the KeyFileError's
        # ``__context__`` even ``from None``.
        why = ""
        try:
            doc = json.loads(text, object_pairs_hook=_JsonObject.of)
        except json.JSONDecodeError as e:
            # The message carries position only; json's own text could quote the document.
            why = f"not valid JSON: {e.msg}: line {e.lineno} column {e.colno}"
        except RecursionError:
            why = "not a key file: JSON nested too deeply"
        except ValueError:
            # Python reads no integer of more decimal digits than this (CVE-2020-10735).
            why = (f"not a usable key file: a JSON number has more than {sys.get_int_max_str_digits()} "
                   f"digits (write a wide replay_bitmap as \"0x…\" hex)")
        if why:
            raise KeyFileError(why)
        if isinstance(doc, dict):
            if "sas" not in doc:
                raise KeyFileError("a JSON key file is a list of SAs or an object with an 'sas' list")
            _refuse_repeats(doc, "the key file")
            other = sorted(set(doc) - {"sas"})
            if other:
                raise KeyFileError(f"unknown top-level field(s) {', '.join(map(shown, other))}: SA fields go "
                                   f"in each SA of 'sas'")
            doc = doc["sas"]
        if not isinstance(doc, list):
            raise KeyFileError("a JSON key file is a list of SAs or an object with an 'sas' list")
        return [_spec_from_json(i, o, mode) for i, o in enumerate(doc)]
    return from_esp_sa(text, mode=mode)


# A key file is text: up to about 1 KiB per SA, for as many SAs as an Offload holds by default
# (2**20). Past that, or at the first NUL octet (no key file format has one), it is refused
# without reading on: `-k` naming a device such as /dev/zero, or a large capture given in the
# key file's place, ran the process out of memory.
_MAX_KEY_FILE = 1 << 30
_READ_CHUNK = 1 << 20
# PowerShell's ">" writes UTF-16 with a byte order mark; little-endian UTF-32's starts the same.
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")
_UTF16 = "UTF-16 or UTF-32 text (it starts with a byte order mark): save the key file as UTF-8"


def _read_key_file(path: PathLike) -> bytes:
    """The file's octets, read a chunk at a time (a signal is handled between chunks)."""
    chunks: list[bytes] = []
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            if not size and chunk.startswith(_UTF16_BOMS):
                raise KeyFileError(_UTF16)
            nul = chunk.find(0)
            if nul >= 0:
                raise KeyFileError(f"not a text file (a NUL octet at offset {size + nul})")
            size += len(chunk)
            if size > _MAX_KEY_FILE:
                raise KeyFileError(f"not a key file: larger than {_MAX_KEY_FILE >> 20} MiB")
            chunks.append(chunk)
            # A buffered read comes back short only at the end; reading on would wait for more
            # at a terminal, whose end of input (Ctrl-D) holds for one read.
            if len(chunk) < _READ_CHUNK:
                break
    return b"".join(chunks)


def load(path: PathLike, *, mode: str = "tunnel") -> list[SaSpec]:
    """Read a JSON key file or a Wireshark/strongSwan ``esp_sa`` file.

    Raises :class:`KeyFileError` (with the file name) when the file is not a usable key file,
    and ``OSError`` when it cannot be read. Reading stops, with that error, at the first NUL
    octet or past 1 GiB: a device or a capture named in a key file's place is not read whole.
    """
    try:
        data = _read_key_file(path)
        specs = loads(data, mode=mode)
    except KeyFileError as e:
        raise KeyFileError(f"{os.fspath(path)}: {e}") from None
    return [dataclasses.replace(s, origin=f"{os.fspath(path)}: {s.origin}") for s in specs]


def dumps(specs: Iterable[SaSpec], fmt: str = "json") -> str:
    """Serialise ``specs`` as ``"json"`` or ``"esp_sa"``.

    Only what :func:`loads` reads back is written, in either format: a spec that is not an
    :class:`SaSpec`, or whose key is not bytes, is a ``TypeError``; an unknown suite, a bad SPI,
    key length, address or port, a ``ValueError`` (:class:`KeyFileError`) naming the SA and the
    field."""
    if fmt not in ("json", "esp_sa"):
        raise ValueError(f"fmt: 'json' or 'esp_sa', got {shown(fmt)}")
    specs = list(specs)
    for i, spec in enumerate(specs):
        if not isinstance(spec, SaSpec):
            raise TypeError(f"specs[{i}]: expected an SaSpec, got {type(spec).__name__}")
        if not isinstance(spec.key, (bytes, bytearray)):
            raise TypeError(f"specs[{i}].key: expected bytes or bytearray, got {type(spec.key).__name__}")
    specs = _canonical(specs)
    text = json.dumps([_spec_to_json(s) for s in specs], indent=2) + "\n"
    # A file natt wrote must load: the JSON reader holds every field check, and an esp_sa
    # table carries a subset of the same fields.
    loads(text)
    return text if fmt == "json" else to_esp_sa(specs)


def save(path: PathLike, specs: Iterable[SaSpec], fmt: Optional[str] = None) -> None:
    """Write ``specs``; ``fmt`` defaults to ``esp_sa`` when the file is named ``esp_sa`` or
    ends in ``.esp_sa``, else JSON. The file holds keys, so it gets mode 0600 even where one
    with wider permissions existed: the text goes to a new 0600 file beside it, which then
    replaces ``path`` (a reader never sees half a file; a symbolic link ``path`` keeps naming
    the file it named)."""
    if fmt is None:
        base = os.path.basename(os.fspath(path))
        fmt = "esp_sa" if base == "esp_sa" or base.endswith(".esp_sa") else "json"
    text = dumps(specs, fmt)
    with Replacement(os.fspath(path)) as f:       # mode 0600
        f.write(text.encode("utf-8"))


# ----------------------------------------------------------------------------------------------
# Installing


def _inbound_window(s: SaSpec) -> tuple[int, Optional[int], int]:
    """``(replay_seq, replay_bitmap, replay_fail_run)`` that ``s`` installed inbound starts its
    window at (``None``: every number up to ``replay_seq`` seen)."""
    if s.direction == "out" and s.uses_esn:
        # Decapping what an outbound SA sent (natt decap installs every SA inbound): its packets
        # follow replay_oseq, the last number it had sent. A window starting at 0 would infer
        # their ESN high bits in epoch 0 (RFC 4303 Appendix A) and fail every ICV once the
        # sender is past 2**32.
        return s.replay_oseq, None, 0
    return s.replay_seq, s.replay_bitmap, s.replay_fail_run


def install(offload: Offload, specs: Sequence[SaSpec], *, direction: Optional[str] = None,
            replay_state: Optional[Mapping[int, tuple[int, ...]]] = None) -> list[int]:
    """Install ``specs`` on ``offload`` (a :class:`natt.Offload`); returns one handle per spec.

    ``direction=None`` installs each SA with its own direction (an SA with none -- from an
    ``esp_sa`` table -- is refused). ``"in"`` or ``"out"`` installs every SA that way: decrypting
    a capture uses ``"in"`` for every SA, whichever way its traffic went.

    An inbound tunnel SA with no source address (``*``) gets its destination as source: decap
    never looks at an SA's source (docs/semantics.md §1, step 6), but a tunnel SA needs one.

    ``replay_state`` maps an index into ``specs`` to the ``(top, bitmap)`` that
    ``Offload.replay_state`` exported for that SA, or ``(top, bitmap, fail_run)`` with the
    ``replay_fail_run`` of its ``Offload.sa_stats``: it is installed inbound in exactly that
    anti-replay state (``replay_seq=top, replay_bitmap=bitmap, replay_fail_run=fail_run``)
    instead of its own ``replay_seq``.

    With ``direction`` given, a spec that would install exactly what an earlier one installed
    (a key file holding one SA's two directions: same SPI, ends, settings and key; installed
    inbound, the ports, ``replay_oseq`` and ``df_bit`` an outbound SA alone uses do not count) is
    not added again: it gets the earlier handle. Any other clash is the Offload's refusal.

    All or nothing: if one SA is refused, those already installed are deleted again and
    :class:`KeyFileError` names the SA (its ``natt.OffloadError`` is the ``__cause__``).
    """
    with offload._all_or_nothing() as handles:
        for i, s, d, kwargs, twin in _plan(specs, direction, replay_state):
            if twin is not None:
                handles.append(handles[twin])
                continue
            try:
                h = offload.add_sa(s.spi, s.key, s.suite, d, **kwargs)
            except Exception as e:   # OffloadError; its message names the field, never the key
                raise KeyFileError(f"{_installing(i, s)}: {e}") from e
            handles.append(h)
    return handles


def same_sa(specs: Sequence[SaSpec], direction: Optional[str] = None) -> list[int]:
    """For each of ``specs``, the index of the first spec that :func:`install` with
    ``direction`` installs as the very same SA (its own index if none): the rows a run's
    summary merges. Raises :class:`KeyFileError` as :func:`install` would for a spec it refuses
    before asking the Offload."""
    return [i if twin is None else twin for i, _, _, _, twin in _plan(specs, direction, None)]


# add_sa settings an inbound SA takes but does not use (docs/keys.md).
_OUTBOUND_ONLY = ("sport", "dport", "replay_oseq", "df_bit")


def _plan(specs: Sequence[SaSpec], direction: Optional[str], replay_state: Optional[Mapping[int, tuple[int, ...]]]
          ) -> Iterator[tuple[int, SaSpec, str, dict[str, Any], Optional[int]]]:
    """What :func:`install` asks of the Offload for each spec: ``(index, spec, direction,
    add_sa keyword arguments, index of an earlier spec installing the same SA or None)``."""
    if direction not in (None, "in", "out"):
        raise ValueError(f"direction: None, 'in' or 'out', got {shown(direction)}")
    same: dict[tuple[Any, ...], int] = {}
    # A spec made in code skips the file readers' check, and add_sa's own message gives the
    # field's width (0..2**32-1), not the SPIs that are valid.
    for i, s in enumerate(_canonical(specs)):
        d = direction or s.direction
        if d is None:
            raise KeyFileError(f"{_installing(i, s)}: no direction (esp_sa tables have none); "
                               f"pass direction='in' or 'out'")
        src, dst = s.src, s.dst
        if s.mode == "tunnel" and d == "in" and src is None and dst is not None:
            src = dst
        if s.mode == "tunnel" and dst is None:
            # Only the destination is an inbound tunnel SA's key (a null src is taken as dst above).
            raise KeyFileError(f"{_installing(i, s)}: a tunnel-mode SA needs dst, its tunnel's "
                               f"destination end; for a wildcard destination use transport mode")
        if s.mode == "tunnel" and src is None:
            raise KeyFileError(f"{_installing(i, s)}: an outbound tunnel-mode SA needs src, its tunnel's "
                               f"source end: encap writes it as the outer source ('*' or null will not do)")
        # Outbound, replay_seq is the spec's own only if it is an outbound spec (add_sa refuses
        # it there: the SA sends from replay_oseq); an inbound or esp_sa spec's window state does
        # not apply to sending.
        replay_seq, replay_bitmap, fail_run = (_inbound_window(s) if d == "in" else
                                               (s.replay_seq if s.direction == "out" else 0, None, 0))
        if replay_state is not None and i in replay_state:
            replay_seq, replay_bitmap, *rest = replay_state[i]
            fail_run = rest[0] if rest else 0
        kwargs = dict(mode=s.mode, src=src, dst=dst, encap=s.encap, port=s.port, sport=s.sport,
                      dport=s.dport, replay_window=s.replay_window, esn=s.esn,
                      nat_oa_src=s.nat_oa_src if d == "in" else None,
                      nat_oa_dst=s.nat_oa_dst if d == "in" else None, replay_seq=replay_seq,
                      replay_oseq=s.replay_oseq, replay_bitmap=replay_bitmap, replay_fail_run=fail_run,
                      # What encap writes (RFC 4301 §8.1); an inbound SA takes "copy" only.
                      df_bit=s.df_bit if d == "out" else "copy")
        # A key file that holds an SA's two directions (same SPI, ends and key) gives the
        # same SA twice once ``direction`` makes them both inbound (natt decap): install it
        # once, both specs get its handle. The key is compared, not kept in the index, and so
        # are only the settings the SA uses: inbound it writes no ports and sends no numbers.
        ident = (s.spi, s.suite, d, tuple((k, v) for k, v in kwargs.items()
                                          if d == "out" or k not in _OUTBOUND_ONLY))
        twin = same.get(ident) if direction is not None else None
        if twin is not None and specs[twin].key != s.key:
            twin = None
        if twin is None:
            same.setdefault(ident, i)
        yield i, s, d, kwargs, twin

"""What an error message may say about a value the caller passed where a name was expected.

Arguments get swapped (``add_sa(spi, "aes128gcm16", key_hex, ...)`` puts the key in ``suite``),
and a message that echoed the value would print the key (SECURITY.md: keys never appear in
messages). Names natt asks for -- suites, directions, modes, addresses -- are short and never
a long run of hex digits, nor 20 base64 characters in mixed case; keys written as text are
exactly that (hex, or base64 as strongSwan prints them). No integer field is wider than
64 bits, and a key turned into an integer (``int.from_bytes``) is wider.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

# 16 hex digits = 8 octets, shorter than any key natt takes; separators as keys.py accepts them.
_KEYLIKE = re.compile(r"(0[xX])?([0-9a-fA-F][\s:-]?){16,}")
# A key in base64 (strongSwan and most secret stores print keys so): 20 characters hold 15 octets,
# and a random key's base64 mixes upper and lower case, which no name natt asks for does.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{20,}={0,2}")
# No name natt asks for is anywhere near this long. A longer string is not looked into: the
# patterns above keep a backtracking state per character (500 MiB and seconds for a 3 MB value,
# e.g. a key file field), and the message would quote all of it.
_LONGEST_SHOWN = 256


def shown(value: Any) -> str:
    """``repr(value)``, unless it could be key material: then only its type and length.

    Shown are None, booleans, floats, integers of up to 64 bits and strings without a run of hex
    digits or of base64. Anything else -- bytes, a list, a dict, an array, an object -- may hold a key
    anywhere inside (``mode=[key_hex]``, a numpy view of the key) and is named by its type."""
    if value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, (np.integer, np.bool_)):
        value = value.item()                    # a numpy scalar: shown as the number it is
    if isinstance(value, int):                  # bool and the IntEnums included
        if value.bit_length() > 64:             # no field natt takes is wider
            return f"<a {value.bit_length()}-bit integer, not shown: a key?>"
        return repr(value)
    if isinstance(value, str):
        if len(value) > _LONGEST_SHOWN:
            return f"<{len(value)} characters, not shown: longer than any name>"
        if _KEYLIKE.fullmatch(value.strip()):
            return f"<{len(value)} hex digits, not shown: a key?>"
        if _KEYLIKE.search(value):              # a key with something around it ("<hex>-esn")
            return f"<{len(value)} characters around a run of hex digits, not shown: a key?>"
        if any(not run.isupper() and not run.islower() for run in _BASE64_RUN.findall(value)):
            return f"<{len(value)} characters with a base64 run, not shown: a key?>"
        return repr(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return f"<{type(value).__name__} of {memoryview(value).nbytes} octets, not shown>"
        except ValueError:                      # a released memoryview
            return "<a released memoryview>"
    try:
        size = f" of {len(value)} items"
    except Exception:                           # no len(), or one that fails
        size = ""
    return f"<{type(value).__name__}{size}, not shown>"

"""natt's own AES-GCM (natt/natt_aesni.h) against libcrypto's EVP AES-GCM, in C.

The suite checks natt_gcm through whole packets (both backends, the published vectors, the
differential test); this drives it directly on 20 000 random cases, with the splits of text and
additional data the packet paths use and lengths they rarely reach, once optimised and once under
AddressSanitizer and UndefinedBehaviorSanitizer (reads past a buffer, misaligned loads).
"""

from __future__ import annotations

import pytest

from _cprog import FLAGS, build, run


@pytest.mark.parametrize("flags", FLAGS.values(), ids=FLAGS.keys())
def test_natt_gcm_equals_evp(tmp_path, flags):
    done = run(build(tmp_path, "gcm_vs_evp", flags), "20000")
    if done.returncode == 77:
        pytest.skip("this CPU has no AES-NI/PCLMULQDQ: natt runs AES-GCM on libcrypto here")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "20000 cases, 0 differ", done.stdout
    assert not done.stderr, done.stderr

"""natt's own AES-GCM (natt/natt_aesni.h) against libcrypto's EVP AES-GCM, in C.

The suite checks natt_gcm through whole packets (both backends, the published vectors, the
differential test); this drives it directly on 20 000 random cases, with the splits of text and
additional data the packet paths use and lengths they rarely reach, once optimised and once under
AddressSanitizer and UndefinedBehaviorSanitizer (reads past a buffer, misaligned loads).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

from natt._bench import _pkg_config

HERE = pathlib.Path(__file__).parent
NATT = HERE.parent / "natt"


def _build_and_run(tmp_path: pathlib.Path, flags: list[str]) -> subprocess.CompletedProcess:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    assert cc, "no C compiler: the extension could not have been built either"
    exe = tmp_path / "gcm_vs_evp"
    cmd = [cc, *flags, "-I", str(NATT), str(HERE / "c" / "gcm_vs_evp.c"), "-o", str(exe),
           *_pkg_config("--cflags"), *(_pkg_config("--libs") or ["-lcrypto"])]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, f"{' '.join(cmd)}\n{build.stderr}"
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0", UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    run = subprocess.run([str(exe), "20000"], capture_output=True, text=True, timeout=600, env=env)
    if run.returncode == 77:
        pytest.skip("this CPU has no AES-NI/PCLMULQDQ: natt runs AES-GCM on libcrypto here")
    return run


@pytest.mark.parametrize("flags", [["-O3"], ["-O1", "-g", "-fsanitize=address,undefined",
                                             "-fno-sanitize-recover=undefined"]],
                         ids=["optimised", "sanitized"])
def test_natt_gcm_equals_evp(tmp_path, flags):
    run = _build_and_run(tmp_path, flags)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "20000 cases, 0 differ", run.stdout
    assert not run.stderr, run.stderr

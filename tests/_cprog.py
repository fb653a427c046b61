"""Build and run the C test programs of tests/c/ against natt's headers (natt/*.h)."""

from __future__ import annotations

import os
import pathlib
import subprocess

from natt._bench import _pkg_config, c_compiler

HERE = pathlib.Path(__file__).parent
NATT = HERE.parent / "natt"

# Each program runs once optimised and once under AddressSanitizer and UBSan.
FLAGS = {"optimised": ["-O3"],
         "sanitized": ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]}


def build(tmp_path: pathlib.Path, name: str, flags: list[str]) -> pathlib.Path:
    """Compile tests/c/<name>.c with ``flags`` (and libcrypto); the executable's path."""
    cc = c_compiler()
    assert cc, "no C compiler: the extension could not have been built either"
    exe = tmp_path / name
    cmd = [*cc, *flags, "-I", str(NATT), str(HERE / "c" / f"{name}.c"), "-o", str(exe),
           *_pkg_config("--cflags"), *(_pkg_config("--libs") or ["-lcrypto"]), "-lpthread"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stderr}"
    return exe


def run(exe: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0", UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600, env=env)

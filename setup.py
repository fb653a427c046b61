"""Build the natt._fastpath extension against OpenSSL libcrypto >= 3.0.

Environment switches:
  NATT_SANITIZE=1   build with AddressSanitizer and UndefinedBehaviorSanitizer (see SECURITY.md)
  NATT_DEBUG=1      -O0 -g, Cython line tracing off, bounds checks on
"""

import os
import shlex
import subprocess
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

_NO_SSL = """
natt needs the OpenSSL 3 development files (libcrypto headers and pkg-config data).
On Debian or Ubuntu:  apt-get install -y libssl-dev pkg-config
On Fedora/RHEL:       dnf install openssl-devel pkgconf-pkg-config
"""


def _pkg_config(*args: str) -> str:
    return subprocess.run(["pkg-config", *args, "libcrypto"], check=True,
                          capture_output=True, text=True).stdout.strip()


def _libcrypto() -> tuple[list, list, list]:
    try:
        version = _pkg_config("--modversion")
        cflags = shlex.split(_pkg_config("--cflags"))
        libs = shlex.split(_pkg_config("--libs"))
    except (OSError, subprocess.CalledProcessError):
        sys.exit(_NO_SSL)
    if int(version.split(".")[0]) < 3:
        sys.exit(f"natt needs OpenSSL libcrypto >= 3.0, pkg-config found {version}.\n{_NO_SSL}")
    include_dirs = [f[2:] for f in cflags if f.startswith("-I")]
    library_dirs = [f[2:] for f in libs if f.startswith("-L")]
    libraries = [f[2:] for f in libs if f.startswith("-l")]
    return include_dirs, library_dirs, libraries


include_dirs, library_dirs, libraries = _libcrypto()
compile_args = ["-O3", "-fno-strict-aliasing"]
link_args = ["-pthread"]
directives = {"language_level": 3, "boundscheck": False, "wraparound": False,
              "cdivision": True, "initializedcheck": False}
if os.environ.get("NATT_SANITIZE"):
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-O1"]
    compile_args = [a for a in compile_args if a != "-O3"] + san
    link_args += ["-fsanitize=address,undefined"]
if os.environ.get("NATT_DEBUG"):
    compile_args = [a for a in compile_args if a != "-O3"] + ["-O0", "-g"]
    directives.update(boundscheck=True, wraparound=True)

ext = Extension(
    "natt._fastpath",
    ["natt/_fastpath.pyx"],
    depends=["natt/natt_aesni.h", "natt/natt_arena.h"],
    include_dirs=[numpy.get_include(), *include_dirs],
    library_dirs=library_dirs,
    libraries=libraries,
    extra_compile_args=compile_args,
    extra_link_args=link_args,
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                   ("OPENSSL_API_COMPAT", "30000")],
)

setup(ext_modules=cythonize([ext], compiler_directives=directives))

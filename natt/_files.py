"""Replacing a file whole: write a temporary file beside it, rename it over the target.

A reader of the target sees the old file or the new one, never half of either, and a writer
that fails leaves the old file as it was (so ``natt decap IN -o IN`` reads IN to its end
before replacing it). Used by ``natt.keys.save`` and the CLI's ``-o``; ``natt.dask`` names
its temporary files itself, so that a re-run task overwrites its own, and uses :func:`give_as`.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tempfile
from typing import Optional


def give(fd: int, mode: Optional[int], owner: Optional[tuple[int, int]]) -> None:
    """Give the open file ``fd`` ``owner`` (uid, gid), as far as the process may, then ``mode``
    (``None``: leave either as it is)."""
    if owner is not None:
        # Before the chmod: a chown clears set-user-ID bits. Only root may give a file away;
        # anyone may set a group they are in; else the file stays the process's.
        try:
            os.fchown(fd, *owner)
        except PermissionError:
            with contextlib.suppress(PermissionError):
                os.fchown(fd, -1, owner[1])
    if mode is not None:
        os.fchmod(fd, mode)


def give_as(fd: int, path: str, source: Optional[str] = None) -> None:
    """Give the open file ``fd`` the mode and owner of the file ``path`` it is to replace, if
    there is one: a decrypted capture written over a 0600 one stays 0600. Else the mode of
    :func:`new_file_mode` (``source``)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        give(fd, new_file_mode(source), None)
        return
    if stat.S_ISREG(st.st_mode):
        give(fd, stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid))


def file_identity(path: str) -> tuple[object, ...]:
    """What names the file ``path`` leads to: its device and inode if it exists (another
    spelling, a hard link, a symbolic link give the same), else its absolute path with symbolic
    links resolved as far as they go. Equal identities are :func:`same_file`; a set of them
    checks many outputs against many inputs in linear time (``natt.dask``)."""
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.realpath(path))
    return ("inode", st.st_dev, st.st_ino)


def same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one file (:func:`file_identity`). For refusing an
    output that would replace an input before the run, in ``natt decap`` and ``natt.dask``."""
    return file_identity(a) == file_identity(b)


def new_file_mode(source: Optional[str] = None) -> int:
    """The mode of a new output file: what ``open()`` gives one (0o666 less the umask), but no
    more readable by group or others than the regular file ``source`` it is made from. A decap's
    output is what the keys protect, and a private capture's contents stay as private; a pipe's
    own mode (or None) says nothing of who may read what comes through it."""
    mask = _umask()
    try:
        st = os.stat(source) if source is not None else None
    except OSError:
        st = None
    kept = stat.S_IMODE(st.st_mode) | 0o700 if st is not None and stat.S_ISREG(st.st_mode) else 0o777
    return 0o666 & ~mask & kept


class Replacement:
    """The new contents of ``path``, written to a temporary file in the same directory.

    ``with Replacement(path) as f: f.write(...)`` renames the temporary file over ``path`` when
    the block ends without an exception, and deletes it when one is raised. A symbolic link
    ``path`` keeps pointing at the file it names, which is replaced. The temporary file is
    created (``OSError`` if it cannot be) by the constructor, before anything is written, with
    ``mode`` (``None``: 0600, the mode for key files) and, as far as the process may give it,
    ``owner`` (uid, gid): a file replaced by another user keeps its owner or at least its group,
    as ``sed -i`` does. It is flushed to disk before the rename: renamed first, a crash could
    leave an empty file where the old one was.
    """

    def __init__(self, path: str, mode: Optional[int] = None,
                 owner: Optional[tuple[int, int]] = None) -> None:
        target = os.path.realpath(path)
        try:
            fd, self._tmp = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".part",
                                             prefix=f".{os.path.basename(target)}.")
        except OSError as e:
            # Name the file the caller asked for, not the temporary one it never heard of, and
            # say where the failure was: a writable file in a directory that is not (or /proc)
            # fails here, which "cannot write FILE: Permission denied" alone makes a puzzle.
            where = os.path.dirname(target) or "."
            raise type(e)(e.errno, f"{e.strerror} (a new file is written in {where}, then renamed over it)",
                          path) from None
        self._target = target
        try:
            give(fd, mode, owner)
            self._file: io.BufferedWriter = open(fd, "wb")
        except BaseException:
            os.close(fd)
            os.unlink(self._tmp)
            raise

    def __enter__(self) -> io.BufferedWriter:
        return self._file

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if exc_type is None:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                os.replace(self._tmp, self._target)
                return
        except BaseException:
            self._discard()
            raise
        self._discard()

    def _discard(self) -> None:
        # close() flushes what is still buffered, which fails again when the write error being
        # raised was a full disk (or quota, or file size limit): that must neither stop the
        # unlink, which left a partial file (holding keys, for a key file) per failed save, nor
        # replace the error being raised. close() releases the descriptor even so.
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)


def _umask() -> int:
    """The process's umask: Linux shows it in /proc (since 4.7); elsewhere the only way to read
    it is to set it, which a file another thread creates meanwhile would get."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask

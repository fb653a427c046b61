"""The ``natt`` command line: decrypt and build NAT-T captures, run the demo and the benchmark.

Every subcommand is a thin layer over :mod:`natt.pcap`, :mod:`natt.keys` and
:class:`natt.Offload`; ``main(argv)`` returns the exit status (0 success, 1 failure with a
one-line message on stderr, 2 bad usage, 128 + N stopped by signal N) and never prints a
traceback for bad input.

A reader of the text natt prints (the summary, explain's walk, a ``--report -``, ``--version``)
may stop reading when it has seen enough (``natt ... | head -1``, ``| grep -q``): that costs the
command nothing, quietly, and its exit status is the one it would have had (:func:`say`).
Whether the reader left before natt's last write is up to the two processes, so any other
answer would make the status of ``set -o pipefail`` scripts a matter of timing. The reader of a
capture (``-o -``, a FIFO) leaving before its end does stop the run, which exits quietly with
141 (128 + SIGPIPE), as a shell reports ``tcpdump -w - | head -c 100``; the report is not
written, as for any run that did not end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import errno
import ipaddress
import itertools
import json
import logging
import os
import re
import select
import shlex
import signal
import stat
import string
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO, NoReturn, Optional, TextIO

import numpy as np

from . import keys as keyfile
from . import pcap
from ._batch import ENCAP_OVERHEAD, PacketBatch
from ._capture import CaptureStats, InboundSas, sa_index, sa_table
from ._constants import Status, UdpEncapType
from ._entry import interrupted
from ._files import Replacement, new_file_mode, same_file
from ._offload import MAX_THREADS, Offload, _check_threads
from ._suites import Cipher, Mac
from ._version import __version__

__all__ = ["main", "build_parser", "CaptureStats", "EncapStats"]


class CliError(Exception):
    """A failure to report as one line on stderr (exit status 1)."""


class UsageError(CliError):
    """Options that do not go together: reported as argparse reports bad usage, under the
    subcommand's usage line (exit status 2)."""


# ----------------------------------------------------------------------------------------------
# Helpers


#: Seconds of work before a progress bar appears (short runs stay quiet).
PROGRESS_DELAY = 1.0


def _progress(args: argparse.Namespace, total: int, desc: str, unit: str = "B") -> Any:
    """A tqdm bar over ``total`` units (default: the input's octets), on stderr, that appears only
    once the work has taken more than ``PROGRESS_DELAY`` seconds; shown on a terminal, or anywhere
    with --progress."""
    from tqdm import tqdm
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    return tqdm(total=total, unit=unit, unit_scale=True, unit_divisor=1024 if unit == "B" else 1000, desc=desc,
                delay=PROGRESS_DELAY, disable=not show, file=sys.stderr, leave=False)


def destination_problem(path: str) -> Optional[str]:
    """Why a file cannot be written at ``path`` (its directory is missing or read-only, or it is
    a directory), or None. For checking a run's outputs before the run rather than after."""
    if os.path.isdir(path):
        return "is a directory"
    if path.endswith(("/", os.sep)):
        # open() would make a file of that name without the slash; the user meant a directory.
        return "no such directory (a name ending in / names a directory)"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"{parent} is not a directory" if os.path.exists(parent) else f"directory {parent} does not exist"
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else "not writable"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"directory {parent} is not writable"


def _check_report(args: argparse.Namespace) -> None:
    """Refuse, before the run, a --report the run could not write or that would replace one
    of the run's own files (it is written at the end, over whatever it names)."""
    if args.report is None:
        return
    if _is_stdout(args.report):
        if _is_stdout(args.output):
            raise UsageError(f"--report {args.report}: standard output carries the capture (-o {args.output}); "
                             f"name a file")
        return
    why = destination_problem(args.report)
    if why:
        raise CliError(f"--report {args.report}: {why}")
    inputs = args.input if isinstance(args.input, list) else [args.input]
    for what, path in [*(("the input capture", p) for p in inputs), ("the output (-o)", args.output),
                       ("the key file (-k)", args.keys)]:
        if same_file(args.report, path):
            raise UsageError(f"--report {args.report}: is {what} {path}; name another file")


def _check_output(args: argparse.Namespace) -> None:
    if _is_stdout(args.output):
        if sys.stdout.isatty():
            # A capture is binary: on a terminal it is noise that can leave the terminal in a
            # state of its control sequences, and nothing could read it back.
            raise UsageError(f"-o {args.output}: standard output is a terminal here; pipe the capture on "
                             f"(natt ... -o - | tshark -r -) or name a file")
        return
    why = destination_problem(args.output)
    if why:
        raise CliError(f"-o {args.output}: {why}")
    # The keys are read before the run; a run that succeeded would then replace them with a capture.
    if same_file(args.output, args.keys):
        raise UsageError(f"-o {args.output}: is the key file (-k) {args.keys}; name another file")


def _summary_stream(args: argparse.Namespace) -> TextIO:
    """Where the summary table goes: stdout, unless the capture or the report goes there."""
    taken = _is_stdout(args.output) or (args.report is not None and _is_stdout(args.report))
    return sys.stderr if taken else sys.stdout


def _write_report(args: argparse.Namespace, stats: CaptureStats) -> None:
    """``--report``: the summary as JSON, written whole or not at all (as -o is). Capture runs
    call it before -o is renamed into place, so that a report that cannot be written fails the
    run with -o as it was."""
    if args.report is None:
        return
    doc = {"command": args.command, "input": args.input, "output": args.output, **stats.as_dict()}
    text = json.dumps(doc, indent=2) + "\n"
    if _is_stdout(args.report):
        # The stream itself: reopening /dev/stdout would truncate a file. A reader that takes
        # only part of it (| head -c 100) keeps -o from nothing: it is renamed into place.
        say(text, end="")
        return
    try:
        with _output_file(args.report, False) as f:
            f.write(text.encode())
    except CliError as e:
        raise CliError(f"report: {e}") from None
    except OSError as e:
        raise CliError(f"report: cannot write {args.report}: {e.strerror or e}") from None


def _reading_from_terminal(what: str) -> None:
    """Say so before reading ``what`` from a terminal: a bare wait looks like a hang."""
    print(f"reading {what} from the terminal; end it with Ctrl-D", file=sys.stderr, flush=True)


def _load_keys(path: str, mode: str) -> list[keyfile.SaSpec]:
    if path == "-" and sys.stdin.isatty():
        _reading_from_terminal("the key file")
    try:
        with warnings.catch_warnings(record=True) as left_out:
            warnings.simplefilter("always", keyfile.KeyFileWarning)
            # -k - : keys piped from a secret store need not touch the disk.
            specs = keyfile.load("/dev/stdin" if path == "-" else path, mode=mode)
    except OSError as e:
        raise CliError(f"cannot read key file {path}: {e.strerror or e}") from None
    except keyfile.KeyFileError as e:
        raise CliError(f"bad key file: {e}") from None
    for w in left_out:
        print(f"natt: note: key file {path}: {w.message}", file=sys.stderr)
    if not specs:
        raise CliError(f"key file {path} holds no {'IPv4 ' if left_out else ''}SA")
    return specs


def _open_capture(path: str, chunk_size: int) -> pcap.PcapReader:
    try:
        return pcap.PcapReader(path, chunk_size=chunk_size)
    except OSError as e:
        raise CliError(f"cannot read capture {path}: {e.strerror or e}") from None
    except pcap.PcapError as e:
        raise CliError(str(e)) from None


def _offload(args: argparse.Namespace, n_sas: int) -> Offload:
    try:
        return Offload(backend=args.backend, max_sas=max(n_sas, 1))   # None: the fastest available
    except Exception as e:  # unknown or unavailable backend
        raise CliError(f"backend {args.backend!r}: {e}") from None


def _install(nic: Offload, specs: list[keyfile.SaSpec], direction: str) -> list[int]:
    try:
        return keyfile.install(nic, specs, direction=direction)
    except keyfile.KeyFileError as e:
        raise CliError(f"cannot install SA: {e}") from None


def _finish(args: argparse.Namespace, stats: CaptureStats, out: TextIO, hints: Sequence[str] = ()) -> None:
    """The end of a run over a capture: the truncation warning, the summary, then ``hints``
    (decap_hints) on stderr."""
    if stats.truncated:
        say(f"natt {args.command}: warning: {stats.truncated}; the records before it were processed "
            "(a capture cut short)", file=sys.stderr)
    rate = stats.frames / stats.elapsed if stats.elapsed > 0 else 0.0
    try:
        # The output is complete by now: a reader of the summary that leaves early (| head -1)
        # costs nothing, and the status is the run's.
        say(stats.table(), f"{stats.elapsed:.3f} s, {rate:,.0f} frames/s", file=out)
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS:
            raise
        where = "standard output" if out is sys.stdout else "standard error"
        raise CliError(f"cannot write the summary to {where}: {e.strerror}; the run itself is done "
                       f"(-o {args.output} is complete)") from None
    say(*(f"hint: {hint}" for hint in hints), file=sys.stderr)


def _chunks(reader: pcap.PcapReader, bar: Any, stats: CaptureStats) -> Iterator[pcap.Chunk]:
    """Iterate a reader's chunks, advancing the bar (if any) and turning PcapError into CliError.
    A capture that ends inside a record (PcapTruncated: a tcpdump killed or still writing) ends
    the iteration after the records before it, and ``stats.truncated`` says so: the whole
    records are worth having, as tshark shows them."""
    it = iter(reader)
    while True:
        try:
            chunk = next(it)
        except StopIteration:
            # The chunks' offsets say where their last record starts: the bar ends at its end.
            if bar is not None and bar.total:
                bar.update(max(0, bar.total - bar.n))
            return
        except pcap.PcapTruncated as e:
            stats.truncated = str(e)
            return
        except pcap.PcapError as e:
            raise CliError(str(e)) from None
        yield chunk
        if bar is not None and len(chunk):
            bar.update(max(0, int(chunk.file_offsets[-1]) - bar.n))


# ----------------------------------------------------------------------------------------------
# decap


def decap_capture(nic: Offload, handles: list[int], labels: list[str], reader: pcap.PcapReader,
                  writer: pcap.PcapWriter, *, threads: Optional[int] = None, drop_undecrypted: bool = False,
                  bar: Any = None) -> CaptureStats:
    """Decap every IPv4 frame of ``reader`` into ``writer``: OK frames get their inner packet,
    DUMMY frames are dropped, others are written as read (or dropped when ``drop_undecrypted``
    and they are ESP that did not decrypt: :func:`natt._capture.undecrypted`)."""
    sas = InboundSas.of(nic)
    first: dict[int, int] = {}      # handle -> the first SA installed as it (keys.install)
    stats = CaptureStats(labels, [first.setdefault(h, k) for k, h in enumerate(handles)])
    res = None
    t0 = time.perf_counter()
    for chunk in _chunks(reader, bar, stats):
        t1 = time.perf_counter()
        # The previous chunk's result is written out by now: reuse its buffers.
        res = nic.decap(chunk.batch, threads=threads, out=res)
        stats.crypto_seconds += time.perf_counter() - t1
        with _record_refused():
            stats.write_decapped(writer, chunk, res.batch(), res.status, sa_index(handles, res.sa), res.lengths,
                                 sas, drop_undecrypted)
    stats.elapsed = time.perf_counter() - t0
    return stats


@contextlib.contextmanager
def _record_refused() -> Iterator[None]:
    """A record ``PcapWriter.write_chunk`` refuses (``ValueError``: one natt could not read back,
    such as a pcapng block its options take past 256 MiB) as a :class:`CliError`; the writer
    has written nothing of the chunk, and the output file is not kept."""
    try:
        yield
    except ValueError as e:
        raise CliError(f"cannot write the output: {e}") from None


def _is_stdout(path: str) -> bool:
    """Whether ``-o path`` is this process's standard output: ``-``, or the file, pipe or
    terminal stdout already is (``/dev/stdout``, or a file the shell redirected stdout to)."""
    if path == "-":
        return True
    try:
        out, st = os.fstat(sys.stdout.fileno()), os.stat(path)
    except (OSError, ValueError, AttributeError):    # no such path; stdout closed or not a file
        return False
    return (out.st_dev, out.st_ino) == (st.st_dev, st.st_ino)


# Errors only a write can raise, which name no file (OSError.filename is None).
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def _output_file(path: str, to_stdout: bool, source: Optional[str] = None) -> Iterator[BinaryIO]:
    """The file to write the capture ``-o path`` into (see :func:`_output_stream`); a write
    that fails for want of space is a :class:`CliError` naming it."""
    try:
        with _output_stream(path, to_stdout, source) as f:
            yield f
    except OSError as e:
        if e.filename is None and e.errno in _WRITE_ERRNOS:
            raise CliError(f"cannot write {'standard output' if to_stdout else path}: {e.strerror}") from None
        raise


@contextlib.contextmanager
def _output_stream(path: str, to_stdout: bool, source: Optional[str] = None) -> Iterator[BinaryIO]:
    """The file to write the capture ``-o path`` into, made from the regular file ``source``
    (None: from nothing to keep private, or from a pipe).

    Standard output (``to_stdout``) is written through the stream the process already has: a
    new open() of /dev/stdout would truncate a file stdout appends to. A regular file (or a
    name not taken yet) is written as a temporary file in the same directory and renamed over
    ``path`` only if the block ends without an exception: a failed run leaves ``path`` exactly
    as it was, and ``-o IN`` reads IN to its end before replacing it. A FIFO or a device has
    no contents to keep and cannot be replaced: it is written as the run goes.
    """
    if to_stdout:
        yield sys.stdout.buffer
        return
    try:
        st: Optional[os.stat_result] = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        try:
            f = open(path, "wb")
        except OSError as e:
            raise CliError(f"cannot write {path}: {e.strerror or e}") from None
        # A duplicate of its descriptor outlives f's close (whose flush may be what fails), to
        # tell a FIFO whose reader left from anything else that ends in EPIPE (a --report -).
        probe = os.dup(f.fileno())
        try:
            with f:
                yield f
        except BrokenPipeError:
            if not _reader_gone(probe):
                raise
            raise ReaderLeft(path) from None
        finally:
            os.close(probe)
        return
    # Renaming over a file needs only the directory's permission: keep refusing a file the
    # user could not have written.
    if st is not None and not os.access(path, os.W_OK):
        raise CliError(f"cannot write {path}: {os.strerror(errno.EACCES)}")
    # mkstemp makes its file 0o600; give it the mode and owner the file it replaces had, or the
    # mode a plainly created file would get, no more readable than ``source``.
    try:
        if st is not None:
            out = Replacement(path, stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid))
        else:
            out = Replacement(path, new_file_mode(source))
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}") from None
    with out as f:
        yield f


class ReaderLeft(Exception):
    """The reader of the capture being written (``-o -``, a FIFO) went away before its end: the
    run stops, the report is not written, and natt exits with :data:`READER_LEFT`, quietly."""


#: Exit status when the reader of the capture goes away: 128 + SIGPIPE, what a shell reports for
#: any tool a closed pipe ends (tcpdump -w - | head -c 100, cat | head).
READER_LEFT = 128 + signal.SIGPIPE


def reader_left(stream: TextIO) -> None:
    """The reader of ``stream`` (stdout or stderr) has gone: point its descriptor at /dev/null,
    so that what is still written to it, and Python's flush at exit, go nowhere instead of
    failing again ("Exception ignored ... BrokenPipeError", exit status 120); Python's docs,
    "Note on SIGPIPE", do the same."""
    with contextlib.suppress(OSError, ValueError):     # ValueError: no descriptor (a StringIO)
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, stream.fileno())
        finally:
            os.close(null)


def say(*lines: str, file: Optional[TextIO] = None, end: str = "\n") -> None:
    """Print ``lines`` (to ``file``, default stdout) for a reader that may stop reading when it
    has seen enough (``natt explain ... | head -1``, ``| grep -q``): that reader leaving is not
    natt's failure, and the command goes on to its own exit status. Text only: a capture whose
    reader leaves is :class:`ReaderLeft`."""
    out = sys.stdout if file is None else file
    try:
        for line in lines:
            print(line, file=out, end=end)
        out.flush()     # here, not at exit: where the error can still be told from others
    except BrokenPipeError:
        reader_left(out)


def flush_stdout() -> None:
    """Write out what stdout still holds (argparse's --help, the last lines of a short run) now:
    at exit, past every handler, a reader gone by then made that "Exception ignored ...
    BrokenPipeError" and exit status 120 instead of the command's."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        reader_left(sys.stdout)


def run_script(main: Callable[[], Optional[int]]) -> NoReturn:
    """Exit with the status of ``main()`` (or of its SystemExit: argparse's --help and usage
    errors), for a script outside the ``natt`` command whose text goes through :func:`say`, as
    the checkout's benchmarks: a reader that leaves early (``| head -1``) costs it nothing
    either."""
    try:
        sys.exit(main())
    finally:
        flush_stdout()


def _stream_reader_gone(stream: TextIO) -> bool:
    """:func:`_reader_gone` for a stream that may have no descriptor (False then)."""
    try:
        return _reader_gone(stream.fileno())
    except (OSError, ValueError):
        return False


def _reader_gone(fd: int) -> bool:
    """Whether ``fd`` is the write end of a pipe or FIFO that nothing reads any more: Linux
    reports that as POLLERR (pipe(7)); elsewhere this may say False, and the caller's error
    stands as it was."""
    probe = select.poll()
    probe.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in probe.poll(0))


def _run_capture(args: argparse.Namespace, specs: list[keyfile.SaSpec], direction: str, to_stdout: bool,
                 work: Callable[..., CaptureStats]) -> CaptureStats:
    """Open ``args.input``, install ``specs`` in ``direction`` on a new Offload, open
    ``args.output`` like the input (see :func:`_output_file`), run
    ``work(nic, handles, reader, writer, bar)`` and write the report before the output is
    renamed into place. The Offload is closed (keys wiped) when the work ends, however it ends."""
    reader = _open_capture(args.input, args.chunk_size)
    with reader, _offload(args, len(specs)) as nic, _held_signals() as hold:
        handles = _install(nic, specs, direction)
        verb = "decap" if direction == "in" else "encap"
        # Encap makes each frame it replaces up to ENCAP_OVERHEAD octets longer: the snap lengths
        # the output declares must grow with it (a record longer than its snaplen is invalid).
        grow = 0 if direction == "in" else ENCAP_OVERHEAD
        suffix = os.path.splitext(args.output)[1].lower()
        other = {".pcap": "pcapng", ".pcapng": "pcap"}.get(suffix)
        if other == reader.format:
            source = "standard input" if args.input == "/dev/stdin" else args.input   # IN of -
            print(f"hint: -o {args.output} is written as {other}, the format of {source} "
                  f"(natt keeps the input's format whatever the name)", file=sys.stderr)
        with _output_file(args.output, to_stdout, args.input) as f:
            with pcap.PcapWriter.like(reader, f, grow=grow) as writer, \
                    _progress(args, os.path.getsize(args.input), verb) as bar:
                stats = work(nic, handles, reader, writer, bar)
            # The report is renamed into place, then -o is flushed to disk and renamed: a
            # signal between the two would leave a new report describing the old -o.
            hold()
            _write_report(args, stats)
        return stats


@contextlib.contextmanager
def _held_signals() -> Iterator[Callable[[], None]]:
    """Yields ``hold()``: from that call to the end of the block, Ctrl-C, SIGTERM and SIGHUP
    wait, and the one that came (if any) is raised as the block ends. Only in the main thread,
    where handlers can be set; elsewhere ``hold()`` does nothing."""
    came: list[int] = []
    previous: dict[int, Any] = {}

    def hold() -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                previous[sig] = signal.signal(sig, lambda signum, frame: came.append(signum))
    try:
        yield hold
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if came:
        if came[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise _Stopped(came[0])


# A worker of --workers is a process of its own (about 65 MB, and a second or so of CPU to
# start): an unbounded N (a typo such as 100000) had the cluster start for minutes, taking memory
# as it went. A local cluster gains nothing from more workers than CPUs; the bound is --threads'.
MAX_WORKERS = MAX_THREADS


def _dask_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dask ADDRESS`` / ``--workers N`` of ``natt decap`` (docs/dask.md)."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--dask", metavar="SCHEDULER", default=None,
                   help="decap on this Dask cluster (e.g. tcp://10.0.0.5:8786); IN may then name several "
                        "captures and -o is a directory (needs the dask extra)")
    g.add_argument("--workers", type=at_least(1, MAX_WORKERS), default=None, metavar="N",
                   help=f"decap on a local Dask cluster of N worker processes, 1..{MAX_WORKERS} (each a "
                        "Python process of about 65 MB; more than the machine's CPUs gain nothing; needs "
                        "the dask extra)")


def _quiet_task_failures(client: Any) -> None:
    """Keep the workers of natt's own local cluster from logging a failed task to our stderr.

    A task's exception comes back to decap_captures and natt reports it in one line; each worker
    would first log it as "Compute Failed ... Traceback: ...". Only the workers' task logger is
    quieted: the nanny still reports a worker that dies, and a cluster of --dask keeps its logs.
    """
    import distributed

    # Without the dask extra installed, mypy takes WorkerPlugin as Any, which --strict refuses to
    # subclass; with it, the class is typed and the ignore is unused (pyproject: type-checking natt
    # must not need the extras).
    class QuietTaskFailures(distributed.WorkerPlugin):  # type: ignore[misc, unused-ignore]
        def setup(self, worker: Any) -> None:
            logging.getLogger("distributed.worker").setLevel(logging.CRITICAL)

    client.register_plugin(QuietTaskFailures(), name="natt-quiet-task-failures")


class _SyncCancelRace(logging.Filter):
    """Drop tornado's log of one known race in ``distributed.utils.sync`` (seen with distributed
    2025.x). On Ctrl-C, ``sync`` schedules a ``cancel`` callback for the coroutine it waits on; if
    the interrupt came before that coroutine had created its future, the callback fails with a
    NameError and tornado logs it, traceback and all, under "tornado.application", after natt
    has said "interrupted". The run is being abandoned; nothing is lost by not logging it."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, NameError) or exc.__traceback__ is None:
            return True
        last = traceback.extract_tb(exc.__traceback__)[-1]
        import distributed.utils
        return not (last.name == "cancel"
                    and os.path.realpath(last.filename) == os.path.realpath(distributed.utils.__file__))


_SYNC_CANCEL_RACE = _SyncCancelRace()      # one instance: addFilter skips one already there


def _stdin_input(args: argparse.Namespace) -> None:
    """``IN`` of ``-`` is standard input, read as the FIFO or file it is (``-o -`` is stdout)."""
    if args.input == "-":
        if args.keys == "-":
            raise UsageError("-k -: standard input carries the capture (IN is -); name a key file")
        if sys.stdin.isatty():
            # A capture is binary: nothing typed is one, and the run would wait for it silently.
            raise UsageError("IN: - reads a capture from standard input, which is a terminal here; "
                             "pipe one in (tcpdump -w - ... | natt ...) or name the file")
        args.input = "/dev/stdin"


_DASK_CONNECT_TIMEOUT = 10      # seconds


def _cmd_decap_dask(args: argparse.Namespace) -> int:
    """``natt decap IN... -k KEYS -o OUTDIR (--dask ADDRESS | --workers N)``: natt.dask does the
    work; the same summary table as ``natt decap`` is printed."""
    from .dask import _local_cluster, _outputs, decap_captures      # import dask itself only when they run

    if "-" in args.input:
        raise UsageError("IN: standard input (-) cannot be split over Dask workers; name a capture file")

    try:
        import distributed
    except ImportError:
        raise CliError("--dask/--workers need the dask extra: pip install '.[dask]' in a checkout of natt, "
                       "'natt[dask]' from a package index") from None
    _check_report(args)
    # The outputs go into -o, one per input; finding out that it is a file would otherwise take
    # the cluster's start and a scan of every capture.
    if args.output == "-":
        raise UsageError("-o -: standard output cannot take one output per input; with --dask/--workers, -o "
                         "names the directory that gets them")
    found = os.path.abspath(args.output)
    while not os.path.lexists(found) and found != os.path.dirname(found):
        found = os.path.dirname(found)
    if not os.path.isdir(found):
        # As -o naming a directory without --dask: the file system's state, not the arguments.
        where = "" if found == os.path.abspath(args.output) else f"{found} is "
        raise CliError(f"-o {args.output}: {where}not a directory; with --dask/--workers, -o names the directory "
                       "that gets one output per input")
    try:
        # Before the cluster starts, and in the command line's terms (decap_captures says out_dir).
        outputs = _outputs(args.input, args.output, what=("IN", "-o"), keys=None if args.keys == "-" else args.keys)
    except ValueError as e:
        raise UsageError(str(e)) from None
    # _check_report saw -o, the directory, not the outputs in it: the report, written after them,
    # would replace one.
    for o in outputs if args.report is not None and not _is_stdout(args.report) else ():
        if same_file(args.report, o):
            raise UsageError(f"--report {args.report}: is the output (-o) {o}; name another file")
    specs = _load_keys(args.keys, args.mode)
    if args.workers is not None:
        # The local workers see this machine's files: open each input before the cluster starts
        # (natt.dask does it seconds later, in other words than natt decap's). Workers map their
        # ranges of it, so it must be a regular file: a FIFO read here is gone for them, and they
        # waited for its writer forever. With --dask the inputs are where the workers are.
        for path in args.input:
            try:
                mode = os.stat(path).st_mode
            except OSError:
                mode = stat.S_IFREG     # _open_capture names the error, as for a directory
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UsageError(f"IN: {path} is not a regular file (a FIFO or a device); --workers splits "
                                 "captures into ranges, which needs files")
            _open_capture(path, pcap.MIN_CHUNK_SIZE).close()
    logging.getLogger("tornado.application").addFilter(_SYNC_CANCEL_RACE)
    cluster = None
    try:
        if args.dask:
            # Dask's default is to retry for 30 s; a scheduler that is up answers within a second.
            client = distributed.Client(args.dask, timeout=_DASK_CONNECT_TIMEOUT)
        else:
            # Its workers leave Ctrl-C, SIGTERM and SIGHUP to this process, which stops the run.
            cluster = _local_cluster(n_workers=args.workers or 1, threads_per_worker=1)
            client = distributed.Client(cluster)
            _quiet_task_failures(client)
    except (OSError, ValueError) as e:     # ValueError: an address Dask cannot parse
        raise CliError(f"cannot reach the Dask scheduler {args.dask}: {e}") from None
    except BaseException:                  # Ctrl-C while the cluster starts
        if cluster is not None:
            cluster.close()
        raise
    with _held_signals() as hold:
        try:
            stats = decap_captures(args.input, specs, args.output, client, chunk_size=args.chunk_size,
                                   threads=args.threads, drop_undecrypted=args.drop_undecrypted,
                                   progress=args.progress, backend=args.backend)
            # The outputs are in place now; the report follows before the cluster's shutdown (a
            # second or more), which a signal waits out: a Ctrl-C there would leave an earlier
            # run's report beside the new outputs.
            hold()
            _write_report(args, stats)
        except (pcap.PcapError, keyfile.KeyFileError, ValueError) as e:
            raise CliError(str(e)) from None
        except OSError as e:
            # The job's first task makes -o (natt.dask._make_out_dir): an error there names the
            # directory it could not make, -o or a parent, as the workers resolve it.
            # (Not a descriptor: os.stat(fd) and the like name it by its number.)
            name = e.filename if isinstance(e.filename, (str, bytes)) else None
            failed = os.path.abspath(os.fsdecode(name)) if name else None
            out = os.path.abspath(args.output)
            if failed is not None and (failed == out or out.startswith(failed.rstrip(os.sep) + os.sep)):
                raise CliError(f"-o {args.output}: cannot make the directory {failed}: {e.strerror or e}") from None
            raise CliError(f"{e.filename or 'I/O'}: {e.strerror or e}") from None
        except (concurrent.futures.CancelledError, distributed.KilledWorker) as e:
            # The cluster gave up on the job: the scheduler went away (a task "cancelled for
            # reason: scheduler-connection-lost"), or a task killed every worker that ran it.
            # Not natt's failure to trace back; the job's part files are gone by now.
            raise CliError(f"the Dask job failed: {e}") from None
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    _finish(args, stats, _summary_stream(args), decap_hints(stats, specs))
    return 0


def _cmd_decap(args: argparse.Namespace) -> int:
    if args.dask is not None or args.workers is not None:
        return _cmd_decap_dask(args)
    if len(args.input) != 1:
        raise UsageError("several captures need --dask SCHEDULER or --workers N (docs/dask.md)")
    args.input = args.input[0]
    _stdin_input(args)
    _check_report(args)
    _check_output(args)
    specs = _load_keys(args.keys, args.mode)
    labels = [s.label() for s in specs]
    # The capture goes to stdout: the summary must not go into it.
    to_stdout = _is_stdout(args.output)
    stats = _run_capture(args, specs, "in", to_stdout, lambda nic, handles, reader, writer, bar: decap_capture(
        nic, handles, labels, reader, writer, threads=args.threads,
        drop_undecrypted=args.drop_undecrypted, bar=bar))
    _finish(args, stats, _summary_stream(args), decap_hints(stats, specs))
    return 0


# Link types natt does not parse that captures are often taken with (tcpdump's names).
_LINK_NAMES = {105: "IEEE 802.11", 127: "802.11 radiotap", 192: "PPI", 9: "PPP", 50: "PPP in HDLC"}


def decap_hints(stats: CaptureStats, specs: Sequence[keyfile.SaSpec]) -> list[str]:
    """What the counts of a decap run suggest the user check: each hint names what was seen
    and what to do; none when the run went as expected."""
    hints = []
    # Only a tunnel SA can give PROTOCOL; the hint goes once the key file says transport.
    protocol = [s.suite_info for k, s in enumerate(specs) if stats.counts[k, Status.PROTOCOL] and s.mode == "tunnel"]
    if protocol:
        # A wrong encryption key gets that far only under a separate, right integrity key: an
        # AEAD's tag fails first (AUTH_FAILED), as natt explain says (step 11).
        wrong_key = any(su.mac is not Mac.NONE and su.cipher is not Cipher.NULL for su in protocol)
        hints.append("PROTOCOL means a tunnel-mode SA decrypted something that is not an IP packet: "
                     f"a transport-mode SA ({_TRANSPORT_HOW})"
                     + (", or a wrong encryption key under a right integrity key" if wrong_key else ""))
    # And a transport SA's output is a whole IP packet behind the outer header when the ESP
    # carried tunnel traffic (next header 4 or 41): legal, but most likely the wrong mode.
    carried = sum(int(stats.carried_ip[k]) for k, s in enumerate(specs) if s.mode == "transport")
    if carried:
        hints.append(f"{carried} packets decrypted under transport-mode SAs carry a whole IP packet (next "
                     "header 4 or 41), written behind the outer header: tunnel traffic? A tunnel-mode SA "
                     "writes the inner packet alone (--mode tunnel, or \"mode\": \"tunnel\" in a JSON key file)")
    # An SA that decrypted nothing and found its packets malformed passed their ICVs and then
    # failed the padding (decap's steps 9, 10): the silent failure of a wrong encryption key, such
    # as an esp_sa key written without 0x, whose text is twice as long and may fit another AES.
    garbled = [s.label() for k, s in enumerate(specs)
               if stats.counts[k, Status.MALFORMED] and not stats.counts[k, Status.OK]]
    if garbled:
        hints.append(f"{_listed(garbled)} decrypted no packet and found them malformed: when the ICV verifies, "
                     "that is a wrong encryption key under a right integrity key (natt explain shows the "
                     "steps for one packet); in an esp_sa table a key without 0x is text, one octet per "
                     "character (docs/keys.md)")
    hints += snap_hints(stats)
    hints += link_hints(stats)
    if stats.spi_elsewhere and stats.spi_example is not None:
        spi, dst, port = stats.spi_example
        same = [s for s in specs if s.spi == spi]
        if any(s.dst in (None, dst) for s in same):
            # The destination fits: the SA sits on another parser entry (docs/semantics.md §1 step 6).
            ports = ", ".join(str(p) for p in sorted({s.port for s in same if s.dst in (None, dst)}))
            hints.append(f"{stats.spi_elsewhere} packets without an SA carry the SPI of an SA in the key file, "
                         f"but to another UDP port (e.g. SPI 0x{spi:08x} to {dst} port {port}; the key file "
                         f"says port {ports}): an inbound SA is looked up among the SAs of the port the "
                         f"packet arrived on, so give the SA \"port\": {port} in a JSON key file (an esp_sa table "
                         "converts with keys.save('keys.json', keys.load('esp_sa')); docs/keys.md)")
        else:
            wanted = sorted({s.dst or "*" for s in same})
            hints.append(f"{stats.spi_elsewhere} packets without an SA carry the SPI of an SA in the key file, "
                         f"but not to its destination (e.g. SPI 0x{spi:08x} to {dst}; the key file says "
                         f"{', '.join(wanted)}): an inbound SA is found by SPI and destination, so behind a NAT "
                         "give it the destination the capture shows (docs/walkthrough.md)")
    return hints


def snap_hints(stats: CaptureStats) -> list[str]:
    """The hint for frames the capture's snapshot length cut short, if there were any."""
    if not stats.cut_short:
        return []
    return [f"{stats.cut_short} frames were captured shorter than they were sent (the capture's snapshot "
            "length) and count as malformed: capture whole packets (tcpdump -s 0)"]


def link_hints(stats: CaptureStats) -> list[str]:
    """A hint per link type the run passed through without looking inside."""
    hints = []
    for lt, n in sorted(stats.other_links.items()):
        name = f" ({_LINK_NAMES[lt]})" if lt in _LINK_NAMES else ""
        hints.append(f"{n} frames of link type {lt}{name} were written unchanged: natt finds IPv4 in "
                     "Ethernet, Linux cooked (SLL, SLL2), BSD loopback and raw IP captures only")
    return hints


def clear_hints(stats: CaptureStats) -> list[str]:
    """``natt encap``: a hint when frames of a link natt reads held no IPv4 packet (IPv6, ARP,
    runts). They are written as read, in the clear: a tunnel SA that selects every packet still
    does not carry them, which the summary's frame counts alone leave to be worked out."""
    n = stats.frames - stats.ipv4 - sum(stats.other_links.values())
    if n <= 0:
        return []
    return [f"{n} frames held no IPv4 packet (IPv6, ARP, a runt) and were written unchanged, in the clear: "
            "natt encap seals IPv4 packets only"]


# How to say an SA is transport mode: an esp_sa table does not record it, a JSON SA may (and
# --mode does not override it where it does).
_TRANSPORT_HOW = '--mode transport, or "mode": "transport" in the SA of a JSON key file'


# ----------------------------------------------------------------------------------------------
# encap


def _outbound(specs: list[keyfile.SaSpec]) -> list[keyfile.SaSpec]:
    return [s for s in specs if s.direction in ("out", None)]


def choose_sa(specs: Sequence[keyfile.SaSpec], src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Index into ``specs`` of the SA that carries each inner packet (-1: none). The rule:

    * a transport SA carries packets from its ``src`` to its ``dst`` (an unset address matches
      any); a tunnel SA carries packets whose addresses lie in its ``inner_src``/``inner_dst``
      networks (unset = any);
    * among the SAs that match, the most specific wins (transport: each set address counts 32
      bits; tunnel: the two prefix lengths), and on a tie the one earlier in the key file.
    """
    best = np.full(src.size, -1, np.int64)
    best_score = np.full(src.size, -1, np.int64)
    for k, s in enumerate(specs):
        m = np.ones(src.size, bool)
        score = 0
        for n, col in zip(_selects(s), (src, dst)):
            if n.prefixlen:
                m &= (col & int(n.netmask)) == int(n.network_address)
                score += n.prefixlen
        better = m & (score > best_score)
        best[better] = k
        best_score[better] = score
    return best


def _selects(s: keyfile.SaSpec) -> tuple[ipaddress.IPv4Network, ipaddress.IPv4Network]:
    """The (source, destination) networks of the inner packets outbound SA ``s`` may carry: a
    transport SA's ``src`` and ``dst`` as hosts (/32: 32 bits each), a tunnel SA's ``inner_src``
    and ``inner_dst``; unset = any (/0). The prefix lengths are :func:`choose_sa`'s score."""
    ends = (s.src, s.dst) if s.mode == "transport" else (s.inner_src, s.inner_dst)
    return ipaddress.IPv4Network(ends[0] or "0.0.0.0/0"), ipaddress.IPv4Network(ends[1] or "0.0.0.0/0")


def _listed(labels: Sequence[str]) -> str:
    """SA labels for a hint: the first three, then how many more."""
    more = len(labels) - 3
    return ", ".join(labels[:3]) + (f" and {more} more SA{'s' if more > 1 else ''}" if more > 0 else "")


def shadow_hints(specs: Sequence[keyfile.SaSpec]) -> list[str]:
    """A hint for each outbound SA that :func:`choose_sa` can never pick: one earlier in the key
    file selects exactly the same packets (the tie goes to it). An ``esp_sa`` table names no
    inner networks, so all its tunnel SAs select every packet and the first carries them all."""
    first: dict[tuple[ipaddress.IPv4Network, ipaddress.IPv4Network], int] = {}
    shadowed: dict[int, list[int]] = {}
    for k, s in enumerate(specs):
        j = first.setdefault(_selects(s), k)
        if j != k:
            shadowed.setdefault(j, []).append(k)

    return [f"{_listed([specs[k].label() for k in ks])} {'carries' if len(ks) == 1 else 'carry'} no packet: {specs[j].label()} selects the "
            "same packets and comes first in the key file; give each SA its own inner_src / inner_dst "
            "(tunnel) or src / dst (transport) in a JSON key file"
            for j, ks in shadowed.items()]


def _ip_addresses(batch: PacketBatch, ipv4: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(usable, src, dst, length) per segment: usable = IPv4 frame of at least 20 octets,
    version 4; length = the datagram's own (its total length field) where that fits in the
    segment, whose octets after it are link-layer padding or trailer, else the segment's."""
    d = batch.data
    usable = ipv4 & (batch.lengths >= 20)
    o = np.where(usable, batch.offsets, 0)
    if d.size < 20:
        z = np.zeros(batch.offsets.size, np.int64)
        return np.zeros_like(usable), z, z, batch.lengths
    o = np.minimum(o, d.size - 20)
    usable &= (d[o] >> 4) == 4
    # Only the fields used, not all 20 octets of every header widened to int64 (that gather
    # was 60-86 ns a packet, about half of sealing a 64-octet one; now 28).
    addresses = pcap._gather_words(d, o + 12, 2, True)
    src, dst = addresses[:, 0], addresses[:, 1]
    total = d[o + 2].astype(np.int64) << 8 | d[o + 3]
    length = np.where(usable & (total >= 20) & (total <= batch.lengths), total, batch.lengths)
    return usable, src, dst, length


# What encap can report for a packet an SA was chosen for, besides OK (docs/semantics.md §2).
ENCAP_FAILURES = (Status.MALFORMED, Status.SEQ_OVERFLOW, Status.ERROR)


@dataclasses.dataclass
class EncapStats(CaptureStats):
    """Per-SA counts of one ``natt encap`` run.

    ``octets`` counts the inner packets taken in, as ``Offload.sa_stats()['bytes']`` does
    (docs/semantics.md §2); ``octets_out`` the UDP-encapsulated ESP packets written in their
    place. IPv4 packets no SA was chosen for count as ``Status.NO_SA`` in the "(no SA)" row of
    ``counts``; they are written unchanged. Packets their SA could not seal are left out.
    """

    octets_out: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.octets_out = np.zeros(len(self.labels) + 1, np.int64)

    def add_encap(self, sa_index: np.ndarray, status: np.ndarray, in_lengths: np.ndarray,
                  out_lengths: np.ndarray) -> None:
        """Count one chunk: ``sa_index`` is the key-file index of each packet's SA (-1 = none)."""
        self.add(sa_index, status, in_lengths)
        row = np.where(sa_index < 0, len(self.labels), sa_index)
        ok = status == Status.OK
        self.octets_out += np.bincount(row[ok], weights=out_lengths[ok],
                                       minlength=self.octets_out.size).astype(np.int64)

    def unmatched(self) -> int:
        """IPv4 packets no SA was chosen for."""
        return int(self.counts[len(self.labels), Status.NO_SA])

    def unsealed(self) -> int:
        """Packets an SA was chosen for but could not seal: left out of the output."""
        return int(self.counts[:len(self.labels), list(ENCAP_FAILURES)].sum())

    def as_dict(self) -> dict[str, Any]:
        rows = [{"sa": label, "packets": int(self.counts[k, Status.OK]), "bytes": int(self.octets[k]),
                 "bytes_out": int(self.octets_out[k]),
                 **{s.name.lower(): int(self.counts[k, s]) for s in ENCAP_FAILURES}}
                for k, label in enumerate(self.labels)]
        statuses = {k: v for k, v in self.totals().items() if k != Status.NO_SA.name}
        return {"frames": self.frames, "ipv4_frames": self.ipv4, "frames_written": self.written,
                "statuses": statuses, "no_sa_chosen": self.unmatched(), "not_sealed_left_out": self.unsealed(),
                "sas": rows,
                "elapsed_seconds": round(self.elapsed, 6), "data_path_seconds": round(self.crypto_seconds, 6),
                **({"truncated": self.truncated} if self.truncated else {})}

    def table(self) -> str:
        """The per-SA summary table printed at the end of ``natt encap``."""
        cols = ["packets", "bytes", "bytes_out"] + [s.name.lower() for s in ENCAP_FAILURES]
        return sa_table(self.as_dict()["sas"], cols, [
            f"{self.frames} frames ({self.ipv4} IPv4), {self.written} written; {self.unmatched()} IPv4 "
            f"packets with no SA chosen, written unchanged"
            + (f"; {self.unsealed()} that their SA could not seal (malformed, seq_overflow, error), "
               "left out" if self.unsealed() else ""),
            "bytes: inner packets taken in (what Offload.sa_stats() counts); "
            "bytes_out: the ESP-in-UDP packets written for them"])


def encap_capture(nic: Offload, handles: list[int], specs: Sequence[keyfile.SaSpec], reader: pcap.PcapReader,
                  writer: pcap.PcapWriter, *, threads: Optional[int] = None, bar: Any = None) -> EncapStats:
    """Encap every IPv4 frame of ``reader`` that an SA is chosen for (:func:`choose_sa`)."""
    stats = EncapStats([s.label() for s in specs])
    t0 = time.perf_counter()
    for chunk in _chunks(reader, bar, stats):
        n = len(chunk)
        b = chunk.batch
        # An Ethernet frame pads a short datagram to 60 octets and may carry a trailer: neither is
        # the inner packet's (encap itself seals total-length octets, docs/semantics.md §2).
        usable, src, dst, length = _ip_addresses(b, chunk.ipv4)
        which = np.where(usable, choose_sa(specs, src, dst), -1)
        status = np.full(n, Status.NO_SA, np.uint8)
        out_off = np.zeros(n, np.int64)
        out_len = np.zeros(n, np.int64)
        parts = []
        base = 0
        t1 = time.perf_counter()
        for k in np.unique(which[which >= 0]).tolist():
            idx = np.nonzero(which == k)[0]
            sub = PacketBatch(b.data, np.ascontiguousarray(b.offsets[idx]), np.ascontiguousarray(length[idx]))
            res = nic.encap(sub, handles[k], threads=threads)
            status[idx] = res.status
            out_off[idx] = res.offsets + base
            out_len[idx] = res.lengths
            parts.append(res.data)      # a new result each call: its buffer is this chunk's own
            base += res.data.size
        stats.crypto_seconds += time.perf_counter() - t1
        # One SA's output is used as it is: a copy of it cost about as much as the one removed above.
        data = (parts[0] if len(parts) == 1 else np.concatenate(parts)) if parts else np.zeros(0, np.uint8)
        replace = (status == Status.OK) & (which >= 0)
        out = PacketBatch(data, np.where(replace, out_off, 0), np.where(replace, out_len, 0))
        # A packet its SA could not seal is left out: written as read, it would leave in the
        # clear a packet policy sends through the SA (RFC 4301 §5.1: PROTECT, never BYPASS), and
        # SEQ_OVERFLOW means the SA must send nothing more (RFC 4303 §3.3.3).
        with _record_refused():
            stats.written += writer.write_chunk(chunk, out, replace=replace, keep=(which < 0) | replace)
        stats.frames += n
        # IPv4 by content, not just by link type (an Ethertype 0x0800 frame holding IPv6 or 11
        # octets is written as read and is no "IPv4 packet with no SA chosen").
        stats.ipv4 += int(usable.sum())
        stats.add_encap(which[usable], status[usable], length[usable], out_len[usable])
        stats.cut_short += int(np.count_nonzero((which >= 0) & (status == Status.MALFORMED)
                                                & (chunk.caplen < chunk.origlen)))
        stats.count_links(chunk)
    stats.elapsed = time.perf_counter() - t0
    return stats


def _cmd_encap(args: argparse.Namespace) -> int:
    _stdin_input(args)
    _check_report(args)
    _check_output(args)
    specs = _outbound(_load_keys(args.keys, args.mode))
    if not specs:
        raise CliError(f"key file {args.keys} has no outbound SA (direction \"out\")")
    to_stdout = _is_stdout(args.output)
    stats = _run_capture(args, specs, "out", to_stdout, lambda nic, handles, reader, writer, bar: encap_capture(
        nic, handles, specs, reader, writer, threads=args.threads, bar=bar))
    _finish(args, stats, _summary_stream(args),
            snap_hints(stats) + link_hints(stats) + clear_hints(stats) + shadow_hints(specs))
    return 0


# ----------------------------------------------------------------------------------------------
# demo

DEMO_MAX_PACKETS = 1_000_000

# Suites Wireshark 4.0 can decrypt too, so demo.pcap opens decrypted with demo.esp_sa.
DEMO_SUITES = ("aes128gcm16", "aes256gcm16", "aes128-sha1", "aes256-sha256", "3des-sha1")
DEMO_TUNNEL = ("198.51.100.2", "203.0.113.5")     # RFC 5737 documentation addresses


def _demo_specs(seed: int) -> list[keyfile.SaSpec]:
    import random
    from ._suites import parse_suite
    rng = random.Random(seed)
    specs = []
    for i, name in enumerate(DEMO_SUITES):
        n = parse_suite(name)[0].key_len
        specs.append(keyfile.SaSpec(spi=0xC0DE0000 + i + 1, suite=name, key=rng.randbytes(n), direction="out",
                                    mode="tunnel", src=DEMO_TUNNEL[0], dst=DEMO_TUNNEL[1],
                                    inner_src=f"10.1.{i}.0/24", name=f"demo-{name}"))
    return specs


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import traffic
    if args.out_dir == "-":
        raise UsageError("--out-dir -: the demo writes four files, not standard output; name a directory")
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise CliError(f"--out-dir {args.out_dir}: is a file, not a directory")
    try:
        os.makedirs(args.out_dir, exist_ok=True)
    except OSError as e:
        raise CliError(f"--out-dir {args.out_dir}: cannot make the directory: {e.strerror or e}") from None
    # Before any is written: they are replaced as a set, which a directory in place of one of
    # them broke halfway (demo-keys.json new, demo.esp_sa not), naming a temporary file.
    for name in ("demo.pcap", "demo.esp_sa", "demo-keys.json", "demo-decap.pcap"):
        why = destination_problem(os.path.join(args.out_dir, name))
        if why:
            raise CliError(f"cannot write {os.path.join(args.out_dir, name)}: {why}")
    specs = _demo_specs(args.seed)
    tx = _offload(args, len(specs))
    handles = _install(tx, specs, "out")
    # Inner traffic per SA: ICMP echo, UDP and TCP between documentation-style private hosts.
    per_sa: list[list[bytes]] = []
    t_enc = 0.0
    # Exactly --packets: when it is not a multiple of the suites, the first suites make one more.
    counts = [args.packets // len(specs) + (i < args.packets % len(specs)) for i in range(len(specs))]
    pcap_path = os.path.join(args.out_dir, "demo.pcap")
    # Making the inner packets in Python takes most of the demo's time (tens of microseconds a
    # packet), so the bar counts them as they are made; it stays up while demo.pcap is written.
    with _progress(args, args.packets, "demo traffic", unit="pkt") as bar:
        for i, (s, h, n) in enumerate(zip(specs, handles, counts)):
            inner = []
            # One seed per (seed, suite): seed + i would give seed 2's first suite seed 1's second's packets.
            for p in traffic.iter_inner_traffic(args.seed * len(DEMO_SUITES) + i, n, src=f"10.1.{i}.2",
                                                dst="10.2.0.7"):
                inner.append(p)
                bar.update()
            t = time.perf_counter()
            res = tx.encap(inner, h)
            t_enc += time.perf_counter() - t
            if res.counts().get(Status.OK, 0) != len(inner):
                raise CliError(f"demo: encap with {s.suite} failed: {res.counts()}")
            per_sa.append(list(res))
        # Interleave the SAs' packets as a real capture would, with 10 µs between frames.
        frames = [f for round_ in itertools.zip_longest(*per_sa) for f in round_ if f is not None]
        ts = [1_700_000_000_000_000_000 + 10_000 * j for j in range(len(frames))]
        bar.set_description("demo write", refresh=False)
        esp_sa = os.path.join(args.out_dir, "demo.esp_sa")
        json_path = os.path.join(args.out_dir, "demo-keys.json")
        out_path = os.path.join(args.out_dir, "demo-decap.pcap")
        # The files of an earlier run in --out-dir are replaced as a set: the capture and its keys
        # are renamed into place together, with Ctrl-C held off (and keys.save's mode 0600), and
        # the earlier decap output is gone by then, so an interrupted run never leaves a capture
        # beside another run's keys or decap.
        with _held_signals() as hold, _output_file(pcap_path, False) as f, \
                Replacement(esp_sa) as esp_sa_f, Replacement(json_path) as json_f:
            pcap.write_datagrams(f, frames, ts_ns=ts)
            esp_sa_f.write(keyfile.dumps(specs, "esp_sa").encode())
            json_f.write(keyfile.dumps(specs, "json").encode())
            hold()
            with contextlib.suppress(FileNotFoundError):
                os.remove(out_path)
    # Decap the capture back through the same path as `natt decap`.
    rx = _offload(args, len(specs))
    rx_handles = _install(rx, specs, "in")
    with pcap.PcapReader(pcap_path) as reader, _output_file(out_path, False) as f, \
            pcap.PcapWriter.like(reader, f) as writer, \
            _progress(args, os.path.getsize(pcap_path), "demo decap") as bar:
        stats = decap_capture(rx, rx_handles, [s.label() for s in specs], reader, writer, bar=bar)
    # In the order the demo ran: the table and its frame counts are the decap's, as natt decap
    # prints them, so they follow the encap line under a heading of their own.
    say(f"encap: {len(frames)} packets in {t_enc:.3f} s ({len(frames) / t_enc:,.0f} packets/s)"
        if t_enc > 0 else "encap: done",
        f"decap of {pcap_path}, as natt decap summarises it:", stats.table())
    n = stats.ipv4
    octets = int(stats.octets.sum())
    if stats.crypto_seconds > 0:
        say(f"decap: {n} packets in {stats.crypto_seconds:.3f} s ({n / stats.crypto_seconds:,.0f} packets/s, "
            f"{octets * 8 / stats.crypto_seconds / 1e6:,.1f} Mbit/s of inner packets; "
            f"backend {rx.backend})")
    say(f"wrote {pcap_path}, {out_path},\n      {esp_sa} "
        f"(Wireshark: copy to ~/.config/wireshark/esp_sa, or use the commands below),\n"
        f"      {os.path.join(args.out_dir, 'demo-keys.json')} (natt decap -k)")
    # Pasteable as printed: paths quoted for the shell; tshark reads every SA of the table from
    # a profile directory (one -o uat:esp_sa option holds one SA).
    q = shlex.quote
    profile = os.path.join(os.path.abspath(args.out_dir), "tshark")
    say(f"try:  mkdir -p {q(os.path.join(profile, 'wireshark'))} && "
        f"cp {q(esp_sa)} {q(os.path.join(profile, 'wireshark', 'esp_sa'))}",
        f"      XDG_CONFIG_HOME={q(profile)} tshark -o esp.enable_encryption_decode:TRUE "
        f"-o esp.enable_authentication_check:TRUE -r {q(pcap_path)}",
        f"      natt decap {q(pcap_path)} -k {q(esp_sa)} -o clear.pcap")
    ok = stats.counts[:, Status.OK].sum()
    if ok != len(frames):
        raise CliError(f"demo: only {ok} of {len(frames)} packets decapsulated: {stats.totals()}")
    return 0


# ----------------------------------------------------------------------------------------------
# explain


def explain_packet(nic: Offload, handles: list[int], specs: Sequence[keyfile.SaSpec], p: bytes) -> list[str]:
    """Lines walking docs/semantics.md §1 for packet ``p`` up to the step that decides it.

    The verdict (status, SA, sequence number, next header) is the data path's own: ``p`` is
    decapsulated once by ``nic``. The walk re-reads only header fields to say which step that
    verdict comes from and why; it never decides anything itself.
    """
    res = nic.decap([p])
    st, sa, seq, nh = Status(int(res.status[0])), int(res.sa[0]), int(res.seq[0]), int(res.next_header[0])
    out = [f"packet: {len(p)} octets"]

    def stop(step: int, why: str) -> list[str]:
        out.append(f"step {step}: {why}")
        out.append(f"=> {st.name} (step {step})")
        return out

    # 1-2: IPv4 header.
    if len(p) < 20 or p[0] >> 4 != 4:
        return stop(1, f"not IPv4 ({'shorter than 20 octets' if len(p) < 20 else f'version {p[0] >> 4}'})")
    ihl, tl = (p[0] & 15) * 4, int.from_bytes(p[2:4], "big")
    out.append(f"step 1: IPv4, {ipaddress.IPv4Address(p[12:16])} -> {ipaddress.IPv4Address(p[16:20])}")
    if st is Status.MALFORMED and (ihl < 20 or tl < ihl or tl > len(p)):
        return stop(2, f"IPv4 header inconsistent: IHL {ihl} octets, total length {tl}, {len(p)} octets present")
    out.append(f"step 2: header length {ihl}, total length {tl}"
               + (f" ({len(p) - tl} octets of link padding ignored)" if len(p) > tl else ""))
    ip = p[:tl]
    if ip[9] != 17:
        return stop(3, f"protocol {ip[9]}, not UDP (17)")
    ff = int.from_bytes(ip[6:8], "big")
    if st is Status.FRAGMENT:
        return stop(3, f"IPv4 fragment (MF {(ff >> 13) & 1}, offset {(ff & 0x1FFF) * 8}): a NIC does not reassemble")
    out.append("step 3: UDP, not a fragment")
    udp = ip[ihl:]
    if st is Status.MALFORMED and (tl - ihl < 8 or int.from_bytes(udp[4:6], "big") != tl - ihl):
        return stop(4, "UDP header incomplete" if tl - ihl < 8 else
                    f"UDP length {int.from_bytes(udp[4:6], 'big')} != IP payload length {tl - ihl}")
    sport, dport = int.from_bytes(udp[0:2], "big"), int.from_bytes(udp[2:4], "big")
    if st is Status.NOT_ESP:
        return stop(4, f"UDP {sport} -> {dport}: port {dport} is no parser entry's "
                       f"(the SAs of the key file listen on {sorted({s.port for s in specs})})")
    out.append(f"step 4: UDP {sport} -> {dport}, a parser entry's port")
    u = udp[8:]
    if st is Status.KEEPALIVE:
        return stop(5, "a single 0xFF octet: NAT-keepalive (RFC 3948 §2.3)")
    if st is Status.IKE:
        # The port's framing decides what reads as IKE (docs/semantics.md §1 step 5): name that
        # one's rule, not both (a legacy packet with its marker but too short is IKE too).
        if any(s.port == dport and s.encap is UdpEncapType.IKE for s in specs):
            return stop(5, f"port {dport} has the legacy framing (\"encap\": \"IKE\"), and this is not the "
                           f"8-octet zero non-IKE marker followed by more than 8 octets of ESP: IKE")
        return stop(5, "non-ESP marker (four zero octets, RFC 3948 §2.2): IKE")
    marker = 8 if len(u) > 16 and u[:8] == bytes(8) else 0
    esp = u[marker:]
    if st is Status.MALFORMED and sa == 0:
        return stop(5, f"ESP payload of {len(esp)} octets: not even SPI and sequence number (8 octets)")
    spi = int.from_bytes(esp[0:4], "big")
    out.append(f"step 5: ESP, SPI 0x{spi:08x}, sequence number {int.from_bytes(esp[4:8], 'big')}")
    if st is Status.NO_SA:
        same = [s for s in specs if s.spi == spi]
        dst = str(ipaddress.IPv4Address(ip[16:20]))
        if not same:
            why = f"no inbound SA with SPI 0x{spi:08x} on port {dport}"
        elif any(s.dst in (None, dst) for s in same):
            # The destination fits (an SA without one takes any): the port is what differs.
            why = (f"SPI 0x{spi:08x} is in the key file, but for port "
                   f"{', '.join(sorted({str(s.port) for s in same}))}, and this packet came to port {dport}: "
                   f"an SA is looked up among those of the packet's port (\"port\" in a JSON key file)")
        else:
            why = (f"SPI 0x{spi:08x} is in the key file, but not for destination {dst} "
                   f"(key file: {', '.join(sorted({s.dst or '*' for s in same}))}): behind a NAT, give the SA "
                   f"the destination the packet shows (docs/walkthrough.md)")
        return stop(6, why)
    k = handles.index(sa) if sa in handles else -1
    spec = specs[k] if k >= 0 else None
    su = spec.suite_info if spec else None
    out.append(f"step 6: SA {spec.label() if spec else sa} ({spec.mode if spec else '?'} mode)")
    if st is Status.MALFORMED and su is not None and nh == 0:
        need = 8 + su.iv_len + su.icv_len + 2
        if len(esp) < need:
            return stop(7, f"ESP is {len(esp)} octets; {su.name} needs at least {need} "
                           f"(header 8 + IV {su.iv_len} + trailer 2 + ICV {su.icv_len})")
        ct = len(esp) - 8 - su.iv_len - su.icv_len
        if su.block_size > 1 and ct % su.block_size:
            return stop(7, f"ciphertext of {ct} octets is not a whole number of {su.block_size}-octet blocks")
    out.append("step 7: lengths fit the suite")
    esn = spec is not None and spec.uses_esn
    # With ESN the number checked is the 64-bit one the SA inferred (RFC 4303 Appendix A): say
    # which high bits it took, or a wrong epoch reads as a wrong key.
    number = f"{seq} (ESN: high bits {seq >> 32} inferred, low {seq & 0xFFFFFFFF})" if esn else str(seq)
    window = spec.replay_window if spec else None
    if st is Status.REPLAY and seq == 0:
        # Its own rule (docs/semantics.md §3), whatever the window holds: with a window top of 5,
        # 0 is neither seen nor left of the window.
        return stop(8, "sequence number 0 is never sent (RFC 4303 §3.3.3: the first packet is 1), so it counts "
                       "as a replay; the SA has not moved")
    if st is Status.REPLAY:
        return stop(8, f"sequence number {number} already seen or left of the replay window "
                       f"({window if window is not None else '?'} packets)"
                       + (", or its high bits would fall outside 0 .. 2**32-1" if esn else "")
                       + "; the SA has not moved")
    if window == 0:
        out.append(f"step 8: sequence number {number}; anti-replay is off (replay_window 0)")
    else:
        out.append(f"step 8: sequence number {number} passes the preliminary replay check")
    if st is Status.AUTH_FAILED:
        return stop(9, "ICV / AEAD tag does not verify: wrong key or suite, or the packet was altered"
                       + (", or the ESN high bits inferred are not the sender's" if esn else ""))
    out.append("step 9: ICV verified" + ("; the replay window moves" if window != 0 else ""))
    # A separate integrity key can be right while the encryption key is wrong: the garbage then
    # fails the trailer checks (an AEAD tag or NULL encryption cannot get this far that way).
    wrong_key_fits = su is not None and su.mac is not Mac.NONE and su.cipher is not Cipher.NULL
    if st is Status.MALFORMED:
        return stop(10, "decrypted trailer invalid: pad length beyond the payload, or padding not 1, 2, 3, ..."
                        + ("; the ICV verified, so most likely a wrong encryption key under a right "
                           "integrity key" if wrong_key_fits else ""))
    out.append(f"step 10: decrypted, padding valid, next header {nh}")
    if st is Status.DUMMY:
        return stop(11, "next header 59: a dummy packet (RFC 4303 §2.6), verified and discarded")
    if st is Status.PROTOCOL:
        return stop(11, f"next header {nh} in a tunnel-mode SA (4 or 41 expected): a transport-mode SA "
                        f"({_TRANSPORT_HOW})"
                        + (", or a wrong encryption key under a right integrity key" if wrong_key_fits else ""))
    if st is Status.OK:
        if spec is not None and spec.mode == "transport" and nh in (4, 41):
            return stop(12, f"decapsulated: {int(res.lengths[0])} octets out, a whole IP packet (next header "
                            f"{nh}) behind the outer header: tunnel traffic under a transport-mode SA? A "
                            f"tunnel-mode SA writes the inner packet alone (--mode tunnel)")
        return stop(12, f"decapsulated: {int(res.lengths[0])} octets out")
    out.append(f"=> {st.name}")
    return out


# More than the hex of the largest IPv4 packet with a separator after every octet, with room to
# spare: what is longer (a capture piped in by mistake) is not read to its end.
_EXPLAIN_STDIN_LIMIT = 1 << 20


def _explain_hex(args: argparse.Namespace) -> str:
    """The HEX argument, or with ``-`` what standard input holds."""
    if args.hex != "-":
        return str(args.hex)
    if args.keys == "-":
        raise UsageError("-k -: standard input carries the packet (HEX is -); name a key file")
    if sys.stdin.isatty():
        _reading_from_terminal("the packet's hex")
    data = sys.stdin.buffer.read(_EXPLAIN_STDIN_LIMIT + 1)
    if len(data) > _EXPLAIN_STDIN_LIMIT:
        raise CliError(f"HEX: standard input holds more than {_EXPLAIN_STDIN_LIMIT >> 20} MiB; give one packet "
                       "in hex, starting at the IP header")
    # Not ASCII is not hex either: the digit check below names the first such character.
    return data.decode("ascii", errors="replace")


# A line of a hex dump: tshark -x ("0010  04 44 00 01 ...   .D...."), tcpdump -x, -xx, -X
# ("\t0x0010:  0444 0001 ...  .D..") or xxd ("00000010: 0444 0001 ...  .D.."): an offset (hex),
# the octets (pairs or groups of hex digits, single spaces between), and perhaps their text after
# two spaces or more. An offset without a colon takes two spaces after it, so that plain hex in
# groups ("0000 0c07 ac01 ...", a frame to a Cisco MAC) is not one.
_DUMP_LINE = re.compile(r"\s*(?:0x([0-9a-fA-F]{4,8}):  +|([0-9a-fA-F]{4,8})  +|([0-9a-fA-F]{8}): +)"
                        r"([0-9a-fA-F]{2}(?: ?[0-9a-fA-F]{2})*)(?:  .*)?")
# hexdump -C ("00000010  04 44 ... 00 01  02 03 ...  |.D..|"): two spaces in the middle of the
# octets, told from those before the text by the text's bars.
_HEXDUMP_C_LINE = re.compile(r"([0-9a-fA-F]{8})  ((?:[0-9a-fA-F]{2} ){0,7}[0-9a-fA-F]{2})"
                             r"(?:  ((?:[0-9a-fA-F]{2} ){0,7}[0-9a-fA-F]{2}))? +\|.*\|")


# od -tx1 (coreutils): an offset of 6 digits (hex, -Ax) or 7 (octal, od's default, or decimal,
# -Ad), each octet after one space, perhaps their text in >...< (-tx1z). A line "*" stands for
# lines the same as the one before, up to the next offset (unless -v), and the last line is the
# length alone. Only one space after the offset: no other dump's line is one.
_OD_LINE = re.compile(r"([0-9a-fA-F]{6,7})((?: [0-9a-fA-F]{2})*)(?:  +>.*<)?")
# od -An -tx1: the same without offsets.
_OD_AN_LINE = re.compile(r"((?: [0-9a-fA-F]{2})+)(?:  +>.*<)?")
# The first line of od -x (-tx2) and of hexdump with no options or -x: 2-octet words, in the
# host's byte order.
_OD_WORDS_LINE = re.compile(r"0{6,7}(?: +[0-9a-fA-F]{4})+(?:  +>.*<)?")
# Octets a '*' may stand for: no frame is longer than tcpdump's and tshark's largest snap
# length. Taken at its word, "*" then an offset of ffffff0 made a 4-line HEX 256 MiB of octets
# (and 550 MB of peak memory).
_OD_MOST = 262144


def hex_dump(text: str) -> Optional[tuple[bytes, bool]]:
    """The octets of the first hex dump in ``text`` (tshark -x, tcpdump -x/-xx/-X, xxd,
    hexdump -C, od -tx1, as piped or pasted; lines before it, such as tcpdump's summary line, are
    skipped), and whether another dump follows it (another frame, or tshark's decrypted data);
    None if ``text`` holds none. A dump is a run of lines of :data:`_HEXDUMP_C_LINE` or
    :data:`_DUMP_LINE` (or :data:`_OD_LINE`) whose offsets are 0 and then the octets so far: a
    packet pasted as plain hex, whatever its spacing, starts with no such line. od -An's dump
    (:data:`_OD_AN_LINE`), which has no offsets, must be all of ``text``."""
    found = _offset_dump(text)
    if found is None:
        found = _od_dump(text)
    if found is None:
        found = _od_dump_without_offsets(text)
    if found is None and any(_OD_WORDS_LINE.fullmatch(line.rstrip()) for line in text.splitlines()):
        # As plain hex, each pair of octets would be read the wrong way round on a little-endian host.
        raise CliError("HEX: a dump in 2-octet words (od -x, hexdump), their octets in the host's byte order: "
                       "give od -tx1 or hexdump -C")
    return found


def _offset_dump(text: str) -> Optional[tuple[bytes, bool]]:
    """:func:`hex_dump` of tshark -x, tcpdump, xxd and hexdump -C dumps."""
    def offset(line: str) -> tuple[int, str]:
        # hexdump -C's first: _DUMP_LINE would take its first eight octets and the rest as text.
        m = _HEXDUMP_C_LINE.fullmatch(line.rstrip())
        if m:
            return int(m.group(1), 16), m.group(2) + (m.group(3) or "")
        m = _DUMP_LINE.fullmatch(line.rstrip())
        return (int(m.group(1) or m.group(2) or m.group(3), 16), m.group(4)) if m else (-1, "")

    lines = [offset(line) for line in text.splitlines()]
    first = next((i for i, (o, _) in enumerate(lines) if o == 0), None)
    if first is None:
        return None
    octets = bytearray()
    for i in range(first, len(lines)):
        o, digits = lines[i]
        if o > 0 and o != len(octets):
            # Not the end of the dump: a line of it lost or repeated in the copy, which would
            # have the walk read the octets before it, or the wrong ones, as the packet.
            raise CliError(f"HEX: line {i + 1} of the hex dump is at offset 0x{o:04x}, not 0x{len(octets):04x}: "
                           "a line is missing or repeated")
        if o != len(octets):
            # The dump ends at a line of another (its offset 0 again) or of no dump.
            return bytes(octets), any(o == 0 for o, _ in lines[i:])
        octets += bytes.fromhex(digits.replace(" ", ""))
    return bytes(octets), False


def _od_dump(text: str) -> Optional[tuple[bytes, bool]]:
    """:func:`hex_dump` of od -tx1 with offsets (:data:`_OD_LINE`)."""
    lines = [line.rstrip() for line in text.splitlines()]
    first = next((i for i, line in enumerate(lines)
                  if (m := _OD_LINE.fullmatch(line)) and m.group(2) and int(m.group(1), 16) == 0), None)
    if first is None:
        return None
    # Seven digits are octal (od's default) or decimal (-Ad): the radix in which the offsets
    # count the octets.
    radixes = (16,) if len(lines[first]) > 6 and lines[first][6] == " " else (8, 10)
    for radix in radixes:
        found = _od_octets(lines, first, radix, strict=False)
        if found is not None:
            return found
    return _od_octets(lines, first, radixes[0], strict=True)


def _od_octets(lines: list[str], first: int, radix: int, strict: bool) -> Optional[tuple[bytes, bool]]:
    """The octets of the od dump at ``lines[first]``, its offsets in ``radix``, and whether
    another follows it; None (or, ``strict``, a CliError) if its offsets do not count them."""
    def offset(line: str) -> tuple[int, str]:
        m = _OD_LINE.fullmatch(line)
        try:
            return (int(m.group(1), radix), m.group(2)) if m else (-1, "")
        except ValueError:      # 8 or 9 in an octal offset
            return -1, ""

    def wrong(i: int) -> None:
        if strict:
            raise CliError(f"HEX: line {i + 1} of the od dump is at offset {lines[i].split()[0]}, but "
                           f"{len(octets)} octets come before it: a line is missing or repeated")

    octets = bytearray()
    previous = b""
    repeated = False
    for i in range(first, len(lines) + 1):      # and past the end: a dump may end at its "*"
        line = lines[i] if i < len(lines) else ""
        if line == "*" and previous:
            repeated = True
            continue
        o, digits = offset(line)
        if repeated:
            # The lines "*" left out: as many as the next offset says.
            gap = o - len(octets)
            if o < 0 or gap <= 0 or gap % len(previous):
                if strict and o < 0:
                    raise CliError(f"HEX: the od dump ends at its line {i} ('*', lines the same as the one before) "
                                   "with no offset after it to say how many")
                wrong(i)
                return None
            if len(octets) + gap > _OD_MOST:
                if strict:
                    raise CliError(f"HEX: the od dump's '*' at its line {i} stands for {gap} octets: more than a "
                                   f"frame holds ({_OD_MOST} at most)")
                return None
            octets += previous * (gap // len(previous))
            repeated = False
        if o > 0 and o != len(octets):
            wrong(i)
            return None
        if o != len(octets) or not digits:
            # The dump ends at its length, a line of another (its offset 0 again) or of no dump.
            rest = (offset(later) for later in lines[i + 1 if o == len(octets) else i:])
            return bytes(octets), any(p == 0 and d for p, d in rest)
        previous = bytes.fromhex(digits.replace(" ", ""))
        octets += previous
    return bytes(octets), False


def _od_dump_without_offsets(text: str) -> Optional[tuple[bytes, bool]]:
    """:func:`hex_dump` of od -An -tx1 (:data:`_OD_AN_LINE`); plain hex with a space before each
    octet reads the same."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    found = [_OD_AN_LINE.fullmatch(line) for line in lines]
    if not lines or not all(m or line == "*" for m, line in zip(found, lines)):
        return None
    if "*" in lines:
        raise CliError("HEX: od -An left out repeated lines ('*') and, with no offsets, how many: give od -v")
    return b"".join(bytes.fromhex(m.group(1).replace(" ", "")) for m in found if m), False


def _fits_ipv4(p: bytes) -> bool:
    """Whether ``p`` starts with an IPv4 header whose lengths fit it (steps 1-2 pass)."""
    ihl, tl = (p[0] & 15) * 4 if p else 0, int.from_bytes(p[2:4], "big")
    return len(p) >= 20 and p[0] >> 4 == 4 and 20 <= ihl <= tl <= len(p)


def _explained_octets(raw: str) -> tuple[bytes, list[str]]:
    """The octets HEX (``raw``) gives, and the lines to print before the walk: a hex dump
    (:func:`hex_dump`) of a whole frame is walked from its IPv4 header, its link header named,
    as tshark -x and tcpdump -xx print frames; plain hex is taken as it is (a hint follows the
    walk when it looks like a frame)."""
    dump = hex_dump(raw)
    if dump is not None:
        octets, more = dump
        if more:
            say(f"natt explain: note: HEX holds more than one hex dump; the first ({len(octets)} octets) is "
                "explained", file=sys.stderr)
        link = None if _fits_ipv4(octets) else pasted_link(octets)
        if link is None:
            return octets, []
        what, hl = link
        return octets[hl:], [f"frame: {what}; the walk starts at its IPv4 header, octet {hl + 1}"]
    text = "".join(raw.replace(":", " ").split())
    if text[:2].lower() == "0x":
        text = text[2:]
    if not text:
        # An empty command substitution ("$(...)" that found no frame) would otherwise be
        # explained as a packet of 0 octets, with exit status 0.
        raise CliError("HEX: empty; give the IPv4 packet in hex, starting at the IP header")
    bad = next((i for i, c in enumerate(text) if c not in string.hexdigits), None)
    if bad is not None:
        raise CliError(f"HEX: {text[bad]!r} at position {bad + 1} is not a hex digit (give the IPv4 packet "
                       "in hex, starting at the IP header)")
    if len(text) % 2:
        raise CliError(f"HEX: {len(text)} hex digits, an odd number: a digit is missing or one too many")
    return bytes.fromhex(text), []


def _cmd_explain(args: argparse.Namespace) -> int:
    packet, lead = _explained_octets(_explain_hex(args))
    specs = _load_keys(args.keys, args.mode)
    nic = Offload(backend="reference", max_sas=max(len(specs), 1))
    handles = _install(nic, specs, "in")
    say(*lead, *explain_packet(nic, handles, specs, packet))
    if not _fits_ipv4(packet):
        # A destination MAC address whose first octet is 0x40-0x4f (MikroTik's 4c:5e:0c, ...)
        # reads as version 4 with a header that does not fit (step 2): that case needs the hint too.
        link = pasted_link(packet)
        if link is not None:
            what, hl = link
            say(f"hint: this looks like {what} with IPv4 at octet {hl + 1}: leave out its first {hl} octets "
                f"({2 * hl} hex digits) to start at the IPv4 header")
    return 0


# The link headers a whole frame pasted in hex may start with (Wireshark's "Copy as Hex Stream",
# tshark -x, tcpdump -xx), in the order they are tried: those natt's capture reader reads IPv4
# from (pcap.IPV4_LINKTYPES) but raw IP, which needs no hint. LINKTYPE_NULL reads the address
# family in either byte order, so it stands for LINKTYPE_LOOP (OpenBSD) too.
_PASTED_LINKS = ((pcap.LINKTYPE_ETHERNET, "an Ethernet frame"),
                 (pcap.LINKTYPE_LINUX_SLL, "a Linux cooked frame (SLL, 16-octet header: tcpdump -i any)"),
                 (pcap.LINKTYPE_LINUX_SLL2, "a Linux cooked v2 frame (SLL2, 20-octet header: tcpdump -i any, "
                                            "libpcap 1.10 and later)"),
                 (pcap.LINKTYPE_NULL, "a BSD loopback frame (4-octet address family header, AF_INET in {order} "
                                      "byte order: {where})"))


def pasted_link(frame: bytes) -> Optional[tuple[str, int]]:
    """What link header ``frame`` starts with, if it reads as one of :data:`_PASTED_LINKS` as the
    capture reader reads it (pcap._link_layer: VLAN tags included) followed by an IPv4 header
    (version 4, a header length of 20 or more that fits, a total length no shorter): its
    description and length in octets; None if none does.

    The IPv4 header's check keeps, say, an Ethernet frame from reading as SLL because octets 14
    and 15 happen to be 08 00."""
    buf = np.frombuffer(frame, np.uint8)
    for linktype, what in _PASTED_LINKS:
        is4, hdr = pcap._link_layer(buf, np.array([linktype]), np.zeros(1, np.int64),
                                    np.array([len(frame)], np.int64))
        ip = frame[int(hdr[0]):]
        ihl = (ip[0] & 15) * 4 if ip else 0
        if not (is4[0] and len(ip) >= 20 and ip[0] >> 4 == 4 and 20 <= ihl <= len(ip)
                and int.from_bytes(ip[2:4], "big") >= ihl):
            continue
        if linktype == pcap.LINKTYPE_NULL:
            # AF_INET is 2 on every BSD and macOS; the capturing host's order (LINKTYPE_NULL) is
            # little-endian on macOS and x86 BSDs, OpenBSD's LINKTYPE_LOOP is network order.
            little = frame[0] == 2
            what = what.format(order="little-endian" if little else "big-endian",
                               where="macOS lo0 or utun, FreeBSD lo0" if little else
                               "OpenBSD lo0, or a big-endian host")
        return what, int(hdr[0])
    return None


# ----------------------------------------------------------------------------------------------
# bench


def _cmd_bench(args: argparse.Namespace) -> int:
    try:
        from . import _bench
    except ImportError as e:
        raise CliError(f"the benchmark module is not available: {e}") from None
    return int(_bench.main(args.bench_args, prog="natt bench"))


# ----------------------------------------------------------------------------------------------
# argument parsing


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def at_least(least: int, most: Optional[int] = None) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``least`` (and at most ``most``, if given;
    argparse's own message for a bad one would name the function, not what is expected). Also
    ``natt bench``'s."""
    def parse(text: str) -> int:
        v = _whole(text)
        if v < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {v}")
        if most is not None and v > most:
            raise argparse.ArgumentTypeError(f"must be at most {most:,}, got {v:,}")
        return v
    return parse


def _path(text: str) -> str:
    """An argparse type: a file name, not empty (open("") names no file, and "" is no directory)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty name; give a file (or - for standard output)")
    return text


def _accepted_by(check: Callable[[int], object], expected: Optional[str] = None) -> Callable[[str], int]:
    """An argparse type: a whole number that the library's own ``check`` accepts. The command line
    keeps no copy of the library's limits, so the two cannot drift apart. A refused number gets
    the library's message, or "expected ``expected``" where that speaks of Python values."""
    def parse(text: str) -> int:
        v = _whole(text)
        try:
            check(v)
        except ValueError as e:
            # The library names its parameter ("threads: ..."); argparse names the option.
            why = f"expected {expected}, got {v}" if expected else str(e).split(": ", 1)[-1]
            raise argparse.ArgumentTypeError(why) from None
        return v
    return parse


class _Once(argparse.Action):
    """An option that may be given once: a second ``-k`` or ``-o`` would silently replace the
    first (two key files are not merged)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        seen = namespace.__dict__.setdefault("_given_once", set())
        if self.dest in seen:
            parser.error(f"{'/'.join(self.option_strings)}: given twice; it takes one "
                         f"{self.metavar or self.dest.upper()}")
        seen.add(self.dest)
        setattr(namespace, self.dest, values)


def version_text() -> str:
    """What ``natt --version`` prints: natt's version, then each data path and what it runs on
    (for a bug report: the libcrypto the extension loaded, and whether natt's own AES-NI code
    runs AES-GCM on this CPU)."""
    from ._offload import _fast_unavailable

    why = _fast_unavailable()
    if why is None:
        from ._fastpath import _aesni, openssl_version
        aes = ("AES-GCM and AES-GMAC on natt's own AES-NI code" if _aesni()
               else "every cipher on libcrypto (this CPU lacks AES-NI or PCLMULQDQ)")
        fast = f" (the default): Cython on {openssl_version()}\n  {aes}"
    else:
        fast = f": unavailable, {why}"
    import cryptography
    return (f"natt {__version__}\nfast data path{fast}\n"
            f"reference data path: Python on cryptography {cryptography.__version__}")


class _Version(argparse.Action):
    """``--version``: :func:`version_text`, worked out only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        say(version_text())
        parser.exit()


def _common(p: argparse.ArgumentParser, *, files: bool = True) -> None:
    if files:
        p.add_argument("--threads", default=None, metavar="N",
                       type=_accepted_by(_check_threads, f"a whole number 1..{MAX_THREADS}"),
                       help=f"data-path threads per batch, 1..{MAX_THREADS} (default: none, the calling thread "
                            "does it all; results are identical whatever the number)")
        p.add_argument("--chunk-size", type=_accepted_by(pcap.check_chunk_size), default=pcap.DEFAULT_CHUNK_SIZE,
                       metavar="OCTETS",
                       help=f"octets of capture read per batch ({pcap.MIN_CHUNK_SIZE} .. {pcap.MAX_CHUNK_SIZE}, "
                            f"default {pcap.DEFAULT_CHUNK_SIZE})")
    p.add_argument("--backend", choices=("fast", "reference"), default=None,
                   help="data path: fast (Cython/OpenSSL, default when built) or reference (pure Python)")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="show the progress bar even when stderr is not a terminal (as on one, once the "
                           "work has taken a second)")
    prog.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")


_KEYS_HELP = ("SA file: natt JSON (docs/keys.md) or a Wireshark/strongSwan esp_sa table; '-' reads it "
              "from standard input")
_OUTPUT_HELP = ("it is written as a temporary file beside OUT and renamed over OUT only when the run "
                "succeeds (keeping OUT's mode and, where allowed, its owner; a new OUT is no more readable "
                "than IN), so a failed run leaves OUT "
                "as it was and OUT may be IN; a FIFO or a device "
                "is written as the run goes. '-' (or /dev/stdout) is standard output, a pipe or "
                "a file but not a terminal: the summary then goes to stderr")
_REPORT_HELP = ("also write the summary as JSON (written whole or not at all; '-' is standard output, "
                "the summary table then goes to stderr)")
_MODE_HELP = ("IPsec mode of SAs whose key file does not say: every SA of an esp_sa table, and "
              "JSON SAs without a \"mode\" field (default tunnel)")


def build_parser() -> argparse.ArgumentParser:
    """The ``natt`` argument parser (every subcommand has a description and examples)."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="natt", formatter_class=fmt,
        description="Software IPsec task offload for UDP-encapsulated ESP (NAT traversal, RFC 3948).\n"
                    "Decrypt NAT-T captures with keys from Wireshark or strongSwan, build NAT-T traffic,\n"
                    "and measure the data path.",
        epilog="examples:\n"
               "  natt demo --out-dir /tmp/natt-demo          # no input needed: make, decap, summarise\n"
               "  natt decap capture.pcap -k esp_sa -o clear.pcap\n"
               "  natt encap clear.pcap -k keys.json -o natt.pcap\n"
               "  natt explain 4500009c... -k keys.json       # why did this packet fail?\n"
               "  natt bench --quick\n"
               "run 'natt COMMAND --help' for each command's options.")
    p.add_argument("--version", action=_Version, help="show natt's version and what its data paths run on, and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    d = sub.add_parser(
        "decap", formatter_class=fmt, help="decrypt the NAT-T ESP packets of a capture",
        description="Read a pcap/pcapng capture, decapsulate every UDP-encapsulated ESP packet an SA of\n"
                    "KEYS decrypts, and write a capture of the same format in which those packets are\n"
                    "replaced by their inner packets (tunnel mode: the inner datagram; transport mode:\n"
                    "the outer header with the decrypted payload). Every other frame is written as read,\n"
                    "unless --drop-undecrypted. Every SA of KEYS is installed inbound, whichever way its\n"
                    "traffic went. A per-SA summary (packets, bytes, each failure kind) ends the run.",
        epilog="examples:\n"
               "  natt decap capture.pcapng -k ~/.config/wireshark/esp_sa -o clear.pcapng\n"
               "  natt decap l2tp.pcap -k esp_sa --mode transport -o clear.pcap\n"
               "  natt decap big.pcap -k keys.json -o clear.pcap --threads 2 --report report.json\n"
               "  natt decap capture.pcap -k keys.json -o only-decrypted.pcap --drop-undecrypted\n"
               "  natt decap day1.pcap day2.pcap -k keys.json -o clear/ --workers 2     # Dask\n"
               "exit status: 0 done (however many packets decrypted: the summary says), 1 unreadable\n"
               "capture or keys, or an output the file system will not take: a directory (with\n"
               "--dask/--workers, a file), a missing or read-only directory, a full disk (one line on\n"
               "stderr naming it; OUT and the report as they were), 2 bad usage, and outputs that clash\n"
               "with the other arguments whatever the files: --report naming IN, OUT or KEYS, OUT naming\n"
               "KEYS (OUT may be IN), - for both; 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP (the output as it\n"
               "was, no temporary file left), 141 the reader of OUT (- or a FIFO) left before its end\n"
               "(no message, no report). A reader of the summary or of --report - that stops early\n"
               "(| head -1) changes nothing.")
    d.add_argument("input", metavar="IN", nargs="+",
                   help="capture to read (pcap or pcapng; - reads standard input); several only with "
                        "--dask/--workers")
    d.add_argument("-k", "--keys", required=True, metavar="KEYS", action=_Once, help=_KEYS_HELP)
    d.add_argument("-o", "--output", required=True, metavar="OUT", type=_path, action=_Once,
                   help=f"capture to write (same format as IN); {_OUTPUT_HELP}. With --dask/--workers, "
                        "a directory")
    d.add_argument("--report", metavar="REPORT.json", type=_path, action=_Once, help=_REPORT_HELP)
    d.add_argument("--drop-undecrypted", action="store_true",
                   help="leave out ESP packets that could not be decrypted (no SA, ICV failure, replay, "
                        "malformed, ...); frames that are not ESP are still written (a frame too short or "
                        "damaged to parse counts as ESP only if it is UDP to an SA's port)")
    d.add_argument("--mode", choices=("tunnel", "transport"), default="tunnel", help=_MODE_HELP)
    _common(d)
    _dask_arguments(d)
    d.set_defaults(func=_cmd_decap, parser=d)

    e = sub.add_parser(
        "encap", formatter_class=fmt, help="turn the IPv4 packets of a capture into NAT-T traffic",
        description="Read a capture and encapsulate its IPv4 packets with the outbound SAs of KEYS\n"
                    "(SAs with direction \"out\", or every SA of an esp_sa table) into UDP-encapsulated\n"
                    "ESP (RFC 3948), writing a capture of the same format.\n\n"
                    "Which SA carries a packet: a transport SA carries packets from its src to its dst\n"
                    "(an unset address matches any); a tunnel SA carries packets whose source and\n"
                    "destination lie in its inner_src / inner_dst networks (unset = any). The most\n"
                    "specific match wins (each set transport address counts 32, a tunnel SA its two\n"
                    "prefix lengths); on a tie, the SA earlier in the file. Packets no SA matches, and\n"
                    "frames that are not IPv4, are written unchanged. A packet its SA cannot seal\n"
                    "(malformed, sequence numbers used up, an error) is left out, never written in the\n"
                    "clear. A per-SA summary ends the run: packets encapsulated, bytes (the inner\n"
                    "packets taken in, as Offload.sa_stats counts them), bytes_out (the ESP-in-UDP\n"
                    "packets written) and each failure kind.",
        epilog="examples:\n"
               "  natt encap clear.pcap -k keys.json -o natt.pcap\n"
               "  natt encap clear.pcapng -k keys.json -o natt.pcapng --report encap.json\n"
               "keys.json example (one outbound tunnel SA for 10.1.0.0/16 -> anywhere):\n"
               '  [{"spi": "0x1001", "suite": "aes128gcm16", "key": "<40 hex digits>",\n'
               '    "direction": "out", "src": "198.51.100.2", "dst": "203.0.113.5",\n'
               '    "inner_src": "10.1.0.0/16"}]\n'
               "exit status: as natt decap's: 0 done (the summary counts what was sealed), 1 unreadable\n"
               "capture or keys, or an output the file system will not take (a directory, a missing or\n"
               "read-only directory, a full disk), 2 bad usage, and outputs that clash with the other\n"
               "arguments (--report naming IN, OUT or KEYS, OUT naming KEYS, - for both), 128 + the\n"
               "signal's number when stopped, 141 the reader of OUT (- or a FIFO) left before its end. A\n"
               "reader of the summary or of --report - that stops early (| head -1) changes nothing.")
    e.add_argument("input", metavar="IN", help="capture of inner packets (pcap or pcapng; - reads standard input)")
    e.add_argument("-k", "--keys", required=True, metavar="KEYS", action=_Once, help=_KEYS_HELP)
    e.add_argument("-o", "--output", required=True, metavar="OUT", type=_path, action=_Once,
                   help=f"capture to write (same format as IN); {_OUTPUT_HELP}")
    e.add_argument("--report", metavar="REPORT.json", type=_path, action=_Once, help=_REPORT_HELP)
    e.add_argument("--mode", choices=("tunnel", "transport"), default="tunnel", help=_MODE_HELP)
    _common(e)
    e.set_defaults(func=_cmd_encap, parser=e)

    m = sub.add_parser(
        "demo", formatter_class=fmt, help="built-in scenario: make NAT-T traffic, decap it, summarise",
        # DEMO_SUITES on a line of its own: the line that holds the list grows with it.
        description="Encapsulate inner traffic (ICMP, UDP, TCP) with one tunnel SA per suite:\n"
                    f"  {', '.join(DEMO_SUITES)};\n"
                    "write it as demo.pcap with its keys as demo.esp_sa (Wireshark) and demo-keys.json\n"
                    "(natt), then decapsulate demo.pcap as 'natt decap' would into demo-decap.pcap and\n"
                    "print the per-SA summary and throughput. Every file goes into --out-dir (default\n"
                    "./natt-demo).",
        epilog="examples:\n"
               "  natt demo\n"
               "  natt demo --out-dir /tmp/natt-demo --packets 20000\n"
               "  natt decap /tmp/natt-demo/demo.pcap -k /tmp/natt-demo/demo.esp_sa -o /tmp/clear.pcap\n"
               "exit status: 0 every demo packet decapsulated as expected, 1 otherwise or a file the\n"
               "file system will not take (DIR a file, a directory in place of one of its four files,\n"
               "a read-only place: found before any is written, and DIR's files as they were), 2 bad\n"
               "usage (--out-dir -); the same when the reader of what it prints stops early\n"
               "(natt demo | head -1).")
    m.add_argument("--out-dir", default="natt-demo", metavar="DIR",
                   help="where to write the files, made with any missing parents (default ./natt-demo)")
    # The demo holds its traffic in memory, about 3 KB a packet (100 000 packets: 371 MB max RSS,
    # 6 s), so the bound is about 3 GB and a minute: a typo does not fill the machine.
    m.add_argument("--packets", type=at_least(1, DEMO_MAX_PACKETS), default=5000,
                   help=f"packets in total, spread over the {len(DEMO_SUITES)} suites (when it is not a multiple "
                        f"of {len(DEMO_SUITES)}, the first suites make one more; default 5000, at most "
                        f"{DEMO_MAX_PACKETS:,})")
    m.add_argument("--seed", type=at_least(0), default=1, help="seed of the keys and the inner packets (default 1); the "
                   "AES-CBC and 3DES SAs' IVs are random all the same (RFC 3602 §3: unpredictable), "
                   "so their ESP packets differ from run to run")
    _common(m, files=False)
    m.set_defaults(func=_cmd_demo, parser=m)

    x = sub.add_parser(
        "explain", formatter_class=fmt, help="say where and why decap stops for one packet",
        description="Walk docs/semantics.md's decision order (§1, steps 1-12) for one IPv4 packet and\n"
                    "print each step until the one that decides its status, with the reason. The verdict\n"
                    "is the reference data path's own; the SAs of KEYS are installed inbound.\n\n"
                    "HEX is plain hex (Wireshark's 'Copy as Hex Stream') or a hex dump as tshark -x,\n"
                    "tcpdump -x, -xx or -X, xxd, hexdump -C and od -tx1 (any -A; -tx1z) print one (lines\n"
                    "before it are skipped; of several dumps, the first is read). A dump of a whole frame\n"
                    "is walked from its IPv4 header after an Ethernet, Linux cooked (SLL, SLL2: tcpdump\n"
                    "-i any) or BSD loopback header; plain hex that starts with one gets a hint saying how\n"
                    "many octets to leave out.",
        epilog="examples:\n"
               "  natt explain 4500003c0001000040113... -k keys.json\n"
               "  # the IPv4 packet of frame 7 (index 6) of a capture:\n"
               "  python3 -c \"from natt import pcap; print(pcap.read_frames('cap.pcap')[6][3].hex())\" \\\n"
               "      | natt explain - -k esp_sa\n"
               "  natt explain 45:00:00:3c:... -k esp_sa --mode transport\n"
               "  tshark -r cap.pcap -x -Y frame.number==7 | natt explain - -k esp_sa\n"
               "exit status: 0 explained, whatever the verdict (the last line, '=> STATUS'), 1 HEX or\n"
               "KEYS unusable, 2 bad usage; the same when the reader stops early (| head -1, | grep -q).")
    x.add_argument("hex", metavar="HEX", help="the packet in hex, from its IPv4 header (spaces and ':' allowed), "
                                              "or a hex dump of it or its frame; - reads it from standard input")
    x.add_argument("-k", "--keys", required=True, metavar="KEYS", action=_Once, help=_KEYS_HELP)
    x.add_argument("--mode", choices=("tunnel", "transport"), default="tunnel", help=_MODE_HELP)
    x.set_defaults(func=_cmd_explain, parser=x)

    b = sub.add_parser(
        "bench", formatter_class=fmt, add_help=False,
        help="time the data path against bare OpenSSL, cryptography and scapy",
        description="Runs natt's benchmark (natt._bench); every option is passed on to it.",
        epilog="examples:\n  natt bench --quick\n  natt bench --sizes 64,1400 --json bench.json\n"
               "  natt bench --help      # the benchmark's own options")
    b.add_argument("bench_args", nargs=argparse.REMAINDER)
    b.set_defaults(func=_cmd_bench, parser=b)
    return p


class _Stopped(BaseException):
    """SIGTERM or SIGHUP arrived: raised in the main thread so that the run unwinds as on Ctrl-C
    (the temporary -o file, and natt.dask's parts, are removed on the way out). A BaseException,
    as KeyboardInterrupt is: no ``except Exception`` on the way may take it for an error."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signal = signal.Signals(signum)


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """``kill``, ``timeout``, ``systemctl stop`` (SIGTERM) and a closed terminal (SIGHUP) end a run
    like Ctrl-C does: by default they would end the process where it stands, leaving the
    temporary output behind. Only where signal handlers can be set (the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise _Stopped(signum)
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fill_closed_std_streams() -> None:
    """Started with a standard descriptor closed (``2>&-``), Python leaves that ``sys.std*``
    None, which every print to it would trip over, and the next file opened would take the
    descriptor: whatever C code writes to fd 2 would land in the output capture. /dev/null
    takes the place (opened lowest first, each takes its own closed descriptor)."""
    for name, mode in (("stdin", os.O_RDONLY), ("stdout", os.O_WRONLY), ("stderr", os.O_WRONLY)):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.open(os.devnull, mode), "r" if name == "stdin" else "w"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``natt`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    _fill_closed_std_streams()
    status = _run(argv)
    flush_stdout()
    return status


def _run(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # Everything after "bench" belongs to the benchmark's own parser (argparse's REMAINDER
        # would not pass on leading options such as --help or --quick).
        args = argparse.Namespace(command="bench", bench_args=argv[1:], func=_cmd_bench)
    else:
        try:
            args, extra = parser.parse_known_args(argv)
            if extra:
                # As parse_args would, but under the subcommand's usage line, like every other
                # usage error of a subcommand (the top-level one lists only the commands).
                getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
        except SystemExit as e:   # --help, --version, usage errors
            return int(e.code or 0)
    try:
        with _stopped_by_signals():
            status: int = args.func(args)
            return status
    except SystemExit as e:       # natt bench's own parser: --help, usage errors
        return int(e.code or 0)
    except _Stopped as e:
        print(f"natt {args.command}: stopped by {e.signal.name}", file=sys.stderr)
        return 128 + e.signal
    except UsageError as e:
        sub: argparse.ArgumentParser = args.parser
        try:
            sub.error(str(e))
        except SystemExit as x:
            return int(x.code or 0)
    except CliError as e:
        print(f"natt {args.command}: {e}", file=sys.stderr)
        return 1
    except (ReaderLeft, BrokenPipeError):
        # The reader of the capture went away before its end (natt decap -o - | tshark -r - -c 2,
        # a FIFO's reader): the run stops there, as any tool a closed pipe ends, with the status
        # a shell gives one, and quietly: that reader may well have meant to stop. (Text goes
        # through say(), whose reader leaving early is no failure; a BrokenPipeError that gets
        # here is the capture's on stdout, or, rarer, stderr's: 2>&1 | head.)
        for stream in (sys.stdout, sys.stderr):
            if stream is sys.stdout or _stream_reader_gone(stream):
                reader_left(stream)
        return READER_LEFT
    except MemoryError:
        # numpy's allocation failures are MemoryErrors too; what to change is the command's own.
        less = {"demo": "fewer --packets", "decap": "a smaller --chunk-size", "encap": "a smaller --chunk-size"}
        print(f"natt {args.command}: out of memory" + (f"; {less[args.command]} needs less"
                                                       if args.command in less else ""), file=sys.stderr)
        return 1
    except OSError as e:   # e.g. the disk filled up while writing the output
        print(f"natt {args.command}: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return interrupted(args.command)


if __name__ == "__main__":
    sys.exit(main())

"""The README's Python examples run as written (a quick start that fails is worse than none)."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


def test_readme_sends_readers_only_to_files_in_the_repository():
    root = README.parent
    text = README.read_text()
    cited = set(re.findall(r"`([\w./-]+\.md)`", text))
    assert cited and all((root / p).is_file() for p in cited), sorted(p for p in cited if not (root / p).is_file())
    assert "../shared" not in text and "spec/" not in text


def test_quick_start_examples_run(capsys):
    # The first two blocks form one session (the OID example reuses `nic`).
    namespace: dict = {}
    exec(compile("\n".join(BLOCKS[:2]), str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "{<Status.OK: 0>: 3}" in out
    assert namespace["status"] == namespace["natt"].NdisStatus.SUCCESS


def test_every_block_runs_in_one_session():
    # Each block goes on from the ones before it, as a reader types them into one interpreter.
    namespace: dict = {}
    exec(compile("\n".join(BLOCKS), str(README), "exec"), namespace)
    assert namespace["ok"].all() and len(namespace["ok"]) == 1000


def test_oid_example_checks_every_status_and_deletes_the_sa():
    for line in BLOCKS[1].splitlines():
        if "set_oid(" in line:
            assert line.lstrip().startswith("status = "), f"set_oid result not checked: {line.strip()}"
    namespace: dict = {}
    exec(compile("\n".join(BLOCKS[:2]), str(README), "exec"), namespace)
    nic, req = namespace["nic"], namespace["req"]
    assert req.offload_handle not in nic.sa_handles()
    assert namespace["rx"] in nic.sa_handles()          # the SA sharing the parser entry is untouched


def test_a_refused_add_is_logged_at_debug_on_the_natt_logger(caplog):
    """What the README says after the OID example."""
    import logging

    import natt
    req = natt.AddUdpEspSa(
        dst_tunnel_addr="203.0.113.5", src_tunnel_addr="198.51.100.2", flags=natt.OFFLOAD_INBOUND_SA,
        sec_assoc=[natt.OffloadSecurityAssociation(
            natt.Operation.ENCRYPT, 0,          # SPI 0 is reserved: refused
            integrity_algo=natt.AlgoInfo(natt.IntegrityAlgo.SHA, 20),
            conf_algo=natt.AlgoInfo(natt.ConfAlgo.AES_CBC_128, 16))],
        encap_type_entry=natt.EncapTypeEntry(natt.UdpEncapType.OTHER, 4500), key_mat=bytes(36))
    with caplog.at_level(logging.DEBUG, logger="natt"):
        status = natt.Offload(backend="reference").set_oid(natt.OID_TCP_TASK_IPSEC_ADD_UDPESP_SA, req)
    assert status == natt.NdisStatus.INVALID_PARAMETER
    assert [r.levelno for r in caplog.records if r.name == "natt" and "refused" in r.getMessage()] == [logging.DEBUG]


def test_the_key_files_example_runs(tmp_path, monkeypatch):
    """docs/keys.md's example, in a directory holding the keys.json it reads."""
    from natt import keys

    block, = re.findall(r"```python\n(.*?)```", (README.parent / "docs" / "keys.md").read_text(), re.S)
    monkeypatch.chdir(tmp_path)
    keys.save("keys.json", [keys.SaSpec(0x1001, "aes128gcm16", bytes(20), "in", "tunnel", "192.0.2.1", "192.0.2.2")])
    namespace: dict = {}
    exec(compile(block, "docs/keys.md", "exec"), namespace)
    assert len(namespace["handles"]) == 1
    assert [s.spi for s in keys.load("esp_sa")] == [s.spi for s in keys.load("keys.json")] == [0x1001]


def test_the_sdist_holds_every_file_of_the_repository(monkeypatch):
    """MANIFEST.in picks what the sdist holds beyond the package: the README's test command
    cites .ci/run (which CI runs), and tests/vectors/README.md says where the test vectors come
    from; neither was in the sdist. Every file git tracks must be, but .gitignore; outside a git
    checkout (an unpacked sdist), every file of the directories the sdist carries."""
    import subprocess

    from setuptools.command.egg_info import FileList

    root = README.parent
    if (root / ".git").exists():
        tracked = set(subprocess.run(["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True,
                                     text=True).stdout.split("\0")) - {""}
    else:
        tracked = {str(p.relative_to(root)) for d in (".ci", "ci", "docs", "tests", "benchmarks", "fuzz")
                   for p in (root / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    monkeypatch.chdir(root)
    manifest = FileList()
    manifest.findall()
    for line in (root / "MANIFEST.in").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            manifest.process_template_line(line)
    # What setuptools adds without MANIFEST.in: the build files and the package's modules.
    automatic = {"setup.py", "pyproject.toml"} | {f for f in tracked if re.fullmatch(r"natt/[^/]+\.py", f)}
    missing = tracked - set(manifest.files) - automatic - {".gitignore"}
    assert not missing, sorted(missing)


def test_every_api_name_the_docs_cite_exists():
    """The prose names more of the API than the examples run (``natt.ndis_receive_info``,
    ``nic.claim_after_fork``, ``res.sa``, ``natt.dask.decap_captures``...): a rename must not leave
    a reader a name that is gone."""
    import importlib

    import natt
    cited = 0
    for doc in ["README.md", "SECURITY.md", *(f"docs/{p.name}" for p in (README.parent / "docs").glob("*.md"))]:
        text = (README.parent / doc).read_text()
        for dotted in set(re.findall(r"\bnatt\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)", text)):
            obj: object = natt
            for part in dotted.split("."):
                if hasattr(obj, part):
                    obj = getattr(obj, part)
                    continue
                try:        # a submodule not imported yet (natt.dask)
                    obj = importlib.import_module(f"{getattr(obj, '__name__')}.{part}")
                except ImportError:
                    raise AssertionError(f"{doc} names natt.{dotted}, which does not exist") from None
            cited += 1
        for owner, attrs in ((natt.Offload, re.findall(r"\bnic\.([A-Za-z_]\w*)", text)),
                             (natt.DecapResult(), re.findall(r"\bres\.([A-Za-z_]\w*)", text))):
            missing = sorted(a for a in set(attrs) if not hasattr(owner, a))
            assert not missing, (doc, missing)
    assert cited > 20


def test_the_receive_info_sentence_runs_as_written():
    """README: ``natt.ndis_receive_info(res.status, tunnel)`` takes one packet's status or a whole
    result's ``status`` with ``tunnel`` per packet, e.g. ``np.isin(res.sa, tunnel_handles)``."""
    import numpy as np
    namespace: dict = {}
    exec(compile("\n".join(BLOCKS), str(README), "exec"), namespace)
    natt, res = namespace["natt"], namespace["res"]
    whole = natt.ndis_receive_info(res.status, np.isin(res.sa, [namespace["rx"]]))
    one = natt.ndis_receive_info(res.status[0], True)
    assert [int(a[0]) for a in whole] == list(one)


def test_the_walkthroughs_stand_in_peer_runs_and_its_traffic_decrypts_with_the_keys_it_saved(tmp_path, monkeypatch):
    """docs/walkthrough.md's appendix, as written, with its socket caught instead of sent: the
    capture the page decrypts is what this script sends, so it must keep working."""
    import socket
    import time

    import natt
    from natt import keys, traffic
    sent: list[tuple[bytes, tuple[str, int]]] = []

    class CaughtSocket:
        def __init__(self, *args: object) -> None:
            pass

        def bind(self, address: tuple[str, int]) -> None:
            assert address == ("127.0.0.1", 45000)

        def sendto(self, payload: bytes, address: tuple[str, int]) -> None:
            sent.append((bytes(payload), address))

    block, = re.findall(r"```python\n(.*?)```", (README.parent / "docs" / "walkthrough.md").read_text(), re.S)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(socket, "socket", CaughtSocket)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    exec(compile(block, "docs/walkthrough.md", "exec"), {})
    assert {address for _, address in sent} == {("127.0.0.2", 4500)} and len(sent) == 202
    nic = natt.Offload()
    keys.install(nic, keys.load("esp_sa"), direction="in")       # as `natt decap -k esp_sa` does
    res = nic.decap([traffic.udp_encapsulate(p, "127.0.0.1", "127.0.0.2", sport=45000, dport=4500)
                     for p, _ in sent])
    assert res.counts() == {natt.Status.OK: 200, natt.Status.IKE: 1, natt.Status.KEEPALIVE: 1}


def test_every_link_between_the_documents_resolves():
    """Relative links and their #anchors (GitHub's heading slugs) in the Markdown pages: sections
    move between BENCHMARKS.md and benchmarks/HISTORY.md, and a link must follow."""
    root = README.parent
    pages = [root / "README.md", root / "BENCHMARKS.md", root / "SECURITY.md", root / "benchmarks" / "HISTORY.md",
             *(root / "docs").glob("*.md")]

    def anchors(page: pathlib.Path) -> set[str]:
        return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.*)$", page.read_text(), re.M)}

    broken = []
    links = 0
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            links += 1
            if not linked.is_file() or (anchor and anchor not in anchors(linked)):
                broken.append(f"{page.relative_to(root)}: {target}")
    assert not broken, broken
    assert links > 10

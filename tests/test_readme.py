"""The README's Python examples run as written (a quick start that fails is worse than none)."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


def test_quick_start_examples_run(capsys):
    # The first two blocks form one session (the OID example reuses `nic`).
    namespace: dict = {}
    exec(compile("\n".join(BLOCKS[:2]), str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "{<Status.OK: 0>: 3}" in out
    assert namespace["status"] == namespace["natt"].NdisStatus.SUCCESS

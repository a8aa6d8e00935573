"""The hot loop must be C only: `cython -a` scores every line of Engine._run 0 (white), and every
per-packet function is declared nogil (which Cython enforces: no Python object can be touched)."""
import html
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_batch_loop_is_white(tmp_path):
    pytest.importorskip("Cython")
    src = tmp_path / "fastct"
    shutil.copytree(REPO / "fastct", src, ignore=shutil.ignore_patterns("*.so", "*.c", "*.html"))
    subprocess.run([sys.executable, "-m", "cython", "-3", "-a", "-I", str(src / "include"),
                    str(src / "_engine.pyx")], check=True, cwd=tmp_path, capture_output=True)
    page = (src / "_engine.html").read_text()
    rows = re.findall(r'<pre class="cython line score-(\d+)"[^>]*>\+?<span class="">(\d+)</span>:(.*?)</pre>',
                      page, re.S)
    lines = [(int(score), int(ln), html.unescape(re.sub("<[^>]+>", "", code)).strip())
             for score, ln, code in rows]
    start = next(ln for _, ln, code in lines if code.startswith("cdef void _run("))
    yellow = [(ln, code) for score, ln, code in lines if ln >= start and score > 0]
    assert not yellow, yellow


def test_per_packet_functions_are_nogil():
    for pxd in ("_parse.pxd", "_flowkey.pxd", "_table.pxd", "_proto.pxd", "_tcp.pxd", "_verdict.pxd"):
        text = (REPO / "fastct" / pxd).read_text()
        for m in re.finditer(r"^cdef inline [^(]+\([^)]*\)([^:]*):", text, re.M):
            assert "noexcept nogil" in m.group(1), (pxd, m.group(0)[:80])

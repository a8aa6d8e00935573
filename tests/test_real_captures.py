"""Every real capture in ../shared/pcaps goes through `fastct track` without a crash, a hang or a
traceback; damaged ones end with a clear error (exit 1) after printing what they could."""
import subprocess
import sys

import pytest

from conftest import SHARED, shared_dir

CAPTURES = sorted(p.name for p in (SHARED / "pcaps").iterdir() if p.suffix in (".pcap", ".pcapng")) \
    if (SHARED / "pcaps").is_dir() else ["(absent)"]


@pytest.mark.parametrize("name", CAPTURES)
def test_track_real_capture(name):
    path = shared_dir("pcaps") / name
    out = subprocess.run([sys.executable, "-m", "fastct.cli", "track", "--stats", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode in (0, 1), (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr
    assert "flow entries have been shown" in out.stderr
    if out.returncode == 1:
        assert "fastct: error:" in out.stderr
    if name.startswith("MALFORMED_pcap") or name.startswith("MALFORMED_pcapng") or "cut-short" in name:
        assert out.returncode == 1, out.stderr

import contextlib
import io
import os
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PCAPS = REPO / "pcaps"
SHARED = Path(os.environ.get("FASTCT_SHARED", REPO.parent / "shared"))

# `python -m fastct.cli` run from the checkout must import the installed fastct (with its compiled
# extensions), not the source folder in the current directory: Python 3.11+ skips the cwd with this.
os.environ["PYTHONSAFEPATH"] = "1"


def shared_dir(sub: str) -> Path:
    """A folder of ../shared; skipped (with a reason) only outside CI when it is absent."""
    path = SHARED / sub
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing, and CI must have ../shared")
        pytest.skip(f"{path} is not present on this machine (it is in CI)")
    return path


def run_cli(argv):
    """fastct.cli.main in this process: (exit status, stdout, stderr); SystemExit is a status.
    The SIGINT handler `fastct track` changes while it prints is put back afterwards."""
    from fastct import cli
    out, err = io.StringIO(), io.StringIO()
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = cli.main([str(a) for a in argv])
            except SystemExit as exc:
                rc = exc.code
    finally:
        signal.signal(signal.SIGINT, sigint)
    return rc, out.getvalue(), err.getvalue()

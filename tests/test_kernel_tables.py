"""`fastct track` on the real captures must list what the Linux 6.18 kernel's conntrack listed
(../shared/kernel_tables): the same tuples, state, [ASSURED]/[UNREPLIED], per-direction packets and
bytes, and timeouts within 2 s (the kernel's snapshot was taken 0.3 s after the last packet)."""
import subprocess
import sys

import pytest

from conftest import SHARED, shared_dir
from conntrack_lines import parse_table

# Connections whose protocol tracker comes with the protocol-tracking issue (GRE keys and
# timeouts, SCTP states); everything else must match now.
PENDING = {
}

TABLES = sorted(p.name for p in (SHARED / "kernel_tables").iterdir() if p.is_dir()) \
    if (SHARED / "kernel_tables").is_dir() else ["(absent)"]


def _capture(name):
    pcaps = shared_dir("pcaps")
    found = [p for p in pcaps.iterdir() if p.stem == name]
    assert found, name
    return found[0]


@pytest.mark.parametrize("name", TABLES)
def test_matches_kernel_table(name):
    tables = shared_dir("kernel_tables")
    out = subprocess.run([sys.executable, "-m", "fastct.cli", "track", "--stats", str(_capture(name))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    stats_line = next(line for line in lines if line.startswith("cpu="))
    ours = {(r["l3"], r["proto"], r["orig"]): r for r in parse_table(
        "\n".join(line for line in lines if not line.startswith(("cpu=", "fastct:"))))}
    kernel = parse_table((tables / name / "conntrack_L.txt").read_text())
    problems = []
    for k in kernel:
        key = (k["l3"], k["proto"], k["orig"])
        if (name, k["proto"]) in PENDING:
            continue
        o = ours.pop(key, None)
        if o is None:
            problems.append(f"missing {key}")
            continue
        for field in ("state", "reply", "counters", "flags"):
            if o[field] != k[field]:
                problems.append(f"{key}: {field} {o[field]} != kernel {k[field]}")
        if abs(o["timeout"] - k["timeout"]) > 2:
            problems.append(f"{key}: timeout {o['timeout']} != kernel {k['timeout']}")
    extra = [key for key in ours if (name, key[1]) not in PENDING]
    # The kernel's counters that fastct shares (summed over its CPUs): packets refused, ICMP errors
    # refused, packets dropped.
    if not any(n == name for n, _ in PENDING):
        kstats = _stat_sums((tables / name / "conntrack_S.txt").read_text())
        fstats = _stat_sums(stats_line)
        for stat in ("invalid", "error", "drop", "early_drop"):
            if fstats[stat] != kstats[stat]:
                problems.append(f"stat {stat}: {fstats[stat]} != kernel {kstats[stat]}")
    assert not problems and not extra, problems + [f"extra {e}" for e in extra]


def _stat_sums(text):
    sums = {}
    for line in text.splitlines():
        if not line.startswith("cpu="):
            continue
        for field in line.split()[1:]:
            name, _, value = field.partition("=")
            sums[name] = sums.get(name, 0) + int(value)
    return sums

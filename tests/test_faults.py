"""Faults: captures cut inside their last records, absurd table sizes, and every shared capture run
with options the plain run (tests/test_real_captures.py) does not use.

What tests/test_capture.py already covers is not repeated here: it cuts pcaps/mixed_demo.pcap (pcap
and pcapng, the project's own struct writers) at every byte of its last two records, and a
two-section pcapng at every byte, and tries --max-conns 0 / abc / 2147483647.  Here the captures are
written by dpkt's writers (pcap with microsecond and nanosecond timestamps, pcapng), carry several
TCP and UDP flows over IPv4 and IPv6, and every cut is checked three ways: `fastct track --stats`
in-process (exit status, the table and counters equal to those of the file holding only the whole
records, one error line naming the file and the damaged record's offset, no traceback), the reader
(exactly the whole records' packets, compared with what dpkt's own readers find in the good prefix,
then a CaptureError at that offset, for several batch sizes), and one real subprocess per format for
the exit status.
"""
from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import dpkt
import numpy as np
import pytest

from conftest import REPO, SHARED, run_cli, shared_dir
from fastct import Tracker
from fastct._version import __version__
from fastct.capture.reader import CaptureError, CaptureReader
from fastct.tracker import COLD_DTYPE, ENTRY_DTYPE

SUMMARY = re.compile(r"^fastct " + re.escape(__version__) + r": (\d+) flow entries have been shown\.$")
T0 = 1_700_000_000.25


# ---------------------------------------------------------------------------------------------
# running the command

def run_sub(argv, timeout=120):
    return subprocess.run([sys.executable, "-m", "fastct.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def table_lines(stdout):
    return [ln for ln in stdout.splitlines() if ln and not ln.startswith(("cpu=", "fastct "))]


def error_lines(stderr):
    return [ln for ln in stderr.splitlines() if ln.startswith("fastct: error:")]


def check_summary(stdout, stderr):
    first = stderr.splitlines()[0] if stderr else ""
    m = SUMMARY.match(first)
    assert m, stderr[:500]
    n = int(m.group(1))
    table = [ln for ln in stdout.splitlines() if ln.startswith(("ipv4 ", "ipv6 "))]
    assert n == len(table), (n, len(table))
    return n


# ---------------------------------------------------------------------------------------------
# captures written by dpkt: several TCP and UDP flows, IPv4 and IPv6

def _ip4(src, dst, l4, proto):
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, ttl=64, data=l4)
    ip.len = 20 + len(bytes(l4))
    return ip


def _ip6(src, dst, l4, proto):
    ip = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src), dst=socket.inet_pton(socket.AF_INET6, dst),
                      nxt=proto, hlim=64, data=l4)
    ip.plen = len(bytes(l4))
    return ip


def _eth(ip, v6=False):
    return bytes(dpkt.ethernet.Ethernet(dst=b"\x02\0\0\0\0\x01", src=b"\x02\0\0\0\0\x02",
                                        type=dpkt.ethernet.ETH_TYPE_IP6 if v6 else dpkt.ethernet.ETH_TYPE_IP,
                                        data=ip))


def tcp_flow(c, s, cport, sport, close="fin", v6=False, isn=(1000, 5000), data=((0, 100), (1, 300), (0, 20))):
    """A TCP conversation as frames: handshake, data each way, then FIN / RST / nothing."""
    ip = _ip6 if v6 else _ip4
    seq = {0: isn[0], 1: isn[1]}
    out = []

    def send(d, flags, n=0):
        a, b, pa, pb = (c, s, cport, sport) if d == 0 else (s, c, sport, cport)
        t = dpkt.tcp.TCP(sport=pa, dport=pb, seq=seq[d], ack=seq[1 - d] if flags & dpkt.tcp.TH_ACK else 0,
                         flags=flags, win=64240, data=b"x" * n)
        if flags & dpkt.tcp.TH_SYN:
            t.opts = b"\x02\x04\x05\xb4\x01\x03\x03\x07"
            t.off = 7
        out.append(_eth(ip(a, b, t, 6), v6))
        seq[d] = (seq[d] + n + (1 if flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN) else 0)) & 0xFFFFFFFF

    send(0, dpkt.tcp.TH_SYN)
    send(1, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK)
    send(0, dpkt.tcp.TH_ACK)
    for d, n in data:
        send(d, dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, n)
        send(1 - d, dpkt.tcp.TH_ACK)
    if close == "fin":
        send(0, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)
        send(1, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)
        send(0, dpkt.tcp.TH_ACK)
    elif close == "rst":
        send(1, dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK)
    return out


def udp_flow(c, s, cport, sport, n=3, v6=False):
    ip = _ip6 if v6 else _ip4
    out = []
    for k in range(n):
        for d in (0, 1):
            a, b, pa, pb = (c, s, cport, sport) if d == 0 else (s, c, sport, cport)
            u = dpkt.udp.UDP(sport=pa, dport=pb, data=bytes([k]) * (12 + 7 * d))
            u.ulen = 8 + len(u.data)
            out.append(_eth(ip(a, b, u, 17), v6))
    return out


def conversation():
    """(ts seconds, frame) of several interleaved flows; the last two records are of different flows."""
    flows = [tcp_flow("192.168.1.10", "10.0.0.80", 40001, 80),
             tcp_flow("192.168.1.11", "10.0.0.44", 40002, 443, close="rst", isn=(7, 2**32 - 10)),
             tcp_flow("2001:db8::10", "2001:db8::80", 40003, 8080, close="none", v6=True),
             udp_flow("192.168.1.10", "10.0.0.53", 5353, 53),
             udp_flow("2001:db8::10", "2001:db8::53", 5354, 53, n=2, v6=True),
             udp_flow("192.168.1.12", "10.0.0.123", 123, 123, n=1)]
    pos = [0] * len(flows)
    frames = []
    k = 0
    while any(p < len(f) for p, f in zip(pos, flows)):
        i = k % len(flows)
        k += 1
        if pos[i] < len(flows[i]):
            frames.append(flows[i][pos[i]])
            pos[i] += 1
    return [(T0 + 0.013 * i + (0.000001 * i if i % 3 else 0), f) for i, f in enumerate(frames)]


PKTS = conversation()


def dpkt_file(fmt, pkts=PKTS):
    """(bytes, record start offsets + the end) written by dpkt's writer for `fmt`."""
    buf = io.BytesIO()
    if fmt == "pcapng":
        w = dpkt.pcapng.Writer(buf, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)
    else:
        w = dpkt.pcap.Writer(buf, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB, nano=fmt == "pcap-nsec")
    starts = []
    for ts, frame in pkts:
        starts.append(buf.tell())
        w.writepkt(frame, ts=ts)
    return buf.getvalue(), starts + [buf.tell()]


def dpkt_read(path):
    """(ts ns, frame) of a capture as dpkt's own readers see it (the independent reference)."""
    with open(path, "rb") as fh:
        r = dpkt.pcapng.Reader(fh) if str(path).endswith("pcapng") else dpkt.pcap.Reader(fh)
        return [(int(round(ts * 1_000_000_000)), bytes(buf)) for ts, buf in r]     # (ts: float or Decimal)


def same_packets(got, ref):
    """Equal frames, timestamps within 1 us (dpkt's readers give float seconds)."""
    return len(got) == len(ref) and all(f == g and abs(t - u) <= 1000 for (t, f), (u, g) in zip(got, ref))


def read_all(path, batch_size):
    """(ts ns, frame) of every packet our reader yields, and its error."""
    out = []
    with CaptureReader(path, batch_size=batch_size) as r:
        for b in r:
            assert len(b) <= batch_size
            for o, c, t in zip(b.offsets.tolist(), b.caplen.tolist(), b.ts.tolist()):
                out.append((t, bytes(b.buf[o:o + c])))
        return out, r.error


FORMATS = ["pcap-usec", "pcap-nsec", "pcapng"]


def test_flows_make_a_table(tmp_path):
    """The capture is what it should be: every flow in the table, timestamps as written."""
    p = tmp_path / "all.pcap"
    p.write_bytes(dpkt_file("pcap-usec")[0])
    rc, out, err = run_cli(["track", p])
    assert rc == 0, err
    assert check_summary(out, err) == 6                # 3 TCP and 3 UDP flows
    assert out.count("ESTABLISHED") == 1 and out.count("TIME_WAIT") == 1 and out.count("CLOSE ") == 1
    assert out.count("udp ") == 3


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_in_last_two_records(tmp_path, fmt):
    """Cut at every offset within the last two records: the table of the whole records before the
    cut, exit 1 and one error naming the file and the cut record's offset; on a record boundary a
    good, shorter file (exit 0)."""
    data, starts = dpkt_file(fmt)
    ext = "pcapng" if fmt == "pcapng" else "pcap"
    a, b = starts[-3], starts[-2]
    args = ["--stats", "--seed", "1"]
    good = {}
    for k, cut in ((len(starts) - 3, a), (len(starts) - 2, b)):
        p = tmp_path / f"prefix{k}.{ext}"
        p.write_bytes(data[:cut])
        rc, out, err = run_cli(["track", *args, p])
        assert rc == 0 and not error_lines(err), err
        assert "Traceback" not in err
        check_summary(out, err)
        # the prefix itself against dpkt's reader: exactly the first k packets
        ref = dpkt_read(p)
        assert [f for _, f in ref] == [f for _, f in PKTS[:k]]
        good[cut] = (out, ref)
    assert good[a][0] != good[b][0], "the last records must change the table"
    problems = []
    for cut in range(a, len(data)):
        rec = b if cut >= b else a
        p = tmp_path / f"cut{cut}.{ext}"
        p.write_bytes(data[:cut])
        rc, out, err = run_cli(["track", *args, p])
        if "Traceback" in err or "Traceback" in out:
            problems.append((cut, "traceback", err[-300:]))
            continue
        if cut in (a, b):
            if rc != 0 or out != good[cut][0] or error_lines(err):
                problems.append((cut, "boundary", rc, err[-300:]))
            continue
        errs = error_lines(err)
        want = f"fastct: error: {p}: at byte offset {rec}: "
        if rc != 1 or out != good[rec][0] or len(errs) != 1 or not errs[0].startswith(want) or \
                "cut short" not in errs[0]:
            problems.append((cut, "cut", rc, rec, errs))
            continue
        check_summary(out, err)
        # the reader, at several batch sizes: the whole records' packets (as dpkt reads the good
        # prefix), then the error at the cut record
        for bs in (1, 2, 4096):
            got, e = read_all(p, bs)
            if not same_packets(got, good[rec][1]) or not isinstance(e, CaptureError) or e.offset != rec or e.path != str(p):
                problems.append((cut, "reader", bs, len(got), e))
    assert not problems, f"{len(problems)} of {len(data) - a} cuts wrong: {problems[:6]}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_exit_status_in_a_subprocess(tmp_path, fmt):
    data, starts = dpkt_file(fmt)
    cut = (starts[-2] + starts[-1]) // 2                # in the last record's packet data
    p = tmp_path / ("cut.pcapng" if fmt == "pcapng" else "cut.pcap")
    p.write_bytes(data[:cut])
    r = run_sub(["track", p])
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    errs = error_lines(r.stderr)
    assert len(errs) == 1 and f"{p}: at byte offset {starts[-2]}:" in errs[0], r.stderr
    rc, out, _ = run_cli(["track", p])
    assert rc == 1 and out == r.stdout


# ---------------------------------------------------------------------------------------------
# absurd table sizes

@pytest.fixture(scope="module")
def small_pcap(tmp_path_factory):
    p = tmp_path_factory.mktemp("faults") / "small.pcap"
    p.write_bytes(dpkt_file("pcap-usec", PKTS[:6])[0])
    return p


MEM = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
PER_CONN = ENTRY_DTYPE.itemsize + COLD_DTYPE.itemsize

# refused by the option's parser (argparse: usage message, exit 2)
BAD_PARSE = ["0", "-1", str(10**15), "abc", str(2**32), "", "1.5", "1e6", "0x100000000", "2147483648", "2147483647", "1073741823",
             "-0", "9" * 5000, "\u0661\u0662\u0663" + "9" * 20]


@pytest.mark.parametrize("value", BAD_PARSE, ids=lambda v: v[:20] or "empty")
def test_absurd_max_conns_usage_error(small_pcap, value):
    for argv in (["track", "--max-conns", value, small_pcap], ["track", f"--max-conns={value}", small_pcap]):
        rc, out, err = run_cli(argv)
        assert rc == 2, (argv, rc, err)
        assert out == ""
        assert "Traceback" not in err and "MemoryError" not in err
        lines = err.strip().splitlines()
        assert lines[0].startswith("usage: fastct track") and "--max-conns" in lines[-1], err
        assert len(err) < 4000 + len(value)        # (the message quotes the value)


@pytest.mark.parametrize("option", [
    ["--max-conns", str(2**30 - 2)],                               # in range, more than the memory
    ["--max-conns", str(MEM // PER_CONN + 1)],                     # one connection over the memory
    ["--sysctl", "nf_conntrack_max=2147483647"],
    ["--sysctl", "net.netfilter.nf_conntrack_max=0"],
    ["--sysctl", f"nf_conntrack_max={10**15}"],
    ["--sysctl", "nf_conntrack_max=-1"],
    ["--sysctl", "nf_conntrack_max=abc"],
    ["--sysctl", "nf_conntrack_max=5", "--max-conns", "6"],
], ids=["2^30-2", "memory+1", "sysctl-2^31-1", "sysctl-0", "sysctl-1e15", "sysctl--1", "sysctl-abc", "disagree"])
def test_too_big_max_conns_clear_message(small_pcap, option):
    rc, out, err = run_cli(["track", *option, small_pcap])
    assert rc == 2, err
    assert out == "" and "Traceback" not in err and "MemoryError" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastct: error:") and "max" in lines[0], err


def test_absurd_max_conns_subprocess(small_pcap):
    for value in (str(10**15), "-1"):
        r = run_sub(["track", "--max-conns", value, small_pcap], timeout=60)
        assert r.returncode == 2, r.stderr
        assert r.stdout == "" and "Traceback" not in r.stderr and "MemoryError" not in r.stderr
        assert "--max-conns" in r.stderr and "usage:" in r.stderr


@pytest.mark.parametrize("value", [10**15, 2**31, 2**32, 2**31 - 1, MEM // PER_CONN + 1, 0, -1, "abc", 1.5, True,
                                   np.int64(10**15), "1000"])
def test_tracker_refuses_absurd_max_conns(value):
    with pytest.raises(ValueError) as exc:
        Tracker(max_conns=value)
    assert "max_conns" in str(exc.value)


def test_tracker_refuses_absurd_nf_conntrack_max():
    for value in (10**15, 0, -1, "abc", 2**31 - 1):
        with pytest.raises(ValueError):
            Tracker(sysctl={"nf_conntrack_max": value})


def test_tracker_near_the_memory_limit_is_created_or_refused_cleanly():
    """Just under the machine's memory: the table is reserved (untouched pages cost nothing) or
    refused with a ValueError; never a MemoryError."""
    n = int(MEM * 0.9) // PER_CONN
    try:
        t = Tracker(max_conns=n)
    except ValueError as exc:
        assert "max_conns" in str(exc)
        return
    assert t._engine.max_conns == n and len(t) == 0
    del t


# ---------------------------------------------------------------------------------------------
# every shared capture with other options than tests/test_real_captures.py

CAPTURES = sorted(p.name for p in (SHARED / "pcaps").iterdir() if p.suffix in (".pcap", ".pcapng")) \
    if (SHARED / "pcaps").is_dir() else ["(absent)"]
# A small, full table (early drop at work), checksums checked, zones from VLAN ids, the DCCP state
# machine, and batches of 7 packets.
EXTRA = ["--max-conns", "100", "--sysctl", "nf_conntrack_checksum=1", "--zone-from", "vlan", "--dccp-tracker",
         "--batch-size", "7", "--stats", "--seed", "3"]


@pytest.fixture(scope="module")
def extra_runs():
    """`fastct track EXTRA FILE` for every shared capture, two at a time (independent processes)."""
    d = shared_dir("pcaps")

    def one(name):
        try:
            return name, run_sub(["track", *EXTRA, d / name], timeout=120)
        except subprocess.TimeoutExpired as exc:
            return name, exc
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(pool.map(one, CAPTURES))


@pytest.mark.parametrize("name", CAPTURES)
def test_shared_capture_with_small_table_and_checksums(extra_runs, name):
    r = extra_runs[name]
    assert not isinstance(r, subprocess.TimeoutExpired), f"{name}: hang (no exit within 120 s)"
    assert r.returncode >= 0, f"{name}: killed by signal {-r.returncode}"
    assert r.returncode in (0, 1), (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-3000:]
    n = check_summary(r.stdout, r.stderr)
    assert n <= 100, "more entries than --max-conns"
    assert sum(ln.startswith("cpu=") for ln in r.stdout.splitlines()) == 1
    if r.returncode == 1:
        assert len(error_lines(r.stderr)) == 1, r.stderr
    if name.startswith(("MALFORMED_pcap", "MALFORMED_pcapng")) or "cut-short" in name:
        assert r.returncode == 1, r.stderr


@pytest.mark.parametrize("name", CAPTURES)
def test_shared_capture_batch_size_does_not_matter(name):
    """The CLI says results do not depend on --batch-size: one packet per batch against 4096
    (in-process; the default table is large enough never to fill for these captures)."""
    path = shared_dir("pcaps") / name
    runs = [run_cli(["track", "--seed", "11", "--stats", "--batch-size", bs, path]) for bs in ("4096", "1")]
    for rc, out, err in runs:
        assert rc in (0, 1) and "Traceback" not in err, err[-2000:]
    assert runs[0][0] == runs[1][0]
    # the table and the conntrack -S counters (fastct's own, e.g. probes, may differ)
    keep = [[ln for ln in out.splitlines() if ln.startswith(("ipv4 ", "ipv6 ", "cpu="))] for _, out, _ in runs]
    assert keep[0] == keep[1], f"{name}: the table or counters depend on the batch size"

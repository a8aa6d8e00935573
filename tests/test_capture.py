"""The capture readers (classic pcap, pcapng) and the `fastct track` command line.

Every capture here is written by the small struct writers below from frames built with dpkt, so the
expected timestamps, interface ids, byte counts and table lines are worked out from the file formats
(libpcap's pcap header and link-type field, the pcapng specification) and from the kernel's
conntrack rules, never taken from fastct's own output.  Where two inputs must give the same table
(pcap variants, batch sizes, a damaged file and its good prefix) the comparison is between two runs.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dpkt
import numpy as np
import pytest

from fastct._version import __version__
from fastct.capture.reader import CaptureError, CaptureReader

REPO = Path(__file__).resolve().parent.parent
PCAPS = REPO / "pcaps"
NS = 1_000_000_000
T = 1_700_000_100                     # base time (s) of the hand-built conversation
CLI = [sys.executable, "-m", "fastct.cli", "track"]
SUMMARY = re.compile(r"^fastct " + re.escape(__version__) + r": (\d+) flow entries have been shown\.$")
STATS_LINE = re.compile(r"^cpu=0   \tfound=(\d+) invalid=(\d+) insert=(\d+) insert_failed=(\d+) drop=(\d+) "
                        r"early_drop=(\d+) error=(\d+) search_restart=(\d+) clash_resolve=(\d+) "
                        r"chaintoolong=(\d+) $")

LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_USER0 = 1, 101, 228, 147


# ---------------------------------------------------------------------------------------------
# running the command


def track(path, *args, timeout=60):
    """`fastct track PATH ARGS` in a fresh interpreter; never a traceback, whatever the outcome."""
    r = subprocess.run(CLI + [str(path), *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, cwd=REPO)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-3000:]
    return r


def track_many(jobs):
    """Several `track` runs at once (they are independent processes): list of (path, args)."""
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return list(pool.map(lambda job: track(job[0], *job[1]), jobs))


def stderr_lines(r):
    return r.stderr.splitlines()


def check_summary(r):
    """stderr starts with `fastct VERSION: N flow entries have been shown.`, N = table lines."""
    first = stderr_lines(r)[0]
    m = SUMMARY.match(first)
    assert m, first
    table = [ln for ln in r.stdout.splitlines() if not ln.startswith(("cpu=", "fastct:"))]
    assert int(m.group(1)) == len(table)


def error_line(r):
    """The one `fastct: error:` line of a failed run (exactly one, one line)."""
    errs = [ln for ln in stderr_lines(r) if ln.startswith("fastct: error:")]
    assert len(errs) == 1, r.stderr
    return errs[0]


def check_damaged(r, offsets, prefix_stdout):
    """Exit 1, the good prefix's table on stdout, one error line naming the damage's byte offset."""
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stdout == prefix_stdout
    check_summary(r)
    line = error_line(r)
    offsets = [offsets] if isinstance(offsets, int) else offsets
    found = re.search(r"at byte offset (\d+)", line)
    assert found and int(found.group(1)) in offsets, (line, offsets)
    return line


# ---------------------------------------------------------------------------------------------
# frames (dpkt)


def _ip4(src, dst, proto, l4, ident):
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, ttl=64, id=ident, df=1,
                    data=l4)
    ip.len = 20 + len(bytes(l4))
    raw = bytes(ip)
    assert struct.unpack("!H", raw[2:4])[0] == len(raw)
    return raw


def eth(ip_bytes, etype=0x0800):
    return bytes(dpkt.ethernet.Ethernet(dst=b"\x02\x00\x00\x00\x00\x02", src=b"\x02\x00\x00\x00\x00\x01",
                                        type=etype, data=ip_bytes))


def tcp_ip(src, dst, sport, dport, flags, seq, ack, ident=1):
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=65535, off=5)
    return _ip4(src, dst, 6, seg, ident)


def udp_ip(src, dst, sport, dport, payload, ident=1):
    dg = dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(payload), data=payload)
    return _ip4(src, dst, 17, dg, ident)


def icmp_ip(src, dst, icmp_type, ident, seq, ip_id=1):
    msg = dpkt.icmp.ICMP(type=icmp_type, code=0,
                         data=dpkt.icmp.ICMP.Echo(id=ident, seq=seq, data=bytes(range(0x10, 0x48))))
    return _ip4(src, dst, 1, msg, ip_id)


SYN, ACK, FIN = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN
CL, SV, DNS, PING = "192.168.1.10", "10.9.0.1", "10.9.0.53", "10.9.0.7"

# The conversation used throughout: (offset from T in microseconds, IP packet).  TCP handshake and
# teardown (ISNs 1000 / 5000, IP len 40 each), a UDP query (12 B payload, IP len 40) answered 1.575 s
# later (30 B, IP len 58, within 2 s: not a stream), one unanswered ICMP echo request (IP len 84).
CONV_IP = [
    (100_001, tcp_ip(CL, SV, 3000, 80, SYN, 1000, 0, 0x11)),
    (100_503, tcp_ip(SV, CL, 80, 3000, SYN | ACK, 5000, 1001, 0x12)),
    (125_000, tcp_ip(CL, SV, 3000, 80, ACK, 1001, 5001, 0x13)),
    (125_000, udp_ip(CL, DNS, 5000, 53, b"q" * 12, 0x14)),
    (250_017, icmp_ip(CL, PING, 8, 77, 1, 0x15)),
    (400_000, tcp_ip(CL, SV, 3000, 80, FIN | ACK, 1001, 5001, 0x16)),
    (400_000, tcp_ip(SV, CL, 80, 3000, FIN | ACK, 5001, 1002, 0x17)),
    (400_999, tcp_ip(CL, SV, 3000, 80, ACK, 1002, 5002, 0x18)),
    (1_700_000, udp_ip(DNS, CL, 53, 5000, b"r" * 30, 0x19)),
]
CONV_TS = [T * NS + us * 1000 for us, _ in CONV_IP]
CONV = [(ts, eth(ip)) for ts, (_, ip) in zip(CONV_TS, CONV_IP)]

# The table, worked out by hand.  "now" = last packet = T + 1.7 s.  Timeout = (last packet of the
# flow + timeout - now) rounded down: TCP TIME_WAIT 120 s from T+0.400999 -> 118; UDP replied but not
# a stream: 30 s from now -> 30; ICMP unreplied 30 s from T+0.250017 -> 28.  delta-time = now's
# whole seconds minus the start's (conntrack-tools prints time(NULL) - start / 1e9): 1.  Bytes are
# IP total lengths.  Oldest first: TCP (T+0.100001), UDP (T+0.125), ICMP (T+0.250017).
CONV_TABLE = (
    "ipv4     2 tcp      6 118 TIME_WAIT src=192.168.1.10 dst=10.9.0.1 sport=3000 dport=80 packets=4 "
    "bytes=160 src=10.9.0.1 dst=192.168.1.10 sport=80 dport=3000 packets=2 bytes=80 [ASSURED] mark=0 "
    "delta-time=1 use=1\n"
    "ipv4     2 udp      17 30 src=192.168.1.10 dst=10.9.0.53 sport=5000 dport=53 packets=1 bytes=40 "
    "src=10.9.0.53 dst=192.168.1.10 sport=53 dport=5000 packets=1 bytes=58 mark=0 delta-time=1 use=1\n"
    "ipv4     2 icmp     1 28 src=192.168.1.10 dst=10.9.0.7 type=8 code=0 id=77 packets=1 bytes=84 "
    "[UNREPLIED] src=10.9.0.7 dst=192.168.1.10 type=0 code=0 id=77 packets=0 bytes=0 mark=0 "
    "delta-time=1 use=1\n"
)


# ---------------------------------------------------------------------------------------------
# classic pcap writer


def pcap_header(e="<", nsec=False, linkfield=LINKTYPE_ETHERNET, snaplen=65535, major=2, minor=4):
    magic = 0xA1B23C4D if nsec else 0xA1B2C3D4
    return struct.pack(e + "IHHiIII", magic, major, minor, 0, 0, snaplen, linkfield)


def pcap_record(ts_ns, frame, e="<", nsec=False, caplen=None, wirelen=None, frac=None):
    sec, rest = divmod(ts_ns, NS)
    if frac is None:
        assert nsec or rest % 1000 == 0
        frac = rest if nsec else rest // 1000
    caplen = len(frame) if caplen is None else caplen
    wirelen = len(frame) if wirelen is None else wirelen
    return struct.pack(e + "IIII", sec, frac, caplen, wirelen) + frame


def pcap_file(pkts, e="<", nsec=False, **hdr):
    return pcap_header(e, nsec, **hdr) + b"".join(pcap_record(ts, f, e, nsec) for ts, f in pkts)


def pcap_offsets(pkts):
    """Byte offsets where each record of pcap_file(pkts) starts, and the file size."""
    pos, starts = 24, []
    for _, f in pkts:
        starts.append(pos)
        pos += 16 + len(f)
    return starts, pos


# ---------------------------------------------------------------------------------------------
# pcapng writer (either byte order)


def pad4(b):
    return b + b"\0" * (-len(b) % 4)


def ng_opts(e, opts, end=True):
    if not opts:
        return b""
    out = b"".join(struct.pack(e + "HH", code, len(v)) + pad4(v) for code, v in opts)
    return out + (struct.pack(e + "HH", 0, 0) if end else b"")


def ng_block(e, btype, body):
    body = pad4(body)
    total = 12 + len(body)
    return struct.pack(e + "II", btype, total) + body + struct.pack(e + "I", total)


def shb(e="<", major=1, minor=0, bom=0x1A2B3C4D, opts=((4, b"tests/test_capture.py"),)):
    return ng_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", bom, major, minor, -1) + ng_opts(e, list(opts)))


def idb(e, linktype, tsresol=None, tsoffset=None, snaplen=65535, name="if", extra=()):
    opts = [(2, name.encode())]
    if tsresol is not None:
        opts.append((9, bytes([tsresol])))
    if tsoffset is not None:
        opts.append((14, struct.pack(e + "q", tsoffset)))
    opts += list(extra)
    return ng_block(e, 1, struct.pack(e + "HHI", linktype, 0, snaplen) + ng_opts(e, opts))


def epb(e, iface, ticks, data, wirelen=None):
    wirelen = len(data) if wirelen is None else wirelen
    body = struct.pack(e + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), wirelen)
    return ng_block(e, 6, body + pad4(data))


def spb(e, data, wirelen=None):
    return ng_block(e, 3, struct.pack(e + "I", len(data) if wirelen is None else wirelen) + pad4(data))


def opb(e, iface, ticks, data, drops=0):
    body = struct.pack(e + "HHIIII", iface, drops, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data))
    return ng_block(e, 2, body + pad4(data) + ng_opts(e, [(2, struct.pack(e + "I", 0))]))  # opb_flags


def nrb(e):
    """Name resolution block (type 4): one IPv4 record, end of records, no options."""
    rec = socket.inet_aton(DNS) + b"dns.example\0"
    return ng_block(e, 4, struct.pack(e + "HH", 1, len(rec)) + pad4(rec) + struct.pack(e + "HH", 0, 0))


def isb(e, iface, ticks):
    """Interface statistics block (type 5) with isb_ifrecv."""
    body = struct.pack(e + "III", iface, ticks >> 32, ticks & 0xFFFFFFFF)
    return ng_block(e, 5, body + ng_opts(e, [(4, struct.pack(e + "Q", 9))]))


def custom(e):
    """A block type nobody defines (and a Decryption Secrets Block, type 0x0A)."""
    return [ng_block(e, 0x00000BAD, b"whatever-is-in-here"),
            ng_block(e, 0x0000000A, struct.pack(e + "II", 0x544C534B, 4) + b"key!")]


def pcapng_single(pkts, e="<", tsresol=None):
    """SHB + one Ethernet IDB (default microseconds unless tsresol 9) + one EPB per packet."""
    unit = 1 if tsresol == 9 else 1000
    return shb(e) + idb(e, LINKTYPE_ETHERNET, tsresol) + \
        b"".join(epb(e, 0, ts // unit, f) for ts, f in pkts)


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def read_all(path, batch_size=4096):
    """Everything a CaptureReader yields, concatenated: ts, iface, caplen, wirelen, frames, reader."""
    with CaptureReader(path, batch_size=batch_size) as r:
        ts, ifc, cl, wl, frames = [], [], [], [], []
        linktypes = fcs = None
        for b in r:
            ts += b.ts.tolist()
            ifc += b.iface.tolist()
            cl += b.caplen.tolist()
            wl += b.wirelen.tolist()
            frames += [bytes(b.buf[o:o + c]) for o, c in zip(b.offsets, b.caplen)]
            linktypes, fcs = b.if_linktype.tolist(), b.if_fcslen.tolist()
        return dict(ts=ts, iface=ifc, caplen=cl, wirelen=wl, frames=frames, linktypes=linktypes,
                    fcslen=fcs, error=r.error, packets=r.packets, format=r.format,
                    interfaces=list(r.interfaces))


# ---------------------------------------------------------------------------------------------
# classic pcap: resolutions and byte orders


PCAP_VARIANTS = [("<", False), (">", False), ("<", True), (">", True)]


def test_pcap_variants_same_table_and_timestamps(tmp_path):
    paths = []
    for e, nsec in PCAP_VARIANTS:
        data = pcap_file(CONV, e, nsec)
        # the header as the format defines it: magic in the file's byte order
        magic = b"\xa1\xb2\x3c\x4d" if nsec else b"\xa1\xb2\xc3\xd4"
        assert data[:4] == (magic if e == ">" else magic[::-1])
        paths.append(write(tmp_path, f"conv{e == '>' and 'be' or 'le'}{nsec and 'ns' or 'us'}.pcap", data))
    runs = track_many([(p, []) for p in paths])
    for r in runs:
        assert r.returncode == 0, r.stderr
        assert r.stdout == CONV_TABLE
        assert stderr_lines(r) == [f"fastct {__version__}: 3 flow entries have been shown."]
    for p in paths:
        got = read_all(p)
        assert got["format"] == "pcap" and got["error"] is None and got["packets"] == len(CONV)
        assert got["ts"] == CONV_TS
        assert got["frames"] == [f for _, f in CONV]
        assert got["caplen"] == got["wirelen"] == [len(f) for _, f in CONV]
        assert got["linktypes"] == [LINKTYPE_ETHERNET] and got["fcslen"] == [0]


def test_pcap_nanoseconds_kept(tmp_path):
    """A nanosecond file keeps every digit; the same instants rounded to microseconds lose them."""
    pkts = [(T * NS + 1, CONV[0][1]), (T * NS + 999_999_999, CONV[1][1]), ((T + 1) * NS + 500, CONV[2][1])]
    for e in "<>":
        assert read_all(write(tmp_path, "n.pcap", pcap_file(pkts, e, nsec=True)))["ts"] == [ts for ts, _ in pkts]
    # microsecond boundary values: 0 and 999999
    us = [(T * NS, CONV[0][1]), (T * NS + 999_999_000, CONV[1][1])]
    for e in "<>":
        assert read_all(write(tmp_path, "u.pcap", pcap_file(us, e)))["ts"] == [ts for ts, _ in us]


def test_shipped_handshake_variants_same_table():
    names = ["tcp_handshake_teardown.pcap", "tcp_handshake_teardown.nsec.pcap",
             "tcp_handshake_teardown.be.pcap", "tcp_handshake_teardown.pcapng"]
    runs = track_many([(PCAPS / n, []) for n in names])
    # pcaps/README.md: 6 packets 0.01 s apart, orig 4 pkts / 160 B, reply 2 pkts / 80 B; TIME_WAIT
    # entered by the last packet, which is "now": 120 s left; all within one second.
    expected = ("ipv4     2 tcp      6 120 TIME_WAIT src=192.168.0.2 dst=10.0.0.2 sport=1024 dport=2048 "
                "packets=4 bytes=160 src=10.0.0.2 dst=192.168.0.2 sport=2048 dport=1024 packets=2 "
                "bytes=80 [ASSURED] mark=0 delta-time=0 use=1\n")
    for n, r in zip(names, runs):
        assert r.returncode == 0, (n, r.stderr)
        assert r.stdout == expected, n
    t0 = 1_700_000_000 * NS
    for n in names:
        got = read_all(PCAPS / n)
        assert got["ts"] == [t0 + k * 10_000_000 for k in range(6)], n
        assert got["caplen"] == [54] * 6


# ---------------------------------------------------------------------------------------------
# the pcap link-type field


def fcs(frame):
    return struct.pack("<I", zlib.crc32(frame))


@pytest.mark.parametrize("words", [1, 2, 3, 15])
def test_pcap_fcs_length_stripped(tmp_path, words):
    """F bit (0x04000000) set: bits 28-31 give the FCS length in 16-bit words; that many bytes end
    every frame and are not part of the packet."""
    nfcs = 2 * words
    field = LINKTYPE_ETHERNET | 0x04000000 | (words << 28)
    pkts = [(ts, f + (fcs(f) * 8)[:nfcs]) for ts, f in CONV]
    p = write(tmp_path, "fcs.pcap", pcap_file(pkts, linkfield=field))
    be = write(tmp_path, "fcs.be.pcap", pcap_file(pkts, ">", linkfield=field))
    for r in track_many([(p, []), (be, [])]):
        assert r.returncode == 0, r.stderr
        assert r.stdout == CONV_TABLE               # bytes = IP total length, FCS bytes not counted
    got = read_all(p)
    assert got["linktypes"] == [LINKTYPE_ETHERNET] and got["fcslen"] == [nfcs]
    assert got["caplen"] == [len(f) + nfcs for _, f in CONV]


def test_pcap_fcs_stripped_even_when_not_there(tmp_path):
    """The field claims a 4-byte FCS but the frames carry none: stripping 4 bytes cuts every IPv4
    packet short of its total length; the kernel drops such packets before conntrack (ip_rcv)."""
    field = LINKTYPE_ETHERNET | 0x04000000 | (2 << 28)
    r = track(write(tmp_path, "nofcs.pcap", pcap_file(CONV, linkfield=field)))
    assert r.stdout == ""
    check_summary(r)


def test_pcap_fcs_bits_without_f_bit_ignored(tmp_path):
    """Bits 28-31 mean nothing unless the F bit is set (libpcap: LT_FCS_LENGTH_PRESENT)."""
    r = track(write(tmp_path, "nof.pcap", pcap_file(CONV, linkfield=LINKTYPE_ETHERNET | (2 << 28))))
    assert r.returncode == 0 and r.stdout == CONV_TABLE
    assert read_all(tmp_path / "nof.pcap")["fcslen"] == [0]


@pytest.mark.parametrize("bit", [16, 20, 25])
def test_pcap_linktype_reserved_bits(tmp_path, bit):
    p = write(tmp_path, "res.pcap", pcap_file(CONV, linkfield=LINKTYPE_ETHERNET | (1 << bit)))
    r = track(p)
    assert r.returncode == 1 and r.stdout == ""
    line = check_damaged(r, [0, 20], "")
    assert "reserved" in line
    with pytest.raises(CaptureError):
        CaptureReader(p)


def test_pcap_linktype_low_16_bits(tmp_path):
    """Only the low 16 bits are the link type: raw IP (101) with the F bit and FCS 0 words."""
    pkts = [(ts, ip) for ts, (_, ip) in zip(CONV_TS, CONV_IP)]
    p = write(tmp_path, "raw.pcap", pcap_file(pkts, linkfield=LINKTYPE_RAW | 0x04000000))
    r = track(p)
    assert r.returncode == 0 and r.stdout == CONV_TABLE
    assert read_all(p)["linktypes"] == [LINKTYPE_RAW]


# ---------------------------------------------------------------------------------------------
# pcapng


def multi_section_blocks():
    """Two sections (little-, then big-endian), six interfaces, every packet block kind.

    Section 1 (LE): if0 Ethernet, no if_tsresol (microseconds); if1 raw IP (101), if_tsresol 9;
    if2 Ethernet, if_tsresol 0x80|20 (2^-20 s); if3 Ethernet, if_tsresol 9, if_tsoffset T seconds.
    Section 2 (BE): if0 IPv4 (228), if_tsresol 6 given explicitly; if1 Ethernet, if_tsresol 9.
    Global interface ids: 0-3 then 4-5.  Returns (blocks, per packet global iface)."""
    L, B = "<", ">"
    ips = [ip for _, ip in CONV_IP]
    ethf = [f for _, f in CONV]
    us = [ts // 1000 for ts in CONV_TS]
    out = [shb(L), idb(L, LINKTYPE_ETHERNET, name="eth0"), nrb(L),
           idb(L, LINKTYPE_RAW, tsresol=9, name="tun0"),
           idb(L, LINKTYPE_ETHERNET, tsresol=0x80 | 20, name="eth1"),
           idb(L, LINKTYPE_ETHERNET, tsresol=9, tsoffset=T, name="eth2"),
           epb(L, 0, us[0], ethf[0]),                                  # SYN, us
           epb(L, 1, CONV_TS[1], ips[1]),                              # SYN/ACK, raw IP, ns
           isb(L, 0, us[1]),
           epb(L, 2, T * 2**20 + 2**17, ethf[2]),                      # ACK at T + 0.125 s exactly
           spb(L, ethf[3]),                                            # UDP query: previous time
           *custom(L),
           opb(L, 3, CONV_TS[4] - T * NS, ethf[4]),                    # ICMP, ns after T
           shb(B), idb(B, LINKTYPE_IPV4, tsresol=6, name="v4"), idb(B, LINKTYPE_ETHERNET, tsresol=9),
           nrb(B),
           epb(B, 0, us[5], ips[5]),                                   # FIN, raw IPv4, us
           spb(B, ips[6]),                                             # FIN/ACK: section's if0
           isb(B, 1, CONV_TS[6]),
           opb(B, 1, CONV_TS[7], ethf[7]),
           *custom(B),
           epb(B, 1, CONV_TS[8], ethf[8])]
    return out, [0, 1, 2, 0, 3, 4, 4, 5, 5]


def multi_section_pcapng():
    blocks, ifaces = multi_section_blocks()
    return b"".join(blocks), ifaces


def test_pcapng_sections_interfaces_blocks(tmp_path):
    data, ifaces = multi_section_pcapng()
    p = write(tmp_path, "multi.pcapng", data)
    ref = write(tmp_path, "ref.pcap", pcap_file(CONV, nsec=True))
    runs = track_many([(p, []), (p, ["--batch-size", 1]), (p, ["--batch-size", 2]), (ref, [])])
    for r in runs:
        assert r.returncode == 0, r.stderr
        assert r.stdout == CONV_TABLE
        assert stderr_lines(r) == [f"fastct {__version__}: 3 flow entries have been shown."]
    for bs in (1, 2, 3, 4096):
        got = read_all(p, batch_size=bs)
        assert got["format"] == "pcapng" and got["error"] is None
        assert got["ts"] == CONV_TS, bs
        assert got["iface"] == ifaces
        assert got["linktypes"] == [1, 101, 1, 1, 228, 1]
        expect_frames = [f if lt == 1 else ip for (_, f), (_, ip), lt in
                         zip(CONV, CONV_IP, [[1, 101, 1, 1, 228, 1][i] for i in ifaces])]
        assert got["frames"] == expect_frames
        assert got["caplen"] == got["wirelen"] == [len(f) for f in expect_frames]
        assert [i.name for i in got["interfaces"]] == ["eth0", "tun0", "eth1", "eth2", "v4", "if"]


def test_pcapng_power_of_two_resolution_rounding(tmp_path):
    """2^-20 s ticks that are not whole nanoseconds: tick k is k * 10^9 / 2^20 ns (953.67... ns)."""
    frame = CONV[0][1]
    ticks = [T * 2**20, T * 2**20 + 1, T * 2**20 + 3, (T + 1) * 2**20 - 1]
    data = shb() + idb("<", LINKTYPE_ETHERNET, tsresol=0x80 | 20) + b"".join(epb("<", 0, k, frame) for k in ticks)
    got = read_all(write(tmp_path, "p2.pcapng", data))
    exact = [k * NS / 2**20 for k in ticks]
    assert all(abs(g - x) < 1 for g, x in zip(got["ts"], exact)), (got["ts"], exact)


@pytest.mark.parametrize("e", ["<", ">"])
def test_pcapng_resolutions_each_byte_order(tmp_path, e):
    """if_tsresol 6 (the default), 3 (ms), 9 (ns), 0x80|10 (2^-10 s), with an if_tsoffset."""
    frame = CONV[0][1]
    data = shb(e) + idb(e, 1) + idb(e, 1, tsresol=3) + idb(e, 1, tsresol=9, tsoffset=-5) + \
        idb(e, 1, tsresol=0x80 | 10, tsoffset=7) + \
        epb(e, 0, T * 10**6 + 1, frame) + epb(e, 1, T * 1000 + 2, frame) + \
        epb(e, 2, T * NS + 3, frame) + epb(e, 3, T * 1024 + 512, frame)
    got = read_all(write(tmp_path, "r.pcapng", data))
    assert got["ts"] == [T * NS + 1000, T * NS + 2_000_000, (T - 5) * NS + 3, (T + 7) * NS + NS // 2]
    assert got["iface"] == [0, 1, 2, 3]


def test_pcapng_spb_first_packet_and_caplen(tmp_path):
    """An SPB's captured length is its data less the padding: min(original length, block data,
    snaplen).  One at the start of a section has no previous packet in it: it takes the previous
    packet of the file (or 0 when there is none)."""
    f = CONV[3][1]      # 54 bytes: 2 padding bytes in the block
    data = shb() + idb("<", 1, snaplen=0) + spb("<", f) + epb("<", 0, 5, f) + \
        shb() + idb("<", 1, snaplen=40) + spb("<", f) + \
        shb() + idb("<", 1, snaplen=0) + spb("<", f[:50], wirelen=len(f))
    got = read_all(write(tmp_path, "spb.pcapng", data))
    assert got["ts"] == [0, 5000, 5000, 5000]
    assert got["iface"] == [0, 0, 1, 2]
    assert got["caplen"] == [len(f), len(f), 40, 52]   # last: 50 bytes + 2 padding, wirelen 54
    assert got["wirelen"] == [len(f)] * 4


def test_shipped_multi_iface_pcapng():
    got = read_all(PCAPS / "multi_iface.pcapng")
    t0 = 1_700_000_000 * NS
    ms = [0, 500, 1000, 3000, 3100]
    # pcaps/README.md: file 4 with requests on if0 (Ethernet, us), replies on if1 (raw IP, ns), then
    # an SPB (if0) with no timestamp: it takes the time of the packet before it.
    assert got["ts"] == [t0 + m * 1_000_000 for m in ms] + [t0 + 3100 * 1_000_000]
    assert got["iface"] == [0, 1, 0, 0, 1, 0]
    assert got["linktypes"] == [1, 101]
    assert got["caplen"] == [62, 68, 52, 62, 68, 98]
    r = track(PCAPS / "multi_iface.pcapng")
    assert r.returncode == 0
    # now = T0 + 3.1 s.  UDP 5353: replied, still active more than 2 s after its first packet ->
    # stream: ASSURED, 120 s from now.  UDP 6000: one packet at +1.0: 30 - 2.1 -> 27.  ICMP echo
    # request (the SPB) at now: 30.  delta-time = 1700000003 - start's whole seconds.
    assert r.stdout == (
        "ipv4     2 udp      17 120 src=192.168.0.2 dst=10.0.0.2 sport=5353 dport=53 packets=2 bytes=96 "
        "src=10.0.0.2 dst=192.168.0.2 sport=53 dport=5353 packets=2 bytes=136 [ASSURED] mark=0 "
        "delta-time=3 use=1\n"
        "ipv4     2 udp      17 27 src=192.168.0.2 dst=10.0.0.3 sport=6000 dport=7000 packets=1 bytes=38 "
        "[UNREPLIED] src=10.0.0.3 dst=192.168.0.2 sport=7000 dport=6000 packets=0 bytes=0 mark=0 "
        "delta-time=2 use=1\n"
        "ipv4     2 icmp     1 30 src=192.168.0.2 dst=8.8.8.8 type=8 code=0 id=4660 packets=1 bytes=84 "
        "[UNREPLIED] src=8.8.8.8 dst=192.168.0.2 type=0 code=0 id=4660 packets=0 bytes=0 mark=0 "
        "delta-time=0 use=1\n")
    check_summary(r)


# ---------------------------------------------------------------------------------------------
# damaged files: truncation at every byte of the last two records


def mixed_demo_records():
    """(ts_ns, frame) of pcaps/mixed_demo.pcap, read with struct (LE microsecond pcap)."""
    data = (PCAPS / "mixed_demo.pcap").read_bytes()
    assert struct.unpack("<I", data[:4])[0] == 0xA1B2C3D4
    out, pos = [], 24
    while pos < len(data):
        sec, usec, cl, wl = struct.unpack_from("<IIII", data, pos)
        out.append((sec * NS + usec * 1000, data[pos + 16:pos + 16 + cl]))
        pos += 16 + cl
    assert len(out) == 40
    return out


def demo_files():
    """The mixed_demo packets as a pcap and as a pcapng: name -> (bytes, record start offsets)."""
    recs = mixed_demo_records()
    pcap = pcap_file(recs)
    starts, size = pcap_offsets(recs)
    assert size == len(pcap) == (PCAPS / "mixed_demo.pcap").stat().st_size
    head = shb() + idb("<", LINKTYPE_ETHERNET)
    blocks = [epb("<", 0, ts // 1000, f) for ts, f in recs]
    ng_starts, pos = [], len(head)
    for b in blocks:
        ng_starts.append(pos)
        pos += len(b)
    return {"pcap": (pcap, starts), "pcapng": (head + b"".join(blocks), ng_starts)}


TRUNCATE_DRIVER = r"""
import contextlib, io, json, sys, traceback
from fastct.cli import main
res = []
for path in sys.argv[1:]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(["track", path])
        except SystemExit as exc:
            rc = exc.code
        except BaseException:
            traceback.print_exc()
            rc = -1
    res.append([rc, out.getvalue(), err.getvalue()])
json.dump(res, sys.stdout)
"""


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_truncated_at_every_offset(tmp_path, fmt):
    data, starts = demo_files()[fmt]
    a, b = starts[-2], starts[-1]
    cuts = [c for c in range(a, len(data)) if c not in (a, b)]

    def expect(cut):     # (offset of the damaged record, complete records before the cut)
        return (a, len(starts) - 2) if cut < b else (b, len(starts) - 1)

    # the good prefixes, each a complete file: exactly the records before the damaged one
    pre_a, pre_b = write(tmp_path, "pre_a", data[:a]), write(tmp_path, "pre_b", data[:b])
    paths = []
    for c in cuts:
        paths.append(write(tmp_path, f"cut{c}", data[:c]))
    # the real command on the prefixes and on a sample of cuts (in the header, just after the
    # header, in the data, one byte short), all in parallel
    sample = [a + 1, a + 11, a + 15, a + 16, a + 17, b - 1, b + 1, b + 12, len(data) - 4, len(data) - 1]
    runs = track_many([(pre_a, []), (pre_b, [])] + [(tmp_path / f"cut{c}", []) for c in sample])
    good = {a: runs[0], b: runs[1]}
    for g in good.values():
        assert g.returncode == 0 and g.stdout, g.stderr
        check_summary(g)
    assert good[a].stdout != good[b].stdout
    for c, r in zip(sample, runs[2:]):
        off, _ = expect(c)
        check_damaged(r, off, good[off].stdout)
    # every cut: the command's main() in one interpreter (a subprocess per cut would take minutes)
    proc = subprocess.run([sys.executable, "-c", TRUNCATE_DRIVER] + [str(p) for p in paths],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    for c, (rc, out, err) in zip(cuts, results):
        off, _ = expect(c)
        assert "Traceback" not in err, (c, err)
        assert rc == 1, (c, rc, err)
        assert out == good[off].stdout, c
        errs = [ln for ln in err.splitlines() if ln.startswith("fastct: error:")]
        assert len(errs) == 1 and f"at byte offset {off}:" in errs[0], (c, off, err)
        assert SUMMARY.match(err.splitlines()[0]), err
    # and the reader itself: the packets before the damage, then the error with its offset
    for c in cuts:
        off, n = expect(c)
        got = read_all(tmp_path / f"cut{c}", batch_size=7)
        assert got["packets"] == n and len(got["ts"]) == n, c
        assert isinstance(got["error"], CaptureError) and got["error"].offset == off, (c, got["error"])


def test_multi_section_pcapng_truncated_at_every_offset(tmp_path):
    """The two-section file cut at every byte: a cut on a block boundary is a good (shorter) file
    whose table is the reference pcap's for the packets before it; a cut inside a block gives exit
    1, that same table, and the block's start as the damage's offset."""
    blocks, _ = multi_section_blocks()
    data = b"".join(blocks)
    # each block's start, and how many packet blocks (types 2, 3, 6) come before it
    starts, npk, pos, k, order = [], [], 0, 0, "<"
    for blk in blocks:
        starts.append(pos)
        npk.append(k)
        pos += len(blk)
        if blk[:4] == b"\x0a\x0d\x0d\x0a":
            order = ">" if blk[8:12] == b"\x1a\x2b\x3c\x4d" else "<"
        elif struct.unpack_from(order + "I", blk)[0] in (2, 3, 6):
            k += 1
    assert k == len(CONV)
    refs = [write(tmp_path, f"ref{n}.pcap", pcap_file(CONV[:n], nsec=True)) for n in range(len(CONV) + 1)]
    cuts = list(range(1, len(data)))
    paths = [write(tmp_path, f"c{c}", data[:c]) for c in cuts]
    proc = subprocess.run([sys.executable, "-c", TRUNCATE_DRIVER] + [str(p) for p in refs + paths],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    ref_out = [out for _, out, _ in results[:len(refs)]]
    assert ref_out[-1] == CONV_TABLE
    problems = []
    for c, (rc, out, err) in zip(cuts, results[len(refs):]):
        b = max(i for i, s in enumerate(starts) if s <= c)       # the block the cut falls in
        if "Traceback" in err:
            problems.append((c, "traceback", err.strip().splitlines()[-1]))
            continue
        if c in starts:                                            # a clean boundary
            if rc != 0 or out != ref_out[npk[b]]:
                problems.append((c, "boundary", rc, err))
            continue
        errs = [ln for ln in err.splitlines() if ln.startswith("fastct: error:")]
        if rc != 1 or out != ref_out[npk[b]] or len(errs) != 1 or f"at byte offset {starts[b]}:" not in errs[0]:
            problems.append((c, "cut", rc, starts[b], err.strip()))
    kinds = sorted({(p[1], p[-1].strip().splitlines()[-1][:70]) for p in problems})
    assert not problems, f"{len(problems)} of {len(cuts)} cuts wrong, e.g. " + \
        "\n".join(map(str, problems[:8])) + f"\nkinds: {kinds}"


# ---------------------------------------------------------------------------------------------
# damaged files: bad headers and records


GOOD = CONV[:3]                 # the handshake: one entry (SYN_RECV... then ESTABLISHED)


def good_prefix_table(tmp_path, fmt="pcap"):
    """stdout of the command on a clean file holding just the GOOD packets."""
    data = pcap_file(GOOD) if fmt == "pcap" else pcapng_single(GOOD)
    r = track(write(tmp_path, "good." + fmt, data))
    assert r.returncode == 0 and r.stdout.count("\n") == 1 and "ESTABLISHED" in r.stdout
    return r.stdout


BAD_HEADERS = [
    ("bad magic", b"\x0b\xad\xca\xfe" + pcap_file(CONV)[4:], [0]),
    ("empty file", b"", [0]),
    ("3 bytes", b"\xd4\xc3\xb2", [0]),
    ("header of 4 bytes", pcap_header()[:4], [0]),
    ("header of 10 bytes", pcap_header()[:10], [0]),
    ("header of 23 bytes", pcap_header()[:23], [0]),
    ("big-endian header of 23 bytes", pcap_header(">")[:23], [0]),
    ("major version 1", pcap_header(major=1, minor=0) + pcap_record(T * NS, CONV[0][1]), [0, 4]),
    ("major version 3", pcap_header(">", major=3) + pcap_record(T * NS, CONV[0][1], ">"), [0, 4]),
    ("pcapng: bad version", shb(major=2) + idb("<", 1) + epb("<", 0, T * 10**6, CONV[0][1]), [0, 12]),
    ("pcapng: bad byte-order magic", shb(bom=0x11223344) + idb("<", 1), [0, 8]),
    ("pcapng: SHB truncated", shb()[:20], [0]),
    ("pcapng: IDB cut after 5 bytes", shb() + idb("<", 1)[:5], [len(shb())]),
    ("pcapng: SHB length not a multiple of 4", shb()[:4] + struct.pack("<I", 30) + shb()[8:], [0]),
]


@pytest.mark.parametrize("name,data,offsets", BAD_HEADERS, ids=[c[0] for c in BAD_HEADERS])
def test_bad_headers(tmp_path, name, data, offsets):
    r = track(write(tmp_path, "bad.cap", data))
    line = check_damaged(r, offsets, "")
    assert "bad.cap" in line


def _damage_cases():
    """(name, fmt, bytes after the GOOD packets, where the damage may be said to start, counted
    from the end of the GOOD packets: the damaged block, or the field inside it that is wrong)."""
    e = "<"
    f = CONV[3][1]
    t = T * NS + 10**9
    big = b"\0" * 262145
    return [
        ("pcap: caplen over the maximum", "pcap", pcap_record(t, big), (0,)),
        ("pcap: caplen 2^31", "pcap", struct.pack("<IIII", T + 1, 0, 1 << 31, 60) + f, (0,)),
        ("pcap: usec fraction 10^6", "pcap", pcap_record(t, f, frac=1_000_000), (0,)),
        ("pcap: usec fraction 2^32-1", "pcap", pcap_record(t, f, frac=0xFFFFFFFF), (0,)),
        ("pcapng: option past its block", "pcapng",
         ng_block(e, 1, struct.pack(e + "HHI", 1, 0, 0) + struct.pack(e + "HH", 2, 64) + b"eth9"), (0, 16)),
        ("pcapng: option past its block (if_tsresol)", "pcapng",
         ng_block(e, 1, struct.pack(e + "HHI", 1, 0, 0) + struct.pack(e + "HH", 9, 5) + b"\x06\0\0\0"), (0, 16)),
        ("pcapng: EPB names interface 1", "pcapng", epb(e, 1, t // 1000, f), (0,)),
        ("pcapng: EPB names interface 65536", "pcapng", epb(e, 65536, t // 1000, f), (0,)),
        ("pcapng: OPB names interface 3", "pcapng", opb(e, 3, t // 1000, f), (0,)),
        ("pcapng: EPB caplen over the maximum", "pcapng",
         ng_block(e, 6, struct.pack(e + "IIIII", 0, 0, 0, 1 << 25, 60) + f + b"\0\0"), (0,)),
        ("pcapng: EPB caplen past its block", "pcapng",
         ng_block(e, 6, struct.pack(e + "IIIII", 0, 0, 0, 200, 60) + f + b"\0\0"), (0,)),
        ("pcapng: block length not a multiple of 4", "pcapng",
         struct.pack(e + "II", 6, 34) + b"\0" * 26, (0,)),
        ("pcapng: block length 8", "pcapng", struct.pack(e + "III", 6, 8, 8), (0,)),
        ("pcapng: trailer differs", "pcapng", epb(e, 0, t // 1000, f)[:-4] + struct.pack(e + "I", 4), (0,)),
        ("pcapng: second section, bad version", "pcapng", shb(major=3) + idb(e, 1), (0, 12)),
        ("pcapng: second section, bad byte-order magic", "pcapng", shb(bom=0x1A2B3C4E), (0, 8)),
        ("pcapng: next section's IDB cut after 6 bytes", "pcapng", shb(">") + idb(">", 1)[:6],
         (len(shb(">")),)),
        ("pcapng: second IDB cut after 4 bytes", "pcapng", idb(e, 101)[:4], (0,)),
        ("pcapng: if_tsoffset of 2^62 s (not representable in ns)", "pcapng",
         idb(e, 1, tsoffset=2**62) + epb(e, 1, 5, f), (0, 16 + 8, 16 + 8 + 4, len(idb(e, 1, tsoffset=2**62)))),
    ]


@pytest.mark.parametrize("name,fmt,tail,extra", _damage_cases(), ids=[c[0] for c in _damage_cases()])
def test_damaged_record_after_good_packets(tmp_path, name, fmt, tail, extra):
    head = pcap_file(GOOD) if fmt == "pcap" else pcapng_single(GOOD)
    p = write(tmp_path, "damaged." + fmt, head + tail)
    r = track(p)
    allowed = [len(head) + x for x in extra]
    check_damaged(r, allowed, good_prefix_table(tmp_path, fmt))
    got = read_all(p)
    assert got["packets"] == len(GOOD) and got["ts"] == CONV_TS[:3]
    assert got["error"].offset in allowed


def test_nanosecond_fraction_limit(tmp_path):
    f = CONV[0][1]
    ok = pcap_header(nsec=True) + pcap_record(0, f, nsec=True, frac=999_999_999)
    assert read_all(write(tmp_path, "ok.pcap", ok))["ts"] == [999_999_999]
    head = pcap_file(GOOD, nsec=True)
    bad = write(tmp_path, "bad.pcap", head + pcap_record(0, f, nsec=True, frac=1_000_000_000))
    check_damaged(track(bad), len(head), good_prefix_table(tmp_path))
    # the limit is the microsecond one in a microsecond file: 999999 fine, 10^6 not
    assert read_all(write(tmp_path, "us.pcap", pcap_header() + pcap_record(0, f, frac=999_999)))["ts"] \
        == [999_999_000]


def test_caplen_at_the_maximum_is_fine(tmp_path):
    """262144 (libpcap's largest snapshot length) is allowed; the IP packet inside counts its own
    total length, not the frame's."""
    frame = CONV[3][1] + b"\0" * (262144 - len(CONV[3][1]))
    p = write(tmp_path, "max.pcap", pcap_file(GOOD + [(CONV_TS[3], frame)]))
    r = track(p)
    assert r.returncode == 0, r.stderr
    assert "sport=5000 dport=53 packets=1 bytes=40 [UNREPLIED]" in r.stdout


def test_interface_ids_restart_per_section(tmp_path):
    """Section 1 has two interfaces; section 2 one: its EPB naming interface 1 is damage even though
    the file has a second interface (in another section)."""
    e = "<"
    s1 = shb() + idb(e, 1) + idb(e, 1) + epb(e, 1, CONV_TS[0] // 1000, CONV[0][1]) + \
        epb(e, 0, CONV_TS[1] // 1000, CONV[1][1])
    s2 = shb(">") + idb(">", 1) + epb(">", 0, CONV_TS[2] // 1000, CONV[2][1])
    bad = epb(">", 1, CONV_TS[3] // 1000, CONV[3][1])
    p = write(tmp_path, "sect.pcapng", s1 + s2 + bad)
    check_damaged(track(p), len(s1 + s2), good_prefix_table(tmp_path))
    got = read_all(p)
    assert got["iface"] == [1, 0, 2] and got["error"].offset == len(s1 + s2)


# ---------------------------------------------------------------------------------------------
# command line


def test_missing_file(tmp_path):
    r = track(tmp_path / "nope.pcap")
    assert r.returncode == 1 and r.stdout == ""
    assert "nope.pcap" in error_line(r)


def test_directory(tmp_path):
    r = track(tmp_path)
    assert r.returncode == 1 and r.stdout == ""
    assert str(tmp_path) in error_line(r)


@pytest.mark.parametrize("args", [["--zone", "70000"], ["--zone", "-1"], ["--max-conns", "0"],
                                  ["--max-conns", "abc"], ["--batch-size", "0"], ["--bogus"],
                                  ["--zone-from", "mpls"]])
def test_bad_options(args):
    r = track(PCAPS / "mixed_demo.pcap", *args)
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    assert "error" in r.stderr and len(r.stderr) < 2000


def test_absurd_max_conns():
    r = track(PCAPS / "mixed_demo.pcap", "--max-conns", "1073741822")
    assert r.returncode == 2, r.stderr
    assert "MemoryError" not in r.stderr and r.stdout == ""
    assert len(stderr_lines(r)) == 1 and "max" in r.stderr and "error" in r.stderr


@pytest.mark.parametrize("name,data", [
    ("header.pcap", pcap_header()),
    ("header.be.ns.pcap", pcap_header(">", True)),
    ("shb.pcapng", shb()),
    ("shb_idb.pcapng", shb() + idb("<", 1)),
    ("shb_idb.be.pcapng", shb(">") + idb(">", 1) + nrb(">")),
])
def test_no_packets(tmp_path, name, data):
    r = track(write(tmp_path, name, data))
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert stderr_lines(r) == [f"fastct {__version__}: 0 flow entries have been shown."]


def test_only_unhandled_link_type(tmp_path):
    r = track(write(tmp_path, "user0.pcap", pcap_file(CONV, linkfield=LINKTYPE_USER0)))
    assert r.returncode == 1
    assert r.stdout == ""
    check_summary(r)
    assert any("link type 147" in ln for ln in stderr_lines(r)), r.stderr
    error_line(r)


def test_unhandled_link_type_beside_a_handled_one(tmp_path):
    e = "<"
    data = shb() + idb(e, LINKTYPE_ETHERNET) + idb(e, LINKTYPE_USER0) + \
        b"".join(epb(e, 0, ts // 1000, f) for ts, f in CONV) + epb(e, 1, CONV_TS[-1] // 1000, CONV[0][1]) + \
        epb(e, 1, CONV_TS[-1] // 1000, CONV[1][1])
    r = track(write(tmp_path, "mix.pcapng", data))
    assert r.returncode == 0, r.stderr
    assert r.stdout == CONV_TABLE
    assert "skipped 2 frames of link type 147" in r.stderr


def test_batch_size_does_not_matter():
    sizes = [1, 7, 64, 4096]
    runs = track_many([(PCAPS / "mixed_demo.pcap", ["--batch-size", n, "--seed", 5]) for n in sizes] +
                      [(PCAPS / "mixed_demo.pcap", ["--batch-size", n, "--seed", 5, "--stats"])
                       for n in (1, 4096)])
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert len({r.stdout for r in runs[:4]}) == 1
    assert runs[0].stdout.count("\n") == 12
    # the conntrack -S counters do not depend on it either
    cpu = [[ln for ln in r.stdout.splitlines() if ln.startswith("cpu=")] for r in runs[4:]]
    assert cpu[0] == cpu[1] and len(cpu[0]) == 1


def test_stats_line():
    plain, stats = track_many([(PCAPS / "mixed_demo.pcap", []), (PCAPS / "mixed_demo.pcap", ["--stats"])])
    assert plain.returncode == stats.returncode == 0
    table = plain.stdout.splitlines()
    lines = stats.stdout.splitlines()
    assert lines[:len(table)] == table
    m = STATS_LINE.match(lines[len(table)])
    assert m, repr(lines[len(table)])
    # mixed_demo: 13 flows on the wire; the unsolicited ICMP echo reply (8.8.4.4) is invalid and
    # creates no entry (icmp_packet refuses a reply as a new connection), so 12 inserts, 1 invalid.
    assert int(m.group(3)) == 12 == len(table)
    assert int(m.group(2)) == 1
    assert int(m.group(10)) == 0 and int(m.group(4)) == int(m.group(5)) == 0
    check_summary(plain)
    check_summary(stats)


@pytest.mark.parametrize("name", ["mixed_demo.pcap", "icmp_echo.pcap", "vlan_qinq.pcap", "ipv6_mixed.pcap",
                                  "multi_iface.pcapng"])
def test_summary_counts_table_lines(name):
    r = track(PCAPS / name)
    assert r.returncode == 0
    check_summary(r)


# ---------------------------------------------------------------------------------------------
# Ctrl-C


def big_capture(path, n=2_500_000):
    """n small UDP packets (42-byte frames), 60000 different source ports, 1 us apart."""
    frame = bytearray(eth(udp_ip("10.1.0.1", "10.2.0.1", 1000, 53, b"")))
    frame[14 + 20 + 6:14 + 20 + 8] = b"\0\0"        # UDP checksum 0 = none (ports change below)
    rl = 16 + len(frame)
    rec = np.frombuffer(struct.pack("<IIII", 0, 0, len(frame), len(frame)) + bytes(frame), np.uint8)
    arr = np.tile(rec, n).reshape(n, rl)
    i = np.arange(n, dtype=np.int64)
    hdr = np.empty((n, 2), dtype="<u4")
    hdr[:, 0] = T + i // 1_000_000
    hdr[:, 1] = i % 1_000_000
    arr[:, :8] = hdr.view(np.uint8).reshape(n, 8)
    arr[:, 16 + 34:16 + 36] = (1024 + i % 60000).astype(">u2").view(np.uint8).reshape(n, 2)
    with open(path, "wb") as fh:
        fh.write(pcap_header())
        fh.write(arr.data)


def _mapped(pid, path):
    try:
        with open(f"/proc/{pid}/maps") as fh:
            return str(path) in fh.read()
    except OSError:
        return False


def test_ctrl_c(tmp_path):
    path = tmp_path / "big.pcap"
    big_capture(path)
    proc = subprocess.Popen(CLI + [str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)
    try:
        deadline = time.monotonic() + 10
        if os.path.isdir("/proc"):
            # wait until the capture is mapped: the interpreter is past its imports and reading
            while not _mapped(proc.pid, path) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(0.05)
        else:
            time.sleep(0.3)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "interrupted" in err
    m = SUMMARY.match(err.splitlines()[0])
    assert m and int(m.group(1)) == out.count("\n")
    assert out.count("\n") <= 60000

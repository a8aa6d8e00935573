"""Differential tests against the running kernel's conntrack (issue 12, item 9).

Each scenario builds a fresh client — gateway — server lab of network namespaces (tests/netns_lab.py),
sends real or crafted traffic through the gateway, and records there, right after conntrack, every
packet with the kernel's verdict for it (an NFLOG record whose prefix names the ct state and
direction).  That capture is fed to fastct as is, so both see the same packets in the same order.
Compared: each packet's ct_state (kernel verdict mapped to OVS bits) and the final tables, fastct's
(`conntrack -L -o extended` format) against `conntrack -L -o extended` in the gateway right after the
traffic: tuples, TCP state, [ASSURED]/[UNREPLIED], per-direction packets and bytes, mark, timeout and
delta-time within 2 s.  Crafted TCP scenarios send one packet at a time (each only once the gateway
logged the previous one) and also compare the flow's entry after every packet.  Where a scenario is
built to make the kernel say something specific, that is checked too ("lab check"): a failure there
points at the lab, not at fastct.

Scenarios: TCP lifecycle with real sockets (IPv4, IPv6), bulk transfer, crafted lifecycle, RST (real
and crafted), SYN to a closed port, unanswered SYN retransmitted, invalid TCP (SYN+FIN, no flags,
ACK far out of window), mid-stream pickup, reopening a TIME_WAIT entry, UDP request/response (IPv4,
IPv6), one-way, stream, UDP to a closed port (ICMP/ICMPv6 error: related), ICMP/ICMPv6 echo.

Needs root, `ip netns`, nft, conntrack and tcpdump; skipped without them (failed instead when CI is
set and a tool is missing).
"""
from __future__ import annotations

import functools
import os
import socket
import textwrap
import time
from dataclasses import dataclass

import dpkt
import pytest

from conntrack_lines import parse_table
from netns_lab import NetnsLab, list_namespaces, missing_tools, read_nflog, sweep_stale, unavailable_reason

pytestmark = pytest.mark.kernel

# The kernel's verdict (the NFLOG prefix) as the OVS ct_state bits fastct reports.
TRK, NEW, EST, REL, RPL, INV = 0x20, 0x01, 0x02, 0x04, 0x08, 0x10
VERDICT_BITS = {
    "new": TRK | NEW, "est": TRK | EST, "est,rpl": TRK | EST | RPL,
    "rel": TRK | REL, "rel,rpl": TRK | REL | RPL, "inv": TRK | INV, "untracked": 0,
}
BIT_NAMES = {v: k for k, v in VERDICT_BITS.items()}
TIME_SLACK = 2          # seconds: timeouts and delta-times may differ by this much

C4, S4 = NetnsLab.CLIENT4, NetnsLab.SERVER4
C6, S6 = NetnsLab.CLIENT6, NetnsLab.SERVER6
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
# MSS 1460, NOP, window scale 7, SACK permitted, NOP, NOP: what Linux puts in a SYN (minus timestamps).
SYN_OPTS = b"\x02\x04\x05\xb4\x01\x03\x03\x07\x04\x02\x01\x01"


@functools.lru_cache(maxsize=1)
def _unavailable():
    return unavailable_reason()


@pytest.fixture
def lab():
    reason = _unavailable()
    if reason:
        if os.environ.get("CI") and missing_tools():
            pytest.fail(f"CI must be able to run the kernel differential tests: {reason} "
                        f"(apt packages: iproute2 nftables conntrack tcpdump)")
        pytest.skip(f"cannot build network namespaces for the kernel differential tests: {reason}")
    sweep_stale()
    with NetnsLab() as the_lab:
        names = list(the_lab.namespaces)
        yield the_lab
    left = [n for n in names if n in list_namespaces()]
    assert not left, f"namespaces left behind: {left}"


# ---- observing the kernel and running fastct ---------------------------------------------------------
@dataclass
class Run:
    pcap: object             # the capture file
    records: list            # (ts, family, prefix, ip bytes) per packet, as the gateway logged them
    kernel: list             # the kernel's ct_state per packet
    fastct: list             # fastct's ct_state per packet
    kernel_text: str         # conntrack -L -o extended in the gateway
    fastct_text: str         # fastct's table in the same format

    def flow(self, port):
        """Indices of the TCP/UDP packets with `port` at either end."""
        out = []
        for i, (_, fam, _, payload) in enumerate(self.records):
            l4 = _l4(fam, payload)
            if isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)) and port in (l4.sport, l4.dport):
                out.append(i)
        return out


def observe(lab, tmp_path, traffic) -> Run:
    """Run `traffic(cap)` while the gateway's verdicts are captured, take the kernel's table, then
    track the capture with fastct."""
    pcap = tmp_path / "gateway_nflog.pcap"
    with lab.capture(pcap) as cap:
        traffic(cap)
        cap.settle()
        kernel_text = lab.conntrack_table()
    records = read_nflog(pcap)
    unknown = [(i + 1, r[2]) for i, r in enumerate(records) if r[2] not in VERDICT_BITS]
    assert not unknown, f"records without a known verdict prefix (packet number, prefix): {unknown}"
    assert all(r[3] for r in records), "an NFLOG record without its packet"
    states, text = run_fastct(pcap)
    assert len(states) == len(records), f"fastct read {len(states)} packets, the capture has {len(records)}"
    return Run(pcap, records, [VERDICT_BITS[r[2]] for r in records], states, kernel_text, text)


def fastct_tables_after(pcap, indices):
    """fastct's table (parsed) after each packet whose index is in `indices`, packet by packet."""
    from fastct import CaptureReader, Tracker
    from fastct.conntrack_fmt import format_table
    tracker = Tracker(seed=1)
    tables = {}
    reader = CaptureReader(pcap, batch_size=1)
    try:
        for i, batch in enumerate(reader):
            tracker.process(batch)
            if i in indices:
                tables[i] = parse_table("\n".join(
                    format_table(tracker.entries(), tracker.cold()["start"], tracker.now)))
    finally:
        reader.close()
    return tables


def run_fastct(pcap):
    from fastct import CaptureReader, Tracker
    from fastct.conntrack_fmt import format_table
    tracker = Tracker(seed=1)
    states = []
    reader = CaptureReader(pcap, batch_size=7)     # several batches, so batch edges are crossed too
    try:
        for batch in reader:
            states += [int(s) for s in tracker.process(batch).ct_state]
        assert reader.error is None, reader.error
    finally:
        reader.close()
    lines = format_table(tracker.entries(), tracker.cold()["start"], tracker.now)
    return states, "\n".join(lines) + ("\n" if lines else "")


def icmp_messages(run: Run):
    """Per packet: its ICMP/ICMPv6 header (dpkt), or None for other packets."""
    out = []
    for _, fam, _, payload in run.records:
        l4 = _l4(fam, payload)
        out.append(l4 if isinstance(l4, (dpkt.icmp.ICMP, dpkt.icmp6.ICMP6)) else None)
    return out


def _l4(family, payload):
    try:
        ip = dpkt.ip.IP(payload) if family == 2 else dpkt.ip6.IP6(payload)
    except (dpkt.UnpackError, IndexError, ValueError):
        return None
    return ip.data


def summary(family, payload) -> str:
    """One line describing an IP packet."""
    try:
        ip = dpkt.ip.IP(payload) if family == 2 else dpkt.ip6.IP6(payload)
    except (dpkt.UnpackError, IndexError, ValueError):
        return f"family {family}, {len(payload)} bytes (not parsed)"
    af = socket.AF_INET if family == 2 else socket.AF_INET6
    src, dst = socket.inet_ntop(af, ip.src), socket.inet_ntop(af, ip.dst)
    proto = ip.p
    l4 = ip.data
    head = f"IPv{4 if family == 2 else 6} len={len(payload)}"
    if isinstance(l4, dpkt.tcp.TCP):
        flags = "".join(c for bit, c in ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "."))
                        if l4.flags & bit) or "none"
        return (f"{head} TCP {src}:{l4.sport} > {dst}:{l4.dport} [{flags}] seq={l4.seq} ack={l4.ack} "
                f"win={l4.win} data={len(l4.data)}")
    if isinstance(l4, dpkt.udp.UDP):
        return f"{head} UDP {src}:{l4.sport} > {dst}:{l4.dport} data={len(l4.data)}"
    if isinstance(l4, (dpkt.icmp.ICMP, dpkt.icmp6.ICMP6)):
        name = "ICMP" if family == 2 else "ICMPv6"
        extra = ""
        if isinstance(l4.data, (dpkt.icmp.ICMP.Echo, dpkt.icmp6.ICMP6.Echo)):
            extra = f" id={l4.data.id} seq={l4.data.seq}"
        return f"{head} {name} {src} > {dst} type={l4.type} code={l4.code}{extra}"
    return f"{head} proto={proto} {src} > {dst}"


def verdict_name(bits: int) -> str:
    return BIT_NAMES.get(bits, f"0x{bits:02x}")


def compare(run: Run) -> list[str]:
    """Every difference between the kernel and fastct, as lines for an assertion message."""
    problems = []
    t0 = run.records[0][0] if run.records else 0.0
    for i, (k, f) in enumerate(zip(run.kernel, run.fastct)):
        if k != f:
            ts, fam, _, payload = run.records[i]
            problems.append(f"packet #{i + 1} (+{ts - t0:.3f} s) {summary(fam, payload)}: "
                            f"kernel {verdict_name(k)} (0x{k:02x}), fastct {verdict_name(f)} (0x{f:02x})")
    kernel = {(r["l3"], r["proto"], r["orig"]): r for r in parse_table(run.kernel_text)}
    ours = {(r["l3"], r["proto"], r["orig"]): r for r in parse_table(run.fastct_text)}
    for key, k in kernel.items():
        o = ours.pop(key, None)
        if o is None:
            problems.append(f"table: fastct has no entry {' '.join(key[2])} (proto {key[1]})")
            continue
        for field in ("state", "reply", "counters", "flags"):
            if o[field] != k[field]:
                problems.append(f"table {' '.join(key[2])}: {field} kernel {k[field]}, fastct {o[field]}")
        if o["extras"].get("mark") != k["extras"].get("mark"):
            problems.append(f"table {' '.join(key[2])}: mark kernel {k['extras'].get('mark')}, "
                            f"fastct {o['extras'].get('mark')}")
        if abs(o["timeout"] - k["timeout"]) > TIME_SLACK:
            problems.append(f"table {' '.join(key[2])}: timeout kernel {k['timeout']}, fastct {o['timeout']}")
        kd, od = k["extras"].get("delta-time"), o["extras"].get("delta-time")
        if kd is None or od is None or abs(int(kd) - int(od)) > TIME_SLACK:
            problems.append(f"table {' '.join(key[2])}: delta-time kernel {kd}, fastct {od}")
    for key in ours:
        problems.append(f"table: fastct has an entry the kernel has not: {' '.join(key[2])} (proto {key[1]})")
    return problems


def report(run: Run, problems) -> str:
    t0 = run.records[0][0] if run.records else 0.0
    listing = [f"  #{i + 1:<3} +{ts - t0:7.3f} s  kernel {verdict_name(k):<9} fastct {verdict_name(f):<9} "
               f"{summary(fam, payload)}"
               for i, ((ts, fam, _, payload), k, f) in enumerate(zip(run.records, run.kernel, run.fastct))]
    return ("fastct differs from the kernel's conntrack:\n  " + "\n  ".join(problems)
            + "\n\nall packets as the gateway's conntrack saw them:\n" + "\n".join(listing[:200])
            + (f"\n  ... and {len(listing) - 200} more" if len(listing) > 200 else "")
            + "\n\nkernel (conntrack -L -o extended):\n" + run.kernel_text
            + "fastct:\n" + run.fastct_text)


def assert_same(run: Run):
    problems = compare(run)
    assert not problems, report(run, problems)


def assert_kernel_verdicts(run: Run, indices, expected):
    """The kernel's verdicts for the scenario's packets are what the scenario is built to produce
    (a check of the lab itself: a capture that lost or reordered packets fails here)."""
    got = [verdict_name(run.kernel[i]) for i in indices]
    assert got == expected, (f"lab check: the kernel's verdicts for the scenario's packets are {got}, "
                             f"the scenario expects {expected}\n" + report(run, ["(lab check)"]))


def assert_same_steps(run: Run, steps):
    """After each crafted packet, the flow's entry in the kernel (state, counters, flags, timeout)
    must be what fastct has after the same packets.  `steps`: (packet index, sport, kernel table)."""
    ours = fastct_tables_after(run.pcap, {i for i, _, _ in steps})
    problems = []
    for i, sport, table in steps:
        def entry(tab):
            found = [e for e in tab if e["proto"] == 6 and f"sport={sport}" in e["orig"]]
            return found[0] if found else None
        k, o = entry(table), entry(ours[i])
        ts, fam, _, payload = run.records[i]
        where = f"after packet #{i + 1} {summary(fam, payload)}"
        if (k is None) != (o is None):
            problems.append(f"{where}: kernel entry {k and ' '.join(k['orig'])}, fastct entry "
                            f"{o and ' '.join(o['orig'])}")
        elif k is not None:
            for field in ("state", "counters", "flags"):
                if k[field] != o[field]:
                    problems.append(f"{where}: {field} kernel {k[field]}, fastct {o[field]}")
            if abs(k["timeout"] - o["timeout"]) > TIME_SLACK:
                problems.append(f"{where}: timeout kernel {k['timeout']}, fastct {o['timeout']}")
    assert not problems, report(run, problems)


def kernel_entries(run: Run):
    return parse_table(run.kernel_text)


# ---- traffic helpers -------------------------------------------------------------------------------
def py(code: str) -> str:
    return textwrap.dedent(code)


def tcp_server(lab, addr, port, reply_size=0, abort_after=None):
    """A TCP server in the server namespace: accepts one connection, reads until EOF (or until
    `abort_after` bytes, then acknowledges with b'ok'), sends `reply_size` bytes and closes."""
    family = "AF_INET6" if ":" in addr else "AF_INET"
    proc = lab.spawn_python(lab.server, py(f"""
        import socket
        s = socket.socket(socket.{family}, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(({addr!r}, {port})); s.listen(1); s.settimeout(10)
        print("ready", flush=True)
        c, _ = s.accept(); c.settimeout(10)
        got = b""
        try:
            while {abort_after!r} is None or len(got) < {abort_after!r}:
                x = c.recv(65536)
                if not x:
                    break
                got += x
            if {abort_after!r} is not None:
                c.sendall(b"ok")
                c.recv(100)          # the client resets the connection
            c.sendall(b"r" * {reply_size})
        except ConnectionResetError:
            print("reset", flush=True)
        c.close()
        print("got", len(got), flush=True)
    """), what="tcp server")
    proc.expect("ready")
    return proc


def tcp_client(lab, addr, port, size: int, abort=False) -> str:
    """Connects from the client namespace, sends `size` bytes, then either shuts down its sending
    side and reads to EOF (prints 'got N'), or waits for b'ok' and aborts (RST)."""
    family = "AF_INET6" if ":" in addr else "AF_INET"
    return lab.run_python(lab.client, py(f"""
        import socket, struct
        s = socket.socket(socket.{family}, socket.SOCK_STREAM); s.settimeout(10)
        s.connect(({addr!r}, {port}))
        s.sendall(b"q" * {size})
        if {abort!r}:
            assert s.recv(2) == b"ok"
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()                 # linger 0: the close sends RST
        else:
            s.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                x = s.recv(65536)
                if not x:
                    break
                got += x
            s.close()
            print("got", len(got))
    """))


def tcp_packet(src, dst, sport, dport, flags, seq, ack=0, win=502, data=b"", opts=b""):
    t = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=win, data=data)
    if opts:
        t.opts = opts
        t.off = 5 + len(opts) // 4
    if ":" in src:
        return bytes(dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src),
                                  dst=socket.inet_pton(socket.AF_INET6, dst),
                                  nxt=6, hlim=64, plen=len(bytes(t)), data=t))
    return bytes(dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, ttl=64, data=t))


class Crafted:
    """Crafted TCP between client:cport and server:sport, sent from the namespace of its source.
    Each packet is sent only once the previous one has been logged by the gateway."""

    def __init__(self, lab, cap, cport, sport, src=C4, dst=S4, steps=None):
        self.lab, self.cap, self.cport, self.sport, self.c, self.s = lab, cap, cport, sport, src, dst
        self.from_client, self.from_server = lab.sender(lab.client), lab.sender(lab.server)
        self.logged = 0
        self.steps = steps     # a list: gets (packet index, cport, kernel table) after each packet

    def _send(self, sender, packet):
        sender.send(packet)
        index = self.cap.wait_packet(packet, after=self.logged)
        self.logged = index + 1
        if self.steps is not None:
            self.steps.append((index, self.cport, parse_table(self.lab.conntrack_table())))

    def c2s(self, flags, seq, ack=0, **kw):
        packet = tcp_packet(self.c, self.s, self.cport, self.sport, flags, seq, ack, **kw)
        self._send(self.from_client, packet)

    def s2c(self, flags, seq, ack=0, **kw):
        packet = tcp_packet(self.s, self.c, self.sport, self.cport, flags, seq, ack, **kw)
        self._send(self.from_server, packet)


def quiet_tcp(lab, sport, *cports):
    """Keep the end hosts' kernels from answering crafted packets (RST): drop them on input."""
    lab.drop_inbound(lab.server, f"tcp dport {sport}")
    for p in cports:
        lab.drop_inbound(lab.client, f"tcp dport {p}")


def handshake(f: Crafted, c_isn=1000, s_isn=5000):
    f.c2s(SYN, c_isn, win=64240, opts=SYN_OPTS)
    f.s2c(SYN | ACK, s_isn, c_isn + 1, win=65160, opts=SYN_OPTS)
    f.c2s(ACK, c_isn + 1, s_isn + 1)


# ---- scenarios -------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_tcp_lifecycle_real_sockets(lab, tmp_path, family):
    """connect, 3000 bytes up, 1000 bytes down, orderly close from both ends."""
    addr = S4 if family == "ipv4" else S6

    def traffic(cap):
        srv = tcp_server(lab, addr, 5001, reply_size=1000)
        assert "got 1000" in tcp_client(lab, addr, 5001, 3000)
        assert srv.finish()[0] == 0

    run = observe(lab, tmp_path, traffic)
    assert_same(run)
    tcp = [e for e in kernel_entries(run) if e["proto"] == 6]
    assert [(e["state"], e["flags"]) for e in tcp] == [("TIME_WAIT", ("[ASSURED]",))], run.kernel_text


def test_tcp_bulk_transfer(lab, tmp_path):
    """Real sockets, 1 MB up and 512 KB down in 16 KB writes: many segments, window tracking.  The
    writes are paced (2 ms apart) so that the NFLOG socket never overflows, even with a small
    net.core.rmem_max (a lost record fails the capture check)."""
    def traffic(cap):
        srv = lab.spawn_python(lab.server, py(f"""
            import socket, time
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(({S4!r}, 5009)); s.listen(1); s.settimeout(10)
            print("ready", flush=True)
            c, _ = s.accept(); c.settimeout(10)
            got = 0
            while got < 64 * 16384:
                x = c.recv(65536)
                assert x
                got += len(x)
            for _ in range(32):
                c.sendall(b"d" * 16384); time.sleep(0.002)
            c.close()
            print("got", got, flush=True)
        """), what="tcp server")
        srv.expect("ready")
        out = lab.run_python(lab.client, py(f"""
            import socket, time
            s = socket.socket(); s.settimeout(10)
            s.connect(({S4!r}, 5009))
            for _ in range(64):
                s.sendall(b"u" * 16384); time.sleep(0.002)
            got = 0
            while True:
                x = s.recv(65536)
                if not x:
                    break
                got += len(x)
            s.close()
            print("got", got)
        """))
        assert "got 524288" in out
        assert srv.finish()[0] == 0

    run = observe(lab, tmp_path, traffic)
    assert_same(run)
    assert len(run.flow(5009)) > 50, "lab check: expected many segments"


def test_tcp_lifecycle_crafted(lab, tmp_path):
    """Handshake, data both ways and FIN teardown, one crafted packet at a time; after each one the
    kernel's entry is compared with fastct's."""
    quiet_tcp(lab, 5002, 40001)
    steps = []

    def traffic(cap):
        f = Crafted(lab, cap, 40001, 5002, steps=steps)
        handshake(f)                                        # new, est+rpl, est
        f.c2s(PSH | ACK, 1001, 5001, data=b"a" * 100)       # est
        f.s2c(ACK, 5001, 1101, win=509)                     # est+rpl
        f.s2c(PSH | ACK, 5001, 1101, win=509, data=b"b" * 50)
        f.c2s(ACK, 1101, 5051)
        f.c2s(FIN | ACK, 1101, 5051)                        # client closes
        f.s2c(ACK, 5051, 1102, win=509)
        f.s2c(FIN | ACK, 5051, 1102, win=509)               # server closes
        f.c2s(ACK, 1102, 5052)                              # TIME_WAIT

    run = observe(lab, tmp_path, traffic)
    assert_kernel_verdicts(run, run.flow(40001), ["new", "est,rpl", "est", "est", "est,rpl", "est,rpl", "est",
                                                  "est", "est,rpl", "est,rpl", "est"])
    assert_same(run)
    assert_same_steps(run, steps)
    assert [e["state"] for _, _, t in steps for e in t] == [
        "SYN_SENT", "SYN_RECV", "ESTABLISHED", "ESTABLISHED", "ESTABLISHED", "ESTABLISHED", "ESTABLISHED",
        "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT"], "lab check: the kernel's states after each packet"
    assert [e["state"] for e in kernel_entries(run)] == ["TIME_WAIT"], run.kernel_text


def test_tcp_rst(lab, tmp_path):
    """A real connection that the client aborts (SO_LINGER 0: RST)."""
    def traffic(cap):
        srv = tcp_server(lab, S4, 5003, abort_after=200)
        tcp_client(lab, S4, 5003, 200, abort=True)
        assert srv.finish()[0] == 0

    run = observe(lab, tmp_path, traffic)
    assert_same(run)
    assert [e["state"] for e in kernel_entries(run) if e["proto"] == 6] == ["CLOSE"], run.kernel_text


def test_tcp_rst_crafted(lab, tmp_path):
    """Crafted: handshake, data, then an RST from the server and a late ACK from the client."""
    quiet_tcp(lab, 5004, 40004)
    steps = []

    def traffic(cap):
        f = Crafted(lab, cap, 40004, 5004, steps=steps)
        handshake(f)
        f.c2s(PSH | ACK, 1001, 5001, data=b"a" * 10)
        f.s2c(RST | ACK, 5001, 1011, win=0)
        f.c2s(ACK, 1011, 5001)

    run = observe(lab, tmp_path, traffic)
    assert_same(run)
    assert_same_steps(run, steps)


def test_tcp_syn_to_closed_port(lab, tmp_path):
    """The server's kernel answers the SYN with RST/ACK: connection refused."""
    def traffic(cap):
        out = lab.run_python(lab.client, py(f"""
            import socket
            s = socket.socket(); s.settimeout(10)
            try:
                s.connect(({S4!r}, 5997))
            except ConnectionRefusedError:
                print("refused")
        """))
        assert "refused" in out

    run = observe(lab, tmp_path, traffic)
    assert_kernel_verdicts(run, run.flow(5997), ["new", "est,rpl"])
    assert_same(run)
    assert kernel_entries(run) == [], "lab check: the kernel drops an entry whose only reply is RST"


def test_tcp_syn_unanswered(lab, tmp_path):
    """A SYN nobody answers, retransmitted three times (crafted copies, 0.25 s apart)."""
    quiet_tcp(lab, 5005, 40005)
    steps = []

    def traffic(cap):
        f = Crafted(lab, cap, 40005, 5005, steps=steps)
        for _ in range(4):
            f.c2s(SYN, 7777, win=64240, opts=SYN_OPTS)
            time.sleep(0.25)

    run = observe(lab, tmp_path, traffic)
    assert len(run.flow(40005)) == 4
    assert_same(run)
    assert_same_steps(run, steps)
    entries = kernel_entries(run)
    assert [(e["state"], e["counters"]) for e in entries] == [("SYN_SENT", (1, 52, 0, 0))], run.kernel_text


def test_tcp_invalid(lab, tmp_path):
    """SYN+FIN and a packet without flags (never a new entry), then an established flow that gets
    an ACK far outside the window, followed by a good segment."""
    quiet_tcp(lab, 5006, 40006, 40007, 40008)
    steps = []

    def traffic(cap):
        Crafted(lab, cap, 40006, 5006, steps=steps).c2s(SYN | FIN, 100, win=64240)
        Crafted(lab, cap, 40007, 5006, steps=steps).c2s(0, 200, win=502)
        f = Crafted(lab, cap, 40008, 5006, steps=steps)
        handshake(f)
        f.c2s(PSH | ACK, 1001, 5001, data=b"a" * 100)
        f.s2c(ACK, 5001, 1101, win=509)
        f.c2s(ACK, 1101 + 0x40000000, 5001)                # far out of the window
        f.c2s(PSH | ACK, 1101, 5001, data=b"b" * 20)       # in window again

    run = observe(lab, tmp_path, traffic)
    assert_kernel_verdicts(run, run.flow(40006) + run.flow(40007), ["inv", "inv"])
    assert_same(run)
    assert_same_steps(run, steps)
    assert [e["state"] for e in kernel_entries(run)] == ["ESTABLISHED"], run.kernel_text


def test_tcp_midstream_pickup(lab, tmp_path):
    """Crafted: a connection first seen in the middle (no SYN): the kernel picks it up (tcp_loose)."""
    quiet_tcp(lab, 5007, 40009)
    steps = []

    def traffic(cap):
        f = Crafted(lab, cap, 40009, 5007, steps=steps)
        f.c2s(PSH | ACK, 3000, 9000, data=b"m" * 30)
        f.s2c(ACK, 9000, 3030, win=509)
        f.s2c(PSH | ACK, 9000, 3030, win=509, data=b"n" * 40)
        f.c2s(ACK, 3030, 9040)

    run = observe(lab, tmp_path, traffic)
    assert_kernel_verdicts(run, run.flow(40009), ["new", "est,rpl", "est,rpl", "est"])
    assert_same(run)
    assert_same_steps(run, steps)


def test_tcp_reopen_after_time_wait(lab, tmp_path):
    """Real sockets: the server closes first, then the client connects again from the same port while
    the gateway's entry is in TIME_WAIT: the new SYN replaces the old entry."""
    def traffic(cap):
        srv = lab.spawn_python(lab.server, py(f"""
            import socket
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(({S4!r}, 5008)); s.listen(1); s.settimeout(10)
            print("ready", flush=True)
            for _ in range(2):
                c, _ = s.accept(); c.settimeout(10)
                c.recv(100); c.sendall(b"bye"); c.close()      # the server closes first
        """), what="tcp server")
        srv.expect("ready")
        out = lab.run_python(lab.client, py(f"""
            import socket, time
            for i in range(2):
                s = socket.socket(); s.settimeout(10)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(({C4!r}, 40100)); s.connect(({S4!r}, 5008))
                s.sendall(b"hello")
                while s.recv(100):
                    pass
                s.close()
                time.sleep(0.3)
            print("done")
        """))
        assert "done" in out
        assert srv.finish()[0] == 0

    run = observe(lab, tmp_path, traffic)
    segments = {i: _l4(run.records[i][1], run.records[i][3]) for i in run.flow(40100)}
    syns = [i for i, seg in segments.items() if seg.flags & (SYN | ACK) == SYN]
    assert_kernel_verdicts(run, syns, ["new", "new"])
    assert_same(run)


def udp_server(lab, addr, port, replies: int, expect: int):
    """Receives `expect` datagrams in the server namespace and answers the first `replies` of them."""
    family = "AF_INET6" if ":" in addr else "AF_INET"
    proc = lab.spawn_python(lab.server, py(f"""
        import socket
        s = socket.socket(socket.{family}, socket.SOCK_DGRAM); s.settimeout(10)
        s.bind(({addr!r}, {port}))
        print("ready", flush=True)
        for i in range({expect}):
            data, peer = s.recvfrom(2048)
            if i < {replies}:
                s.sendto(b"R" + data, peer)
        print("done", flush=True)
    """), what="udp server")
    proc.expect("ready")
    return proc


def udp_client(lab, addr, port, sends, wait_reply: bool):
    """Sends one datagram per entry of `sends` (seconds to sleep before it), from one socket."""
    family = "AF_INET6" if ":" in addr else "AF_INET"
    return lab.run_python(lab.client, py(f"""
        import socket, time
        s = socket.socket(socket.{family}, socket.SOCK_DGRAM); s.settimeout(5)
        s.connect(({addr!r}, {port}))
        for i, pause in enumerate({sends!r}):
            time.sleep(pause)
            s.send(b"datagram %d" % i)
            if {wait_reply!r}:
                print(s.recv(2048))
    """))


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_udp_request_response(lab, tmp_path, family):
    addr = S4 if family == "ipv4" else S6

    def traffic(cap):
        srv = udp_server(lab, addr, 5301, replies=1, expect=1)
        udp_client(lab, addr, 5301, [0], wait_reply=True)
        assert srv.finish()[0] == 0

    run = observe(lab, tmp_path, traffic)
    assert_kernel_verdicts(run, run.flow(5301), ["new", "est,rpl"])
    assert_same(run)


def test_udp_one_way(lab, tmp_path):
    def traffic(cap):
        srv = udp_server(lab, S4, 5302, replies=0, expect=3)
        udp_client(lab, S4, 5302, [0, 0.05, 0.05], wait_reply=False)
        assert srv.finish()[0] == 0

    run = observe(lab, tmp_path, traffic)
    assert_kernel_verdicts(run, run.flow(5302), ["new", "new", "new"])
    assert_same(run)
    assert [e["flags"] for e in kernel_entries(run)] == [("[UNREPLIED]",)], run.kernel_text


def test_udp_stream(lab, tmp_path):
    """Request and response, then another exchange 2.3 s after the first packet: a stream, [ASSURED]."""
    def traffic(cap):
        srv = udp_server(lab, S4, 5303, replies=2, expect=2)
        udp_client(lab, S4, 5303, [0, 2.3], wait_reply=True)
        assert srv.finish()[0] == 0

    run = observe(lab, tmp_path, traffic)
    assert_kernel_verdicts(run, run.flow(5303), ["new", "est,rpl", "est", "est,rpl"])
    assert_same(run)
    assert [e["flags"] for e in kernel_entries(run)] == [("[ASSURED]",)], run.kernel_text


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_udp_to_closed_port(lab, tmp_path, family):
    """The server's kernel answers with ICMP port unreachable, which travels in the reply direction
    of the UDP flow: the kernel calls it RELATED (rel+rpl)."""
    addr = S4 if family == "ipv4" else S6

    def traffic(cap):
        out = lab.run_python(lab.client, py(f"""
            import socket
            s = socket.socket(socket.{'AF_INET6' if family == 'ipv6' else 'AF_INET'}, socket.SOCK_DGRAM)
            s.settimeout(5); s.connect(({addr!r}, 5998)); s.send(b"anyone?")
            try:
                s.recv(100)
            except ConnectionRefusedError:
                print("refused")
        """))
        assert "refused" in out

    run = observe(lab, tmp_path, traffic)
    icmp_type = 3 if family == "ipv4" else 1
    errors = [i for i, l4 in enumerate(icmp_messages(run)) if l4 is not None and l4.type == icmp_type]
    assert_kernel_verdicts(run, run.flow(5998) + errors, ["new", "rel,rpl"])
    assert_same(run)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_icmp_echo(lab, tmp_path, family):
    """Two echo requests and their replies (what `ping -c 2` sends), from a raw socket."""
    v6 = family == "ipv6"
    addr = S6 if v6 else S4

    def traffic(cap):
        out = lab.run_python(lab.client, py(f"""
            import socket, struct, time
            v6 = {v6!r}
            def csum(b):
                b += b"\\0" * (len(b) % 2)
                s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
                s = (s >> 16) + (s & 0xFFFF); s += s >> 16
                return ~s & 0xFFFF
            if v6:
                s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            s.settimeout(5)
            for seq in (1, 2):
                body = struct.pack("!HH", 0x4242, seq) + bytes(range(56))
                req = struct.pack("!BBH", 128 if v6 else 8, 0, 0) + body
                if not v6:                       # the kernel fills in the ICMPv6 checksum
                    req = req[:2] + struct.pack("!H", csum(req)) + req[4:]
                s.sendto(req, ({addr!r}, 0))
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    data = s.recv(2048)
                    icmp = data if v6 else data[(data[0] & 15) * 4:]
                    if icmp[0] == (129 if v6 else 0) and icmp[4:8] == body[:4]:
                        print("reply", seq); break
                time.sleep(0.2)
        """))
        assert "reply 2" in out

    run = observe(lab, tmp_path, traffic)
    echo = [i for i, l4 in enumerate(icmp_messages(run)) if l4 is not None and l4.type in (0, 8, 128, 129)]
    assert_kernel_verdicts(run, echo, ["new", "est,rpl", "est", "est,rpl"])
    assert_same(run)

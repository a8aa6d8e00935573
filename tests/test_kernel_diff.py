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

IP fragments (IPv4 and IPv6): the gateway's conntrack sees reassembled datagrams only, so fastct's
input there is a second capture, of the packets as they arrive at the gateway (see the section
"IP fragments" below).  Scenarios: large UDP requests and replies fragmented by the sending kernel
(IPv6 also over an MTU 1280 link), large ICMP/ICMPv6 echoes and their replies, and crafted
fragments: out of order (last first), an exact duplicate, an overlapping fragment (the datagram is
dropped), a fragment inside a run of contiguous ones (a duplicate to the kernel).

Needs root, `ip netns`, nft, conntrack and tcpdump; skipped without them (failed instead when CI is
set and a tool is missing).
"""
from __future__ import annotations

import socket
import struct
import textwrap
import time
from dataclasses import dataclass, field

import dpkt
import pytest

from conntrack_lines import parse_table
from netns_lab import NetnsLab, lab_for_test, lab_unicast, read_ingress, read_nflog

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


@pytest.fixture
def lab():
    with lab_for_test("the kernel differential tests") as the_lab:
        yield the_lab


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
                    format_table(tracker.entries(), tracker.replies(), tracker.cold(), tracker.now)))
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
    lines = format_table(tracker.entries(), tracker.replies(), tracker.cold(), tracker.now)
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
    return problems + compare_tables(run.kernel_text, run.fastct_text)


def compare_tables(kernel_text: str, fastct_text: str) -> list[str]:
    """Every difference between two tables in `conntrack -L -o extended` format."""
    problems = []
    kernel = {(r["l3"], r["proto"], r["orig"]): r for r in parse_table(kernel_text)}
    ours = {(r["l3"], r["proto"], r["orig"]): r for r in parse_table(fastct_text)}
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


def sack_opts(*blocks):
    """NOP, NOP, then a SACK option with these (left, right) blocks."""
    return b"\x01\x01\x05" + bytes([2 + 8 * len(blocks)]) + b"".join(
        struct.pack("!II", left, right) for left, right in blocks)


def test_tcp_sack_blocks(lab, tmp_path):
    """Both ends SACK-permitted: an ACK's SACK blocks count as the highest acknowledged byte
    (kernel tcp_sack).  A block up to the server's data is fine and moves the server's window end
    (the server may then send that much further); a block beyond what the server sent is "ACK is
    over upper bound" (invalid), though its ACK field alone would pass; a malformed SACK option and
    the timestamp-only layout are ignored."""
    quiet_tcp(lab, 5013, 40013)
    steps = []

    def traffic(cap):
        f = Crafted(lab, cap, 40013, 5013, steps=steps)
        handshake(f)                                                   # wscale 7 both ways
        f.s2c(PSH | ACK, 5001, 1001, win=509, data=b"b" * 300)         # server sent up to 5301
        f.c2s(ACK, 1001, 5001, win=1, opts=sack_opts((5101, 5301)))    # SACK to its end: est
        f.c2s(ACK, 1001, 5001, win=1, opts=sack_opts((5301, 5401)))    # beyond it: inv
        f.c2s(ACK, 1001, 5001, win=1, opts=b"\x01\x01\x05\x06" + struct.pack("!I", 9999))  # bad size
        f.c2s(ACK, 1001, 5001, win=1, opts=b"\x01\x01\x08\x0a" + b"\x00" * 8)    # timestamps only
        # The SACK moved the server's allowed end to 5301 + (1 << 7): a segment reaching past the
        # client's plain ACK + window, but inside that, is in window.
        f.s2c(PSH | ACK, 5301, 1001, win=509, data=b"c" * 100)         # est

    run = observe(lab, tmp_path, traffic)
    assert_kernel_verdicts(run, run.flow(40013), ["new", "est,rpl", "est", "est,rpl", "est", "inv",
                                                  "est", "est", "est,rpl"])
    assert_same(run)
    assert_same_steps(run, steps)


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


# ---- IP fragments ----------------------------------------------------------------------------------
# The gateway's conntrack never sees a fragment: nf_defrag (prerouting, priority -400) reassembles
# each datagram first, so the NFLOG records at -150 hold whole datagrams, one per datagram, logged
# when its last missing fragment arrived.  fastct's input is therefore a second capture, of the
# packets as they arrived at the gateway (tcpdump -i any -Q in there, NetnsLab.ingress_capture):
# fragments as sent, in arrival order, never the gateway's own refragmented output.  fastct holds
# each fragment until its datagram is complete (held, ct_state 0), gives the completing fragment the
# datagram's verdict, and drops a fragment the kernel drops (trk|inv, counted in frag_dropped).  So
# the verdicts fastct gives the packets it neither held nor dropped, in order, must be the kernel's
# NFLOG verdicts; the final tables are compared as everywhere else (bytes: whole datagrams).
@dataclass
class FragRun:
    packets: list            # IngressPacket per packet of the ingress capture (fastct's input)
    states: list             # fastct's ct_state per ingress packet
    held: list               # fastct held the packet (a fragment of an incomplete datagram)
    dropped: list            # fastct dropped the fragment (its frag_dropped counter grew)
    records: list            # NFLOG records (the lab's unicast traffic): (ts, family, prefix, ip bytes)
    kernel: list             # the kernel's ct_state per record
    kernel_text: str
    fastct_text: str
    stats: dict = field(repr=False)     # fastct's counters at the end
    snmp: dict = field(repr=False)      # the gateway's IP counters: growth during the capture

    @property
    def tracked(self):
        """Indices of the ingress packets fastct tracked: neither held nor dropped."""
        return [i for i, (h, d) in enumerate(zip(self.held, self.dropped)) if not h and not d]

    def fragments(self):
        """Indices of the ingress packets that are fragments."""
        return [i for i, p in enumerate(self.packets) if frag_info(p.packet) is not None]


def frag_info(packet: bytes):
    """(id, offset, more fragments, protocol, where its data starts) of an IPv4 or IPv6 fragment;
    None for a whole packet."""
    if packet[0] >> 4 == 4:
        fo = int.from_bytes(packet[6:8], "big")
        if fo & 0x3FFF:
            return (int.from_bytes(packet[4:6], "big"), (fo & 0x1FFF) * 8, bool(fo & 0x2000), packet[9],
                    (packet[0] & 15) * 4)
        return None
    nh, pos = packet[6], 40
    while nh in (0, 43, 60) and pos + 8 <= len(packet):
        nh, pos = packet[pos], pos + (packet[pos + 1] + 1) * 8
    if nh != 44 or pos + 8 > len(packet):
        return None
    fo = int.from_bytes(packet[pos + 2:pos + 4], "big")
    if not fo & 0xFFF9:
        return None                                  # an atomic fragment: a whole packet
    return int.from_bytes(packet[pos + 4:pos + 8], "big"), fo & 0xFFF8, bool(fo & 1), packet[pos], pos + 8


def packet_summary(packet: bytes) -> str:
    """One line for an IP packet as it arrived: whole packets as `summary` says, fragments by id,
    offset and length (and ports, for a first fragment)."""
    info = frag_info(packet)
    family = 2 if packet[0] >> 4 == 4 else 10
    if info is None:
        return summary(family, packet)
    ident, off, more, proto, start = info
    af = socket.AF_INET if family == 2 else socket.AF_INET6
    src, dst = (packet[12:16], packet[16:20]) if family == 2 else (packet[8:24], packet[24:40])
    data = packet[start:]
    ports = ""
    if off == 0 and proto in (6, 17) and len(data) >= 4:
        ports = f" sport={int.from_bytes(data[:2], 'big')} dport={int.from_bytes(data[2:4], 'big')}"
    return (f"IPv{4 if family == 2 else 6} len={len(packet)} FRAGMENT proto={proto} "
            f"{socket.inet_ntop(af, src)} > {socket.inet_ntop(af, dst)} id=0x{ident:x} "
            f"off={off} data={len(data)}{' MF' if more else ''}{ports}")


def observe_fragments(lab, tmp_path, traffic) -> FragRun:
    """Run `traffic(cap, icap)` (cap: the NFLOG capture, icap: the ingress capture) while both
    captures run, take the kernel's table, then track the ingress capture with fastct."""
    ingress, nflog = tmp_path / "gateway_ingress.pcap", tmp_path / "gateway_nflog.pcap"
    before = lab.snmp(lab.gateway)
    with lab.ingress_capture(ingress, snaplen=2048) as icap:   # (a huge snaplen loses bursts)
        with lab.capture(nflog) as cap:
            traffic(cap, icap)
            cap.settle()
            kernel_text = lab.conntrack_table()
    after = lab.snmp(lab.gateway)
    records = [r for r in read_nflog(nflog) if r[3] and lab_unicast(r[3])]
    unknown = [(i + 1, r[2]) for i, r in enumerate(records) if r[2] not in VERDICT_BITS]
    assert not unknown, f"records without a known verdict prefix (packet number, prefix): {unknown}"
    packets = read_ingress(ingress, icap.interfaces)
    stamps = [p.ts for p in packets]
    assert stamps == sorted(stamps), "lab check: the ingress capture is not in arrival order"
    assert all(lab_unicast(p.packet) for p in packets), "lab check: the ingress capture's filter"
    states, held, dropped, stats, text = run_fastct_ingress(ingress)
    assert len(states) == len(packets), f"fastct read {len(states)} packets, the capture has {len(packets)}"
    return FragRun(packets, states, held, dropped, records, [VERDICT_BITS[r[2]] for r in records],
                   kernel_text, text, stats, {k: after[k] - before.get(k, 0) for k in after})


def run_fastct_ingress(pcap):
    """fastct on the ingress capture, twice: in batches of 7 (verdicts, held flags, table, counters)
    and packet by packet (which packets grew frag_dropped).  Both runs must agree."""
    from fastct import CaptureReader, Tracker
    from fastct.conntrack_fmt import format_table

    def track(batch_size):
        tracker = Tracker(seed=1)
        states, held, dropped = [], [], []
        reader = CaptureReader(pcap, batch_size=batch_size)
        try:
            for batch in reader:
                was = tracker.stats()["frag_dropped"]
                res = tracker.process(batch)
                states += [int(s) for s in res.ct_state]
                held += [bool(h) for h in res.held]
                dropped.append(tracker.stats()["frag_dropped"] - was)
            assert reader.error is None, reader.error
        finally:
            reader.close()
        return tracker, states, held, dropped

    _, states1, held1, dropped1 = track(1)
    tracker, states, held, _ = track(7)
    assert (states1, held1) == (states, held), (
        f"fastct's verdicts differ between batches of 1 and of 7:\n  {states1} {held1}\n  {states} {held}")
    lines = format_table(tracker.entries(), tracker.replies(), tracker.cold(), tracker.now)
    stats = tracker.stats()
    return states, held, [d > 0 for d in dropped1], stats, "\n".join(lines) + ("\n" if lines else "")


def fastct_name(run: FragRun, i: int) -> str:
    if run.held[i]:
        return "held" if run.states[i] == 0 else f"held+0x{run.states[i]:02x}"
    if run.dropped[i]:
        return "dropped" + ("" if run.states[i] == TRK | INV else f"+0x{run.states[i]:02x}")
    return verdict_name(run.states[i])


def frag_report(run: FragRun, problems) -> str:
    t0 = run.packets[0].ts if run.packets else 0.0
    pair = dict(zip(run.tracked, range(len(run.records))))
    listing = []
    for i, p in enumerate(run.packets):
        k = pair.get(i)
        kernel = f"record #{k + 1} {run.records[k][2]}" if k is not None else "-"
        listing.append(f"  #{i + 1:<3} +{p.ts - t0:7.3f} s {p.interface:<7} fastct {fastct_name(run, i):<9} "
                       f"kernel {kernel:<18} {packet_summary(p.packet)}")
    t1 = run.records[0][0] if run.records else 0.0
    records = [f"  #{i + 1:<3} +{ts - t1:7.3f} s  kernel {prefix:<9} {summary(fam, payload)}"
               for i, (ts, fam, prefix, payload) in enumerate(run.records)]
    frag_stats = {k: v for k, v in run.stats.items() if k.startswith("frag_")}
    snmp = {k: v for k, v in run.snmp.items() if "Reasm" in k and v}
    return ("fastct differs from the kernel's conntrack:\n  " + "\n  ".join(problems)
            + "\n\npackets as they arrived at the gateway (fastct's input), each with fastct's result "
              "and the NFLOG record it is paired with:\n" + "\n".join(listing)
            + "\n\nNFLOG records (the gateway's conntrack, after defragmentation):\n" + "\n".join(records)
            + f"\n\nfastct: {frag_stats}; the gateway's reassembly counters (growth): {snmp}"
            + "\n\nkernel (conntrack -L -o extended):\n" + run.kernel_text + "fastct:\n" + run.fastct_text)


def assert_same_fragments(run: FragRun):
    """fastct's verdicts for the packets it tracked (neither held nor dropped) are the kernel's
    NFLOG verdicts, in order, and the final tables match."""
    problems = []
    tracked = run.tracked
    ours = [run.states[i] for i in tracked]
    if len(ours) != len(run.kernel):
        problems.append(f"fastct tracked {len(ours)} packets (datagrams), "
                        f"the kernel logged {len(run.kernel)}")
    for n, (i, k) in enumerate(zip(tracked, run.kernel)):
        f = run.states[i]
        if k != f:
            problems.append(f"packet #{i + 1} {packet_summary(run.packets[i].packet)} / record #{n + 1} "
                            f"{summary(run.records[n][1], run.records[n][3])}: kernel {verdict_name(k)} "
                            f"(0x{k:02x}), fastct {verdict_name(f)} (0x{f:02x})")
    for i in range(len(run.packets)):
        if run.held[i] and run.states[i] != 0:
            problems.append(f"packet #{i + 1}: held with ct_state 0x{run.states[i]:02x} (not 0)")
        if run.held[i] and frag_info(run.packets[i].packet) is None:
            problems.append(f"packet #{i + 1}: held, but it is not a fragment")
    problems += compare_tables(run.kernel_text, run.fastct_text)
    assert not problems, frag_report(run, problems)


def assert_frag_kernel(run: FragRun, expected):
    """Lab check: the kernel's verdicts are what the scenario is built to produce."""
    got = [r[2] for r in run.records]
    assert got == expected, (f"lab check: the kernel's verdicts are {got}, the scenario expects {expected}\n"
                             + frag_report(run, ["(lab check)"]))


def assert_fastct_results(run: FragRun, expected):
    """fastct's result per ingress packet ('held', 'dropped' or a verdict name) is the scenario's
    (where the kernel's view cannot say it: held and dropped fragments leave no NFLOG record)."""
    got = [fastct_name(run, i) for i in range(len(run.packets))]
    assert got == expected, (f"fastct's results per arriving packet are {got}, expected {expected}\n"
                             + frag_report(run, ["(per-packet results)"]))


def expected_fragments(length: int, mtu: int, v6: bool) -> int:
    """How many fragments a sender makes of an IP payload of `length` bytes for a link of `mtu`."""
    per = (mtu - (48 if v6 else 20)) & ~7
    return -(-length // per)


def udp_ip_packet(src, dst, sport, dport, payload: bytes, ident: int = 0) -> bytes:
    """A whole IPv4 or IPv6 UDP packet with a correct UDP checksum (IPv4: `ident` in its id field)."""
    v6 = ":" in src
    af = socket.AF_INET6 if v6 else socket.AF_INET
    s, d = socket.inet_pton(af, src), socket.inet_pton(af, dst)
    ulen = 8 + len(payload)
    pseudo = s + d + (struct.pack("!IxxxB", ulen, 17) if v6 else struct.pack("!xBH", 17, ulen))
    udp = struct.pack("!HHHH", sport, dport, ulen, 0) + payload
    total = _csum(pseudo + udp)
    udp = udp[:6] + struct.pack("!H", total or 0xFFFF) + udp[8:]
    if v6:
        return struct.pack("!IHBB", 6 << 28, ulen, 17, 64) + s + d + udp
    return struct.pack("!BBHHHBBH", 0x45, 0, 20 + ulen, ident, 0, 64, 17, 0) + s + d + udp


def _csum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total >> 16) + (total & 0xFFFF)
    return ~total & 0xFFFF


def ip_fragment(packet: bytes, start: int, end: int, more: bool | None = None, ident: int = 0) -> bytes:
    """The fragment of a whole packet (from udp_ip_packet) holding bytes [start, end) of its IP
    payload; `more` (MF / M) defaults to whether the payload goes on past `end`.  IPv4 keeps the
    packet's id; IPv6 gets a fragment header with `ident`."""
    v6 = packet[0] >> 4 == 6
    head = 40 if v6 else (packet[0] & 15) * 4
    payload = packet[head:]
    more = end < len(payload) if more is None else more
    piece = payload[start:end]
    if v6:
        frag = struct.pack("!BBHI", packet[6], 0, start | int(more), ident)
        return packet[:4] + struct.pack("!HBB", 8 + len(piece), 44, packet[7]) + packet[8:40] + frag + piece
    flags = (start // 8) | (0x2000 if more else 0)
    return (packet[:2] + struct.pack("!H", head + len(piece)) + packet[4:6] + struct.pack("!H", flags)
            + packet[8:10] + b"\0\0" + packet[12:head] + piece)


class Fragments:
    """Crafted fragments from the client, sent one at a time from its raw sender: `send` returns
    once the fragment has arrived at the gateway (ingress capture) and, for the fragment that
    completes a datagram, once the gateway has logged the whole datagram (NFLOG)."""

    def __init__(self, lab, cap, icap):
        self.lab, self.cap, self.icap = lab, cap, icap
        self.sender = lab.sender(lab.client)
        self.arrived = 0
        self.logged = 0

    def send(self, fragment: bytes, completes: bytes | None = None):
        """Send one fragment; `completes`: the whole packet it completes (then wait for its log)."""
        self.sender.send(fragment)
        self.arrived = self.icap.wait_packet(fragment, after=self.arrived) + 1
        if completes is not None:
            self.logged = self.cap.wait_packet(completes, after=self.logged) + 1


def udp_echo_server(lab, addr, port, count: int, reply: bytes = b"ok"):
    """Receives `count` datagrams in the server namespace and answers each with `reply`."""
    family = "AF_INET6" if ":" in addr else "AF_INET"
    proc = lab.spawn_python(lab.server, py(f"""
        import socket
        s = socket.socket(socket.{family}, socket.SOCK_DGRAM); s.settimeout(10)
        s.bind(({addr!r}, {port}))
        print("ready", flush=True)
        for i in range({count}):
            data, peer = s.recvfrom(65536)
            s.sendto({reply!r}, peer)
            print("got", len(data), flush=True)
        print("done", flush=True)
    """), what="udp server")
    proc.expect("ready")
    return proc


FRAG_UDP_CASES = [
    # family, request size, reply size, client link MTU (None: 1500)
    ("ipv4", 3000, 10, None),
    ("ipv4", 20, 4000, None),
    ("ipv6", 3000, 10, None),
    ("ipv6", 3000, 10, 1280),
    ("ipv6", 20, 4000, None),
]


@pytest.mark.parametrize("family,req_size,reply,mtu", FRAG_UDP_CASES,
                         ids=[f"{f}-req{q}-rep{r}-mtu{m or 1500}" for f, q, r, m in FRAG_UDP_CASES])
def test_frag_udp(lab, tmp_path, family, req_size, reply, mtu):
    """Real sockets, two request/response exchanges of which the request or the reply is larger than
    the path MTU: the sending kernel fragments it (IPv4 with DF off: IP_PMTUDISC_DONT; IPv6 at the
    source, as IPv6 always does)."""
    v6 = family == "ipv6"
    addr = S6 if v6 else S4
    if mtu:
        lab.set_mtu(lab.client, "cli0", mtu)
        lab.set_mtu(lab.gateway, "gw-cli", mtu)

    def traffic(cap, icap):
        srv = udp_echo_server(lab, addr, 5401, 2, reply=b"r" * reply)
        out = lab.run_python(lab.client, py(f"""
            import socket
            s = socket.socket(socket.{'AF_INET6' if v6 else 'AF_INET'}, socket.SOCK_DGRAM); s.settimeout(5)
            if not {v6!r}:
                s.setsockopt(socket.IPPROTO_IP, 10, 0)   # IP_MTU_DISCOVER, IP_PMTUDISC_DONT (linux/in.h)
            s.connect(({addr!r}, 5401))
            for i in range(2):
                s.send(b"q" * {req_size})
                print("reply", len(s.recv(65536)), flush=True)
        """))
        assert out.count(f"reply {reply}") == 2, out
        assert srv.finish()[0] == 0

    run = observe_fragments(lab, tmp_path, traffic)
    assert_frag_kernel(run, ["new", "est,rpl", "est", "est,rpl"])
    # Lab check: the large datagrams reached the gateway in as many fragments as the sender makes.
    big = max(req_size, reply) + 8
    link = (mtu or 1500) if req_size > reply else 1500
    assert len(run.fragments()) == 2 * expected_fragments(big, link, v6), frag_report(run, ["(lab check)"])
    if not v6:
        assert run.snmp["Ip.ReasmOKs"] == 2, frag_report(run, ["lab check: the gateway's ReasmOKs grew "
                                                               f"{run.snmp['Ip.ReasmOKs']}, not 2"])
    assert_same_fragments(run)
    assert run.stats["frag_reassembled"] == 2, frag_report(
        run, [f"fastct reassembled {run.stats['frag_reassembled']} datagrams, not 2"])


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_frag_icmp_echo(lab, tmp_path, family):
    """Two echo requests with 3000 bytes of data from a raw socket (the client's kernel fragments
    them) and their replies (the server's kernel fragments them)."""
    v6 = family == "ipv6"
    addr = S6 if v6 else S4

    def traffic(cap, icap):
        out = lab.run_python(lab.client, py(f"""
            import socket, struct, time
            v6 = {v6!r}
            def csum(b):
                b += b"\\0" * (len(b) % 2)
                s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
                while s >> 16:
                    s = (s >> 16) + (s & 0xFFFF)
                return ~s & 0xFFFF
            if v6:
                s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
                s.setsockopt(socket.IPPROTO_IP, 10, 0)   # IP_MTU_DISCOVER, IP_PMTUDISC_DONT (linux/in.h)
            s.settimeout(5)
            for seq in (1, 2):
                body = struct.pack("!HH", 0x4343, seq) + bytes(i & 255 for i in range(3000))
                req = struct.pack("!BBH", 128 if v6 else 8, 0, 0) + body
                if not v6:                       # the kernel fills in the ICMPv6 checksum
                    req = req[:2] + struct.pack("!H", csum(req)) + req[4:]
                s.sendto(req, ({addr!r}, 0))
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    data = s.recv(65536)
                    icmp = data if v6 else data[(data[0] & 15) * 4:]
                    if icmp[0] == (129 if v6 else 0) and icmp[4:8] == body[:4]:
                        print("reply", seq, len(icmp), flush=True); break
                time.sleep(0.2)
        """))
        assert "reply 2 3008" in out, out

    run = observe_fragments(lab, tmp_path, traffic)
    assert_frag_kernel(run, ["new", "est,rpl", "est", "est,rpl"])
    assert len(run.fragments()) == 4 * expected_fragments(3008, 1500, v6), frag_report(run, ["(lab check)"])
    if not v6:
        assert run.snmp["Ip.ReasmOKs"] == 4, frag_report(run, ["lab check: the gateway's ReasmOKs grew "
                                                               f"{run.snmp['Ip.ReasmOKs']}, not 4"])
    assert_same_fragments(run)
    assert run.stats["frag_reassembled"] == 4, frag_report(
        run, [f"fastct reassembled {run.stats['frag_reassembled']} datagrams, not 4"])


# Crafted fragments of one UDP datagram of 2008 bytes (8 header + 2000 data): A = [0, 800),
# B = [800, 1600), C = [1600, 2008) (the last).
PIECES = {"A": (0, 800), "B": (800, 1600), "C": (1600, 2008)}


def crafted_datagram(family, sport, dport, ident):
    src, dst = (C6, S6) if family == "ipv6" else (C4, S4)
    packet = udp_ip_packet(src, dst, sport, dport, bytes(i * 7 & 255 for i in range(2000)), ident=ident)
    return packet, {name: ip_fragment(packet, a, b, ident=ident) for name, (a, b) in PIECES.items()}


def quiet_udp(lab, *cports):
    """Keep the client's kernel from answering the server's replies to crafted datagrams."""
    for p in cports:
        lab.drop_inbound(lab.client, f"udp dport {p}")


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_frag_out_of_order(lab, tmp_path, family):
    """Crafted: the last fragment first (C, B, A): the datagram is complete with its first fragment;
    the server answers it (a reply that is not fragmented)."""
    quiet_udp(lab, 41001)

    def traffic(cap, icap):
        srv = udp_echo_server(lab, S6 if family == "ipv6" else S4, 5411, 1)
        whole, frags = crafted_datagram(family, 41001, 5411, 0x1101)
        f = Fragments(lab, cap, icap)
        f.send(frags["C"])
        f.send(frags["B"])
        f.send(frags["A"], completes=whole)
        assert srv.finish()[0] == 0

    run = observe_fragments(lab, tmp_path, traffic)
    assert_frag_kernel(run, ["new", "est,rpl"])
    assert_same_fragments(run)
    assert_fastct_results(run, ["held", "held", "new", "est,rpl"])


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_frag_duplicate(lab, tmp_path, family):
    """Crafted: A, B, B again (an exact duplicate: the kernel drops it and keeps the datagram), C
    (completes it); then B once more, after the datagram is complete: it starts a new datagram,
    which never completes."""
    quiet_udp(lab, 41002)

    def traffic(cap, icap):
        srv = udp_echo_server(lab, S6 if family == "ipv6" else S4, 5412, 1)
        whole, frags = crafted_datagram(family, 41002, 5412, 0x1202)
        f = Fragments(lab, cap, icap)
        f.send(frags["A"])
        f.send(frags["B"])
        f.send(frags["B"])
        f.send(frags["C"], completes=whole)
        assert srv.finish()[0] == 0
        f.send(frags["B"])

    run = observe_fragments(lab, tmp_path, traffic)
    assert_frag_kernel(run, ["new", "est,rpl"])
    if family == "ipv4":
        assert run.snmp["Ip.ReasmOKs"] == 1, frag_report(run, ["lab check: ReasmOKs"])
    assert_same_fragments(run)
    assert_fastct_results(run, ["held", "held", "dropped", "new", "est,rpl", "held"])


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_frag_overlap(lab, tmp_path, family):
    """Crafted: A, then a fragment overlapping it ([400, 1200)): the kernel drops the whole datagram
    (no NFLOG record, no entry); B and C after it start a new datagram without a first fragment,
    which never completes.  Then another datagram (another source port and id), in order, which the
    server answers: tracking goes on as usual."""
    quiet_udp(lab, 41003, 41004)

    def traffic(cap, icap):
        srv = udp_echo_server(lab, S6 if family == "ipv6" else S4, 5413, 1)
        whole, frags = crafted_datagram(family, 41003, 5413, 0x1303)
        f = Fragments(lab, cap, icap)
        f.send(frags["A"])
        f.send(ip_fragment(whole, 400, 1200, ident=0x1303))
        f.send(frags["B"])
        f.send(frags["C"])
        whole2, frags2 = crafted_datagram(family, 41004, 5413, 0x1304)
        f.send(frags2["A"])
        f.send(frags2["B"])
        f.send(frags2["C"], completes=whole2)
        assert srv.finish()[0] == 0

    run = observe_fragments(lab, tmp_path, traffic)
    assert_frag_kernel(run, ["new", "est,rpl"])
    assert [e["orig"] for e in kernel_entries(run) if any("sport=41003" in x for x in e["orig"])] == [], \
        "lab check: the kernel has an entry for the overlapped datagram\n" + run.kernel_text
    if family == "ipv4":
        assert run.snmp.get("IpExt.ReasmOverlaps") == 1, frag_report(run, ["lab check: ReasmOverlaps"])
    assert_same_fragments(run)
    assert_fastct_results(run, ["held", "dropped", "held", "held", "held", "held", "new", "est,rpl"])


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_frag_inside_run(lab, tmp_path, family):
    """Crafted: A, B, then a fragment lying inside the run A+B ([400, 1200)), then C.  The kernel
    keeps contiguous fragments as runs and treats a fragment within a run as a duplicate
    (inet_frag_queue_insert: IPFRAG_DUP): dropped, the datagram kept; C completes it."""
    quiet_udp(lab, 41005)

    def traffic(cap, icap):
        srv = udp_echo_server(lab, S6 if family == "ipv6" else S4, 5414, 1)
        whole, frags = crafted_datagram(family, 41005, 5414, 0x1405)
        f = Fragments(lab, cap, icap)
        f.send(frags["A"])
        f.send(frags["B"])
        f.send(ip_fragment(whole, 400, 1200, ident=0x1405))
        f.send(frags["C"], completes=whole)
        assert srv.finish()[0] == 0

    run = observe_fragments(lab, tmp_path, traffic)
    assert_frag_kernel(run, ["new", "est,rpl"])
    if family == "ipv4":
        assert (run.snmp["Ip.ReasmOKs"], run.snmp.get("IpExt.ReasmOverlaps")) == (1, 0), \
            frag_report(run, ["lab check: ReasmOKs, ReasmOverlaps"])
    assert_same_fragments(run)
    assert_fastct_results(run, ["held", "held", "dropped", "new", "est,rpl"])

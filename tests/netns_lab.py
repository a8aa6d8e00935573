"""A three-namespace lab for differential tests against the kernel's conntrack (tests only).

    client ── veth ── gateway ── veth ── server
    10.231.1.2     .1.1 | .2.1     10.231.2.2
    fd31:1::2  fd31:1::1 | fd31:2::1  fd31:2::2

The gateway forwards IPv4 and IPv6 and runs conntrack (nf_conntrack_acct=1, nf_conntrack_timestamp=1,
nf_conntrack_checksum=0, every other setting the kernel's default).  While `NetnsLab.capture` runs,
an nftables chain in its prerouting hook at priority -150, right after conntrack (-200), logs every
IP packet exactly once to NFLOG group 1 with a prefix naming the kernel's verdict for it ("new",
"est", "est,rpl", "rel", "rel,rpl", "inv", "untracked"), and tcpdump records that group.  So one
capture file (link type NFLOG) holds the packets exactly as they reached the gateway's conntrack, in
order, each with the kernel's verdict: the same file is the input of the implementation under test.
A counter in the same chain says how many records the file must hold; a shortfall is an error.

    with NetnsLab() as lab:                       # namespaces always removed on exit
        with lab.capture(path) as cap:            # tcpdump is listening when this returns
            lab.run_python(lab.client, "...")     # traffic between the lab's own addresses
            table = lab.conntrack_table()         # `conntrack -L -o extended` in the gateway
        records = read_nflog(path)                # [(ts, family, prefix, ip_bytes)]

For IP fragments, whose datagrams the gateway's conntrack only sees reassembled (nf_defrag runs at
priority -400), `NetnsLab.ingress_capture` records the packets as they arrive at the gateway, before
defragmentation (`tcpdump -i any -Q in` there, LINUX_SLL2; `read_ingress` reads it): each packet
once, in arrival order, never the gateway's own (refragmented) output.

    with lab.ingress_capture(path2) as icap, lab.capture(path) as cap:
        ...
    packets = read_ingress(path2)                 # [IngressPacket(ts, interface, ip_bytes)]

For NAT, `NetnsLab.egress_capture` records the packets as they leave the gateway (`tcpdump -i any
-Q out` there: after the postrouting hook, so after NAT), in the same format as `ingress_capture`;
`add_address` gives a namespace another address of the lab's prefixes and `set_tx_checksum` turns a
veth's checksum offload off, so that captured packets carry complete transport checksums rather than
the partial (pseudo-header) sums a CHECKSUM_PARTIAL packet holds.

    with lab.ingress_capture(p_in) as icap, lab.egress_capture(p_out) as ecap:
        ...
    before, after = read_ingress(p_in), read_ingress(p_out)

Everything that waits is bounded; packets are only sent between the lab's own addresses.  Needs root,
iproute2 (`ip netns`), nft, conntrack (conntrack-tools) and tcpdump.
"""
from __future__ import annotations

import ipaddress
import itertools
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TOOLS = ("ip", "nft", "conntrack", "tcpdump")
NFLOG_GROUP = 1
NFT_TABLE = "fastct_lab"
LINKTYPE_NFLOG = 239
NFULA_PREFIX = 10          # NFLOG TLV types (linux/netfilter/nfnetlink_log.h)
NFULA_PAYLOAD = 9

# The verdict prefixes the gateway logs, in rule order; each packet matches exactly one rule.
VERDICT_RULES = (
    ("ct state invalid", "inv"),
    ("ct state new", "new"),
    ("ct state established ct direction original", "est"),
    ("ct state established ct direction reply", "est,rpl"),
    ("ct state related ct direction original", "rel"),
    ("ct state related ct direction reply", "rel,rpl"),
    ("ct state untracked", "untracked"),
)

_NAME_RE = re.compile(r"^fctlab(\d+)n\d+-(cli|gw|srv)$")
_counter = itertools.count(1)


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")


def missing_tools() -> list[str]:
    return [t for t in TOOLS if _which(t) is None]


def unavailable_reason() -> str | None:
    """Why a lab cannot be built here (None: it can): not root, tools missing, no `ip netns`."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables, conntrack)"
    missing = missing_tools()
    if missing:
        return f"missing tools: {', '.join(missing)}"
    probe = f"fctlab{os.getpid()}n0-cli"
    try:
        r = subprocess.run([_which("ip"), "netns", "add", probe], capture_output=True, text=True,
                           timeout=10)
        if r.returncode:
            return f"`ip netns add` failed: {r.stderr.strip()}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` failed: {exc}"
    finally:
        subprocess.run([_which("ip"), "netns", "del", probe], capture_output=True, timeout=10)
    return None


def list_namespaces() -> list[str]:
    r = subprocess.run([_which("ip"), "netns", "list"], capture_output=True, text=True, timeout=10)
    return [line.split()[0] for line in r.stdout.splitlines() if line.split()]


def sweep_stale() -> list[str]:
    """Delete lab namespaces left by lab processes that no longer exist (a killed test run)."""
    removed = []
    for name in list_namespaces():
        m = _NAME_RE.match(name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            subprocess.run([_which("ip"), "netns", "del", name], capture_output=True, timeout=10)
            removed.append(name)
    return removed


_AVAILABILITY: list = []      # unavailable_reason(), worked out once per process


@contextmanager
def lab_for_test(what: str):
    """A fresh NetnsLab for one test of `what`, or the test skipped with the reason (failed under
    CI when a tool is missing: CI must run it); afterwards no namespace of it may be left behind."""
    import pytest
    if not _AVAILABILITY:
        _AVAILABILITY.append(unavailable_reason())
    reason = _AVAILABILITY[0]
    if reason:
        if os.environ.get("CI") and missing_tools():
            pytest.fail(f"CI must be able to run {what}: {reason} "
                        f"(apt packages: iproute2 nftables conntrack tcpdump)")
        pytest.skip(f"cannot build network namespaces for {what}: {reason}")
    sweep_stale()
    with NetnsLab() as the_lab:
        names = list(the_lab.namespaces)
        yield the_lab
    left = [n for n in names if n in list_namespaces()]
    assert not left, f"namespaces left behind: {left}"


class LabError(RuntimeError):
    pass


@dataclass
class Proc:
    """A process started in a namespace; its stdout is read line by line with a deadline."""
    popen: subprocess.Popen
    what: str
    _buf: bytes = b""
    _eof: bool = False

    def read_line(self, timeout: float) -> str | None:
        """The next line of stdout (None at EOF); LabError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        fd = self.popen.stdout.fileno()
        while b"\n" not in self._buf:
            if self._eof:
                line, self._buf = self._buf, b""
                return line.decode(errors="replace") if line else None
            left = deadline - time.monotonic()
            if left <= 0:
                raise LabError(f"{self.what}: no output line within {timeout} s")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                self._eof = True
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode(errors="replace")

    def expect(self, text: str, timeout: float = 10.0) -> str:
        """Read lines until one starts with `text`; LabError on EOF or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.read_line(max(0.0, deadline - time.monotonic()))
            if line is None:
                try:
                    _, err = self.popen.communicate(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise LabError(f"{self.what} closed its output before {text!r}") from None
                raise LabError(f"{self.what} exited ({self.popen.returncode}) before {text!r}: "
                               f"{(err or b'').decode(errors='replace')}")
            if line.startswith(text):
                return line

    def finish(self, timeout: float = 10.0) -> tuple[int, str, str]:
        """Wait for exit (killed after `timeout`); returns (returncode, rest of stdout, stderr)."""
        try:
            out, err = self.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            out, err = self.popen.communicate(timeout=5)
            raise LabError(f"{self.what} did not finish within {timeout} s: {err.decode(errors='replace')}")
        rest = (self._buf + (out or b"")).decode(errors="replace")
        self._buf = b""
        return self.popen.returncode, rest, (err or b"").decode(errors="replace")


class NetnsLab:
    """client — gateway — server network namespaces; a context manager that always cleans up."""

    CLIENT4, GW4_C, GW4_S, SERVER4 = "10.231.1.2", "10.231.1.1", "10.231.2.1", "10.231.2.2"
    CLIENT6, GW6_C, GW6_S, SERVER6 = "fd31:1::2", "fd31:1::1", "fd31:2::1", "fd31:2::2"

    def __init__(self):
        base = f"fctlab{os.getpid()}n{next(_counter)}"
        self.client, self.gateway, self.server = f"{base}-cli", f"{base}-gw", f"{base}-srv"
        self.namespaces: list[str] = []       # the ones created (removed on exit)
        self._procs: list[subprocess.Popen] = []
        self._senders: dict[str, RawSender] = {}
        self._counter_name = None
        self.addresses = {ipaddress.ip_address(a) for a in (
            self.CLIENT4, self.GW4_C, self.GW4_S, self.SERVER4,
            self.CLIENT6, self.GW6_C, self.GW6_S, self.SERVER6)}
        self._ip = _which("ip")

    # ---- life cycle ---------------------------------------------------------------------------
    def __enter__(self) -> "NetnsLab":
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        """Stop the processes this lab started, then delete its namespaces (veths go with them)."""
        for p in reversed(self._procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=3)
        self._procs.clear()
        self._senders.clear()
        errors = []
        for ns in reversed(self.namespaces):
            r = subprocess.run([self._ip, "netns", "del", ns], capture_output=True, text=True, timeout=10)
            if r.returncode:
                errors.append(f"{ns}: {r.stderr.strip()}")
        self.namespaces.clear()
        if errors:
            raise LabError("could not delete namespaces: " + "; ".join(errors))

    def _build(self):
        for ns in (self.client, self.gateway, self.server):
            self._cmd([self._ip, "netns", "add", ns])
            self.namespaces.append(ns)
        # Conntrack runs in the gateway from the start (a ct expression turns it on for the namespace,
        # and loads nf_conntrack where it is a module, before its sysctls are set); the verdict chain
        # stays empty until a capture starts (see verdict_rules).
        self.nft(self.gateway, f"""
table inet {NFT_TABLE} {{
    chain conntrack_on {{
        ct state invalid counter
    }}
    chain verdicts {{
        type filter hook prerouting priority -150; policy accept;
    }}
}}
""")
        # IPv6 DAD off for interfaces created from now on (and `nodad` on each address below).
        for ns in self.namespaces:
            self.sysctl(ns, {"net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0})
        self.sysctl(self.gateway, {
            "net.ipv4.ip_forward": 1,
            "net.ipv6.conf.all.forwarding": 1,
            "net.netfilter.nf_conntrack_acct": 1,
            "net.netfilter.nf_conntrack_timestamp": 1,
            "net.netfilter.nf_conntrack_checksum": 0,
        })
        self._cmd([self._ip, "link", "add", "cli0", "netns", self.client, "type", "veth",
                   "peer", "name", "gw-cli", "netns", self.gateway])
        self._cmd([self._ip, "link", "add", "srv0", "netns", self.server, "type", "veth",
                   "peer", "name", "gw-srv", "netns", self.gateway])
        plan = [
            (self.client, "cli0", [f"{self.CLIENT4}/24", f"{self.CLIENT6}/64"]),
            (self.gateway, "gw-cli", [f"{self.GW4_C}/24", f"{self.GW6_C}/64"]),
            (self.gateway, "gw-srv", [f"{self.GW4_S}/24", f"{self.GW6_S}/64"]),
            (self.server, "srv0", [f"{self.SERVER4}/24", f"{self.SERVER6}/64"]),
        ]
        for ns, dev, addrs in plan:
            for a in addrs:
                extra = ["nodad"] if ":" in a else []
                self._cmd([self._ip, "-n", ns, "addr", "add", a, "dev", dev, *extra])
        for ns in self.namespaces:
            self._cmd([self._ip, "-n", ns, "link", "set", "lo", "up"])
        for ns, dev, _ in plan:
            self._cmd([self._ip, "-n", ns, "link", "set", dev, "up"])
        for ns, gw4, gw6 in ((self.client, self.GW4_C, self.GW6_C), (self.server, self.GW4_S, self.GW6_S)):
            self._cmd([self._ip, "-n", ns, "route", "add", "default", "via", gw4])
            self._cmd([self._ip, "-n", ns, "-6", "route", "add", "default", "via", gw6])
        self._wait_links_up()

    def _wait_links_up(self, timeout: float = 5.0):
        deadline = time.monotonic() + timeout
        for ns, dev in ((self.client, "cli0"), (self.gateway, "gw-cli"), (self.gateway, "gw-srv"),
                        (self.server, "srv0")):
            while True:
                link = self._cmd([self._ip, "-n", ns, "-o", "link", "show", "dev", dev]).stdout
                tentative = self._cmd([self._ip, "-n", ns, "-6", "-o", "addr", "show", "dev", dev,
                                       "tentative"]).stdout.strip()
                if "LOWER_UP" in link and "state UP" in link and not tentative:
                    break
                if time.monotonic() > deadline:
                    raise LabError(f"{ns}/{dev} not up within {timeout} s: {link.strip()} {tentative}")
                time.sleep(0.02)

    # ---- commands -----------------------------------------------------------------------------
    def _cmd(self, args, timeout: float = 15.0, input: str | None = None, check: bool = True):
        try:
            r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input)
        except subprocess.TimeoutExpired:
            raise LabError(f"{' '.join(args)}: no result within {timeout} s") from None
        if check and r.returncode:
            raise LabError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def _check_ns(self, ns):
        if ns not in self.namespaces:
            raise LabError(f"{ns} is not one of this lab's namespaces")

    def exec(self, ns, args, timeout: float = 15.0, input: str | None = None, check: bool = True):
        """Run a command in one of the lab's namespaces (bounded by `timeout`)."""
        self._check_ns(ns)
        return self._cmd([self._ip, "netns", "exec", ns, *args], timeout=timeout, input=input, check=check)

    def spawn(self, ns, args, what: str | None = None, stdin=subprocess.DEVNULL) -> Proc:
        """Start a command in a namespace; it is stopped when the lab closes."""
        self._check_ns(ns)
        p = subprocess.Popen([self._ip, "netns", "exec", ns, *args], stdin=stdin,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._procs.append(p)
        return Proc(p, what or f"{args[0]} in {ns}")

    def run_python(self, ns, code: str, timeout: float = 15.0) -> str:
        """Run Python code in a namespace; its stdout (LabError if it fails)."""
        r = self.exec(ns, [sys.executable, "-c", code], timeout=timeout, check=False)
        if r.returncode:
            raise LabError(f"python in {ns} failed ({r.returncode}):\n{r.stderr}")
        return r.stdout

    def spawn_python(self, ns, code: str, what: str | None = None) -> Proc:
        return self.spawn(ns, [sys.executable, "-u", "-c", code], what=what or f"python in {ns}")

    def sysctl(self, ns, values: dict):
        """Write sysctls in a namespace (through /proc/sys, no procps needed)."""
        args = []
        for key, value in values.items():
            args += ["/proc/sys/" + key.replace(".", "/"), str(value)]
        self.exec(ns, ["sh", "-ec", 'while [ $# -gt 0 ]; do printf "%s\\n" "$2" > "$1"; shift 2; done',
                       "sh", *args])

    def nft(self, ns, script: str):
        self.exec(ns, [_which("nft"), "-f", "-"], input=script)

    def drop_inbound(self, ns, match: str):
        """Drop packets matching the nft expression `match` in the input hook of `ns`, so that the
        namespace's own kernel stays silent about crafted packets (no RST, no ICMP error)."""
        self._check_ns(ns)
        self.nft(ns, f"""
table inet fastct_lab_quiet {{
    chain input {{ type filter hook input priority 0; policy accept; }}
}}
add rule inet fastct_lab_quiet input {match} drop
""")

    # ---- the gateway's view ---------------------------------------------------------------------
    def verdict_rules(self, on: bool):
        """Fill (or empty) the gateway's verdict chain in one transaction: a counter, then one log
        rule per verdict.  Every packet between the two transactions is counted and logged, none
        before or after, so the counter says exactly how many records the capture must hold.  Each
        capture gets a fresh named counter (it outlives the rules, to be read after them)."""
        script = f"flush chain inet {NFT_TABLE} verdicts\n"
        if on:
            self._counter_name = f"seen{next(_counter)}"
            script += f"add counter inet {NFT_TABLE} {self._counter_name}\n"
            script += f"add rule inet {NFT_TABLE} verdicts counter name {self._counter_name}\n"
            # queue-threshold 1: each record goes to user space at once (the default batches up to
            # 100 records for up to 1 s, which would delay them and skew their capture timestamps).
            script += "".join(f'add rule inet {NFT_TABLE} verdicts {match} log group {NFLOG_GROUP} '
                              f'prefix "{prefix}" queue-threshold 1\n' for match, prefix in VERDICT_RULES)
        self.nft(self.gateway, script)

    def verdict_counter(self) -> int:
        """Packets the verdict chain has seen (and logged) since the current capture started."""
        out = self.exec(self.gateway, [_which("nft"), "list", "counter", "inet", NFT_TABLE,
                                       self._counter_name]).stdout
        m = re.search(r"packets (\d+)", out)
        if not m:
            raise LabError(f"no packet count in the verdict counter:\n{out}")
        return int(m.group(1))

    def conntrack_table(self) -> str:
        """`conntrack -L -o extended` in the gateway, IPv4 and IPv6."""
        out = []
        for family in ("ipv4", "ipv6"):
            r = self.exec(self.gateway, [_which("conntrack"), "-L", "-o", "extended", "-f", family])
            out.append(r.stdout)
        return "".join(out)

    @contextmanager
    def capture(self, path):
        """Record the gateway's NFLOG group into `path` (pcap, link type NFLOG) while the block runs.
        On entry tcpdump is listening; on exit every packet the verdict chain counted is in the file
        (or LabError), and tcpdump has been stopped with SIGINT."""
        cap = NflogCapture(self, Path(path))
        cap.start()
        try:
            yield cap
            cap.stop()
        finally:
            cap.kill()

    @contextmanager
    def ingress_capture(self, path, bpf: str | None = None, snaplen: int | None = None):
        """Record every IP packet as it arrives at the gateway, before conntrack and its
        defragmentation (`tcpdump -i any -Q in` there: each packet once, in arrival order, never
        the gateway's own output, so never its refragmented copies), into `path` while the block
        runs.  `bpf` (default LAB_UNICAST_BPF: the lab's unicast traffic, neighbour discovery left
        out) selects the packets.  On entry tcpdump is listening; on exit it has written every
        packet it received (or LabError) and has been stopped.  `snaplen` (tcpdump -s; default
        tcpdump's 262144): libpcap sizes each slot of its capture ring for a whole snapshot, so with
        the default the 4 MiB ring holds only a handful of packets (10 in a burst test here) and a
        longer burst is lost (a LabError); a snaplen just above the largest packet (e.g. 2048 for MTU 1500) avoids that."""
        cap = IngressCapture(self, Path(path), LAB_UNICAST_BPF if bpf is None else bpf, snaplen=snaplen)
        cap.start()
        try:
            yield cap
            cap.stop()
        finally:
            cap.kill()

    @contextmanager
    def egress_capture(self, path, bpf: str | None = None, snaplen: int | None = None):
        """Record every IP packet as it leaves the gateway, after its postrouting hook (so after
        NAT and the TTL decrement of forwarding): `tcpdump -i any -Q out` there, written packet by
        packet into `path` while the block runs (link type LINUX_SLL2; read it with read_ingress).
        `bpf` and `snaplen` as for ingress_capture."""
        cap = IngressCapture(self, Path(path), LAB_UNICAST_BPF if bpf is None else bpf, direction="out",
                             snaplen=snaplen)
        cap.start()
        try:
            yield cap
            cap.stop()
        finally:
            cap.kill()

    def add_address(self, ns, dev, cidr: str):
        """Give `dev` in `ns` another address (`ADDR/PREFIX`, inside the lab's prefixes 10.231.0.0/16
        or fd31::/16, so the captures' filters keep its packets); it counts as the lab's own."""
        self._check_ns(ns)
        iface = ipaddress.ip_interface(cidr)
        if not any(iface.ip in net for net in _LAB_NETS):
            raise LabError(f"{cidr} is outside the lab's prefixes")
        self._cmd([self._ip, "-n", ns, "addr", "add", cidr, "dev", dev,
                   *(["nodad"] if iface.version == 6 else [])])
        self.addresses.add(iface.ip)

    def set_tx_checksum(self, ns, dev, on: bool):
        """Turn a device's transmit checksum offload on or off (ethtool -K DEV tx on|off, through
        the SIOCETHTOOL ioctl, so no ethtool is needed).  Off: the sender's stack writes complete
        TCP/UDP checksums into the packets instead of leaving a partial sum for the device."""
        out = self.run_python(ns, f"""
import ctypes, fcntl, socket, struct
SIOCETHTOOL, ETHTOOL_GTXCSUM, ETHTOOL_STXCSUM = 0x8946, 0x16, 0x17
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
def call(cmd, data=0):
    buf = ctypes.create_string_buffer(struct.pack("II", cmd, data), 8)
    ifr = struct.pack("16sP", {dev!r}.encode(), ctypes.addressof(buf)).ljust(40, bytes(1))
    fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifr)
    return struct.unpack("II", buf.raw)[1]
call(ETHTOOL_STXCSUM, {int(bool(on))})
print("tx", call(ETHTOOL_GTXCSUM))
""")
        if out.split() != ["tx", str(int(bool(on)))]:
            raise LabError(f"{ns}/{dev}: transmit checksum offload did not turn "
                           f"{'on' if on else 'off'}: {out}")

    def interface_names(self, ns) -> dict[int, str]:
        """{ifindex: name} of a namespace's interfaces."""
        out = self.exec(ns, [self._ip, "-o", "link", "show"]).stdout
        names = {}
        for line in out.splitlines():
            m = re.match(r"(\d+):\s+([^:@\s]+)", line)
            if m:
                names[int(m.group(1))] = m.group(2)
        return names

    def set_mtu(self, ns, dev, mtu: int):
        self.exec(ns, [self._ip, "link", "set", "dev", dev, "mtu", str(mtu)])

    def snmp(self, ns) -> dict[str, int]:
        """The IP counters of a namespace (/proc/net/snmp, /proc/net/netstat, /proc/net/snmp6), as
        {"Ip.ReasmOKs": n, "IpExt.ReasmOverlaps": n, "Ip6ReasmOKs": n, ...}."""
        out = self.exec(ns, ["cat", "/proc/net/snmp", "/proc/net/netstat", "/proc/net/snmp6"]).stdout
        values, header = {}, None
        for line in out.splitlines():
            parts = line.split()
            if not parts:
                continue
            if parts[0].endswith(":"):
                if header and header[0] == parts[0] and not parts[1].lstrip("-").isdigit():
                    header = parts
                elif header and header[0] == parts[0]:
                    values.update({f"{parts[0][:-1]}.{k}": int(v) for k, v in zip(header[1:], parts[1:])})
                    header = None
                else:
                    header = parts
            elif len(parts) == 2 and parts[1].lstrip("-").isdigit():
                values[parts[0]] = int(parts[1])
        return values

    # ---- crafted packets --------------------------------------------------------------------------
    def sender(self, ns) -> "RawSender":
        """A process in `ns` that sends raw IP packets (built by the caller) through a raw socket
        (one per namespace, started on first use)."""
        if ns not in self._senders:
            self._senders[ns] = RawSender(self, ns)
        return self._senders[ns]

    def check_own(self, *addrs):
        for a in addrs:
            if ipaddress.ip_address(a) not in self.addresses:
                raise LabError(f"{a} is not an address of this lab: it sends only between its own")


class NflogCapture:
    """tcpdump on the gateway's NFLOG group, writing a pcap file record by record (-U)."""

    def __init__(self, lab: NetnsLab, path: Path):
        self.lab, self.path = lab, path
        self.proc: Proc | None = None
        self.stderr = ""
        self.counted = None

    def start(self, timeout: float = 10.0):
        if self.path.exists():
            self.path.unlink()
        # tcpdump says "listening on" once its netlink socket is bound to the group; only then does
        # the gateway start logging.
        self.proc = _start_tcpdump(self.lab, ["-i", f"nflog:{NFLOG_GROUP}"], self.path, "tcpdump",
                                   timeout)
        self.lab.verdict_rules(True)

    def records(self) -> int:
        """Complete pcap records in the file so far (-1: no file header yet)."""
        return pcap_records(self.path)

    def wait_records(self, n: int, timeout: float = 5.0):
        """Wait until the file holds at least n records."""
        deadline = time.monotonic() + timeout
        while self.records() < n:
            if time.monotonic() > deadline:
                raise LabError(f"capture holds {self.records()} records, expected {n} within {timeout} s")
            time.sleep(0.005)

    def wait_packet(self, packet: bytes, after: int = 0, timeout: float = 5.0) -> int:
        """Wait until a record after the first `after` ones carries `packet` (an IP packet as sent:
        same addresses and the same bytes after the IP header); returns its index."""
        v4 = packet[0] >> 4 == 4
        head = (packet[0] & 0xF) * 4 if v4 else 40
        addrs = packet[12:20] if v4 else packet[8:40]
        deadline = time.monotonic() + timeout
        while True:
            for i, (_, _, _, payload) in enumerate(read_nflog(self.path)[after:], after):
                if payload is None or payload[0] >> 4 != packet[0] >> 4:
                    continue
                phead = (payload[0] & 0xF) * 4 if v4 else 40
                if (payload[12:20] if v4 else payload[8:40]) == addrs and payload[phead:] == packet[head:]:
                    return i
            if time.monotonic() > deadline:
                raise LabError(f"the gateway did not log the packet {packet.hex()} within {timeout} s")
            time.sleep(0.005)

    def settle(self, quiet: float = 0.15, timeout: float = 5.0) -> int:
        """Wait until traffic stopped (`quiet` s without a new packet) and the file holds every
        packet the verdict chain counted; returns that number."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while True:
            counted = self.lab.verdict_counter()
            have = self.records()
            now = time.monotonic()
            if (counted, have) != last:
                last, since = (counted, have), now
            elif have == counted and now - since >= quiet:
                self.counted = counted
                return counted
            if now > deadline:
                raise LabError(f"the verdict chain counted {counted} packets, the capture holds {have}")
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0):
        self.settle()
        self.lab.verdict_rules(False)      # nothing is logged from here on
        self.counted = self.lab.verdict_counter()
        self.wait_records(self.counted)
        self.stderr = _stop_tcpdump(self.proc, "tcpdump", timeout)
        if self.records() != self.counted:
            raise LabError(f"capture holds {self.records()} records, "
                           f"the verdict chain counted {self.counted}")

    def kill(self):
        if self.proc and self.proc.popen.poll() is None:
            self.proc.popen.kill()
            self.proc.popen.wait(timeout=5)


# The lab's own unicast traffic: both ends in the lab's prefixes, IPv6 neighbour discovery (ICMPv6
# types 133-137) left out.  Router solicitations, MLD reports and neighbour solicitations to
# multicast addresses come and go on their own schedule; filtering them out of both the ingress
# capture and the NFLOG records keeps the two views aligned at their edges.  (A fragment carries
# next header 44, so a fragmented packet is never taken for neighbour discovery.)
LAB_UNICAST_BPF = ("(ip and src net 10.231.0.0/16 and dst net 10.231.0.0/16) or "
                   "(ip6 and src net fd31::/16 and dst net fd31::/16 "
                   "and not (ip6[6] == 58 and ip6[40] >= 133 and ip6[40] <= 137))")
_LAB_NETS = (ipaddress.ip_network("10.231.0.0/16"), ipaddress.ip_network("fd31::/16"))


def lab_unicast(packet: bytes) -> bool:
    """Whether an IP packet passes LAB_UNICAST_BPF."""
    if not packet:
        return False
    if packet[0] >> 4 == 4:
        src, dst = packet[12:16], packet[16:20]
    elif packet[0] >> 4 == 6 and len(packet) >= 40:
        if packet[6] == 58 and len(packet) > 40 and 133 <= packet[40] <= 137:
            return False
        src, dst = packet[8:24], packet[24:40]
    else:
        return False
    return all(any(ipaddress.ip_address(a) in net for net in _LAB_NETS) for a in (src, dst))


def _start_tcpdump(lab, capture_args, path, what, timeout, bpf=()):
    """Start tcpdump in the gateway writing `path`; return once it listens and its file exists.
    -Z root: write the file as root (tcpdump would switch to its own user); -B: a 4 MiB socket buffer
    (capped by net.core.rmem_max) against bursts; -U: write each record at once."""
    proc = lab.spawn(lab.gateway, [_which("tcpdump"), *capture_args, "-U", "-n", "-Z", "root",
                                   "-B", "4096", "-w", str(path), *bpf], what=what)
    deadline = time.monotonic() + timeout
    fd = proc.popen.stderr.fileno()
    err = b""
    while b"listening on" not in err:
        left = deadline - time.monotonic()
        if left <= 0 or proc.popen.poll() is not None:
            raise LabError(f"{what} did not start listening: {err.decode(errors='replace')}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise LabError(f"{what} closed stderr before listening: {err.decode(errors='replace')}")
            err += chunk
    while pcap_records(path) < 0:
        if time.monotonic() > deadline:
            raise LabError(f"{what} did not create its file")
        time.sleep(0.01)
    return proc


def _stop_tcpdump(proc, what, timeout):
    """Stop tcpdump (SIGINT flushes its file) and return its stderr; the kernel must have dropped
    nothing."""
    p = proc.popen
    p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LabError(f"{what} did not stop within {timeout} s") from None
    stderr = err.decode(errors="replace")
    m = re.search(r"(\d+) packets? dropped by kernel", stderr)
    if m and int(m.group(1)):
        raise LabError(f"{what} lost packets: {stderr}")
    return stderr


def pcap_records(path) -> int:
    """Complete pcap records in a file being written (-1: no file header yet)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return -1
    if len(data) < 24:
        return -1
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    n, pos = 0, 24
    while pos + 16 <= len(data):
        caplen = struct.unpack_from(order + "I", data, pos + 8)[0]
        if pos + 16 + caplen > len(data):
            break
        pos += 16 + caplen
        n += 1
    return n


class IngressCapture:
    """tcpdump in the gateway on all its interfaces, inbound packets only (direction="out": outbound
    only, NetnsLab.egress_capture), written packet by packet.

    --immediate-mode: libpcap hands each packet over at once (TPACKET_V3 would hold packets in a
    ring block for up to its timeout, and lose the unfinished block on exit); -Q in: no outbound
    packet (the gateway's forwarded, refragmented copies); one socket for every interface, so the
    file's order is the order in which the packets reached the gateway's stack."""

    def __init__(self, lab: NetnsLab, path: Path, bpf: str, direction: str = "in",
                 snaplen: int | None = None):
        if direction not in ("in", "out"):
            raise ValueError(f"direction must be 'in' or 'out', not {direction!r}")
        self.lab, self.path, self.bpf, self.direction, self.snaplen = lab, path, bpf, direction, snaplen
        self.what = "ingress tcpdump" if direction == "in" else "egress tcpdump"
        self.proc: Proc | None = None
        self.stderr = ""
        self.interfaces: dict[int, str] = {}

    def start(self, timeout: float = 10.0):
        if self.path.exists():
            self.path.unlink()
        self.interfaces = self.lab.interface_names(self.lab.gateway)
        snap = [] if self.snaplen is None else ["-s", str(self.snaplen)]
        self.proc = _start_tcpdump(self.lab, ["-i", "any", "-Q", self.direction, "--immediate-mode", *snap],
                                   self.path, self.what, timeout, bpf=[self.bpf])

    def records(self) -> int:
        return pcap_records(self.path)

    def packets(self):
        return read_ingress(self.path, self.interfaces)

    def wait_packet(self, packet: bytes, after: int = 0, timeout: float = 5.0) -> int:
        """Wait until a packet after the first `after` ones is `packet` (as sent: the same bytes,
        except the IPv4 header checksum, which the sending kernel fills in); returns its index."""
        v4 = packet[0] >> 4 == 4

        def same(got):
            if v4:
                return got[:10] == packet[:10] and got[12:] == packet[12:]
            return got == packet
        deadline = time.monotonic() + timeout
        while True:
            for i, rec in enumerate(self.packets()[after:], after):
                if same(rec.packet):
                    return i
            if time.monotonic() > deadline:
                raise LabError(f"the gateway did not receive the packet {packet.hex()} within {timeout} s")
            time.sleep(0.005)

    def settle(self, quiet: float = 0.2, timeout: float = 5.0) -> int:
        """Wait until the file has not grown for `quiet` seconds; returns its record count."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while True:
            have = self.records()
            now = time.monotonic()
            if have != last:
                last, since = have, now
            elif now - since >= quiet:
                return have
            if now > deadline:
                raise LabError(f"the {self.what.split()[0]} capture kept growing ({have} records)")
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0):
        self.settle()
        self.stderr = _stop_tcpdump(self.proc, self.what, timeout)
        m = re.search(r"(\d+) packets? captured", self.stderr)
        if not m:
            raise LabError(f"{self.what} printed no packet count: {self.stderr}")
        if int(m.group(1)) != self.records():
            raise LabError(f"{self.what} captured {m.group(1)} packets, its file holds {self.records()}")

    def kill(self):
        if self.proc and self.proc.popen.poll() is None:
            self.proc.popen.kill()
            self.proc.popen.wait(timeout=5)


@dataclass
class IngressPacket:
    ts: float
    interface: str           # the gateway's interface it arrived on
    packet: bytes            # from the IP header on


def read_ingress(path, interfaces: dict[int, str] | None = None) -> list[IngressPacket]:
    """The IP packets of a `tcpdump -i any` pcap (link type LINUX_SLL or LINUX_SLL2)."""
    data = Path(path).read_bytes()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        order = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        order = ">"
    else:
        raise LabError(f"{path}: not a pcap file")
    nsec = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0xFFFF
    if linktype not in (113, 276):
        raise LabError(f"{path}: link type {linktype}, not LINUX_SLL (113) or LINUX_SLL2 (276)")
    out, pos = [], 24
    while pos + 16 <= len(data):
        sec, frac, caplen, _wire = struct.unpack_from(order + "IIII", data, pos)
        if pos + 16 + caplen > len(data):
            break
        rec = data[pos + 16:pos + 16 + caplen]
        pos += 16 + caplen
        if linktype == 276:
            ifindex = struct.unpack_from("!I", rec, 4)[0]
            name = (interfaces or {}).get(ifindex, f"if{ifindex}")
            packet = rec[20:]
        else:
            name, packet = "?", rec[16:]
        out.append(IngressPacket(sec + frac / (1e9 if nsec else 1e6), name, packet))
    return out


_SENDER = r"""
import socket, sys
s4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
print("ready", flush=True)
for line in sys.stdin:
    pkt = bytes.fromhex(line.strip())
    if pkt[0] >> 4 == 4:
        s4.sendto(pkt, (socket.inet_ntop(socket.AF_INET, pkt[16:20]), 0))
    else:
        s6.sendto(pkt, (socket.inet_ntop(socket.AF_INET6, pkt[24:40]), 0))
    print("sent", flush=True)
"""


class RawSender:
    """Sends complete IP packets (IPv4: the kernel fills in the header checksum, and the id if 0)."""

    def __init__(self, lab: NetnsLab, ns: str):
        self.lab = lab
        self.proc = lab.spawn(ns, [sys.executable, "-u", "-c", _SENDER], what=f"raw sender in {ns}",
                              stdin=subprocess.PIPE)
        self.proc.expect("ready", timeout=10)

    def send(self, packet: bytes, timeout: float = 5.0):
        if packet[0] >> 4 == 4:
            src, dst = packet[12:16], packet[16:20]
        else:
            src, dst = packet[8:24], packet[24:40]
        self.lab.check_own(ipaddress.ip_address(src), ipaddress.ip_address(dst))
        self.proc.popen.stdin.write(packet.hex().encode() + b"\n")
        self.proc.popen.stdin.flush()
        self.proc.expect("sent", timeout=timeout)


def read_nflog(path) -> list[tuple[float, int, str, bytes]]:
    """The records of an NFLOG pcap: (timestamp, family, prefix, IP packet) per record.

    An NFLOG record (link type 239) is a 4-byte header (family, version, resource id) followed by
    TLVs: a 16-bit length (header included, value padded to 4 bytes) and a 16-bit type, both in the
    capturing host's byte order (little-endian here).  NFULA_PREFIX (10) holds the log rule's prefix,
    NUL-terminated; NFULA_PAYLOAD (9) the packet from its IP header on."""
    data = Path(path).read_bytes()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        order = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        order = ">"
    else:
        raise LabError(f"{path}: not a pcap file")
    nsec = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0xFFFF
    if linktype != LINKTYPE_NFLOG:
        raise LabError(f"{path}: link type {linktype}, not NFLOG ({LINKTYPE_NFLOG})")
    out, pos = [], 24
    while pos + 16 <= len(data):
        sec, frac, caplen, _wire = struct.unpack_from(order + "IIII", data, pos)
        if pos + 16 + caplen > len(data):
            break                                  # still being written
        rec = data[pos + 16:pos + 16 + caplen]
        pos += 16 + caplen
        prefix, payload = None, None
        off = 4
        while off + 4 <= len(rec):
            tlen, ttype = struct.unpack_from("<HH", rec, off)
            if tlen < 4:
                break
            value = rec[off + 4:off + tlen]
            if ttype & 0x7FFF == NFULA_PREFIX:
                prefix = value.split(b"\0", 1)[0].decode()
            elif ttype & 0x7FFF == NFULA_PAYLOAD:
                payload = value
            off += (tlen + 3) & ~3
        out.append((sec + frac / (1e9 if nsec else 1e6), rec[0], prefix, payload))
    return out

"""The gateway's interfaces, for offline traffic: which interface a packet came in on and which it
leaves by, and the addresses redirect and masquerade take.

A capture has no routing table, so fastct models the gateway the capture was taken on:

    capture interface           gateway interface (by name)                 output interface
    -----------------           ---------------------------                 ----------------
    pcapng IDB if_name "eth0" -> eth0 ---[prerouting: raw, dnat]---+--> the --iface whose prefix
    pcapng IDB without name   -> ifN                               |    holds the destination
    classic pcap              -> --in-iface NAME                   +--> else --out-iface NAME
                                                                        (the default route)

- `--iface NAME=ADDR[/PREFIX]` (repeatable; IPv4 and IPv6) declares an interface, its address and
  the prefix connected to it (a bare address is a /32 or /128: no connected prefix beyond itself).
- A packet's input interface is the pcapng interface it was captured on, by its if_name option, else
  `ifN` (N its number in the file); for classic pcap, which has no interfaces, `--in-iface NAME`.
- Its output interface is the declared interface whose connected prefix holds its destination after
  destination NAT (longest prefix first), else `--out-iface NAME`.  Masquerade takes the output
  interface's address of the packet's family; redirect the input interface's.
- Interfaces are numbered in the order they become known: declared ones first, then the input and
  output defaults, then capture interface names.  Rules are compiled against the names known when
  tracking starts (a pcapng file's interfaces before its first packet); an interface name a rule
  uses must be among them.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

import numpy as np

from fastct import _engine

_NAME = re.compile(r"^[A-Za-z0-9_.:@+-]{1,15}$")      # IFNAMSIZ - 1 characters, no spaces or '/'
L3_IPV4, L3_IPV6 = 2, 10


def check_name(name: str, option: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise ValueError(f"{option}: {name!r} is not an interface name (1-15 characters: letters, "
                         f"digits and _ . : @ + -)")
    return name


def parse_iface(text: str) -> tuple[str, ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """`--iface NAME=ADDR[/PREFIX]` -> (name, ip_interface)."""
    name, sep, addr = text.partition("=")
    if not sep or not addr:
        raise ValueError(f"--iface takes NAME=ADDR[/PREFIX], not {text!r}")
    check_name(name, "--iface")
    try:
        iface = ipaddress.ip_interface(addr)
    except ValueError:
        raise ValueError(f"--iface {text!r}: {addr!r} is not an address with an optional /PREFIX") from None
    if iface.version == 6 and iface.ip.ipv4_mapped is not None:
        raise ValueError(f"--iface {text!r}: an IPv4-mapped IPv6 address; write the IPv4 address")
    return name, iface


@dataclass
class Interfaces:
    """The interface model.  `declared`: {name: [ip_interface, ...]} in declaration order;
    `in_iface` / `out_iface`: the classic-pcap input interface and the default route's;
    `capture`: the capture's interface names (pcapng if_name or ifN), by capture interface number."""
    declared: dict[str, list] = field(default_factory=dict)
    in_iface: str | None = None
    out_iface: str | None = None
    capture: list[str] = field(default_factory=list)

    @classmethod
    def from_cli(cls, ifaces=(), in_iface=None, out_iface=None) -> Interfaces:
        model = cls()
        for text in ifaces:
            name, iface = parse_iface(text)
            model.declared.setdefault(name, []).append(iface)
        if in_iface is not None:
            model.in_iface = check_name(in_iface, "--in-iface")
        if out_iface is not None:
            model.out_iface = check_name(out_iface, "--out-iface")
        return model

    @property
    def names(self) -> list[str]:
        """Every known interface, in number order."""
        out: list[str] = []
        for name in [*self.declared, self.in_iface, self.out_iface, *self.capture]:
            if name is not None and name not in out:
                out.append(name)
        return out

    def number(self, name: str) -> int | None:
        names = self.names
        return names.index(name) if name in names else None

    def matching(self, pattern: str) -> list[int]:
        """The numbers of the known interfaces a rule's name matches (`eth*`: any with that prefix)."""
        if pattern.endswith("*"):
            return [i for i, n in enumerate(self.names) if n.startswith(pattern[:-1])]
        n = self.number(pattern)
        return [] if n is None else [n]

    def iif_map(self, n_capture: int | None = None) -> np.ndarray:
        """Capture interface number -> gateway interface number (-1: none)."""
        n = len(self.capture) if n_capture is None else n_capture
        out = np.full(max(n, 1), -1, dtype=np.int16)
        for i in range(n):
            if i < len(self.capture):
                out[i] = self.number(self.capture[i])
            elif self.in_iface is not None:
                out[i] = self.number(self.in_iface)
        return out

    def with_capture(self, interfaces, classic: bool) -> Interfaces:
        """This model with a capture's interfaces (fastct.capture.reader.Interface list): pcapng
        interfaces by name (ifN when unnamed); a classic pcap's one interface is --in-iface."""
        if classic:
            names = [self.in_iface or "if0"] * max(len(interfaces), 1)
        else:
            names = [i.name or f"if{n}" for n, i in enumerate(interfaces)]
        # (A capture's names are taken as they are, e.g. Windows' \Device\NPF_{...}: a rule can only
        # name interfaces of up to 15 characters, as Linux, so such an interface matches only a
        # wildcard such as "*".)
        return Interfaces(dict(self.declared), self.in_iface, self.out_iface, names)

    def addresses(self) -> tuple[np.ndarray, np.ndarray]:
        """Per interface number: its first IPv4 and first IPv6 address (uint8[n, 32]) and which
        it has (bit 0 IPv4, bit 1 IPv6)."""
        names = self.names
        addr = np.zeros((max(len(names), 1), 32), dtype=np.uint8)
        has = np.zeros(max(len(names), 1), dtype=np.uint8)
        for i, name in enumerate(names):
            for iface in self.declared.get(name, []):
                bit, off = (1, 0) if iface.version == 4 else (2, 16)
                if not has[i] & bit:
                    raw = iface.ip.packed
                    addr[i, off:off + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
                    has[i] |= bit
        return addr, has

    def routes(self) -> np.ndarray:
        """The connected prefixes, longest first (ties in declaration order), as RS_ROUTE_DTYPE."""
        rows = []
        for name, ifaces in self.declared.items():
            for iface in ifaces:
                rows.append((iface.network, self.number(name)))
        rows.sort(key=lambda r: -r[0].prefixlen)             # stable
        out = np.zeros(len(rows), dtype=_engine.RS_ROUTE_DTYPE)
        for i, (net, num) in enumerate(rows):
            raw = net.network_address.packed
            out["prefix"][i, :len(raw)] = np.frombuffer(raw, dtype=np.uint8)
            out["l3"][i] = L3_IPV4 if net.version == 4 else L3_IPV6
            out["plen"][i] = net.prefixlen
            out["oif"][i] = num
        return out

    def default_oif(self) -> int:
        return -1 if self.out_iface is None else self.number(self.out_iface)

    def describe(self) -> list[str]:
        """One line per interface, for `fastct rules`."""
        lines = []
        for i, name in enumerate(self.names):
            addrs = " ".join(str(a) for a in self.declared.get(name, []))
            roles = []
            if name == self.in_iface:
                roles.append("input of classic pcap")
            if name == self.out_iface:
                roles.append("default route")
            if name in self.capture:
                roles.append("capture")
            lines.append(f"  {i}: {name}" + (f" {addrs}" if addrs else "")
                         + (f" ({', '.join(roles)})" if roles else ""))
        return lines

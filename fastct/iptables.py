"""iptables-save / ip6tables-save text -> `fastct.ruleset.Ruleset`.

`parse_iptables(text, source, family)` reads what `iptables-save` (family 4) or `ip6tables-save`
(family 6) prints, the format `iptables-restore` reads back; `load_iptables_file(path)` reads a file.
Errors are `RulesetError`s naming the file, line and column of the offending token.  The form
produced is fastct.ruleset's (read its docstring first); this module only maps iptables' words onto
it.  Configuration parsing only: nothing here looks at packets.

Tables and chains
-----------------
- `*nat` and `*raw` are read, into tables "nat" and "raw" of family "ip" (iptables) or "ip6"
  (ip6tables).  `*filter`, `*mangle` and `*security` are skipped up to their COMMIT, with one
  warning each in `Ruleset.warnings` ("FILE:LINE: table filter is not read (fastct models conntrack
  and NAT)"): fastct tracks connections and translates addresses, it does not filter.  Any other
  table is an error, as are a table given twice, a table without COMMIT and lines outside a table.
- Built-in chains become base chains named as iptables names them, at the priorities the kernel
  registers those tables at:

      nat PREROUTING  -> type nat,    hook prerouting,  priority -100 (dstnat)
      nat INPUT       -> type nat,    hook input,       priority  100 (srcnat)
      nat OUTPUT      -> type nat,    hook output,      priority -100 (dstnat)
      nat POSTROUTING -> type nat,    hook postrouting, priority  100 (srcnat)
      raw PREROUTING  -> type filter, hook prerouting,  priority -300 (raw)
      raw OUTPUT      -> type filter, hook output,      priority -300 (raw)

  `:CHAIN POLICY [p:b]` sets a built-in chain's policy (ACCEPT / DROP); `:NAME - [p:b]` declares a
  user chain (a regular chain, reached by -j / -g).  Counters are read and ignored.  Chains appear
  in the order they are declared; a built-in chain that gets rules without being declared is
  created (iptables-restore's built-in chains always exist).  A user chain must be declared before
  a rule adds to it or jumps to it, as iptables-restore requires.

Rules
-----
Only `-A CHAIN` lines (the only command iptables-save prints); `[p:b]` before it (iptables-save -c)
and `-c P B` are read and ignored.  Tokens are split as a POSIX shell would (shlex), so
`--comment "two words"` is one token.  `Rule.text` is the line after `-A CHAIN`; `Rule.loc` is where
that text starts (the `-A` when nothing follows).  Each option gives one `Match`, in the order
written, located at the option (or at its `!`):

    [!] -s / -d ADDR[/LEN|/NETMASK][,ADDR...]   saddr / daddr, (first, last) address pairs
    [!] -i / -o NAME                             iifname / oifname; iptables' `eth+` is `eth*`
    [!] -p tcp|udp|udplite|sctp|dccp|icmp|icmpv6|ipv6-icmp|gre|NAME|NUMBER
                                                 l4proto; `all` (or 0) is no match
    [!] --sport / --dport N | N:M | :M | N:      sport / dport (after -p tcp|udp|udplite|sctp|dccp,
                                                 with or without -m tcp etc.)
    -m multiport [!] --sports / --dports LIST    one sport / dport match with several pairs
    -m conntrack [!] --ctstate LIST, --ctdir ORIGINAL|REPLY   ct state / ct direction
    -m state [!] --state LIST                    ct state
    -m connmark [!] --mark V[/MASK]              ct mark
    -m mark [!] --mark V[/MASK]                  meta mark
    -m comment --comment TEXT                    nothing (comments are not kept)

Targets (`-j`, with their options after them, as iptables-save prints them; `-g CHAIN` is goto):

    DNAT --to-destination SPEC [--random] [--persistent]                NatTarget dnat
    SNAT --to-source SPEC [--random] [--random-fully] [--persistent]    NatTarget snat
    MASQUERADE [--to-ports P[-Q]] [--random] [--random-fully]           NatTarget masquerade
    REDIRECT [--to-ports P[-Q]] [--random]                              NatTarget redirect
    CT --notrack, NOTRACK                Rule.notrack (not terminal: the chain goes on, as in iptables)
    CT [--helper NAME] [--zone N]        Rule.ct_helper_set (and a Helper NAME of the rule's -p) /
                                         Rule.ct_zone_set
    CONNMARK / MARK --set-mark V, --set-xmark V/0xffffffff   Rule.ct_mark_set / meta_mark_set
    ACCEPT, DROP, RETURN, REJECT [--reject-with T]           verdict accept / drop / return / reject
    a user chain                                             verdict jump, Rule.target = its name

`--random-fully` is the flag "fully-random".  SPEC is ADDR[-ADDR][:PORT[-PORT]], IPv6 as
[ADDR]:PORT or [ADDR-ADDR]:PORT, read by fastct.nat's target parser (so its rules hold: an address
is required, ports are decimal 1-65535).

Decisions, where iptables accepts more than fastct can model or where the format leaves a choice:

- Family: given, or (family=None) fixed by the first evidence: an `ip6tables-save` / `iptables-save`
  header comment or the first address; IPv4 when there is none.  An address of the other family is
  an error (an ip table never sees an IPv6 packet).
- Masks must be contiguous (a non-contiguous netmask is not one range); host bits are cleared as
  iptables does (`-s 10.0.0.1/8` is 10.0.0.0/8).  Host names are not resolved.
- Ports are decimal (iptables also reads 0x50 and service names); a range has first <= last.
  iptables has no port match for UDP-Lite, but nftables has one, so `-p udplite --dport` is read.
  `-m multiport --ports` (source OR destination port) is not supported: a rule's matches all hold,
  so it has no form here.  multiport takes at most 15 ports, a range counting as two.
- Mark values are decimal or 0x-hex (a leading 0 is refused: iptables would read it as octal).  A
  full mask (0xffffffff) is stored as no mask; a value with bits outside its mask never matches and
  is an error.  --set-mark / --set-xmark take no mask or the full one only (a partial mask would
  keep some of the old mark bits, which Rule's "set" cannot say).
- ct state names are read in any case (iptables does); the SNAT / DNAT pseudo-states are not
  supported.  `--ctdir` cannot be negated (iptables refuses it too).
- NAT targets only in the nat table: DNAT / REDIRECT in PREROUTING, OUTPUT or a user chain, SNAT /
  MASQUERADE in POSTROUTING, INPUT or a user chain.  CT and NOTRACK only in the raw table (where the
  kernel accepts them).  MARK and CONNMARK belong to mangle in iptables but are read in nat and raw.
  NAT ports (--to-ports, or a port in SPEC) need -p tcp, udp, udplite, sctp, dccp, icmp or icmpv6.
- CT --helper NAME makes one Helper per (table, NAME), type NAME, whose protocol is the rule's -p
  (tcp or udp, else an error); the same name used with another protocol in that table is an error.
  CT --notrack does not combine with other CT options; a CT without options is an error.
- ct state values keep the order written (duplicates dropped).  A user chain may not be named like
  a target this module reads (-j NAME would mean the target).
- Each option at most once per rule (per match module for module options); target options cannot
  be negated; anything not listed above is an error naming the token.
"""
from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from fastct.nat import TO_PORT_PROTOCOLS, _parse_ports, _parse_target
from fastct.ruleset import (CT_STATE_BITS, PRIORITY_NAMES, Chain, Helper, Loc, Match, NatTarget, Rule,
                            Ruleset, RulesetError)

__all__ = ["parse_iptables", "load_iptables_file"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Built-in chains of the tables read: (chain type, hook, priority).
_BUILTIN_CHAINS: dict[str, dict[str, tuple[str, str, int]]] = {
    "nat": {
        "PREROUTING": ("nat", "prerouting", PRIORITY_NAMES["dstnat"]),
        "INPUT": ("nat", "input", PRIORITY_NAMES["srcnat"]),
        "OUTPUT": ("nat", "output", PRIORITY_NAMES["dstnat"]),
        "POSTROUTING": ("nat", "postrouting", PRIORITY_NAMES["srcnat"]),
    },
    "raw": {
        "PREROUTING": ("filter", "prerouting", PRIORITY_NAMES["raw"]),
        "OUTPUT": ("filter", "output", PRIORITY_NAMES["raw"]),
    },
}
_SKIPPED_TABLES = ("filter", "mangle", "security")

# Protocol names -p takes: those of fastct.tracker.PROTOCOLS and the /etc/protocols names
# iptables-save prints for a few others; a number works for any protocol.
_PROTOCOL_NUMBERS = {
    "icmp": 1, "igmp": 2, "ipencap": 4, "tcp": 6, "udp": 17, "dccp": 33, "ipv6": 41, "gre": 47,
    "esp": 50, "ah": 51, "icmpv6": 58, "ipv6-icmp": 58, "ospf": 89, "pim": 103, "vrrp": 112,
    "l2tp": 115, "sctp": 132, "ipv6-mh": 135, "mh": 135, "udplite": 136,
}
# The protocols with port numbers, and the match module `-p NAME` implicitly loads for each (udplite
# has none in iptables; see the module docstring).
_PORT_PROTOCOLS = {6: "tcp", 17: "udp", 33: "dccp", 132: "sctp", 136: "udplite"}
_PROTOCOL_MODULES = {**_PORT_PROTOCOLS, 1: "icmp", 58: "icmp6"}
# The protocol each protocol match module requires (-m tcp needs -p tcp, ...).
_MODULE_PROTOCOL = {name: number for number, name in _PROTOCOL_MODULES.items()}

# Match modules: option -> handler (a _RuleParser method `_opt_<handler>`).
_PORT_OPTIONS = {"--sport": "sport", "--source-port": "sport",
                 "--dport": "dport", "--destination-port": "dport"}
_MODULE_OPTIONS: dict[str, dict[str, str]] = {
    "tcp": _PORT_OPTIONS, "udp": _PORT_OPTIONS, "udplite": _PORT_OPTIONS, "sctp": _PORT_OPTIONS,
    "dccp": _PORT_OPTIONS, "icmp": {}, "icmp6": {},
    "multiport": {"--sports": "multi_sport", "--source-ports": "multi_sport",
                  "--dports": "multi_dport", "--destination-ports": "multi_dport",
                  "--ports": "multi_ports"},
    "conntrack": {"--ctstate": "ctstate", "--ctdir": "ctdir"},
    "state": {"--state": "ctstate"},
    "connmark": {"--mark": "connmark"},
    "mark": {"--mark": "mark"},
    "comment": {"--comment": "comment"},
}
# Options those modules have that fastct does not model: named so the error can say so.
_UNSUPPORTED_OPTIONS: dict[str, tuple[str, ...]] = {
    "tcp": ("--tcp-flags", "--syn", "--tcp-option"),
    "sctp": ("--chunk-types",),
    "dccp": ("--dccp-types", "--dccp-option"),
    "icmp": ("--icmp-type",),
    "icmp6": ("--icmpv6-type",),
    "conntrack": ("--ctproto", "--ctorigsrc", "--ctorigdst", "--ctreplsrc", "--ctrepldst",
                  "--ctorigsrcport", "--ctorigdstport", "--ctreplsrcport", "--ctrepldstport",
                  "--ctstatus", "--ctexpire"),
}
_NOT_NEGATABLE = {"ctdir", "comment"}
_MULTIPORT_MAX = 15          # the kernel's XT_MULTI_PORTS

# General options (long forms as iptables spells them).
_GENERAL_OPTIONS = {
    "-s": "-s", "--source": "-s", "-d": "-d", "--destination": "-d",
    "-i": "-i", "--in-interface": "-i", "-o": "-o", "--out-interface": "-o",
    "-p": "-p", "--protocol": "-p", "-m": "-m", "--match": "-m",
    "-j": "-j", "--jump": "-j", "-g": "-g", "--goto": "-g", "-c": "-c", "--set-counters": "-c",
}
_IFNAMSIZ = 16               # interface names are at most 15 characters

_STATES = {name.upper(): name for name in CT_STATE_BITS}
_VERDICT_TARGETS = {"ACCEPT": "accept", "DROP": "drop", "RETURN": "return", "REJECT": "reject"}
_COUNTERS = re.compile(r"\[\d+:\d+\]\Z")
_U32_MAX = 0xFFFFFFFF


# ---- tokens --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Token:
    text: str          # unquoted
    loc: Loc


def _tokenize(line: str, source: str, lineno: int) -> list[_Token]:
    """Split a line as a POSIX shell would (shlex), keeping each token's column: find where each
    word starts and ends (whitespace outside quotes), then let shlex unquote that word alone."""
    tokens: list[_Token] = []
    i, n = 0, len(line)
    while i < n:
        if line[i].isspace():
            i += 1
            continue
        start, quote = i, None
        while i < n and (quote or not line[i].isspace()):
            ch = line[i]
            if quote == "'":
                quote = None if ch == "'" else quote
            elif ch == "\\":
                i += 1                        # the escaped character, whatever it is
            elif ch == '"':
                quote = None if quote else '"'
            elif ch == "'" and not quote:
                quote = "'"
            i += 1
        loc = Loc(source, lineno, start + 1)
        raw = line[start:i]
        try:
            words = shlex.split(raw)
        except ValueError as exc:             # "No closing quotation", "No escaped character"
            raise RulesetError(loc, f"cannot split the line here: {exc}", raw) from None
        tokens.append(_Token(words[0] if words else "", loc))
    return tokens


# ---- values --------------------------------------------------------------------------------------
def _u32(tok: _Token, text: str, what: str) -> int:
    """A mark: decimal or 0x-hex, 0..0xffffffff."""
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
        value = int(text, 16)
    elif re.fullmatch(r"0|[1-9][0-9]*", text):
        value = int(text)
    else:
        # iptables reads numbers with base 0, so "010" would be 8: refuse rather than guess
        raise RulesetError(tok.loc, f"{what} {text!r} is not a decimal or 0x-hex number", tok.text)
    if value > _U32_MAX:
        raise RulesetError(tok.loc, f"{what} {text!r} does not fit in 32 bits", tok.text)
    return value


def _value_and_mask(tok: _Token, what: str) -> tuple[int, int | None]:
    """V[/MASK] -> (V, MASK or None; a full mask is no mask)."""
    value_text, slash, mask_text = tok.text.partition("/")
    value = _u32(tok, value_text, what)
    mask = _u32(tok, mask_text, f"{what} mask") if slash else None
    return value, (None if mask == _U32_MAX else mask)


def _port(tok: _Token, text: str) -> int:
    if not re.fullmatch(r"0|[1-9][0-9]*", text):
        hint = " (service names are not supported)" if text.isalpha() else ""
        raise RulesetError(tok.loc, f"port {text!r} is not a decimal number{hint}", tok.text)
    port = int(text)
    if port > 65535:
        raise RulesetError(tok.loc, f"port {port} out of range 0-65535", tok.text)
    return port


def _port_range(tok: _Token, text: str) -> tuple[int, int]:
    """iptables' N, N:M, :M (0:M), N: (N:65535)."""
    if ":" not in text:
        port = _port(tok, text)
        return port, port
    first_text, _, last_text = text.partition(":")
    first = _port(tok, first_text) if first_text else 0
    last = _port(tok, last_text) if last_text else 65535
    if first > last:
        raise RulesetError(tok.loc, f"port range {text!r}: first port after last", tok.text)
    return first, last


def _prefix_len(tok: _Token, mask_text: str, version: int) -> int:
    """A mask as prefix length or as an address (dotted netmask, or IPv6 form) -> prefix length."""
    bits = 32 if version == 4 else 128
    if mask_text.isdigit():
        length = int(mask_text)
        if length > bits:
            raise RulesetError(tok.loc, f"prefix length /{length} out of range 0-{bits}", tok.text)
        return length
    try:
        mask = ipaddress.ip_address(mask_text)
    except ValueError:
        raise RulesetError(tok.loc, f"mask {mask_text!r} is neither a prefix length nor a netmask",
                           tok.text) from None
    if mask.version != version:
        raise RulesetError(tok.loc, f"mask {mask_text!r} is of another family than its address", tok.text)
    value = int(mask)
    host = ~value & ((1 << bits) - 1)
    if host & (host + 1):           # host bits must be all the low ones: 0...01...1
        raise RulesetError(tok.loc, f"netmask {mask_text} is not contiguous; fastct matches address "
                           "ranges only", tok.text)
    return bits - host.bit_length()


def _address(tok: _Token, text: str) -> Address:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise RulesetError(tok.loc, f"{text!r} is not an IP address (host names are not resolved)",
                           tok.text) from None
    if addr.version == 6 and addr.scope_id:
        raise RulesetError(tok.loc, f"{text!r} has a scope; rule addresses have none", tok.text)
    return addr


def _address_ranges(tok: _Token) -> list[tuple[Address, Address]]:
    """ADDR[/MASK][,ADDR[/MASK]...] -> (first, last) pairs (host bits cleared, as iptables does)."""
    pairs = []
    for item in tok.text.split(","):
        if not item:
            raise RulesetError(tok.loc, "empty address in the list", tok.text)
        addr_text, slash, mask_text = item.partition("/")
        addr = _address(tok, addr_text)
        bits = addr.max_prefixlen
        length = _prefix_len(tok, mask_text, addr.version) if slash else bits
        net = ipaddress.ip_network((addr, length), strict=False)
        pairs.append((net.network_address, net.broadcast_address))
    return pairs


def _interface(tok: _Token) -> str:
    """iptables' `eth+` (any name starting with eth) is the ruleset's `eth*`."""
    name = tok.text
    if not name or "*" in name or "/" in name or len(name) >= _IFNAMSIZ:
        raise RulesetError(tok.loc, f"{name!r} is not an interface name (at most {_IFNAMSIZ - 1} "
                           "characters, no '*' or '/'; iptables' wildcard is a trailing '+')", tok.text)
    return name[:-1] + "*" if name.endswith("+") else name


def _protocol(tok: _Token) -> int:
    text = tok.text.lower()
    if text == "all":
        return 0
    if text.isdigit():
        number = int(text)
        if number > 255:
            raise RulesetError(tok.loc, f"protocol number {number} out of range 0-255", tok.text)
        return number
    if text not in _PROTOCOL_NUMBERS:
        raise RulesetError(tok.loc, f"unknown protocol {tok.text!r}; use its number or one of "
                           f"{', '.join(sorted(_PROTOCOL_NUMBERS))}", tok.text)
    return _PROTOCOL_NUMBERS[text]


# ---- the file ------------------------------------------------------------------------------------
@dataclass
class _Table:
    name: str
    loc: Loc
    skipped: bool
    chains: dict[str, Chain] = field(default_factory=dict)


class _Family:
    """The address family: given, or fixed by the first evidence (a header or an address)."""

    def __init__(self, version: int | None):
        if version not in (None, 4, 6):
            raise ValueError(f"parse_iptables: family must be 4, 6 or None, not {version!r}")
        self.version = version
        self.given = version is not None
        self.evidence: str | None = None    # what fixed it, for the error message

    def note_header(self, version: int, loc: Loc) -> None:
        if self.version is None:
            self.version, self.evidence = version, f"the header at {loc}"

    def note(self, addr: Address, tok: _Token) -> None:
        if self.version is None:
            self.version, self.evidence = addr.version, f"the address at {tok.loc}"
        elif addr.version != self.version:
            why = "family given" if self.given else f"family fixed by {self.evidence}"
            tool = "ip6tables" if self.version == 6 else "iptables"
            raise RulesetError(tok.loc, f"IPv{addr.version} address {addr} in {tool} rules "
                               f"(IPv{self.version}, {why})", tok.text)


class _Parser:
    def __init__(self, text: str, source: str, family: int | None):
        self.text = text
        self.source = source
        self.family = _Family(family)
        self.ruleset = Ruleset(source=source)
        self.table: _Table | None = None
        self.seen_tables: set[str] = set()

    def loc(self, lineno: int, col: int = 1) -> Loc:
        return Loc(self.source, lineno, col)

    def parse(self) -> Ruleset:
        for lineno, line in enumerate(self.text.splitlines(), 1):
            self.line(lineno, line)
        if self.table is not None:
            raise RulesetError(self.table.loc, f"table {self.table.name} has no COMMIT")
        self.finish()
        return self.ruleset

    def finish(self) -> None:
        """Chains and helpers were made before the family was known (when guessed): set it now."""
        family = "ip6" if self.family.version == 6 else "ip"
        for chain in self.ruleset.chains:
            chain.family = family
        for helper in self.ruleset.helpers:
            helper.family = family

    def line(self, lineno: int, line: str) -> None:
        stripped = line.strip()
        col = len(line) - len(line.lstrip()) + 1
        if not stripped:
            return
        if stripped.startswith("#"):
            self.header(lineno, col, stripped)
            return
        if stripped.startswith("*"):
            self.start_table(lineno, col, stripped)
            return
        if self.table is None:
            raise RulesetError(self.loc(lineno, col), "line outside a table (expected '*nat', '*raw', ...)",
                               stripped.split()[0])
        if stripped == "COMMIT":
            self.table = None
        elif self.table.skipped:
            pass                                       # the warned skip of filter / mangle / security
        elif stripped.startswith(":"):
            self.declare_chain(lineno, line)
        else:
            self.rule(lineno, line)

    def header(self, lineno: int, col: int, text: str) -> None:
        # `# Generated by ip6tables-save v1.8.9 ...`: which tool printed the text is the best evidence
        # of its family when no address says it (a header never overrides a given family).
        words = text[1:].split()
        if len(words) >= 3 and words[:2] == ["Generated", "by"]:
            tool = words[2]
            if tool.startswith("ip6tables-save"):
                self.family.note_header(6, self.loc(lineno, col))
            elif tool.startswith("iptables-save"):
                self.family.note_header(4, self.loc(lineno, col))

    def start_table(self, lineno: int, col: int, text: str) -> None:
        loc = self.loc(lineno, col)
        name = text[1:].strip()
        if self.table is not None:
            raise RulesetError(loc, f"table {self.table.name} (line {self.table.loc.line}) has no COMMIT "
                               "before the next table", text)
        if name in self.seen_tables:
            raise RulesetError(loc, f"table {name} given twice", text)
        if name in _SKIPPED_TABLES:
            self.ruleset.warnings.append(
                f"{self.source}:{lineno}: table {name} is not read (fastct models conntrack and NAT)")
        elif name not in _BUILTIN_CHAINS:
            raise RulesetError(loc, f"unknown table {name!r}; iptables-save prints nat, raw, filter, "
                               "mangle and security", text)
        self.seen_tables.add(name)
        self.table = _Table(name, loc, skipped=name in _SKIPPED_TABLES)

    def declare_chain(self, lineno: int, line: str) -> None:
        """`:NAME POLICY [p:b]`: POLICY is ACCEPT / DROP for a built-in chain, '-' for a user chain."""
        tokens = _tokenize(line, self.source, lineno)
        first = tokens[0]
        name = first.text[1:]
        rest = tokens[1:]
        if rest and _COUNTERS.match(rest[-1].text):
            rest = rest[:-1]
        if len(rest) != 1:
            raise RulesetError(first.loc, "a chain line is ':NAME POLICY [PACKETS:BYTES]'", first.text)
        policy = rest[0]
        table = self.table
        if name in table.chains:
            raise RulesetError(first.loc, f"chain {name} declared twice in table {table.name}", first.text)
        builtins = _BUILTIN_CHAINS[table.name]
        if policy.text == "-":
            self.check_user_chain_name(first, name, builtins)
            chain = Chain(family="", table=table.name, name=name, loc=first.loc)
        elif name not in builtins:
            raise RulesetError(policy.loc, f"{name} is not a built-in chain of table {table.name} "
                               f"({', '.join(builtins)}); a user chain's policy is '-'", policy.text)
        elif policy.text not in ("ACCEPT", "DROP"):
            raise RulesetError(policy.loc, "a built-in chain's policy is ACCEPT or DROP", policy.text)
        else:
            chain = self.base_chain(name, first.loc)
            chain.policy = policy.text.lower()
        table.chains[name] = chain
        self.ruleset.chains.append(chain)

    def check_user_chain_name(self, tok: _Token, name: str, builtins) -> None:
        if name in builtins:
            raise RulesetError(tok.loc, f"{name} is a built-in chain; its policy is ACCEPT or DROP", tok.text)
        # a chain named like a target could never be jumped to: -j NAME would mean the target
        if name in _VERDICT_TARGETS or name in _TARGET_OPTIONS:
            raise RulesetError(tok.loc, f"{name!r} is a target's name, not a chain name", tok.text)
        if not name or name[0] in "-!" or any(c.isspace() for c in name):
            raise RulesetError(tok.loc, f"{name!r} cannot be a chain name", tok.text)

    def base_chain(self, name: str, loc: Loc) -> Chain:
        chain_type, hook, priority = _BUILTIN_CHAINS[self.table.name][name]
        return Chain(family="", table=self.table.name, name=name, type=chain_type, hook=hook,
                     priority=priority, loc=loc)

    def rule(self, lineno: int, line: str) -> None:
        tokens = _tokenize(line, self.source, lineno)
        if _COUNTERS.match(tokens[0].text):                 # iptables-save -c: [packets:bytes]
            tokens = tokens[1:]
        if not tokens:
            raise RulesetError(self.loc(lineno), "counters without a rule")
        command = tokens[0]
        if command.text not in ("-A", "--append"):
            what = ("only -A rules appear in iptables-save output"
                    if command.text.startswith("-") else "expected ':CHAIN', '-A CHAIN ...' or COMMIT")
            raise RulesetError(command.loc, what, command.text)
        if len(tokens) < 2:
            raise RulesetError(command.loc, "-A needs a chain name", command.text)
        chain = self.chain_for_rule(tokens[1])
        options = tokens[2:]
        text = line[options[0].loc.col - 1:].rstrip() if options else ""
        # Every iptables rule counts the packets it matches (`iptables -L -v`, `iptables-save -c`):
        # in nft's words, every rule has a counter statement.
        rule = Rule(text=text, loc=options[0].loc if options else command.loc, counter=True)
        _RuleParser(self, chain, rule, options).parse()
        chain.rules.append(rule)

    def chain_for_rule(self, tok: _Token) -> Chain:
        chain = self.table.chains.get(tok.text)
        if chain is not None:
            return chain
        if tok.text in _BUILTIN_CHAINS[self.table.name]:     # built-in chains always exist
            chain = self.base_chain(tok.text, tok.loc)
            self.table.chains[tok.text] = chain
            self.ruleset.chains.append(chain)
            return chain
        raise RulesetError(tok.loc, f"chain {tok.text} is not declared in table {self.table.name} "
                           f"(declare it with ':{tok.text} - [0:0]' first)", tok.text)

    def add_helper(self, name: str, protocol: str, tok: _Token) -> None:
        table = self.table.name
        helper = self.ruleset.helper("", table, name)
        if helper is None:
            self.ruleset.helpers.append(Helper(family="", table=table, name=name, type=name,
                                               protocol=protocol, loc=tok.loc))
        elif helper.protocol != protocol:
            raise RulesetError(tok.loc, f"helper {name} is used with -p {helper.protocol} at {helper.loc}; "
                               f"fastct keeps one helper object per name and table", tok.text)


# ---- one rule ------------------------------------------------------------------------------------
@dataclass
class _Module:
    """One loaded match module (`-m NAME`, or the one `-p tcp` loads implicitly)."""
    name: str
    tok: _Token
    seen: set[str] = field(default_factory=set)


class _RuleParser:
    def __init__(self, parser: _Parser, chain: Chain, rule: Rule, tokens: list[_Token]):
        self.parser = parser
        self.table = parser.table.name
        self.chain = chain
        self.rule = rule
        self.tokens = tokens
        self.pos = 0
        self.matches: list[Match] = []
        self.modules: list[_Module] = []
        self.seen_general: set[str] = set()
        self.proto: int = 0                    # -p's number (0: any)
        self.proto_negated = False

    # -- token access --
    def take(self) -> _Token:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def value(self, option: _Token) -> _Token:
        if self.pos >= len(self.tokens):
            raise RulesetError(option.loc, f"{option.text} needs a value", option.text)
        tok = self.take()
        if tok.text == "!":
            # iptables' old `-s ! ADDR` form, which iptables itself no longer accepts
            raise RulesetError(tok.loc, f"'!' goes before the option: '! {option.text} ...'", tok.text)
        return tok

    def parse(self) -> None:
        while self.pos < len(self.tokens):
            tok = self.take()
            bang = None
            if tok.text == "!":
                bang = tok
                if self.pos >= len(self.tokens):
                    raise RulesetError(tok.loc, "'!' at the end of the rule", tok.text)
                tok = self.take()
            if self.option(tok, bang):
                break                          # a target took the rest of the line
        self.rule.matches = tuple(self.matches)

    def match(self, key: str, values: tuple, loc: Loc, negate: bool, mask: int | None = None) -> None:
        self.matches.append(Match(key=key, values=values, negate=negate, mask=mask, loc=loc))

    # -- options --
    def option(self, tok: _Token, bang: _Token | None) -> bool:
        """Read one option (and its value); True when it was the target, which ends the rule."""
        loc = bang.loc if bang else tok.loc
        general = _GENERAL_OPTIONS.get(tok.text)
        if general is None:
            self.module_option(tok, bang, loc)
            return False
        if general in self.seen_general and general not in ("-m",):
            raise RulesetError(tok.loc, f"{tok.text} given twice in one rule", tok.text)
        self.seen_general.add(general)
        if bang and general in ("-m", "-j", "-g", "-c"):
            raise RulesetError(bang.loc, f"{tok.text} cannot be negated", bang.text)
        if general in ("-s", "-d"):
            self.addresses(tok, "saddr" if general == "-s" else "daddr", loc, bang is not None)
        elif general in ("-i", "-o"):
            name = _interface(self.value(tok))
            self.match("iifname" if general == "-i" else "oifname", (name,), loc, bang is not None)
        elif general == "-p":
            self.protocol(tok, loc, bang is not None)
        elif general == "-m":
            self.load_module(tok)
        elif general == "-c":
            for _ in range(2):                # -c PACKETS BYTES: counters, ignored
                count = self.value(tok)
                if not count.text.isdigit():
                    raise RulesetError(count.loc, "-c takes two counts: -c PACKETS BYTES", count.text)
        else:
            _Target(self, tok, self.value(tok), self.tokens[self.pos:]).parse(goto=general == "-g")
            return True
        return False

    def addresses(self, tok: _Token, key: str, loc: Loc, negate: bool) -> None:
        value = self.value(tok)
        pairs = _address_ranges(value)
        for first, _ in pairs:
            self.parser.family.note(first, value)
        self.match(key, tuple(pairs), loc, negate)

    def protocol(self, tok: _Token, loc: Loc, negate: bool) -> None:
        value = self.value(tok)
        number = _protocol(value)
        if number == 0:
            if negate:
                raise RulesetError(loc, "'! -p all' never matches", value.text)
            return                             # any protocol: no match
        self.proto, self.proto_negated = number, negate
        self.match("l4proto", ((number, number),), loc, negate)
        implicit = _PROTOCOL_MODULES.get(number)
        if implicit and not negate:
            # iptables loads the protocol's match when an option it does not know follows -p;
            # it is searched last, after every -m module.
            self.modules.insert(0, _Module(implicit, value))

    def load_module(self, tok: _Token) -> None:
        value = self.value(tok)
        name = value.text
        if name not in _MODULE_OPTIONS or name == "udplite":
            raise RulesetError(value.loc, f"match module {name!r} is not supported (fastct reads "
                               f"{', '.join(sorted(set(_MODULE_OPTIONS) - {'udplite'}))})", name)
        needs = _MODULE_PROTOCOL.get(name)
        if needs is not None and (self.proto != needs or self.proto_negated):
            raise RulesetError(value.loc, f"-m {name} needs -p {name.replace('icmp6', 'icmpv6')} before it",
                               name)
        if name == "multiport" and (self.proto not in _PORT_PROTOCOLS or self.proto_negated):
            raise RulesetError(value.loc, "-m multiport needs -p tcp, udp, udplite, sctp or dccp before it",
                               name)
        self.modules.append(_Module(name, value))

    def module_option(self, tok: _Token, bang: _Token | None, loc: Loc) -> None:
        """An option of a loaded module: the latest module that has it (as `-m mark --mark 1 -m
        connmark --mark 2` means one of each)."""
        for module in reversed(self.modules):
            handler = _MODULE_OPTIONS[module.name].get(tok.text)
            if handler is None:
                if tok.text in _UNSUPPORTED_OPTIONS.get(module.name, ()):
                    raise RulesetError(tok.loc, f"{module.name} option {tok.text} is not supported", tok.text)
                continue
            if handler in module.seen:
                raise RulesetError(tok.loc, f"{tok.text} given twice for -m {module.name}", tok.text)
            module.seen.add(handler)
            if bang and handler in _NOT_NEGATABLE:
                raise RulesetError(bang.loc, f"{tok.text} cannot be negated", bang.text)
            getattr(self, f"_opt_{handler}")(tok, self.value(tok), loc, bang is not None)
            return
        self.unknown_option(tok)

    def unknown_option(self, tok: _Token):
        if tok.text in _PORT_OPTIONS:
            raise RulesetError(tok.loc, f"{tok.text} needs -p tcp, udp, udplite, sctp or dccp (not negated) "
                               "before it", tok.text)
        owners = [m for m, opts in _MODULE_OPTIONS.items() if tok.text in opts and m != "udplite"]
        hint = f" (it belongs to -m {' / -m '.join(owners)})" if owners else ""
        raise RulesetError(tok.loc, f"unknown option {tok.text}{hint}", tok.text)

    # -- module option handlers: (option token, value token, match location, negated) --
    def _opt_sport(self, tok, value, loc, negate):
        self.match("sport", (_port_range(value, value.text),), loc, negate)

    def _opt_dport(self, tok, value, loc, negate):
        self.match("dport", (_port_range(value, value.text),), loc, negate)

    def _multiport(self, key, value, loc, negate):
        items = value.text.split(",")
        pairs = [_port_range(value, item) for item in items]
        if sum(1 if a == b else 2 for a, b in pairs) > _MULTIPORT_MAX:
            raise RulesetError(value.loc, f"multiport takes at most {_MULTIPORT_MAX} ports (a range "
                               "counts as two)", value.text)
        self.match(key, tuple(pairs), loc, negate)

    def _opt_multi_sport(self, tok, value, loc, negate):
        self._multiport("sport", value, loc, negate)

    def _opt_multi_dport(self, tok, value, loc, negate):
        self._multiport("dport", value, loc, negate)

    def _opt_multi_ports(self, tok, value, loc, negate):
        raise RulesetError(tok.loc, "multiport --ports (source or destination port) is not supported: "
                           "a rule's matches must all hold; write one rule with --sports and one with "
                           "--dports", tok.text)

    def _opt_ctstate(self, tok, value, loc, negate):
        states: list[str] = []
        for item in value.text.split(","):
            name = _STATES.get(item.upper())
            if name is None:
                if item.upper() in ("SNAT", "DNAT"):
                    raise RulesetError(value.loc, f"state {item} (a NATed connection) is not supported",
                                       value.text)
                raise RulesetError(value.loc, f"unknown state {item!r}; known: "
                                   f"{', '.join(_STATES)}", value.text)
            if name not in states:
                states.append(name)
        self.match("ct state", tuple(states), loc, negate)

    def _opt_ctdir(self, tok, value, loc, negate):
        direction = value.text.upper()
        if direction not in ("ORIGINAL", "REPLY"):
            raise RulesetError(value.loc, "--ctdir is ORIGINAL or REPLY", value.text)
        self.match("ct direction", (direction.lower(),), loc, negate)

    def _mark_match(self, key, value, loc, negate):
        mark, mask = _value_and_mask(value, "mark")
        if mask is not None and mark & ~mask:
            raise RulesetError(value.loc, f"mark {mark:#x} has bits outside mask {mask:#x}: the rule "
                               "never matches", value.text)
        self.match(key, ((mark, mark),), loc, negate, mask)

    def _opt_connmark(self, tok, value, loc, negate):
        self._mark_match("ct mark", value, loc, negate)

    def _opt_mark(self, tok, value, loc, negate):
        self._mark_match("meta mark", value, loc, negate)

    def _opt_comment(self, tok, value, loc, negate):
        pass                                   # comments are not kept


# ---- the target ----------------------------------------------------------------------------------
_NAT_CHAINS = {"dnat": ("PREROUTING", "OUTPUT"), "redirect": ("PREROUTING", "OUTPUT"),
               "snat": ("POSTROUTING", "INPUT"), "masquerade": ("POSTROUTING", "INPUT")}
# Target options: option -> takes a value.
_TARGET_OPTIONS: dict[str, dict[str, bool]] = {
    "DNAT": {"--to-destination": True, "--random": False, "--persistent": False},
    "SNAT": {"--to-source": True, "--random": False, "--random-fully": False, "--persistent": False},
    "MASQUERADE": {"--to-ports": True, "--random": False, "--random-fully": False},
    "REDIRECT": {"--to-ports": True, "--random": False},
    "CT": {"--notrack": False, "--helper": True, "--zone": True},
    "NOTRACK": {},
    "MARK": {"--set-mark": True, "--set-xmark": True},
    "CONNMARK": {"--set-mark": True, "--set-xmark": True},
    "REJECT": {"--reject-with": True},
}
_UNSUPPORTED_TARGET_OPTIONS = {
    "CT": ("--ctevents", "--expevents", "--timeout", "--zone-orig", "--zone-reply", "--notrack-helper"),
    "MARK": ("--and-mark", "--or-mark", "--xor-mark"),
    "CONNMARK": ("--and-mark", "--or-mark", "--xor-mark", "--save-mark", "--restore-mark",
                 "--nfmask", "--ctmask", "--mask"),
    "DNAT": ("--random-fully",),
    "SNAT": (),
}
_FLAG_NAMES = {"--random": "random", "--random-fully": "fully-random", "--persistent": "persistent"}


class _Target:
    """`-j NAME [options]` or `-g CHAIN`: the rest of the line."""

    def __init__(self, rp: _RuleParser, option: _Token, name: _Token, tokens: list[_Token]):
        self.rp = rp
        self.rule = rp.rule
        self.option = option
        self.name = name
        self.tokens = tokens
        self.opts: dict[str, tuple[_Token, _Token | None]] = {}

    def parse(self, goto: bool) -> None:
        name = self.name.text
        if goto or name not in _TARGET_OPTIONS and name not in _VERDICT_TARGETS:
            self.chain_target(goto)
            return
        self.read_options(_TARGET_OPTIONS.get(name, {}))
        if name in _VERDICT_TARGETS:
            self.rule.verdict = _VERDICT_TARGETS[name]     # REJECT's --reject-with: not modelled
        elif name in ("DNAT", "SNAT", "MASQUERADE", "REDIRECT"):
            self.nat(name.lower())
        elif name in ("CT", "NOTRACK"):
            self.ct(name)
        else:
            self.mark(name)

    def fail(self, tok: _Token, message: str) -> RulesetError:
        return RulesetError(tok.loc, message, tok.text)

    def read_options(self, spec: dict[str, bool]) -> None:
        name = self.name.text
        i = 0
        while i < len(self.tokens):
            tok = self.tokens[i]
            i += 1
            if tok.text == "!":
                raise self.fail(tok, f"{name}'s options cannot be negated")
            if tok.text not in spec:
                if tok.text in _UNSUPPORTED_TARGET_OPTIONS.get(name, ()):
                    raise self.fail(tok, f"{name} option {tok.text} is not supported")
                what = f"{name} takes no options" if not spec else \
                    f"unknown {name} option {tok.text} (known: {', '.join(spec)})"
                raise self.fail(tok, what + "; the target comes last in a rule")
            if tok.text in self.opts:
                raise self.fail(tok, f"{tok.text} given twice")
            value = None
            if spec[tok.text]:
                if i >= len(self.tokens):
                    raise self.fail(tok, f"{tok.text} needs a value")
                value = self.tokens[i]
                i += 1
            self.opts[tok.text] = (tok, value)

    def chain_target(self, goto: bool) -> None:
        name = self.name
        table = self.rp.parser.table
        chain = table.chains.get(name.text)
        if chain is None or chain.is_base:
            what = "a built-in chain cannot be jumped to" if name.text in _BUILTIN_CHAINS[table.name] else (
                f"neither a target fastct reads nor a chain declared in table {table.name}")
            raise self.fail(name, f"{name.text}: {what}")
        if self.tokens:
            raise self.fail(self.tokens[0], f"nothing may follow {self.option.text} CHAIN")
        self.rule.verdict = "goto" if goto else "jump"
        self.rule.target = name.text

    # -- NAT --
    def nat(self, action: str) -> None:
        self.check_nat_place(action)
        flags = frozenset(_FLAG_NAMES[o] for o in self.opts if o in _FLAG_NAMES)
        if action in ("dnat", "snat"):
            self.rule.nat = self.nat_to(action, flags)
            return
        ports = None
        if "--to-ports" in self.opts:
            _, value = self.opts["--to-ports"]
            ports = self.nat_ports(value)
        self.rule.nat = NatTarget(action, to_ports=ports, flags=flags)

    def check_nat_place(self, action: str) -> None:
        rp = self.rp
        if rp.table != "nat":
            raise self.fail(self.name, f"{self.name.text} is a nat table target, not one of table {rp.table}")
        allowed = _NAT_CHAINS[action]
        if rp.chain.is_base and rp.chain.name not in allowed:
            raise self.fail(self.name, f"{self.name.text} works in {' and '.join(allowed)} (or a user "
                            f"chain), not in {rp.chain.name}")

    def nat_to(self, action: str, flags: frozenset[str]) -> NatTarget:
        option = "--to-destination" if action == "dnat" else "--to-source"
        if option not in self.opts:
            raise self.fail(self.name, f"{self.name.text} needs {option}")
        _, value = self.opts[option]
        if "," in value.text:
            raise self.fail(value, f"{option} takes one ADDR[-ADDR][:PORT[-PORT]]; iptables' flags are "
                            "options (--random, --persistent)")
        try:
            addrs, ports, _, _ = _parse_target(value.text, option)
        except ValueError as exc:
            raise self.fail(value, str(exc)) from None
        for addr in addrs:
            self.rp.parser.family.note(addr, value)
        if ports is not None:
            self.check_port_protocol(value)
        return NatTarget(action, to_min=addrs[0], to_max=addrs[-1], to_ports=ports, flags=flags,
                         family=addrs[0].version)

    def nat_ports(self, value: _Token) -> tuple[int, int]:
        def fail(problem: str) -> RulesetError:
            return self.fail(value, f"--to-ports {value.text!r}: {problem}")
        ports = _parse_ports(value.text, fail)
        self.check_port_protocol(value)
        return ports

    def check_port_protocol(self, tok: _Token) -> None:
        if self.rp.proto not in TO_PORT_PROTOCOLS or self.rp.proto_negated:
            raise self.fail(tok, "NAT ports need -p tcp, udp, udplite, sctp, dccp, icmp or icmpv6 in "
                            "the rule")

    # -- CT / NOTRACK --
    def ct(self, name: str) -> None:
        if self.rp.table != "raw":
            raise self.fail(self.name, f"{name} is a raw table target, not one of table {self.rp.table}")
        if name == "NOTRACK" or "--notrack" in self.opts:
            others = [o for o in self.opts if o != "--notrack"]
            if others:
                raise self.fail(self.opts[others[0]][0], "--notrack does not combine with other CT options")
            self.rule.notrack = True
            return
        if not self.opts:
            raise self.fail(self.name, "CT without --notrack, --helper or --zone is not supported")
        if "--zone" in self.opts:
            self.rule.ct_zone_set = self.zone(self.opts["--zone"][1])
        if "--helper" in self.opts:
            self.helper(self.opts["--helper"][1])

    def zone(self, value: _Token) -> int:
        if not re.fullmatch(r"0|[1-9][0-9]*", value.text) or int(value.text) > 65535:
            raise self.fail(value, "--zone takes a decimal zone 0-65535")
        return int(value.text)

    def helper(self, value: _Token) -> None:
        name = value.text
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise self.fail(value, f"{name!r} is not a helper name")
        protocol = {6: "tcp", 17: "udp"}.get(self.rp.proto)
        if protocol is None or self.rp.proto_negated:
            raise self.fail(value, "CT --helper needs -p tcp or -p udp in the rule (the helper object "
                            "has a protocol)")
        self.rp.parser.add_helper(name, protocol, value)
        self.rule.ct_helper_set = name
        self.rule.template = True         # (the kernel's CT target attaches a conntrack template)

    # -- MARK / CONNMARK --
    def mark(self, name: str) -> None:
        given = [o for o in ("--set-mark", "--set-xmark") if o in self.opts]
        if len(given) != 1:
            tok = self.opts[given[1]][0] if given else self.name
            raise self.fail(tok, f"{name} takes one of --set-mark V, --set-xmark V/0xffffffff")
        value = self.opts[given[0]][1]
        mark, mask = _value_and_mask(value, "mark")
        if mask is not None:
            # V/MASK keeps the old mark's bits outside MASK: more than "set the mark to V"
            raise self.fail(value, f"{given[0]} with mask {mask:#x} is not supported (only the full "
                            "mask 0xffffffff: set the whole mark)")
        if name == "MARK":
            self.rule.meta_mark_set = mark
        else:
            self.rule.ct_mark_set = mark


# ---- API -----------------------------------------------------------------------------------------
def parse_iptables(text: str, source: str = "<iptables>", family: int | None = None) -> Ruleset:
    """iptables-save (family 4) or ip6tables-save (family 6) text -> Ruleset; family None guesses it
    from the header comment or the addresses (IPv4 when nothing tells).  Raises RulesetError."""
    return _Parser(text, source, family).parse()


def load_iptables_file(path, family: int | None = None) -> Ruleset:
    """Read and parse an iptables-save / ip6tables-save file; errors name the path."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesetError(None, f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise RulesetError(None, f"{path}: not UTF-8 text (byte {exc.start}): not an "
                                 f"iptables-save file") from None
    return parse_iptables(text, source=str(path), family=family)

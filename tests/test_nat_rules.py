"""fastct.nat: the NAT rule layer (command-line target syntax, NatRule validation, to_ruleset() and
the compiled ruleset it gives).

`NatRules.to_ruleset()` is checked against a Ruleset worked out by hand from the NatRule fields
(fastct/ruleset.py's MATCH_KEYS value forms); `fastct.rules_compile.compile_ruleset` of it against
bytes worked out by hand from the field comments of `nat_target`, `rs_rule`, `rs_match`, `rs_irange`,
`rs_arange` and `rs_chain` in fastct/_types.pxd (addresses network order with IPv4 in bytes 0-3,
integers little-endian); action, flag, key, verdict, statement and hook-point numbers come from the
engine's names(), never restated.
"""
import dataclasses
import ipaddress
import sys

import numpy as np
import pytest

from fastct import _engine
from fastct.nat import NatRule, NatRules, parse_masquerade, parse_spec
from fastct.rules_compile import compile_ruleset
from fastct.ruleset import Chain, Match, NatTarget, Rule, Ruleset
from fastct.tracker import AF_INET, AF_INET6

NAMES = _engine.names()
ACTION = dict(NAMES["nat_actions"])
FLAG = dict(NAMES["nat_flags"])
KNOWN_FLAGS = ", ".join(FLAG)
IFADDR = NAMES["nat_flag_ifaddr"]
KEY = dict(NAMES["rs_keys"])
VERDICT = dict(NAMES["rs_verdicts"])
STMT = dict(NAMES["rs_stmts"])
_HP = dict(NAMES["rs_hooks"])
HOOK = {"raw": _HP["prerouting, before conntrack"], "pre": _HP["prerouting, after conntrack, before dnat"],
        "dnat": _HP["nat prerouting"], "late": _HP["prerouting, after dnat"], "snat": _HP["nat postrouting"]}
TARGET_DTYPE = _engine.NAT_TARGET_DTYPE
MATCH_DTYPE = _engine.RS_MATCH_DTYPE
IRANGE_DTYPE = _engine.RS_IRANGE_DTYPE
ARANGE_DTYPE = _engine.RS_ARANGE_DTYPE
RULE_DTYPE = _engine.RS_RULE_DTYPE
CHAIN_DTYPE = _engine.RS_CHAIN_DTYPE
ip = ipaddress.ip_address


# ---- parse_spec: every accepted form -----------------------------------------------------------
@pytest.mark.parametrize("text, to_min, to_max, to_ports, flags, l3", [
    ("10.0.0.1", "10.0.0.1", "10.0.0.1", None, set(), AF_INET),
    ("10.0.0.1-10.0.0.9", "10.0.0.1", "10.0.0.9", None, set(), AF_INET),
    ("10.0.0.1:1024", "10.0.0.1", "10.0.0.1", (1024, 1024), set(), AF_INET),
    ("172.93.74.5-172.93.74.15:5000-50000", "172.93.74.5", "172.93.74.15", (5000, 50000), set(), AF_INET),
    ("10.0.0.1:1-65535", "10.0.0.1", "10.0.0.1", (1, 65535), set(), AF_INET),
    ("10.0.0.1-10.0.0.1", "10.0.0.1", "10.0.0.1", None, set(), AF_INET),
    # IPv6: brackets before a port; nftables' [A]-[B] and iptables' [A-B] ranges; bare without port
    ("[2001:db8::1]", "2001:db8::1", "2001:db8::1", None, set(), AF_INET6),
    ("[2001:db8::1]:80", "2001:db8::1", "2001:db8::1", (80, 80), set(), AF_INET6),
    ("[2001:db8::1]:80-90", "2001:db8::1", "2001:db8::1", (80, 90), set(), AF_INET6),
    ("[2001:db8::1]-[2001:db8::5]", "2001:db8::1", "2001:db8::5", None, set(), AF_INET6),
    ("[2001:db8::1]-[2001:db8::5]:80-90", "2001:db8::1", "2001:db8::5", (80, 90), set(), AF_INET6),
    ("[2001:db8::1-2001:db8::5]:80", "2001:db8::1", "2001:db8::5", (80, 80), set(), AF_INET6),
    ("2001:db8::1", "2001:db8::1", "2001:db8::1", None, set(), AF_INET6),
    ("2001:db8::1-2001:db8::5", "2001:db8::1", "2001:db8::5", None, set(), AF_INET6),
    ("::", "::", "::", None, set(), AF_INET6),
    # without brackets every colon belongs to the address (iptables' rule), so no port here
    ("2001:db8::1:80", "2001:db8::1:80", "2001:db8::1:80", None, set(), AF_INET6),
    # flags, alone and combined, in any order
    ("10.0.0.1,persistent", "10.0.0.1", "10.0.0.1", None, {"persistent"}, AF_INET),
    ("10.0.0.1,random", "10.0.0.1", "10.0.0.1", None, {"random"}, AF_INET),
    ("10.0.0.1,fully-random", "10.0.0.1", "10.0.0.1", None, {"fully-random"}, AF_INET),
    ("10.0.0.1:80,random,persistent", "10.0.0.1", "10.0.0.1", (80, 80), {"random", "persistent"}, AF_INET),
    ("10.0.0.1,persistent,fully-random", "10.0.0.1", "10.0.0.1", None, {"persistent", "fully-random"},
     AF_INET),
    ("10.0.0.1,random,fully-random", "10.0.0.1", "10.0.0.1", None, {"random", "fully-random"}, AF_INET),
    ("[2001:db8::1]:80,fully-random,random,persistent", "2001:db8::1", "2001:db8::1", (80, 80),
     {"random", "fully-random", "persistent"}, AF_INET6),
])
@pytest.mark.parametrize("kind, stage", [("snat", "postrouting"), ("dnat", "prerouting")])
def test_parse_spec_forms(text, to_min, to_max, to_ports, flags, l3, kind, stage):
    r = parse_spec(text, kind)
    assert r.action == kind and r.stage == stage
    assert r.to_min == ip(to_min) and r.to_max == ip(to_max)
    assert r.to_ports == to_ports
    assert r.flags == frozenset(flags)
    assert r.l3 == l3
    assert r.matches_everything            # the command line's rules apply to every new connection


def test_parse_spec_results_are_values():
    assert parse_spec("10.0.0.1:80,random", "snat") == parse_spec("10.0.0.1:80,random", "snat")
    assert len({parse_spec("10.0.0.1", "snat"), parse_spec("10.0.0.1", "snat")}) == 1
    assert parse_spec("10.0.0.1", "snat") != parse_spec("10.0.0.1", "dnat")


# ---- parse_spec: every error, with its message -------------------------------------------------
@pytest.mark.parametrize("text, problem", [
    ("10.0.0.9-10.0.0.1", "first address after last"),
    ("[2001:db8::9]-[2001:db8::1]", "first address after last"),
    ("", "empty"),
    (" 10.0.0.1", "whitespace is not allowed"),
    ("10.0.0.1 ", "whitespace is not allowed"),
    ("10.0.0.1, random", "whitespace is not allowed"),
    ("10.0.0.1:\t80", "whitespace is not allowed"),
    ("10.0.0.1\n", "whitespace is not allowed"),
    (",random", "no address"),
    ("10.0.0.1,", "empty flag (a stray ',')"),
    ("10.0.0.1,,random", "empty flag (a stray ',')"),
    ("10.0.0.1,bogus", f"unknown flag 'bogus'; known: {KNOWN_FLAGS}"),
    ("10.0.0.1,Random", f"unknown flag 'Random'; known: {KNOWN_FLAGS}"),
    ("10.0.0.1,random-fully", f"unknown flag 'random-fully'; known: {KNOWN_FLAGS} "
                              "(iptables' --random-fully is 'fully-random')"),
    ("10.0.0.1,random,random", "flag 'random' given twice"),
    ("10.0.0.1-", "empty address in a range"),
    ("-10.0.0.1", "empty address in a range"),
    ("[]:80", "empty address"),
    ("[2001:db8::1]-[]", "empty address in a range"),
    ("10.0.0.1-10.0.0.2-10.0.0.3", "more than two addresses (one '-' makes a range)"),
    ("10.0.0.256", "'10.0.0.256' is not an IP address"),
    ("example.com", "'example.com' is not an IP address"),
    ("10.0.0.1/24", "'10.0.0.1/24' is not an IP address"),
    ("010.0.0.1", "'010.0.0.1' is not an IP address"),
    ("10.0.0.1-2001:db8::1", "'10.0.0.1' and '2001:db8::1' are of different address families"),
    ("[2001:db8::1-10.0.0.1]", "brackets are for IPv6 addresses only, not '10.0.0.1'"),
    ("::ffff:10.0.0.1", "'::ffff:10.0.0.1' is an IPv4-mapped IPv6 address; write the IPv4 address "
                        "10.0.0.1 (fastct keeps IPv4 connections as IPv4)"),
    ("[::ffff:10.0.0.1]:80", "'::ffff:10.0.0.1' is an IPv4-mapped IPv6 address; write the IPv4 "
                             "address 10.0.0.1 (fastct keeps IPv4 connections as IPv4)"),
    ("fe80::1%eth0", "'fe80::1%eth0' has a scope (%eth0); NAT addresses have none"),
    ("[10.0.0.1]:80", "brackets are for IPv6 addresses only, not '10.0.0.1'"),
    ("[10.0.0.1]", "brackets are for IPv6 addresses only, not '10.0.0.1'"),
    ("[2001:db8::1", "'[' without ']'"),
    ("[2001:db8::1]-[2001:db8::2", "'[' without ']'"),
    ("[2001:db8::1]80", "unexpected '80' after ']' (expected ':PORT' or nothing)"),
    ("[2001:db8::1]-2001:db8::2", "unexpected '-2001:db8::2' after ']' (expected ':PORT' or nothing)"),
    ("[2001:db8::1-2001:db8::2]-[2001:db8::3]",
     "'[2001:db8::1-2001:db8::2]': a range is either [ADDR-ADDR] or [ADDR]-[ADDR]"),
    ("10.0.0.1:", "empty port"),
    ("[2001:db8::1]:", "empty port"),
    ("10.0.0.1:-80", "empty port"),
    ("10.0.0.1:80-", "empty port after '-'"),
    ("10.0.0.1:0", "port 0 out of range 1-65535"),
    ("10.0.0.1:0-80", "port 0 out of range 1-65535"),
    ("10.0.0.1:65536", "port 65536 out of range 1-65535"),
    ("10.0.0.1:90-80", "port range '90-80': first port after last"),
    ("10.0.0.1:http", "port 'http' is not a decimal number"),
    ("10.0.0.1:0x50", "port '0x50' is not a decimal number"),
    ("10.0.0.1:+80", "port '+80' is not a decimal number"),
    ("10.0.0.1:\u0668\u0660", "port '\u0668\u0660' is not a decimal number"),
    ("10.0.0.1:80-90-100", "port '90-100' is not a decimal number"),
    ("10.0.0.1:080", "port '080' has a leading zero (iptables would read it as octal)"),
    ("10.0.0.1:1000-2000/3000", "shifted port maps (PORT-PORT/BASE) are not supported"),
])
def test_parse_spec_errors(text, problem):
    for kind in ("snat", "dnat"):
        with pytest.raises(ValueError) as exc:
            parse_spec(text, kind)
        assert str(exc.value) == f"--{kind} {text!r}: {problem}"


def test_parse_spec_error_example_from_the_issue():
    with pytest.raises(ValueError, match=r"^--snat '10\.0\.0\.9-10\.0\.0\.1': first address after last$"):
        parse_spec("10.0.0.9-10.0.0.1", "snat")


@pytest.mark.parametrize("text, kind, message", [
    ("10.0.0.1", "masquerade", "parse_spec: kind must be 'snat' or 'dnat', not 'masquerade'"),
    ("10.0.0.1", "SNAT", "parse_spec: kind must be 'snat' or 'dnat', not 'SNAT'"),
    (None, "snat", "--snat takes a string, not None"),
    (b"10.0.0.1", "dnat", "--dnat takes a string, not b'10.0.0.1'"),
])
def test_parse_spec_bad_arguments(text, kind, message):
    with pytest.raises(ValueError) as exc:
        parse_spec(text, kind)
    assert str(exc.value) == message


# ---- parse_masquerade ----------------------------------------------------------------------------
@pytest.mark.parametrize("text, addr, to_ports, flags, l3", [
    ("192.0.2.1", "192.0.2.1", None, set(), AF_INET),
    ("192.0.2.1:1024-2047", "192.0.2.1", (1024, 2047), set(), AF_INET),
    ("192.0.2.1,random", "192.0.2.1", None, {"random"}, AF_INET),
    ("2001:db8::1", "2001:db8::1", None, set(), AF_INET6),
    ("[2001:db8::1]:1024-2047,fully-random", "2001:db8::1", (1024, 2047), {"fully-random"}, AF_INET6),
])
def test_parse_masquerade(text, addr, to_ports, flags, l3):
    r = parse_masquerade(text)
    assert r.action == "masquerade" and r.stage == "postrouting"
    assert r.to_min == r.to_max == ip(addr)
    assert r.to_ports == to_ports and r.flags == frozenset(flags) and r.l3 == l3
    assert r.matches_everything


@pytest.mark.parametrize("text, problem", [
    ("192.0.2.1-192.0.2.5", "an address range; masquerade maps to the output interface's one address"),
    ("[2001:db8::1]-[2001:db8::2]",
     "an address range; masquerade maps to the output interface's one address"),
    ("192.0.2.1,persistent", "'persistent' does not apply: masquerade has one address (iptables' "
                             "MASQUERADE has no --persistent)"),
    ("192.0.2.1 ", "whitespace is not allowed"),
    ("", "empty"),
    ("192.0.2.1:0", "port 0 out of range 1-65535"),
    ("eth0", "'eth0' is not an IP address"),
])
def test_parse_masquerade_errors(text, problem):
    with pytest.raises(ValueError) as exc:
        parse_masquerade(text)
    assert str(exc.value) == f"--masquerade {text!r}: {problem}"


# ---- NatRule ------------------------------------------------------------------------------------
def test_natrule_defaults_and_normalisation():
    r = NatRule(action="snat", to_min="203.0.113.1")
    assert r.stage == "postrouting" and r.to_max == ip("203.0.113.1") and r.l3 == AF_INET
    assert (r.zone, r.in_if, r.out_if, r.src, r.dst, r.proto, r.sport, r.dport, r.to_ports) == \
        (None, None, None, None, None, 0, None, None, None)
    assert r.flags == frozenset()

    r = NatRule(action="dnat", src="10.0.0.0/8", dst=ipaddress.ip_network("192.0.2.0/24"),
                proto="TCP", sport=(0, 65535), dport=[80, 81], to_min=ip("10.1.1.1"),
                to_max="10.1.1.4", to_ports=8080, flags="random,persistent", l3=4, zone=5, in_if=2)
    assert r.stage == "prerouting"
    assert r.src == ipaddress.ip_network("10.0.0.0/8") and r.dst == ipaddress.ip_network("192.0.2.0/24")
    assert r.proto == 6 and r.sport is None and r.dport == (80, 81) and r.to_ports == (8080, 8080)
    assert r.flags == {"random", "persistent"} and r.l3 == AF_INET
    assert not r.matches_everything

    assert NatRule(action="accept", stage="postrouting", l3=6).l3 == AF_INET6
    assert NatRule(action="accept", stage="prerouting", l3=AF_INET6).l3 == AF_INET6
    assert NatRule(action="accept", stage="prerouting", l3=None).l3 == 0
    assert NatRule(action="notrack", proto=47).proto == 47
    assert NatRule(action="notrack", proto=np.uint8(17)).proto == 17
    assert NatRule(action="accept", stage="prerouting", src="2001:db8::/32").l3 == AF_INET6
    assert NatRule(action="redirect", proto="tcp", dport=80, to_ports=3128).to_ports == (3128, 3128)
    icmp_ids = NatRule(action="snat", proto="icmp", to_min="192.0.2.1", to_ports=(100, 200))
    assert icmp_ids.to_ports == (100, 200)
    assert NatRule(action="dnat", proto="udplite", dport=5000, to_min="10.0.0.1").proto == 136
    assert NatRule(action="dnat", proto="dccp", sport=9, to_min="10.0.0.1").sport == (9, 9)
    assert NatRule(action="snat", to_min="10.0.0.1", sport=0, proto="udp").sport == (0, 0)
    assert NatRule(action="masquerade", to_min="192.0.2.1", out_if=1).out_if == 1


def test_natrule_is_frozen():
    r = NatRule(action="snat", to_min="203.0.113.1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.zone = 3


def test_natrule_fields_are_keyword_only():
    with pytest.raises(TypeError):
        NatRule("snat")


KNOWN_ACTIONS = ", ".join(ACTION)


@pytest.mark.parametrize("fields, message", [
    (dict(action="drop"), f"NatRule.action: unknown action 'drop'; known: {KNOWN_ACTIONS}"),
    (dict(action="accept"), "NatRule.stage: an accept rule needs a stage: 'prerouting' or 'postrouting'"),
    (dict(action="dnat", stage="postrouting", to_min="10.0.0.1"),
     "NatRule.stage: a dnat rule runs in prerouting, not postrouting (iptables' DNAT is valid only there)"),
    (dict(action="redirect", stage="postrouting"),
     "NatRule.stage: a redirect rule runs in prerouting, not postrouting (iptables' REDIRECT is valid "
     "only there)"),
    (dict(action="notrack", stage="postrouting"),
     "NatRule.stage: a notrack rule runs in prerouting, not postrouting (iptables' NOTRACK is valid "
     "only there)"),
    (dict(action="snat", stage="prerouting", to_min="10.0.0.1"),
     "NatRule.stage: a snat rule runs in postrouting, not prerouting (iptables' SNAT is valid only there)"),
    (dict(action="masquerade", stage="prerouting", to_min="10.0.0.1"),
     "NatRule.stage: a masquerade rule runs in postrouting, not prerouting (iptables' MASQUERADE is "
     "valid only there)"),
    (dict(action="accept", stage="forward"),
     "NatRule.stage: 'forward' is not one of 'prerouting', 'postrouting'"),
    (dict(action="notrack", zone=65536),
     "NatRule.zone: must be an integer 0..65535 or None (any), not 65536"),
    (dict(action="notrack", zone=-1), "NatRule.zone: must be an integer 0..65535 or None (any), not -1"),
    (dict(action="notrack", zone=True), "NatRule.zone: must be an integer 0..65535 or None (any), not True"),
    (dict(action="notrack", zone="1"), "NatRule.zone: must be an integer 0..65535 or None (any), not '1'"),
    (dict(action="notrack", in_if=32768),
     "NatRule.in_if: must be an integer 0..32767 or None (any), not 32768"),
    (dict(action="snat", to_min="10.0.0.1", out_if=-1),
     "NatRule.out_if: must be an integer 0..32767 or None (any), not -1"),
    (dict(action="snat", to_min="10.0.0.1", in_if=1),
     "NatRule.in_if: not a postrouting match (iptables refuses -i in POSTROUTING); match the input "
     "interface in prerouting"),
    (dict(action="dnat", to_min="10.0.0.1", out_if=1),
     "NatRule.out_if: no output interface is known in prerouting (routing has not run yet; iptables "
     "refuses -o in PREROUTING)"),
    (dict(action="notrack", src="10.0.0.1/8"),
     "NatRule.src: '10.0.0.1/8' is not a network (10.0.0.1/8 has host bits set)"),
    (dict(action="notrack", dst="nonsense"),
     "NatRule.dst: 'nonsense' is not a network ('nonsense' does not appear to be an IPv4 or IPv6 network)"),
    (dict(action="notrack", src=10), "NatRule.src: a network such as '10.0.0.0/8', or None (any), not 10"),
    (dict(action="notrack", src="::ffff:10.0.0.0/104"),
     "NatRule.src: '::ffff:10.0.0.0/104' is an IPv4-mapped IPv6 address; write the IPv4 address "
     "10.0.0.0 (fastct keeps IPv4 connections as IPv4)"),
    (dict(action="snat", src="10.0.0.0/8", to_min="2001:db8::1"),
     "NatRule.to_min: IPv6, but src is IPv4; a rule's addresses are one family"),
    (dict(action="notrack", src="10.0.0.0/8", dst="2001:db8::/32"),
     "NatRule.dst: IPv6, but src is IPv4; a rule's addresses are one family"),
    (dict(action="notrack", src="10.0.0.0/8", l3=6), "NatRule.l3: IPv6, but src is IPv4"),
    (dict(action="snat", to_min="2001:db8::1", l3=AF_INET), "NatRule.l3: IPv4, but to_min is IPv6"),
    (dict(action="notrack", l3=5),
     f"NatRule.l3: 4 or {AF_INET} (IPv4), 6 or {AF_INET6} (IPv6), or 0/None (any), not 5"),
    (dict(action="notrack", l3="ipv4"),
     f"NatRule.l3: 4 or {AF_INET} (IPv4), 6 or {AF_INET6} (IPv6), or 0/None (any), not 'ipv4'"),
    (dict(action="notrack", proto="xtp"),
     "NatRule.proto: unknown protocol 'xtp'; use a number 0..255 or one of dccp, gre, icmp, icmpv6, sctp, "
     "tcp, udp, udplite"),
    (dict(action="notrack", proto=256), "NatRule.proto: a protocol name or number 0..255, not 256"),
    (dict(action="notrack", proto=6.0), "NatRule.proto: a protocol name or number 0..255, not 6.0"),
    (dict(action="notrack", proto="icmp", l3=6), "NatRule.proto: icmp is IPv4's; an IPv6 rule uses icmpv6"),
    (dict(action="notrack", proto="icmpv6", src="10.0.0.0/8"),
     "NatRule.proto: icmpv6 is IPv6's; an IPv4 rule uses icmp"),
    (dict(action="notrack", sport=80),
     "NatRule.sport: a port match needs proto tcp, udp, dccp, sctp, udplite, not any"),
    (dict(action="notrack", proto="gre", dport=(1, 2)),
     "NatRule.dport: a port match needs proto tcp, udp, dccp, sctp, udplite, not gre"),
    (dict(action="notrack", proto="icmp", dport=8),
     "NatRule.dport: a port match needs proto tcp, udp, dccp, sctp, udplite, not icmp"),
    (dict(action="notrack", proto="tcp", sport=(90, 80)), "NatRule.sport: (90, 80): first port after last"),
    (dict(action="notrack", proto="tcp", dport=65536), "NatRule.dport: port 65536 out of range 0-65535"),
    (dict(action="notrack", proto="tcp", dport="80"),
     "NatRule.dport: a port or a (first, last) pair, not '80'"),
    (dict(action="notrack", proto="tcp", dport=(1, 2, 3)),
     "NatRule.dport: a port or a (first, last) pair, not (1, 2, 3)"),
    (dict(action="snat"), "NatRule.to_min: a snat rule needs the address to map to"),
    (dict(action="dnat", to_ports=80, proto="tcp"),
     "NatRule.to_min: a dnat rule needs the address to map to"),
    (dict(action="masquerade"), "NatRule.to_min: a masquerade rule needs the address to map to"),
    (dict(action="snat", to_max="10.0.0.1"), "NatRule.to_max: given without to_min"),
    (dict(action="redirect", to_min="10.0.0.1"),
     "NatRule.to_min: a redirect rule maps to no address (redirect uses the input interface's own)"),
    (dict(action="accept", stage="prerouting", to_min="10.0.0.1"),
     "NatRule.to_min: an accept rule maps to no address"),
    (dict(action="snat", to_min="10.0.0.300"), "NatRule.to_min: '10.0.0.300' is not an IP address"),
    (dict(action="snat", to_min=167772161), "NatRule.to_min: an IP address or its text, not 167772161"),
    (dict(action="snat", to_min="fe80::1%eth0"),
     "NatRule.to_min: 'fe80::1%eth0' has a scope (%eth0); NAT addresses have none"),
    (dict(action="snat", to_min="10.0.0.9", to_max="10.0.0.1"),
     "NatRule.to_max: '10.0.0.9'-'10.0.0.1': first address after last"),
    (dict(action="snat", to_min="10.0.0.1", to_max="2001:db8::1"),
     "NatRule.to_max: '2001:db8::1' is not of to_min's family ('10.0.0.1')"),
    (dict(action="masquerade", to_min="10.0.0.1", to_max="10.0.0.2"),
     "NatRule.to_max: masquerade maps to the output interface's one address, not a range "
     "('10.0.0.1'-'10.0.0.2')"),
    (dict(action="notrack", to_ports=80), "NatRule.to_ports: a notrack rule maps no ports"),
    (dict(action="accept", stage="postrouting", to_ports=80),
     "NatRule.to_ports: an accept rule maps no ports"),
    (dict(action="snat", to_min="10.0.0.1", proto="gre", to_ports=(1, 2)),
     "NatRule.to_ports: proto gre has no ports to map (ports: icmp, tcp, udp, dccp, icmpv6, sctp, udplite)"),
    (dict(action="snat", to_min="10.0.0.1", to_ports=0), "NatRule.to_ports: port 0 out of range 1-65535"),
    (dict(action="snat", to_min="10.0.0.1", to_ports=(2000, 1000)),
     "NatRule.to_ports: (2000, 1000): first port after last"),
    (dict(action="snat", to_min="10.0.0.1", flags={"sticky"}),
     f"NatRule.flags: unknown flag 'sticky'; known: {KNOWN_FLAGS}"),
    (dict(action="snat", to_min="10.0.0.1", flags=3),
     f"NatRule.flags: flag names ({KNOWN_FLAGS}), not 3"),
    (dict(action="masquerade", to_min="10.0.0.1", flags={"persistent"}),
     "NatRule.flags: persistent not for a masquerade rule (it takes fully-random, random)"),
    (dict(action="redirect", flags=["persistent", "random"]),
     "NatRule.flags: persistent not for a redirect rule (it takes fully-random, random)"),
    (dict(action="notrack", flags={"random"}), "NatRule.flags: random not for a notrack rule"),
    (dict(action="accept", stage="prerouting", flags="persistent"),
     "NatRule.flags: persistent not for an accept rule"),
])
def test_natrule_validation(fields, message):
    with pytest.raises(ValueError) as exc:
        NatRule(**fields)
    assert str(exc.value) == message


# ---- to_ruleset() and compile_ruleset(): the rules as chains, every field's bytes -------------
Z12 = bytes(12)
V4_ADDR = lambda hexstr: bytes.fromhex(hexstr) + Z12          # noqa: E731
u32 = lambda hexstr: bytes.fromhex(hexstr)                    # noqa: E731  (write them little-endian)
ALL32 = bytes.fromhex("ffffffff")                             # rs_match.mask: compare every bit


def _rules():
    snat = parse_spec("172.93.74.5-172.93.74.15:5000-50000", "snat")
    dnat = NatRule(action="dnat", zone=7, in_if=3, src="10.1.0.0/16", dst="192.0.2.1/32", proto="tcp",
                   sport=(1024, 65535), dport=80, to_min="10.1.2.3", to_ports=8080,
                   flags={"persistent", "random"})
    masq = parse_masquerade("[2001:db8::1]:1024-2047,fully-random")
    accept = NatRule(action="accept", stage="prerouting", src="2001:db8:aa::/48", proto="icmpv6")
    return snat, dnat, masq, accept


def _pre():
    return Chain("inet", "fastct", "prerouting", type="nat", hook="prerouting", priority=-100)


def _post():
    return Chain("inet", "fastct", "postrouting", type="nat", hook="postrouting", priority=100)


def _expected_ruleset() -> Ruleset:
    """_rules() as chains, worked out by hand from the NatRule fields (MATCH_KEYS' value forms)."""
    pre, post = _pre(), _post()
    pre.rules += [
        Rule(matches=(Match("ct zone", ((7, 7),)),                         # zone=7
                      Match("iif", (3,)),                                   # in_if=3
                      Match("saddr", ((ip("10.1.0.0"), ip("10.1.255.255")),)),      # 10.1.0.0/16
                      Match("daddr", ((ip("192.0.2.1"), ip("192.0.2.1")),)),        # 192.0.2.1/32
                      Match("l4proto", ((6, 6),)),                          # tcp
                      Match("sport", ((1024, 65535),)),
                      Match("dport", ((80, 80),))),
             nat=NatTarget("dnat", ip("10.1.2.3"), ip("10.1.2.3"), (8080, 8080),
                           frozenset({"persistent", "random"}), 4)),
        Rule(matches=(Match("saddr", ((ip("2001:db8:aa::"), ip("2001:db8:aa:ffff:ffff:ffff:ffff:ffff")),)),
                      Match("l4proto", ((58, 58),))),                       # icmpv6
             verdict="accept"),
    ]
    post.rules += [
        Rule(matches=(Match("nfproto", (4,)),),                             # l3 IPv4, no addresses
             nat=NatTarget("snat", ip("172.93.74.5"), ip("172.93.74.15"), (5000, 50000), frozenset(), 4)),
        Rule(matches=(Match("nfproto", (6,)),),
             nat=NatTarget("masquerade", ip("2001:db8::1"), ip("2001:db8::1"), (1024, 2047),
                           frozenset({"fully-random"}), 6)),
    ]
    return Ruleset(chains=[pre, post], source="NatRules")


def _natrules() -> NatRules:
    rules = NatRules()
    for r in _rules():                                  # insertion order: post, pre, post, pre
        rules.add(r)
    return rules


def test_to_ruleset_exact():
    rs = _natrules().to_ruleset()
    assert isinstance(rs, Ruleset)
    want = _expected_ruleset()
    # no notrack rule, so no raw chain; each nat chain's rules in insertion order
    assert [(c.family, c.table, c.name, c.type, c.hook, c.priority, c.policy) for c in rs.chains] == [
        ("inet", "fastct", "prerouting", "nat", "prerouting", -100, "accept"),
        ("inet", "fastct", "postrouting", "nat", "postrouting", 100, "accept")]
    for got_chain, want_chain in zip(rs.chains, want.chains):
        assert len(got_chain.rules) == len(want_chain.rules)
        for got, exp in zip(got_chain.rules, want_chain.rules):
            assert got.matches == exp.matches
            assert got.nat == exp.nat and got.verdict == exp.verdict
            assert not got.notrack and got.target is None and got.counter is False
    assert rs == want                                   # and nothing else differs (helpers, statements)
    assert rs.helpers == [] and rs.warnings == []


def _field_bytes(dtype: np.dtype, row_bytes: bytes, name: str) -> bytes:
    ftype, offset = dtype.fields[name][:2]
    return row_bytes[offset:offset + ftype.itemsize]


def _check_row(dtype: np.dtype, row, expected: dict[str, bytes]):
    """Every field of one struct row against its expected bytes, and nothing between them."""
    raw = row.tobytes()
    assert len(raw) == dtype.itemsize
    assert set(expected) == set(dtype.names)            # every field is checked
    for name, want in expected.items():
        assert _field_bytes(dtype, raw, name) == want, name
    assert b"".join(expected[n] for n in sorted(expected, key=lambda n: dtype.fields[n][1])) == raw


def _expected_targets():
    """The three nat_target rows (dnat, snat, masquerade: the order the compiler meets their rules),
    field by field, worked out by hand."""
    v6 = bytes.fromhex("20010db8 00000000 00000000 00000001")              # 2001:db8::1
    dnat = {
        "to_min": V4_ADDR("0a010203"), "to_max": V4_ADDR("0a010203"),       # 10.1.2.3
        "to_port_lo": bytes.fromhex("901f"), "to_port_hi": bytes.fromhex("901f"),    # 8080
        "action": bytes([ACTION["dnat"]]), "flags": bytes([FLAG["persistent"] | FLAG["random"]]),
        "l3": b"\x02", "_pad": b"\x00",
    }
    snat = {
        "to_min": V4_ADDR("ac5d4a05"), "to_max": V4_ADDR("ac5d4a0f"),       # 172.93.74.5 / .15
        "to_port_lo": bytes.fromhex("8813"), "to_port_hi": bytes.fromhex("50c3"),    # 5000, 50000
        "action": bytes([ACTION["snat"]]), "flags": b"\x00", "l3": b"\x02", "_pad": b"\x00",
    }
    masq = {
        "to_min": v6, "to_max": v6,
        "to_port_lo": bytes.fromhex("0004"), "to_port_hi": bytes.fromhex("ff07"),    # 1024, 2047
        # an address was given: fully-random only, no NAT_F_IFADDR
        "action": bytes([ACTION["masquerade"]]), "flags": bytes([FLAG["fully-random"]]),
        "l3": b"\x0a", "_pad": b"\x00",
    }
    return dnat, snat, masq


@pytest.mark.skipif(sys.byteorder != "little", reason="expected bytes are worked out for little-endian hosts")
def test_compile_targets_byte_for_byte():
    prog = compile_ruleset(_natrules().to_ruleset())
    t = prog.targets
    assert t.dtype == TARGET_DTYPE and t.shape == (3,) and TARGET_DTYPE.itemsize == 40
    for row, expected in zip(t, _expected_targets()):
        _check_row(TARGET_DTYPE, row, expected)
    assert not any(int(f) & IFADDR for f in t["flags"])
    # read back as numbers too
    assert list(t["action"]) == [ACTION["dnat"], ACTION["snat"], ACTION["masquerade"]]
    assert list(t["to_port_lo"]) == [8080, 5000, 1024] and list(t["to_port_hi"]) == [8080, 50000, 2047]
    assert list(t["l3"]) == [AF_INET, AF_INET, AF_INET6]
    assert bytes(t["to_min"][1][:4]) == ip("172.93.74.5").packed
    assert bytes(t["to_max"][2]) == ip("2001:db8::1").packed


def _match_bytes(key: str, first: int, count: int, l3: int = 0) -> dict[str, bytes]:
    """An rs_match row: not negated, mask all ones."""
    return {"key": bytes([KEY[key]]), "neg": b"\x00", "l3": bytes([l3]), "_pad": b"\x00", "mask": ALL32,
            "first": first.to_bytes(4, "little"), "count": count.to_bytes(4, "little")}


@pytest.mark.skipif(sys.byteorder != "little", reason="expected bytes are worked out for little-endian hosts")
def test_compile_rules_and_matches():
    prog = compile_ruleset(_natrules().to_ruleset())
    # chains in the ruleset's order: prerouting (rules 0-1), postrouting (rules 2-3), policy accept
    assert prog.chains.dtype == CHAIN_DTYPE and prog.chains.shape == (2,)
    _check_row(CHAIN_DTYPE, prog.chains[0], {"first": u32("00000000"), "count": u32("02000000"),
                                             "policy": bytes([VERDICT["accept"]]), "l3": b"\x00",  # inet
                                             "_pad": bytes(2)})
    _check_row(CHAIN_DTYPE, prog.chains[1], {"first": u32("02000000"), "count": u32("02000000"),
                                             "policy": bytes([VERDICT["accept"]]), "l3": b"\x00",
                                             "_pad": bytes(2)})

    # the dnat rule: matches 0-7, no statement, verdict nat with target 0
    assert prog.rules.dtype == RULE_DTYPE and prog.rules.shape == (4,)
    _check_row(RULE_DTYPE, prog.rules[0], {
        "m_first": u32("00000000"), "m_count": bytes.fromhex("0800"), "stmts": bytes.fromhex("0000"),
        "ct_mark": u32("00000000"), "meta_mark": u32("00000000"), "target": u32("00000000"),
        "zone": bytes.fromhex("0000"), "verdict": bytes([VERDICT["nat"]]), "helper": b"\x00",
        "_pad": bytes(8)})
    # its matches: the target's family (inet table, IPv4 target), then the rule's own, in order
    assert prog.matches.dtype == MATCH_DTYPE
    dnat_matches = [
        _match_bytes("nfproto", 0, 1),                  # iranges[0]: 4 (the target is IPv4)
        _match_bytes("ct zone", 1, 1),                  # iranges[1]: 7-7
        _match_bytes("iif", 2, 1),                      # iranges[2]: 3-3
        _match_bytes("saddr", 0, 1, l3=2),              # aranges[0]: 10.1.0.0-10.1.255.255
        _match_bytes("daddr", 1, 1, l3=2),              # aranges[1]: 192.0.2.1
        _match_bytes("l4proto", 3, 1),                  # iranges[3]: 6-6
        _match_bytes("sport", 4, 1),                    # iranges[4]: 1024-65535
        _match_bytes("dport", 5, 1),                    # iranges[5]: 80-80
    ]
    for row, expected in zip(prog.matches[:8], dnat_matches):
        _check_row(MATCH_DTYPE, row, expected)
    assert prog.iranges.dtype == IRANGE_DTYPE
    assert prog.iranges[:6].tobytes() == bytes.fromhex(
        "04000000 04000000"  "07000000 07000000"  "03000000 03000000"
        "06000000 06000000"  "00040000 ffff0000"  "50000000 50000000")
    assert prog.aranges.dtype == ARANGE_DTYPE
    assert prog.aranges[0].tobytes() == V4_ADDR("0a010000") + V4_ADDR("0a01ffff")
    assert prog.aranges[1].tobytes() == V4_ADDR("c0000201") + V4_ADDR("c0000201")

    # the other rules, as numbers: accept (no target family), snat and masquerade (the target's
    # family row; their own nfproto match tests the same thing and is compiled once)
    r = prog.rules
    assert list(r["m_first"]) == [0, 8, 10, 11] and list(r["m_count"]) == [8, 2, 1, 1]
    assert list(r["verdict"]) == [VERDICT["nat"], VERDICT["accept"], VERDICT["nat"], VERDICT["nat"]]
    assert list(r["target"]) == [0, -1, 1, 2]
    assert list(r["stmts"]) == [0, 0, 0, 0] and list(r["zone"]) == [0, 0, 0, 0]
    m = prog.matches
    assert len(m) == 12
    assert list(m["key"][8:]) == [KEY["saddr"], KEY["l4proto"], KEY["nfproto"], KEY["nfproto"]]
    assert list(m["first"][8:]) == [2, 6, 7, 8] and list(m["count"][8:]) == [1] * 4
    assert list(m["l3"][8:]) == [AF_INET6, 0, 0, 0] and not m["neg"].any()
    assert [tuple(x) for x in prog.iranges[6:].tolist()] == [(58, 58), (4, 4), (6, 6)]
    assert prog.aranges.shape == (3,)
    assert prog.aranges[2].tobytes() == (bytes.fromhex("20010db8 00aa") + bytes(10)
                                         + bytes.fromhex("20010db8 00aa") + b"\xff" * 10)
    # prerouting at the dnat hook point, postrouting at the snat one
    assert list(prog.base) == [0, 1]
    assert prog.hp_first == [0, 0, 0, 1, 1, 2]
    assert prog.nat_on


def test_stage_order_is_stable():
    a = NatRule(action="snat", to_min="192.0.2.1", src="10.0.0.0/24")
    b = NatRule(action="dnat", to_min="10.0.0.1", dst="198.51.100.1/32")
    c = NatRule(action="accept", stage="postrouting", dst="10.0.0.0/8")
    d = NatRule(action="notrack", proto="udp", dport=53)
    e = NatRule(action="masquerade", to_min="192.0.2.2")
    f = NatRule(action="redirect", proto="tcp", dport=80, to_ports=3128)
    rules = NatRules([a, b, c, d, e, f])
    assert rules.rules == (a, b, c, d, e, f) and list(rules) == [a, b, c, d, e, f] and len(rules) == 6
    assert rules.stage("prerouting") == (b, d, f)
    assert rules.stage("postrouting") == (a, c, e)
    assert rules.ordered() == [b, d, f, a, c, e]

    rs = rules.to_ruleset()
    raw, pre, post = rs.chains
    assert [(x.name, x.type, x.hook, x.priority) for x in rs.chains] == [
        ("raw", "filter", "prerouting", -300), ("prerouting", "nat", "prerouting", -100),
        ("postrouting", "nat", "postrouting", 100)]
    assert raw.rules == [Rule(matches=(Match("l4proto", ((17, 17),)), Match("dport", ((53, 53),))),
                              notrack=True)]
    assert pre.rules == [
        Rule(matches=(Match("daddr", ((ip("198.51.100.1"), ip("198.51.100.1")),)),),
             nat=NatTarget("dnat", ip("10.0.0.1"), ip("10.0.0.1"), None, frozenset(), 4)),
        Rule(matches=(Match("l4proto", ((6, 6),)), Match("dport", ((80, 80),))),
             nat=NatTarget("redirect", None, None, (3128, 3128), frozenset(), None)),
    ]
    assert post.rules == [
        Rule(matches=(Match("saddr", ((ip("10.0.0.0"), ip("10.0.0.255")),)),),
             nat=NatTarget("snat", ip("192.0.2.1"), ip("192.0.2.1"), None, frozenset(), 4)),
        Rule(matches=(Match("daddr", ((ip("10.0.0.0"), ip("10.255.255.255")),)),), verdict="accept"),
        Rule(matches=(Match("nfproto", (4,)),),
             nat=NatTarget("masquerade", ip("192.0.2.2"), ip("192.0.2.2"), None, frozenset(), 4)),
    ]

    prog = compile_ruleset(rs)
    # base chains by hook point: raw (chain 0) before conntrack, prerouting (1) at dnat, postrouting
    # (2) at snat; nothing at the other two
    assert list(prog.base) == [0, 1, 2]
    hp = prog.hp_first
    assert len(hp) == len(HOOK) + 1
    assert list(prog.base[hp[HOOK["raw"]]:hp[HOOK["raw"] + 1]]) == [0]
    assert list(prog.base[hp[HOOK["dnat"]]:hp[HOOK["dnat"] + 1]]) == [1]
    assert list(prog.base[hp[HOOK["snat"]]:hp[HOOK["snat"] + 1]]) == [2]
    assert hp[HOOK["pre"]] == hp[HOOK["pre"] + 1] and hp[HOOK["late"]] == hp[HOOK["late"] + 1]
    # rules in chain order: d | b f | a c e
    assert list(prog.rules["stmts"]) == [STMT["notrack"], 0, 0, 0, 0, 0]
    assert list(prog.rules["verdict"]) == [VERDICT[v] for v in ("continue", "nat", "nat", "nat", "accept",
                                                                "nat")]
    assert list(prog.rules["target"]) == [-1, 0, 1, 2, -1, 3]
    assert list(prog.targets["action"]) == [ACTION[x] for x in ("dnat", "redirect", "snat", "masquerade")]
    assert list(prog.targets["l3"]) == [AF_INET, 0, AF_INET, AF_INET]
    assert list(prog.targets["flags"]) == [0, 0, 0, 0]                 # masquerade has its address
    assert list(prog.targets["to_port_lo"]) == [0, 3128, 0, 0]


def test_empty():
    rs = NatRules().to_ruleset()
    assert rs == Ruleset(chains=[_pre(), _post()], source="NatRules")
    prog = compile_ruleset(rs)
    assert prog.rules.shape == (0,) and prog.targets.shape == (0,) and prog.matches.shape == (0,)
    assert prog.targets.dtype == TARGET_DTYPE
    assert prog.nat_on is True                        # every new connection still gets its bindings
    assert list(prog.base) == [0, 1] and prog.hp_first == [0, 0, 0, 1, 1, 2]


def test_rules_container_checks():
    rules = NatRules()
    with pytest.raises(TypeError, match="NatRules.add takes a NatRule, not str"):
        rules.add("10.0.0.1")
    with pytest.raises(ValueError, match="stage 'input' is not one of 'prerouting', 'postrouting'"):
        rules.stage("input")
    r = NatRule(action="snat", to_min="192.0.2.1")
    assert rules.add(r) is r and "NatRules([NatRule(action='snat'" in repr(rules)


# ---- from_cli --------------------------------------------------------------------------------------
def test_from_cli_common_cases():
    rules = NatRules.from_cli(snat=["203.0.113.1:1024-65535,fully-random"], dnat=["10.0.0.5:8080"],
                              masquerade=["[2001:db8::1]"])
    snat, masq = rules.stage("postrouting")
    (dnat,) = rules.stage("prerouting")
    assert snat == parse_spec("203.0.113.1:1024-65535,fully-random", "snat")
    assert dnat == parse_spec("10.0.0.5:8080", "dnat")
    assert masq == parse_masquerade("[2001:db8::1]")
    assert all(r.matches_everything for r in rules)
    rs = rules.to_ruleset()
    pre, post = rs.chains                                  # no notrack rule: no raw chain
    # matching every connection of a family: only the nfproto match, nothing else
    assert [r.matches for r in pre.rules] == [(Match("nfproto", (4,)),)]
    assert [r.matches for r in post.rules] == [(Match("nfproto", (4,)),), (Match("nfproto", (6,)),)]
    t = compile_ruleset(rs).targets
    assert list(t["action"]) == [ACTION["dnat"], ACTION["snat"], ACTION["masquerade"]]
    assert list(t["l3"]) == [AF_INET, AF_INET, AF_INET6]
    assert list(t["flags"]) == [0, FLAG["fully-random"], 0]
    assert list(t["to_port_lo"]) == [8080, 1024, 0] and list(t["to_port_hi"]) == [8080, 65535, 0]


def test_from_cli_one_target_per_family_and_stage():
    rules = NatRules.from_cli(snat=["192.0.2.1", "2001:db8::1"], dnat=["10.0.0.1", "[fd00::1]:80"])
    assert [r.l3 for r in rules.ordered()] == [AF_INET, AF_INET6, AF_INET, AF_INET6]
    assert len(NatRules.from_cli(snat="192.0.2.1")) == 1                  # a lone string is one target
    assert len(NatRules.from_cli()) == 0
    with pytest.raises(ValueError) as exc:
        NatRules.from_cli(snat=["192.0.2.1"], masquerade=["192.0.2.2"])
    assert str(exc.value) == ("--masquerade '192.0.2.2': never used: --snat '192.0.2.1' already applies "
                              "to every new IPv4 connection in postrouting (the first matching rule wins)")
    with pytest.raises(ValueError) as exc:
        NatRules.from_cli(dnat=["[2001:db8::1]:80", "2001:db8::2"])
    assert str(exc.value) == ("--dnat '2001:db8::2': never used: --dnat '[2001:db8::1]:80' already "
                              "applies to every new IPv6 connection in prerouting (the first matching "
                              "rule wins)")


def test_from_cli_reports_the_bad_target():
    with pytest.raises(ValueError, match=r"^--dnat '10\.0\.0\.1:99999': port 99999 out of range 1-65535$"):
        NatRules.from_cli(snat=["192.0.2.1"], dnat=["10.0.0.1:99999"])
    with pytest.raises(ValueError, match=r"^--masquerade '192\.0\.2\.1,persistent': 'persistent' does not"):
        NatRules.from_cli(masquerade=["192.0.2.1,persistent"])

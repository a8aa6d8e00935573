"""The engine running compiled rulesets (fastct.ruleset -> fastct.rules_compile -> fastct/_rules.pxd).

Rulesets here are built directly in fastct.ruleset's form, so these tests do not depend on the
nft or iptables parsers.  Expected values follow the kernel: nf_tables' chain walk (verdicts,
jump/goto/return, counters counting IP bytes), the hook priorities (raw before conntrack, dnat
before filter at priority 0, snat after routing), and nf_nat (masquerade takes the output
interface's address).
"""
import ipaddress

import numpy as np
import pytest

from fastct import Tracker
from fastct.conntrack_fmt import format_table
from fastct.interfaces import Interfaces
from fastct.rules_compile import compile_ruleset, describe
from fastct.ruleset import Chain, Helper, Match, NatTarget, Rule, Ruleset, RulesetError
from pkt import ACK, SYN, batch
from test_nat_engine import tcp, udp

A = ipaddress.ip_address
NEW, EST, RPL, TRK, SNAT, DNAT = 0x01, 0x02, 0x08, 0x20, 0x40, 0x80
C1, C2, SRV, WAN_PEER = "10.0.0.1", "10.0.0.2", "93.184.216.34", "203.0.113.77"
GW_WAN, GW_LAN = "203.0.113.5", "10.0.0.254"


def model(**kw):
    m = Interfaces.from_cli([f"wan={GW_WAN}/24", f"lan={GW_LAN}/24"], out_iface="wan", **kw)
    return m


def chain(name, type_, hook, prio, *rules, family="inet", table="t"):
    return Chain(family, table, name, type=type_, hook=hook, priority=prio, rules=list(rules))


def regular(name, *rules, family="inet", table="t"):
    return Chain(family, table, name, rules=list(rules))


def l4(proto):
    return Match("l4proto", ((proto, proto),))


def dport(p):
    return Match("dport", ((p, p),))


def tracker_with(chains, helpers=(), interfaces=None, classic_in="lan"):
    t = Tracker(max_conns=1024, seed=7)
    t.set_ruleset(Ruleset(chains=list(chains), helpers=list(helpers), source="test"),
                  interfaces if interfaces is not None else model(in_iface=classic_in))
    # One capture interface (as a classic pcap): --in-iface.
    t.set_capture_interfaces([object()], classic=True)
    return t


def run(t, frames, ts0=1000):
    b = batch(frames, ts=[ts0 + i for i in range(len(frames))])
    b.buf = b.buf.copy()
    return t.process(b), b


def ip_len(frame):
    return len(frame) - 14


# ---- NAT through the interface model --------------------------------------------------------

def test_masquerade_takes_the_output_interface_address_by_route():
    t = tracker_with([chain("post", "nat", "postrouting", 100,
                            Rule(matches=(Match("oifname", ("wan",)),), nat=NatTarget("masquerade")))])
    frames = [tcp(C1, SRV, 40000, 80, SYN),          # default route: wan -> masqueraded
              tcp(C1, WAN_PEER, 40001, 80, SYN),     # wan's prefix -> wan -> masqueraded
              tcp(C1, C2, 40002, 80, SYN)]           # lan's prefix -> lan: not
    r, _ = run(t, frames)
    assert r.ct_state.tolist() == [TRK | NEW | SNAT, TRK | NEW | SNAT, TRK | NEW]
    rep = t.replies()
    assert [str(A(bytes(rep["dst"][i][:4]))) for i in range(3)] == [GW_WAN, GW_WAN, C1]


def test_masquerade_without_an_address_of_the_family_drops():
    m = Interfaces.from_cli(["wan=2001:db8::5/64", f"lan={GW_LAN}/24"], out_iface="wan", in_iface="lan")
    t = tracker_with([chain("post", "nat", "postrouting", 100, Rule(nat=NatTarget("masquerade")))],
                     interfaces=m)
    r, _ = run(t, [tcp(C1, SRV, 40000, 80, SYN)])
    assert r.ct_state.tolist() == [TRK | 0x10] and len(t) == 0
    assert t.stats()["drop"] == 1


def test_redirect_takes_the_input_interface_address():
    t = tracker_with([chain("pre", "nat", "prerouting", -100,
                            Rule(matches=(Match("iifname", ("lan",)), l4(6), dport(80)),
                                 nat=NatTarget("redirect", to_ports=(3128, 3128))))])
    r, _ = run(t, [tcp(C1, SRV, 40000, 80, SYN)])
    assert r.ct_state.tolist() == [TRK | NEW | DNAT]
    rep = t.replies()[0]
    assert str(A(bytes(rep["src"][:4]))) == GW_LAN and int(rep["sport"]) == 3128


def test_iifname_wildcard_and_negation():
    m = Interfaces.from_cli([f"eth0={GW_LAN}/24", f"eth1={GW_WAN}/24", "wlan0=192.168.9.1/24"],
                            in_iface="wlan0", out_iface="eth1")
    snat = NatTarget("snat", A("198.51.100.1"), A("198.51.100.1"))
    t = tracker_with([chain("post", "nat", "postrouting", 100,
                            Rule(matches=(Match("iifname", ("eth*",)),), nat=snat))], interfaces=m)
    r, _ = run(t, [tcp(C1, SRV, 40000, 80, SYN)])
    assert r.ct_state.tolist() == [TRK | NEW]                 # wlan0 is not eth*
    t = tracker_with([chain("post", "nat", "postrouting", 100,
                            Rule(matches=(Match("iifname", ("eth*",), negate=True),), nat=snat))],
                     interfaces=m)
    r, _ = run(t, [tcp(C1, SRV, 40000, 80, SYN)])
    assert r.ct_state.tolist() == [TRK | NEW | SNAT]


def test_undeclared_interface_is_an_error_naming_it():
    rs = Ruleset(chains=[chain("post", "nat", "postrouting", 100,
                               Rule(matches=(Match("oifname", ("ppp0",)),), nat=NatTarget("masquerade")))])
    with pytest.raises(RulesetError, match="interface 'ppp0' is not declared"):
        compile_ruleset(rs, model())


# ---- statements ---------------------------------------------------------------------------------

def test_ct_mark_set_in_a_nat_chain_is_the_connection_mark():
    t = tracker_with([chain("pre", "nat", "prerouting", -100,
                            Rule(matches=(l4(6),), ct_mark_set=0x2A))])
    run(t, [tcp(C1, SRV, 40000, 80, SYN), udp(C1, SRV, 5000, 53)])
    e = t.entries()
    assert sorted(t.cold()["mark"].tolist()) == [0, 0x2A]
    line = [x for x in format_table(e, t.replies(), t.cold(), t.now) if "tcp" in x][0]
    assert " mark=42 " in line


def test_filter_chain_marks_established_packets_of_a_connection():
    t = tracker_with([chain("f", "filter", "prerouting", 0,
                            Rule(matches=(Match("ct state", ("established",)),), ct_mark_set=5,
                                 counter=True))])
    syn, synack = tcp(C1, SRV, 40000, 80, SYN, seq=1), tcp(SRV, C1, 80, 40000, SYN | ACK, seq=9, ack=2)
    r, _ = run(t, [syn])
    assert int(t.cold()["mark"][0]) == 0
    r, _ = run(t, [synack], ts0=1001)
    assert r.ct_state.tolist() == [TRK | EST | RPL]
    assert int(t.cold()["mark"][0]) == 5
    assert t.rule_counters().tolist() == [[1, ip_len(synack)]]


def test_notrack_in_raw_leaves_packets_untracked():
    t = tracker_with([chain("raw", "filter", "prerouting", -300,
                            Rule(matches=(l4(17), dport(53)), notrack=True, counter=True))])
    dns, web = udp(C1, SRV, 5000, 53), tcp(C1, SRV, 40000, 80, SYN)
    r, _ = run(t, [dns, web])
    assert r.ct_state.tolist() == [0, TRK | NEW]
    assert r.entry[0] == -1 and len(t) == 1
    assert t.stats()["untracked"] == 1
    assert t.rule_counters().tolist() == [[1, ip_len(dns)]]


def test_ct_zone_set_in_raw_puts_the_connection_in_that_zone():
    t = tracker_with([chain("raw", "filter", "prerouting", -300,
                            Rule(matches=(Match("iifname", ("lan",)),), ct_zone_set=7))])
    run(t, [tcp(C1, SRV, 40000, 80, SYN)])
    assert t.entries()["zone"].tolist() == [7]
    r, _ = run(t, [tcp(SRV, C1, 80, 40000, SYN | ACK, seq=5, ack=1001)], ts0=1001)
    assert r.ct_state.tolist() == [TRK | EST | RPL]          # the reply is zoned too (same iif here)


def test_meta_mark_set_in_raw_is_seen_by_nat_rules():
    snat = NatTarget("snat", A("198.51.100.1"), A("198.51.100.1"))
    t = tracker_with([
        chain("raw", "filter", "prerouting", -300, Rule(matches=(l4(17),), meta_mark_set=0x10)),
        chain("post", "nat", "postrouting", 100,
              Rule(matches=(Match("meta mark", ((0x10, 0x10),), mask=0xF0),), nat=snat))])
    r, _ = run(t, [udp(C1, SRV, 5000, 53), tcp(C1, SRV, 40000, 80, SYN)])
    assert r.ct_state.tolist() == [TRK | NEW | SNAT, TRK | NEW]


def test_helper_is_recorded_and_listed():
    helper = Helper("inet", "t", "ftp-std", "ftp", "tcp")
    t = tracker_with([chain("f", "filter", "prerouting", 0,
                            Rule(matches=(dport(21),), ct_helper_set="ftp-std"))], helpers=[helper])
    # The UDP datagram to port 21 matches too, but an ftp helper for tcp is not attached to it.
    run(t, [tcp(C1, SRV, 40000, 21, SYN), tcp(C1, SRV, 40001, 80, SYN), udp(C1, SRV, 40002, 21)])
    assert t.helper_names() == ["ftp"]
    lines = format_table(t.entries(), t.replies(), t.cold(), t.now, t.helper_names())
    assert sum(" helper=ftp use=1" in x for x in lines) == 1
    assert [" dport=21 " in x for x in lines if "helper=" in x] == [True]


# ---- the chain walk -------------------------------------------------------------------------------

def test_jump_return_and_goto():
    to = lambda a: NatTarget("dnat", A(a), A(a))              # noqa: E731
    rs = [chain("pre", "nat", "prerouting", -100,
                Rule(matches=(l4(6),), verdict="jump", target="web"),
                Rule(matches=(l4(6), dport(22)), nat=to("10.9.0.22")),
                Rule(matches=(l4(17),), verdict="goto", target="dns"),
                Rule(nat=to("10.9.0.99"))),
          regular("web", Rule(matches=(dport(22),), verdict="return"),
                  Rule(matches=(dport(80),), nat=to("10.9.0.80"))),
          regular("dns", Rule(matches=(dport(53),), nat=to("10.9.0.53")))]
    t = tracker_with(rs)
    run(t, [tcp(C1, SRV, 1, 80, SYN), tcp(C1, SRV, 2, 22, SYN), tcp(C1, SRV, 3, 443, SYN),
            udp(C1, SRV, 4, 53), udp(C1, SRV, 5, 123)])
    got = {int(e["sport"]): str(A(bytes(r["src"][:4]))) for e, r in zip(t.entries(), t.replies())}
    # 80: web's dnat; 22: web returns, then pre's ssh rule; 443: web falls through, back in pre,
    # the catch-all; 53: goto dns; 123: goto dns, no match there, and goto does not come back to
    # pre's catch-all: the chain's policy (accept) ends it, untranslated.
    assert got == {1: "10.9.0.80", 2: "10.9.0.22", 3: "10.9.0.99", 4: "10.9.0.53", 5: SRV}


def test_first_nat_chain_that_translates_wins_and_priority_orders_chains():
    to = lambda a: NatTarget("dnat", A(a), A(a))              # noqa: E731
    t = tracker_with([chain("later", "nat", "prerouting", 50, Rule(nat=to("10.9.0.2"))),
                      chain("earlier", "nat", "prerouting", -100, Rule(matches=(dport(80),), nat=to("10.9.0.1")),
                            Rule(verdict="accept"))])
    run(t, [tcp(C1, SRV, 1, 80, SYN), tcp(C1, SRV, 2, 81, SYN)])
    got = {int(e["sport"]): str(A(bytes(r["src"][:4]))) for e, r in zip(t.entries(), t.replies())}
    # 80: the earlier chain translates, the later one is skipped; 81: accept ends the earlier
    # chain only, so the later chain still runs.
    assert got == {1: "10.9.0.1", 2: "10.9.0.2"}


def test_filter_after_dnat_sees_the_new_destination():
    to = NatTarget("dnat", A("10.9.0.80"), A("10.9.0.80"), (8080, 8080))
    t = tracker_with([
        chain("pre", "nat", "prerouting", -100, Rule(matches=(l4(6), dport(80)), nat=to)),
        chain("early", "filter", "prerouting", -150,
              Rule(matches=(Match("daddr", ((A(SRV), A(SRV)),)),), counter=True)),
        chain("late", "filter", "prerouting", 0,
              Rule(matches=(Match("daddr", ((A("10.9.0.80"), A("10.9.0.80")),)), dport(8080)),
                   counter=True))])
    syn = tcp(C1, SRV, 40000, 80, SYN, seq=1)
    ack = tcp(C1, SRV, 40000, 80, ACK, seq=2, ack=10)
    synack = tcp("10.9.0.80", C1, 8080, 40000, SYN | ACK, seq=9, ack=2)
    run(t, [syn])
    run(t, [synack, ack], ts0=1001)
    c = t.rule_counters().tolist()
    # early (before dnat) sees the SYN and the ACK addressed to SRV; late sees them translated.
    assert c == [[0, 0], [2, ip_len(syn) + ip_len(ack)], [2, ip_len(syn) + ip_len(ack)]]


def test_table_family_limits_rules_to_its_packets():
    snat6 = NatTarget("snat", A("198.51.100.1"), A("198.51.100.1"))
    t = tracker_with([chain("post", "nat", "postrouting", 100, Rule(nat=snat6, counter=True),
                            family="ip6")])
    r, _ = run(t, [tcp(C1, SRV, 40000, 80, SYN)])
    assert r.ct_state.tolist() == [TRK | NEW] and t.rule_counters().tolist() == [[0, 0]]


# ---- compile-time refusals ---------------------------------------------------------------------

@pytest.mark.parametrize("chains,message", [
    ([chain("f", "filter", "prerouting", 0, Rule(notrack=True))], "notrack in chain inet t f: works only before conntrack"),
    ([chain("r", "filter", "prerouting", -300, Rule(ct_mark_set=1))], "ct mark set in chain inet t r: before conntrack"),
    ([chain("p", "nat", "prerouting", -100, Rule(matches=(Match("oifname", ("wan",)),), verdict="accept"))],
     "the output interface is not known before routing"),
    ([chain("f", "filter", "prerouting", 0, Rule(verdict="drop"))], "drop verdicts are not supported yet"),
    ([chain("p", "nat", "prerouting", -100, Rule(verdict="jump", target="a")),
      regular("a", Rule(verdict="jump", target="b")), regular("b", Rule(verdict="goto", target="a"))],
     "chains jump in a loop: a -> b -> a"),
    ([chain("p", "nat", "prerouting", -100, Rule(verdict="jump", target="nowhere"))],
     "jump to chain 'nowhere', which table inet t does not have"),
    ([chain("p", "nat", "postrouting", 100, Rule(nat=NatTarget("dnat", A("10.0.0.1"))))],
     "dnat in chain inet t p: runs only in a nat prerouting chain"),
    ([chain("fw", "filter", "forward", 0, Rule(ct_mark_set=1))],
     "ct mark set in chain inet t fw: filter chains on the forward hook are not run"),
    ([chain("fw", "filter", "postrouting", 0, Rule(verdict="jump", target="x")),
      regular("x", Rule(nat=NatTarget("masquerade")))],
     "NAT in chain inet t x: filter chains on the postrouting hook are not run"),
])
def test_compile_refuses(chains, message):
    with pytest.raises(RulesetError, match=message):
        compile_ruleset(Ruleset(chains=chains), model(in_iface="lan"))


def test_input_and_output_chains_are_compiled_but_never_run():
    rs = Ruleset(chains=[chain("in", "filter", "input", 0, Rule(counter=True)),
                         chain("out", "nat", "output", -100, Rule(counter=True))])
    t = tracker_with(rs.chains)
    run(t, [tcp(C1, SRV, 40000, 80, SYN)])
    assert t.rule_counters().tolist() == [[0, 0], [0, 0]]
    text = "\n".join(describe(t.program))
    assert text.count("never reached offline") == 2


def test_forward_filter_chain_is_read_shown_and_not_run():
    """A firewall's forward chain (drop policy, interfaces nobody declared) loads with a warning and
    changes nothing; input chains may name any interface (they never run)."""
    rs = [chain("fw", "filter", "forward", 0, Rule(matches=(Match("iifname", ("ppp9",)),), verdict="drop"),
                Rule(counter=True)),
          chain("in", "filter", "input", 0, Rule(matches=(Match("iifname", ("lo",)),), verdict="accept"))]
    rs[0].policy = "drop"
    t = tracker_with(rs)
    r, _ = run(t, [tcp(C1, SRV, 40000, 80, SYN)])
    assert r.ct_state.tolist() == [TRK | NEW] and t.rule_counters().tolist() == [[0, 0], [0, 0], [0, 0]]
    assert [w.split(": ", 1)[1] for w in t.program.warnings] == [
        "chain inet t fw (filter, hook forward) is not run: fastct models conntrack and NAT, not a "
        "firewall's verdicts"]
    assert "not run: a firewall's chain" in "\n".join(describe(t.program))


def test_equal_priorities_run_the_later_chain_first():
    """The kernel inserts a hook before those of its priority, so of two nat chains at dstnat the
    one created later translates."""
    to = lambda a: NatTarget("dnat", A(a), A(a))              # noqa: E731
    t = tracker_with([chain("a", "nat", "prerouting", -100, Rule(nat=to("10.9.0.7"))),
                      chain("b", "nat", "prerouting", -100, Rule(nat=to("10.9.0.8")))])
    run(t, [tcp(C1, SRV, 1, 80, SYN)])
    assert str(A(bytes(t.replies()[0]["src"][:4]))) == "10.9.0.8"


def test_no_route_drops_new_connections():
    """With an interface model and no default route, a destination outside every prefix is not
    forwarded: no entry, counted; inside a prefix it goes through."""
    m = Interfaces.from_cli([f"lan={GW_LAN}/24", f"wan={GW_WAN}/24"], in_iface="lan")
    t = tracker_with([chain("post", "nat", "postrouting", 100,
                            Rule(matches=(Match("oifname", ("wan",)),), nat=NatTarget("masquerade")))],
                     interfaces=m)
    r, _ = run(t, [tcp(C1, SRV, 40000, 80, SYN), tcp(C1, WAN_PEER, 40001, 80, SYN)])
    assert r.ct_state.tolist() == [TRK | 0x10, TRK | NEW | SNAT] and len(t) == 1
    assert t.stats()["reasons"] == {
        "no route: no --iface prefix holds the destination and no --out-iface, packet dropped": 1}


def test_empty_address_set_matches_nothing():
    t = tracker_with([chain("pre", "nat", "prerouting", -100,
                            Rule(matches=(Match("saddr", ()),), counter=True),
                            Rule(matches=(Match("saddr", (), negate=True),), counter=True))])
    frame = tcp(C1, SRV, 40000, 80, SYN)
    run(t, [frame])
    assert t.rule_counters().tolist() == [[0, 0], [1, ip_len(frame)]]


def test_after_notrack_rules_see_untracked():
    t = tracker_with([chain("raw", "filter", "prerouting", -300,
                            Rule(matches=(l4(17),), notrack=True),
                            Rule(matches=(Match("ct state", ("untracked",)),), counter=True),
                            Rule(matches=(Match("ct state", ("invalid",)),), counter=True))])
    dns, web = udp(C1, SRV, 5000, 53), tcp(C1, SRV, 40000, 80, SYN)
    run(t, [dns, web])
    # Before conntrack a packet's ct state reads invalid (no connection yet); after notrack, untracked.
    assert t.rule_counters().tolist() == [[0, 0], [1, ip_len(dns)], [1, ip_len(web)]]


def test_iptables_ct_helper_template_in_raw():
    from fastct.iptables import parse_iptables
    rs = parse_iptables("*raw\n:PREROUTING ACCEPT [0:0]\n"
                        "-A PREROUTING -p tcp -m tcp --dport 21 -j CT --helper ftp\nCOMMIT\n")
    t = Tracker(max_conns=64, seed=1)
    t.set_ruleset(rs)
    run(t, [tcp(C1, SRV, 40000, 21, SYN), tcp(C1, SRV, 40001, 22, SYN)])
    lines = format_table(t.entries(), t.replies(), t.cold(), t.now, t.helper_names())
    assert [(" dport=21 " in x, "helper=ftp" in x) for x in sorted(lines)] == [(True, True), (False, False)]

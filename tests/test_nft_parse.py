"""fastct.nft: nftables ruleset text -> Ruleset.  Expected values are worked out from the nft
language (nft(8)), not from the parser's output."""
import dataclasses
from ipaddress import IPv4Address as A4, IPv6Address as A6

import pytest

from fastct.nft import load_nft_file, parse_nft
from fastct.ruleset import Helper, Loc, Match, NatTarget, RulesetError

SRC = "t.nft"


def wrap(body, family="ip", ctype="nat", hook="prerouting", prio="0", extra=""):
    """One base chain `c` in table FAMILY t; the body starts at line 4, column 3 (two tabs)."""
    return (f"table {family} t {{\n{extra}\tchain c {{\n"
            f"\t\ttype {ctype} hook {hook} priority {prio}; policy accept;\n"
            f"\t\t{body}\n\t}}\n}}\n")


def rule(body, **kw):
    rs = parse_nft(wrap(body, **kw), SRC)
    rules = rs.chain(kw.get("family", "ip"), "t", "c").rules
    assert len(rules) == 1
    return rules[0]


def matches(body, **kw):
    """The rule's matches without their locations (those are tested separately)."""
    return [dataclasses.replace(m, loc=None) for m in rule(body, **kw).matches]


def nat(body, **kw):
    return rule(body, **kw).nat


def error(text):
    with pytest.raises(RulesetError) as info:
        parse_nft(text, SRC)
    return info.value


def rule_error(body, **kw):
    return error(wrap(body, **kw))


def at(err, line, col, token=None):
    assert err.loc == Loc(SRC, line, col), str(err)
    if token is not None:
        assert err.token == token, str(err)
    return True


def P(*values):
    """(n, n) pairs from numbers, pairs kept."""
    return tuple(v if isinstance(v, tuple) else (v, v) for v in values)


TCP = Match("l4proto", P(6))
UDP = Match("l4proto", P(17))


# ---- interfaces ---------------------------------------------------------------------------------
def test_iifname_oifname():
    assert matches('iifname "eth0" accept') == [Match("iifname", ("eth0",))]
    assert matches('oifname "eth*" accept') == [Match("oifname", ("eth*",))]
    assert matches('iifname { "eth0", "eth1" } accept') == [Match("iifname", ("eth0", "eth1"))]
    assert matches('iifname != "lo" accept') == [Match("iifname", ("lo",), negate=True)]
    assert matches('meta iifname "eth0" accept') == [Match("iifname", ("eth0",))]
    assert matches('meta oifname == "wg0" accept') == [Match("oifname", ("wg0",))]


def test_match_location_is_its_first_token():
    r = rule('iifname "eth0" tcp dport 80 accept')
    assert r.loc == Loc(SRC, 4, 3)
    assert [m.loc for m in r.matches] == [Loc(SRC, 4, 3), Loc(SRC, 4, 18), Loc(SRC, 4, 18)]


# ---- addresses ----------------------------------------------------------------------------------
def test_ip_addresses():
    assert matches("ip saddr 10.0.0.1 accept") == [Match("saddr", ((A4("10.0.0.1"), A4("10.0.0.1")),))]
    assert matches("ip daddr 10.0.0.0/8 accept") == \
        [Match("daddr", ((A4("10.0.0.0"), A4("10.255.255.255")),))]
    assert matches("ip saddr 10.0.0.1-10.0.0.9 accept") == \
        [Match("saddr", ((A4("10.0.0.1"), A4("10.0.0.9")),))]
    assert matches("ip saddr != { 10.0.0.1, 10.1.0.0/16, 10.2.0.1-10.2.0.5 } accept") == [
        Match("saddr", ((A4("10.0.0.1"), A4("10.0.0.1")), (A4("10.1.0.0"), A4("10.1.255.255")),
                        (A4("10.2.0.1"), A4("10.2.0.5"))), negate=True)]


def test_ip6_addresses():
    assert matches("ip6 saddr 2001:db8::/32 accept", family="ip6") == \
        [Match("saddr", ((A6("2001:db8::"), A6("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")),))]
    assert matches("ip6 daddr ::1 accept", family="inet") == [Match("daddr", ((A6("::1"), A6("::1")),))]
    assert matches("ip6 daddr { ::1-::5 } accept", family="inet") == \
        [Match("daddr", ((A6("::1"), A6("::5")),))]


def test_ip_saddr_in_inet_needs_no_nfproto():
    assert matches("ip saddr 1.2.3.4 accept", family="inet") == \
        [Match("saddr", ((A4("1.2.3.4"), A4("1.2.3.4")),))]


# ---- protocols ----------------------------------------------------------------------------------
def test_l4proto():
    assert matches("meta l4proto tcp accept") == [TCP]
    assert matches("meta l4proto { tcp, udp } accept") == [Match("l4proto", P(6, 17))]
    assert matches("meta l4proto 47 accept") == [Match("l4proto", P(47))]
    assert matches("meta l4proto != icmp accept") == [Match("l4proto", P(1), negate=True)]
    assert matches("meta l4proto { esp, ah, gre, sctp, dccp, udplite } accept") == \
        [Match("l4proto", P(50, 51, 47, 132, 33, 136))]
    assert matches("meta l4proto { icmpv6, ipv6-icmp } accept", family="ip6") == \
        [Match("l4proto", P(58))]


def test_ip_protocol_implies_the_ip_version_in_inet():
    assert matches("ip protocol tcp accept") == [TCP]
    assert matches("ip protocol tcp accept", family="inet") == [Match("nfproto", (4,)), TCP]
    assert matches("ip6 nexthdr udp accept", family="inet") == [Match("nfproto", (6,)), UDP]
    assert matches("ip6 nexthdr udp accept", family="ip6") == [UDP]


def test_nfproto():
    assert matches("meta nfproto ipv6 accept", family="inet") == [Match("nfproto", (6,))]
    assert matches("meta nfproto { ipv4, ipv6 } accept", family="inet") == [Match("nfproto", (4, 6))]


# ---- ports --------------------------------------------------------------------------------------
def test_ports():
    assert matches("tcp dport 80 accept") == [TCP, Match("dport", P(80))]
    assert matches("udp sport 1000-2000 accept") == [UDP, Match("sport", P((1000, 2000)))]
    assert matches("tcp dport { 80, 443, 8000-8080 } accept") == \
        [TCP, Match("dport", P(80, 443, (8000, 8080)))]
    assert matches("tcp dport != 22 accept") == [TCP, Match("dport", P(22), negate=True)]
    assert matches("tcp dport { http, ssh } accept") == [TCP, Match("dport", P(80, 22))]
    assert matches("sctp dport 5000 accept") == [Match("l4proto", P(132)), Match("dport", P(5000))]
    assert matches("dccp sport 1 accept") == [Match("l4proto", P(33)), Match("sport", P(1))]
    assert matches("udplite dport 9 accept") == [Match("l4proto", P(136)), Match("dport", P(9))]
    assert matches("tcp dport 1 - 5 accept") == [TCP, Match("dport", P((1, 5)))]
    assert matches("th dport 53 accept") == [Match("dport", P(53))]


# ---- conntrack and marks ------------------------------------------------------------------------
def test_ct_state():
    assert matches("ct state new,established accept") == [Match("ct state", ("new", "established"))]
    assert matches("ct state { new, related } accept") == [Match("ct state", ("new", "related"))]
    assert matches("ct state != invalid accept") == [Match("ct state", ("invalid",), negate=True)]
    assert matches("ct state untracked accept") == [Match("ct state", ("untracked",))]


def test_ct_direction_zone():
    assert matches("ct direction reply accept") == [Match("ct direction", ("reply",))]
    assert matches("ct direction original accept") == [Match("ct direction", ("original",))]
    assert matches("ct zone 5 accept") == [Match("ct zone", P(5))]
    assert matches("ct zone { 1, 3-4 } accept") == [Match("ct zone", P(1, (3, 4)))]


def test_marks():
    assert matches("ct mark 0x10 accept") == [Match("ct mark", P(16))]
    assert matches("ct mark and 0xff == 0x10 accept") == [Match("ct mark", P(16), mask=255)]
    assert matches("ct mark and 0xff != 0x10 accept") == [Match("ct mark", P(16), negate=True, mask=255)]
    assert matches("ct mark & 0x000000ff == 0x00000010 accept") == [Match("ct mark", P(16), mask=255)]
    assert matches("meta mark 7 accept") == [Match("meta mark", P(7))]
    assert matches("mark != 0x1-0x3 accept") == [Match("meta mark", P((1, 3)), negate=True)]
    assert matches("mark and 0xf0 { 0x10, 0x20 } accept") == [Match("meta mark", P(16, 32), mask=0xf0)]


# ---- statements ---------------------------------------------------------------------------------
def test_statements():
    r = rule("counter packets 12 bytes 3400 ct mark set 0x10 meta mark set 5 ct zone set 3 notrack",
             ctype="filter", prio="raw")
    assert (r.counter, r.ct_mark_set, r.meta_mark_set, r.ct_zone_set, r.notrack) == (True, 16, 5, 3, True)
    assert (r.nat, r.verdict, r.matches) == (None, None, ())
    assert rule("mark set 0xff", ctype="filter").meta_mark_set == 255
    assert rule("counter", ctype="filter").counter


def test_ct_helper_set():
    extra = '\tct helper ftp-std {\n\t\ttype "ftp" protocol tcp\n\t\tl3proto ip\n\t}\n'
    rs = parse_nft(wrap('tcp dport 21 ct helper set "ftp-std"', ctype="filter", extra=extra), SRC)
    assert rs.helpers == [Helper("ip", "t", "ftp-std", "ftp", "tcp", Loc(SRC, 2, 2))]
    assert rs.chain("ip", "t", "c").rules[0].ct_helper_set == "ftp-std"
    rs = parse_nft('table inet t { ct helper h { type "tftp" protocol udp; l3proto inet; } }', SRC)
    assert rs.helper("inet", "t", "h").type == "tftp"


def test_rule_text_and_location():
    r = rule('iifname "eth0" tcp dport 8080 counter dnat to 10.0.0.2:80   # forward')
    assert r.text == 'iifname "eth0" tcp dport 8080 counter dnat to 10.0.0.2:80'
    assert r.loc == Loc(SRC, 4, 3)


# ---- NAT ----------------------------------------------------------------------------------------
def test_dnat_forms():
    assert nat("dnat to 10.0.0.2") == NatTarget("dnat", A4("10.0.0.2"), A4("10.0.0.2"), family=4)
    assert nat("tcp dport 80 dnat to 10.0.0.2:8080") == \
        NatTarget("dnat", A4("10.0.0.2"), A4("10.0.0.2"), (8080, 8080), family=4)
    assert nat("meta l4proto tcp dnat to 10.0.0.1-10.0.0.9:1000-2000") == \
        NatTarget("dnat", A4("10.0.0.1"), A4("10.0.0.9"), (1000, 2000), family=4)
    assert nat("tcp dport 80 dnat to [2001:db8::1]:80", family="ip6") == \
        NatTarget("dnat", A6("2001:db8::1"), A6("2001:db8::1"), (80, 80), family=6)
    assert nat("tcp dport 80 dnat ip6 to [2001:db8::1]-[2001:db8::9]:80-90", family="inet") == \
        NatTarget("dnat", A6("2001:db8::1"), A6("2001:db8::9"), (80, 90), family=6)
    assert nat("dnat ip to 10.0.0.1", family="inet") == \
        NatTarget("dnat", A4("10.0.0.1"), A4("10.0.0.1"), family=4)
    assert nat("dnat 10.0.0.1 fully-random") == \
        NatTarget("dnat", A4("10.0.0.1"), A4("10.0.0.1"), flags=frozenset({"fully-random"}), family=4)


def test_snat_forms_and_flags():
    post = {"hook": "postrouting", "prio": "srcnat"}
    assert nat("snat to 1.2.3.4", **post) == NatTarget("snat", A4("1.2.3.4"), A4("1.2.3.4"), family=4)
    assert nat("snat ip to 1.2.3.4-1.2.3.8 persistent,random", **post) == \
        NatTarget("snat", A4("1.2.3.4"), A4("1.2.3.8"), flags=frozenset({"persistent", "random"}),
                  family=4)
    assert nat("snat to 1.2.3.4 random persistent", **post).flags == {"persistent", "random"}
    assert nat("udp sport 5 snat ip6 to [::2]:1000", family="ip6", **post) == \
        NatTarget("snat", A6("::2"), A6("::2"), (1000, 1000), family=6)
    assert nat("snat to 1.2.3.4", hook="input").action == "snat"


def test_masquerade_redirect():
    post = {"hook": "postrouting", "prio": "srcnat"}
    assert nat("masquerade", **post) == NatTarget("masquerade")
    assert nat("masquerade", family="inet", **post) == NatTarget("masquerade")
    assert nat("meta l4proto tcp masquerade to :1000-2000", **post) == \
        NatTarget("masquerade", to_ports=(1000, 2000))
    assert nat("masquerade random", **post) == NatTarget("masquerade", flags=frozenset({"random"}))
    assert nat("masquerade fully-random", **post).flags == {"fully-random"}
    assert nat("redirect") == NatTarget("redirect")
    assert nat("tcp dport 80 redirect to :8080") == NatTarget("redirect", to_ports=(8080, 8080))
    assert nat("tcp dport 80 redirect to :8080-8090") == NatTarget("redirect", to_ports=(8080, 8090))
    assert nat("tcp dport 80 redirect to :8080", hook="output").to_ports == (8080, 8080)


# ---- verdicts -----------------------------------------------------------------------------------
def test_verdicts():
    for v in ("accept", "drop", "return", "continue"):
        r = rule(v, ctype="filter")
        assert (r.verdict, r.target) == (v, None)
    text = wrap("jump sub", ctype="filter").replace("}\n}\n", "}\n\tchain sub {\n\t\tgoto other\n\t}\n"
                                                    "\tchain other { accept; }\n}\n")
    rs = parse_nft(text, SRC)
    assert (rs.chain("ip", "t", "c").rules[0].verdict, rs.chain("ip", "t", "c").rules[0].target) == \
        ("jump", "sub")
    sub = rs.chain("ip", "t", "sub")
    assert (sub.is_base, sub.rules[0].verdict, sub.rules[0].target) == (False, "goto", "other")
    assert rule("reject", ctype="filter").verdict == "reject"
    assert rule("reject with icmp type port-unreachable", ctype="filter").verdict == "reject"
    assert rule("reject with icmpx admin-prohibited", ctype="filter", family="inet").verdict == "reject"
    assert rule("tcp dport 1 reject with tcp reset", ctype="filter").verdict == "reject"


# ---- chains, tables, priorities -----------------------------------------------------------------
@pytest.mark.parametrize("prio, value, hook", [
    ("0", 0, "input"), ("-150", -150, "input"), ("dstnat", -100, "prerouting"),
    ("dstnat + 10", -90, "prerouting"), ("filter - 5", -5, "input"), ("srcnat", 100, "postrouting"),
    ("raw", -300, "prerouting"), ("mangle", -150, "output"), ("security", 50, "forward"),
    ("filter -5", -5, "input"),
])
def test_priorities(prio, value, hook):
    rs = parse_nft(f"table t {{ chain c {{ type filter hook {hook} priority {prio}; }} }}", SRC)
    c = rs.chain("ip", "t", "c")
    assert (c.type, c.hook, c.priority, c.policy) == ("filter", hook, value, "accept")


def test_hand_written_file_and_merged_tables():
    text = """#!/usr/sbin/nft -f
# a comment
flush ruleset

define WAN = "eth0"
define WEB = { 80, 443 }
define SERVER = 192.168.1.10

table inet nat {
    chain prerouting {
        type nat hook prerouting priority dstnat
        policy accept
        iifname $WAN tcp dport $WEB \\
            dnat ip to $SERVER
    }
}
table inet nat {
    chain postrouting { type nat hook postrouting priority srcnat; oifname $WAN masquerade; }
}
table filter {
    chain input { type filter hook input priority 0; policy drop; ct state established accept; }
}
"""
    rs = parse_nft(text, SRC)
    assert [c.id for c in rs.chains] == ["inet nat prerouting", "inet nat postrouting", "ip filter input"]
    pre = rs.chain("inet", "nat", "prerouting")
    assert (pre.priority, pre.policy, pre.loc) == (-100, "accept", Loc(SRC, 10, 5))
    r = pre.rules[0]
    assert [dataclasses.replace(m, loc=None) for m in r.matches] == \
        [Match("iifname", ("eth0",)), TCP, Match("dport", P(80, 443))]
    assert r.nat == NatTarget("dnat", A4("192.168.1.10"), A4("192.168.1.10"), family=4)
    assert r.text == "iifname $WAN tcp dport $WEB dnat ip to $SERVER"
    assert r.loc == Loc(SRC, 13, 9)
    post = rs.chain("inet", "nat", "postrouting")
    assert (post.priority, post.rules[0].nat) == (100, NatTarget("masquerade"))
    inp = rs.chain("ip", "filter", "input")
    assert (inp.policy, inp.rules[0].verdict) == ("drop", "accept")


def test_define_nested_set_and_nat_port():
    text = ("define A = { 10.0.0.1, 10.0.0.2 }\ndefine B = { $A, 10.0.0.3 }\ndefine H = 10.9.9.9\n"
            + wrap("ip saddr $B tcp dport 80 dnat to $H:8080"))
    r = parse_nft(text, SRC).chain("ip", "t", "c").rules[0]
    assert r.matches[0].values == tuple((A4(f"10.0.0.{i}"), A4(f"10.0.0.{i}")) for i in (1, 2, 3))
    assert r.nat == NatTarget("dnat", A4("10.9.9.9"), A4("10.9.9.9"), (8080, 8080), family=4)


def test_named_sets():
    extra = ("\tset lan { type ipv4_addr; flags interval;\n"
             "\t\telements = { 10.0.0.0/8, 192.168.1.1-192.168.1.9 } }\n"
             "\tset ports {\n\t\ttype inet_service\n\t\telements = { 22, 80 }\n\t}\n"
             "\tset ifs { type ifname; elements = { \"eth0\", \"eth1\" }; }\n"
             "\tset protos { type inet_proto; elements = { tcp, 17 } }\n"
             "\tset marks { typeof ct mark; elements = { 1, 0x20 } }\n")
    r = rule("iifname @ifs ip saddr != @lan tcp dport @ports meta l4proto @protos ct mark @marks accept",
             ctype="filter", extra=extra)
    assert [dataclasses.replace(m, loc=None) for m in r.matches] == [
        Match("iifname", ("eth0", "eth1")),
        Match("saddr", ((A4("10.0.0.0"), A4("10.255.255.255")), (A4("192.168.1.1"), A4("192.168.1.9"))),
              negate=True),
        TCP, Match("dport", P(22, 80)), Match("l4proto", P(6, 17)), Match("ct mark", P(1, 32))]


def test_set_used_before_its_declaration():
    text = ("table ip t {\n\tchain c {\n\t\ttype filter hook input priority 0;\n\t\tip saddr @later drop\n"
            "\t}\n}\ntable ip t {\n\tset later { type ipv4_addr; elements = { 1.1.1.1 } }\n}\n")
    r = parse_nft(text, SRC).chain("ip", "t", "c").rules[0]
    assert r.matches == (Match("saddr", ((A4("1.1.1.1"), A4("1.1.1.1")),), loc=Loc(SRC, 4, 3)),)


def test_add_commands():
    text = ("add table ip nat\n"
            "add chain ip nat pre { type nat hook prerouting priority -100 ; }\n"
            "add chain nat sub\n"
            "add rule ip nat pre tcp dport 80 dnat to 10.0.0.1:8080\n"
            "add rule nat pre jump sub\n")
    rs = parse_nft(text, SRC)
    pre = rs.chain("ip", "nat", "pre")
    assert (pre.hook, pre.priority, len(pre.rules)) == ("prerouting", -100, 2)
    assert pre.rules[0].nat.to_ports == (8080, 8080)
    assert pre.rules[0].loc == Loc(SRC, 4, 21)
    assert pre.rules[1].target == "sub"


# nft 1.0.6's output of `nft list ruleset` after loading a hand-written file into a throwaway
# network namespace (ip netns add x; ip netns exec x nft -f FILE; ip netns exec x nft list ruleset).
LISTED = """\
table ip nat {
	ct helper ftp-standard {
		type "ftp" protocol tcp
		l3proto ip
	}

	set web {
		type inet_service
		flags interval
		elements = { 80, 443, 8000-8080 }
	}

	chain pre {
		type nat hook prerouting priority dstnat + 10; policy accept;
		iifname "eth0" tcp dport @web counter packets 0 bytes 0 dnat to 10.0.0.2:80
		iifname { "eth0", "eth1" } ip saddr { 10.0.0.0/8, 192.168.1.1-192.168.1.9 } meta l4proto tcp ct mark & 0x000000ff == 0x00000010 dnat to 10.0.0.1-10.0.0.9:1000-2000 random,persistent
		meta l4proto { tcp, udp } th dport 53 redirect to :5353
	}

	chain out {
		type nat hook output priority -100; policy accept;
	}

	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth*" meta l4proto udp masquerade to :1000-2000 fully-random
		ip protocol tcp ct helper set "ftp-standard"
	}
}
table inet f {
	set lan {
		type ipv4_addr
		flags interval
		elements = { 10.0.0.0/8, 172.16.0.1-172.16.0.9,
			     192.168.1.1 }
	}

	set wan {
		type ifname
		elements = { "ppp0",
			     "eth9" }
	}

	chain in {
		type filter hook input priority filter - 5; policy drop;
		ct state established,related accept
		ct state != invalid meta mark 0x00000010 ct zone 3 jump sub
		ip6 saddr 2001:db8::/32 tcp sport 22 reject with icmpx admin-prohibited
		ip protocol icmp reject with icmp port-unreachable
		iifname @wan ip saddr != @lan counter packets 0 bytes 0 drop
	}

	chain sub {
		meta mark set 0x00000005 ct mark set 0x00000020 return
	}

	chain n {
		type nat hook prerouting priority dstnat; policy accept;
		tcp dport 80 dnat ip to 10.0.0.1:80
		tcp dport 80 dnat ip6 to [2001:db8::1]:80
	}

	chain r {
		type filter hook prerouting priority raw; policy accept;
		notrack
		ct zone set 4
	}
}
"""


def test_nft_list_ruleset_output(tmp_path):
    path = tmp_path / "listed.nft"
    path.write_text(LISTED)
    rs = load_nft_file(path)
    assert rs.source == str(path)
    heads = [(c.id, c.type, c.hook, c.priority, c.policy, len(c.rules)) for c in rs.chains]
    assert heads == [
        ("ip nat pre", "nat", "prerouting", -90, "accept", 3),
        ("ip nat out", "nat", "output", -100, "accept", 0),
        ("ip nat post", "nat", "postrouting", 100, "accept", 2),
        ("inet f in", "filter", "input", -5, "drop", 5),
        ("inet f sub", None, None, None, "accept", 1),
        ("inet f n", "nat", "prerouting", -100, "accept", 2),
        ("inet f r", "filter", "prerouting", -300, "accept", 2),
    ]
    assert rs.helpers == [Helper("ip", "nat", "ftp-standard", "ftp", "tcp", Loc(str(path), 2, 2))]

    def ms(r):
        return [dataclasses.replace(m, loc=None) for m in r.matches]

    pre = rs.chain("ip", "nat", "pre").rules
    assert ms(pre[0]) == [Match("iifname", ("eth0",)), TCP, Match("dport", P(80, 443, (8000, 8080)))]
    assert pre[0].counter and pre[0].nat == NatTarget("dnat", A4("10.0.0.2"), A4("10.0.0.2"), (80, 80),
                                                      family=4)
    assert pre[0].text == 'iifname "eth0" tcp dport @web counter packets 0 bytes 0 dnat to 10.0.0.2:80'
    assert pre[0].loc == Loc(str(path), 15, 3)
    assert ms(pre[1]) == [
        Match("iifname", ("eth0", "eth1")),
        Match("saddr", ((A4("10.0.0.0"), A4("10.255.255.255")), (A4("192.168.1.1"), A4("192.168.1.9")))),
        TCP, Match("ct mark", P(16), mask=255)]
    assert pre[1].nat == NatTarget("dnat", A4("10.0.0.1"), A4("10.0.0.9"), (1000, 2000),
                                   frozenset({"random", "persistent"}), 4)
    assert ms(pre[2]) == [Match("l4proto", P(6, 17)), Match("dport", P(53))]
    assert pre[2].nat == NatTarget("redirect", to_ports=(5353, 5353))

    post = rs.chain("ip", "nat", "post").rules
    assert ms(post[0]) == [Match("oifname", ("eth*",)), UDP]
    assert post[0].nat == NatTarget("masquerade", to_ports=(1000, 2000), flags=frozenset({"fully-random"}))
    assert (ms(post[1]), post[1].ct_helper_set) == ([TCP], "ftp-standard")

    inp = rs.chain("inet", "f", "in").rules
    assert (ms(inp[0]), inp[0].verdict) == ([Match("ct state", ("established", "related"))], "accept")
    assert ms(inp[1]) == [Match("ct state", ("invalid",), negate=True), Match("meta mark", P(16)),
                          Match("ct zone", P(3))]
    assert (inp[1].verdict, inp[1].target) == ("jump", "sub")
    assert ms(inp[2]) == [
        Match("saddr", ((A6("2001:db8::"), A6("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")),)),
        TCP, Match("sport", P(22))]
    assert inp[2].verdict == "reject"
    assert (ms(inp[3]), inp[3].verdict) == ([Match("nfproto", (4,)), Match("l4proto", P(1))], "reject")
    assert ms(inp[4]) == [
        Match("iifname", ("ppp0", "eth9")),
        Match("saddr", ((A4("10.0.0.0"), A4("10.255.255.255")), (A4("172.16.0.1"), A4("172.16.0.9")),
                        (A4("192.168.1.1"), A4("192.168.1.1"))), negate=True)]
    assert (inp[4].counter, inp[4].verdict) == (True, "drop")

    sub = rs.chain("inet", "f", "sub").rules[0]
    assert (sub.meta_mark_set, sub.ct_mark_set, sub.verdict) == (5, 32, "return")
    n = rs.chain("inet", "f", "n").rules
    assert n[0].nat == NatTarget("dnat", A4("10.0.0.1"), A4("10.0.0.1"), (80, 80), family=4)
    assert n[1].nat == NatTarget("dnat", A6("2001:db8::1"), A6("2001:db8::1"), (80, 80), family=6)
    r = rs.chain("inet", "f", "r").rules
    assert (r[0].notrack, r[1].ct_zone_set) == (True, 4)


# ---- files --------------------------------------------------------------------------------------
def test_load_errors(tmp_path):
    missing = tmp_path / "missing.nft"
    with pytest.raises(RulesetError) as info:
        load_nft_file(missing)
    assert str(missing) in str(info.value)
    bad = tmp_path / "bad.nft"
    bad.write_bytes(b"table ip t {\n  comment \"\xff\"\n}\n")
    with pytest.raises(RulesetError) as info:
        load_nft_file(bad)
    assert info.value.loc == Loc(str(bad), 2, 12) and "UTF-8" in info.value.message


# ---- errors: file, line, column and token -------------------------------------------------------
def test_error_unknown_statement():
    e = rule_error("tcp dport 80 frobnicate")
    assert at(e, 4, 16, "frobnicate") and "unknown statement" in e.message


def test_error_unsupported_family():
    e = error("table bridge t {\n}\n")
    assert at(e, 1, 7, "bridge") and "not supported" in e.message
    assert at(error("table netdev t { }"), 1, 7, "netdev")


def test_error_prefix_host_bits():
    e = rule_error("ip saddr 10.0.0.1/8 accept")
    assert at(e, 4, 12, "10.0.0.1/8") and "host bits" in e.message


def test_error_address_family():
    assert at(rule_error("ip saddr ::1 accept"), 4, 12, "::1")
    e = rule_error("ip saddr 1.2.3.4 accept", family="ip6")
    assert at(e, 4, 3, "ip") and "ip6" in e.message
    assert at(rule_error("ip6 daddr 1.2.3.4 accept", family="inet"), 4, 13, "1.2.3.4")
    assert at(rule_error("ip protocol tcp accept", family="ip6"), 4, 3, "ip")
    assert at(rule_error("ip saddr localhost accept"), 4, 12, "localhost")


def test_error_maps():
    e = rule_error("tcp dport vmap { 22 : accept }", ctype="filter")
    assert at(e, 4, 13, "vmap") and "not supported" in e.message
    e = error("table ip t {\n\tmap m { type ipv4_addr : ipv4_addr; }\n}\n")
    assert at(e, 2, 2, "map")


def test_error_iif():
    e = rule_error('iif "lo" accept')
    assert at(e, 4, 3, "iif") and "iifname" in e.message
    assert at(rule_error("meta oif 3 accept"), 4, 8, "oif")


def test_error_missing_priority():
    e = error("table ip t {\n\tchain c {\n\t\ttype filter hook input; policy drop;\n\t}\n}\n")
    assert at(e, 3, 25, ";") and "priority" in e.message


def test_error_priority_names_and_device():
    assert at(error("table t { chain c { type nat hook output priority dstnat; } }"), 1, 51, "dstnat")
    assert at(error("table t { chain c { type filter hook input priority bogus; } }"), 1, 53, "bogus")
    e = error("table t { chain c { type filter hook input device eth0 priority 0; } }")
    assert at(e, 1, 44, "device") and "netdev" in e.message


def test_error_nat_in_filter_chain():
    e = rule_error("dnat to 10.0.0.1", ctype="filter")
    assert at(e, 4, 3, "dnat") and "type nat" in e.message


def test_error_nat_in_wrong_hook():
    e = rule_error("snat to 10.0.0.1")
    assert at(e, 4, 3, "snat") and "postrouting" in e.message
    assert at(rule_error("masquerade"), 4, 3, "masquerade")
    assert at(rule_error("redirect", hook="postrouting"), 4, 3, "redirect")
    assert at(rule_error("dnat to 1.2.3.4", hook="input"), 4, 3, "dnat")


def test_error_nat_in_regular_chain_reached_from_wrong_chain():
    text = ("table ip t {\n\tchain c {\n\t\ttype nat hook postrouting priority 100;\n\t\tjump sub\n\t}\n"
            "\tchain sub {\n\t\tdnat to 1.2.3.4\n\t}\n}\n")
    e = error(text)
    assert at(e, 7, 3, "dnat") and "'c'" in e.message
    # Not reached from anywhere: the kernel takes it, and so does fastct.
    parse_nft(text.replace("\t\tjump sub\n", ""), SRC)


def test_error_nat_address_required():
    e = rule_error("meta l4proto tcp snat to :80", hook="postrouting")
    assert at(e, 4, 28, ":80") and "address" in e.message


def test_error_nat_target():
    assert at(rule_error("dnat to 10.0.0.9-10.0.0.1"), 4, 11, "10.0.0.9-10.0.0.1")
    e = rule_error("dnat to [2001:db8::1]:80")
    assert at(e, 4, 11, "[2001:db8::1]:80") and "IPv6" in e.message
    e = rule_error("dnat ip to 10.0.0.1", family="ip6")
    assert at(e, 4, 8, "ip")
    e = rule_error("dnat ip6 to 10.0.0.1", family="inet")
    assert at(e, 4, 15, "10.0.0.1") and "IPv6" in e.message


def test_error_nat_ports_need_protocol():
    e = rule_error("dnat to 10.0.0.1:80")
    assert at(e, 4, 3, "dnat") and "transport protocol" in e.message
    assert at(rule_error("th dport 53 redirect to :5353"), 4, 15, "redirect")


def test_error_nat_flags():
    post = {"hook": "postrouting", "prio": "srcnat"}
    e = rule_error("snat to 1.2.3.4 random random", **post)
    assert at(e, 4, 26, "random") and "twice" in e.message
    e = rule_error("masquerade persistent", **post)
    assert at(e, 4, 14, "persistent") and "persistent" in e.message


def test_error_jump_to_undefined_chain():
    e = rule_error("jump nowhere", ctype="filter")
    assert at(e, 4, 3, "jump") and e.message == "chain 'nowhere' is not defined in table ip t"
    e = rule_error("goto c", ctype="filter")
    assert at(e, 4, 3, "goto") and "base chain" in e.message


def test_error_jump_loop():
    text = ("table ip t {\n\tchain a {\n\t\tjump b\n\t}\n\tchain b {\n\t\tjump a\n\t}\n}\n")
    assert "loop" in error(text).message


def test_error_helper_not_defined():
    e = rule_error('ct helper set "ftp"', ctype="filter")
    assert at(e, 4, 3, "ct") and "ct helper 'ftp' is not defined in table ip t" in e.message


def test_error_log_and_limit():
    assert at(rule_error("tcp dport 22 log prefix \"x\" accept", ctype="filter"), 4, 16, "log")
    assert at(rule_error("limit rate 10/second accept", ctype="filter"), 4, 3, "limit")


def test_error_statement_after_terminal():
    e = rule_error("accept counter", ctype="filter")
    assert at(e, 4, 10, "counter") and "terminal" in e.message
    assert at(rule_error("drop accept", ctype="filter"), 4, 8, "accept")


def test_error_match_after_statement():
    e = rule_error("counter ip saddr 1.2.3.4 accept", ctype="filter")
    assert at(e, 4, 11, "ip") and "after a statement" in e.message


def test_error_set_expression():
    e = rule_error("ct mark set meta mark", ctype="filter")
    assert at(e, 4, 15, "meta") and "constant" in e.message
    assert at(rule_error("ct mark set 1 or 2", ctype="filter"), 4, 17, "or")


def test_error_unterminated():
    e = error('table ip t {\n\tchain c {\n\t\ttype filter hook input priority 0;\n')
    assert at(e, 2, 10, "{") and "unterminated" in e.message
    e = error('table ip t {\n\tchain c {\n\t\tiifname "eth0 accept\n\t}\n}\n')
    assert at(e, 3, 11, '"') and "unterminated" in e.message
    e = error("table ip t {\n\tchain c {\n\t\ttype filter hook input priority 0;\n\t\tip saddr { 1.2.3.4,\n")
    assert at(e, 4, 12, "{")


def test_error_bad_values():
    assert at(rule_error("ct state newish accept"), 4, 12, "newish")
    assert at(rule_error("tcp dport 70000 accept"), 4, 13, "70000")
    assert at(rule_error("tcp dport 2000-1000 accept"), 4, 13, "2000-1000")
    assert at(rule_error("tcp dport nosuchservice accept"), 4, 13, "nosuchservice")
    assert at(rule_error("meta l4proto 300 accept"), 4, 16, "300")
    assert at(rule_error("ct direction sideways accept"), 4, 16, "sideways")
    assert at(rule_error("tcp dport > 1024 accept"), 4, 13, ">")


def test_error_undefined_variable_and_set():
    e = rule_error("ip saddr $NOPE accept")
    assert at(e, 4, 12, "$NOPE") and "undefined" in e.message
    e = rule_error("ip saddr @nope accept")
    assert at(e, 4, 12, "@nope") and "set 'nope' is not defined" in e.message
    extra = "\tset p { type inet_service; elements = { 80 } }\n"
    e = rule_error("ip saddr @p accept", extra=extra)
    assert at(e, 5, 12, "@p") and "inet_service" in e.message


def test_error_set_interval_needs_flag():
    e = error("table ip t {\n\tset s { type ipv4_addr; elements = { 10.0.0.0/8 } }\n}\n")
    assert at(e, 2, 39, "10.0.0.0/8") and "interval" in e.message


def test_error_base_chain_type():
    e = error("table t { chain c { type nat hook forward priority 0; } }")
    assert at(e, 1, 35, "forward")
    assert at(error("table t { chain c { type route hook output priority 0; } }"), 1, 26, "route")


def test_error_top_level():
    e = error("flush table ip t\n")
    assert at(e, 1, 7, "table")
    assert at(error("\n\ninclude \"x.nft\"\n"), 3, 1, "include")
    e = error("table ip t {\n\tchain c {\n\t\ttype filter hook input priority 0; policy maybe;\n\t}\n}\n")
    assert at(e, 3, 45, "maybe")


def test_error_inet_nat_needs_family():
    # nft: "ip or ip6 must be specified with address for inet tables"
    e = rule_error("dnat to 10.0.0.1", family="inet")
    assert at(e, 4, 3, "dnat") and "dnat ip to" in e.message
    e = rule_error("dnat ip 10.0.0.1")
    assert at(e, 4, 11, "10.0.0.1") and "'to'" in e.message


def test_error_keywords_as_names_and_interfaces():
    e = error("table ip t {\n\tchain counter { }\n}\n")
    assert at(e, 2, 8, "counter") and "keyword" in e.message
    assert at(error("table ip {\n}\n"), 1, 10, "{")
    e = rule_error("iifname accept")
    assert at(e, 4, 11, "accept") and "quotes" in e.message
    assert rule("iifname eth0 accept").matches[0].values == ("eth0",)


def test_error_reject_code():
    e = rule_error("reject with icmp type no-such-code", ctype="filter")
    assert at(e, 4, 25, "no-such-code") and "port-unreachable" in e.message

"""A ruleset and its equivalent in the other syntax compile to identical rule arrays.

The nftables text below is what `iptables-save`'s rules mean in nft's words (iptables-nft itself
translates them so: `iptables-translate`), table by table, chain by chain, rule by rule, every rule
with a counter (every iptables rule counts).  Both readers must give rulesets that compile to the
same bytes: chains, rules, matches, ranges, NAT targets, base chains per hook point.
"""
import pytest

from fastct.interfaces import Interfaces
from fastct.iptables import parse_iptables
from fastct.nft import parse_nft
from fastct.rules_compile import compile_ruleset, describe

MODEL = Interfaces.from_cli(["lan=10.0.0.254/24", "wan=203.0.113.5/24"], in_iface="lan", out_iface="wan")

NFT = """table ip raw {
    chain PREROUTING {
        type filter hook prerouting priority raw; policy accept;
        meta l4proto udp udp dport 53 counter notrack
    }
    chain OUTPUT {
        type filter hook output priority raw; policy accept;
    }
}
table ip nat {
    chain PREROUTING {
        type nat hook prerouting priority dstnat; policy accept;
        iifname "wan" meta l4proto tcp tcp dport { 80, 443 } counter jump WEB
        iifname "lan" meta l4proto tcp tcp dport 8080 counter redirect to :3128
    }
    chain INPUT {
        type nat hook input priority 100; policy accept;
    }
    chain OUTPUT {
        type nat hook output priority -100; policy accept;
    }
    chain POSTROUTING {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" meta l4proto tcp counter snat to 203.0.113.5:61000-61009
        oifname "wan" counter masquerade
    }
    chain WEB {
        ip saddr != 10.0.0.0/24 counter return
        meta l4proto tcp counter dnat to 10.0.0.80:8080
    }
}
"""

IPT = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -p udp -m udp --dport 53 -j CT --notrack
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:WEB - [0:0]
-A PREROUTING -i wan -p tcp -m multiport --dports 80,443 -j WEB
-A PREROUTING -i lan -p tcp -m tcp --dport 8080 -j REDIRECT --to-ports 3128
-A POSTROUTING -o wan -p tcp -j SNAT --to-source 203.0.113.5:61000-61009
-A POSTROUTING -o wan -j MASQUERADE
-A WEB ! -s 10.0.0.0/24 -j RETURN
-A WEB -p tcp -j DNAT --to-destination 10.0.0.80:8080
COMMIT
"""

MASQ_NFT = """table ip nat {
    chain POSTROUTING {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 10.0.0.0/24 oifname "wan" counter masquerade random
    }
}
"""

MASQ_IPT = """*nat
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s 10.0.0.0/24 -o wan -j MASQUERADE --random
COMMIT
"""


@pytest.mark.parametrize("nft,ipt,rules", [(NFT, IPT, 7), (MASQ_NFT, MASQ_IPT, 1)])
def test_same_arrays(nft, ipt, rules):
    a = compile_ruleset(parse_nft(nft), MODEL)
    b = compile_ruleset(parse_iptables(ipt), MODEL)
    assert len(a.rules) == rules
    for name in ("chains", "rules", "matches", "iranges", "aranges", "targets", "base", "routes"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
    assert a.hp_first == b.hp_first
    where = lambda lines: [x.split("    # ")[0] for x in lines]       # noqa: E731 (not the source lines)
    assert where(describe(a)) == where(describe(b))


def test_a_difference_shows():
    """The comparison can fail: one port changed in the iptables text changes the arrays."""
    a = compile_ruleset(parse_nft(NFT), MODEL)
    b = compile_ruleset(parse_iptables(IPT.replace("--dport 8080", "--dport 8081")), MODEL)
    assert a.iranges.tobytes() != b.iranges.tobytes()

"""Kernel settings by their own names (net.netfilter.nf_conntrack_*) and per-zone timeout policies."""
import struct
import subprocess
import sys

import dpkt
import pytest

from fastct import Batch, Tracker
from fastct.tracker import CT_STATE_BITS as B

from pkt import ACK, FIN, RST, SYN, eth, ip4, tcp4, udp4

TRK, NEW, EST, RPL, INV, REL = B["trk"], B["new"], B["est"], B["rpl"], B["inv"], B["rel"]
NS = 10**9
C, S = "10.1.0.1", "10.2.0.1"


def run(t, frames, ts=None, zone=0):
    ts = ts if ts is not None else [0.001 * i for i in range(len(frames))]
    return [int(x) for x in t.process(Batch.from_frames(frames, ts=ts), zone=zone).ct_state]


# ---- names and values ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["net.netfilter.nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout",
                                  "udp_timeout", "net/netfilter/nf_conntrack_udp_timeout"])
def test_every_spelling_of_a_name(name):
    t = Tracker(max_conns=64, sysctl={name: 45})
    assert t.timeouts["udp_timeout"] == 45
    assert t.sysctl["nf_conntrack_udp_timeout"] == 45


def test_kernel_defaults_except_checksum():
    s = Tracker(max_conns=64).sysctl
    assert s["nf_conntrack_tcp_loose"] == 1 and s["nf_conntrack_tcp_be_liberal"] == 0
    assert s["nf_conntrack_tcp_max_retrans"] == 3 and s["nf_conntrack_tcp_ignore_invalid_rst"] == 0
    assert s["nf_conntrack_checksum"] == 0          # the kernel's is 1; see fastct/sysctl.py
    assert s["nf_conntrack_tcp_timeout_established"] == 432000
    assert s["nf_conntrack_udp_timeout_stream"] == 120 and s["nf_conntrack_generic_timeout"] == 600
    assert s["nf_conntrack_gre_timeout"] == 30 and s["nf_conntrack_gre_timeout_stream"] == 180
    assert s["nf_conntrack_sctp_timeout_established"] == 210
    assert Tracker().sysctl["nf_conntrack_max"] == 262144


@pytest.mark.parametrize("sysctl,message", [
    ({"nf_conntrack_bogus": 1}, "unknown sysctl 'nf_conntrack_bogus'"),
    ({"nf_conntrack_tcp_loose": 2}, "nf_conntrack_tcp_loose: must be between 0 and 1, not 2"),
    ({"nf_conntrack_tcp_loose": "yes"}, "value must be an integer, not 'yes'"),
    ({"nf_conntrack_udp_timeout": -1}, "nf_conntrack_udp_timeout: a timeout in seconds"),
    ({"nf_conntrack_udp_timeout": 1.5}, "value must be an integer"),
    ({"nf_conntrack_max": 0}, "fastct needs a bound"),
    ({"nf_conntrack_tcp_max_retrans": 256}, "between 0 and 255"),
    ({"nf_conntrack_acct": 0}, "fastct always behaves as nf_conntrack_acct=1"),
    ({"nf_conntrack_log_invalid": 6}, "a kernel setting fastct does not model"),
])
def test_bad_settings_are_clear_errors(sysctl, message):
    with pytest.raises(ValueError) as exc:
        Tracker(max_conns=64, sysctl=sysctl)
    assert message in str(exc.value)


def test_max_is_the_table_size():
    t = Tracker(sysctl={"nf_conntrack_max": 3}, early_drop=False)
    frames = [udp4(C, S, 1000 + i, 53) for i in range(4)]
    assert run(t, frames) == [TRK | NEW] * 3 + [TRK | INV]
    assert len(t) == 3 and t.stats()["drop"] == 1
    with pytest.raises(ValueError, match="disagree"):
        Tracker(max_conns=5, sysctl={"nf_conntrack_max": 3})


# ---- behaviour of each switch ----------------------------------------------------------------
def test_tcp_loose_off_refuses_mid_stream_pickup():
    ack = tcp4(C, S, 40000, 80, ACK, seq=5, ack=9)
    assert run(Tracker(max_conns=64), [ack]) == [TRK | NEW]
    t = Tracker(max_conns=64, sysctl={"nf_conntrack_tcp_loose": 0})
    assert run(t, [ack]) == [TRK | INV]
    assert t.stats()["reasons"] == {"TCP packet cannot start a connection": 1}


def _established(t):
    frames = [tcp4(C, S, 40000, 80, SYN, seq=100), tcp4(S, C, 80, 40000, SYN | ACK, seq=500, ack=101),
              tcp4(C, S, 40000, 80, ACK, seq=101, ack=501),
              tcp4(S, C, 80, 40000, ACK, seq=501, ack=101, data=b"d" * 100),
              tcp4(C, S, 40000, 80, ACK, seq=101, ack=601)]
    assert run(t, frames) == [TRK | NEW, TRK | EST | RPL, TRK | EST, TRK | EST | RPL, TRK | EST]


def test_tcp_ignore_invalid_rst():
    # The server has acknowledged up to 101 from the client; an RST from the client with a seq below
    # that is refused ("invalid rst") unless nf_conntrack_tcp_ignore_invalid_rst=1.
    rst = tcp4(C, S, 40000, 80, RST, seq=50)
    t = Tracker(max_conns=64)
    _established(t)
    assert run(t, [rst], ts=[1.0]) == [TRK | INV]
    assert t.stats()["reasons"] == {"TCP RST below what the peer acknowledged (invalid rst)": 1}
    t = Tracker(max_conns=64, sysctl={"nf_conntrack_tcp_ignore_invalid_rst": 1})
    _established(t)
    assert run(t, [rst], ts=[1.0]) != [TRK | INV]


def test_tcp_timeout_established_setting():
    t = Tracker(max_conns=64, sysctl={"nf_conntrack_tcp_timeout_established": 1000})
    _established(t)
    rec = t.lookup(C, S, "tcp", 40000, 80)
    assert rec["state_name"] == "ESTABLISHED" and rec["expires"] == 4 * 10**6 + 1000 * NS


# ---- checksums -------------------------------------------------------------------------------
def _udp_with_sum(good=True):
    u = dpkt.udp.UDP(sport=7000, dport=53, data=b"abcdefgh")
    u.ulen = 16
    ip = dpkt.ip.IP(src=ip4(C), dst=ip4(S), p=17, ttl=64, data=u)
    ip.len = 36
    raw = bytearray(bytes(ip))          # dpkt fills in both checksums
    assert raw[26:28] != b"\0\0"
    if not good:
        raw[27] ^= 0xFF
    return eth(bytes(raw), 0x0800)


def test_checksums_ignored_by_default():
    t = Tracker(max_conns=64)
    assert run(t, [_udp_with_sum(False)]) == [TRK | NEW]


def test_checksum_on_udp():
    t = Tracker(max_conns=64, sysctl={"nf_conntrack_checksum": 1})
    assert run(t, [_udp_with_sum(True), _udp_with_sum(False)]) == [TRK | NEW, TRK | INV]
    s = t.stats()
    assert s["invalid"] == 1 and s["reasons"] == {"checksum wrong (nf_conntrack_checksum=1)": 1}
    assert t.lookup(C, S, "udp", 7000, 53)["packets"] == [1, 0]


def test_checksum_on_udp_zero_means_none():
    t = Tracker(max_conns=64, sysctl={"nf_conntrack_checksum": 1})
    raw = bytearray(_udp_with_sum(True))
    raw[14 + 26:14 + 28] = b"\0\0"
    assert run(t, [bytes(raw)]) == [TRK | NEW]


def test_checksum_on_tcp_and_ipv4_header():
    t = Tracker(max_conns=64, sysctl={"nf_conntrack_checksum": 1})
    good = tcp4(C, S, 40000, 80, SYN, seq=100)            # dpkt computes the sums
    bad_tcp = bytearray(good)
    bad_tcp[14 + 20 + 16] ^= 0x01
    bad_ip = bytearray(tcp4(C, S, 40001, 80, SYN, seq=100))
    bad_ip[14 + 10] ^= 0x01
    assert run(t, [bytes(bad_tcp), bytes(bad_ip), good]) == [TRK | INV, TRK | INV, TRK | NEW]
    r = t.stats()["reasons"]
    assert r["checksum wrong (nf_conntrack_checksum=1)"] == 1
    assert sum(v for k, v in r.items() if k.startswith("IPv4 header checksum wrong")) == 1


def test_checksum_on_icmp_counts_in_error():
    echo = dpkt.icmp.ICMP(type=8, code=0, data=dpkt.icmp.ICMP.Echo(id=9, seq=1, data=b"p" * 8))
    ip = dpkt.ip.IP(src=ip4(C), dst=ip4(S), p=1, ttl=64, data=echo)
    raw = bytearray(eth(bytes(ip), 0x0800))
    raw[14 + 20 + 2] ^= 0x10
    t = Tracker(max_conns=64, sysctl={"nf_conntrack_checksum": 1})
    assert run(t, [eth(bytes(ip), 0x0800), bytes(raw)]) == [TRK | NEW, TRK | INV]
    s = t.stats()
    assert s["error"] == 1 and s["invalid"] == 0


def test_checksum_on_tcp_ipv6():
    tc = dpkt.tcp.TCP(sport=1, dport=2, seq=5, flags=SYN, win=100)
    ip = dpkt.ip6.IP6(src=bytes(15) + b"\1", dst=bytes(15) + b"\2", nxt=6, hlim=64, data=tc)
    ip.plen = 20
    good = eth(bytes(ip), 0x86DD)
    bad = bytearray(good)
    bad[14 + 40 + 4] ^= 0xFF                              # seq changed, sum not
    t = Tracker(max_conns=64, sysctl={"nf_conntrack_checksum": 1})
    assert run(t, [bytes(bad), good]) == [TRK | INV, TRK | NEW]


# ---- timeout policies ------------------------------------------------------------------------
def test_zone_policy_applies_to_its_zone_only():
    t = Tracker(max_conns=64, timeout_policies={5: {"udp_timeout": 10}})
    run(t, [udp4(C, S, 1, 2)], ts=[0.0], zone=5)
    run(t, [udp4(C, S, 1, 2)], ts=[0.0], zone=0)
    assert t.lookup(C, S, "udp", 1, 2, zone=5)["expires"] == 10 * NS
    assert t.lookup(C, S, "udp", 1, 2, zone=0)["expires"] == 30 * NS


def test_zone_policy_follows_later_default_changes_for_what_it_does_not_set():
    t = Tracker(max_conns=64)
    t.timeout_policy(7, {"nf_conntrack_udp_timeout": 10})
    t.timeouts["icmp_timeout"] = 99
    run(t, [udp4(C, S, 1, 2), eth(bytes(dpkt.ip.IP(src=ip4(C), dst=ip4(S), p=1, data=dpkt.icmp.ICMP(
        type=8, data=dpkt.icmp.ICMP.Echo(id=1)))), 0x0800)], ts=[0.0, 0.0], zone=7)
    assert t.lookup(C, S, "udp", 1, 2, zone=7)["expires"] == 10 * NS
    assert t.lookup(C, S, "icmp", 1, zone=7)["expires"] == 99 * NS
    t.timeout_policy(7, {})
    assert t.timeout_policies == {}


@pytest.mark.parametrize("zone,timeouts,message", [
    (70000, {"udp_timeout": 1}, "zone must be 0..65535"),
    (1, {"udp_timeout_x": 1}, "unknown timeout 'udp_timeout_x'"),
    (1, {"udp_timeout": -3}, "must be 0..2147483647 seconds"),
])
def test_bad_policies(zone, timeouts, message):
    with pytest.raises(ValueError, match=message):
        Tracker(max_conns=64, timeout_policies={zone: timeouts})


# ---- command line ----------------------------------------------------------------------------
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fastct.cli", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("args,message", [
    (["--sysctl", "nf_conntrack_nope=1"], "unknown sysctl 'nf_conntrack_nope'"),
    (["--sysctl", "nf_conntrack_tcp_loose"], "--sysctl takes NAME=VALUE"),
    (["--timeout-policy", "x:udp_timeout=3"], "zone must be an integer"),
    (["--timeout-policy", "3:udp_timeout"], "--timeout-policy takes ZONE:NAME=SECONDS"),
])
def test_cli_bad_settings(args, message, tmp_path):
    out = _cli("track", *args, "pcaps/udp_exchange.pcap")
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_cli_sysctl_and_policy(tmp_path):
    base = _cli("track", "pcaps/udp_exchange.pcap")
    changed = _cli("track", "--sysctl", "net.netfilter.nf_conntrack_udp_timeout_stream=1000",
                   "--sysctl", "nf_conntrack_udp_timeout=1000", "pcaps/udp_exchange.pcap")
    assert base.returncode == changed.returncode == 0
    t_base = [int(line.split()[4]) for line in base.stdout.splitlines()]
    t_new = [int(line.split()[4]) for line in changed.stdout.splitlines()]
    assert t_base and all(b < 121 for b in t_base) and all(n >= 970 for n in t_new)
    zoned = _cli("track", "--zone", "4", "--timeout-policy", "4:udp_timeout_stream=1000",
                 "--timeout-policy", "4:udp_timeout=1000", "pcaps/udp_exchange.pcap")
    assert [int(line.split()[4]) for line in zoned.stdout.splitlines()] == t_new


def test_a_dropped_tracker_frees_its_memory_at_once():
    # No reference cycle (Timeouts calls back into its Tracker through a weak reference): a table's
    # memory goes when its last reference does, not whenever the cycle collector runs.
    import gc
    import weakref
    gc.disable()
    try:
        t = Tracker(max_conns=1000, timeout_policies={3: {"udp_timeout": 5}})
        t.timeouts["udp_timeout"] = 31
        ref = weakref.ref(t)
        del t
        assert ref() is None
    finally:
        gc.enable()

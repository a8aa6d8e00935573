"""`fastct track` with NAT: --snat/--dnat/--masquerade, -w out.pcap, --drop-invalid, --src-nat/--dst-nat."""
import socket

import dpkt
import pytest

from fastct.tracker import Tracker
from conftest import run_cli
from pkt import ACK, FIN, SYN
from test_nat_engine import C1, C2, GW, SRV, assert_checksums, echo, tcp, udp


def write_pcap(path, frames, nano=False):
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, nano=nano)
        for i, fr in enumerate(frames):
            w.writepkt(fr, ts=1000.0 + i * 0.5)
    return str(path)


def write_pcapng(path, frames):
    with open(path, "wb") as f:
        w = dpkt.pcapng.Writer(f)
        for i, fr in enumerate(frames):
            w.writepkt(fr, ts=1000.0 + i * 0.5)
    return str(path)


def read_frames(path):
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        reader = dpkt.pcapng.Reader(f) if head == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(f)
        return [(ts, bytes(b)) for ts, b in reader]


def track(*argv):
    return run_cli(["track", *argv])


def addrs(frame):
    ip = dpkt.ethernet.Ethernet(frame).data
    return socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst)


def sport(frame):
    return dpkt.ethernet.Ethernet(frame).data.data.sport


SESSION = [tcp(C1, SRV, 40000, 80, SYN), tcp(SRV, GW, 80, 40000, SYN | ACK, 5000, 1001),
           tcp(C1, SRV, 40000, 80, ACK, 1001, 5001), udp(C2, "8.8.8.8", 5353, 53),
           tcp(C2, SRV, 1234, 80, SYN | FIN)]          # SYN+FIN: invalid, never translated


@pytest.mark.parametrize("fmt", ["pcap", "pcap-ns", "pcapng"])
def test_write_translated_capture_in_the_input_format(tmp_path, fmt):
    src = (write_pcapng(tmp_path / "in.pcapng", SESSION) if fmt == "pcapng"
           else write_pcap(tmp_path / "in.pcap", SESSION, nano=fmt == "pcap-ns"))
    dst = tmp_path / ("out.pcapng" if fmt == "pcapng" else "out.pcap")
    status, out, err = track(src, "--snat", GW, "-w", dst, "--seed", 1)
    assert status == 0, err
    with open(src, "rb") as a, open(dst, "rb") as b:
        assert a.read(4) == b.read(4)               # same magic: same format and precision
    got = read_frames(dst)
    assert [ts for ts, _ in got] == [ts for ts, _ in read_frames(src)]
    frames = [fr for _, fr in got]
    assert addrs(frames[0]) == (GW, SRV) and addrs(frames[1]) == (SRV, C1)
    assert addrs(frames[2]) == (GW, SRV) and addrs(frames[3]) == (GW, "8.8.8.8")
    assert frames[4] == SESSION[4]                   # invalid: written unchanged
    for fr in frames[:4]:
        assert_checksums(fr)
    assert "wrote 5 packets" in err
    assert f"src={SRV} dst={GW} sport=80 dport=40000" in out


def test_drop_invalid_leaves_invalid_packets_out(tmp_path):
    src = write_pcap(tmp_path / "in.pcap", SESSION)
    status, _, err = track(src, "--snat", GW, "-w", tmp_path / "o.pcap", "--drop-invalid")
    assert status == 0, err
    frames = [fr for _, fr in read_frames(tmp_path / "o.pcap")]
    assert len(frames) == 4 and all(addrs(f)[0] in (GW, SRV) for f in frames)


def test_without_nat_the_output_is_the_input(tmp_path):
    src = write_pcap(tmp_path / "in.pcap", SESSION)
    assert track(src, "-w", tmp_path / "o.pcap")[0] == 0
    assert (tmp_path / "o.pcap").read_bytes() == open(src, "rb").read()


def test_dnat_and_masquerade_on_the_command_line(tmp_path):
    frames = [tcp("198.51.100.7", GW, 5555, 80, SYN), tcp("10.0.0.9", "198.51.100.7", 8080, 5555, SYN | ACK, 9, 1001)]
    src = write_pcap(tmp_path / "in.pcap", frames)
    status, out, err = track(src, "--dnat", "10.0.0.9:8080", "-w", tmp_path / "o.pcap")
    assert status == 0, err
    got = [fr for _, fr in read_frames(tmp_path / "o.pcap")]
    assert addrs(got[0]) == ("198.51.100.7", "10.0.0.9") and addrs(got[1]) == (GW, "198.51.100.7")
    assert "src=10.0.0.9 dst=198.51.100.7 sport=8080 dport=5555" in out
    status, out, err = track(write_pcap(tmp_path / "m.pcap", [echo(C1, SRV, 8, 3)]),
                             "--masquerade", GW)
    assert status == 0 and f"src={SRV} dst={GW} type=0 code=0 id=3" in out


def test_src_nat_and_dst_nat_filters(tmp_path):
    frames = [tcp(C1, SRV, 40000, 80, SYN), tcp(C2, SRV, 40000, 80, SYN), udp(C1, "8.8.8.8", 53, 53)]
    src = write_pcap(tmp_path / "in.pcap", frames)
    rules = ("--dnat", "10.0.0.53", )
    # Source NAT to the gateway: every connection changed, all listed; none by destination.
    _, out, _ = track(src, "--snat", GW, "--src-nat")
    assert len(out.splitlines()) == 3
    _, out, _ = track(src, "--snat", GW, "--src-nat", GW)
    assert len(out.splitlines()) == 3
    _, out, _ = track(src, "--snat", GW, "--src-nat", "203.0.113.99")
    assert out == ""
    _, out, _ = track(src, "--snat", GW, "--dst-nat")
    assert out == ""
    # Without NAT rules nothing was translated.
    _, out, _ = track(src, "--src-nat")
    assert out == ""
    _, out, _ = track(src, *rules, "--dst-nat", "10.0.0.53")
    assert len(out.splitlines()) == 3


def test_port_only_translation_is_listed_by_src_nat(tmp_path):
    # Two DNATs to one backend: the second connection's source port moves (null binding), and
    # conntrack's --src-nat lists such a connection though its source address is unchanged.
    frames = [tcp("192.0.2.7", GW, 1000, 80, SYN), tcp("192.0.2.7", GW, 1000, 81, SYN)]
    src = write_pcap(tmp_path / "in.pcap", frames)
    _, out, _ = track(src, "--dnat", "10.0.0.9:80", "--src-nat")
    lines = out.splitlines()
    assert len(lines) == 1 and "dport=81" in lines[0]


@pytest.mark.parametrize("argv,message", [
    (["--snat", "1.2.3"], "--snat"),
    (["--snat", "1.2.3.4", "--snat", "1.2.3.5"], "never used"),
    (["--masquerade", "10.0.0.1-10.0.0.2"], "masquerade"),
    (["--src-nat", "nonsense"], "--src-nat takes an IP address"),
    (["--drop-invalid"], "--drop-invalid needs -w"),
])
def test_bad_nat_arguments_are_usage_errors(tmp_path, argv, message):
    src = write_pcap(tmp_path / "in.pcap", SESSION)
    status, out, err = track(src, *argv)
    assert status == 2 and message in err and "Traceback" not in err and out == ""


def test_write_to_the_input_or_an_unwritable_path(tmp_path):
    src = write_pcap(tmp_path / "in.pcap", SESSION)
    before = open(src, "rb").read()
    status, _, err = track(src, "-w", src)
    assert status == 2 and "being read" in err
    assert open(src, "rb").read() == before
    status, _, err = track(src, "-w", tmp_path / "no" / "such" / "dir.pcap")
    assert status == 2 and "No such file" in err


def test_ctrl_c_leaves_a_valid_capture_of_whole_records(tmp_path, monkeypatch):
    frames = [udp(f"10.0.{i // 200}.{i % 200 + 1}", SRV, 1000 + i, 53) for i in range(50)]
    src = write_pcap(tmp_path / "in.pcap", frames)
    calls = {"n": 0}
    real = Tracker.process

    def interrupted(self, batch, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, batch, **kw)

    monkeypatch.setattr(Tracker, "process", interrupted)
    status, out, err = track(src, "--snat", GW, "-w", tmp_path / "o.pcap", "--batch-size", 8)
    assert status == 130
    assert "interrupted" in err and "wrote 24 packets" in err
    got = read_frames(tmp_path / "o.pcap")            # parses: whole records only
    assert len(got) == 24 and all(addrs(fr)[0] == GW for _, fr in got)
    assert len(out.splitlines()) == 24                # the table of what was processed

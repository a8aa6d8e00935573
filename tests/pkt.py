"""Building test packets with dpkt."""
import socket

import dpkt

from fastct import Batch


def ip4(a):
    return socket.inet_pton(socket.AF_INET, a)


def ip6(a):
    return socket.inet_pton(socket.AF_INET6, a)


def tcp4(src, dst, sport, dport, flags, seq=0, ack=0, win=65535, data=b"", opts=b""):
    t = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=win, data=data)
    if opts:
        t.opts = opts
        t.off = 5 + len(opts) // 4
    ip = dpkt.ip.IP(src=ip4(src), dst=ip4(dst), p=6, ttl=64, data=t)
    ip.len = len(bytes(ip))
    return eth(bytes(ip), 0x0800)


def udp4(src, dst, sport, dport, data=b"x" * 8):
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=data)
    u.ulen = 8 + len(data)
    ip = dpkt.ip.IP(src=ip4(src), dst=ip4(dst), p=17, ttl=64, data=u)
    return eth(bytes(ip), 0x0800)


def icmp4(src, dst, type_, id_, seq=1, code=0, data=b"x" * 56):
    echo = dpkt.icmp.ICMP.Echo(id=id_, seq=seq, data=data)
    ic = dpkt.icmp.ICMP(type=type_, code=code, data=echo)
    ip = dpkt.ip.IP(src=ip4(src), dst=ip4(dst), p=1, ttl=64, data=ic)
    return eth(bytes(ip), 0x0800)


def eth(payload, etype):
    return bytes(dpkt.ethernet.Ethernet(dst=b"\x02" * 6, src=b"\x04" * 6, type=etype, data=payload))


def batch(frames, ts=None, **kw):
    return Batch.from_frames(frames, ts=ts, **kw)


SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08

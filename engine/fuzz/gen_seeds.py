#!/usr/bin/env python3
"""Writes the seed corpus for the socks5 fuzz target: a read-size byte, then what a
SOCKS5 client sends (greeting, request, first payload bytes)."""
import ipaddress
import os

def greeting(*methods):
    return bytes([5, len(methods), *methods])

def request(atyp, addr, port, cmd=1, rsv=0):
    if atyp == 3:
        addr = bytes([len(addr)]) + addr
    return bytes([5, cmd, rsv, atyp]) + addr + port.to_bytes(2, "big")

v4 = ipaddress.ip_address("10.0.0.2").packed
v6 = ipaddress.ip_address("fd00::2").packed
seeds = {
    "ipv4": greeting(0) + request(1, v4, 8080),
    "ipv4-payload": greeting(0) + request(1, v4, 80) + b"GET / HTTP/1.1\r\n\r\n",
    "ipv6": greeting(0) + request(4, v6, 443),
    "domain": greeting(0, 2) + request(3, b"echo.default.svc.cluster.local", 80),
    "domain-ip-literal": greeting(0) + request(3, b"127.0.0.1", 15080),
    "domain-max": greeting(0) + request(3, b"a" * 255, 1),
    "methods-255": greeting(*range(1, 256)) + request(1, v4, 80),
    "methods-255-with-noauth": greeting(*range(0, 255)) + request(1, v4, 80),
    "no-methods": greeting(),
    "gssapi-only": greeting(1, 2),
    "bind": greeting(0) + request(1, v4, 80, cmd=2),
    "udp": greeting(0) + request(1, v4, 80, cmd=3),
    "reserved-set": greeting(0) + request(1, v4, 80, rsv=1),
    "atyp-unknown": greeting(0) + bytes([5, 1, 0, 9, 0, 0]),
    "port-zero": greeting(0) + request(1, v4, 0),
    "domain-empty": greeting(0) + bytes([5, 1, 0, 3, 0, 0, 80]),
    "domain-not-utf8": greeting(0) + request(3, b"\xff\xfe", 80),
    "domain-control": greeting(0) + request(3, b"a\nb", 80),
    "request-version-4": greeting(0) + bytes([4, 1, 0, 1]) + v4 + b"\x00\x50",
    "socks4": bytes([4, 1, 0, 80]) + v4 + b"user\x00",
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "truncated-greeting": greeting(0, 1, 2)[:3],
    "truncated-request": (greeting(0) + request(4, v6, 443))[:12],
    "empty": b"",
}
here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "socks5")
os.makedirs(here, exist_ok=True)
for i, (name, data) in enumerate(sorted(seeds.items())):
    # The first byte picks the sizes of the reads the client's bytes arrive in.
    with open(os.path.join(here, name), "wb") as f:
        f.write(bytes([i * 37 % 256]) + data)

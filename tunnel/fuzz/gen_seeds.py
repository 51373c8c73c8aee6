#!/usr/bin/env python3
"""Writes the seed corpus for the connect fuzz target. A first byte 0 is followed by
"<method> <uri>"; a first byte 1 by the HTTP/2 frames a client sends after its preface
(HPACK literals without Huffman coding, written by hand)."""
import os

END_STREAM, END_HEADERS = 0x1, 0x4

def frame(typ, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([typ, flags]) + stream.to_bytes(4, "big") + payload

def hpack_int(n, prefix_bits, first=0):
    limit = (1 << prefix_bits) - 1
    if n < limit:
        return bytes([first | n])
    out = bytearray([first | limit])
    n -= limit
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    out.append(n)
    return bytes(out)

def literal(name, value):
    name, value = name.encode(), value.encode()
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value

def block(headers):
    return b"".join(literal(n, v) for n, v in headers)

def headers(stream, hdrs, flags=END_HEADERS):
    return frame(0x1, flags, stream, block(hdrs))

settings = frame(0x4, 0, 0)
settings_ack = frame(0x4, 0x1, 0)
istio = [("forwarded", 'for="10.0.0.1:40000"'),
         ("baggage", "k8s.cluster.name=Kubernetes,k8s.namespace.name=default"),
         ("traceparent", "00-00000000000000000000000000000abc-0000000000000012-00")]

def connect(authority, extra=()):
    return [(":method", "CONNECT"), (":authority", authority), *extra]

ipv4 = connect("10.0.0.2:8080", istio)
whole = block(ipv4)
seeds = {
    "direct-connect-ipv4": b"CONNECT 10.0.0.2:8080",
    "direct-connect-ipv6": b"CONNECT [fd00::2]:8080",
    "direct-connect-mapped": b"CONNECT [::ffff:10.0.0.2]:80",
    "direct-connect-hostname": b"CONNECT echo.default.svc.cluster.local:80",
    "direct-connect-no-port": b"CONNECT 10.0.0.2",
    "direct-connect-port-too-big": b"CONNECT 10.0.0.2:65536",
    "direct-connect-scoped": b"CONNECT [fe80::1%25eth0]:80",
    "direct-connect-userinfo": b"CONNECT user@10.0.0.2:80",
    "direct-get-absolute": b"GET http://10.0.0.2:80/path",
    "direct-extension-method": b"BREW 10.0.0.2:80",
    "h2-connect-ipv4": settings + settings_ack + headers(1, ipv4),
    "h2-connect-ipv6": settings + headers(1, connect("[fd00::2]:8080", istio)),
    "h2-connect-hostname": settings + headers(1, connect("echo.default:80")),
    "h2-connect-no-port": settings + headers(1, connect("10.0.0.2")),
    "h2-connect-end-stream": settings + headers(1, ipv4, END_HEADERS | END_STREAM),
    "h2-connect-with-path": settings + headers(1, connect("10.0.0.2:80", [(":path", "/"), (":scheme", "https")])),
    "h2-get": settings + headers(1, [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "10.0.0.2:80")], END_HEADERS | END_STREAM),
    "h2-two-streams": settings + headers(1, ipv4) + headers(3, connect("10.0.0.3:9090")),
    "h2-continuation": settings + frame(0x1, 0, 1, whole[:10]) + frame(0x9, END_HEADERS, 1, whole[10:]),
    "h2-connect-then-reset": settings + headers(1, ipv4) + frame(0x3, 0, 1, (8).to_bytes(4, "big")),
    "h2-connect-data-ping-goaway": (settings + headers(1, ipv4) + frame(0x0, 0, 1, b"hello")
                                    + frame(0x6, 0, 0, b"\0" * 8) + frame(0x8, 1, 0, b"\0" * 9)
                                    + frame(0x7, 0, 0, b"\0" * 8)),
    "h2-window-update": settings + frame(0x8, 0, 0, (1 << 20).to_bytes(4, "big")) + headers(1, ipv4),
    "h2-even-stream": settings + headers(2, ipv4),
    "h2-no-settings": headers(1, ipv4),
    "h2-connect-then-eof": settings + headers(1, ipv4),
}
here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "connect")
os.makedirs(here, exist_ok=True)
for name, data in sorted(seeds.items()):
    mode = b"\x00" if name.startswith("direct-") else b"\x03" if name.endswith("-eof") else b"\x01"
    with open(os.path.join(here, name), "wb") as f:
        f.write(mode + data)

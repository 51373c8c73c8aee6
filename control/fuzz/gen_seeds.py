#!/usr/bin/env python3
"""Writes the seed corpora of the xds_decode and zds fuzz targets (hand-encoded protobuf)."""
import os

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7f
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)

def key(field, wire):
    return varint((field << 3) | wire)

def ld(field, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return key(field, 2) + varint(len(payload)) + payload

def vi(field, n):
    return key(field, 0) + varint(n)

port = vi(1, 80) + vi(2, 8080)
portlist = ld(1, port)
svc_entry = ld(1, "default/echo.default.svc.cluster.local") + ld(2, portlist)
gateway = ld(2, ld(1, "") + ld(2, bytes([10, 0, 0, 9]))) + vi(3, 15008)
workload = (ld(20, "Kubernetes//Pod/default/echo-1") + ld(1, "echo-1") + ld(2, "default")
            + ld(3, bytes([10, 0, 0, 5])) + ld(3, bytes(16)) + vi(5, 1) + ld(6, "cluster.local")
            + ld(7, "echo") + ld(8, gateway) + ld(9, "worker-1") + ld(10, "echo") + ld(11, "v1")
            + vi(12, 0) + ld(13, "echo") + ld(22, svc_entry) + ld(16, "default/deny-80")
            + vi(17, 0) + ld(18, "Kubernetes") + ld(24, ld(1, "r") + ld(2, "z")) + vi(25, 0)
            + ld(27, vi(1, 3)))
address_workload = ld(1, workload)
lb = vi(1, 4) + vi(1, 1) + vi(2, 2) + vi(3, 0)
service = (ld(1, "echo") + ld(2, "default") + ld(3, "echo.default.svc.cluster.local")
           + ld(4, ld(1, "") + ld(2, bytes([10, 96, 0, 10]))) + ld(5, port) + ld(8, lb) + vi(9, 0) + vi(11, 1))
address_service = ld(2, service)
sm_exact = ld(1, "default")
sm_prefix = ld(2, "spiffe://cluster.local/ns/")
match = (ld(1, sm_exact) + ld(3, sm_prefix) + ld(5, ld(1, bytes([10, 0, 0, 0])) + vi(2, 8))
         + ld(9, varint(80) + varint(443)) + ld(11, ld(1, "default") + ld(2, "echo")))
authz = (ld(1, "deny-80") + ld(2, "default") + vi(3, 1) + vi(4, 1)
         + ld(5, ld(1, ld(2, match))) + vi(6, 1))

def any_(type_url, value):
    return ld(1, type_url) + ld(2, value)

def resource(name, version, type_url, value):
    return ld(3, name) + ld(1, version) + ld(2, any_(type_url, value))

ADDR = "type.googleapis.com/istio.workload.Address"
AUTHZ = "type.googleapis.com/istio.security.Authorization"
delta_addr = (ld(1, "v1") + ld(2, resource("Kubernetes//Pod/default/echo-1", "1", ADDR, address_workload))
              + ld(2, resource("default/echo.default.svc.cluster.local", "1", ADDR, address_service))
              + ld(4, ADDR) + ld(6, "gone") + ld(5, "nonce-1"))
delta_authz = ld(2, resource("default/deny-80", "1", AUTHZ, authz)) + ld(4, AUTHZ) + ld(5, "nonce-2")

seeds = {
    "address_workload": address_workload,
    "address_service": address_service,
    "authorization": authz,
    "delta_address": delta_addr,
    "delta_authorization": delta_authz,
    "empty": b"",
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "xds_decode")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)

# zds: packets framed as <flags: descriptors | truncated << 2 | reconnect << 3> <len> <bytes>.
def packet(flags, body):
    return bytes([flags, len(body)]) + body

info = ld(1, "web-0") + ld(2, "shop") + ld(3, "web")
def add(uid):
    return ld(1, ld(1, uid) + ld(2, info))
keep = lambda uid: ld(5, ld(1, uid))
dele = lambda uid: ld(2, ld(2, uid))
snap = ld(3, b"")
zds_seeds = {
    "snapshot_then_changes": packet(1, add("a")) + packet(1, add("b")) + packet(0, snap)
        + packet(1, add("c")) + packet(0, dele("a")),
    "reconnect_with_keep": packet(1, add("a")) + packet(1, add("b")) + packet(0, snap)
        + packet(9, add("a")) + packet(0, keep("b")) + packet(0, snap),
    "refusals": packet(0, add("a")) + packet(2, add("a")) + packet(5, add("a"))
        + packet(1, dele("a")) + packet(0, b"\xff\xff") + packet(0, snap) + packet(0, snap)
        + packet(0, keep("x")),
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "zds")
os.makedirs(out, exist_ok=True)
for name, data in zds_seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)

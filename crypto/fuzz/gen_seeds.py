#!/usr/bin/env python3
"""Writes the seed corpus for the tls_records fuzz target: a mode byte (bit 0: the
session is the client; bit 1: AES-256-GCM; bits 2-4 all set: raw handshake bytes to a
fresh server), then the script played after the handshake, one operation at a time
(see crypto/src/fuzzing.rs, Run::step)."""
import os

SERVER, CLIENT, AES256, HANDSHAKE_BYTES = 0, 1, 2, 0x1C
ALERT, HANDSHAKE, DATA = 0x15, 0x16, 0x17

def data(n, fill=0x61, pad_mul=0, pad=0):
    size = bytes([n]) if n < 0xF0 else bytes([0xFF]) + n.to_bytes(2, "big")
    return bytes([0]) + size + bytes([fill, pad_mul, pad])

def inner(typ, content, pad=0):
    return bytes([1, typ, len(content)]) + content + bytes([pad])

def key_update(request):
    return bytes([2, request])

DESYNC = bytes([3])

def raw(b):
    return bytes([4, len(b)]) + b

def flip(at, bit):
    return bytes([5, at, bit])

def version(v0, v1):
    return bytes([6, v0, v1])

def our_write(n, out_records=1):
    return bytes([7]) + n.to_bytes(2, "big") + bytes([out_records - 1])

HOLD = bytes([8])
CLOSE = bytes([9])

def chunk(n):
    return bytes([10]) + (n - 1).to_bytes(2, "big")

EOF_NOW = bytes([11])

seeds = {
    "data-small": (SERVER, data(5) + data(9, 0x62)),
    "data-small-client-aes256": (CLIENT | AES256, data(5) + data(9, 0x62)),
    "data-full-record": (SERVER | AES256, data(16384)),
    "data-too-large": (SERVER, data(16385)),
    "data-padded": (CLIENT, data(100, pad_mul=3, pad=255)),
    "data-padded-past-limit": (SERVER, data(16384, pad_mul=3, pad=255)),
    "data-empty-records": (SERVER, data(0) + data(0) + data(0) + data(3)),
    "data-in-type-zero": (SERVER, inner(0, b"abc\x17", 2)),
    "key-update": (SERVER, data(5) + key_update(0) + data(9) + key_update(0) + data(1)),
    "key-update-requested": (CLIENT | AES256, key_update(1) + our_write(100) + data(7)),
    "key-update-malformed": (SERVER, key_update(2) + data(3)),
    "key-update-split": (SERVER, inner(HANDSHAKE, bytes([24, 0, 0])) + inner(HANDSHAKE, bytes([1, 0])) + DESYNC + data(4)),
    "key-update-not-last": (SERVER, inner(HANDSHAKE, bytes([24, 0, 0, 1, 0, 24, 0, 0, 1, 0]))),
    "key-desync": (CLIENT, DESYNC + data(4)),
    "ticket-to-client": (CLIENT, inner(HANDSHAKE, bytes([4, 0, 0, 13]) + bytes(4) + bytes(4) + bytes([0, 0, 1, 0, 0])) + data(2)),
    "ticket-from-client": (SERVER, inner(HANDSHAKE, bytes([4, 0, 0, 1, 0]))),
    "handshake-partial-then-data": (SERVER, inner(HANDSHAKE, bytes([4, 0, 0, 9, 1])) + data(1)),
    "handshake-too-large": (CLIENT, inner(HANDSHAKE, bytes([4, 1, 0, 0]))),
    "handshake-empty": (SERVER, inner(HANDSHAKE, b"")),
    "certificate-request": (CLIENT, inner(HANDSHAKE, bytes([13, 0, 0, 1, 0]))),
    "close-notify-then-data": (SERVER, data(3) + inner(ALERT, bytes([1, 0])) + data(3) + EOF_NOW),
    "user-canceled": (SERVER, inner(ALERT, bytes([1, 90])) + data(3)),
    "fatal-alert": (CLIENT, inner(ALERT, bytes([2, 40]))),
    "alert-malformed": (SERVER, inner(ALERT, bytes([1, 0, 0]))),
    "unknown-type": (SERVER, inner(0x42, b"x")),
    "all-zero-inner": (SERVER, inner(0, b"", 5)),
    "unprotected-alert": (SERVER, raw(bytes([0x15, 3, 3, 0, 2, 2, 40]))),
    "oversized-header": (CLIENT, raw(bytes([0x17, 3, 3, 0x41, 0x01]))),
    "truncated-at-eof": (SERVER, data(3) + raw(bytes([0x17, 3, 3, 0, 40, 1, 2])) + EOF_NOW),
    "flipped-bit": (SERVER, data(2) + flip(7, 3)),
    "other-version": (SERVER | AES256, version(3, 1) + version(0xFF, 0xFF) + data(1)),
    "stalled-reader": (SERVER, HOLD + data(16384) * 6 + HOLD + data(2)),
    "byte-reads": (CLIENT, chunk(1) + data(40) + key_update(1) + data(3) + chunk(7) + data(16384)),
    "our-close-then-data": (SERVER, our_write(40000, 3) + CLOSE + data(6) + CLOSE + our_write(1)),
    "eof-clean": (SERVER, data(1) + EOF_NOW),
    "handshake-garbage": (HANDSHAKE_BYTES, bytes([0x16, 3, 1, 0, 5, 1, 0, 0, 1, 0])),
    "handshake-http": (HANDSHAKE_BYTES, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    "handshake-alert": (HANDSHAKE_BYTES, bytes([0x15, 3, 3, 0, 2, 2, 40])),
    "script-empty": (SERVER, b""),
}
here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "tls_records")
os.makedirs(here, exist_ok=True)
for name, (mode, script) in sorted(seeds.items()):
    with open(os.path.join(here, name), "wb") as f:
        f.write(bytes([mode]) + script)

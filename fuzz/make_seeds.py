#!/usr/bin/env python3
"""Writes the committed seed inputs under fuzz/corpus/<target>/seed-*.

Only for the byte-oriented targets; the seeds of the structured targets
(virtio_request, dirty_map, whose input is decoded with `arbitrary`) are
minimised inputs picked from fuzzing runs. Run from anywhere:
    python3 fuzz/make_seeds.py
"""
import hashlib
import hmac
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

# --- wire format (proto/src/wire) -----------------------------------------

def _crc_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t

_T = _crc_table()

def crc32c(b: bytes) -> int:
    c = 0xFFFFFFFF
    for x in b:
        c = _T[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF

MAGIC = b"BSLT"
VERSION = 2
HELLO, READ, WRITE, FLUSH, DISCARD, WZ, PING = range(1, 8)
RESPONSE, REPLICA, FUA = 1, 2, 4

def header(op, req_id=1, vol=7, epoch=3, offset=0, length=0, payload=b"",
           flags=0, status=0, payload_len=None):
    plen = len(payload) if payload_len is None else payload_len
    pcrc = crc32c(payload) if payload else 0
    b = MAGIC + struct.pack("<BBHQQQQIIIH", VERSION, op, flags, req_id, vol,
                            epoch, offset, length, plen, pcrc, status)
    b += b"\0" * 6
    assert len(b) == 60
    return b + struct.pack("<I", crc32c(b))

def frame(op, payload=b"", **kw):
    return header(op, payload=payload, **kw) + payload

# --- handshake (proto/src/wire/handshake.rs) -------------------------------

KEY = b"fuzz-cluster-key"   # the key the handshake target verifies with
NONCE = bytes(32)

def put_id(s: bytes) -> bytes:
    return struct.pack("<H", len(s)) + s

def challenge(server_id: bytes, nonce=NONCE) -> bytes:
    return nonce + put_id(server_id)

def hello(role, peer_id: bytes, volume_id=0, attachment=0, key=KEY, nonce=NONCE):
    m = hmac.new(key, digestmod=hashlib.sha256)
    m.update(b"basalt-hello-v2" + nonce + bytes([role]))
    m.update(struct.pack("<QQ", volume_id, attachment) + peer_id)
    return (bytes([role, 0]) + put_id(peer_id)
            + struct.pack("<QQ", volume_id, attachment) + m.digest())

# --- writing ----------------------------------------------------------------

def write(target, name, data: bytes):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)

def main():
    # wire_header: mode byte (bit 0 reseal header CRCs, bit 1 fix payload
    # CRCs), then a byte stream of frames.
    data = bytes(range(256)) * 2
    write("wire_header", "read", b"\0" + frame(READ, offset=4096, length=8192))
    write("wire_header", "write-512", b"\0" + frame(WRITE, data, offset=512,
                                                     length=512, flags=FUA))
    write("wire_header", "ping-and-response", b"\0" + frame(PING, req_id=9)
          + frame(PING, req_id=9, flags=RESPONSE))
    write("wire_header", "stale-epoch-response", b"\0" + frame(
        WRITE, req_id=5, epoch=11, flags=RESPONSE, status=3))
    write("wire_header", "replica-discard", b"\0" + frame(
        DISCARD, offset=1 << 20, length=1 << 30, flags=REPLICA))
    write("wire_header", "hello-frame", b"\0" + frame(
        HELLO, hello(1, b"backend-1", 7, 2)))
    write("wire_header", "oversized-resealed", b"\1" + header(
        READ, payload_len=(4 << 20) + 1))
    write("wire_header", "truncated-payload", b"\0" + header(
        WRITE, length=1024, payload_len=1024) + data[:100])
    write("wire_header", "fixup-two-frames", b"\3" + frame(WRITE, data[:64])
          + frame(FLUSH))

    # handshake: mode 0 Hello bytes, mode 1 HelloChallenge bytes, other
    # modes structured values.
    write("handshake", "hello-backend", b"\0" + hello(1, b"backend-7", 7, 3))
    write("handshake", "hello-replication", b"\0" + hello(2, b"s2"))
    write("handshake", "hello-long-id", b"\0" + hello(1, "ü".encode() * 100, 1, 1))
    write("handshake", "challenge", b"\1" + challenge(b"s1", bytes(range(32))))
    write("handshake", "challenge-empty-id", b"\1" + challenge(b""))
    write("handshake", "structured", b"\2" + bytes(range(120)))

    # control_socket: mode even = lines to handle_line, odd = serve_conn.
    lines = [
        b'{"op":"stats"}',
        b'{"op":"resize","size_bytes":2097152}',
        b'{"op":"layout","primary":"10.0.0.2:7500","epoch":3}',
        b'{"op":"resize","size_bytes":1048576}',
        b'{"op":"layout","primary":"[::1]:7500","epoch":2}',
        b'{"op":"stats","extra":[1,2,{"x":null}]}',
    ]
    session = b"\n".join(lines) + b"\n"
    write("control_socket", "stats", b"\0" + lines[0])
    write("control_socket", "session", b"\0" + session)
    write("control_socket", "socket-session", b"\1" + session + b"\n  \n\xff\xfe\n")
    write("control_socket", "socket-long-line", b"\1" + lines[0] + b"\n"
          + b"x" * 4200 + b"\n" + lines[0] + b"\n")

    # copy_meta: meta.json as CopyMeta::store writes it (pretty JSON).
    peer = lambda i, d=False: {"server_id": f"s{i}",
                               "address": f"127.0.0.1:75{i:02}", "delta": d}
    primary = {"volume_id": 3, "size_bytes": 1 << 30, "role": "primary",
               "epoch": 4, "mirrors": [peer(2)], "primary_server_id": "",
               "syncing": [peer(3, True)], "attachment": 9}
    mirror = {"volume_id": 3, "size_bytes": 1 << 30, "role": "mirror",
              "epoch": 4, "mirrors": [], "primary_server_id": "s1",
              "syncing": [], "attachment": 0}
    old = {"volume_id": 1, "size_bytes": 4096, "role": "primary", "epoch": 2,
           "syncing": [{"server_id": "a", "address": "127.0.0.1:2"}]}
    write("copy_meta", "primary.json", json.dumps(primary, indent=2).encode())
    write("copy_meta", "mirror.json", json.dumps(mirror, indent=2).encode())
    write("copy_meta", "old-format.json", json.dumps(old).encode())

    # node_record: selector byte (even: name the file after the record's
    # volume id; odd: 7.json), then the record as record::save writes it.
    rec = {"params": {"volume_id": 7, "size_bytes": 1 << 20,
                      "primary": "127.0.0.1:7500", "epoch": 2,
                      "read_only": False, "queues": 2},
           "socket": "/run/basalt/vol-7.sock", "pid": 4242,
           "start_time": 123456, "restarts": 1}
    write("node_record", "record.json", b"\0" + json.dumps(rec, indent=2).encode())
    rec2 = dict(rec, params=dict(rec["params"], volume_id=12, read_only=True,
                                 attachment=4),
                socket="/run/basalt/vol-12/sock",
                socket_owner={"uid": 107, "gid": 108})
    write("node_record", "record-12.json", b"\0" + json.dumps(rec2).encode())
    write("node_record", "wrong-name.json", b"\1" + json.dumps(rec2).encode())
    rec3 = dict(rec, params=dict(rec["params"], volume_id=3), socket_owner=None)
    write("node_record", "owner-null.json", b"\0" + json.dumps(rec3).encode())

if __name__ == "__main__":
    main()

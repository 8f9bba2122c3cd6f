#!/usr/bin/env python3
"""Cross-checks the golden vectors with a second msgpack implementation.

The vectors are written by the C encoder (test_codec --write-golden DIR).
This script decodes them with the small pure-Python msgpack reader below,
which shares no code with the C side, and compares them with the messages
test_codec.c encodes (golden_msg there). It also checks that each value
uses the shortest encoding and that the keys come in the documented order.

    python3 tests/data/codec/check_golden.py [DIR]

With --write-seeds OUTDIR it writes fuzzer seeds into OUTDIR: the golden
vectors re-encoded with other integer widths, keys reversed, and unknown
keys holding nested values, so the fuzzer starts from inputs that reach
past the first checks.
"""
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

EXPECTED = {
    "task": [
        ("v", 1), ("kind", "task"), ("client", "7"), ("task", 1042), ("seq", 3),
        ("ts", 1700000000123), ("department", 12),
        ("name", "Настроить VPS #1 & = + % ?"), ("type", "postopen"),
        ("note", "line one\nline two\r\n\ttabbed"), ("deadline", "2024-05-01 12:30:00"),
        ("item", "VPS-1 (vps1.example.com)"), ("account", "ООО «Ромашка» <acct 55>"),
        ("status", 1), ("rev_seq", 200),
    ],
    "state": [
        ("v", 1), ("kind", "state"), ("client", "7"), ("task", 1042), ("seq", 9),
        ("ts", 1700000300456), ("status", 2), ("performer_id", 21),
        ("performer", "Иван Петров"),
        ("notes", ["first note", "вторая заметка\nс переводом строки", ""]),
        ("fwd_seq", 300),
    ],
    "sync": [
        ("v", 1), ("kind", "sync"), ("client", "7"), ("task", 0), ("seq", 0),
        ("ts", 1700000400000), ("id", "chk-0001"),
    ],
    "sync_done": [
        ("v", 1), ("kind", "sync_done"), ("client", "7"), ("task", 0), ("seq", 0),
        ("ts", 1700000401000), ("id", "chk-0001"), ("count", 1234),
    ],
}


class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError("truncated at byte %d" % self.pos)
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def uint(self, n):
        return int.from_bytes(self.take(n), "big")

    def value(self):
        """Returns (value, tag byte) and checks the encoding is the shortest."""
        t = self.take(1)[0]
        if t <= 0x7F:
            return t, t
        if t >= 0xE0:
            return t - 0x100, t
        if 0x80 <= t <= 0x8F:
            return self.pairs(t & 0x0F), t
        if 0x90 <= t <= 0x9F:
            return [self.value()[0] for _ in range(t & 0x0F)], t
        if 0xA0 <= t <= 0xBF:
            return self.take(t & 0x1F).decode("utf-8"), t
        widths = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
        if t in widths:
            v = self.uint(widths[t])
            floor = {0xCC: 128, 0xCD: 256, 0xCE: 65536, 0xCF: 1 << 32}[t]
            if v < floor:
                raise ValueError("uint %d not in its shortest form" % v)
            return v, t
        swidths = {0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
        if t in swidths:
            n = swidths[t]
            v = int.from_bytes(self.take(n), "big", signed=True)
            floor = {1: -32, 2: -128, 4: -32768, 8: -(1 << 31)}[n]
            if v >= floor:
                raise ValueError("int %d not in its shortest form" % v)
            return v, t
        if t in (0xD9, 0xDA, 0xDB):
            n = self.uint({0xD9: 1, 0xDA: 2, 0xDB: 4}[t])
            floor = {0xD9: 32, 0xDA: 256, 0xDB: 65536}[t]
            if n < floor:
                raise ValueError("str of %d bytes not in its shortest form" % n)
            return self.take(n).decode("utf-8"), t
        raise ValueError("unexpected tag 0x%02x at byte %d" % (t, self.pos - 1))

    def pairs(self, n):
        out = []
        for _ in range(n):
            k, kt = self.value()
            if not isinstance(k, str):
                raise ValueError("non-string key")
            v, _ = self.value()
            out.append((k, v))
        return out


def check(directory):
    failures = 0
    for kind, want in EXPECTED.items():
        path = os.path.join(directory, kind + ".msgpack")
        with open(path, "rb") as f:
            data = f.read()
        r = Reader(data)
        try:
            got, tag = r.value()
            if not isinstance(got, list) or tag > 0x8F:
                raise ValueError("body is not a fixmap")
            if r.pos != len(data):
                raise ValueError("%d trailing bytes" % (len(data) - r.pos))
            if got != want:
                raise ValueError("decoded %r, expected %r" % (got, want))
        except ValueError as e:
            print("FAIL %s: %s" % (path, e))
            failures += 1
            continue
        print("ok   %s (%d bytes, %d keys)" % (path, len(data), len(got)))
    return failures


# A writer with a choice of widths, for the seeds.
def w_uint(v, width=0):
    if width == 0:
        if v < 128:
            return bytes([v])
        width = 1 if v < 256 else 2 if v < 65536 else 4 if v < (1 << 32) else 8
    tag = {1: 0xCC, 2: 0xCD, 4: 0xCE, 8: 0xCF}[width]
    return bytes([tag]) + v.to_bytes(width, "big")


def w_sint(v, width):
    tag = {1: 0xD0, 2: 0xD1, 4: 0xD2, 8: 0xD3}[width]
    return bytes([tag]) + v.to_bytes(width, "big", signed=True)


def w_str(s, wide=False):
    b = s.encode("utf-8")
    if wide:
        return b"\xdb" + struct.pack(">I", len(b)) + b
    if len(b) < 32:
        return bytes([0xA0 | len(b)]) + b
    if len(b) < 256:
        return b"\xd9" + bytes([len(b)]) + b
    return b"\xda" + struct.pack(">H", len(b)) + b


def w_val(v, style):
    if isinstance(v, int):
        if style == "uint64":
            return w_uint(v, 8)
        if style == "signed":
            return w_sint(v, 4 if v < (1 << 31) else 8)
        return w_uint(v)
    if isinstance(v, list):
        return b"\xdc" + struct.pack(">H", len(v)) + b"".join(w_str(x, style == "wide") for x in v)
    return w_str(v, style == "wide")


def w_map(pairs, style):
    body = b"".join(w_str(k) + w_val(v, style) for k, v in pairs)
    return b"\xde" + struct.pack(">H", len(pairs)) + body


UNKNOWN_RAW = (w_str("x-nested") + b"\x82" + w_str("a") + b"\x91\xc3" + w_str("b") + b"\x81"
               + w_str("c") + b"\xcb" + struct.pack(">d", 1.5)
               + w_str("x-bin") + b"\xc4\x03abc" + w_str("x-ext") + b"\xd6\x07abcd"
               + w_str("x-nil") + b"\xc0")


def write_seeds(outdir):
    os.makedirs(outdir, exist_ok=True)
    n = 0
    for kind, pairs in EXPECTED.items():
        variants = {
            "uint64": w_map(pairs, "uint64"),
            "signed": w_map(pairs, "signed"),
            "wide": w_map(pairs, "wide"),
            "reversed": w_map(list(reversed(pairs)), ""),
        }
        body = b"".join(w_str(k) + w_val(v, "") for k, v in pairs)
        variants["unknown"] = (b"\xde" + struct.pack(">H", len(pairs) + 5) + body
                               + w_str("x-future") + w_str("text") + UNKNOWN_RAW)
        for name, data in variants.items():
            with open(os.path.join(outdir, "%s-%s.msgpack" % (kind, name)), "wb") as f:
                f.write(data)
            n += 1
    print("wrote %d seeds into %s" % (n, outdir))


def main(argv):
    if len(argv) == 3 and argv[1] == "--write-seeds":
        write_seeds(argv[2])
        return 0
    directory = argv[1] if len(argv) > 1 else HERE
    return 1 if check(directory) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""shoal wire format (PROTOCOL.md sections 2, 4 and 7), written from the document alone.

A minimal MessagePack codec is included on purpose: the negative checks need exact control over
encodings (a bin where a str belongs, a positional array, a duplicate key, ...), which a general
library hides.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

# ---------------------------------------------------------------------------------------------
# MessagePack (the subset shoal uses, both directions)


class Raw:
    """Bytes spliced verbatim into an encoding (to build malformed values)."""

    def __init__(self, data: bytes):
        self.data = data


class Str:
    """Force a value to be written as a MessagePack str."""

    def __init__(self, s: str):
        self.s = s


def pack(v) -> bytes:
    if isinstance(v, Raw):
        return v.data
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 0x80:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack(">b", v)
        if v >= 0:
            if v <= 0xFF:
                return b"\xcc" + struct.pack(">B", v)
            if v <= 0xFFFF:
                return b"\xcd" + struct.pack(">H", v)
            if v <= 0xFFFFFFFF:
                return b"\xce" + struct.pack(">I", v)
            return b"\xcf" + struct.pack(">Q", v)
        if v >= -0x80:
            return b"\xd0" + struct.pack(">b", v)
        if v >= -0x8000:
            return b"\xd1" + struct.pack(">h", v)
        if v >= -0x80000000:
            return b"\xd2" + struct.pack(">i", v)
        return b"\xd3" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, Str):
        v = v.s
    if isinstance(v, str):
        b = v.encode()
        n = len(b)
        if n < 32:
            return bytes([0xA0 | n]) + b
        if n <= 0xFF:
            return b"\xd9" + bytes([n]) + b
        if n <= 0xFFFF:
            return b"\xda" + struct.pack(">H", n) + b
        return b"\xdb" + struct.pack(">I", n) + b
    if isinstance(v, (bytes, bytearray)):
        n = len(v)
        if n <= 0xFF:
            return b"\xc4" + bytes([n]) + bytes(v)
        if n <= 0xFFFF:
            return b"\xc5" + struct.pack(">H", n) + bytes(v)
        return b"\xc6" + struct.pack(">I", n) + bytes(v)
    if isinstance(v, (list, tuple)):
        n = len(v)
        head = bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)
        return head + b"".join(pack(x) for x in v)
    if isinstance(v, dict):
        return pack_map(list(v.items()))
    raise TypeError(f"cannot pack {type(v)}")


def pack_map(items) -> bytes:
    """A map from a list of (key, value) pairs (so a key may appear twice)."""
    n = len(items)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
    return head + b"".join(pack(k) + pack(v) for k, v in items)


class DecodeError(Exception):
    pass


def unpack(data: bytes):
    """Decode the first MessagePack value; trailing bytes are ignored (as section 2.3 says)."""
    v, _ = _unpack(memoryview(data), 0)
    return v


def _need(b, i, n):
    if i + n > len(b):
        raise DecodeError("truncated")


def _unpack(b, i):
    _need(b, i, 1)
    t = b[i]
    i += 1
    if t < 0x80:
        return t, i
    if t >= 0xE0:
        return t - 0x100, i
    if 0x80 <= t <= 0x8F:
        return _map(b, i, t & 0x0F)
    if 0x90 <= t <= 0x9F:
        return _arr(b, i, t & 0x0F)
    if 0xA0 <= t <= 0xBF:
        return _str(b, i, t & 0x1F)
    if t == 0xC0:
        return None, i
    if t == 0xC2:
        return False, i
    if t == 0xC3:
        return True, i
    fixed = {
        0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
        0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q",
        0xCA: ">f", 0xCB: ">d",
    }
    if t in fixed:
        n = struct.calcsize(fixed[t])
        _need(b, i, n)
        return struct.unpack(fixed[t], bytes(b[i:i + n]))[0], i + n
    if t in (0xC4, 0xC5, 0xC6):
        n, i = _len(b, i, {0xC4: 1, 0xC5: 2, 0xC6: 4}[t])
        _need(b, i, n)
        return bytes(b[i:i + n]), i + n
    if t in (0xD9, 0xDA, 0xDB):
        n, i = _len(b, i, {0xD9: 1, 0xDA: 2, 0xDB: 4}[t])
        return _str(b, i, n)
    if t in (0xDC, 0xDD):
        n, i = _len(b, i, {0xDC: 2, 0xDD: 4}[t])
        return _arr(b, i, n)
    if t in (0xDE, 0xDF):
        n, i = _len(b, i, {0xDE: 2, 0xDF: 4}[t])
        return _map(b, i, n)
    raise DecodeError(f"unsupported type byte 0x{t:02x}")


def _len(b, i, size):
    _need(b, i, size)
    return int.from_bytes(bytes(b[i:i + size]), "big"), i + size


def _str(b, i, n):
    _need(b, i, n)
    try:
        return bytes(b[i:i + n]).decode("utf-8"), i + n
    except UnicodeDecodeError as e:
        raise DecodeError("invalid utf-8") from e


def _arr(b, i, n):
    out = []
    for _ in range(n):
        v, i = _unpack(b, i)
        out.append(v)
    return out, i


def _map(b, i, n):
    out = {}
    for _ in range(n):
        k, i = _unpack(b, i)
        v, i = _unpack(b, i)
        if isinstance(k, list):
            k = tuple(k)
        if k in out:
            raise DecodeError(f"duplicate key {k!r}")
        out[k] = v
    return out, i


# ---------------------------------------------------------------------------------------------
# Frames (section 2)

VERSION = 1
KIND_CONTROL = 1
KIND_CHUNK = 2
MAX_CONTROL_BODY = 16 * 1024
MAX_CHUNK_BODY = 1024 * 1024 + 24
SEQ_MAX = (1 << 64) - 1


def frame(kind: int, body: bytes, version: int = VERSION, length: int | None = None) -> bytes:
    if length is None:
        length = 2 + len(body)
    return struct.pack(">IBB", length, version, kind) + body


def control(name: str, fields: dict | None = None, **kw) -> bytes:
    """A control frame `{name: {fields}}` (section 2.3)."""
    if fields is None:
        fields = kw
    return frame(KIND_CONTROL, pack({name: fields}))


def chunk_body(seq: int, ts_us: int, payload: bytes) -> bytes:
    return (
        b"\x93\xcf" + struct.pack(">Q", seq) + b"\xcf" + struct.pack(">Q", ts_us)
        + b"\xc6" + struct.pack(">I", len(payload)) + payload
    )


def chunk(seq: int, ts_us: int, payload: bytes) -> bytes:
    return frame(KIND_CHUNK, chunk_body(seq, ts_us, payload))


class FrameError(Exception):
    """A frame the client cannot decode (it should close the connection, section 2.3)."""


def parse_chunk(body: bytes):
    if (
        len(body) < 24 or body[0] != 0x93 or body[1] != 0xCF or body[10] != 0xCF
        or body[19] != 0xC6
    ):
        raise FrameError("non-canonical chunk")
    seq, = struct.unpack(">Q", body[2:10])
    ts, = struct.unpack(">Q", body[11:19])
    n, = struct.unpack(">I", body[20:24])
    if n != len(body) - 24:
        raise FrameError("chunk payload length mismatch")
    if seq == SEQ_MAX:
        raise FrameError("chunk seq 2^64-1")
    return seq, ts, body[24:]


def parse_control(body: bytes):
    try:
        v = unpack(body)
    except DecodeError as e:
        raise FrameError(f"control body: {e}") from e
    if not isinstance(v, dict) or len(v) != 1:
        raise FrameError(f"control message is not a 1-entry map: {v!r}")
    (name, fields), = v.items()
    if not isinstance(name, str) or not isinstance(fields, dict):
        raise FrameError(f"control message shape: {v!r}")
    return name, fields


class FrameReader:
    """Splits a byte stream into frames, checking the header as section 2.1 orders."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data: bytes):
        self.buf += data

    def next(self):
        """Returns ('control', name, fields) | ('chunk', seq, ts, payload) | None (need more)."""
        if len(self.buf) < 6:
            return None
        length, version, kind = struct.unpack(">IBB", self.buf[:6])
        if version != VERSION:
            raise FrameError(f"frame version {version}")
        if length < 2:
            raise FrameError("frame length < 2")
        if kind not in (KIND_CONTROL, KIND_CHUNK):
            raise FrameError(f"frame kind {kind}")
        limit = MAX_CONTROL_BODY if kind == KIND_CONTROL else MAX_CHUNK_BODY
        if length - 2 > limit:
            raise FrameError("frame too large")
        if len(self.buf) < 4 + length:
            return None
        body = bytes(self.buf[6:4 + length])
        del self.buf[:4 + length]
        if kind == KIND_CHUNK:
            return ("chunk",) + parse_chunk(body)
        return ("control",) + parse_control(body)

    def pending(self) -> int:
        return len(self.buf)


# ---------------------------------------------------------------------------------------------
# Cryptography (section 4)


def attach_proof(session_secret: bytes, shard_id: int, nonce: bytes) -> bytes:
    return hmac.new(
        session_secret, b"shoal attach" + struct.pack(">I", shard_id) + nonce, hashlib.sha256
    ).digest()


def bind_mac(session_secret: bytes, exporter: bytes) -> bytes:
    return hmac.new(session_secret, b"shoal bind" + exporter, hashlib.sha256).digest()


def hkdf_expand_label(hash_name: str, secret: bytes, label: bytes, context: bytes, length: int):
    """RFC 8446 section 7.1 HKDF-Expand-Label."""
    full = b"tls13 " + label
    info = struct.pack(">H", length) + bytes([len(full)]) + full + bytes([len(context)]) + context
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(secret, t + info + bytes([i]), hash_name).digest()
        out += t
        i += 1
    return out[:length]


def tls_exporter(hash_name: str, exporter_master_secret: bytes, label: bytes, context: bytes,
                 length: int) -> bytes:
    """RFC 8446 section 7.5: TLS-Exporter(label, context_value, key_length)."""
    empty = hashlib.new(hash_name, b"").digest()
    derived = hkdf_expand_label(
        hash_name, exporter_master_secret, label, empty, hashlib.new(hash_name).digest_size
    )
    return hkdf_expand_label(
        hash_name, derived, b"exporter", hashlib.new(hash_name, context).digest(), length
    )


# ---------------------------------------------------------------------------------------------
# Synthetic streams (section 7)

M = (1 << 64) - 1


def splitmix64(z):
    z = (z + 0x9E3779B97F4A7C15) & M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return z ^ (z >> 31)


def synth_seed(stream_name: str) -> int:
    return int.from_bytes(hashlib.sha256(stream_name.encode()).digest()[:8], "little")


def synth_payload(seed: int, seq: int, n: int) -> bytes:
    base = splitmix64(seed ^ ((seq * 0xD6E8FEB86659FD93) & M))
    words = (splitmix64((base + i) & M).to_bytes(8, "little") for i in range((n + 7) // 8))
    return b"".join(words)[:n]


def synth_period_us(rate_hz: int) -> int:
    return 1_000_000 // max(rate_hz, 1)


def synth_live_seq(now_us: int, rate_hz: int) -> int:
    return now_us // synth_period_us(rate_hz)

#!/usr/bin/env python3
"""Independent shoal client (aioquic), written from PROTOCOL.md, with conformance checks.

Each check prints `PASS name` or `FAIL name: why`; the run ends with `N passed, M failed` and
exits non-zero when anything failed. See interop/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import secrets
import signal
import struct
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from aioquic.tls import CipherSuite  # noqa: E402

import shoal_quic as q  # noqa: E402
import shoal_wire as w  # noqa: E402
from shoal_wire import Raw, control, pack, pack_map  # noqa: E402

# Section 6: code -> (name, reason phrase)
CODES = {
    0x00: ("NO_ERROR", "no error"),
    0x10: ("PROTOCOL_VIOLATION", "protocol violation"),
    0x11: ("MALFORMED_FRAME", "malformed frame"),
    0x12: ("FRAME_TOO_LARGE", "frame too large"),
    0x13: ("UNSUPPORTED_VERSION", "unsupported protocol version"),
    0x14: ("TIMEOUT", "timed out"),
    0x15: ("BAD_REQUEST", "bad request"),
    0x20: ("TOKEN_MALFORMED", "token malformed"),
    0x21: ("TOKEN_INVALID", "token invalid"),
    0x22: ("TOKEN_EXPIRED", "token expired"),
    0x23: ("TOKEN_UNKNOWN_EPOCH", "token epoch unknown"),
    0x24: ("TOKEN_WRONG_GROUP", "token for another group"),
    0x25: ("PROOF_INVALID", "attach proof invalid"),
    0x26: ("ATTACH_REPLAYED", "attach replayed"),
    0x27: ("NOT_BOUND", "session not bound"),
    0x28: ("BIND_INVALID", "bind invalid"),
    0x30: ("UNKNOWN_STREAM", "unknown stream"),
    0x31: ("OVER_QUOTA", "over quota"),
    0x32: ("NO_CAPACITY", "no capacity"),
    0x33: ("SEQ_UNAVAILABLE", "sequence unavailable"),
    0x34: ("SEQ_EXHAUSTED", "sequence exhausted"),
    0x40: ("GOING_AWAY", "going away"),
    0x41: ("SHARD_STOPPED", "shard stopped"),
    0x42: ("HEARTBEAT_TIMEOUT", "heartbeat timeout"),
    0x43: ("TOO_SLOW", "consumer too slow"),
    0x44: ("ENDPOINT_REMOVED", "endpoint removed"),
    0x50: ("INTERNAL", "internal error"),
}
C = {name: code for code, (name, _) in CODES.items()}


def cname(code):
    return f"{CODES.get(code, ('?',))[0]} 0x{code:x}"


FIN = object()  # in a list of frames to send: finish the send side


class Fail(Exception):
    pass


def need(cond, why):
    if not cond:
        raise Fail(why)


def unix_us():
    return time.time_ns() // 1000


def unix_ms():
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------------------------------------
# Client state


class Env:
    def __init__(self, a):
        host, port = a.hub.rsplit(":", 1)
        self.hub = (host, int(port))
        self.ca = a.ca
        self.cluster = a.cluster
        self.rate_hz = a.rate_hz
        self.chunk_bytes = a.chunk_bytes
        self.replay_window = a.replay_window
        self.hb = a.heartbeat_ms / 1000
        self.shoal_bin = a.shoal_bin
        self.small_hub = None
        if a.small_hub:
            h, p = a.small_hub.rsplit(":", 1)
            self.small_hub = (h, int(p))
        self.small_ttl = a.small_token_ttl
        self.drain_pid = a.drain_pid
        self.run_id = secrets.token_hex(3)
        self.period_us = w.synth_period_us(self.rate_hz)
        self.n = 0
        self.zero_rtt = {"offered": 0, "accepted": 0}  # shard attaches with a ticket

    def cid(self, tag):
        self.n += 1
        return f"py-{self.run_id}-{tag}-{self.n}"[:64]

    def live_seq(self):
        return w.synth_live_seq(unix_us(), self.rate_hz)


class Client:
    """A client identity: its id and the session tickets it holds (each ticket resumes once per
    endpoint, PROTOCOL.md section 1)."""

    def __init__(self, env: Env, tag: str, hub=None):
        self.env = env
        self.id = env.cid(tag)
        self.hub = hub or env.hub
        self.tickets: list[list] = []  # [ticket, set of endpoints it was used at]

    def add_ticket(self, t):
        self.tickets.append([t, set()])

    def take_ticket(self, endpoint):
        for entry in reversed(self.tickets):
            if endpoint not in entry[1] and entry[0].is_valid:
                entry[1].add(endpoint)
                return entry[0]
        return None


class Ctx:
    """Per check: the connections to close afterwards."""

    def __init__(self, env):
        self.env = env
        self.conns: list[q.Conn] = []
        self.tasks: list[asyncio.Task] = []
        self.notes: list[str] = []

    async def connect(self, addr, client: Client | None = None, **kw):
        sink = client.add_ticket if client is not None else None
        c = await q.connect(addr, cafile=self.env.ca, server_name=self.env.cluster,
                            ticket_sink=sink, **kw)
        self.conns.append(c)
        return c

    async def close(self):
        for t in self.tasks:
            t.cancel()
        for c in self.conns:
            await c.aclose()


# ---------------------------------------------------------------------------------------------
# Hub (section 3.1)


def stream_request(client_id, stream, role="subscribe", hints=None, **extra):
    fields = {"client_id": client_id, "stream": stream, "role": role}
    if hints is not None:
        fields["hints"] = hints
    fields.update(extra)
    return control("stream_request", fields)


async def hub_connect(ctx: Ctx, client: Client, *, wait=True, **kw) -> q.Conn:
    c = await ctx.connect(client.hub, client, **kw)
    if wait:
        hs = await c.wait_handshake(5)
        need(hs is not None, "hub handshake timed out")
        need(c.handshake is not None, f"hub handshake failed: {q.describe_close(c.terminated)}")
    return c


async def read_reply(c: q.Conn, sid, timeout=5.0):
    """Reads the hub's answer on a request stream until FIN: (msg_name, fields, chunks)."""
    first = await c.next_frame(sid, timeout)
    need(first[0] == "control", f"hub answer: {first!r:.200}")
    chunks = []
    while True:
        f = await c.next_frame(sid, timeout)
        if f[0] == "fin":
            break
        need(f[0] == "chunk", f"after {first[1]}: {f!r:.200}")
        chunks.append(f[1:])
    return first[1], first[2], chunks


async def request(c: q.Conn, client_id, stream, role="subscribe", hints=None, raw=None,
                  timeout=5.0):
    sid = c.new_bidi()
    c.send(sid, raw if raw is not None else stream_request(client_id, stream, role, hints),
           end=True)
    return await read_reply(c, sid, timeout)


def check_grant(g):
    need(isinstance(g.get("group"), int) and 0 <= g["group"] < 2**32, f"group {g.get('group')!r}")
    sh = g.get("shards")
    need(isinstance(sh, list) and sh, f"shards {sh!r}")
    for s in sh:
        need(isinstance(s, dict) and isinstance(s.get("id"), int), f"shard entry {s!r}")
        need(isinstance(s.get("addr"), str) and ":" in s["addr"], f"shard addr {s!r}")
    tok = g.get("token")
    need(isinstance(tok, bytes) and 108 <= len(tok) <= 171, f"token length {len(tok or b'')}")
    need(isinstance(g.get("session_secret"), bytes) and len(g["session_secret"]) == 32,
         "session_secret not 32 bytes")
    exp = g.get("expires_at_ms")
    need(isinstance(exp, int), f"expires_at_ms {exp!r}")


async def get_grant(ctx, client: Client, stream, role="subscribe", hints=None, conn=None):
    c = conn or await hub_connect(ctx, client)
    name, g, chunks = await request(c, client.id, stream, role, hints)
    need(name == "grant", f"expected grant, got {name} {g}")
    check_grant(g)
    return g, chunks, c


def shard_addr(g, i):
    host, port = g["shards"][i]["addr"].rsplit(":", 1)
    return (host, int(port))


# ---------------------------------------------------------------------------------------------
# Shard sessions (sections 3.2 .. 3.6)


class Session:
    def __init__(self, ctx, conn, sid, grant, idx):
        self.ctx, self.conn, self.sid, self.grant, self.idx = ctx, conn, sid, grant, idx
        self.attached = None
        self.zero_rtt_offered = False
        self.early_accepted = None
        self.retried_1rtt = False
        self.hb_task = None

    @property
    def secret(self):
        return self.grant["session_secret"]

    def send(self, data, end=False):
        self.conn.send(self.sid, data, end)

    async def frame(self, timeout=3.0):
        return await self.conn.next_frame(self.sid, timeout)

    def start_heartbeats(self):
        async def beat():
            while True:
                await asyncio.sleep(self.ctx.env.hb)
                if self.conn.terminated:
                    return
                try:
                    self.send(control("heartbeat", at_us=unix_us()))
                except Exception:
                    return
        self.hb_task = asyncio.ensure_future(beat())
        self.ctx.tasks.append(self.hb_task)

    async def bind(self):
        hs = await self.conn.wait_handshake(5)
        need(self.conn.handshake is not None, f"no handshake: {q.describe_close(self.conn.terminated)}")
        exp = self.conn.exporter(b"EXPORTER-shoal-bind", b"", 32)
        self.send(control("bind", mac=w.bind_mac(self.secret, exp)))
        f = await self.next_control(3)
        need(f[:2] == ("control", "bound"), f"bind answered {f!r:.200}")
        need(f[2] == {}, f"bound carries fields {f[2]!r}")

    async def next_control(self, timeout=3.0):
        """Next frame that is not a chunk or heartbeat."""
        while True:
            f = await self.frame(timeout)
            if f[0] == "chunk" or (f[0] == "control" and f[1] == "heartbeat"):
                continue
            return f


def attach_frame(grant, idx, nonce=None, token=None, proof=None):
    nonce = nonce if nonce is not None else secrets.token_bytes(16)
    sid_ = grant["shards"][idx]["id"]
    if proof is None:
        proof = w.attach_proof(grant["session_secret"], sid_, nonce)
    return control("attach", token=grant["token"] if token is None else token, nonce=nonce,
                   proof=proof)


def subscribe_frame(stream, from_seq=None, stream_end=False):
    f = {"stream": stream}
    if from_seq is not None:
        f["from_seq"] = from_seq
    if stream_end:
        f["stream_end"] = True
    return control("subscribe", f)


async def attach(ctx, client: Client, grant, idx=0, *, zero_rtt=True, flight=None,
                 subscribe=None, from_seq=None, expect=True, cipher_suites=None,
                 stream_id=0, addr=None, flight_end=False, stream_end=False) -> Session:
    """Attach to grant.shards[idx] (section 3.2). With zero_rtt, use an unused ticket and write
    the first flight as 0-RTT data; if the shard refuses early data, attach again with a fresh
    nonce after a full handshake (section 3.2 step 3). `flight` replaces the first flight's
    bytes; `expect=False` returns without waiting for `attached` (negative checks)."""
    addr = addr or shard_addr(grant, idx)

    def make_flight():
        if flight is not None:
            return flight() if callable(flight) else flight
        data = attach_frame(grant, idx)
        if subscribe is not None:
            data += subscribe_frame(subscribe, from_seq, stream_end)
        return data

    ticket = client.take_ticket(addr) if zero_rtt else None
    if ticket is not None and cipher_suites is not None and ticket.cipher_suite not in cipher_suites:
        ticket = None
    c = await ctx.connect(addr, client, ticket=ticket, cipher_suites=cipher_suites,
                          transmit=False)
    s = Session(ctx, c, stream_id, grant, idx)
    s.zero_rtt_offered = ticket is not None and ticket.max_early_data_size is not None
    if s.zero_rtt_offered:
        s.send(make_flight(), end=flight_end)  # 0-RTT data in the first flight
        await c.wait_handshake(5)
        s.early_accepted = bool(c.handshake and c.handshake.early_data_accepted)
        if expect and c.handshake is not None:
            ctx.env.zero_rtt["offered"] += 1
            ctx.env.zero_rtt["accepted"] += s.early_accepted
        if c.handshake is not None and not s.early_accepted and expect:
            # early data refused: the flight is lost; attach again with a fresh flight
            await c.aclose()
            c = await ctx.connect(addr, client, cipher_suites=cipher_suites)
            s.conn = c
            s.retried_1rtt = True
            await c.wait_handshake(5)
            need(c.handshake is not None, f"handshake: {q.describe_close(c.terminated)}")
            s.send(make_flight())
    else:
        c.transmit()
        await c.wait_handshake(5)
        need(c.handshake is not None, f"shard handshake: {q.describe_close(c.terminated)}")
        s.early_accepted = False
        if flight is not False:
            s.send(make_flight(), end=flight_end)
    if not expect:
        return s
    f = await s.frame(5)
    need(f[:2] == ("control", "attached"), f"expected attached, got {f!r:.300}")
    a = f[2]
    need(a.get("shard") == grant["shards"][idx]["id"],
         f"attached.shard {a.get('shard')} != {grant['shards'][idx]['id']}")
    need(isinstance(a.get("zero_rtt"), bool), f"attached.zero_rtt {a.get('zero_rtt')!r}")
    lp = a.get("load_permille")
    need(lp is None or (isinstance(lp, int) and lp >= 0), f"load_permille {lp!r}")
    s.attached = a
    return s


async def expect_close(conn: q.Conn, code, timeout=8.0, what=""):
    ev = await conn.wait_closed_ev(timeout)
    need(ev is not None, f"{what}expected close {cname(code)}, connection still open after "
                         f"{timeout:.0f}s")
    need(ev.frame_type is None, f"{what}expected application close {cname(code)}, got "
                                f"{q.describe_close(ev)}")
    need(ev.error_code == code, f"{what}expected {cname(code)}, got {q.describe_close(ev)}")
    phrase = CODES[code][1]
    need(ev.reason_phrase == phrase, f"{what}{cname(code)} with reason {ev.reason_phrase!r}, "
                                     f"expected {phrase!r}")
    return ev


class SynthVerifier:
    """Integrity and order of a synthetic stream (sections 3.3 and 7)."""

    def __init__(self, env, stream):
        self.env, self.stream = env, stream
        self.seed = w.synth_seed(stream)
        self.expected = None
        self.chunks = 0
        self.gaps = []
        self.heartbeats = 0
        self.first = None

    def feed(self, f):
        if f[0] == "chunk":
            seq, ts, payload = f[1:]
            need(len(payload) == self.env.chunk_bytes, f"payload {len(payload)} bytes")
            need(payload == w.synth_payload(self.seed, seq, len(payload)),
                 f"integrity failure at seq {seq}")
            need(ts == min(seq * self.env.period_us, w.M), f"timestamp {ts} for seq {seq}")
            if self.first is None:
                self.first = seq
            need(self.expected is None or seq == self.expected,
                 f"seq {seq}, expected {self.expected}")
            self.expected = seq + 1
            self.chunks += 1
        elif f[0] == "control" and f[1] == "gap":
            g = f[2]
            need(self.expected is None or g["from"] == self.expected,
                 f"gap {g} while expecting {self.expected}")
            need(g["to"] > g["from"], f"empty gap {g}")
            self.gaps.append((g["from"], g["to"]))
            self.expected = g["to"]
        elif f[0] == "control" and f[1] == "heartbeat":
            need(isinstance(f[2].get("at_us"), int), f"heartbeat {f[2]}")
            self.heartbeats += 1
        else:
            raise Fail(f"unexpected on subscription: {f!r:.200}")


async def collect(s: Session, v: SynthVerifier, n_chunks, timeout=5.0):
    deadline = time.monotonic() + timeout
    while v.chunks < n_chunks:
        left = deadline - time.monotonic()
        need(left > 0, f"only {v.chunks}/{n_chunks} chunks in {timeout}s")
        f = await s.frame(left)
        need(f[0] not in ("timeout", "closed", "fin", "error", "reset"),
             f"after {v.chunks} chunks: {f!r:.200}")
        v.feed(f)


# ---------------------------------------------------------------------------------------------
# Checks

CHECKS = []


def check(name, group="main", timeout=30):
    def deco(fn):
        CHECKS.append((name, group, timeout, fn))
        return fn
    return deco


def bad_frame_cases():
    """(name, bytes, code): frame-level errors of sections 2.1 and 2.3, sent as the first frame."""
    ok_body = pack({"heartbeat": {"at_us": 1}})
    return [
        ("bad_version", w.frame(1, ok_body, version=2), C["UNSUPPORTED_VERSION"]),
        ("version_0", w.frame(1, ok_body, version=0), C["UNSUPPORTED_VERSION"]),
        ("unknown_kind", w.frame(3, ok_body), C["MALFORMED_FRAME"]),
        ("length_below_2", struct.pack(">IBB", 1, 1, 1), C["MALFORMED_FRAME"]),
        # header only: the reader must refuse on the header, never wait for the body
        ("control_too_large", struct.pack(">IBB", 2 + 16384 + 1, 1, 1), C["FRAME_TOO_LARGE"]),
        ("chunk_too_large", struct.pack(">IBB", 2 + 1048576 + 24 + 1, 1, 2),
         C["FRAME_TOO_LARGE"]),
        ("bad_msgpack", w.frame(1, b"\xc1"), C["MALFORMED_FRAME"]),
        ("truncated_frame_fin", struct.pack(">IBB", 40, 1, 1) + b"\x81", C["MALFORMED_FRAME"]),
        ("noncanonical_chunk", w.frame(2, b"\x93\x05\x05\xc4\x01x"), C["MALFORMED_FRAME"]),
        ("chunk_seq_max", w.chunk(w.SEQ_MAX, 1, b"x"), C["SEQ_EXHAUSTED"]),
        ("chunk_payload_len_mismatch", w.frame(2, w.chunk_body(5, 5, b"abc")[:20]
                                            + struct.pack(">I", 4) + b"abc"),
         C["MALFORMED_FRAME"]),
        ("chunk_body_under_24", w.frame(2, w.chunk_body(5, 5, b"")[:23]), C["MALFORMED_FRAME"]),
        # header checks in the order version, length >= 2, kind, size (section 2.1)
        ("order_version_before_length", struct.pack(">IBB", 1, 7, 1), C["UNSUPPORTED_VERSION"]),
        ("order_version_before_size", struct.pack(">IBB", 1 << 30, 7, 1),
         C["UNSUPPORTED_VERSION"]),
        ("order_length_before_kind", struct.pack(">IBB", 1, 1, 9), C["MALFORMED_FRAME"]),
        ("order_kind_before_size", struct.pack(">IBB", 1 << 30, 1, 9), C["MALFORMED_FRAME"]),
    ]


def hub_strict_cases(cid):
    """stream_request encodings section 2.3 refuses (MALFORMED_FRAME)."""
    good = [("client_id", cid), ("stream", "synth/strict"), ("role", "subscribe")]

    def msg(items, name="stream_request"):
        return w.frame(1, pack_map([(name, Raw(pack_map(items)))]))

    def repl(k, v):
        return [(kk, v if kk == k else vv) for kk, vv in good]

    return [
        ("role_integer", msg(repl("role", 0))),
        ("role_map", msg(repl("role", {"subscribe": None}))),
        ("role_other_str", msg(repl("role", "watch"))),
        ("client_id_bin", msg(repl("client_id", cid.encode()))),
        ("stream_bin", msg(repl("stream", b"synth/strict"))),
        ("positional_array", w.frame(1, pack({"stream_request": [cid, "synth/x", "subscribe"]}))),
        ("map_two_entries", w.frame(1, pack_map([("stream_request", Raw(pack_map(good))),
                                                 ("heartbeat", {"at_us": 1})]))),
        ("integer_variant_key", w.frame(1, pack_map([(0, Raw(pack_map(good)))]))),
        ("bare_str", w.frame(1, pack("stream_request"))),
        ("unknown_message", msg(good, name="stream_requestz")),
        ("missing_field", msg(good[:2])),
        ("duplicate_field", msg(good + [("stream", "synth/other")])),
        ("bad_stream_name", msg(repl("stream", "synth/has space"))),
        ("stream_name_129", msg(repl("stream", "s" * 129))),
        ("stream_name_empty", msg(repl("stream", ""))),
        ("client_id_65", msg(repl("client_id", "c" * 65))),
        ("client_id_bad_char", msg(repl("client_id", "a+b"))),
        ("hints_array", msg(good + [("hints", [None, None, 5])])),
        ("bitrate_str", msg(good + [("hints", {"bitrate_kbps": "5"})])),
        ("bitrate_float", msg(good + [("hints", {"bitrate_kbps": 5.0})])),
        ("region_int", msg(good + [("hints", {"region": 5})])),
        ("invalid_utf8", msg(repl("stream", Raw(b"\xa2\xff\xfe")))),
    ]


# --- hub --------------------------------------------------------------------------------------


@check("hub.grant_synthetic")
async def _(ctx, env):
    cl = Client(env, "grant")
    before = unix_ms()
    g, chunks, c = await get_grant(ctx, cl, "synth/interop-grant")
    need(c.handshake.alpn_protocol == "shoal/1", f"ALPN {c.handshake.alpn_protocol}")
    ttl = g["expires_at_ms"] - before
    need(590_000 <= ttl <= 610_000, f"expires_at_ms - now = {ttl} ms, expected ~600 000")
    need(len(chunks) == 1, f"{len(chunks)} chunks after the grant, expected 1")
    seq, ts, payload = chunks[0]
    live = env.live_seq()
    need(abs(live - seq) <= 5, f"chunk seq {seq}, live_seq {live}")
    v = SynthVerifier(env, "synth/interop-grant")
    v.feed(("chunk", seq, ts, payload))
    return f"group {g['group']}, shards {[s['id'] for s in g['shards']]}, token {len(g['token'])} B"


@check("hub.grant_live_no_chunk")
async def _(ctx, env):
    cl = Client(env, "live")
    g, chunks, _ = await get_grant(ctx, cl, f"live/interop-{env.run_id}-grant")
    need(chunks == [], f"{len(chunks)} chunks after a live grant")
    need(len(g["shards"]) == 2, f"{len(g['shards'])} shards, expected grant_shards = 2")


@check("hub.session_tickets")
async def _(ctx, env):
    cl = Client(env, "tickets")
    c = await hub_connect(ctx, cl)
    await request(c, cl.id, "synth/interop-t")
    await c.until(lambda: len(c.tickets) >= 4, 2)
    need(len(c.tickets) == 4, f"{len(c.tickets)} tickets from the hub handshake, expected 4")
    for t in c.tickets:
        life = (t.not_valid_after - t.not_valid_before).total_seconds()
        need(life == 86400, f"ticket_lifetime {life}")
        need(t.max_early_data_size == 0xFFFFFFFF, f"max_early_data_size {t.max_early_data_size}")
    return f"suite {c.cipher_suite().name}"


@check("hub.concurrent_requests")
async def _(ctx, env):
    cl = Client(env, "conc")
    c = await hub_connect(ctx, cl)
    res = await asyncio.gather(*[request(c, cl.id, f"synth/interop-c{i}") for i in range(8)])
    need(all(r[0] == "grant" for r in res), f"answers {[r[0] for r in res]}")
    name, _, _ = await request(c, cl.id, "synth/interop-c-later")
    need(name == "grant", "a later request on the same connection")


@check("hub.empty_stream_ignored")
async def _(ctx, env):
    cl = Client(env, "empty")
    c = await hub_connect(ctx, cl)
    sid = c.new_bidi()
    c.send(sid, b"", end=True)
    name, _, _ = await request(c, cl.id, "synth/interop-e")
    need(name == "grant", f"got {name}")
    need(c.terminated is None, q.describe_close(c.terminated))


@check("hub.lenient_parts")
async def _(ctx, env):
    """Unknown fields are skipped, bytes after the value and after the frame are ignored, hints
    may be nil or partially nil, any integer form is accepted (section 2.3)."""
    cl = Client(env, "lenient")
    c = await hub_connect(ctx, cl)
    deep = {"x": [1, {"y": [b"z", None, 1.5, -7]}]}
    cases = {
        "unknown_field": control("stream_request", {"client_id": cl.id, "stream": "synth/l",
                                                    "role": "subscribe", "zzz": deep}),
        "hints_nil": w.frame(1, pack({"stream_request": {"client_id": cl.id, "stream": "synth/l",
                                                         "role": "subscribe", "hints": None}})),
        "hints_fields_nil": stream_request(cl.id, "synth/l", hints={"region": None,
                                                                    "device_class": None,
                                                                    "bitrate_kbps": None}),
        "bitrate_uint64_form": w.frame(1, pack_map([("stream_request", Raw(pack_map([
            ("client_id", cl.id), ("stream", "synth/l"), ("role", "subscribe"),
            ("hints", Raw(pack_map([("bitrate_kbps", Raw(b"\xcf" + struct.pack(">Q", 500)))])))
        ])))])),
        "bitrate_int8_form": w.frame(1, pack_map([("stream_request", Raw(pack_map([
            ("client_id", cl.id), ("stream", "synth/l"), ("role", "subscribe"),
            ("hints", Raw(pack_map([("bitrate_kbps", Raw(b"\xd0\x05"))])))])))])),
        "trailing_bytes_in_body": w.frame(1, pack({"stream_request": {
            "client_id": cl.id, "stream": "synth/l", "role": "subscribe"}}) + b"\xc1\xc1"),
        "frame_after_request": stream_request(cl.id, "synth/l") + b"\xff" * 20,
        "publish_role_live": stream_request(cl.id, f"live/interop-{env.run_id}-l", "publish"),
    }
    bad = []
    for k, raw in cases.items():
        name, f, _ = await request(c, cl.id, "", raw=raw)
        if name != "grant":
            bad.append(f"{k}: {name} {f}")
    need(not bad, "; ".join(bad))


@check("hub.reject_bad_request")
async def _(ctx, env):
    cl = Client(env, "reject")
    c = await hub_connect(ctx, cl)
    cases = {
        "bitrate_0": {"bitrate_kbps": 0},
        "bitrate_negative": {"bitrate_kbps": -5},
        "bitrate_10000001": {"bitrate_kbps": 10_000_001},
        "bitrate_2^40": {"bitrate_kbps": 2**40},
        "region_65_bytes": {"region": "r" * 65},
        "device_class_65_bytes": {"device_class": "d" * 65},
    }
    bad = []
    for k, hints in cases.items():
        name, f, chunks = await request(c, cl.id, "synth/interop-r", hints=hints)
        if name != "reject" or f.get("code") != C["BAD_REQUEST"] or not isinstance(
                f.get("reason"), str):
            bad.append(f"{k}: {name} {f}")
    name, f, _ = await request(c, cl.id, "synth/interop-r", "publish")
    if name != "reject" or f.get("code") != C["BAD_REQUEST"]:
        bad.append(f"publish on synth/: {name} {f}")
    name, f, _ = await request(c, cl.id, "synth/interop-r", hints={"bitrate_kbps": 10_000_000,
                                                                   "region": "r" * 64})
    if name != "grant":
        bad.append(f"in-range hints: {name} {f}")
    need(c.terminated is None, f"connection closed: {q.describe_close(c.terminated)}")
    need(not bad, "; ".join(bad))


@check("hub.zero_rtt_request")
async def _(ctx, env):
    cl = Client(env, "hub0rtt")
    c = await hub_connect(ctx, cl)
    await request(c, cl.id, "synth/interop-z")
    await c.until(lambda: len(c.tickets) >= 1, 2)
    await c.aclose()
    t = cl.take_ticket(cl.hub)
    need(t is not None, "no ticket")
    c2 = await ctx.connect(cl.hub, cl, ticket=t, transmit=False)
    sid = c2.new_bidi()
    c2.send(sid, stream_request(cl.id, "synth/interop-z"), end=True)
    await c2.wait_handshake(5)
    need(c2.handshake is not None, q.describe_close(c2.terminated))
    need(c2.handshake.session_resumed, "hub did not resume the session")
    need(c2.handshake.early_data_accepted, "hub refused early data")
    name, g, chunks = await read_reply(c2, sid)
    need(name == "grant" and len(chunks) == 1, f"{name}, {len(chunks)} chunks")


async def _hub_bad_first_frame(ctx, env, data, code, end=True):
    cl = Client(env, "hubbad")
    c = await hub_connect(ctx, cl)
    sid = c.new_bidi()
    c.send(sid, data, end=end)
    await expect_close(c, code)


def _register_hub_frame_checks():
    for name, data, code in bad_frame_cases():
        if name == "noncanonical_chunk":
            continue  # a chunk is not a stream_request either way; covered at the shard

        async def fn(ctx, env, data=data, code=code):
            await _hub_bad_first_frame(ctx, env, data, code)
        check(f"hub.close.{name}")(fn)

    async def not_request(ctx, env):
        await _hub_bad_first_frame(ctx, env, control("heartbeat", at_us=1),
                                   C["PROTOCOL_VIOLATION"])
    check("hub.close.first_frame_heartbeat")(not_request)

    async def attach_first(ctx, env):
        await _hub_bad_first_frame(ctx, env, control("attach", token=bytes(120), nonce=bytes(16),
                                                     proof=bytes(32)), C["PROTOCOL_VIOLATION"])
    check("hub.close.first_frame_attach")(attach_first)

    async def chunk_first(ctx, env):
        await _hub_bad_first_frame(ctx, env, w.chunk(5, 5, b"x"), C["PROTOCOL_VIOLATION"])
    check("hub.close.first_frame_chunk")(chunk_first)

    for name, data in hub_strict_cases("strict-client"):
        async def fn(ctx, env, data=data):
            await _hub_bad_first_frame(ctx, env, data, C["MALFORMED_FRAME"])
        check(f"hub.strict.{name}")(fn)


_register_hub_frame_checks()


@check("hub.timeout_no_stream", group="slow")
async def _(ctx, env):
    cl = Client(env, "hubto")
    c = await hub_connect(ctx, cl)
    t0 = time.monotonic()
    await expect_close(c, C["TIMEOUT"], timeout=8)
    dt = time.monotonic() - t0
    need(4.0 <= dt <= 7.0, f"closed after {dt:.1f}s, expected ~5s")


@check("hub.timeout_no_frame", group="slow")
async def _(ctx, env):
    cl = Client(env, "hubto2")
    c = await hub_connect(ctx, cl)
    sid = c.new_bidi()
    c.send(sid, b"\x00\x00")  # opens the stream, never completes a frame header
    t0 = time.monotonic()
    await expect_close(c, C["TIMEOUT"], timeout=8)
    dt = time.monotonic() - t0
    need(4.0 <= dt <= 7.0, f"closed after {dt:.1f}s, expected ~5s")


def check_transport_parameters(tp):
    """Section 1's table."""
    need(tp is not None, "no transport parameters seen")
    want = {
        "initial_max_streams_bidi": 64, "initial_max_streams_uni": 64,
        "initial_max_data": 2**62 - 1, "initial_max_stream_data_bidi_local": 1_250_000,
        "initial_max_stream_data_bidi_remote": 1_250_000,
        "initial_max_stream_data_uni": 1_250_000, "max_idle_timeout": 30_000,
        "max_udp_payload_size": 1472, "max_datagram_frame_size": 65535,
        "active_connection_id_limit": 5, "disable_active_migration": False,
    }
    bad = [f"{k} = {getattr(tp, k)!r} (doc: {v})" for k, v in want.items()
           if getattr(tp, k) != v]
    need(not bad, "; ".join(bad))


@check("hub.transport_parameters")
async def _(ctx, env):
    cl = Client(env, "tp")
    c = await hub_connect(ctx, cl)
    check_transport_parameters(c.peer_transport_parameters())


def score(*parts: bytes) -> int:
    """Section 8: u64be(SHA-256(len(p1):u32be | p1 | ...)[0..8])."""
    h = hashlib.sha256()
    for p in parts:
        h.update(struct.pack(">I", len(p)) + p)
    return int.from_bytes(h.digest()[:8], "big")


@check("hub.placement_live")
async def _(ctx, env):
    """Section 8: rendezvous hashing for live streams; subscribers' lists rotated."""
    pub = Client(env, "place")
    c = await hub_connect(ctx, pub)
    groups, bad = set(), []
    for i in range(12):
        stream = f"live/interop-{env.run_id}-place{i}"
        name, g, _ = await request(c, pub.id, stream, "publish")
        need(name == "grant", f"{name} {g}")
        groups.add(g["group"])
        ids = [s["id"] for s in g["shards"]]
        scores = [score(stream.encode(), struct.pack(">I", x)) for x in ids]
        if scores != sorted(scores, reverse=True):
            bad.append(f"{stream}: publisher shards {ids} not by score")
        sub = env.cid("placesub")
        name, gs, _ = await request(c, sub, stream)
        cnt = min(2, len(ids))
        k = score(sub.encode(), stream.encode()) % cnt
        want = ids[:cnt][k:] + ids[:cnt][:k] + ids[cnt:]
        got = [s["id"] for s in gs["shards"]]
        if gs["group"] != g["group"] or got != want:
            bad.append(f"{stream}: subscriber {sub} shards {got}, expected {want}")
        g["_stream"] = stream
    need(not bad, "; ".join(bad[:3]))
    # the group maximises score(stream, group_id) among the groups with headroom
    if len(groups) > 1:
        for i in range(12):
            stream = f"live/interop-{env.run_id}-place{i}"
            name, g, _ = await request(c, pub.id, stream, "publish")
            best = max(groups, key=lambda x: score(stream.encode(), struct.pack(">I", x)))
            if g["group"] != best:
                bad.append(f"{stream}: group {g['group']}, rendezvous says {best}")
    need(not bad, "; ".join(bad[:3]))
    return f"groups seen {sorted(groups)}"


@check("hub.control_frame_size_limit")
async def _(ctx, env):
    """A 16 384-byte control body is accepted; one byte more is FRAME_TOO_LARGE."""
    cl = Client(env, "size")
    c = await hub_connect(ctx, cl)

    def padded(total):
        base = {"client_id": cl.id, "stream": "synth/size", "role": "subscribe", "pad": ""}
        n = len(pack({"stream_request": base}))
        pad = total - n - 2  # str8 -> str16 header growth
        base["pad"] = "p" * pad
        body = pack({"stream_request": base})
        need(len(body) == total, f"pad arithmetic {len(body)}")
        return w.frame(1, body)

    name, _, _ = await request(c, cl.id, "", raw=padded(16384))
    need(name == "grant", f"16 384-byte body: {name}")
    sid = c.new_bidi()
    c.send(sid, padded(16385), end=True)
    await expect_close(c, C["FRAME_TOO_LARGE"])


# --- shard: attach and subscribe -------------------------------------------------------------


@check("shard.attach_0rtt_subscribe_synthetic")
async def _(ctx, env):
    cl = Client(env, "sub")
    stream = "synth/interop-sub"
    g, _, hub = await get_grant(ctx, cl, stream)
    await hub.until(lambda: len(hub.tickets) >= 4, 1)
    s = await attach(ctx, cl, g, 0, subscribe=stream)
    need(s.zero_rtt_offered, "no ticket to offer")
    need(s.early_accepted, "shard refused 0-RTT (ticket from the hub connection)")
    need(s.attached["zero_rtt"] is True, f"attached.zero_rtt {s.attached['zero_rtt']}")
    check_transport_parameters(s.conn.peer_transport_parameters())
    live = env.live_seq()
    v = SynthVerifier(env, stream)
    await collect(s, v, 60, timeout=5)
    need(v.first >= live - 3, f"first chunk {v.first}, live_seq at attach {live}")
    need(not v.gaps, f"gaps {v.gaps}")
    return (f"0-RTT accepted, attached {s.attached}, {v.chunks} chunks verified, "
            f"suite {s.conn.cipher_suite().name}")


@check("shard.attach_1rtt")
async def _(ctx, env):
    cl = Client(env, "sub1")
    stream = "synth/interop-sub1"
    g, _, _ = await get_grant(ctx, cl, stream)
    s = await attach(ctx, cl, g, 1, zero_rtt=False, subscribe=stream)
    need(s.attached["zero_rtt"] is False, f"attached.zero_rtt {s.attached['zero_rtt']}")
    v = SynthVerifier(env, stream)
    await collect(s, v, 20)


@check("shard.attach_0rtt_both_shards_and_ticket_reuse")
async def _(ctx, env):
    """Hub tickets resume once at each shard of the grant; a ticket spent at a shard is
    refused there (early data rejected, full handshake, fresh flight)."""
    cl = Client(env, "both")
    stream = "synth/interop-both"
    g, _, hub = await get_grant(ctx, cl, stream)
    await hub.until(lambda: len(hub.tickets) >= 4, 1)
    t = hub.tickets[-1]
    notes = []
    for idx in (0, 1):
        addr = shard_addr(g, idx)
        cl.tickets = [[t, set()]]
        s = await attach(ctx, cl, g, idx, subscribe=stream)
        need(s.early_accepted and s.attached["zero_rtt"],
             f"shards[{idx}]: 0-RTT with the same hub ticket refused")
        await s.conn.aclose()
        notes.append(f"shard {g['shards'][idx]['id']} 0-RTT ok")
    cl.tickets = [[t, set()]]
    s = await attach(ctx, cl, g, 0, subscribe=stream)
    env.zero_rtt["offered"] -= 1  # a deliberate reuse: not counted in the 0-RTT summary
    need(not s.early_accepted, "a ticket resumed twice at the same shard")
    need(s.retried_1rtt and s.attached["zero_rtt"] is False, "retry did not attach")
    return ", ".join(notes) + ", reuse refused"


@check("shard.tickets_follow_client")
async def _(ctx, env):
    """Tickets a shard issued are copied to the client's other granted shards and to the hub."""
    cl = Client(env, "follow")
    stream = "synth/interop-follow"
    g, _, hub = await get_grant(ctx, cl, stream)
    await hub.until(lambda: len(hub.tickets) >= 4, 1)
    s = await attach(ctx, cl, g, 0, subscribe=stream)
    await s.conn.until(lambda: len(s.conn.tickets) >= 1, 2)
    need(len(s.conn.tickets) == 1, f"{len(s.conn.tickets)} tickets from the shard, expected 1")
    shard_tickets = list(s.conn.tickets)
    await asyncio.sleep(0.3)  # the shard reports them, the hub copies them on
    tries = 0
    while True:  # the copy travels shard -> hub -> shard; an absent ticket is not spent
        tries += 1
        cl.tickets = [[shard_tickets[0], set()]]
        s2 = await attach(ctx, cl, g, 1, subscribe=stream)
        if s2.early_accepted or tries == 4:
            break
        await s2.conn.aclose()
        await asyncio.sleep(0.5)
    need(s2.early_accepted, "shards[0]'s ticket not accepted for 0-RTT at shards[1] (4 tries)")
    # The ticket of the second attach (shards[1]'s) resumes at the hub.
    await s2.conn.until(lambda: len(s2.conn.tickets) >= 1, 2)
    need(len(s2.conn.tickets) == 1, f"{len(s2.conn.tickets)} tickets from shards[1]")
    await asyncio.sleep(0.3)
    cl.tickets = [[s2.conn.tickets[0], set()]]
    t = cl.take_ticket(cl.hub)
    c = await ctx.connect(cl.hub, cl, ticket=t, transmit=False)
    sid = c.new_bidi()
    c.send(sid, stream_request(cl.id, stream), end=True)
    await c.wait_handshake(5)
    need(c.handshake is not None and c.handshake.early_data_accepted,
         "shard ticket not accepted for 0-RTT at the hub")
    name, _, _ = await read_reply(c, sid)
    need(name == "grant", name)


@check("shard.resume_from_seq")
async def _(ctx, env):
    cl = Client(env, "resume")
    stream = "synth/interop-resume"
    g, _, _ = await get_grant(ctx, cl, stream)
    start = env.live_seq() - 300
    s = await attach(ctx, cl, g, 0, subscribe=stream, from_seq=start)
    v = SynthVerifier(env, stream)
    await collect(s, v, 320, timeout=8)
    need(v.first == start, f"first chunk {v.first}, from_seq {start}")
    need(not v.gaps, f"gaps {v.gaps}")


@check("shard.resume_before_replay_window")
async def _(ctx, env):
    cl = Client(env, "resgap")
    stream = "synth/interop-resgap"
    g, _, _ = await get_grant(ctx, cl, stream)
    live0 = env.live_seq()
    start = live0 - env.replay_window - 1000
    s = await attach(ctx, cl, g, 0, subscribe=stream, from_seq=start)
    v = SynthVerifier(env, stream)
    f = await s.next_control(5)
    need(f[:2] == ("control", "gap"), f"expected a gap first, got {f!r:.200}")
    gap = f[2]
    live1 = env.live_seq()
    need(gap["from"] == start, f"gap.from {gap['from']} != from_seq {start}")
    need(live0 - env.replay_window - 3 <= gap["to"] <= live1 - env.replay_window + 3,
         f"gap.to {gap['to']}, expected last - replay_window = ~{live0 - env.replay_window}")
    v.expected = start
    v.feed(f)
    await collect(s, v, 50, timeout=8)
    need(v.first == gap["to"], f"first chunk {v.first}, gap.to {gap['to']}")
    return f"gap {gap['from']}..{gap['to']} (live {live0})"


@check("shard.from_seq_in_future")
async def _(ctx, env):
    cl = Client(env, "future")
    stream = "synth/interop-future"
    g, _, _ = await get_grant(ctx, cl, stream)
    start = env.live_seq() + 40
    s = await attach(ctx, cl, g, 0, subscribe=stream, from_seq=start)
    v = SynthVerifier(env, stream)
    await collect(s, v, 5, timeout=5)
    need(v.first == start, f"first chunk {v.first}, from_seq {start}")


@check("shard.from_seq_max_yields_nothing")
async def _(ctx, env):
    cl = Client(env, "fmax")
    stream = "synth/interop-fmax"
    g, _, _ = await get_grant(ctx, cl, stream)
    s = await attach(ctx, cl, g, 0, subscribe=stream, from_seq=w.SEQ_MAX)
    s.start_heartbeats()
    v = SynthVerifier(env, stream)
    end = time.monotonic() + 2.2
    while time.monotonic() < end:
        f = await s.frame(end - time.monotonic())
        if f[0] == "timeout":
            break
        v.feed(f)
    need(v.chunks == 0 and not v.gaps, f"{v.chunks} chunks, gaps {v.gaps}")
    need(v.heartbeats >= 2, f"{v.heartbeats} heartbeats from the idle shard in 2.2 s")
    return f"{v.heartbeats} heartbeats"


@check("shard.subscribe_lenient_encoding")
async def _(ctx, env):
    """from_seq in int64 form, an unknown nested field, trailing bytes (section 2.3)."""
    cl = Client(env, "lenient")
    stream = "synth/interop-lenient"
    g, _, _ = await get_grant(ctx, cl, stream)
    start = env.live_seq() - 20
    sub = w.frame(1, pack_map([("subscribe", Raw(pack_map([
        ("zz", {"a": [1, 2, {"b": None}]}), ("stream", stream),
        ("from_seq", Raw(b"\xd3" + struct.pack(">q", start)))])))]) + b"\xc0")
    s = await attach(ctx, cl, g, 0, flight=lambda: attach_frame(g, 0) + sub)
    v = SynthVerifier(env, stream)
    await collect(s, v, 25)
    need(v.first == start, f"first chunk {v.first}, from_seq {start}")
    # from_seq: nil means none: the newest chunk
    g2, _, _ = await get_grant(ctx, cl, stream)
    live = env.live_seq()
    s2 = await attach(ctx, cl, g2, 0, flight=lambda: attach_frame(g2, 0) + control(
        "subscribe", stream=stream, from_seq=None))
    v2 = SynthVerifier(env, stream)
    await collect(s2, v2, 3)
    need(live - 3 <= v2.first <= live + 3, f"from_seq nil: first {v2.first}, live {live}")


@check("shard.live_stream_unpublished_heartbeats_only")
async def _(ctx, env):
    cl = Client(env, "unpub")
    stream = f"live/interop-{env.run_id}-unpub"
    g, _, _ = await get_grant(ctx, cl, stream)
    s = await attach(ctx, cl, g, 0, subscribe=stream)
    s.start_heartbeats()
    end = time.monotonic() + 1.6
    n = 0
    while time.monotonic() < end:
        f = await s.frame(end - time.monotonic())
        if f[0] == "timeout":
            break
        need(f[:2] == ("control", "heartbeat"), f"got {f!r:.200}")
        n += 1
    need(n >= 2 and s.conn.terminated is None, f"{n} heartbeats, {q.describe_close(s.conn.terminated)}")


@check("shard.resume_on_live_stream_without_copy", group="slow")
async def _(ctx, env):
    """Section 8.1: from_seq on a live stream the shard holds no chunk of: UNKNOWN_STREAM after
    10 heartbeat intervals."""
    cl = Client(env, "nocopy")
    stream = f"live/interop-{env.run_id}-nocopy"
    g, _, _ = await get_grant(ctx, cl, stream)
    s = await attach(ctx, cl, g, 0, subscribe=stream, from_seq=12345)
    s.start_heartbeats()
    t0 = time.monotonic()
    await expect_close(s.conn, C["UNKNOWN_STREAM"], timeout=9)
    dt = time.monotonic() - t0
    need(10 * env.hb - 0.5 <= dt <= 10 * env.hb + 2, f"closed after {dt:.1f}s, expected ~{10 * env.hb}s")
    return f"after {dt:.1f}s"


@check("shard.heartbeats_keep_session")
async def _(ctx, env):
    cl = Client(env, "hb")
    g, _, _ = await get_grant(ctx, cl, "synth/interop-hb")
    s = await attach(ctx, cl, g, 0)  # attach only: heartbeats both ways
    s.start_heartbeats()
    t0 = time.monotonic()
    n = 0
    times = []
    while time.monotonic() - t0 < 3.5:
        f = await s.frame(3.5 - (time.monotonic() - t0))
        if f[0] == "timeout":
            break
        need(f[:2] == ("control", "heartbeat"), f"got {f!r:.200}")
        n += 1
        times.append(time.monotonic())
    need(s.conn.terminated is None, f"closed: {q.describe_close(s.conn.terminated)}")
    need(n >= 5, f"{n} shard heartbeats in 3.5 s, interval {env.hb}s")
    spacing = max(b - a for a, b in zip(times, times[1:])) if len(times) > 1 else 0
    need(spacing <= 2.5 * env.hb, f"shard silent for {spacing:.2f}s")
    return f"{n} heartbeats, longest silence {spacing:.2f}s"


@check("shard.heartbeat_timeout", group="slow")
async def _(ctx, env):
    cl = Client(env, "hbto")
    g, _, _ = await get_grant(ctx, cl, "synth/interop-hbto")
    s = await attach(ctx, cl, g, 0)  # and then silence
    t0 = time.monotonic()
    await expect_close(s.conn, C["HEARTBEAT_TIMEOUT"], timeout=6)
    dt = time.monotonic() - t0
    need(4 * env.hb <= dt <= 6 * env.hb + 0.5, f"closed after {dt:.2f}s")
    return f"after {dt:.2f}s"


@check("shard.fin_ends_session_no_error")
async def _(ctx, env):
    cl = Client(env, "fin")
    g, _, _ = await get_grant(ctx, cl, "synth/interop-fin")
    s = await attach(ctx, cl, g, 0, subscribe="synth/interop-fin")
    s.send(b"", end=True)
    await expect_close(s.conn, C["NO_ERROR"], timeout=3)


async def _shard_first_flight(ctx, env, flight, code, zero_rtt=False, tag="neg", idx=0,
                              grant=None, client=None, timeout=8.0, end=False):
    cl = client or Client(env, tag)
    g = grant
    if g is None:
        g, _, hub = await get_grant(ctx, cl, f"synth/interop-{tag}")
        if zero_rtt:
            await hub.until(lambda: len(hub.tickets) >= 4, 1)
    data = flight(g) if callable(flight) else flight
    s = await attach(ctx, cl, g, idx, zero_rtt=zero_rtt, flight=data, expect=False,
                     flight_end=end)
    if zero_rtt:
        need(s.zero_rtt_offered, "no ticket for 0-RTT")
    await expect_close(s.conn, code, timeout=timeout)
    if zero_rtt:
        need(s.conn.handshake is not None, "closed before the handshake completed")
    return s


def _register_shard_frame_checks():
    for name, data, code in bad_frame_cases():
        async def fn(ctx, env, data=data, code=code, end=name == "truncated_frame_fin"):
            await _shard_first_flight(ctx, env, data, code, end=end)
        check(f"shard.close.{name}")(fn)


_register_shard_frame_checks()


def tamper(tok: bytes, off: int, val: bytes) -> bytes:
    return tok[:off] + val + tok[off + len(val):]


def token_case(mod):
    def flight(g):
        tok = mod(g["token"], g)
        nonce = secrets.token_bytes(16)
        proof = w.attach_proof(g["session_secret"], g["shards"][0]["id"], nonce)
        if isinstance(tok, Raw):
            return w.frame(1, pack_map([("attach", Raw(pack_map(
                [("token", tok), ("nonce", nonce), ("proof", proof)])))]))
        return control("attach", token=tok, nonce=nonce, proof=proof)
    return flight


def attach_with(g, nonce_len=16, proof_shard=0):
    """An attach whose nonce has `nonce_len` bytes and whose proof is made (correctly, over that
    nonce) for grant.shards[proof_shard]."""
    nonce = secrets.token_bytes(nonce_len)
    return control("attach", token=g["token"], nonce=nonce,
                   proof=w.attach_proof(g["session_secret"], g["shards"][proof_shard]["id"], nonce))


SHARD_ADMISSION = [
    # (name, flight(grant), code, zero_rtt)
    ("first_frame_subscribe", lambda g: subscribe_frame("synth/x"), C["PROTOCOL_VIOLATION"], False),
    ("first_frame_heartbeat", lambda g: control("heartbeat", at_us=1), C["PROTOCOL_VIOLATION"],
     False),
    ("first_frame_chunk", lambda g: w.chunk(1, 1, b"x"), C["PROTOCOL_VIOLATION"], False),
    ("empty_first_stream", b"", C["PROTOCOL_VIOLATION"], False),
    ("token_as_str", token_case(lambda t, g: Raw(pack(t.hex()))), C["MALFORMED_FRAME"], False),
    ("token_as_int_array", token_case(lambda t, g: Raw(pack(list(t)))), C["MALFORMED_FRAME"],
     False),
    ("token_truncated", token_case(lambda t, g: t[:60]), C["TOKEN_MALFORMED"], False),
    ("token_107_bytes_passes_length", token_case(lambda t, g: t[:107]), C["TOKEN_INVALID"],
     False),
    ("token_106_bytes", token_case(lambda t, g: t[:106]), C["TOKEN_MALFORMED"], False),
    ("order_group_before_epoch", token_case(lambda t, g: tamper(
        t, 1, struct.pack(">II", struct.unpack(">I", t[1:5])[0] - 10, g["group"] + 7))),
     C["TOKEN_WRONG_GROUP"], False),
    ("order_epoch_before_auth", token_case(lambda t, g: tamper(tamper(
        t, 1, struct.pack(">I", struct.unpack(">I", t[1:5])[0] - 10)), 40, bytes([t[40] ^ 1]))),
     C["TOKEN_UNKNOWN_EPOCH"], False),
    ("order_token_before_proof", lambda g: attach_frame(
        g, 0, token=tamper(g["token"], 40, bytes([g["token"][40] ^ 1])),
        proof=secrets.token_bytes(32)), C["TOKEN_INVALID"], False),
    ("nonce_17_bytes", lambda g: attach_with(g, nonce_len=17),
     C["PROOF_INVALID"], False),
    ("token_too_long", token_case(lambda t, g: t + b"\0" * (172 - len(t))),
     C["TOKEN_MALFORMED"], False),
    ("token_bad_version", token_case(lambda t, g: tamper(t, 0, b"\x02")), C["TOKEN_MALFORMED"],
     False),
    ("token_wrong_group_header", token_case(
        lambda t, g: tamper(t, 5, struct.pack(">I", g["group"] + 7))), C["TOKEN_WRONG_GROUP"],
     False),
    ("token_unknown_epoch", token_case(
        lambda t, g: tamper(t, 1, struct.pack(">I", struct.unpack(">I", t[1:5])[0] - 10))),
     C["TOKEN_UNKNOWN_EPOCH"], False),
    ("token_forged_ciphertext", token_case(lambda t, g: tamper(t, 40, bytes([t[40] ^ 1]))),
     C["TOKEN_INVALID"], False),
    ("token_forged_tag_0rtt", token_case(lambda t, g: t[:-1] + bytes([t[-1] ^ 0x80])),
     C["TOKEN_INVALID"], True),
    ("token_forged_nonce", token_case(lambda t, g: tamper(t, 9, bytes([t[9] ^ 1]))),
     C["TOKEN_INVALID"], False),
    ("first_frame_stream_request", lambda g: stream_request("c", "synth/x"),
     C["PROTOCOL_VIOLATION"], False),
    ("nonce_as_str", lambda g: w.frame(1, pack({"attach": {
        "token": g["token"], "nonce": "0123456789abcdef", "proof": bytes(32)}})),
     C["MALFORMED_FRAME"], False),
    ("attach_missing_proof", lambda g: w.frame(1, pack({"attach": {
        "token": g["token"], "nonce": bytes(16)}})), C["MALFORMED_FRAME"], False),
    ("proof_wrong", lambda g: attach_frame(g, 0, proof=secrets.token_bytes(32)),
     C["PROOF_INVALID"], False),
    ("proof_wrong_0rtt", lambda g: attach_frame(g, 0, proof=secrets.token_bytes(32)),
     C["PROOF_INVALID"], True),
    ("proof_for_other_shard", lambda g: attach_with(g, proof_shard=1),
     C["PROOF_INVALID"], False),
    ("nonce_15_bytes", lambda g: attach_with(g, nonce_len=15),
     C["PROOF_INVALID"], False),
]


def _register_admission_checks():
    for name, flight, code, zr in SHARD_ADMISSION:
        async def fn(ctx, env, flight=flight, code=code, zr=zr, name=name):
            await _shard_first_flight(ctx, env, flight, code, zero_rtt=zr, tag=name[:20],
                                      end=name == "empty_first_stream")
        check(f"shard.admission.{name}")(fn)


_register_admission_checks()


@check("shard.admission.token_of_other_group")
async def _(ctx, env):
    cl = Client(env, "othergrp")
    c = await hub_connect(ctx, cl)
    grants = {}
    for i in range(40):
        name, g, _ = await request(c, cl.id, f"live/interop-{env.run_id}-grp{i}")
        need(name == "grant", f"{name} {g}")
        grants.setdefault(g["group"], g)
        if len(grants) >= 2:
            break
    need(len(grants) >= 2, f"all 40 live streams placed in group(s) {list(grants)}")
    (ga, a), (gb, b) = list(grants.items())[:2]
    # b's token at a's first shard, with a proof made for that shard
    addr = shard_addr(a, 0)
    nonce = secrets.token_bytes(16)
    flight = control("attach", token=b["token"], nonce=nonce,
                     proof=w.attach_proof(b["session_secret"], a["shards"][0]["id"], nonce))
    await _shard_first_flight(ctx, env, flight, C["TOKEN_WRONG_GROUP"], grant=a, client=cl)
    return f"group {gb} token at shard {a['shards'][0]['id']} (group {ga}), addr {addr}"


@check("shard.admission.attach_replayed")
async def _(ctx, env):
    cl = Client(env, "replay")
    g, _, _ = await get_grant(ctx, cl, "synth/interop-replay")
    flight = attach_frame(g, 0)
    s = await attach(ctx, cl, g, 0, zero_rtt=False, flight=flight)
    need(s.attached is not None, "first attach")
    s2 = await attach(ctx, cl, g, 0, zero_rtt=False, flight=flight, expect=False)
    await expect_close(s2.conn, C["ATTACH_REPLAYED"])
    s3 = await attach(ctx, cl, g, 0, zero_rtt=False)  # same token, fresh nonce: fine
    need(s3.attached is not None, "fresh nonce refused")


@check("shard.attach_timeout_no_stream", group="slow")
async def _(ctx, env):
    cl = Client(env, "atto")
    g, _, _ = await get_grant(ctx, cl, "synth/interop-atto")
    s = await attach(ctx, cl, g, 0, zero_rtt=False, flight=False, expect=False)
    t0 = time.monotonic()
    await expect_close(s.conn, C["TIMEOUT"], timeout=8)
    dt = time.monotonic() - t0
    need(4.0 <= dt <= 7.0, f"closed after {dt:.1f}s")


@check("shard.attach_on_stream_4_times_out", group="slow")
async def _(ctx, env):
    cl = Client(env, "att4")
    g, _, _ = await get_grant(ctx, cl, "synth/interop-att4")
    s = await attach(ctx, cl, g, 0, zero_rtt=False, flight=False, expect=False)
    s.conn.send(4, attach_frame(g, 0))
    await expect_close(s.conn, C["TIMEOUT"], timeout=8)


async def _after_attach(ctx, env, tag, frames, code, subscribe=None, bind=False, publish=None,
                        zero_rtt=False):
    cl = Client(env, tag)
    stream = subscribe or f"live/interop-{env.run_id}-{tag}"
    g, _, hub = await get_grant(ctx, cl, stream, "publish" if (bind or publish) else "subscribe")
    if zero_rtt:
        await hub.until(lambda: len(hub.tickets) >= 4, 1)
    s = await attach(ctx, cl, g, 0, zero_rtt=zero_rtt, subscribe=subscribe)
    if bind:
        await s.bind()
    if publish:
        s.send(control("publish", stream=publish))
    for f in frames:
        if f is FIN:
            s.send(b"", end=True)
        else:
            s.send(f(g) if callable(f) else f)
    await expect_close(s.conn, code)
    return s


AFTER_ADMISSION = [
    # (name, kwargs, frames, code)
    ("second_subscribe", dict(subscribe="synth/interop-2sub"),
     [subscribe_frame("synth/interop-2sub")], C["PROTOCOL_VIOLATION"]),
    ("second_attach", {}, [lambda g: attach_frame(g, 0)], C["PROTOCOL_VIOLATION"]),
    ("unexpected_grant_message", {}, [control("bound", {})], C["PROTOCOL_VIOLATION"]),
    ("subscribe_bad_stream_name", {}, [subscribe_frame("synth/bad name")], C["MALFORMED_FRAME"]),
    ("subscribe_from_seq_str", {}, [control("subscribe", stream="synth/x", from_seq="5")],
     C["MALFORMED_FRAME"]),
    ("subscribe_from_seq_negative", {}, [control("subscribe", stream="synth/x", from_seq=-1)],
     C["MALFORMED_FRAME"]),
    ("heartbeat_at_us_str", {}, [control("heartbeat", at_us="1")], C["MALFORMED_FRAME"]),
    ("unknown_message_after_attach", {}, [control("subscribez", stream="synth/x")],
     C["MALFORMED_FRAME"]),
    ("bad_version_after_attach", {}, [w.frame(1, pack({"heartbeat": {"at_us": 1}}), version=9)],
     C["UNSUPPORTED_VERSION"]),
    ("oversize_after_attach", {}, [struct.pack(">IBB", 16387, 1, 1)], C["FRAME_TOO_LARGE"]),
    ("truncated_after_attach", {}, [struct.pack(">IBB", 30, 1, 1) + b"\x81", FIN],
     C["MALFORMED_FRAME"]),
    ("publish_before_bind", {}, [lambda g: control("publish", stream="live/x")], C["NOT_BOUND"]),
    ("chunk_before_bind", {}, [w.chunk(1, 1, b"x")], C["NOT_BOUND"]),
    ("bind_wrong_mac", {}, [control("bind", mac=secrets.token_bytes(32))], C["BIND_INVALID"]),
    ("bind_wrong_mac_0rtt", dict(zero_rtt=True), [control("bind", mac=secrets.token_bytes(32))],
     C["BIND_INVALID"]),
    ("second_bind", dict(bind=True), [control("bind", mac=secrets.token_bytes(32))],
     C["PROTOCOL_VIOLATION"]),
    ("chunk_bound_not_publishing", dict(bind=True), [w.chunk(1, 1, b"x")],
     C["PROTOCOL_VIOLATION"]),
    ("publish_synthetic", dict(bind=True), [control("publish", stream="synth/interop-p")],
     C["UNKNOWN_STREAM"]),
    ("second_publish", dict(bind=True, publish="live/interop-2pub"),
     [control("publish", stream="live/interop-2pub")], C["UNKNOWN_STREAM"]),
    ("publish_chunk_seq_max", dict(bind=True, publish="live/interop-pmax"),
     [w.chunk(w.SEQ_MAX, 1, b"x")], C["SEQ_EXHAUSTED"]),
    ("publish_noncanonical_chunk", dict(bind=True, publish="live/interop-pnc"),
     [w.frame(2, b"\x93\x05\x05\xc4\x01x")], C["MALFORMED_FRAME"]),
]


def _register_after_checks():
    for name, kw, frames, code in AFTER_ADMISSION:
        async def fn(ctx, env, name=name, kw=kw, frames=frames, code=code):
            await _after_attach(ctx, env, name[:16], frames, code, **kw)
        check(f"shard.session.{name}")(fn)


_register_after_checks()


# --- bind and publish ------------------------------------------------------------------------


def _bind_check(suites, zero_rtt):
    async def fn(ctx, env):
        cl = Client(env, "bind")
        c = await hub_connect(ctx, cl, cipher_suites=suites)  # tickets of that suite
        g, _, _ = await get_grant(ctx, cl, f"live/interop-{env.run_id}-bind", "publish", conn=c)
        await c.until(lambda: len(c.tickets) >= 4, 1)
        s = await attach(ctx, cl, g, 0, zero_rtt=zero_rtt, cipher_suites=suites)
        if zero_rtt:
            need(s.early_accepted, "0-RTT refused")
        suite = s.conn.cipher_suite()
        need(suites is None or suite == suites[0], f"negotiated {suite}")
        await s.bind()
        return f"{suite.name}, exporter {s.conn._quic.tls.shoal_hash_name}" + (
            ", attach in 0-RTT" if zero_rtt else "")
    return fn


check("bind.default_suite_0rtt")(_bind_check(None, True))
check("bind.aes256_sha384")(_bind_check([CipherSuite.AES_256_GCM_SHA384], False))
check("bind.aes128_sha256")(_bind_check([CipherSuite.AES_128_GCM_SHA256], False))
check("bind.chacha20_sha256")(_bind_check([CipherSuite.CHACHA20_POLY1305_SHA256], False))


@check("bind.sha256_exporter_on_sha384_connection")
async def _(ctx, env):
    cl = Client(env, "bind256")
    g, _, _ = await get_grant(ctx, cl, f"live/interop-{env.run_id}-b256", "publish")
    s = await attach(ctx, cl, g, 0, zero_rtt=False,
                     cipher_suites=[CipherSuite.AES_256_GCM_SHA384])
    t = s.conn._quic.tls
    exp = w.tls_exporter("sha256", t.shoal_exporter_master_secret, b"EXPORTER-shoal-bind", b"", 32)
    s.send(control("bind", mac=w.bind_mac(g["session_secret"], exp)))
    await expect_close(s.conn, C["BIND_INVALID"])


async def publisher(ctx, env, stream, tag="pub"):
    cl = Client(env, tag)
    g, _, hub = await get_grant(ctx, cl, stream, "publish")
    await hub.until(lambda: len(hub.tickets) >= 4, 1)
    s = await attach(ctx, cl, g, 0)
    await s.bind()
    s.send(control("publish", stream=stream))
    s.start_heartbeats()
    return s


def live_payload(seq, n=200):
    return (f"interop {seq} ".encode() * (n // 10 + 1))[:n]


@check("publish.python_to_python")
async def _(ctx, env):
    stream = f"live/interop-{env.run_id}-pp"
    p = await publisher(ctx, env, stream)
    base = unix_us()
    sent = {}
    for i in range(10):
        sent[base + i] = live_payload(base + i)
        p.send(w.chunk(base + i, unix_us(), sent[base + i]))
    await asyncio.sleep(0.3)
    cl = Client(env, "sub")
    g, _, _ = await get_grant(ctx, cl, stream)
    s = await attach(ctx, cl, g, 0, subscribe=stream, from_seq=base)
    s.start_heartbeats()
    # then: a duplicate (dropped), a skipped sequence (a gap), more chunks
    p.send(w.chunk(base + 5, unix_us(), b"duplicate, must be dropped"))
    for i in list(range(10, 15)) + list(range(17, 20)):
        sent[base + i] = live_payload(base + i)
        p.send(w.chunk(base + i, unix_us(), sent[base + i]))
    got, gaps = {}, []
    deadline = time.monotonic() + 6
    while base + 19 not in got:
        need(time.monotonic() < deadline, f"got {len(got)} chunks, gaps {gaps}")
        f = await s.frame(deadline - time.monotonic())
        if f[0] == "chunk":
            seq, ts, payload = f[1:]
            need(seq not in got, f"duplicate seq {seq - base}")
            need(not got or seq > max(got), f"out of order {seq - base}")
            need(sent.get(seq) == payload, f"payload of seq +{seq - base} differs")
            got[seq] = payload
        elif f[:2] == ("control", "gap"):
            gaps.append((f[2]["from"] - base, f[2]["to"] - base))
        elif f[:2] == ("control", "heartbeat"):
            pass
        else:
            raise Fail(f"subscriber got {f!r:.200}")
    need(sorted(got) == sorted(sent), f"missing {sorted(set(sent) - set(got))}")
    need(gaps == [(15, 17)], f"gaps {gaps}, expected [(15, 17)] (relative)")
    return (f"publisher shard {p.attached['shard']} (0-RTT {p.early_accepted}), subscriber shard "
            f"{s.attached['shard']}, {len(got)} chunks, gap {gaps}")


@check("publish.stream_end")
async def _(ctx, env):
    """A publisher that ends its stream cleanly (FIN after its last chunk) ends the stream:
    a subscriber that asked for it (subscribe.stream_end) gets every chunk, then
    stream_end{last_seq} (sections 2.4, 3.6)."""
    stream = f"live/interop-{env.run_id}-end"
    p = await publisher(ctx, env, stream)
    base = unix_us()
    for i in range(3):
        p.send(w.chunk(base + i, unix_us(), live_payload(base + i)))
    await asyncio.sleep(0.3)
    cl = Client(env, "endsub")
    g, _, _ = await get_grant(ctx, cl, stream)
    s = await attach(ctx, cl, g, 0, subscribe=stream, from_seq=base, stream_end=True)
    s.start_heartbeats()
    if p.hb_task:
        p.hb_task.cancel()
    p.send(b"", end=True)
    got, end = [], None
    deadline = time.monotonic() + 6
    while end is None:
        need(time.monotonic() < deadline, f"no stream_end; got {len(got)} chunks")
        f = await s.frame(deadline - time.monotonic())
        if f[0] == "chunk":
            got.append(f[1] - base)
        elif f[:2] == ("control", "stream_end"):
            end = f[2]
        elif f[:2] in (("control", "heartbeat"), ("control", "gap")):
            pass
        else:
            raise Fail(f"subscriber got {f!r:.200}")
    need(got == [0, 1, 2], f"chunks {got} before the end")
    need(end == {"last_seq": base + 2}, f"stream_end {end}")
    return f"3 chunks, then stream_end {{last_seq: base + 2}} on shard {s.attached['shard']}"


@check("publish.max_chunk_size")
async def _(ctx, env):
    """A chunk body of 1 MiB + 24 bytes is accepted and delivered; one byte more is
    FRAME_TOO_LARGE (section 2.1)."""
    stream = f"live/interop-{env.run_id}-big"
    p = await publisher(ctx, env, stream)
    cl = Client(env, "bigsub")
    g, _, _ = await get_grant(ctx, cl, stream)
    s = await attach(ctx, cl, g, 0, subscribe=stream)
    s.start_heartbeats()
    await asyncio.sleep(0.3)
    seq = unix_us()
    big = secrets.token_bytes(1 << 20)
    p.send(w.chunk(seq, unix_us(), big))
    while True:
        f = await s.frame(8)
        if f[:2] == ("control", "heartbeat"):
            continue
        break
    need(f[0] == "chunk", f"subscriber got {f!r:.200}")
    need(f[1] == seq and f[3] == big, f"chunk seq {f[1]}, {len(f[3])} bytes")
    p.send(w.chunk(seq + 1, unix_us(), big + b"x"))
    await expect_close(p.conn, C["FRAME_TOO_LARGE"])


async def _run(cmd, timeout):
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        return None, out.decode(), err.decode()
    return proc.returncode, out.decode(), err.decode()


@check("publish.python_to_rust_subscriber")
async def _(ctx, env):
    need(env.shoal_bin, "no --shoal-bin")
    stream = f"live/interop-{env.run_id}-pr"
    p = await publisher(ctx, env, stream)
    hub = f"{env.hub[0]}:{env.hub[1]}"
    sub = asyncio.ensure_future(_run([env.shoal_bin, "subscribe", "--hub", hub, "--ca", env.ca,
                                      "--cluster", env.cluster, "--count", "30", "--seconds",
                                      "10", stream], 15))
    await asyncio.sleep(1.0)
    base = unix_us()
    for i in range(120):
        p.send(w.chunk(base + i, unix_us(), live_payload(base + i, 64)))
        await asyncio.sleep(0.02)
        if sub.done():
            break
    rc, out, err = await sub
    lines = [ln for ln in out.splitlines() if ln.startswith("seq=")]
    need(rc == 0, f"shoal subscribe rc {rc}: {err[-300:]}")
    need(len(lines) == 30, f"{len(lines)} chunks: {out[-300:]}")
    seqs = [int(ln.split()[0][4:]) for ln in lines]
    need(all(base <= x < base + 120 for x in seqs), f"seqs {seqs[:3]}..")
    need(seqs == list(range(seqs[0], seqs[0] + 30)), f"not consecutive: {seqs}")
    need(all("bytes=64" in ln for ln in lines), lines[0])
    return (err.strip().splitlines() or [""])[-1][-160:]


@check("publish.rust_to_python_subscriber")
async def _(ctx, env):
    need(env.shoal_bin, "no --shoal-bin")
    stream = f"live/interop-{env.run_id}-rp"
    cl = Client(env, "rsub")
    g, _, _ = await get_grant(ctx, cl, stream)
    s = await attach(ctx, cl, g, 0, subscribe=stream)
    s.start_heartbeats()
    hub = f"{env.hub[0]}:{env.hub[1]}"
    pub = asyncio.ensure_future(_run([env.shoal_bin, "publish", "--hub", hub, "--ca", env.ca,
                                      "--cluster", env.cluster, "--count", "40",
                                      "--rate", "100", "--size", "300", stream], 20))
    seqs = []
    deadline = time.monotonic() + 10
    while len(seqs) < 40 and time.monotonic() < deadline:
        f = await s.frame(deadline - time.monotonic())
        if f[0] == "chunk":
            seqs.append(f[1])
            need(len(f[3]) == 300, f"payload {len(f[3])} bytes")
        elif f[:2] == ("control", "heartbeat"):
            continue
        elif f[0] == "timeout":
            break
        else:
            raise Fail(f"got {f!r:.200}")
    rc, out, err = await pub
    need(rc == 0, f"shoal publish rc {rc}: {(err or out)[-300:]}")
    need(len(seqs) == 40, f"{len(seqs)} of 40 chunks")
    need(seqs == list(range(seqs[0], seqs[0] + 40)), f"not consecutive {seqs[:5]}")
    return f"40 chunks from shoal publish, seq {seqs[0]}.."


# --- a second cluster: quota, capacity, expiry (section 5) ------------------------------------


@check("small.over_quota_no_capacity_expired", group="small", timeout=40)
async def _(ctx, env):
    need(env.small_hub, "no --small-hub")
    a = Client(env, "qa", hub=env.small_hub)
    b = Client(env, "qb", hub=env.small_hub)
    ga, _, _ = await get_grant(ctx, a, "synth/interop-quota")
    gb, _, _ = await get_grant(ctx, b, "synth/interop-quota")
    sa = await attach(ctx, a, ga, 0, subscribe="synth/interop-quota")
    sa.start_heartbeats()
    sb = await attach(ctx, b, gb, 0, zero_rtt=False, expect=False)
    await expect_close(sb.conn, C["OVER_QUOTA"], what="second session: ")
    await asyncio.sleep(0.6)  # the shard's load report reaches the hub
    c = Client(env, "qc", hub=env.small_hub)
    hc = await hub_connect(ctx, c)
    name, f, _ = await request(hc, c.id, "synth/interop-quota")
    need(name == "reject" and f.get("code") == C["NO_CAPACITY"],
         f"request with the only shard full: {name} {f}")
    await sa.conn.aclose()
    wait = gb["expires_at_ms"] - unix_ms() + 300
    need(wait < env.small_ttl * 1000 + 1000, f"token expires in {wait} ms")
    await asyncio.sleep(max(wait, 0) / 1000)
    s2 = await attach(ctx, b, gb, 0, zero_rtt=False, expect=False)
    await expect_close(s2.conn, C["TOKEN_EXPIRED"], what="expired token: ")


# --- drain: go_away and the hub's GOING_AWAY (section 3.5), last ------------------------------


@check("drain.go_away", group="drain", timeout=20)
async def _(ctx, env):
    need(env.drain_pid, "no --drain-pid")
    cl = Client(env, "drain")
    stream = "synth/interop-drain"
    g, _, hub = await get_grant(ctx, cl, stream)
    await hub.until(lambda: len(hub.tickets) >= 4, 1)
    s = await attach(ctx, cl, g, 0, subscribe=stream)
    s.start_heartbeats()
    v = SynthVerifier(env, stream)
    await collect(s, v, 5)
    os.kill(env.drain_pid, signal.SIGTERM)
    t0 = time.monotonic()
    while True:
        f = await s.frame(5)
        if f[:2] == ("control", "go_away"):
            break
        need(f[0] == "chunk" or f[:2] == ("control", "heartbeat"), f"before go_away: {f!r:.200}")
        v.feed(f)
    ga = f[2]
    need(ga == {"code": 0x40, "grace_ms": 2000}, f"go_away {ga}")
    notes = [f"go_away {ga}"]
    # the hub closes its connections with GOING_AWAY
    await expect_close(hub, C["GOING_AWAY"], timeout=3, what="hub: ")
    # an attach (valid token, fresh nonce) to the draining shard is refused with GOING_AWAY
    s2 = await attach(ctx, cl, g, 0, zero_rtt=False, expect=False)
    await expect_close(s2.conn, C["GOING_AWAY"], timeout=3, what="attach while draining: ")
    # a shard of the grant that had no session stops at once: its endpoint refuses connections
    c3 = await ctx.connect(shard_addr(g, 1), cl)
    ev = await c3.wait_closed_ev(3)
    notes.append(f"idle shard {g['shards'][1]['id']}: {q.describe_close(ev)}")
    need(ev is not None and ev.frame_type is not None and ev.error_code == 0x2,
         f"attach at the idle draining shard {g['shards'][1]['id']}: {q.describe_close(ev)}, "
         "expected QUIC CONNECTION_REFUSED (0x2)")
    # the session is served until the grace period ends, then closed with GOING_AWAY
    n0 = v.chunks
    while True:
        f = await s.frame(5)
        if f[0] in ("closed", "timeout", "fin", "error", "reset"):
            break
        v.feed(f)
    dt = time.monotonic() - t0
    await expect_close(s.conn, C["GOING_AWAY"], timeout=0.1, what="session after grace: ")
    need(v.chunks - n0 >= 100, f"only {v.chunks - n0} chunks during the grace period")
    need(1.5 <= dt <= 3.5, f"session closed {dt:.2f}s after go_away, grace 2 s")
    notes.append(f"{v.chunks - n0} chunks served during grace, closed after {dt:.2f}s")
    return "; ".join(notes)


# ---------------------------------------------------------------------------------------------


async def run_one(env, name, timeout, fn):
    ctx = Ctx(env)
    try:
        note = await asyncio.wait_for(fn(ctx, env), timeout)
        return True, note
    except Fail as e:
        return False, str(e)
    except asyncio.TimeoutError:
        return False, f"check timed out after {timeout}s"
    except Exception as e:  # a bug in the client or an unexpected server answer
        return False, f"{type(e).__name__}: {e} " + traceback.format_exc(limit=3).replace(
            "\n", " | ")
    finally:
        await ctx.close()


async def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hub", default="127.0.0.1:4433")
    ap.add_argument("--ca", default=".shoal/ca.pem")
    ap.add_argument("--cluster", default="shoal.local")
    ap.add_argument("--rate-hz", type=int, default=100)
    ap.add_argument("--chunk-bytes", type=int, default=1024)
    ap.add_argument("--replay-window", type=int, default=30000)
    ap.add_argument("--heartbeat-ms", type=int, default=500)
    ap.add_argument("--shoal-bin", default=None, help="the shoal binary, for the Rust-peer checks")
    ap.add_argument("--small-hub", default=None,
                    help="hub of a cluster with 1 shard, max_sessions = 1 (quota, expiry)")
    ap.add_argument("--small-token-ttl", type=float, default=2.0)
    ap.add_argument("--drain-pid", type=int, default=None,
                    help="pid of `shoal up` serving --hub: the last check SIGTERMs it")
    ap.add_argument("--only", default=None, help="run only checks whose name contains this")
    ap.add_argument("-v", "--verbose", action="store_true", help="print notes of passing checks")
    a = ap.parse_args()
    env = Env(a)
    selected = [c for c in CHECKS if a.only is None or a.only in c[0]]
    passed = failed = 0

    def report(name, ok, note):
        nonlocal passed, failed
        if ok:
            passed += 1
            print(f"PASS {name}" + (f"  ({note})" if a.verbose and note else ""), flush=True)
        else:
            failed += 1
            print(f"FAIL {name}: {note}", flush=True)

    for name, group, timeout, fn in [c for c in selected if c[1] == "main"]:
        ok, note = await run_one(env, name, timeout, fn)
        report(name, ok, note)
    slow = [c for c in selected if c[1] in ("slow", "small")]
    results = await asyncio.gather(*[run_one(env, n, t, f) for n, _, t, f in slow])
    for (name, _, _, _), (ok, note) in zip(slow, results):
        report(name, ok, note)
    for name, group, timeout, fn in [c for c in selected if c[1] == "drain"]:
        ok, note = await run_one(env, name, timeout, fn)
        report(name, ok, note)
    z = env.zero_rtt
    print(f"0-RTT: {z['accepted']}/{z['offered']} shard attaches offered with a ticket were "
          "accepted as early data", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""aioquic glue for shoal: connections, frame streams, session tickets, 0-RTT and the TLS exporter.

The TLS exporter (RFC 8446 section 7.5) is not exposed by aioquic. We capture the
`exporter_master_secret` at the moment the client derives its application traffic secrets
(after the server Finished, when the key schedule holds the master secret and the transcript
hash covers ClientHello..server Finished) and compute exporters from it ourselves.
"""

from __future__ import annotations

import asyncio
import time

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic import tls

import shoal_wire as w

ALPN = "shoal/1"

# --- exporter capture ------------------------------------------------------------------------

_orig_setup = tls.Context._setup_traffic_protection


def _setup_traffic_protection(self, direction, epoch, label):
    if self._is_client and label == b"s ap traffic":
        # key_schedule.secret is the master secret; the hash covers CH..server Finished.
        ks = self.key_schedule
        self.shoal_exporter_master_secret = ks.derive_secret(b"exp master")
        self.shoal_hash_name = ks.algorithm.name  # "sha256" / "sha384"
        self.shoal_cipher_suite = ks.cipher_suite
    return _orig_setup(self, direction, epoch, label)


tls.Context._setup_traffic_protection = _setup_traffic_protection

# --- the server's transport parameters, as received ----------------------------------------

from aioquic.buffer import Buffer  # noqa: E402
from aioquic.quic.packet import pull_quic_transport_parameters  # noqa: E402

_orig_parse_tp = QuicConnection._parse_transport_parameters


def _parse_transport_parameters(self, data, from_session_ticket=False):
    if not from_session_ticket:
        self.shoal_peer_tp = pull_quic_transport_parameters(Buffer(data=data))
    return _orig_parse_tp(self, data, from_session_ticket)


QuicConnection._parse_transport_parameters = _parse_transport_parameters


class Closed(Exception):
    def __init__(self, ev: events.ConnectionTerminated):
        self.ev = ev
        super().__init__(describe_close(ev))


def describe_close(ev) -> str:
    if ev is None:
        return "not closed"
    kind = "application" if ev.frame_type is None else f"transport(frame 0x{ev.frame_type:x})"
    return f"{kind} close 0x{ev.error_code:x} {ev.reason_phrase!r}"


class StreamState:
    def __init__(self):
        self.reader = w.FrameReader()
        self.frames: list = []
        self.fin = False
        self.reset = None
        self.error = None


class Conn(QuicConnectionProtocol):
    def __init__(self, quic, **kw):
        super().__init__(quic, **kw)
        self.streams: dict[int, StreamState] = {}
        self.terminated: events.ConnectionTerminated | None = None
        self.handshake: events.HandshakeCompleted | None = None
        self.stop_sending: list = []
        self._waiters: list[asyncio.Future] = []
        self.tickets: list[tls.SessionTicket] = []
        self.ticket_sink = None
        self.opened_at = time.monotonic()
        self.udp = None

    # events
    def quic_event_received(self, ev):
        if isinstance(ev, events.StreamDataReceived):
            st = self.streams.setdefault(ev.stream_id, StreamState())
            if st.error is None:
                st.reader.feed(ev.data)
                try:
                    while True:
                        f = st.reader.next()
                        if f is None:
                            break
                        st.frames.append(f)
                except w.FrameError as e:
                    st.error = str(e)
            if ev.end_stream:
                st.fin = True
                if st.reader.pending() and st.error is None:
                    st.error = "stream ended inside a frame"
        elif isinstance(ev, events.StreamReset):
            self.streams.setdefault(ev.stream_id, StreamState()).reset = ev.error_code
        elif isinstance(ev, events.StopSendingReceived):
            self.stop_sending.append((ev.stream_id, ev.error_code))
        elif isinstance(ev, events.ConnectionTerminated):
            if self.terminated is None:
                self.terminated = ev
        elif isinstance(ev, events.HandshakeCompleted):
            self.handshake = ev
        self._wake()

    def connection_lost(self, exc):
        super().connection_lost(exc)
        self._wake()

    def _wake(self):
        ws, self._waiters = self._waiters, []
        for f in ws:
            if not f.done():
                f.set_result(None)

    async def until(self, pred, timeout: float):
        """Wait until pred() is truthy; returns its value, or None at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            r = pred()
            if r:
                return r
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait_for(fut, min(left, 0.25))
            except asyncio.TimeoutError:
                pass

    # sending
    def send(self, sid: int, data: bytes, end: bool = False):
        self._quic.send_stream_data(sid, data, end)
        self.transmit()

    def new_bidi(self) -> int:
        return self._quic.get_next_available_stream_id(is_unidirectional=False)

    def close_app(self, code: int = 0, reason: str = ""):
        if self.terminated is None:
            self._quic.close(error_code=code, reason_phrase=reason)
            self.transmit()

    # receiving
    async def next_frame(self, sid: int, timeout: float):
        """The next frame on `sid`: a frame tuple, ('fin',), ('error', why), ('closed', ev) or
        ('timeout',)."""
        st = self.streams.setdefault(sid, StreamState())

        def ready():
            return st.frames or st.error or st.fin or st.reset is not None or self.terminated

        await self.until(ready, timeout)
        if st.frames:
            return st.frames.pop(0)
        if st.error:
            return ("error", st.error)
        if st.fin:
            return ("fin",)
        if st.reset is not None:
            return ("reset", st.reset)
        if self.terminated:
            return ("closed", self.terminated)
        return ("timeout",)

    async def wait_handshake(self, timeout: float):
        return await self.until(lambda: self.handshake or self.terminated, timeout)

    async def wait_closed_ev(self, timeout: float):
        return await self.until(lambda: self.terminated, timeout)

    def exporter(self, label: bytes, context: bytes, length: int) -> bytes:
        t = self._quic.tls
        return w.tls_exporter(t.shoal_hash_name, t.shoal_exporter_master_secret, label, context,
                              length)

    def peer_transport_parameters(self):
        return getattr(self._quic, "shoal_peer_tp", None)

    def cipher_suite(self):
        return getattr(self._quic.tls, "shoal_cipher_suite", None)

    async def aclose(self):
        try:
            self.close_app(0, "")
            await asyncio.wait_for(self._closed.wait(), 1.0)
        except (asyncio.TimeoutError, Exception):
            pass
        if self.udp is not None:
            self.udp.close()


async def connect(addr: tuple[str, int], *, cafile: str, server_name: str,
                  ticket: tls.SessionTicket | None = None, cipher_suites=None,
                  ticket_sink=None, transmit: bool = True) -> Conn:
    """Open a QUIC connection (not waiting for the handshake). With `transmit=False` nothing is
    sent until the caller writes stream data (so the first flight carries it as 0-RTT data)."""
    cfg = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], server_name=server_name,
                            idle_timeout=30.0)
    cfg.load_verify_locations(cafile=cafile)
    if cipher_suites:
        cfg.cipher_suites = cipher_suites
    if ticket is not None:
        cfg.session_ticket = ticket
    holder = {}

    def on_ticket(t):
        c = holder.get("conn")
        if c is not None:
            c.tickets.append(t)
            if c.ticket_sink is not None:
                c.ticket_sink(t)

    quic = QuicConnection(configuration=cfg, session_ticket_handler=on_ticket)
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: Conn(quic), local_addr=("127.0.0.1", 0))
    proto.udp = transport
    proto.ticket_sink = ticket_sink
    holder["conn"] = proto
    proto.connect(addr, transmit=transmit)
    return proto

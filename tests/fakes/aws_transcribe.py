"""A local fake of Amazon Transcribe streaming, speaking the protocol the official
``amazon-transcribe`` SDK speaks: HTTP/2 (``h2``) over TLS with ALPN, on 127.0.0.1,
with a self-signed certificate the client is told to trust (``AWS_CA_BUNDLE``).

The request: ``POST /stream-transcription`` with the settings in
``x-amzn-transcribe-*`` headers, signed with SigV4 (``Authorization``, ``x-amz-date``;
the fake recomputes the signature with the secret it was given). The body: an AWS
event stream of envelopes, each carrying ``:date`` and ``:chunk-signature`` headers
(each signature chained to the previous one, starting from the request's: recomputed
too) and, as its payload, an ``AudioEvent`` message (``:message-type`` event,
``:event-type`` AudioEvent, the PCM bytes as payload); an envelope with an empty
payload ends the stream. Framing is decoded with botocore's event-stream parser (its
prelude and message CRCs checked), independently of the SDK's encoder.

The answer: status 200 with the settings echoed in headers, then an event stream of
``TranscriptEvent`` messages (JSON ``{"Transcript": {"Results": [...]}}``): a partial
result while audio arrives, then the final results scripted with :meth:`answer`, once
the client ends its stream. Digital silence (every sample 0) gets no words, whatever
the script says. :meth:`fail` answers the next requests with an HTTP error
(``x-amzn-errortype`` + JSON body, as AWS does); :meth:`fail_in_stream` with an
exception event after the audio. Everything received is recorded in :attr:`streams`.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import ipaddress
import json
import re
import ssl
import struct
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
from botocore.eventstream import EventStreamBuffer, EventStreamMessage
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<signed>[^,]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)


@dataclass
class Said:
    """One final result the fake answers with."""

    text: str
    language_code: str = "es-ES"
    confidence: float = 0.9


@dataclass
class Stream:
    """One ``StartStreamTranscription`` as the fake received it."""

    headers: dict[str, str]
    access_key: str = ""
    region: str = ""
    signature_ok: bool = False
    audio_events: int = 0
    audio_bytes: int = 0
    peak: int = 0  # largest absolute 16-bit sample
    chunk_signatures_ok: bool = True
    ended: bool = False  # the empty envelope that ends the stream arrived
    event_types: set[str] = field(default_factory=set)

    def header(self, name: str) -> str:
        return self.headers.get(f"x-amzn-transcribe-{name}", "")

    @property
    def language_options(self) -> list[str]:
        value = self.header("language-options")
        return value.split(",") if value else []

    @property
    def sample_rate(self) -> int:
        return int(self.header("sample-rate") or 0)


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = _hmac(("AWS4" + secret).encode(), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return key


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost (its own CA) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "habla transcribe fake")])
    now = datetime.datetime.now(datetime.timezone.utc)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "transcribe-fake.pem", directory / "transcribe-fake.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def event_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message with string headers (prelude, headers, payload, CRCs)."""
    encoded = b""
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        encoded += struct.pack("B", len(raw_name)) + raw_name
        encoded += b"\x07" + struct.pack(">H", len(raw_value)) + raw_value  # 7: string
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", _crc(prelude))
    body = prelude + encoded + payload
    return body + struct.pack(">I", _crc(body))


def _crc(data: bytes) -> int:
    import binascii

    return binascii.crc32(data) & 0xFFFFFFFF


class FakeTranscribe:
    def __init__(
        self,
        access_key: str = "AKIDHABLAFAKE",
        secret_key: str = "habla-fake-secret",
        region: str = "eu-west-1",
    ) -> None:
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        self.streams: list[Stream] = []
        self._script: list[list[Said]] = []
        self._failures: list[tuple[int, str, str]] = []
        self._stream_failures: list[tuple[str, str]] = []
        self._server: asyncio.AbstractServer | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="habla-transcribe-")
        self.ca_file = ""
        self.url = ""

    async def start(self) -> str:
        cert, key = self_signed(Path(self._dir.name))
        self.ca_file = str(cert)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        context.set_alpn_protocols(["h2"])
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0, ssl=context)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"https://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._dir.cleanup()

    # ----------------------------------------------------------------- scripting

    def answer(self, *said: Said | str) -> None:
        """The final results of the next stream (one per item)."""
        self._script.append([s if isinstance(s, Said) else Said(s) for s in said])

    def fail(self, status: int, error_type: str, message: str = "scripted failure") -> None:
        """Answer the next request with this HTTP error instead of a stream."""
        self._failures.append((status, error_type, message))

    def fail_in_stream(self, exception_type: str, message: str = "scripted failure") -> None:
        """Answer the next stream with an exception event once its audio has arrived."""
        self._stream_failures.append((exception_type, message))

    # ----------------------------------------------------------------- protocol

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        states: dict[int, _State] = {}
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        state = self._request(conn, event)
                        if state is not None:
                            states[event.stream_id] = state
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                        if event.stream_id in states:
                            self._audio(conn, event.stream_id, states[event.stream_id], event.data)
                    elif isinstance(event, h2.events.StreamEnded):
                        if event.stream_id in states:
                            self._finish(conn, event.stream_id, states.pop(event.stream_id))
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        return
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def _request(self, conn: h2.connection.H2Connection, event: Any) -> _State | None:
        headers = {str(k): str(v) for k, v in event.headers}
        stream = Stream(headers=headers)
        self.streams.append(stream)
        sid = event.stream_id
        auth = _AUTH.match(headers.get("authorization", ""))
        if auth:
            stream.access_key, stream.region = auth["key"], auth["region"]
            stream.signature_ok = auth["signature"] == self._signature(headers, auth)
        if headers.get(":path") != "/stream-transcription" or headers.get(":method") != "POST":
            self._error(conn, sid, 404, "UnknownOperationException", "no such operation")
            return None
        if not auth or auth["service"] != "transcribe" or stream.access_key != self.access_key:
            self._error(
                conn,
                sid,
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
            return None
        if not stream.signature_ok or stream.region != self.region:
            self._error(
                conn,
                sid,
                403,
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.",
            )
            return None
        if self._failures:
            self._error(conn, sid, *self._failures.pop(0))
            return None
        problem = self._validate(stream)
        if problem:
            self._error(conn, sid, 400, "BadRequestException", problem)
            return None
        echo = [
            (name, value)
            for name, value in headers.items()
            if name.startswith("x-amzn-transcribe-")
        ]
        session = str(uuid.uuid4())
        conn.send_headers(
            sid,
            [
                (":status", "200"),
                ("content-type", "application/vnd.amazon.eventstream"),
                ("x-amzn-request-id", str(uuid.uuid4())),
                ("x-amzn-transcribe-session-id", session),
                *echo,
            ],
        )
        return _State(stream, auth["signature"], auth["date"])

    def _validate(self, stream: Stream) -> str:
        """What the real service refuses at the start of a stream."""
        if stream.header("media-encoding") not in ("pcm", "ogg-opus", "flac"):
            return "media-encoding must be pcm, ogg-opus or flac"
        if not 8000 <= stream.sample_rate <= 48000:
            return "sample-rate must be between 8000 and 48000"
        identify = stream.header("identify-language").lower() == "true"
        if identify == bool(stream.header("language-code")):
            return "give either a language-code or identify-language"
        if identify:
            options = stream.language_options
            if len(options) < 2:
                return "identify-language needs at least two language-options"
            if len({o.split("-")[0] for o in options}) != len(options):
                return "language-options: one dialect per language"
            preferred = stream.header("preferred-language")
            if preferred and preferred not in options:
                return "preferred-language must be one of the language-options"
        return ""

    def _signature(self, headers: dict[str, str], auth: Any) -> str:
        """SigV4 of the request as the service computes it (empty payload hash: the
        body is an event stream, signed event by event)."""
        values = {**headers, "host": headers.get(":authority", "")}
        signed = auth["signed"].split(";")
        canonical_headers = "".join(f"{h}:{values.get(h, '').strip()}\n" for h in signed)
        canonical = "\n".join(
            [
                headers.get(":method", ""),
                headers.get(":path", "").split("?", 1)[0],
                "",
                canonical_headers,
                auth["signed"],
                EMPTY_SHA256,
            ]
        )
        scope = f"{auth['date']}/{auth['region']}/{auth['service']}/aws4_request"
        to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256",
                headers.get("x-amz-date", ""),
                scope,
                hashlib.sha256(canonical.encode()).hexdigest(),
            ]
        )
        key = signing_key(self.secret_key, auth["date"], auth["region"], auth["service"])
        return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()

    def _audio(
        self, conn: h2.connection.H2Connection, sid: int, state: _State, data: bytes
    ) -> None:
        state.raw += data
        while len(state.raw) >= 12:
            total, headers_length = struct.unpack_from(">II", state.raw)
            if len(state.raw) < total:
                return
            frame, state.raw = state.raw[:total], state.raw[total:]
            envelope = _decode(frame)
            self._check_chunk(state, frame[12 : 12 + headers_length], envelope)
            if not envelope.payload:
                state.stream.ended = True
                continue
            inner = _decode(envelope.payload)
            event_type = str(inner.headers.get(":event-type", ""))
            state.stream.event_types.add(event_type)
            if event_type == "AudioEvent":
                audio = inner.payload
                state.stream.audio_events += 1
                state.stream.audio_bytes += len(audio)
                if len(audio) >= 2:
                    samples = memoryview(audio[: len(audio) // 2 * 2]).cast("h")
                    state.stream.peak = max(state.stream.peak, max(abs(s) for s in samples))
                if state.stream.audio_events == 1:  # a partial result, as the service sends
                    self._send_results(conn, sid, [_result("", "", 0.0, partial=True)])

    def _check_chunk(self, state: _State, raw_headers: bytes, envelope: EventStreamMessage) -> None:
        """Recompute the envelope's ``:chunk-signature``, chained to the previous one."""
        signature = envelope.headers.get(":chunk-signature")
        date = envelope.headers.get(":date")
        if not isinstance(signature, bytes) or date is None:
            state.stream.chunk_signatures_ok = False
            return
        when = datetime.datetime.fromtimestamp(int(date) / 1000, datetime.timezone.utc)
        timestamp = when.strftime("%Y%m%dT%H%M%SZ")
        # the signed headers are the envelope's own minus the signature: only :date
        signed_headers = raw_headers[: raw_headers.find(b"\x10:chunk-signature")]
        if b":chunk-signature" not in raw_headers or not signed_headers:
            signed_headers = raw_headers
        scope = f"{timestamp[:8]}/{self.region}/transcribe/aws4_request"
        to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256-PAYLOAD",
                timestamp,
                scope,
                state.prior,
                hashlib.sha256(signed_headers).hexdigest(),
                hashlib.sha256(envelope.payload).hexdigest(),
            ]
        )
        key = signing_key(self.secret_key, timestamp[:8], self.region, "transcribe")
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).digest()
        if expected != signature:
            state.stream.chunk_signatures_ok = False
        state.prior = signature.hex()

    def _finish(self, conn: h2.connection.H2Connection, sid: int, state: _State) -> None:
        stream = state.stream
        if not stream.ended or not stream.audio_events:
            self._exception(conn, sid, "BadRequestException", "the stream ended without audio")
            return
        if self._stream_failures:
            self._exception(conn, sid, *self._stream_failures.pop(0))
            return
        script = self._script.pop(0) if self._script else []
        if stream.peak == 0:  # digital silence: nothing is heard
            script = []
        fixed = stream.header("language-code")
        options = stream.language_options
        results = []
        for n, said in enumerate(script):
            language = fixed or (said.language_code if said.language_code in options else "")
            language = language or (options[0] if options else "")
            results.append(_result(said.text, language, said.confidence, n=n))
        if results:
            self._send_results(conn, sid, results)
        conn.send_data(sid, b"", end_stream=True)

    def _send_results(self, conn: h2.connection.H2Connection, sid: int, results: list[Any]) -> None:
        payload = json.dumps({"Transcript": {"Results": results}}).encode()
        headers = {
            ":message-type": "event",
            ":event-type": "TranscriptEvent",
            ":content-type": "application/json",
        }
        conn.send_data(sid, event_message(headers, payload))

    def _exception(
        self, conn: h2.connection.H2Connection, sid: int, kind: str, message: str
    ) -> None:
        headers = {
            ":message-type": "exception",
            ":exception-type": kind,
            ":content-type": "application/json",
        }
        payload = json.dumps({"Message": message}).encode()
        conn.send_data(sid, event_message(headers, payload), end_stream=True)

    def _error(
        self, conn: h2.connection.H2Connection, sid: int, status: int, kind: str, message: str
    ) -> None:
        body = json.dumps({"Message": message}).encode()
        conn.send_headers(
            sid,
            [
                (":status", str(status)),
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amzn-errortype", f"{kind}:http://internal.amazon.com/coral/"),
                ("content-length", str(len(body))),
            ],
        )
        conn.send_data(sid, body, end_stream=True)


@dataclass
class _State:
    stream: Stream
    prior: str  # the previous signature, hex: the request's, then each envelope's
    date: str
    raw: bytes = b""


def _decode(frame: bytes) -> EventStreamMessage:
    """One whole event-stream message, its CRCs checked (botocore's parser)."""
    buffer = EventStreamBuffer()
    buffer.add_data(frame)
    messages = list(buffer)
    if len(messages) != 1:
        raise ValueError(f"expected one event-stream message, got {len(messages)}")
    return messages[0]


def _result(
    text: str, language: str, confidence: float, *, n: int = 0, partial: bool = False
) -> Any:
    words = text.split()
    step = 0.4
    items = [
        {
            "StartTime": round(i * step, 3),
            "EndTime": round((i + 1) * step, 3),
            "Type": "pronunciation",
            "Content": word.strip(".,;:!?¿¡"),
            "VocabularyFilterMatch": False,
            "Confidence": confidence,
            "Stable": not partial,
        }
        for i, word in enumerate(words)
    ]
    result: dict[str, Any] = {
        "ResultId": str(uuid.uuid4()),
        "StartTime": 0.0,
        "EndTime": round(len(words) * step, 3),
        "IsPartial": partial,
        "Alternatives": [{"Transcript": text, "Items": items}],
        "ChannelId": "ch_0",
    }
    if language:
        result["LanguageCode"] = language
        result["LanguageIdentification"] = [{"LanguageCode": language, "Score": 0.95}]
    if n:
        result["StartTime"] = float(n)
    return result

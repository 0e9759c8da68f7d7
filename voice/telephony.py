"""Phone audio for Twilio Media Streams: 8 kHz μ-law in and out, 20 ms frames.

Twilio sends the caller's audio as base64 μ-law (G.711), 8 kHz mono, in 20 ms frames
(160 bytes), and plays back ``media`` messages in the same format. The speech stack
works on 16 kHz PCM (``voice.audio.SAMPLE_RATE``), so this module converts both ways
and cuts outgoing audio into frames.

Conversion uses the stdlib ``audioop`` (``ulaw2lin``/``lin2ulaw``/``ratecv``; it is
deprecated from Python 3.11 and gone in 3.13, where the ``audioop-lts`` wheel provides
the same module). ``ratecv`` keeps a small state between calls, so a stream converted
frame by frame sounds the same as one converted at once: pass back the state each
call returns. All functions are pure and synchronous (cheap: microseconds per frame).
"""

from __future__ import annotations

import audioop
import base64
from typing import Any

import numpy as np
import numpy.typing as npt

ULAW_RATE = 8_000  # Twilio Media Streams: audio/x-mulaw, 8 kHz, mono
PCM_RATE = 16_000  # what the VAD and speech-to-text read
FRAME_MS = 20
FRAME_BYTES = ULAW_RATE * FRAME_MS // 1000  # 160 bytes = 160 samples of 8-bit μ-law
ULAW_SILENCE = 0xFF  # μ-law code of a zero sample
_WIDTH = 2  # audioop works on 16-bit little-endian samples here

Samples = npt.NDArray[np.float32]
# audioop.ratecv's opaque state; None to start a stream
RateState = Any


def _to_int16_bytes(pcm: npt.NDArray[Any] | bytes) -> bytes:
    """16-bit PCM bytes from int16 samples, float samples in [-1, 1], or raw bytes."""
    if isinstance(pcm, bytes | bytearray | memoryview):
        return bytes(pcm)
    arr = np.asarray(pcm)
    if arr.dtype != np.int16:
        arr = np.clip(np.round(arr.astype(np.float64) * 32767.0), -32768, 32767).astype(np.int16)
    return arr.astype("<i2", copy=False).tobytes()


def ulaw8k_to_pcm16k(chunk: bytes, state: RateState = None) -> tuple[Samples, RateState]:
    """Decode a chunk of 8 kHz μ-law to 16 kHz float32 samples in [-1, 1].

    Streaming: feed the returned state into the next call (``None`` for the first).
    A 160-byte Twilio frame gives 320 samples.
    """
    if not chunk:
        return np.zeros(0, dtype=np.float32), state
    lin = audioop.ulaw2lin(chunk, _WIDTH)
    up, state = audioop.ratecv(lin, _WIDTH, 1, ULAW_RATE, PCM_RATE, state)
    samples = np.frombuffer(up, dtype="<i2").astype(np.float32) / 32768.0
    return samples, state


def pcm_to_ulaw8k_stream(
    pcm: npt.NDArray[Any] | bytes, rate: int, state: RateState = None
) -> tuple[bytes, RateState]:
    """Encode PCM at ``rate`` (int16, float in [-1, 1], or 16-bit LE bytes) to 8 kHz μ-law.

    Streaming variant of :func:`pcm_to_ulaw8k`: feed the returned state into the next
    call for the same stream.
    """
    lin = _to_int16_bytes(pcm)
    if not lin:
        return b"", state
    if rate != ULAW_RATE:
        lin, state = audioop.ratecv(lin, _WIDTH, 1, rate, ULAW_RATE, state)
    return audioop.lin2ulaw(lin, _WIDTH), state


def pcm_to_ulaw8k(pcm: npt.NDArray[Any] | bytes, rate: int) -> bytes:
    """Encode a whole clip of PCM at ``rate`` to 8 kHz μ-law bytes."""
    return pcm_to_ulaw8k_stream(pcm, rate)[0]


def frame_ulaw(data: bytes) -> list[bytes]:
    """Cut μ-law audio into 160-byte (20 ms) frames, the last padded with μ-law silence."""
    framer = Framer()
    frames = framer.push(data)
    last = framer.flush()
    return frames + ([last] if last else [])


def media_payload(frame: bytes) -> str:
    """The base64 ``payload`` of a Twilio ``media`` message for one frame."""
    return base64.b64encode(frame).decode("ascii")


def decode_payload(payload: str) -> bytes:
    """The μ-law bytes of an incoming ``media`` message's base64 ``payload``."""
    return base64.b64decode(payload)


class Framer:
    """Cuts a stream of outgoing μ-law bytes into 20 ms frames.

    ``push`` returns the whole frames available so far and keeps the remainder;
    ``flush`` pads the remainder with μ-law silence (0xFF) to a last full frame.
    """

    def __init__(self, frame_bytes: int = FRAME_BYTES) -> None:
        self.frame_bytes = frame_bytes
        self._rest = b""

    def push(self, data: bytes) -> list[bytes]:
        buf = self._rest + data
        cut = len(buf) - len(buf) % self.frame_bytes
        self._rest = buf[cut:]
        return [buf[i : i + self.frame_bytes] for i in range(0, cut, self.frame_bytes)]

    def payloads(self, data: bytes) -> list[str]:
        """Like :meth:`push`, as base64 payloads for ``media`` messages."""
        return [media_payload(f) for f in self.push(data)]

    def flush(self) -> bytes | None:
        """The padded last frame, or None when nothing is left."""
        if not self._rest:
            return None
        rest, self._rest = self._rest, b""
        return rest + bytes([ULAW_SILENCE]) * (self.frame_bytes - len(rest))

    @property
    def pending(self) -> int:
        """Bytes held back, waiting for a full frame."""
        return len(self._rest)

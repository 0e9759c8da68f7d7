"""Audio conversion with a bundled ffmpeg: voice notes in, 16 kHz PCM out, and back.

Synchronous helpers; callers run them in a thread. ffmpeg is the static binary that
ships in the ``imageio-ffmpeg`` wheel (no system install), run as a subprocess with
stdin/stdout pipes and a timeout. That binary has no ffprobe, so every call names its
formats and codecs explicitly. MP4/M4A is the exception to "pipes only": its index may
sit at the end of the file, so it is decoded from a temporary file. (pydub is not used:
without ffprobe it reads only WAV, and it converts through temporary files with no
timeout.)

Every failure (no bytes, a content type we do not accept, data ffmpeg cannot decode)
is an :class:`AudioError` with a short reason.
"""

from __future__ import annotations

import functools
import io
import struct
import subprocess
import tempfile
import wave
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from runtime.errors import SpeechError

SAMPLE_RATE = 16_000  # what speech-to-text engines read
OPUS_RATE = 48_000  # Opus' native rate; WhatsApp voice notes are 48 kHz (or 16 kHz) mono
OPUS_BITRATE = "24k"
TIMEOUT_S = 30.0

# content type (no parameters) → ffmpeg demuxer
INPUT_FORMATS: dict[str, str] = {
    "audio/ogg": "ogg",
    "audio/opus": "ogg",
    "application/ogg": "ogg",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/mp4": "mov",
    "audio/m4a": "mov",
    "audio/x-m4a": "mov",
    "audio/3gpp": "mov",
    "audio/aac": "aac",
    "audio/amr": "amr",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/webm": "matroska",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
}
_SEEKABLE = {"mov"}  # demuxers that need a file, not a pipe

Samples = npt.NDArray[np.float32]


class AudioError(SpeechError, ValueError):
    """The audio is empty, corrupt, or of a type we do not accept (permanent)."""


class _Timeout(AudioError):
    pass


@dataclass(frozen=True)
class PCM:
    """Mono float32 samples in [-1, 1]."""

    samples: Samples
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg."""
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def input_format(content_type: str) -> str:
    """The ffmpeg demuxer for a MIME type (``audio/ogg; codecs=opus`` → ``ogg``)."""
    mime = content_type.split(";", 1)[0].strip().lower()
    try:
        return INPUT_FORMATS[mime]
    except KeyError:
        raise AudioError(f"unsupported content type {content_type!r}") from None


def _ffmpeg(args: list[str], data: bytes, timeout: float) -> bytes:
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", *args]
    try:
        proc = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise _Timeout(f"ffmpeg took longer than {timeout:g} s") from None
    if proc.returncode != 0:
        raise AudioError(_reason(proc.stderr))
    return proc.stdout


def _reason(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line]
    return "ffmpeg: " + (lines[-1][:200] if lines else "could not decode the audio")


def decode(data: bytes, content_type: str, *, timeout: float = TIMEOUT_S) -> PCM:
    """Decode a voice note to 16 kHz mono float32 samples.

    The content type picks the demuxer; when that fails, ffmpeg gets one more try at
    guessing the format itself (providers sometimes mislabel audio).
    """
    fmt = input_format(content_type)
    if not data:
        raise AudioError("no audio (0 bytes)")
    try:
        raw = _decode(data, fmt, timeout)
    except _Timeout:
        raise
    except AudioError as error:
        try:
            raw = _decode(data, None, timeout)
        except AudioError:
            raise error from None
    return PCM(np.frombuffer(raw, dtype=np.float32).copy(), SAMPLE_RATE)


def _decode(data: bytes, fmt: str | None, timeout: float) -> bytes:
    source = ["-f", fmt] if fmt else []
    out = ["-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "pipe:1"]
    if fmt in _SEEKABLE:
        with tempfile.NamedTemporaryFile(suffix=".m4a") as tmp:
            tmp.write(data)
            tmp.flush()
            return _ffmpeg([*source, "-i", tmp.name, *out], b"", timeout)
    return _ffmpeg([*source, "-i", "pipe:0", *out], data, timeout)


def decode_to_pcm16k(
    data: bytes, content_type: str, *, timeout: float = TIMEOUT_S
) -> tuple[Samples, float]:
    """``(samples, duration_s)``: 16 kHz mono float32 samples of a voice note."""
    pcm = decode(data, content_type, timeout=timeout)
    return pcm.samples, pcm.duration_s


def pcm_to_ogg_opus(
    audio: npt.NDArray[np.float32] | npt.NDArray[np.int16] | bytes,
    sample_rate: int = SAMPLE_RATE,
    *,
    bitrate: str = OPUS_BITRATE,
    timeout: float = TIMEOUT_S,
) -> bytes:
    """Encode mono audio as an OGG/Opus voice note (48 kHz, VoIP mode, ``bitrate``).

    ``audio`` is float32 samples in [-1, 1], int16 samples, or the bytes of a WAV file
    (whose own header then gives the rate and channels).
    """
    if isinstance(audio, (bytes, bytearray, memoryview)):
        data = bytes(audio)
        source = ["-f", "wav"]
    else:
        samples = np.asarray(audio)
        if samples.ndim != 1:
            raise AudioError("expected mono samples (a 1-D array)")
        raw_format, dtype = ("s16le", "<i2") if samples.dtype == np.int16 else ("f32le", "<f4")
        source = ["-f", raw_format, "-ar", str(sample_rate), "-ac", "1"]
        data = samples.astype(dtype, copy=False).tobytes()
    if not data:
        raise AudioError("no audio (0 samples)")
    return _ffmpeg(
        [
            *source,
            "-i",
            "pipe:0",
            "-vn",
            "-map_metadata",
            "-1",
            "-ac",
            "1",
            "-ar",
            str(OPUS_RATE),
            "-c:a",
            "libopus",
            "-b:a",
            bitrate,
            "-application",
            "voip",
            "-f",
            "ogg",
            "pipe:1",
        ],
        data,
        timeout,
    )


def ogg_opus_duration(data: bytes) -> float | None:
    """Duration of an OGG/Opus stream from its last page's granule position (no
    decoding), or None when ``data`` is not OGG/Opus."""
    head = data.find(b"OpusHead")
    if not data.startswith(b"OggS") or head < 0 or len(data) < head + 12:
        return None
    pre_skip = struct.unpack_from("<H", data, head + 10)[0]
    last = data.rfind(b"OggS")
    if last < 0 or len(data) < last + 14:
        return None
    granule = struct.unpack_from("<q", data, last + 6)[0]
    return max(granule - pre_skip, 0) / OPUS_RATE


def duration_of(data: bytes, content_type: str, *, timeout: float = TIMEOUT_S) -> float:
    """Duration in seconds: read from the headers of OGG/Opus and WAV, else decoded."""
    fmt = input_format(content_type)
    if not data:
        raise AudioError("no audio (0 bytes)")
    if fmt == "ogg":
        seconds = ogg_opus_duration(data)
        if seconds is not None:
            return seconds
    if fmt == "wav":
        try:
            with wave.open(io.BytesIO(data)) as w:
                return w.getnframes() / w.getframerate()
        except (wave.Error, EOFError, ZeroDivisionError):
            pass  # e.g. WAVE_FORMAT_EXTENSIBLE or float WAV: let ffmpeg read it
    return decode(data, content_type, timeout=timeout).duration_s

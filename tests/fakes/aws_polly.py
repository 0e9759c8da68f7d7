"""Amazon Polly for the tests: moto's server for the real API surface, and a tiny
aiohttp fake of ``SynthesizeSpeech`` for what moto cannot do (fail on purpose, answer
real speech).

moto (``ThreadedMotoServer``) validates a ``SynthesizeSpeech`` request as Polly does
(voice ids, output formats, sample rates, text length) and answers eight zero bytes;
what it received is read back through its recorder API (``/moto-api/recorder/``).

:class:`FakePolly` speaks Polly's REST-JSON protocol (``POST /v1/speech``, the
parameters as a JSON body, SigV4 ``Authorization``): the answer is the PCM of a real
recording (``pcm``), or the scripted errors in the shape AWS sends them
(``x-amzn-ErrorType`` header and a JSON body; 429 ThrottlingException, 500
ServiceFailureException...). It checks the parameters against Polly's own service
model as botocore ships it (the ``VoiceId``, ``Engine``, ``OutputFormat`` enums: moto
5.2 checks voice ids against the voices' display names, ``Léa`` and ``Inês``, where the
API takes ``Lea`` and ``Ines``).
"""

from __future__ import annotations

import base64
import json
import urllib.request
from typing import Any

import botocore.session
from aiohttp import web
from moto.moto_api import recorder
from moto.server import ThreadedMotoServer

from tests.fakes.server import serve


class MotoPolly:
    """moto in server mode on 127.0.0.1 (a free port), recording what it receives."""

    def __init__(self, recording: str) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        recorder._location = recording  # the recorder's log file (in-process server)
        self.url = ""

    def start(self) -> str:
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self._post("/moto-api/recorder/reset-recording")
        self._post("/moto-api/recorder/start-recording")
        return self.url

    def stop(self) -> None:
        self._post("/moto-api/recorder/stop-recording")
        self.server.stop()

    def _post(self, path: str) -> None:
        with urllib.request.urlopen(urllib.request.Request(self.url + path, method="POST")):
            pass

    def reset(self) -> None:
        self._post("/moto-api/recorder/reset-recording")

    def syntheses(self) -> list[dict[str, Any]]:
        """Every ``SynthesizeSpeech`` received since the last reset: headers and body."""
        with urllib.request.urlopen(self.url + "/moto-api/recorder/download-recording") as r:
            lines = r.read().decode().splitlines()
        out = []
        for line in lines:
            entry = json.loads(line)
            if not entry["url"].endswith("/v1/speech"):
                continue
            body = entry["body"]
            raw = base64.b64decode(body) if entry.get("body_encoded") else body.encode()
            out.append({"headers": entry["headers"], "body": json.loads(raw)})
        return out


def _enums() -> dict[str, frozenset[str]]:
    model = botocore.session.get_session().get_service_model("polly")
    return {
        name: frozenset(model.shape_for(shape).enum)
        for name, shape in (
            ("VoiceId", "VoiceId"),
            ("Engine", "Engine"),
            ("OutputFormat", "OutputFormat"),
            ("TextType", "TextType"),
        )
    }


class FakePolly:
    """``POST /v1/speech`` answering ``pcm`` (16-bit mono), or the scripted errors."""

    def __init__(self, pcm: bytes) -> None:
        self.pcm = pcm
        self.requests: list[dict[str, Any]] = []
        self.failures: list[tuple[int, str]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    def fail(self, status: int, error_type: str, times: int = 1) -> None:
        self.failures.extend([(status, error_type)] * times)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/speech", self._speech)
        self._runner, self.url = await serve(app)
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _speech(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append({"headers": dict(request.headers), "body": body})
        if not request.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256 "):
            return _error(403, "MissingAuthenticationTokenException", "no signature")
        if self.failures:
            status, kind = self.failures.pop(0)
            return _error(status, kind, "scripted failure")
        for name, allowed in _enums().items():
            if name in body and body[name] not in allowed:
                return _error(400, "ValidationException", f"{name}: not one of the enum")
        if len(body.get("Text", "")) > 3000:
            return _error(400, "TextLengthExceededException", "over 3000 characters")
        return web.Response(
            body=self.pcm,
            headers={
                "Content-Type": "audio/pcm",
                "x-amzn-RequestCharacters": str(len(body.get("Text", ""))),
            },
        )


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response(
        {"message": message}, status=status, headers={"x-amzn-ErrorType": f"{kind}:"}
    )

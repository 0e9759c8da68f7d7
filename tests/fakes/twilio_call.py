"""Twilio's side of a phone call in ``gather`` mode, as a test drives it.

It signs and posts the incoming-call webhook the way Twilio does (``X-Twilio-Signature``
over the public URL with its query string and the POST params), then follows the TwiML
it gets back: what ``<Say>`` says (with its language and voice) is what the caller
heard; ``<Gather>`` is where the caller's next words (``SpeechResult``) or keys
(``Digits``) are posted; silence follows the ``<Redirect>`` after it; ``<Hangup>`` and
``<Dial>`` end the script.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp.test_utils import TestClient
from twilio.request_validator import RequestValidator


@dataclass
class Said:
    text: str
    language: str
    voice: str


@dataclass
class Step:
    """One TwiML document and what it asked Twilio to do."""

    twiml: str
    said: list[Said] = field(default_factory=list)
    gather: dict[str, str] | None = None
    redirect: str = ""
    hangup: bool = False
    dial: str = ""

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.said)

    @classmethod
    def parse(cls, twiml: str) -> Step:
        root = ET.fromstring(twiml)
        assert root.tag == "Response", twiml
        step = cls(twiml)
        for verb in root:
            if verb.tag == "Say":
                step.said.append(_said(verb))
            elif verb.tag == "Gather":
                step.gather = dict(verb.attrib)
                step.said.extend(_said(v) for v in verb if v.tag == "Say")
            elif verb.tag == "Redirect":
                step.redirect = verb.text or ""
            elif verb.tag == "Hangup":
                step.hangup = True
            elif verb.tag == "Dial":
                step.dial = (verb.text or "").strip()
        return step


def _said(verb: ET.Element) -> Said:
    return Said(verb.text or "", verb.get("language", ""), verb.get("voice", ""))


class FakeCall:
    """One caller on one call."""

    def __init__(
        self,
        client: TestClient,
        public_url: str,
        auth_token: str,
        caller: str,
        called: str = "+14155550100",
        call_sid: str = "CA" + "0" * 31 + "1",
    ) -> None:
        self.client, self.public_url = client, public_url.rstrip("/")
        self.validator = RequestValidator(auth_token)
        self.caller, self.called, self.call_sid = caller, called, call_sid
        self.steps: list[Step] = []

    @property
    def last(self) -> Step:
        return self.steps[-1]

    def _params(self, **extra: str) -> dict[str, str]:
        return {
            "CallSid": self.call_sid,
            "AccountSid": "AC" + "0" * 31 + "1",
            "From": self.caller,
            "To": self.called,
            "Direction": "inbound",
            **extra,
        }

    async def post(self, url: str, params: dict[str, str], signature: str | None = None) -> int:
        """Post as Twilio does; the answer's TwiML becomes the last step (if 200)."""
        full = url if url.startswith("http") else self.public_url + url
        parts = urlsplit(full)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        if signature is None:
            signature = self.validator.compute_signature(full, params)
        resp = await self.client.post(path, data=params, headers={"X-Twilio-Signature": signature})
        if resp.status == 200:
            self.steps.append(Step.parse(await resp.text()))
        return resp.status

    async def start(self) -> Step:
        status = await self.post(
            "/webhooks/twilio_voice/webhook", self._params(CallStatus="ringing")
        )
        assert status == 200, status
        return self.last

    async def say(self, words: str, confidence: str = "0.92") -> Step:
        gather = self.last.gather
        assert gather is not None, f"nothing is listening: {self.last.twiml}"
        assert "speech" in gather.get("input", ""), gather
        params = self._params(CallStatus="in-progress", SpeechResult=words, Confidence=confidence)
        assert await self.post(gather["action"], params) == 200
        return await self._follow_holds()

    async def press(self, digits: str) -> Step:
        gather = self.last.gather
        assert gather is not None and "dtmf" in gather.get("input", ""), self.last.twiml
        params = self._params(CallStatus="in-progress", Digits=digits)
        assert await self.post(gather["action"], params) == 200
        return await self._follow_holds()

    async def silence(self) -> Step:
        """Nothing said: Twilio goes on to the verb after ``<Gather>``."""
        assert self.last.redirect, self.last.twiml
        assert await self.post(self.last.redirect, self._params(CallStatus="in-progress")) == 200
        return await self._follow_holds()

    async def _follow_holds(self) -> Step:
        """A hold message ends in a redirect without a ``<Gather>``: follow it."""
        while self.last.gather is None and self.last.redirect and "step=wait" in self.last.redirect:
            assert (
                await self.post(self.last.redirect, self._params(CallStatus="in-progress")) == 200
            )
        return self.last

    async def after_stream(self) -> Step:
        """A ``<Connect><Stream>`` ended: Twilio follows the ``<Redirect>`` after it."""
        url = "/webhooks/twilio_voice/webhook?step=after_stream&n=0&s=0"
        assert await self.post(url, self._params(CallStatus="in-progress")) == 200
        return self.last

    async def hang_up(self, duration_s: int = 42) -> int:
        return await self.post(
            "/webhooks/twilio_voice/status",
            self._params(CallStatus="completed", CallDuration=str(duration_s)),
        )

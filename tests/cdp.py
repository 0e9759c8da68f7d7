"""A headless Chromium driven over the DevTools protocol (CDP), with aiohttp only.

Debian's ``chromium`` package is the browser (``.ci/run`` installs it); nothing is
downloaded. :class:`Chromium` starts it on a port it picks itself (the port is read
from its ``DevTools listening on ws://...`` line), one :class:`Page` per test talks to
its target over the browser's WebSocket (flattened sessions), and waits are
conditions evaluated in the page, never sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp


def chromium_binary() -> str | None:
    """Debian's chromium (or ``HABLA_TEST_CHROMIUM``), if installed."""
    configured = os.environ.get("HABLA_TEST_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


class BrowserError(Exception):
    pass


class Chromium:
    """``async with Chromium(binary, profile, extra_args) as browser: page = await
    browser.new_page()``."""

    def __init__(self, binary: str, profile: Path, args: Sequence[str] = ()) -> None:
        self.binary, self.profile, self.args = binary, profile, list(args)
        self.proc: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: dict[tuple[str, str], list[asyncio.Future[dict[str, Any]]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._drain: asyncio.Task[None] | None = None
        self.stderr: list[str] = []

    async def __aenter__(self) -> Chromium:
        argv = [
            self.binary,
            "--headless=new",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--window-size=1280,900",
            *self.args,
            "about:blank",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            argv.insert(1, "--no-sandbox")  # CI runs as root: Chromium's sandbox refuses it
        self.proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        url = await asyncio.wait_for(self._devtools_url(), 60)
        self._drain = asyncio.create_task(self._drain_stderr())
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(url, max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _devtools_url(self) -> str:
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            line = (await self.proc.stderr.readline()).decode(errors="replace")
            if not line:
                raise BrowserError("chromium exited: " + "".join(self.stderr[-20:]))
            self.stderr.append(line)
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            if found:
                return found.group(1)

    async def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr.append(line.decode(errors="replace"))
            del self.stderr[:-200]

    async def _read(self) -> None:
        assert self.ws is not None
        async for frame in self.ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(frame.data)
            if "id" in message:
                future = self._waiting.pop(message["id"], None)
                if future is not None and not future.done():
                    if "error" in message:
                        future.set_exception(BrowserError(json.dumps(message["error"])))
                    else:
                        future.set_result(message.get("result", {}))
            else:
                key = (message.get("sessionId", ""), message.get("method", ""))
                for future in self._events.pop(key, []):
                    if not future.done():
                        future.set_result(message.get("params", {}))
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(BrowserError("the DevTools connection closed"))

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str = ""
    ) -> Any:
        assert self.ws is not None
        message_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = future
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        await self.ws.send_str(json.dumps(message))
        return await asyncio.wait_for(future, 60)

    def event(self, method: str, session: str = "") -> asyncio.Future[dict[str, Any]]:
        """A future for the next ``method`` event (register before causing it)."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._events.setdefault((session, method), []).append(future)
        return future

    async def new_page(self) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        await page.call("Page.enable")
        await page.call("Runtime.enable")
        return page

    async def __aexit__(self, *exc: object) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()
        if self._reader is not None:
            self._reader.cancel()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._drain is not None:  # reads to the end of stderr: the pipe is closed
            try:
                await asyncio.wait_for(self._drain, 10)
            except asyncio.TimeoutError:
                pass
        if self.proc is not None and self.proc._transport is not None:  # type: ignore[attr-defined]
            self.proc._transport.close()  # type: ignore[attr-defined]


class Page:
    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser, self.session = browser, session

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.browser.send(method, params, self.session)

    async def goto(self, url: str) -> None:
        loaded = self.browser.event("Page.loadEventFired", self.session)
        result = await self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"{url}: {result['errorText']}")
        await asyncio.wait_for(loaded, 60)

    async def evaluate(self, expression: str, timeout_s: float = 60) -> Any:
        """The JSON value of ``expression`` (awaited when it is a promise)."""
        result = await asyncio.wait_for(
            self.call(
                "Runtime.evaluate",
                {"expression": expression, "awaitPromise": True, "returnByValue": True},
            ),
            timeout_s + 5,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{expression[:80]}: {text}")
        return result["result"].get("value")

    async def wait_for(self, condition: str, timeout_s: float = 60) -> Any:
        """Wait until the JavaScript ``condition`` is truthy in the page (it is checked on
        every animation frame and DOM change); its value."""
        script = f"""new Promise((resolve, reject) => {{
            const check = () => {{ try {{ return ({condition}); }} catch (e) {{ return null; }} }};
            const first = check();
            if (first) return resolve(first);
            const observer = new MutationObserver(() => {{
                const value = check();
                if (value) {{ observer.disconnect(); clearInterval(tick); resolve(value); }}
            }});
            observer.observe(document, {{subtree: true, childList: true, attributes: true,
                                         characterData: true}});
            const tick = setInterval(() => {{
                const value = check();
                if (value) {{ observer.disconnect(); clearInterval(tick); resolve(value); }}
            }}, 50);
            setTimeout(() => {{ observer.disconnect(); clearInterval(tick);
                reject(new Error("timed out waiting for: " + {json.dumps(condition)})); }},
                {int(timeout_s * 1000)});
        }})"""
        return await self.evaluate(script, timeout_s)

    async def click(self, selector: str) -> None:
        """A real mouse click at the element's centre (a trusted user gesture)."""
        box = await self.evaluate(
            f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
                if (!e) return null; e.scrollIntoView({{block: "center"}});
                const r = e.getBoundingClientRect();
                return {{x: r.left + r.width / 2, y: r.top + r.height / 2}}; }})()"""
        )
        if box is None:
            raise BrowserError(f"no element {selector}")
        for kind in ("mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": box["x"], "y": box["y"], "button": "left", "clickCount": 1},
            )

    async def type(self, selector: str, text: str) -> None:
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.call("Input.insertText", {"text": text})

    async def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            await self.call(
                "Input.dispatchKeyEvent",
                {
                    "type": kind,
                    "key": "Enter",
                    "code": "Enter",
                    "windowsVirtualKeyCode": 13,
                    "text": "\r" if kind == "keyDown" else "",
                },
            )

    async def screenshot(self, path: Path) -> bytes:
        shot = await self.call("Page.captureScreenshot", {"format": "png"})
        data = base64.b64decode(shot["data"])
        await asyncio.to_thread(_write, path, data)
        return data


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)

"""Start-up: process started → first webhook accepted → first reply, habla vs ``rasa run``.

    python -m bench.startup [--runs 2] [--skip-untrained] [--skip-rasa]

habla is started as ``habla run`` with the example bot and its Twilio client pointed
at a local fake Messages API; as soon as it is started a signed WhatsApp webhook is
posted every 50 ms until one is accepted (200), and the time until the reply to that
message reaches the fake is measured. With a trained model (``HABLA_MODEL``, as after a
redeploy or a crash) ``--runs`` times, sharing an empty graph cache
(``HABLA_GRAPH_CACHE``): the first start traces DIET's and TED's prediction graphs and
caches them, the later ones read them; and once from the bot's files with an empty
models folder (training first). In the same run a bare ``rasa run`` of the same model
(+ ``rasa run actions``) is started and its REST webhook is polled the same way until
it answers with a reply. Not a test: the numbers move with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from twilio.request_validator import RequestValidator

from bench.throughput import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    BOT,
    PROJECT,
    Inbox,
    bare_rasa,
    free_port,
    stop,
)
from nlu.training import ensure_model
from tests.fakes.twilio_api import FakeTwilioAPI

POLL_S = 0.05


async def spawn(cmd: list[str], env: dict[str, str]) -> Any:
    if type(asyncio.get_event_loop_policy()) is not asyncio.DefaultEventLoopPolicy:
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    return await asyncio.create_subprocess_exec(
        *cmd,
        cwd=PROJECT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def habla_once(env: dict[str, str], label: str) -> dict[str, Any]:
    fake = FakeTwilioAPI(ACCOUNT_SID, AUTH_TOKEN)
    inbox = Inbox()
    inbox.attach(fake)
    await fake.start()
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    env = {
        **env,
        "HABLA_PUBLIC_URL": public,
        "HABLA_LOG_LEVEL": "WARNING",
        "HABLA_TWILIO_STATUS_CALLBACK": "false",
        "HABLA_TWILIO_API_BASE": fake.url,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
    }
    url = f"{public}/webhooks/twilio/webhook"
    form = {
        "MessageSid": f"SM{time.time_ns():032x}",
        "From": "whatsapp:+15550001111",
        "To": BOT,
        "Body": "hello",
        "NumMedia": "0",
        "WaId": "15550001111",
        "AccountSid": ACCOUNT_SID,
    }
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, form)
    began = time.perf_counter()
    proc = await spawn([sys.executable, "-m", "habla.cli", "run", "--port", str(port)], env)
    try:
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.post(
                        url, data=form, headers={"X-Twilio-Signature": signature}
                    ) as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if proc.returncode is not None:
                    raise RuntimeError("habla run exited")
                await asyncio.sleep(POLL_S)
            accepted = time.perf_counter() - began
            await asyncio.wait_for(inbox.queues[form["From"]].get(), 600)
            replied = time.perf_counter() - began
    finally:
        await stop(proc)
        await fake.close()
    return {"target": label, "accepted_s": accepted, "reply_s": replied}


async def rasa_once(model: Path, tmp: Path) -> dict[str, Any]:
    actions_cmd, rasa_cmd, url = bare_rasa(model, tmp)
    began = time.perf_counter()
    actions = await spawn(actions_cmd, {})
    rasa = await spawn(rasa_cmd, {})
    accepted = None
    try:
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    body = {"sender": "+15550001111", "message": "hello"}
                    async with session.post(url, json=body) as resp:
                        if resp.status == 200 and await resp.json():
                            break
                        accepted = accepted or time.perf_counter() - began
                except aiohttp.ClientError:
                    pass
                if rasa.returncode is not None:
                    raise RuntimeError("rasa run exited")
                await asyncio.sleep(POLL_S)
            replied = time.perf_counter() - began
    finally:
        await stop(rasa)
        await stop(actions)
    return {
        "target": "bare rasa run (+ rasa run actions), trained model",
        "accepted_s": replied if accepted is None else accepted,
        "reply_s": replied,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| target | first webhook accepted (s) | first reply (s) |",
        "|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['target']} | {r['accepted_s']:.1f} | {r['reply_s']:.1f} |")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="starts with a trained model")
    parser.add_argument("--workers", type=int, default=0, help="HABLA_ENGINE_WORKERS")
    parser.add_argument("--skip-untrained", action="store_true")
    parser.add_argument("--skip-rasa", action="store_true")
    args = parser.parse_args()
    model = ensure_model(PROJECT, PROJECT / ".habla" / "models")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = {"HABLA_ENGINE_WORKERS": str(args.workers)}
        for run in range(args.runs):
            env = {
                **base,
                "HABLA_MODEL": str(model),
                "HABLA_DATA_DIR": f"{tmp}/data{run}",
                "HABLA_GRAPH_CACHE": f"{tmp}/graphs",
            }
            graphs = "graphs traced and cached" if run == 0 else "graphs from the cache"
            label = f"habla run, trained model, {graphs} (start {run + 1})"
            rows.append(await habla_once(env, label))
            print(table(rows), flush=True)
        if not args.skip_untrained:
            env = {
                **base,
                "HABLA_MODELS_DIR": f"{tmp}/models",
                "HABLA_DATA_DIR": f"{tmp}/d",
                "HABLA_GRAPH_CACHE": f"{tmp}/graphs-untrained",
            }
            rows.append(await habla_once(env, "habla run, no trained model (trains first)"))
        if not args.skip_rasa:
            rows.append(await rasa_once(model, Path(tmp)))
    print(f"\n{os.cpu_count()} CPUs, HABLA_ENGINE_WORKERS={args.workers}\n")
    print(table(rows))
    out = PROJECT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "startup.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    asyncio.run(main())

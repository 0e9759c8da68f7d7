"""The CPU time of one turn of the bare Rasa engine: the ceiling of this machine.

    python -m bench.rasa_turn_cpu MODEL ACTION_URL [--users 16] [--turns 24]

Loads ``MODEL`` with Rasa's own ``Agent`` (in-memory tracker store, custom actions at
``ACTION_URL``, a running ``rasa run actions``) and runs the throughput benchmark's
script one turn at a time: no habla, no HTTP channel, no concurrency. Prints one JSON
line: turns, the CPU seconds of this process (every thread) and the wall time.
:mod:`bench.throughput` adds the action server's CPU and turns it into the number of
turns per second the machine's cores could do if they did nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from bench.throughput import SCRIPT


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("action_url")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--turns", type=int, default=24, help="measured turns per user")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    from rasa.core.agent import Agent
    from rasa.utils.endpoints import EndpointConfig

    agent = Agent.load(args.model, action_endpoint=EndpointConfig(args.action_url))
    for n in range(args.warmup):
        for u in range(args.users):
            await agent.handle_text(SCRIPT[n % len(SCRIPT)], sender_id=f"user{u}")
    print(json.dumps({"ready": True}), flush=True)
    # the caller reads the action server's CPU, then starts the measurement
    await asyncio.to_thread(sys.stdin.readline)
    cpu, wall = time.process_time(), time.perf_counter()
    replies = 0
    for n in range(args.warmup, args.warmup + args.turns):
        for u in range(args.users):
            answer = await agent.handle_text(SCRIPT[n % len(SCRIPT)], sender_id=f"user{u}")
            replies += bool(answer)
    result = {
        "turns": args.users * args.turns,
        "answered": replies,
        "cpu_s": time.process_time() - cpu,
        "wall_s": time.perf_counter() - wall,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    asyncio.run(main())

"""``callbridge simulator``: run the built-in realtime model simulator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

import numpy as np
import numpy.typing as npt

from bridge.simulator.server import SimulatorServer

log = logging.getLogger(__name__)

Samples = npt.NDArray[np.int16]
Json = dict[str, Any]

# --------------------------------------------------------------------------- command line


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "simulator",
        help="run the built-in realtime model simulator (OpenAI Realtime GA protocol and Azure Voice Live)",
        description="Serve the OpenAI Realtime API (GA) locally with a deterministic model: it greets, "
                    "echoes what the caller says and answers 'call_tool:<name> <json>' text with a "
                    "function call. Point clients at the printed websocket_base_url.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port, 0 for any (default 8765)")
    parser.add_argument("--pace", type=float, default=1.0,
                        help="audio delivery speed as a multiple of real time (default 1.0)")
    parser.add_argument("--delta-ms", type=int, default=50, help="audio per delta event in ms (default 50)")
    parser.add_argument("--api-key", default=None,
                        help="accept only this key (default: any key is accepted)")
    parser.add_argument("--events-log", default=None, metavar="FILE",
                        help="write a JSON line per timing event (monotonic clock) to FILE "
                             "(load benchmarks)")
    parser.add_argument("--uvloop", action="store_true", help="use uvloop's event loop when installed")
    parser.set_defaults(func=_run_command)


def _run_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvloop: Any = None
    if args.uvloop:
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed; using asyncio's loop")
    try:
        if uvloop is not None:
            uvloop.run(_serve(args))
        else:
            asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    return 0


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = SimulatorServer(args.host, args.port, pace=args.pace, api_key=args.api_key,
                             delta_ms=args.delta_ms, events_log=args.events_log)
    async with server:
        print(f"realtime simulator ready: websocket_base_url={server.url} "
              f"voice_live_endpoint={server.http_url}", flush=True)
        await stop.wait()

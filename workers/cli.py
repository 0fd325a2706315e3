"""`tom`: the command line of the platform.

Each subcommand lives in its own module and is imported only when used, so `tom status` does not
pay for the worker's imports. Handlers have the signature `run(settings, args) -> exit code`.
Errors a user can fix (bad config, unreachable service, refused request) end as one line on stderr
and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable

from config.settings import ConfigError, Settings, load_settings, resolve_config_path


class UserError(Exception):
    """An error to report as one line and exit code 1."""


# subcommand -> ("module:function", help)
COMMANDS: dict[str, tuple[str, str]] = {
    "dev": ("workers.dev:run", "run the whole local stack: Temporal dev server, Redis, worker, consumer, API"),
    "worker": ("workers.worker:run", "run an order worker (OrderWorkflow and its activities)"),
    "consume": ("workers.consumer:run", "consume the signals stream and start order workflows"),
    "api": ("workers.api:run", "serve the HTTP API"),
    "submit": ("workers.commands:submit", "submit a signal from flags or a JSON file"),
    "cancel": ("workers.commands:cancel", "cancel an order"),
    "amend": ("workers.commands:amend", "amend an order's quantity and/or limit price"),
    "status": ("workers.commands:status", "show an order"),
    "orders": ("workers.commands:orders", "list orders as a table"),
    "report": ("workers.commands:report", "execution metrics: fill rates, latency, slippage, fees, per exchange"),
    "demo": ("workers.commands:demo", "feed a stream of realistic signals and summarize the outcome"),
    "exchange-emulator": ("emulator.server:run", "run a local Binance/Bybit exchange emulator"),
    "codec-server": ("workers.codec_server:run",
                     "decrypt payloads (temporal.payload_key) for the Temporal UI and `temporal` CLI"),
}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _add_arguments(name: str, sub: argparse.ArgumentParser) -> None:
    if name == "dev":
        sub.add_argument("--demo", action="store_true", help="feed demo signals once the stack is up")
        sub.add_argument("--demo-orders", type=int, default=24)
        sub.add_argument("--data-dir", default="./data", help="where Temporal, DuckDB and Redis keep state")
    elif name == "worker":
        sub.add_argument("--processes", type=_positive_int, default=None,
                         help="worker processes under one supervisor (default: the cores available)")
        sub.add_argument("--max-concurrent", type=int, default=None, help="max concurrent workflow and activity tasks")
        sub.add_argument("--with-consumer", action="store_true",
                         help="also consume the signals stream in this process (eager workflow start: lowest latency)")
    elif name == "consume":
        sub.add_argument("--name", default=None, help="consumer name within the group (default host-pid)")
    elif name == "submit":
        sub.add_argument("--file", help="JSON file holding one signal or a list of signals")
        sub.add_argument("--signal-id")
        sub.add_argument("--strategy-id", default="manual")
        sub.add_argument("--symbol")
        sub.add_argument("--side", choices=["buy", "sell"])
        sub.add_argument("--quantity")
        sub.add_argument("--order-type", choices=["market", "limit"])
        sub.add_argument("--limit-price")
        sub.add_argument("--time-in-force", choices=["GTC", "IOC", "FOK", "GTD"])
        sub.add_argument("--expire-at")
        sub.add_argument("--exchange")
        sub.add_argument("--reference-price")
        sub.add_argument("--via", choices=["temporal", "stream"], default="temporal",
                         help="start the workflow directly or publish to the signals stream (the Pub/Sub topic with messaging.type pubsub)")
        sub.add_argument("--wait", action="store_true", help="wait for a terminal state")
    elif name == "cancel":
        sub.add_argument("order_id")
        sub.add_argument("--reason", default=None)
    elif name == "amend":
        sub.add_argument("order_id")
        sub.add_argument("--price", dest="limit_price", default=None)
        sub.add_argument("--quantity", default=None)
    elif name == "status":
        sub.add_argument("order_id")
        sub.add_argument("--json", action="store_true")
    elif name == "orders":
        sub.add_argument("--state")
        sub.add_argument("--symbol")
        sub.add_argument("--strategy")
        sub.add_argument("--exchange")
        sub.add_argument("--limit", type=int, default=50)
        sub.add_argument("--json", action="store_true")
    elif name == "report":
        sub.add_argument("--json", action="store_true", help="the document GET /report answers")
        sub.add_argument("--html", metavar="FILE", help="write a self-contained HTML report with plots")
        sub.add_argument("--since", help="orders created at or after this time (ISO 8601 with a timezone)")
        sub.add_argument("--until", help="orders created before this time (ISO 8601 with a timezone)")
    elif name == "demo":
        sub.add_argument("--orders", type=int, default=24)
        sub.add_argument("--rate", type=float, default=10.0, help="signals per second")
        sub.add_argument("--timeout", type=float, default=120.0)
    elif name == "exchange-emulator":
        sub.add_argument("--venue", choices=["binance", "bybit"], required=True)
        sub.add_argument("--host", default="127.0.0.1")
        sub.add_argument("--port", type=int, default=8900)
        sub.add_argument("--api-key", default="emulator-key", help="the one API key the venue accepts")
        sub.add_argument("--secret", default="emulator-secret", help="its secret (HMAC-SHA256 signatures)")
        sub.add_argument("--delay-ms", type=int, default=0, help="latency added to every venue request")
    elif name == "codec-server":
        sub.add_argument("--host", default=None, help="bind address (default temporal.codec_server.host)")
        sub.add_argument("--port", type=int, default=None, help="port (default temporal.codec_server.port)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tom", description="trading-order-management")
    parser.add_argument("--config", help="config file (default: $CONFIG_PATH, else config/local.yaml)")
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub = subs.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        _add_arguments(name, sub)
    return parser


def _handler(name: str) -> Callable[[Settings, argparse.Namespace], int]:
    module_name, func = COMMANDS[name][0].split(":")
    return getattr(importlib.import_module(module_name), func)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(resolve_config_path(args.config))
    except ConfigError as exc:
        print(f"tom: config error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(_handler(args.command)(settings, args) or 0)
    except ConfigError as exc:  # a check that needs more than the file (e.g. a venue's credentials)
        print(f"tom: config error: {exc}", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"tom {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# Commands that hold a Temporal client end by leaving without interpreter finalization: the SDK's
# runtime threads can call into a finalizing interpreter and abort it (sdk-python issue 300; seen
# as exit code -6 after `tom submit --wait` printed its result, about one run in seven, and after
# `tom worker` had logged "worker stopped"). Everything they opened is closed by then.
NO_FINALIZE_COMMANDS = frozenset({"submit", "cancel", "amend", "status", "orders", "report", "demo",
                                  "worker", "consume"})


def run() -> None:
    """The `tom` console script."""
    argv = sys.argv[1:]
    code = main(argv)
    if build_parser().parse_args(argv).command in NO_FINALIZE_COMMANDS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    # Run the imported module's main: commands raise `workers.cli.UserError`, which is not this
    # `__main__` module's class of the same name.
    from workers.cli import run as cli_run

    cli_run()

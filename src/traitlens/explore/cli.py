"""``traitlens explore``: serve the explorer on a local port until Ctrl-C."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from pathlib import Path
from typing import Any

from traitlens.backbones import TOKEN_SELECTIONS
from traitlens.cli_args import add_device_arg, non_negative_int, positive_int
from traitlens.errors import TraitlensError

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 8765


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def trusted_host_names(host: str) -> list[str] | None:
    """The Host headers the app answers when it listens on ``host``: on loopback only the
    loopback names, so that a web page whose domain is re-pointed to 127.0.0.1 (DNS rebinding)
    cannot drive the explorer from the user's browser; None (any name) on another address."""
    return ["127.0.0.1", "localhost", "[::1]"] if is_loopback(host) else None


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), or one line saying why not."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except (OSError, OverflowError) as error:
        raise TraitlensError(f"cannot listen on {host}:{port}: {getattr(error, 'strerror', None) or error}") from error
    return sock


def _run_explore(args: argparse.Namespace) -> int:
    import uvicorn

    from traitlens.explore.app import create_app
    from traitlens.explore.session import ExploreConfig, Explorer

    host = args.host or LOOPBACK
    if not is_loopback(host):
        print(f"traitlens explore: warning: listening on {host}, not loopback: anyone who can reach this machine can "
              "use the model and read the images", file=sys.stderr)
    sock = bind(host, args.port)  # before the model loads: a busy port is said at once
    explorer = Explorer(ExploreConfig(model=args.model, sae=args.sae, data=args.data, features=args.features,
                                      weights=args.weights, pretrained=not args.random_init, layer=args.layer,
                                      tokens=args.tokens, device=args.device))
    app = create_app(explorer, max_upload_bytes=args.max_upload_mb << 20, allowed_hosts=trusted_host_names(host))
    shown = f"[{host}]" if ":" in host else host
    print(f"traitlens explore: http://{shown}:{sock.getsockname()[1]}/ (Ctrl-C to stop)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    return 0


def add_explore_command(commands: Any, add_model_args: Any) -> None:
    explore = commands.add_parser("explore", help="a local web app: click a patch, read its SAE latents, edit them live")
    add_model_args(explore)
    explore.add_argument("--sae", required=True, type=Path, help="SAE directory (traitlens train or import-sae)")
    explore.add_argument("--features", type=Path, metavar="DIR",
                         help="the features directory of this SAE (traitlens features): latents' associations and top images")
    explore.add_argument("--data", type=Path,
                         help="images to browse: class folder, image folder, image file, table, segmentation folder or "
                              "saved HF dataset (without it, upload images in the page)")
    explore.add_argument("--layer", help="layer the SAE reads (default: the one it was trained on)")
    explore.add_argument("--tokens", choices=TOKEN_SELECTIONS, help="tokens the SAE reads (default: those it was trained on)")
    add_device_arg(explore)
    explore.add_argument("--host", help=f"address to listen on (default {LOOPBACK}, this machine only; another address "
                                        "is reachable from the network and warned about)")
    explore.add_argument("--port", type=non_negative_int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: a free one)")
    explore.add_argument("--max-upload-mb", type=positive_int, default=16, help="largest upload accepted, in MiB (default 16)")
    explore.set_defaults(run=_run_explore)

"""`rtseg keys`: generate CurveZMQ key pairs for `rtseg serve` / the zmq:// sink and their clients."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..stream.curve import generate_keys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "keys",
        help="generate CurveZMQ keys for encrypted, authenticated streams",
        description="Write a server and a client key pair (ZeroMQ zcert files) into DIR.",
    )
    p.add_argument("dir", type=Path, help="folder to write the keys into")
    p.add_argument("--force", action="store_true", help="overwrite existing keys")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    files = generate_keys(args.dir, force=args.force)
    print(f"server: {files.server_secret}  (keep on the server; rtseg serve --curve-keys {files.directory})")
    print(f"client: {files.client_secret} + {files.server_public}  (copy both to each client machine)")
    print(f"admitted clients: {files.clients}/  (one public *.key file per client)")
    return 0

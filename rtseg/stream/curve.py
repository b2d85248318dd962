"""CurveZMQ keys: one folder layout for the server, the publisher and their clients.

``generate_keys(DIR)`` (or ``rtseg keys DIR``) writes::

    DIR/server.key          server public key     -> copy to every client
    DIR/server.key_secret   server secret key     -> stays on the server
    DIR/client.key          client public key
    DIR/client.key_secret   client secret key     -> copy to the client
    DIR/clients/client.key  the public keys the server accepts (add one file per client)

A server (``rtseg serve --curve-keys DIR``, or a publisher) reads ``server.key_secret`` and accepts
only clients whose public key is in ``DIR/clients``. A client reads ``client.key_secret`` and
``server.key`` from its own copy of the folder. The files are ZeroMQ's zcert format, so keys made
with ``zmq.auth.create_certificates`` or czmq's ``zcert`` work too.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from ..errors import ConfigError

CLIENTS_DIR = "clients"


@dataclass(frozen=True)
class KeyFiles:
    directory: Path
    server_public: Path
    server_secret: Path
    client_public: Path
    client_secret: Path
    clients: Path


def key_files(directory: str | os.PathLike[str]) -> KeyFiles:
    d = Path(directory)
    return KeyFiles(
        directory=d,
        server_public=d / "server.key",
        server_secret=d / "server.key_secret",
        client_public=d / "client.key",
        client_secret=d / "client.key_secret",
        clients=d / CLIENTS_DIR,
    )


def generate_keys(directory: str | os.PathLike[str], *, force: bool = False) -> KeyFiles:
    """Write a server and a client key pair; refuses to overwrite existing keys unless ``force``."""
    if not zmq.has("curve"):
        raise ConfigError(f"this libzmq ({zmq.zmq_version()}) was built without CURVE support")
    files = key_files(directory)
    existing = [p for p in (files.server_secret, files.client_secret) if p.exists()]
    if existing and not force:
        raise ConfigError(
            f"keys already exist ({', '.join(map(str, existing))}); replace them with --force "
            "(generate_keys(..., force=True)): clients holding the old keys are then refused"
        )
    try:
        # A new folder is private: the secrets are briefly readable before their chmod below.
        files.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        zmq.auth.create_certificates(files.directory, "server")
        zmq.auth.create_certificates(files.directory, "client")
        for secret in (files.server_secret, files.client_secret):
            secret.chmod(0o600)
        files.clients.mkdir(exist_ok=True)
        shutil.copyfile(files.client_public, files.clients / files.client_public.name)
    except OSError as exc:
        if files.directory.exists() and not files.directory.is_dir():
            raise ConfigError(f"cannot write keys in {files.directory}: it is a file, not a folder") from None
        raise ConfigError(f"cannot write keys in {files.directory}: {exc.strerror or exc}") from None
    return files


def _load(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise ConfigError(f"CurveZMQ key file not found: {path} (generate keys with `rtseg keys DIR`)")
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{path} is not a ZeroMQ certificate: {exc}") from None
    if secret and not secret_key:
        raise ConfigError(f"{path} holds no secret key; use the *.key_secret file")
    for name, key in (("public", public), ("secret", secret_key)):
        # libzmq takes a key as 40 Z85 characters; another length was "Invalid argument" at bind
        # or connect, after the model had loaded.
        if key is not None and not _is_z85_key(key):
            raise ConfigError(
                f"{path}: its {name} key is not a CurveZMQ key (40 Z85 characters, got {len(key)}); "
                "regenerate the keys with `rtseg keys DIR`"
            )
    return public, secret_key


def _is_z85_key(key: bytes) -> bool:
    if len(key) != 40:
        return False
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError):
        return False


def check_server_keys(directory: str | os.PathLike[str]) -> tuple[bytes, bytes | None]:
    """The server's key pair, or ConfigError naming what is missing; ``rtseg serve`` calls it
    before loading the model, so a wrong key folder costs no model load."""
    if not zmq.has("curve"):
        raise ConfigError(f"this libzmq ({zmq.zmq_version()}) was built without CURVE support")
    files = key_files(directory)
    public, secret = _load(files.server_secret, secret=True)
    clients = sorted(files.clients.glob("*.key")) if files.clients.is_dir() else []
    if not clients:
        raise ConfigError(f"{files.clients} holds no client public keys (*.key): no client could connect")
    for path in clients:  # ZeroMQ's authenticator loads none of them when one fails: all refused
        _load(path, secret=False)
    return public, secret


class CurveServer:
    """Server side: the key pair plus a ZAP authenticator that admits the keys in ``DIR/clients``.

    The authenticator serves every socket of ``context``: give each server its own context.
    """

    def __init__(self, directory: str | os.PathLike[str], context: zmq.Context) -> None:
        self.files = key_files(directory)
        self.public, self.secret = check_server_keys(directory)
        self._auth = ThreadAuthenticator(context)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(self.files.clients))

    def apply(self, socket: zmq.Socket) -> None:
        """Call before bind."""
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True

    def close(self) -> None:
        self._auth.stop()


def apply_client_keys(socket: zmq.Socket, directory: str | os.PathLike[str]) -> None:
    """Client side: own key pair from ``client.key_secret``, the server's from ``server.key``. Call
    before connect."""
    files = key_files(directory)
    public, secret = _load(files.client_secret, secret=True)
    server_public, _ = _load(files.server_public, secret=False)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = server_public

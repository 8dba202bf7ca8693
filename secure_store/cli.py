"""The `secure-store` command: demo, gateway, key rotation, inspection."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .errors import InsecureKeyringError, SecureStoreError

if TYPE_CHECKING:
    from .storage.keys import KeyringKeysets

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo.runner import run_demo

    return run_demo()


def _cmd_keygen(args: argparse.Namespace) -> int:
    from .transport.envelope import GatewayKey, Suite

    key = GatewayKey.generate(Suite(args.suite), key_id=args.key_id)
    out = Path(args.out)
    if out.exists() and not args.force:
        raise SecureStoreError(
            f"{out} exists; refusing to overwrite a private key "
            "(pass --force to replace it)"
        )
    key.save(out, overwrite=args.force)
    print(
        f"# private key (key id {key.key_id}, {args.suite}) written to {out}"
    )
    print("# pin this key config in clients (gateway_key_config=...):")
    print(key.key_config().to_base64())
    return EXIT_OK


def _cmd_key_config(args: argparse.Namespace) -> int:
    from .transport.envelope import GatewayKey

    for path in args.key_file:
        print(GatewayKey.load(Path(path)).key_config().to_base64())
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from .gateway import create_app, load_keys, open_replay_cache, serve

    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise SecureStoreError(
            f"--listen must be HOST:PORT, for example 127.0.0.1:8080; "
            f"got {args.listen!r}"
        )
    keys = load_keys(key_files=args.key_file, key_dir=args.key_dir)
    _warn_if_cleartext_upstream(args.upstream)
    app = create_app(
        keys,
        args.upstream,
        replay_cache=open_replay_cache(args.replay_cache),
        max_body_bytes=args.max_body_bytes,
        upstream_timeout_s=args.upstream_timeout,
    )
    logging.getLogger("secure_store.gateway").setLevel(logging.INFO)
    serve(
        app,
        host,
        int(port),
        threads=args.threads,
    )
    return EXIT_OK


def _store_file(value: str, *, must_exist: bool) -> Path:
    """Return ``--store`` as a path to a store file, or say what is wrong."""
    path = Path(value).expanduser()
    if not value or path.is_dir():
        raise SecureStoreError(
            f"--store must name a store file, not {value!r}"
        )
    if must_exist and not path.is_file():
        raise SecureStoreError(f"no store file at {path}")
    return path


def _store_args(
    args: argparse.Namespace, *, must_exist: bool
) -> tuple[Path, str, KeyringKeysets]:
    """The store file, its name and the keyring, from the common flags."""
    from .secure_store import store_name_for
    from .storage.keys import KeyringKeysets

    path = _store_file(args.store, must_exist=must_exist)
    name = args.name or store_name_for(path)
    keysets = KeyringKeysets(
        allow_insecure_keyring=args.allow_insecure_keyring
    )
    return path, name, keysets


def _warn_if_cleartext_upstream(url: str) -> None:
    """Opened reports go upstream as they are: say so if in cleartext."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    loopback = host == "localhost" or host.startswith("127.") or host == "::1"
    if parts.scheme == "http" and not loopback:
        log.warning(
            "the upstream %s is plain HTTP on another host: opened reports "
            "will cross the network in cleartext; use https://",
            url,
        )


def _cmd_rotate_key(args: argparse.Namespace) -> int:
    from .storage.rotation import rotate
    from .storage.sealed_file import SealedFile

    path, name, keysets = _store_args(args, must_exist=True)
    # Say what a file that is no store is before asking the keyring.
    SealedFile(path, name).header()
    result = rotate(path, name, keysets, retire_all=args.retire_all)
    print("\n".join(result.summary()))
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .storage.rotation import describe

    path, name, keysets = _store_args(args, must_exist=False)
    info = describe(path, name, keysets, show=args.show)
    print(json.dumps(info, indent=2, sort_keys=True, default=str))
    return EXIT_OK


def _cmd_check_proxy(args: argparse.Namespace) -> int:
    from .transport.tor import check_proxy

    password = None
    if args.control_password_env:
        password = os.environ.get(args.control_password_env)
        if password is None:
            raise SecureStoreError(
                f"--control-password-env names {args.control_password_env}, "
                "which is not set"
            )
    report = check_proxy(
        args.proxy,
        control_port=args.control_port,
        control_host=args.control_host,
        control_password=password,
        control_cookie_path=args.control_cookie,
        target_url=args.target,
        timeout_s=args.timeout,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        print(report.describe())
    return EXIT_OK if report.ok else EXIT_FAILURE


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {text}")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be a positive number of seconds, not {text}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the `secure-store` command line."""
    parser = argparse.ArgumentParser(
        prog="secure-store",
        description="Sealed Clean Insights stores, sent through Tor.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log debug messages"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="run the whole path on loopback and check it"
    )
    demo.set_defaults(run=_cmd_demo)

    gateway = commands.add_parser("gateway", help="the operator's gateway")
    gateway_commands = gateway.add_subparsers(dest="gateway", required=True)
    keygen = gateway_commands.add_parser(
        "keygen", help="write a private key; print its key config"
    )
    keygen.add_argument(
        "--suite", choices=["pq-hybrid", "x25519"], default="pq-hybrid"
    )
    keygen.add_argument("--out", required=True, help="private key file")
    keygen.add_argument(
        "--key-id",
        type=int,
        default=None,
        help="0-4294967295 (default: random)",
    )
    keygen.add_argument("--force", action="store_true")
    keygen.set_defaults(run=_cmd_keygen)

    key_config = gateway_commands.add_parser(
        "key-config", help="print the key config of private key files"
    )
    key_config.add_argument("--key-file", action="append", required=True)
    key_config.set_defaults(run=_cmd_key_config)

    serve = gateway_commands.add_parser("serve", help="serve with waitress")
    serve.add_argument("--listen", default="127.0.0.1:8080")
    serve.add_argument("--key-file", action="append", default=[])
    serve.add_argument("--key-dir", default=None)
    serve.add_argument("--upstream", required=True, help="the CIMP URL")
    serve.add_argument(
        "--replay-cache",
        default=None,
        help="SQLite file path or redis://... URL",
    )
    serve.add_argument("--max-body-bytes", type=_positive_int, default=1 << 20)
    serve.add_argument("--threads", type=_positive_int, default=8)
    serve.add_argument(
        "--upstream-timeout", type=_positive_seconds, default=10.0
    )
    serve.set_defaults(run=_cmd_serve)

    for name, run, text in (
        ("rotate-key", _cmd_rotate_key, "rotate a store's key"),
        ("inspect", _cmd_inspect, "tell what a store file is"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--store", required=True, help="store file path")
        sub.add_argument(
            "--name", default=None, help="store name (default: file name)"
        )
        sub.add_argument("--allow-insecure-keyring", action="store_true")
        sub.set_defaults(run=run)
        if name == "rotate-key":
            sub.add_argument(
                "--retire-all",
                action="store_true",
                help="new key; drop every other after re-sealing",
            )
        else:
            sub.add_argument(
                "--show", action="store_true", help="decrypt and print"
            )

    check = commands.add_parser(
        "check-proxy", help="is the proxy reachable, is it Tor, bootstrapped?"
    )
    check.add_argument("--proxy", default="socks5h://127.0.0.1:9050")
    check.add_argument("--control-port", type=int, default=None)
    check.add_argument("--control-host", default=None)
    check.add_argument(
        "--control-cookie", default=None, help="Tor's control auth cookie"
    )
    check.add_argument(
        "--control-password-env",
        default=None,
        metavar="VAR",
        help="environment variable holding the control port password",
    )
    check.add_argument("--json", action="store_true")
    check.add_argument("--target", default=None)
    check.add_argument("--timeout", type=_positive_seconds, default=10.0)
    check.set_defaults(run=_cmd_check_proxy)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        status: int = args.run(args)
    except InsecureKeyringError as exc:
        print(
            f"secure-store: error: {exc} (on the command line: "
            "--allow-insecure-keyring)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except SecureStoreError as exc:
        print(f"secure-store: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    return status


if __name__ == "__main__":
    sys.exit(main())

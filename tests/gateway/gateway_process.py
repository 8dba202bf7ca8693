"""Run one gateway under waitress for the multi-process tests.

Prints ``PORT <n>`` once it listens, then serves until terminated.
"""

from __future__ import annotations

import argparse

from secure_store.gateway import (
    create_app,
    load_keys,
    open_replay_cache,
    serve,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--key-file", action="append", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--replay-cache", required=True)
    args = parser.parse_args()

    app = create_app(
        load_keys(key_files=args.key_file),
        args.upstream,
        replay_cache=open_replay_cache(args.replay_cache),
        upstream_timeout_s=5.0,
    )
    serve(
        app,
        "127.0.0.1",
        0,
        threads=8,
        ready=lambda host, port: print(f"PORT {port}", flush=True),
    )


if __name__ == "__main__":
    main()

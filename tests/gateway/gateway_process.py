"""Run one gateway under waitress in its own process, for tests.

As a script it prints ``PORT <n>`` once it listens and serves until
terminated; :class:`GatewayProcess` starts and stops such a process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import secure_store
from secure_store.gateway import (
    create_app,
    load_keys,
    open_replay_cache,
    serve,
)

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


class GatewayProcess:
    """A real gateway process on 127.0.0.1 with a free port."""

    def __init__(
        self,
        key_files: Sequence[Path],
        upstream_url: str,
        replay_cache: str,
    ) -> None:
        project = Path(secure_store.__file__).resolve().parents[1]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(project), env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
        command = [sys.executable, __file__, "--upstream", upstream_url]
        command += ["--replay-cache", replay_cache]
        for path in key_files:
            command += ["--key-file", str(path)]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        self.port = self._read_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def _read_port(self) -> int:
        import selectors

        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=START_TIMEOUT_S):
                self.stop()
                raise RuntimeError("the gateway process did not start")
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"the gateway process said {line!r}")
        return int(line.split()[1])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


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

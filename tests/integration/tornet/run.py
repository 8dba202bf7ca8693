"""Start the private Tor network by hand, or time its start-up."""

# Usage (from the project root):
#   .venv/bin/python tests/integration/tornet/run.py --hold
#       start, print the SOCKS port and onion, stop on Ctrl-C
#   .venv/bin/python tests/integration/tornet/run.py --runs 5
#       start and stop 5 times, print each run's times and the medians

from __future__ import annotations

import argparse
import json
import logging
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tornet.network import TorNetwork


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--hold", action="store_true")
    parser.add_argument("--work-dir", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("stem").setLevel(logging.WARNING)
    # A background job ignores SIGINT; SIGTERM must also stop the network
    # through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    results = []
    for run in range(1, args.runs + 1):
        work = args.work_dir or Path(tempfile.mkdtemp(prefix="tornet-"))
        net = TorNetwork(work / f"run{run}")
        t0 = time.monotonic()
        try:
            net.start()
            total = time.monotonic() - t0
            times = {**net.times.as_dict(), "total_s": round(total, 2)}
            results.append(times)
            print(json.dumps({"run": run, **times}), flush=True)
            if args.hold:
                print(f"SOCKS {net.proxy_url()}  onion {net.echo_onion}")
                print(f"ControlPort {net.client_control_port}")
                print(f"work dir {work}; Ctrl-C or SIGTERM stops", flush=True)
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            net.stop()
    if len(results) > 1:
        medians = {
            key: round(statistics.median(r[key] for r in results), 2)
            for key in results[0]
        }
        print(json.dumps({"median_of": len(results), **medians}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

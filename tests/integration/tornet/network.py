"""A private Tor network on 127.0.0.1 for integration tests."""

# Adapted from the project's research in research/tornet/ (start.sh,
# stop.sh, check.py): same torrc options, same phased start and readiness
# checks, rewritten in Python so a pytest fixture owns every process by its
# Popen object and stops it in a finally.
#
# Safety: every torrc carries TestingTorNetwork 1 with DirAuthority lines
# naming only our freshly generated authorities on 127.0.0.1 (which
# replaces tor's built-in public authorities), UseDefaultFallbackDirs 0,
# every port bound to 127.0.0.1, OutboundBindAddress 127.0.0.1 (a connect
# to any other address fails in the kernel), exits without DNS that accept
# only 127.0.0.1:*. PR_SET_PDEATHSIG makes every tor get SIGTERM if the
# thread that started it dies without stopping it (a killed pytest).

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import random
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
import stem
import stem.connection
import stem.control

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
TOR = os.environ.get("TOR", "tor")
TOR_GENCERT = os.environ.get("TOR_GENCERT", "tor-gencert")

# Port block: node k gets ORPort BASE+k, DirPort BASE+20+k (authorities)
# and ControlPort BASE+40+k; the client's SocksPort is BASE+60 and the
# network's own echo server BASE+61. Blocks are picked below Linux's
# ephemeral range (32768-60999), so no outgoing connection of another test
# can be holding one of our ports.
PORT_BLOCK_SIZE = 100
MAX_NODES = 20
DIR_PORT_OFFSET = 20
CONTROL_PORT_OFFSET = 40
SOCKS_PORT_OFFSET = 60
ECHO_PORT_OFFSET = 61
BASE_PORT_MIN = 20000
BASE_PORT_MAX = 32000
BASE_PORT_ATTEMPTS = 50

# Bounds on every wait. The research measured 6-26 s to a ready network
# (10 s voting rounds) and ~2 s to client bootstrap after that; an
# occasional first onion connection took 7-9 s.
NODE_START_TIMEOUT_S = 15.0
CONSENSUS_TIMEOUT_S = 120.0
BOOTSTRAP_TIMEOUT_S = 120.0
ONION_PUBLISH_TIMEOUT_S = 120.0
ONION_REACH_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.5
STOP_WAIT_S = 10.0
GENERATE_TIMEOUT_S = 30.0

VOTING_INTERVAL_S = 10  # the minimum TestingTorNetwork allows
INITIAL_VOTING_INTERVAL_S = 5
VOTE_DELAY_S = 2


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM us when our parent dies."""
    # Not __OwningControllerProcess: stem turns that into TAKEOWNERSHIP on
    # every control connection from this process, and closing any of them
    # (a test's own Controller) would then stop that tor.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class TorNetworkError(RuntimeError):
    """The private Tor network could not be started or failed a check."""


@dataclass(frozen=True)
class Node:
    """One tor process of the network and its ports."""

    kind: str  # "auth", "relay", "exit", "client" or "hs"
    nick: str
    index: int
    base_port: int
    data_dir: Path

    @property
    def is_relay(self) -> bool:
        return self.kind in ("auth", "relay", "exit")

    @property
    def or_port(self) -> int:
        return self.base_port + self.index

    @property
    def dir_port(self) -> int:
        return self.base_port + DIR_PORT_OFFSET + self.index

    @property
    def control_port(self) -> int:
        return self.base_port + CONTROL_PORT_OFFSET + self.index

    @property
    def torrc(self) -> Path:
        return self.data_dir / "torrc"


@dataclass
class StartTimes:
    """Seconds from the launch of the first tor process (keys: before it)."""

    keys_s: float = 0.0
    network_ready_s: float = 0.0
    client_bootstrapped_s: float = 0.0
    onion_published_s: float = 0.0
    onion_reachable_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 2) for k, v in self.__dict__.items()}


@dataclass
class _Proc:
    node: Node
    popen: subprocess.Popen[bytes]
    log_file: Any = field(repr=False)


class _EchoHandler(BaseHTTPRequestHandler):
    """Answers every POST with a JSON description of the request."""

    protocol_version = "HTTP/1.1"
    # Tor adds ~40 ms per delayed ACK already; do not add our own.
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        out = json.dumps(
            {
                "host": self.headers.get("Host"),
                "length": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "peer": f"{self.client_address[0]}:{self.client_address[1]}",
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("echo: " + format, *args)


def port_is_free(port: int) -> bool:
    """True if nothing on 127.0.0.1 holds ``port`` (bind test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def pick_base_port(n_ports: int, preferred: int | None = None) -> int:
    """A block start whose ports 0..n_ports-1 are all free on 127.0.0.1.

    ``preferred`` (or TORNET_BASE_PORT) is used as is if free, else it is an
    error: an explicitly chosen block must not silently move.
    """
    if preferred is None and os.environ.get("TORNET_BASE_PORT"):
        preferred = int(os.environ["TORNET_BASE_PORT"])
    if preferred is not None:
        busy = [
            p
            for p in range(preferred, preferred + n_ports)
            if not port_is_free(p)
        ]
        if busy:
            raise TorNetworkError(f"ports in use in the block: {busy}")
        return preferred
    rng = random.SystemRandom()
    blocks = (BASE_PORT_MAX - BASE_PORT_MIN) // PORT_BLOCK_SIZE
    for _ in range(BASE_PORT_ATTEMPTS):
        base = BASE_PORT_MIN + rng.randrange(blocks) * PORT_BLOCK_SIZE
        if all(port_is_free(p) for p in range(base, base + n_ports)):
            return base
    raise TorNetworkError("no free port block found on 127.0.0.1")


def parse_proc_address(
    hex_address: str,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address of /proc/net/tcp (hex, host byte order) as an IP."""
    ip_hex, _, _port = hex_address.partition(":")
    raw = bytes.fromhex(ip_hex)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    ip6 = ipaddress.IPv6Address(words)
    return ip6.ipv4_mapped or ip6


class TorNetwork:
    """Authorities, relays, one exit, a client and an onion-service host.

    ``start()`` returns when the client is bootstrapped and an onion service
    in front of the network's own echo server answered a POST through the
    client's SOCKS port; ``stop()`` stops every process by its PID.
    Tests add their own onion services with ``add_onion(port)``.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        base_port: int | None = None,
        authorities: int = 3,
        relays: int = 2,
        exits: int = 1,
        log_level: str = "notice",
    ) -> None:
        if authorities < 1 or exits < 1:
            raise ValueError("need at least one authority and one exit")
        if authorities + relays + exits < 4:
            # Onion-service circuits need 4 distinct relays (research).
            raise ValueError("need at least 4 relays in all")
        if authorities + relays + exits + 2 > MAX_NODES:
            raise ValueError(f"at most {MAX_NODES} nodes fit a port block")
        self.work_dir = Path(work_dir)
        self._requested_base_port = base_port
        self._counts = (authorities, relays, exits)
        self._log_level = log_level
        self.base_port = 0
        self.nodes: list[Node] = []
        self.times = StartTimes()
        self._procs: list[_Proc] = []
        self._controllers: dict[str, stem.control.Controller] = {}
        self._echo: ThreadingHTTPServer | None = None
        self._echo_thread: threading.Thread | None = None
        self._t_launch = 0.0
        self.echo_onion = ""

    # -- public view --------------------------------------------------

    @property
    def relays(self) -> list[Node]:
        return [n for n in self.nodes if n.is_relay]

    def node(self, nick: str) -> Node:
        for n in self.nodes:
            if n.nick == nick:
                return n
        raise KeyError(nick)

    @property
    def socks_port(self) -> int:
        return self.base_port + SOCKS_PORT_OFFSET

    @property
    def echo_port(self) -> int:
        return self.base_port + ECHO_PORT_OFFSET

    @property
    def client_control_port(self) -> int:
        return self.node("client").control_port

    @property
    def client_cookie_path(self) -> Path:
        return self.node("client").data_dir / "control_auth_cookie"

    def proxy_url(self, username: str = "", password: str = "") -> str:
        """The client's SOCKS port as a socks5h:// URL (remote DNS)."""
        creds = f"{username}:{password}@" if username else ""
        return f"socks5h://{creds}{LOOPBACK}:{self.socks_port}"

    def pids(self) -> dict[str, int]:
        return {p.node.nick: p.popen.pid for p in self._procs}

    def controller(self, nick: str) -> stem.control.Controller:
        """An authenticated control connection to a node, kept open."""
        if nick not in self._controllers:
            node = self.node(nick)
            ctl = stem.control.Controller.from_port(
                address=LOOPBACK, port=node.control_port
            )
            ctl.authenticate()
            self._controllers[nick] = ctl
        return self._controllers[nick]

    def since_launch(self) -> float:
        return time.monotonic() - self._t_launch

    # -- start --------------------------------------------------------

    def start(self) -> None:
        """Start the network; on any failure stop what was started."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        n_auth, n_relay, n_exit = self._counts
        n_nodes = n_auth + n_relay + n_exit + 2
        self.base_port = pick_base_port(
            PORT_BLOCK_SIZE, self._requested_base_port
        )
        self.work_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.work_dir, 0o700)
        kinds = (
            ["auth"] * n_auth
            + ["relay"] * n_relay
            + ["exit"] * n_exit
            + ["client", "hs"]
        )
        counters: dict[str, int] = {}
        for index, kind in enumerate(kinds[:n_nodes]):
            number = counters.get(kind, 0)
            counters[kind] = number + 1
            nick = kind if kind in ("client", "hs") else f"{kind}{number}"
            self.nodes.append(
                Node(kind, nick, index, self.base_port, self.work_dir / nick)
            )
        log.info("tornet: port block %d, %s", self.base_port, self.work_dir)

        t0 = time.monotonic()
        self._generate_keys_and_torrcs()
        self.times.keys_s = time.monotonic() - t0
        self._start_echo_server()

        # Phase 1: authorities and relays.
        self._t_launch = time.monotonic()
        for node in self.relays:
            self._launch(node)
        self._wait_network_ready()
        self.times.network_ready_s = self.since_launch()

        # Phase 2: client and onion-service host, only now (research,
        # "Flakiness" 1 and 2: started earlier they bootstrap from a
        # partial consensus, or meet an exit that refuses streams).
        self._launch(self.node("client"))
        self._launch(self.node("hs"))
        self._wait_bootstrapped("client")
        self.times.client_bootstrapped_s = self.since_launch()
        self._wait_bootstrapped("hs")

        self.echo_onion = self.add_onion(self.echo_port)
        self.times.onion_published_s = self.since_launch()
        self.wait_onion_reachable(self.echo_onion)
        self.times.onion_reachable_s = self.since_launch()
        log.info("tornet: ready %s", self.times.as_dict())

    def _run_quiet(self, argv: list[str], stdin: bytes = b"") -> None:
        result = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            timeout=GENERATE_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            raise TorNetworkError(
                f"{argv[0]} failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace')[-500:]}"
            )

    def _generate_keys_and_torrcs(self) -> None:
        for node in self.nodes:
            (node.data_dir / "keys").mkdir(parents=True, mode=0o700)
            os.chmod(node.data_dir, 0o700)
        # One tor/tor-gencert run per relay, ~0.3 s of CPU each: in
        # parallel they take about half as long on two cores.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            made = list(pool.map(self._make_keys, self.relays))
        dir_auth_lines = [line for _, line in made if line]
        auth_fps = [
            "$" + fp
            for (fp, _), n in zip(made, self.relays, strict=True)
            if n.kind == "auth"
        ]
        exit_fps = [
            "$" + fp
            for (fp, _), n in zip(made, self.relays, strict=True)
            if n.kind == "exit"
        ]
        for node in self.nodes:
            node.torrc.write_text(
                self._torrc(node, dir_auth_lines, auth_fps, exit_fps)
            )

    def _make_keys(self, node: Node) -> tuple[str, str]:
        """Identity keys of a relay; also v3 authority keys of an
        authority. Returns (fingerprint, its DirAuthority line or '')."""
        # DisableNetwork 1 and no torrc: pure key generation.
        self._run_quiet(
            [
                TOR,
                "--quiet",
                "--ignore-missing-torrc",
                "-f",
                "/nonexistent",
                "--defaults-torrc",
                "/nonexistent",
                "--DisableNetwork",
                "1",
                "--DataDirectory",
                str(node.data_dir),
                "--Nickname",
                node.nick,
                "--ORPort",
                f"{LOOPBACK}:{node.or_port}",
                "--Address",
                LOOPBACK,
                "--list-fingerprint",
            ]
        )
        fp = (node.data_dir / "fingerprint").read_text().split()[1]
        if node.kind != "auth":
            return fp, ""
        keys = node.data_dir / "keys"
        self._run_quiet(
            [
                TOR_GENCERT,
                "--create-identity-key",
                "--passphrase-fd",
                "0",
                "-m",
                "12",
                "-a",
                f"{LOOPBACK}:{node.dir_port}",
                "-i",
                str(keys / "authority_identity_key"),
                "-s",
                str(keys / "authority_signing_key"),
                "-c",
                str(keys / "authority_certificate"),
            ],
            stdin=b"\n",
        )
        cert = (keys / "authority_certificate").read_text()
        v3ident = next(
            line.split()[1]
            for line in cert.splitlines()
            if line.startswith("fingerprint ")
        )
        return fp, (
            f"DirAuthority {node.nick} orport={node.or_port} "
            f"v3ident={v3ident} {LOOPBACK}:{node.dir_port} {fp}"
        )

    def _torrc(
        self,
        node: Node,
        dir_auth_lines: list[str],
        auth_fps: list[str],
        exit_fps: list[str],
    ) -> str:
        d = node.data_dir
        lines = [
            f"# Node {node.nick} of a loopback-only private Tor network.",
            "TestingTorNetwork 1",
            *dir_auth_lines,
            "UseDefaultFallbackDirs 0",
            f"DataDirectory {d}",
            f"Nickname {node.nick}",
            "RunAsDaemon 0",
            f"Log {self._log_level} file {d / 'notice.log'}",
            "SafeLogging 0",
            "LogTimeGranularity 1",
            "ShutdownWaitLength 0",
            f"ControlPort {LOOPBACK}:{node.control_port}",
            "CookieAuthentication 1",
            # No GeoIP database: -30 MB and -0.2 s CPU per process.
            "GeoIPFile",
            "GeoIPv6File",
            "ClientUseIPv6 0",
            "ClientPreferIPv6ORPort 0",
            f"OutboundBindAddress {LOOPBACK}",
            # chutney's rapid bootstrap.
            "AssumeReachable 1",
            "PathsNeededToBuildCircuits 0.25",
            # Relays re-publish in their first minute; fetch at once.
            "TestingClientMaxIntervalWithoutRequest 1 second",
            # A microdescriptor hides a 127.0.0.1-only exit policy.
            "UseMicrodescriptors 0",
        ]
        if node.is_relay:
            lines += [
                "SocksPort 0",
                f"ORPort {LOOPBACK}:{node.or_port}",
                f"Address {LOOPBACK}",
                "AddressDisableIPv6 1",
                f"ContactInfo {node.nick}@tornet.invalid",
                "ServerDNSResolvConfFile /dev/null",
                "ServerDNSDetectHijacking 0",
                "ServerDNSTestAddresses",
            ]
        if node.kind == "auth":
            lines += [
                f"DirPort {LOOPBACK}:{node.dir_port}",
                "ExitRelay 0",
                "ExitPolicy reject *:*",
                "AuthoritativeDirectory 1",
                "V3AuthoritativeDirectory 1",
                "TestingV3AuthInitialVotingInterval "
                f"{INITIAL_VOTING_INTERVAL_S}",
                f"TestingV3AuthInitialVoteDelay {VOTE_DELAY_S}",
                f"TestingV3AuthInitialDistDelay {VOTE_DELAY_S}",
                f"V3AuthVotingInterval {VOTING_INTERVAL_S}",
                f"V3AuthVoteDelay {VOTE_DELAY_S}",
                f"V3AuthDistDelay {VOTE_DELAY_S}",
                "V3AuthNIntervalsValid 2",
                # Guard and HSDir only on authorities: a relay cache can lag
                # behind a new consensus (research, "Flakiness" 3).
                f"TestingDirAuthVoteGuard {','.join(auth_fps)}",
                f"TestingDirAuthVoteHSDir {','.join(auth_fps)}",
                f"TestingDirAuthVoteExit {','.join(exit_fps)}",
                "TestingMinExitFlagThreshold 0",
            ]
        elif node.kind == "relay":
            lines += ["ExitRelay 0", "ExitPolicy reject *:*"]
        elif node.kind == "exit":
            lines += [
                "ExitRelay 1",
                "IPv6Exit 0",
                "ExitPolicyRejectPrivate 0",
                f"ExitPolicy accept {LOOPBACK}:*",
                "ExitPolicy reject *:*",
            ]
        elif node.kind == "client":
            lines += [
                f"SocksPort {LOOPBACK}:{self.socks_port} IsolateSOCKSAuth",
                # Multi-leg circuits blur "one stream, one circuit".
                "ConfluxEnabled 0",
            ]
        else:  # hs: onion services come over the control port (ADD_ONION)
            lines += ["SocksPort 0"]
        return "\n".join(lines) + "\n"

    def _start_echo_server(self) -> None:
        ThreadingHTTPServer.daemon_threads = True
        self._echo = ThreadingHTTPServer(
            (LOOPBACK, self.echo_port), _EchoHandler
        )
        self._echo_thread = threading.Thread(
            target=self._echo.serve_forever, name="tornet-echo", daemon=True
        )
        self._echo_thread.start()

    def _launch(self, node: Node) -> None:
        log_file = open(node.data_dir / "stdout.log", "wb")  # noqa: SIM115
        popen = subprocess.Popen(
            [TOR, "-f", str(node.torrc), "--defaults-torrc", "/nonexistent"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self._procs.append(_Proc(node, popen, log_file))
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                raise TorNetworkError(
                    f"tor {node.nick} exited with {popen.returncode}: "
                    f"{self.log_tail(node)}"
                )
            cookie = node.data_dir / "control_auth_cookie"
            if cookie.exists() and _can_connect(node.control_port):
                return
            time.sleep(0.05)
        raise TorNetworkError(f"tor {node.nick} did not open its ControlPort")

    def log_tail(self, node: Node, lines: int = 15) -> str:
        path = node.data_dir / "notice.log"
        if not path.exists():
            path = node.data_dir / "stdout.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text().splitlines()[-lines:])
        return "(no log)"

    def _check_alive(self) -> None:
        for proc in self._procs:
            if proc.popen.poll() is not None:
                raise TorNetworkError(
                    f"tor {proc.node.nick} died ({proc.popen.returncode}): "
                    f"{self.log_tail(proc.node)}"
                )

    def fetch_consensus(self) -> str:
        """The consensus served on authority 0's DirPort ('' if none)."""
        auth0 = self.nodes[0]
        conn = http.client.HTTPConnection(LOOPBACK, auth0.dir_port, timeout=5)
        try:
            conn.request("GET", "/tor/status-vote/current/consensus")
            resp = conn.getresponse()
            body = resp.read()
            return body.decode(errors="replace") if resp.status == 200 else ""
        except OSError:
            return ""
        finally:
            conn.close()

    def _wait_network_ready(self) -> None:
        """Wait until (a) authority 0 serves a consensus listing every relay
        with Exit on every exit and (b) every relay's own consensus lists
        every relay (an exit without one refuses streams)."""
        want = len(self.relays)
        want_exits = sum(1 for n in self.relays if n.kind == "exit")
        deadline = time.monotonic() + CONSENSUS_TIMEOUT_S
        have, exits, waiting = 0, 0, [n.nick for n in self.relays]
        while time.monotonic() < deadline:
            self._check_alive()
            have, exits = _count_relays(self.fetch_consensus())
            if have == want and exits == want_exits:
                waiting = [
                    n.nick
                    for n in self.relays
                    if self._relays_known_to(n.nick) != want
                ]
                if not waiting:
                    return
            time.sleep(POLL_INTERVAL_S)
        raise TorNetworkError(
            f"network not ready after {CONSENSUS_TIMEOUT_S} s: consensus "
            f"lists {have}/{want} relays, {exits}/{want_exits} exits; "
            f"relays without it: {waiting}"
        )

    def _relays_known_to(self, nick: str) -> int:
        try:
            ns = self.controller(nick).get_info("ns/all", "")
        except (stem.ControllerError, stem.SocketError):
            return 0
        return sum(1 for line in ns.splitlines() if line.startswith("r "))

    def bootstrap_percent(self, nick: str) -> int:
        phase = self.controller(nick).get_info("status/bootstrap-phase")
        return int(phase.split("PROGRESS=")[1].split()[0])

    def _wait_bootstrapped(self, nick: str) -> None:
        deadline = time.monotonic() + BOOTSTRAP_TIMEOUT_S
        percent = 0
        while time.monotonic() < deadline:
            self._check_alive()
            percent = self.bootstrap_percent(nick)
            if percent == 100:
                return
            time.sleep(0.2)
        raise TorNetworkError(
            f"{nick} at {percent}% after {BOOTSTRAP_TIMEOUT_S} s: "
            f"{self.log_tail(self.node(nick))}"
        )

    # -- onion services ------------------------------------------------

    def add_onion(
        self,
        target_port: int,
        virtual_port: int = 80,
        timeout_s: float = ONION_PUBLISH_TIMEOUT_S,
    ) -> str:
        """A new v3 onion service on the hs node in front of
        127.0.0.1:target_port (ADD_ONION, the control-port form of
        HiddenServicePort); returns its hostname once a descriptor is on
        an HSDir. It lives as long as the network."""
        ctl = self.controller("hs")
        resp = ctl.create_ephemeral_hidden_service(
            {virtual_port: f"{LOOPBACK}:{target_port}"},
            key_type="NEW",
            key_content="ED25519-V3",
            discard_key=True,
            await_publication=True,
            timeout=timeout_s,
        )
        return f"{resp.service_id}.onion"

    def post(
        self,
        url: str,
        body: bytes,
        username: str,
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> requests.Response:
        """One POST through the client's SOCKS port as ``username``."""
        proxy = self.proxy_url(username, "x")
        with requests.Session() as session:
            session.trust_env = False
            return session.post(
                url,
                data=body,
                proxies={"http": proxy, "https": proxy},
                timeout=timeout_s,
                allow_redirects=False,
            )

    def wait_onion_reachable(
        self, onion: str, timeout_s: float = ONION_REACH_TIMEOUT_S
    ) -> None:
        """Retry a POST to the network's echo server behind ``onion``."""
        deadline = time.monotonic() + timeout_s
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = self.post(
                    f"http://{onion}/", b"ping", f"reach-{attempt}"
                )
                if resp.status_code == 200:
                    return
                problem = f"HTTP {resp.status_code}"
            except requests.RequestException as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise TorNetworkError(
                    f"{onion} unreachable after {timeout_s} s: {problem}"
                )
            # A failed lookup is re-asked after 5 s in a test network.
            time.sleep(1)

    # -- audits ---------------------------------------------------------

    def consensus_addresses(self) -> list[str]:
        """The sorted distinct addresses of the client's consensus."""
        statuses = self.controller("client").get_network_statuses()
        return sorted({entry.address for entry in statuses})

    def consensus_relay_count(self) -> int:
        return len(list(self.controller("client").get_network_statuses()))

    def consensus_dir_sources(self) -> list[str]:
        """Addresses of the authorities that signed the client's consensus."""
        path = self.node("client").data_dir / "cached-consensus"
        return [
            line.split()[4]
            for line in path.read_text().splitlines()
            if line.startswith("dir-source ")
        ]

    def socket_audit(self) -> tuple[list[str], int]:
        """Every TCP/UDP socket of every tor process: (non-loopback ones,
        number checked). Unbound/unconnected (0.0.0.0) ends are fine."""
        bad: list[str] = []
        count = 0
        for nick, pid in self.pids().items():
            inodes = set()
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
            for proto in ("tcp", "tcp6", "udp", "udp6"):
                table = Path(f"/proc/{pid}/net/{proto}").read_text()
                for row in table.splitlines()[1:]:
                    cols = row.split()
                    if cols[9] not in inodes:
                        continue
                    count += 1
                    for end in (cols[1], cols[2]):
                        ip = parse_proc_address(end)
                        if not (ip.is_loopback or ip.is_unspecified):
                            bad.append(f"{nick} {proto} {ip}")
        return bad, count

    # -- stop -------------------------------------------------------------

    def stop(self) -> None:
        """Stop every process this object started, by PID; idempotent."""
        for ctl in self._controllers.values():
            with contextlib.suppress(Exception):
                ctl.close()
        self._controllers.clear()
        # Popen keeps an unreaped child's PID reserved, so the signal can
        # never reach a recycled PID.
        for proc in self._procs:
            if proc.popen.poll() is None:
                proc.popen.terminate()
        deadline = time.monotonic() + STOP_WAIT_S
        for proc in self._procs:
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("tornet: killing %s", proc.node.nick)
                proc.popen.kill()
                proc.popen.wait()
            proc.log_file.close()
        self._procs.clear()
        if self._echo is not None:
            self._echo.shutdown()
            self._echo.server_close()
            self._echo = None

    def __enter__(self) -> TorNetwork:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _can_connect(port: int) -> bool:
    with contextlib.suppress(OSError):
        socket.create_connection((LOOPBACK, port), timeout=1).close()
        return True
    return False


def _count_relays(consensus: str) -> tuple[int, int]:
    """(relays, relays with the Exit flag) listed in a consensus."""
    relays = exits = 0
    for line in consensus.splitlines():
        if line.startswith("r "):
            relays += 1
        elif line.startswith("s ") and "Exit" in line.split():
            exits += 1
    return relays, exits


class LoneTor:
    """One tor client in a private test network that does not exist.

    Its only DirAuthority is a closed port on 127.0.0.1, so it never
    bootstraps past "connecting to a relay", but its SocksPort and
    ControlPort are real Tor: enough to test a readiness check in a
    second instead of ~25 s.
    """

    # Block layout: 0 SocksPort, 1 ControlPort, 2 the authority's ORPort
    # and 3 its DirPort, which nothing listens on.
    PORTS = 4

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = Path(work_dir)
        self.base_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def socks_port(self) -> int:
        return self.base_port

    @property
    def control_port(self) -> int:
        return self.base_port + 1

    @property
    def cookie_path(self) -> Path:
        return self.work_dir / "control_auth_cookie"

    def proxy_url(self) -> str:
        return f"socks5h://{LOOPBACK}:{self.socks_port}"

    def start(self) -> None:
        self.base_port = pick_base_port(self.PORTS)
        self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.work_dir, 0o700)
        fake_id = "0" * 40  # identities of an authority that never answers
        torrc = self.work_dir / "torrc"
        torrc.write_text(
            "\n".join(
                [
                    "TestingTorNetwork 1",
                    f"DirAuthority nowhere orport={self.base_port + 2} "
                    f"v3ident={fake_id} {LOOPBACK}:{self.base_port + 3} "
                    f"{fake_id}",
                    "UseDefaultFallbackDirs 0",
                    f"DataDirectory {self.work_dir}",
                    "RunAsDaemon 0",
                    f"Log notice file {self.work_dir / 'notice.log'}",
                    f"SocksPort {LOOPBACK}:{self.socks_port}",
                    f"ControlPort {LOOPBACK}:{self.control_port}",
                    "CookieAuthentication 1",
                    "GeoIPFile",
                    "GeoIPv6File",
                    "ClientUseIPv6 0",
                    f"OutboundBindAddress {LOOPBACK}",
                ]
            )
            + "\n"
        )
        self._log_file = open(self.work_dir / "stdout.log", "wb")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [TOR, "-f", str(torrc), "--defaults-torrc", "/nonexistent"],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self.stop()
                raise TorNetworkError("lone tor exited at start")
            if (
                self.cookie_path.exists()
                and _can_connect(self.control_port)
                and _can_connect(self.socks_port)
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise TorNetworkError("lone tor did not open its ports")

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
            try:
                self._proc.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> LoneTor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

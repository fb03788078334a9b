"""Who may connect to TCP uwsgi sockets and stats servers bound beyond loopback, with real peers.

The only non-loopback peers a test may have live in network namespaces: a server namespace and a
client namespace joined by a veth pair, each end with a private address (10.77.0.0/24, fd77::/64)
and a public one (203.0.113.0/24, 2001:db8:77::/64). binserve runs in the server namespace and a
probe in the client namespace connects to one address or the other, so the kernel picks the
matching source address: the server sees a private peer or a public one. Nothing is added to the
host's own interfaces, and the namespaces (and with them the veth pair) are deleted afterwards.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from binserve.sockets import REFUSAL_LINES, REFUSAL_WINDOW, PeerFilter, parse_tcp
from binserve.testing import Process, Server, wait_for

from support import APPS

IP = "/usr/sbin/ip"
SERVER_ADDRESSES = ("10.77.0.1/24", "203.0.113.1/24", "fd77::1/64", "2001:db8:77::1/64")
CLIENT_ADDRESSES = ("10.77.0.2/24", "203.0.113.7/24", "fd77::2/64", "2001:db8:77::7/64")
PORT, STATS = 8000, 9191
_names = itertools.count()

APP = (APPS / "exposure_app.py").read_text()

# Each target is KIND,HOST,PORT: "ping" sends a uwsgi ping and wants the pong, "read" reads a
# (msgpack) stats document to its end. Prints one verdict per target, as JSON.
PROBE = r"""
import json, socket, sys
import msgpack
from binserve.protocol import PING, PONG

def probe(kind, host, port):
    try:
        with socket.create_connection((host, int(port)), timeout=3) as sock:
            if kind == "ping":
                sock.sendall(PING)
                return "answered" if sock.recv(4) == PONG else "refused"
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except (ConnectionResetError, BrokenPipeError):
        return "refused"
    except OSError as exc:
        return f"error: {exc}"
    if not data:
        return "refused"
    return "answered" if "version" in msgpack.unpackb(data) else f"garbled: {data[:40]!r}"

print(json.dumps([probe(*target.split(",")) for target in sys.argv[1:]]))
"""


@dataclass
class Namespaces:
    """A server and a client network namespace joined by one veth pair."""

    server: str
    client: str

    def probe(self, namespace: str, *targets: tuple[str, str, int]) -> list[str]:
        """The verdicts of ``targets`` (kind, host, port) probed from inside ``namespace``."""
        done = subprocess.run(
            [IP, "netns", "exec", namespace, sys.executable, "-c", PROBE]
            + [",".join(map(str, target)) for target in targets],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        verdicts: list[str] = json.loads(done.stdout)
        return verdicts


def ip(*args: str) -> None:
    subprocess.run([IP, *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[Namespaces]:
    """Two fresh namespaces with private and public addresses on a veth pair; deleted afterwards."""
    assert os.geteuid() == 0, "network namespaces need root (as CI runs)"
    tag = f"bx{os.getpid()}n{next(_names)}"
    spaces = Namespaces(f"{tag}s", f"{tag}c")
    try:
        for space in (spaces.server, spaces.client):
            ip("netns", "add", space)
        # Created straight inside the namespaces: the host never sees either end.
        ip(
            "link",
            "add",
            "v0",
            "netns",
            spaces.server,
            "type",
            "veth",
            "peer",
            "name",
            "v1",
            "netns",
            spaces.client,
        )
        for space, device, addresses in (
            (spaces.server, "v0", SERVER_ADDRESSES),
            (spaces.client, "v1", CLIENT_ADDRESSES),
        ):
            for address in addresses:
                # nodad: an IPv6 address is usable at once instead of after duplicate detection.
                ip("-n", space, "addr", "add", address, "dev", device, *(["nodad"] if ":" in address else []))
            ip("-n", space, "link", "set", device, "up")
            ip("-n", space, "link", "set", "lo", "up")
        yield spaces
    finally:
        for space in (spaces.server, spaces.client):
            subprocess.run([IP, "netns", "del", space], capture_output=True, timeout=30)


class NsServer(Server):
    """binserve started inside a network namespace, with a unix socket the host can ping."""

    def __init__(
        self, tmp_path: Path, namespace: str, args: Sequence[str], ready: Callable[[str], bool]
    ) -> None:
        self.tmp_path = tmp_path
        self.socket = tmp_path / "app.sock"
        # ip netns exec execs the interpreter: the pid is binserve's own.
        argv = [IP, "netns", "exec", namespace, sys.executable, "-m", "binserve", *args]
        Process.__init__(self, argv, tmp_path / f"binserve-{time.monotonic_ns()}.log", cwd=tmp_path)

        def up() -> bool:
            self.check_running("binserve")
            return ready(self.log())

        wait_for(up, 20, "binserve in the namespace")


@pytest.fixture
def serve_in(netns: Namespaces, tmp_path: Path) -> Iterator[Callable[..., NsServer]]:
    """Start binserve in the server namespace: ``serve_in(*args, ready=...)``; stopped afterwards."""
    started: list[NsServer] = []
    (tmp_path / "app.py").write_text(APP)

    def start(*args: str, ready: Callable[[str], bool] = lambda log: True) -> NsServer:
        server = NsServer(tmp_path, netns.server, args, ready)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def uwsgi_server(serve_in: Callable[..., NsServer], tmp_path: Path, *args: str) -> NsServer:
    """binserve with one worker on a unix socket and the given TCP socket and options."""
    server = serve_in("--wsgi-file", str(tmp_path / "app.py"), "--socket", str(tmp_path / "app.sock"), *args)
    server.wait_ready()
    return server


def refusals(server: Server, peer: str) -> list[str]:
    """The log lines reporting a refused connection from ``peer``."""
    return [line for line in server.log().splitlines() if f"refused a connection from {peer} " in line]


# -- the default policy: local infrastructure ----------------------------------------------------------
@pytest.mark.process
def test_all_interfaces_answer_private_and_loopback_peers_and_refuse_public_ones(
    netns: Namespaces, serve_in: Callable[..., NsServer], tmp_path: Path
) -> None:
    # ":8000" is uWSGI's spelling of every interface, as in uwsgi.ini files written for nginx
    # in another container.
    server = uwsgi_server(serve_in, tmp_path, "--socket", f":{PORT}", "--stats", f"0.0.0.0:{STATS}")
    log = server.log()
    assert f"socket :{PORT} listens on 0.0.0.0, beyond loopback, and answers only loopback and private" in log
    assert (
        f"stats server 0.0.0.0:{STATS} listens on 0.0.0.0, beyond loopback, and answers only loopback" in log
    )
    assert netns.probe(
        netns.client,
        ("ping", "10.77.0.1", PORT),
        ("read", "10.77.0.1", STATS),
        ("ping", "203.0.113.1", PORT),
        ("read", "203.0.113.1", STATS),
    ) == ["answered", "answered", "refused", "refused"]
    assert netns.probe(netns.server, ("ping", "127.0.0.1", PORT), ("read", "127.0.0.1", STATS)) == [
        "answered",
        "answered",
    ]
    wait_for(lambda: len(refusals(server, "203.0.113.7")) == 2, 10, "a refusal line for each socket")
    uwsgi, stats = sorted(refusals(server, "203.0.113.7"), key=lambda line: "stats:" in line)
    assert f"worker 1: refused a connection from 203.0.113.7 on 0.0.0.0:{PORT}: not a loopback or " in uwsgi
    assert f"stats: refused a connection from 203.0.113.7 on 0.0.0.0:{STATS}: not a loopback or " in stats
    assert not refusals(server, "10.77.0.2") and not refusals(server, "127.0.0.1")


@pytest.mark.process
def test_a_dual_stack_socket_judges_ipv6_and_ipv4_mapped_peers_alike(
    netns: Namespaces, serve_in: Callable[..., NsServer], tmp_path: Path
) -> None:
    uwsgi_server(serve_in, tmp_path, "--socket", f"[::]:{PORT}", "--stats", f"[::]:{STATS}")
    assert (
        netns.probe(
            netns.client,
            ("ping", "fd77::1", PORT),
            ("ping", "10.77.0.1", PORT),  # seen as ::ffff:10.77.0.2
            ("read", "fd77::1", STATS),
            ("ping", "2001:db8:77::1", PORT),
            ("ping", "203.0.113.1", PORT),  # seen as ::ffff:203.0.113.7
            ("read", "2001:db8:77::1", STATS),
            ("read", "203.0.113.1", STATS),
        )
        == ["answered"] * 3 + ["refused"] * 4
    )
    assert netns.probe(netns.server, ("ping", "::1", PORT), ("read", "::1", STATS)) == ["answered"] * 2


@pytest.mark.process
def test_a_flood_from_one_refused_peer_is_one_log_line(
    netns: Namespaces, serve_in: Callable[..., NsServer], tmp_path: Path
) -> None:
    server = uwsgi_server(serve_in, tmp_path, "--socket", f"0.0.0.0:{PORT}", "--stats", f"0.0.0.0:{STATS}")
    verdicts = netns.probe(
        netns.client, *[("ping", "203.0.113.1", PORT), ("read", "203.0.113.1", STATS)] * 100
    )
    assert verdicts == ["refused"] * 200
    assert netns.probe(netns.client, ("ping", "10.77.0.1", PORT)) == ["answered"], "the server still serves"
    assert len(refusals(server, "203.0.113.7")) == 2, "one line per socket, not one per connection"


# -- uwsgi-allow-from: exactly the listed networks -------------------------------------------------------
@pytest.mark.process
def test_an_explicit_list_is_exact_and_narrows_even_loopback_away(
    netns: Namespaces, serve_in: Callable[..., NsServer], tmp_path: Path
) -> None:
    server = uwsgi_server(
        serve_in,
        tmp_path,
        "--socket",
        f"0.0.0.0:{PORT}",
        "--stats",
        f"0.0.0.0:{STATS}",
        "--uwsgi-allow-from",
        "10.77.0.2",
    )
    assert "answers only the peers in uwsgi-allow-from: 10.77.0.2/32" in server.log()
    assert (
        netns.probe(netns.client, ("ping", "10.77.0.1", PORT), ("read", "10.77.0.1", STATS))
        == ["answered"] * 2
    )
    assert (
        netns.probe(netns.server, ("ping", "127.0.0.1", PORT), ("read", "127.0.0.1", STATS))
        == ["refused"] * 2
    )
    wait_for(lambda: len(refusals(server, "127.0.0.1")) == 2, 10, "the loopback refusals in the log")
    assert all(line.endswith(": not in uwsgi-allow-from") for line in refusals(server, "127.0.0.1"))


@pytest.mark.process
def test_an_explicit_list_widens_to_a_public_peer(
    netns: Namespaces, serve_in: Callable[..., NsServer], tmp_path: Path
) -> None:
    uwsgi_server(
        serve_in,
        tmp_path,
        "--socket",
        f"0.0.0.0:{PORT}",
        "--stats",
        f"0.0.0.0:{STATS}",
        "--uwsgi-allow-from",
        "203.0.113.0/24",
        "--uwsgi-allow-from",
        "127.0.0.1",
    )
    assert netns.probe(
        netns.client,
        ("ping", "203.0.113.1", PORT),
        ("read", "203.0.113.1", STATS),
        ("ping", "10.77.0.1", PORT),
        ("read", "10.77.0.1", STATS),
    ) == ["answered", "answered", "refused", "refused"]
    assert netns.probe(netns.server, ("ping", "127.0.0.1", PORT)) == ["answered"]


@pytest.mark.process
def test_the_emperor_stats_server_answers_local_infrastructure_only(
    netns: Namespaces, serve_in: Callable[..., NsServer], tmp_path: Path
) -> None:
    (tmp_path / "vassals").mkdir()
    server = serve_in(
        "--emperor",
        str(tmp_path / "vassals"),
        "--emperor-stats",
        f"0.0.0.0:{STATS}",
        ready=lambda log: "emperor watching" in log,
    )
    assert f"stats server 0.0.0.0:{STATS} listens on 0.0.0.0, beyond loopback" in server.log()
    assert netns.probe(netns.client, ("read", "10.77.0.1", STATS), ("read", "203.0.113.1", STATS)) == [
        "answered",
        "refused",
    ]
    assert netns.probe(netns.server, ("read", "127.0.0.1", STATS)) == ["answered"]
    wait_for(lambda: len(refusals(server, "203.0.113.7")) == 1, 10, "the refusal in the log")


# -- the policy and its log, without processes ---------------------------------------------------------
def test_the_default_policy_is_loopback_and_private_networks_in_every_form() -> None:
    allows = PeerFilter([]).allows
    local = ["127.0.0.1", "127.3.2.1", "::1", "10.1.2.3", "172.16.0.1", "172.31.255.254", "192.168.1.1"]
    local += ["100.64.0.1", "100.127.255.254", "169.254.1.1", "fd00::1", "fc00::1", "fe80::1", "fe80::1%eth0"]
    local += ["::ffff:127.0.0.1", "::ffff:10.1.2.3", "::ffff:172.20.0.1", "::ffff:192.168.0.1"]
    local += ["::ffff:100.64.0.1", "::ffff:169.254.0.1"]
    for peer in local:
        assert allows(peer), peer
    public = ["8.8.8.8", "203.0.113.7", "172.32.0.1", "172.15.255.255", "100.128.0.1", "192.169.0.1"]
    public += ["11.0.0.1", "2001:db8::1", "fec0::1", "::ffff:8.8.8.8", "::", "0.0.0.0", "not an address", ""]
    for peer in public:
        assert not allows(peer), peer


def test_uwsgi_spellings_of_every_interface_parse() -> None:
    assert parse_tcp(":8000") == ("0.0.0.0", 8000)
    assert parse_tcp("0.0.0.0:8000") == ("0.0.0.0", 8000)
    assert parse_tcp("[::]:8000") == ("::", 8000)


def test_refusals_are_logged_once_per_address_and_capped_per_window(
    capfd: pytest.CaptureFixture[str],
) -> None:
    now = [0.0]
    peers = PeerFilter([], clock=lambda: now[0])
    for _ in range(50):
        peers.refused("worker 1", "203.0.113.7", "0.0.0.0:8000")
    for n in range(100):
        peers.refused("worker 1", f"198.51.100.{n}", "0.0.0.0:8000")
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == REFUSAL_LINES
    assert "worker 1: refused a connection from 203.0.113.7 on 0.0.0.0:8000" in lines[0]
    now[0] = REFUSAL_WINDOW + 1
    peers.refused("worker 1", "198.51.100.200", "0.0.0.0:8000")
    summary, line = capfd.readouterr().err.splitlines()
    unlogged = 50 - 1 + 100 - (REFUSAL_LINES - 1)
    assert (
        f"worker 1: refused {unlogged} more connection(s) in the {REFUSAL_WINDOW + 1:.0f} s before" in summary
    )
    assert "refused a connection from 198.51.100.200" in line
    # A quiet window owes no summary, and an address already logged stays quiet.
    now[0] = 3 * REFUSAL_WINDOW
    peers.refused("worker 1", "203.0.113.7", "0.0.0.0:8000")
    assert capfd.readouterr().err == ""

"""10,000 random and mutated packets sent to a running binserve: no worker dies, each bad one is
logged once, and valid requests are served throughout.

Every packet is generated from a seeded ``random.Random`` (FUZZ_SEED=N picks another seed) and
classified BEFORE it is sent, by ``binserve.protocol.Decoder`` with the server's limits, so the
test knows what the server must do with it:

    invalid      the decoder raises: one ``bad uwsgi packet`` log line and an error response
    valid        a WSGI request (modifier1 0 or 30): the echo app answers 200 with the body
    ping         modifier1 100: the answer is PONG
    unsupported  any other modifier1: one ``unavailable modifier`` log line and no answer
    empty        no byte at all: nothing logged, no answer

The client always closes its write side after the packet (``shutdown(SHUT_WR)``), so the
server sees end of stream, never a stall; the decoder models that by being fed ``b""``. A
packet whose vars decode but whose body is shorter than CONTENT_LENGTH is therefore invalid.
Every ~200 packets a real request goes through nginx and must come back 200 with its echo.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from binserve import protocol
from binserve.testing import exchange, ping, wait_for

from support import APPS, REQUEST_LINE, BehindNginx

SEED = int(os.environ.get("FUZZ_SEED", "20240611"))
PACKETS = 10_000
BATCH = 200  # one request through nginx per batch
CLIENTS = 4
MAX_VARS_SIZE = 65535  # binserve's default buffer-size, the limit the server decodes with
CAPTURES = [
    p.read_bytes() for p in sorted((Path(__file__).parent.parent / "packets" / "nginx-1.22").glob("*.uwsgi"))
]
SMALL_CAPTURES = [p for p in CAPTURES if len(p) < 100_000]
BIG_CAPTURES = [p for p in CAPTURES if len(p) >= 100_000]

ECHO_APP = (APPS / "fuzz_server_echo.py").read_text()

LOG_LINE = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[binserve pid \d+\] "
BAD_PACKET = re.compile(
    LOG_LINE + r"bad uwsgi packet from .*?\(peer pid \d+\): (.*); connection closed$", re.M
)
UNAVAILABLE = re.compile(LOG_LINE + r"-- unavailable modifier requested: ", re.M)


# -- generating packets ------------------------------------------------------------------------
KEYS = [
    "REQUEST_METHOD",
    "PATH_INFO",
    "QUERY_STRING",
    "REQUEST_URI",
    "SERVER_PROTOCOL",
    "SERVER_NAME",
    "SERVER_PORT",
    "REMOTE_ADDR",
    "HTTP_HOST",
    "HTTP_COOKIE",
    "CONTENT_TYPE",
    "SCRIPT_NAME",
    "HTTPS",
    "UWSGI_SCHEME",
    "HTTP_X_FUZZ",
]
METHODS = ["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "X"]


def random_bytes(rng: random.Random, n: int) -> bytes:
    return rng.getrandbits(8 * n).to_bytes(n, "little") if n else b""


def random_text(rng: random.Random, n: int) -> str:
    if rng.random() < 0.2:
        return random_bytes(rng, n).decode("latin-1")  # any byte: PEP 3333 decodes as latin-1
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789/?=&%-_.") for _ in range(n))


def built_packet(rng: random.Random) -> bytes:
    """A valid request made by ``encode_request``: random vars (keys may repeat), random body."""
    pairs: list[tuple[str, str]] = [("REQUEST_METHOD", rng.choice(METHODS))]
    for _ in range(rng.randint(0, 12)):
        key = rng.choice(KEYS) if rng.random() < 0.8 else "HTTP_" + random_text(rng, rng.randint(1, 12))
        pairs.append((key, random_text(rng, rng.choice((0, 1, 8, 40, 300)))))
    if rng.random() < 0.3:
        pairs.append(("SERVER_PROTOCOL", rng.choice(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "bogus"])))
    body = random_bytes(rng, rng.choice((0, 0, 1, 17, 500, 5000)))
    modifier1 = 30 if rng.random() < 0.15 else 0
    return protocol.encode_request(pairs, body, modifier1=modifier1, modifier2=rng.randrange(256))


def valid_packet(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.02:
        return rng.choice(BIG_CAPTURES)
    if roll < 0.5:
        return rng.choice(SMALL_CAPTURES)
    if roll < 0.53:
        return protocol.PING
    return built_packet(rng)


def size_field_offsets(packet: bytes) -> list[int]:
    """Offsets of the u16 size fields of a well-formed packet: the header's, then each key's and value's."""
    offsets = [1]
    end = min(4 + (packet[1] | packet[2] << 8), len(packet))
    pos = 4
    while pos + 2 <= end:
        offsets.append(pos)
        kend = pos + 2 + (packet[pos] | packet[pos + 1] << 8)
        if kend + 2 > end:
            break
        offsets.append(kend)
        pos = kend + 2 + (packet[kend] | packet[kend + 1] << 8)
    return offsets


def set_u16(packet: bytes, offset: int, value: int) -> bytes:
    return packet[:offset] + (value & 0xFFFF).to_bytes(2, "little") + packet[offset + 2 :]


def bit_flips(rng: random.Random, packet: bytes) -> bytes:
    if not packet:
        return packet
    data = bytearray(packet)
    # Mostly in the header and vars, where a flip changes how the packet parses.
    span = min(len(data), 4 + (data[1] | data[2] << 8) if len(data) > 2 else len(data)) or len(data)
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        pos = rng.randrange(span if rng.random() < 0.9 else len(data))
        data[pos] ^= 1 << rng.randrange(8)
    return bytes(data)


def truncate(rng: random.Random, packet: bytes) -> bytes:
    return packet[: rng.randrange(len(packet))] if packet else packet


def insert_bytes(rng: random.Random, packet: bytes) -> bytes:
    pos = rng.randint(0, len(packet))
    return packet[:pos] + random_bytes(rng, rng.choice((1, 1, 2, 4, 16, 300))) + packet[pos:]


def delete_bytes(rng: random.Random, packet: bytes) -> bytes:
    if not packet:
        return packet
    pos = rng.randrange(len(packet))
    return packet[:pos] + packet[pos + rng.choice((1, 1, 2, 4, 16, 300)) :]


def change_size_field(rng: random.Random, packet: bytes) -> bytes:
    if len(packet) < 4:
        return packet
    offset = rng.choice(size_field_offsets(packet))
    old = packet[offset] | packet[offset + 1] << 8 if offset + 1 < len(packet) else 0
    new = rng.choice(
        (
            0,
            1,
            0xFFFF,
            rng.randrange(0x10000),
            old + 1,
            old - 1,
            old + rng.randint(2, 40),
            old - rng.randint(2, 40),
        )
    )
    return set_u16(packet, offset, new)


def zero_length_key(rng: random.Random, packet: bytes) -> bytes:
    """A var with an empty key: either an existing key's size zeroed or a new var inserted."""
    if len(packet) < 4:
        return packet
    offsets = size_field_offsets(packet)
    keys = offsets[1::2]
    if keys and rng.random() < 0.5:
        return set_u16(packet, rng.choice(keys), 0)
    size = packet[1] | packet[2] << 8
    pos = rng.choice([o for o in keys if o <= 4 + size] + [4 + size])
    extra = b"\x00\x00" + (3).to_bytes(2, "little") + b"abc"
    packet = packet[:pos] + extra + packet[pos:]
    return set_u16(packet, 1, size + len(extra))


def huge_content_length(rng: random.Random) -> bytes:
    """CONTENT_LENGTH far beyond the few body bytes that follow (then the client closes its side)."""
    length = rng.choice((10**6, 2**31, 10**12, 10**17, 999_999_999_999_999_999, 10**18, 10**40))
    body = random_bytes(rng, rng.choice((0, 1, 10, 1000)))
    pairs = [("REQUEST_METHOD", "POST"), ("PATH_INFO", "/upload"), ("CONTENT_LENGTH", str(length))]
    return protocol.encode_request(pairs, body)


def change_modifier(rng: random.Random, packet: bytes) -> bytes:
    if not packet:
        return packet
    return bytes((rng.choice((rng.randrange(256), 5, 9, 30, 100, 101, 255)),)) + packet[1:]


def random_packet(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.5:
        return random_bytes(rng, rng.choice((rng.randint(0, 8), rng.randint(0, 64), rng.randint(0, 4096))))
    # Random bytes behind a plausible header, so the vars parser sees garbage rather than the header check.
    n = rng.randint(0, 600)
    return bytes((rng.choice((0, 30)), n & 0xFF, n >> 8, 0)) + random_bytes(
        rng, max(0, n + rng.choice((0, 0, 5, -3)))
    )


MUTATIONS: list[tuple[str, Callable[[random.Random, bytes], bytes], int]] = [
    ("bit_flip", bit_flips, 25),
    ("truncate", truncate, 12),
    ("insert", insert_bytes, 10),
    ("delete", delete_bytes, 10),
    ("size_field", change_size_field, 12),
    ("zero_key", zero_length_key, 6),
    ("modifier", change_modifier, 4),
]


def generate(rng: random.Random) -> tuple[str, bytes]:
    """One packet and the name of how it was made."""
    roll = rng.random()
    if roll < 0.15:
        return "random", random_packet(rng)
    if roll < 0.23:
        return "valid", valid_packet(rng)
    if roll < 0.27:
        return "huge_content_length", huge_content_length(rng)
    packet = valid_packet(rng)
    applied = []
    for _ in range(1 if rng.random() < 0.8 else rng.randint(2, 3)):
        name, mutate, _ = rng.choices(MUTATIONS, [m[2] for m in MUTATIONS])[0]
        packet = mutate(rng, packet)
        applied.append(name)
    return "+".join(applied), packet


# -- what the server must do with a packet ------------------------------------------------------
@dataclass
class Expected:
    kind: str  # invalid | valid | ping | unsupported | empty
    message: str = ""  # invalid: the decoder's error message
    status: int = 0  # invalid: the status hint of the error
    in_body: bool = False  # invalid: the vars decoded, the body was cut short
    body: bytes = b""  # valid: what the echo app must answer
    head_only: bool = False  # valid: a HEAD request, answered without a body


def classify(packet: bytes) -> Expected:
    """What the server must do with ``packet`` followed by end of stream, decided by the decoder alone."""
    decoder = protocol.Decoder(MAX_VARS_SIZE)
    decoder.receive_data(packet)
    eof = not packet
    head: protocol.Head | None = None
    body: list[bytes] = []
    try:
        while True:
            event = decoder.next_event()
            if event is protocol.NEED_DATA:
                assert not eof, "the decoder asked for data after end of stream"
                decoder.receive_data(b"")
                eof = True
            elif event is protocol.CLOSED:
                return Expected("empty")
            elif isinstance(event, protocol.Head):
                head = event
                if head.modifier1 == 100:
                    return Expected("ping")
                if head.modifier1 not in (0, 30):
                    return Expected("unsupported")
            elif isinstance(event, protocol.Body):
                body.append(event.data)
            elif isinstance(event, protocol.End):
                assert head is not None
                methods = [v for k, v in head.vars if k == "REQUEST_METHOD"]
                return Expected("valid", body=b"".join(body), head_only=methods == ["HEAD"])
    except protocol.RemoteProtocolError as exc:
        return Expected("invalid", exc.message, exc.status_hint, in_body=head is not None)


def check_answer(expected: Expected, answer: bytes | str) -> str | None:
    """Why ``answer`` is wrong for ``expected`` (a str answer is a client-side error), or None."""
    if isinstance(answer, str):
        return answer
    if expected.kind == "valid":
        tail = b"\r\n\r\n" + (b"" if expected.head_only else expected.body)
        if answer.startswith(b"HTTP/") and b" 200 OK\r\n" in answer and answer.endswith(tail):
            return None
        return "expected 200 with the echoed body"
    if expected.kind == "invalid":
        if answer.startswith(f"HTTP/1.0 {expected.status} ".encode()):
            return None
        return f"expected an HTTP/1.0 {expected.status} error response"
    if expected.kind == "ping":
        return None if answer == protocol.PONG else "expected PONG"
    return None if answer == b"" else "expected no answer"


@dataclass
class Failure:
    index: int
    how: str
    packet: bytes
    expected: Expected
    answer: bytes | str
    why: str

    @property
    def group(self) -> str:
        """Failures alike: the same complaint about the same kind of packet and the same answer."""
        kind = self.expected.kind + (" (body cut short)" if self.expected.in_body else "")
        if isinstance(self.answer, str):
            got = re.sub(r"[0-9]+", "N", self.answer[:80])
        else:
            status = re.match(rb"HTTP/\S* ([0-9]{3})", self.answer)
            got = f"status {status.group(1).decode()}" if status else repr(self.answer[:40])
        return f"{kind}: {self.why}, got {got}"

    def __str__(self) -> str:
        shown = self.packet[:400]
        cut = f" (first {len(shown)} of {len(self.packet)} bytes)" if len(shown) < len(self.packet) else ""
        return (
            f"packet {self.index} ({self.how}): decoder says {self.expected.kind} {self.expected.message!r}; "
            f"{self.why}; got {self.answer[:160]!r}\n    reproducer{cut}: bytes.fromhex({shown.hex()!r})"
        )


def report_failures(failures: list[Failure]) -> str:
    """How many packets of each group were answered wrongly, with the smallest example of each."""
    groups: dict[str, list[Failure]] = {}
    for failure in failures:
        groups.setdefault(failure.group, []).append(failure)
    lines = []
    for group, members in sorted(groups.items(), key=lambda item: -len(item[1])):
        lines.append(f"  {len(members)} x {group}\n    e.g. {min(members, key=lambda f: len(f.packet))}")
    return "\n".join(lines)


def exceptions_in(log: str) -> Counter[str]:
    """Each traceback in the log as its exception line (digits blurred) and the frame that raised it."""
    found: Counter[str] = Counter()
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("Traceback (most recent call last)"):
            continue
        frame = code = ""
        for j in range(i + 1, len(lines)):
            after = lines[j]
            where = re.match(r'  File "(?:.*/)?([^/"]+)", line (\d+), in (\S+)', after)
            if where:
                frame = "{}:{} in {}".format(*where.groups())
                code = lines[j + 1].strip() if j + 1 < len(lines) else ""
            elif after and not after.startswith(" "):
                found[f"{re.sub(r'[0-9]+', 'N', after)[:160]}  (raised at {frame}: {code})"] += 1
                break
    return found


# -- the test ----------------------------------------------------------------------------------
def test_fuzzed_packets_never_kill_a_worker(behind_nginx: BehindNginx) -> None:
    started = time.monotonic()
    server, front = behind_nginx(ECHO_APP, "--processes", "2", "--socket-timeout", "1")
    wait_for(lambda: len(server.worker_pids()) == 2, what="2 workers")
    workers = server.worker_pids()
    rng = random.Random(SEED)
    path = str(server.socket)
    kinds: Counter[str] = Counter()
    head_errors: Counter[str] = Counter()  # messages of the packets refused before any body
    failures: list[Failure] = []
    nginx_requests = 0

    with ThreadPoolExecutor(CLIENTS) as pool:
        for start in range(0, PACKETS, BATCH):
            batch = [generate(rng) for _ in range(min(BATCH, PACKETS - start))]
            expected = [classify(packet) for _, packet in batch]
            answers = pool.map(lambda item: _safe_exchange(path, item[1]), batch)
            # While the batch is in flight, a real request through nginx must be served.
            payload = f"nginx request {nginx_requests} ".encode() * (1 + start % 300)
            status, _, body = front.request("POST", f"/echo/{nginx_requests}", body=payload)
            nginx_requests += 1
            assert (status, body) == (200, payload), (
                f"request through nginx after {start} packets: {status} {body[:200]!r}\n{front.error_log()}"
            )
            for offset, ((how, packet), exp, answer) in enumerate(zip(batch, expected, answers, strict=True)):
                kinds[exp.kind] += 1
                if exp.kind == "invalid" and not exp.in_body:
                    head_errors[exp.message] += 1
                why = check_answer(exp, answer)
                if why is not None:
                    failures.append(Failure(start + offset, how, packet, exp, answer, why))
    elapsed = time.monotonic() - started

    # The server still serves, through nginx and directly.
    status, _, body = front.request("POST", "/echo/last", body=b"still here")
    nginx_requests += 1
    assert (status, body) == (200, b"still here")
    assert ping(server.socket)

    # Every line is written before the connection closes; this only absorbs a slow filesystem.
    bad, served = kinds["invalid"], kinds["valid"] + nginx_requests
    _settle(lambda: len(BAD_PACKET.findall(server.log())) >= bad)
    _settle(lambda: len(REQUEST_LINE.findall(server.log())) >= served)
    log = server.log()
    logged = Counter(BAD_PACKET.findall(log))
    unavailable = len(UNAVAILABLE.findall(log))
    requests = len(REQUEST_LINE.findall(log))
    summary = (
        f"seed {SEED}: {PACKETS} packets in {elapsed:.1f} s: {dict(sorted(kinds.items()))} "
        f"({bad - sum(head_errors.values())} invalid only by a body cut short), "
        f"{nginx_requests} requests through nginx; the log has {sum(logged.values())} bad packet lines, "
        f"{unavailable} unavailable modifier lines, {requests} request lines"
    )
    print(summary)

    problems = []
    if server.worker_pids() != workers:
        problems.append(f"the workers changed: {sorted(workers)} -> {sorted(server.worker_pids())}")
    # (A request line may say "died" too: it carries the fuzzed URI and protocol.)
    died = [line for line in log.splitlines() if "died" in line and not REQUEST_LINE.match(line)]
    if died:
        problems.append("workers died:\n  " + "\n  ".join(died[:10]))
    if sum(logged.values()) != bad:
        problems.append(f"{sum(logged.values())} 'bad uwsgi packet' lines for {bad} invalid packets")
    missing = head_errors - logged
    if missing:
        problems.append(f"decoder errors the server did not log: {dict(list(missing.items())[:10])}")
    if unavailable != kinds["unsupported"]:
        problems.append(f"{unavailable} 'unavailable modifier' lines for {kinds['unsupported']} such packets")
    # A request whose body was cut short may be logged as a request as well as a bad packet.
    if not served <= requests <= served + bad - sum(head_errors.values()):
        problems.append(f"{requests} request log lines for {served} requests")
    tracebacks = exceptions_in(log)
    if tracebacks or "Traceback" in log:
        problems.append(
            f"{sum(tracebacks.values())} tracebacks in the log, ending in:\n"
            + "\n".join(f"  {n} x {line}" for line, n in tracebacks.most_common())
        )
    if failures:
        problems.append(f"{len(failures)} packets answered wrongly:\n" + report_failures(failures))
    assert not problems, f"{summary}\n\n" + "\n\n".join(problems) + f"\n\nserver log: {server.log_path}"


def _safe_exchange(path: str, packet: bytes) -> bytes | str:
    """The answer, or a string saying why there was none (a hang or a connection error)."""
    try:
        return exchange(path, packet, half_close=True, reset_ends=True)
    except OSError as exc:  # TimeoutError: no answer in time
        return f"no answer: {type(exc).__name__}: {exc}"


def _settle(condition: Callable[[], bool]) -> None:
    """Give the log a moment to catch up; the exact counts are asserted afterwards, with details."""
    try:
        wait_for(condition, 3, "the log to catch up")
    except AssertionError:
        pass

"""binserve-top's pure functions: decoding every encoding of a stats document, addresses, rows,
rates, the current request and the sort orders (test_top runs the tool itself).
"""

from __future__ import annotations

import msgpack
import pytest
from test_top import FIXTURES, Doc, encode, instance_doc

from binserve.tools import statsdoc, top


def test_decode_all_encodings_of_one_document() -> None:
    """msgpack, JSON and HTTP-wrapped bytes of one document decode to the same dict."""
    doc = instance_doc()
    for encoding in ("msgpack", "json", "http-json", "http-msgpack"):
        assert statsdoc.decode(encode(doc, encoding)) == doc, encoding


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"{not json", "invalid JSON"),
        (b"\xc1\xc1\xc1", "invalid msgpack"),
        (msgpack.packb([1, 2]), "not a map"),
        (msgpack.packb({"hello": 1}), "neither"),
        (b"HTTP/1.0 404 Not Found\r\n\r\n", "404"),
    ],
)
def test_decode_rejects_garbage(data: bytes, message: str) -> None:
    """What is not a stats document raises StatsError saying why."""
    with pytest.raises(statsdoc.StatsError, match=message):
        statsdoc.decode(data)


def test_parse_address() -> None:
    """Unix paths, @abstract, HOST:PORT (wildcards mean localhost) and http:// URLs."""
    assert statsdoc.parse_address("/run/x.sock") == ("unix", "/run/x.sock")
    assert statsdoc.parse_address("stats.sock") == ("unix", "stats.sock")
    assert statsdoc.parse_address("@top") == ("unix", "\0top")
    assert statsdoc.parse_address("127.0.0.1:9191") == ("tcp", ("127.0.0.1", 9191))
    assert statsdoc.parse_address(":9191") == ("tcp", ("127.0.0.1", 9191))
    assert statsdoc.parse_address("[::1]:9191") == ("tcp", ("::1", 9191))
    assert statsdoc.parse_address("http://localhost:9191/") == ("http", ("localhost", 9191, "/"))


def test_uwsgi_sample_rows_and_rates() -> None:
    """uWSGI's real JSON: rows by id, no cpu, avg in ms; the sampler turns counters into req/s."""
    doc = statsdoc.decode((FIXTURES / "uwsgi-stats.json").read_bytes())
    summary, workers = statsdoc.instance_view(doc)
    assert [w.wid for w in workers] == [1, 2]
    assert summary.requests == 16 and summary.sockets == ["127.0.0.1:28582 0/100"]
    assert workers[0].cpu is None and workers[1].exceptions == 2 and workers[1].avg_ms == 0.659
    sampler = statsdoc.Sampler()
    first = instance_doc()
    second = instance_doc(base=20)
    second["time"] = first["time"] + 2.0
    statsdoc.instance_view(first, sampler)
    summary, workers = statsdoc.instance_view(second, sampler)
    assert [w.rps for w in workers] == [10.0, 10.0, 10.0] and summary.rps == 30.0


def test_current_request_from_uwsgi_cores() -> None:
    """A busy uWSGI core's vars and request_start give ``METHOD URI (Ns)``."""
    w = {
        "cores": [
            {"in_request": 0, "vars": [], "req_info": {}},
            {
                "in_request": 1,
                "vars": ["QUERY_STRING=a=b", "REQUEST_METHOD=GET", "REQUEST_URI=/slow?a=b", ""],
                "req_info": {"request_start": 1000},
            },
        ]
    }
    assert statsdoc.current_request(w, 1012.4) == "GET /slow?a=b (12s)"
    assert statsdoc.current_request({"current": None, "cores": w["cores"]}, 1012.4) == "-"


def test_sort_workers() -> None:
    """Id order by default; each key descending, or ascending when reversed; ties keep id order."""
    _, workers = statsdoc.instance_view(instance_doc())
    assert [w.wid for w in statsdoc.sort_workers(workers, None)] == [1, 2, 3]
    assert [w.wid for w in statsdoc.sort_workers(workers, "requests")] == [1, 3, 2]
    assert [w.wid for w in statsdoc.sort_workers(workers, "memory")] == [2, 1, 3]
    assert [w.wid for w in statsdoc.sort_workers(workers, "memory", descending=False)] == [3, 1, 2]
    assert [w.wid for w in statsdoc.sort_workers(workers, "cpu")] == [3, 1, 2]
    assert [w.wid for w in statsdoc.sort_workers(workers, "avg")] == [2, 1, 3]
    for w in workers:
        w.rss = 5
    assert [w.wid for w in statsdoc.sort_workers(workers, "memory")] == [1, 2, 3]


@pytest.mark.parametrize(
    "doc",
    [
        {"workers": 5, "time": float("nan")},
        {"workers": [{"id": "x", "requests": None, "cpu": "a", "current": {"since": "x"}, "cores": 5}]},
        {"workers": [{"avg_rt": float("inf"), "rss": float("nan"), "current": {"since": 1e300}}]},
        {"vassals": [{"id": None, "throttled_until": 1e300}], "blacklist": [{"last_attempt": 1e300}]},
        {"vassals": "none", "emperor": 5, "blacklist": [3, None]},
    ],
)
def test_odd_documents_still_render(doc: Doc) -> None:
    """Wrong types, NaN and far-away times in a document give placeholders, not exceptions."""
    text = top.snapshot_text(doc)
    assert text.splitlines()[2].split()[0] in ("WID", "VASSAL")

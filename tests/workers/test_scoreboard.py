"""The scoreboard alone: per-core slots written by their own threads, added up per worker by the master."""

from __future__ import annotations

import os
import threading

import pytest

from binserve.scoreboard import CURRENT_SIZE, Scoreboard, Slot

T0 = 1_700_000_000.0


def test_one_core_is_the_worker_as_before() -> None:
    board = Scoreboard(2)
    assert board.cores == 1
    board.spawned(1, 4242)
    slot = board.slot(1)
    slot.begin(T0, "GET", "/a?b=c")
    stats = board.read(1)
    assert (stats.pid, stats.respawn_count, stats.harakiri_count) == (4242, 1, 0)
    assert stats.busy and stats.since == T0 and stats.current == "GET /a?b=c"
    assert stats.requests == 0
    slot.end(0.25, 100, False)
    slot.begin(T0 + 1, "POST", "/x")
    slot.end(0.5, 50, True)
    stats = board.read(1)
    assert not stats.busy
    # Idle, the last request is still what since and current show.
    assert (stats.since, stats.current) == (T0 + 1, "POST /x")
    assert (stats.requests, stats.delta_requests, stats.exceptions, stats.tx) == (2, 2, 1, 150)
    assert stats.running_time == 0.75
    assert len(stats.cores) == 1 and stats.cores == board.read_cores(1)
    board.harakiri(1)
    assert board.read(1).harakiri_count == 1
    # The other worker was never touched.
    other = board.read(2)
    assert (other.pid, other.requests, other.busy, other.current) == (0, 0, False, "")


def test_cores_add_up_to_their_worker() -> None:
    board = Scoreboard(2, 3)
    board.spawned(1, 10)
    board.spawned(2, 20)
    slots = [board.slot(1, core) for core in range(3)]
    for core, slot in enumerate(slots):
        for _ in range(core + 1):
            slot.begin(T0, "GET", f"/{core}")
            slot.end(0.5, 10 * (core + 1), failed=core == 2)
    cores = board.read_cores(1)
    assert [c.requests for c in cores] == [1, 2, 3]
    assert [c.tx for c in cores] == [10, 40, 90]
    assert [c.exceptions for c in cores] == [0, 0, 3]
    assert [c.running_time for c in cores] == [0.5, 1.0, 1.5]
    assert [c.current for c in cores] == ["GET /0", "GET /1", "GET /2"]
    assert not any(c.busy for c in cores)
    stats = board.read(1)
    assert (stats.requests, stats.delta_requests, stats.tx, stats.exceptions) == (6, 6, 140, 3)
    assert stats.running_time == 3.0 and not stats.busy
    assert stats.cores == cores
    # Worker 2's cores are its own.
    assert [c.requests for c in board.read_cores(2)] == [0, 0, 0]
    assert board.read(2).pid == 20


def test_the_oldest_busy_core_is_the_worker_s_request() -> None:
    board = Scoreboard(1, 4)
    board.spawned(1, 10)
    slots = [board.slot(1, core) for core in range(4)]
    slots[0].begin(T0 + 30, "GET", "/newest")
    slots[2].begin(T0 + 10, "POST", "/oldest")
    slots[3].begin(T0 + 20, "PUT", "/middle")
    slots[1].begin(T0 + 40, "GET", "/done")  # later than every busy one, but finished
    slots[1].end(0.1, 1, False)
    stats = board.read(1)
    assert stats.busy and (stats.since, stats.current) == (T0 + 10, "POST /oldest")
    assert [c.busy for c in stats.cores] == [True, False, True, True]
    slots[2].end(1.0, 1, False)
    stats = board.read(1)
    assert (stats.since, stats.current) == (T0 + 20, "PUT /middle")
    slots[0].end(1.0, 1, False)
    slots[3].end(1.0, 1, False)
    stats = board.read(1)
    # All idle: the latest request started is shown, as a single core shows its last one.
    assert not stats.busy and (stats.since, stats.current) == (T0 + 40, "GET /done")


def test_a_respawn_keeps_totals_and_counts_delta_from_the_spawn() -> None:
    board = Scoreboard(1, 2)
    board.spawned(1, 10)
    first = [board.slot(1, core) for core in range(2)]
    for slot in first:
        slot.begin(T0, "GET", "/")
        slot.end(0.5, 7, False)
    first[0].begin(T0, "GET", "/")
    first[0].end(0.5, 7, True)
    first[1].begin(T0 + 5, "GET", "/dies-here")  # the worker dies mid-request
    board.harakiri(1)

    board.spawned(1, 11)
    stats = board.read(1)
    assert (stats.pid, stats.respawn_count, stats.harakiri_count) == (11, 2, 1)
    assert (stats.requests, stats.delta_requests, stats.tx, stats.exceptions) == (3, 0, 21, 1)
    second = [board.slot(1, core) for core in range(2)]
    assert not board.read(1).busy  # the predecessor's request is not the new worker's
    second[1].begin(T0 + 9, "GET", "/")
    second[1].end(0.5, 3, False)
    stats = board.read(1)
    assert (stats.requests, stats.delta_requests, stats.tx, stats.exceptions) == (4, 1, 24, 1)
    assert [c.requests for c in stats.cores] == [2, 2]
    assert stats.running_time == 2.0


def test_a_long_request_line_is_cut_to_the_slot() -> None:
    board = Scoreboard(1, 2)
    board.slot(1, 1).begin(T0, "GET", "/" + "x" * 500)
    stats = board.read(1)
    assert stats.current == ("GET /" + "x" * 500)[:CURRENT_SIZE]
    assert board.read_cores(1)[0].current == ""  # the neighbouring core is untouched


def test_no_writer_shares_a_cache_line_with_another() -> None:
    workers, cores = 3, 4
    board = Scoreboard(workers, cores)
    slots = {(wid, core): board.slot(wid, core) for wid in range(1, workers + 1) for core in range(cores)}
    for wid in range(1, workers + 1):
        board.spawned(wid, 100 + wid)
    before = bytes(board.map)
    changed = set()
    for (wid, core), slot in slots.items():
        slot.begin(T0 + core, "GET", "/" + "y" * 300)
        slot.end(1.0, 2**40, True)
        now = bytes(board.map)
        lines = {i // 64 for i in range(len(now)) if now[i] != before[i]}
        assert lines, (wid, core)
        # Every line this core wrote is its own: no other core, no header has written it.
        assert not lines & changed, (wid, core)
        changed |= lines
        before = now
    for wid in range(1, workers + 1):
        board.harakiri(wid)
    now = bytes(board.map)
    headers = {i // 64 for i in range(len(now)) if now[i] != before[i]}
    assert len(headers) == workers and not headers & changed
    assert {board.offset(wid, core) % 64 for wid, core in slots} == {0}


def test_out_of_range_ids_are_refused() -> None:
    board = Scoreboard(2, 2)
    for wid, core in [(0, 0), (3, 0), (1, 2), (1, -1)]:
        with pytest.raises(IndexError):
            board.slot(wid, core)
    with pytest.raises(IndexError):
        board.read(3)
    with pytest.raises(ValueError):
        Scoreboard(1, 0)


def test_threads_writing_their_own_cores_lose_no_count() -> None:
    board = Scoreboard(2, 2)
    per_thread = 20_000
    go = threading.Barrier(2)

    def serve(core: int) -> None:
        slot = board.slot(1, core)
        go.wait()
        for i in range(per_thread):
            slot.begin(T0 + i, "GET", f"/{core}/{i}")
            slot.end(0.001, 3, i % 100 == 0)

    threads = [threading.Thread(target=serve, args=(core,)) for core in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = board.read(1)
    assert stats.requests == 2 * per_thread
    assert [c.requests for c in stats.cores] == [per_thread, per_thread]
    assert stats.tx == 6 * per_thread and stats.exceptions == 2 * per_thread // 100
    assert [c.current for c in stats.cores] == [f"GET /0/{per_thread - 1}", f"GET /1/{per_thread - 1}"]
    assert not stats.busy
    assert board.read(2).requests == 0


@pytest.mark.process
def test_a_forked_worker_s_writes_are_read_by_the_master() -> None:
    board = Scoreboard(2, 2)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            idle, busy = board.slot(2, 0), board.slot(2, 1)
            idle.begin(T0, "GET", "/one")
            idle.end(0.5, 5, False)
            busy.begin(T0 + 1, "GET", "/stuck")
            code = 0
        finally:
            os._exit(code)
    board.spawned(2, pid)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    stats = board.read(2)
    assert stats.pid == pid and stats.requests == 1 and stats.tx == 5
    assert stats.busy and (stats.since, stats.current) == (T0 + 1, "GET /stuck")


# -- places: a worker id's process and its replacement side by side ---------------------------------


def _serve(slot: Slot, count: int, sent: int = 10) -> None:
    for i in range(count):
        slot.begin(T0 + i, "GET", f"/{i}")
        slot.end(0.25, sent, False)


def test_a_replacement_writes_its_own_place_and_the_worker_sums_both() -> None:
    board = Scoreboard(2)
    board.spawned(1, 101, 0, T0)
    board.promote(1, 0)
    _serve(board.slot(1, 0, 0), 3)
    board.spawned(1, 202, 1, T0 + 60)
    new = board.slot(1, 0, 1)
    _serve(new, 2, sent=5)

    # Until it is promoted, the replacement is not the worker: pid, delta and state are the old one's.
    stats = board.read(1)
    assert (stats.pid, stats.last_spawn, stats.requests, stats.delta_requests) == (101, T0, 5, 3)
    assert (stats.tx, stats.running_time, stats.respawn_count) == (40, 1.25, 2)
    new.begin(T0 + 70, "POST", "/in-the-new-place")
    assert not board.read(1).busy, "the replacement's request showed as the old process's"

    board.promote(1, 1)
    stats = board.read(1)
    assert (stats.pid, stats.last_spawn, stats.requests, stats.delta_requests) == (202, T0 + 60, 5, 2)
    assert stats.busy and stats.current == "POST /in-the-new-place"
    new.end(0.25, 5, True)
    stats = board.read(1)
    assert (stats.requests, stats.delta_requests, stats.exceptions, stats.tx) == (6, 3, 1, 45)

    # Each place keeps its own process's figures.
    old = board.read_place(1, 0)
    assert (old.pid, old.requests, old.delta_requests, old.tx, old.exceptions) == (101, 3, 3, 30, 0)
    place = board.read_place(1, 1)
    assert (place.pid, place.requests, place.delta_requests, place.tx, place.exceptions) == (202, 3, 3, 15, 1)
    assert board.read_cores(1) == place.cores and board.read_cores(1, 0) == old.cores
    # Worker 2 shares nothing with worker 1's places.
    assert (board.read(2).pid, board.read(2).requests) == (0, 0)


def test_the_next_replacement_reuses_the_old_place_and_counts_from_its_spawn() -> None:
    board = Scoreboard(1)
    board.spawned(1, 101, 0)
    _serve(board.slot(1, 0, 0), 4)
    board.spawned(1, 202, 1)
    board.promote(1, 1)
    _serve(board.slot(1, 0, 1), 2)
    # 101 has left; its place takes the next replacement, whose delta starts at its spawn.
    board.spawned(1, 303, 0)
    reused = board.slot(1, 0, 0)
    assert board.read_place(1, 0).delta_requests == 0
    _serve(reused, 1)
    board.promote(1, 0)
    stats = board.read(1)
    assert (stats.pid, stats.requests, stats.delta_requests, stats.respawn_count) == (303, 7, 1, 3)
    assert board.read_place(1, 0).requests == 5  # 101's four carried over in the place, and 303's one


def test_bad_place_ids_are_refused() -> None:
    board = Scoreboard(2, 2)
    board.spawned(1, 101)
    for place in (-1, 2):
        with pytest.raises(IndexError):
            board.slot(1, 0, place)
        with pytest.raises(IndexError):
            board.read_place(1, place)
        with pytest.raises(IndexError):
            board.spawned(1, 202, place)
        with pytest.raises(IndexError):
            board.promote(1, place)
        with pytest.raises(IndexError):
            board.harakiri(1, place)
        with pytest.raises(IndexError):
            board.read_cores(1, place)
    with pytest.raises(IndexError):
        board.read_place(3, 0)
    # A refused promote changed nothing: the worker is still the one in place 0.
    assert board.read(1).pid == 101

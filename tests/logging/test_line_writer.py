"""log.LineWriter, the app's sys.stdout and sys.stderr: each thread's text leaves in whole lines."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from binserve.log import LineWriter


def test_each_thread_writes_whole_lines_whatever_the_pieces(tmp_path: Path) -> None:
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    out = LineWriter(fd, "strict")
    start = threading.Barrier(4)

    def pieces(name: str) -> None:
        start.wait()
        for i in range(200):
            for piece in (f"<{name}-{i}:", "y" * (i * 50), f":{name}-{i}>", "\n"):
                out.write(piece)  # print() writes the text and the newline apart, as here

    threads = [threading.Thread(target=pieces, args=(f"t{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    os.close(fd)
    lines = path.read_text().splitlines()
    assert len(lines) == 800
    for line in lines:
        head, ys, tail = line.split(":")
        assert head[1:] == tail[:-1] and len(ys) == int(head.rsplit("-", 1)[1]) * 50


def test_bytes_go_through_buffer_and_a_flush_writes_a_partial_line(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    out = LineWriter(write_end, "strict")
    out.buffer.write(b"caf\xc3\xa9 ")
    out.write("partial")
    assert out.fileno() == write_end and out.encoding == "utf-8"
    os.set_blocking(read_end, False)
    with pytest.raises(BlockingIOError):
        os.read(read_end, 100)  # nothing before the newline or a flush
    out.flush()
    assert os.read(read_end, 100) == "café partial".encode()
    ended = threading.Thread(target=out.write, args=("a thread's last words",))
    ended.start()
    ended.join()
    del ended
    assert os.read(read_end, 100) == b"a thread's last words"  # written when its thread ended
    with pytest.raises(TypeError):
        out.write(b"bytes")  # type: ignore[arg-type]
    os.close(read_end)
    os.close(write_end)

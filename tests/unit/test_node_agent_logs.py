"""Node agent: CRI log files, reading them back as `kubectl logs` asks, and the pod log file."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.testbed.node_agent.logs import (
    LogQuery,
    PodLog,
    container_runs,
    decode_cri,
    encode_cri,
    join_lines,
    parse_timestamp,
    stream_log,
    termination_fallback,
    timestamp,
)
from tests.testbed.node_agent.server import parse_log_query

pytestmark = pytest.mark.unit

SECOND = 10**9
BASE = 1_790_000_000 * SECOND


def write_log(path: Path, chunks: list[tuple[int, bytes]]) -> None:
    with open(path, "ab") as out:
        for offset_s, data in chunks:
            out.write(encode_cri(data, timestamp(BASE + offset_s * SECOND)))


def read(path: Path, query: LogQuery, live: bool = False) -> bytes:
    out: list[bytes] = []
    stream_log(path, query, lambda: live, out.append)
    return b"".join(out)


def test_timestamps_are_fixed_width_and_round_trip() -> None:
    stamp = timestamp(BASE + 5)
    assert stamp.endswith(".000000005Z") and len(stamp) == len(timestamp(BASE))
    assert parse_timestamp(timestamp(BASE + 123_456_000)) == BASE + 123_456_000
    assert parse_timestamp("2026-01-01T00:00:00Z") < parse_timestamp("2026-01-01T00:00:00.5Z")


def test_pieces_of_a_line_are_joined_under_the_first_timestamp(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write_log(log, [(0, b"one\ntw"), (1, b"o\nthree"), (2, b"\n"), (3, b"unfinished")])
    pieces, consumed = decode_cri(log.read_bytes())
    assert consumed == log.stat().st_size
    lines = join_lines(pieces)
    assert [(line.text, line.full) for line in lines] == [
        (b"one", True), (b"two", True), (b"three", True), (b"unfinished", False)]
    assert lines[1].stamp == timestamp(BASE) and lines[2].stamp == timestamp(BASE + SECOND)


def test_reading_honours_tail_timestamps_since_and_limit(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write_log(log, [(0, b"a\n"), (10, b"b\n"), (20, b"c\n")])
    assert read(log, LogQuery()) == b"a\nb\nc\n"
    assert read(log, LogQuery(tail_lines=2)) == b"b\nc\n"
    assert read(log, LogQuery(tail_lines=0)) == b""
    assert read(log, LogQuery(since_ns=BASE + 5 * SECOND)) == b"b\nc\n"
    assert read(log, LogQuery(tail_lines=1, timestamps=True)) == timestamp(BASE + 20 * SECOND).encode() + b" c\n"
    assert read(log, LogQuery(limit_bytes=3)) == b"a\nb"


def test_follow_streams_until_the_run_ends(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write_log(log, [(0, b"first\n")])
    running = threading.Event()
    running.set()
    received: list[bytes] = []

    def writer() -> None:
        write_log(log, [(1, b"sec"), (2, b"ond\n")])
        running.clear()

    def collect(data: bytes) -> None:
        received.append(data)
        if len(received) == 1:
            threading.Thread(target=writer).start()

    stream_log(log, LogQuery(follow=True, timestamps=True), running.is_set, collect)
    assert b"".join(received) == (timestamp(BASE).encode() + b" first\n" +
                                  timestamp(BASE + SECOND).encode() + b" second\n")


def test_termination_fallback_is_the_tail_of_the_log(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write_log(log, [(0, b"".join(b"line %d\n" % n for n in range(100)))])
    message = termination_fallback(log)
    assert message.splitlines()[0] == "line 20" and message.endswith("line 99\n")
    write_log(log, [(1, b"x" * 5000 + b"\n")])
    assert len(termination_fallback(log)) == 2048
    assert termination_fallback(tmp_path / "absent.log") == ""


def test_runs_are_ordered_by_restart_number(tmp_path: Path) -> None:
    for name in ("0.log", "10.log", "2.log", "2.termination-log", "x.log"):
        (tmp_path / name).touch()
    assert [path.name for path in container_runs(tmp_path)] == ["0.log", "2.log", "10.log"]


def test_a_single_container_pod_log_is_the_raw_output(tmp_path: Path) -> None:
    pod_log = PodLog(tmp_path / "logs" / "ns_pod.log", prefixed=False)
    pod_log.write("main", b"partial ")
    pod_log.write("main", b"line\nnext")
    pod_log.end_of_stream("main")
    pod_log.close()
    assert (tmp_path / "logs" / "ns_pod.log").read_bytes() == b"partial line\nnext"


def test_a_multi_container_pod_log_prefixes_whole_lines(tmp_path: Path) -> None:
    pod_log = PodLog(tmp_path / "ns_pod.log", prefixed=True)
    pod_log.write("a", b"hel")
    pod_log.write("b", b"other\n")
    pod_log.write("a", b"lo\nbye")
    pod_log.end_of_stream("a")
    pod_log.close()
    assert (tmp_path / "ns_pod.log").read_bytes() == b"[b] other\n[a] hello\n[a] bye\n"


def test_the_log_endpoint_query_is_parsed_like_the_kubelets() -> None:
    query = parse_log_query("follow=true&tailLines=10&timestamps=1&limitBytes=5&previous=false&sinceSeconds=2",
                            now_ns=BASE)
    assert query == LogQuery(follow=True, tail_lines=10, timestamps=True, since_ns=BASE - 2 * SECOND,
                             limit_bytes=5, previous=False)
    assert parse_log_query("sinceTime=2026-01-01T00:00:00Z").since_ns == parse_timestamp("2026-01-01T00:00:00Z")
    assert parse_log_query("tailLines=-1").tail_lines is None
    with pytest.raises(ValueError):
        parse_log_query("tailLines=ten")

"""bench/request_cpu.py's pure parts: wrk's output read back, and the CPU time of a process tree between two
snapshots. No server is started."""

from __future__ import annotations

import pytest

from bench.request_cpu import _ms, cpu_delta, parse_wrk, wrk_threads

# wrk 4.1.0 with --latency and request_cpu's Lua script, copied from real runs on the 2-core machine
# (the service's photo multipart at 64 connections; the service answering the raw form with 415)
OK_RUN = """\
Running 5s test @ http://127.0.0.1:35607/classify
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   131.01ms   41.13ms 298.47ms   71.07%
    Req/Sec   247.76     92.29   480.00     73.68%
  Latency Distribution
     50%  122.57ms
     75%  156.85ms
     90%  188.75ms
     99%  239.45ms
  2434 requests in 5.06s, 1.27MB read
Requests/sec:    481.47
Transfer/sec:    257.66KB
status 200 2434
latency_us p50 122567 p99 239452
"""

REFUSED_RUN = """\
Running 5s test @ http://127.0.0.1:35607/classify?model=digits
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    33.49ms   29.56ms 480.76ms   97.21%
    Req/Sec     1.06k   234.77     1.91k    85.00%
  Latency Distribution
     50%   29.28ms
     75%   33.42ms
     90%   41.05ms
     99%  183.79ms
  10581 requests in 5.10s, 3.13MB read
  Non-2xx or 3xx responses: 10581
Requests/sec:   2074.81
Transfer/sec:    628.15KB
status 415 10581
latency_us p50 29277 p99 183788
"""


def test_parse_wrk_counts_2xx_answers_and_reads_the_script_percentiles():
    row = parse_wrk(OK_RUN)
    assert row["requests"] == 2434 and row["ok"] == 2434 and row["errors"] == 0
    assert row["seconds"] == pytest.approx(5.06)
    assert row["requests_per_s"] == 481.47
    assert (row["p50_ms"], row["p99_ms"]) == (122.567, 239.452)
    assert row["statuses"] == {200: 2434}
    assert row["socket_errors"] == {"connect": 0, "read": 0, "write": 0, "timeout": 0}


def test_parse_wrk_counts_every_non_2xx_answer_as_an_error():
    row = parse_wrk(REFUSED_RUN)
    assert row["statuses"] == {415: 10581}
    assert row["ok"] == 0 and row["errors"] == 10581 and row["non_2xx_3xx"] == 10581


def test_parse_wrk_adds_socket_errors_and_falls_back_to_wrks_own_table():
    # the real sample without the script's lines, and with wrk's socket error line (as wrk 4.1.0 prints it)
    text = "\n".join(line for line in OK_RUN.splitlines() if not line.startswith(("status", "latency_us")))
    text = text.replace("  2434 requests", "  Socket errors: connect 0, read 3, write 0, timeout 2\n  2434 requests")
    row = parse_wrk(text)
    assert (row["p50_ms"], row["p99_ms"]) == (122.57, 239.45)
    assert row["socket_errors"] == {"connect": 0, "read": 3, "write": 0, "timeout": 2}
    assert row["ok"] == 2434 and row["errors"] == 5


def test_wrk_durations():
    assert _ms("812.00us") == pytest.approx(0.812)
    assert _ms("4.31ms") == 4.31
    assert _ms("1.02s") == 1020.0
    assert _ms("1.00m") == 60000.0
    with pytest.raises(ValueError):
        _ms("12 ms")


def test_cpu_delta_over_a_tree_whose_processes_come_and_go():
    before = {(10, 1.0): 5.0, (11, 2.0): 1.5, (12, 3.0): 0.25}
    # 10 and 11 ran on, 12 exited (its time is not counted), 13 started between the snapshots
    after = {(10, 1.0): 6.5, (11, 2.0): 2.0, (13, 9.0): 0.75}
    delta = cpu_delta(before, after)
    assert delta["cpu_s"] == pytest.approx(1.5 + 0.5 + 0.75)
    assert (delta["vanished"], delta["new"]) == (1, 1)
    # a reused pid is another process: all of its time falls between the snapshots
    reused = cpu_delta({(11, 2.0): 1.5}, {(11, 8.0): 0.5})
    assert reused == {"cpu_s": 0.5, "vanished": 1, "new": 1}
    assert cpu_delta(before, before)["cpu_s"] == 0.0


def test_wrk_threads():
    assert [wrk_threads(c) for c in (1, 16, 32, 48, 64, 256)] == [1, 1, 1, 2, 2, 2]

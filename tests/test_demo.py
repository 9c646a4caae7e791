"""`make demo` run twice: the second run reuses a finished run and refuses a port in use, each in one line
(deploy/demo.py). Torch-free and fast: no training, no server."""

from __future__ import annotations

import socket

from deploy.demo import DO_IT, REFUSE, REUSE, port_free, trained


def test_a_finished_run_is_reused_and_an_unfinished_one_trained_again(tmp_path, capsys):
    run = tmp_path / "run"
    assert trained(run) == DO_IT
    run.mkdir()
    (run / "best.pt").write_bytes(b"")  # an interrupted run has best.pt but no summary.json yet
    assert trained(run) == DO_IT
    (run / "summary.json").write_text("{}")
    assert trained(run) == REUSE
    assert capsys.readouterr().out == f"reusing {run / 'best.pt'} (remove {run} to train again)\n"


def test_a_port_in_use_is_refused_in_one_line(capsys):
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        assert port_free(port) == REFUSE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: port {port} is in use") and f"PORT={port + 1}" in err
    assert port_free(port) == REUSE  # free again once the server is gone

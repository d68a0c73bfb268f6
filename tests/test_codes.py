from __future__ import annotations

import ast
import logging
import pathlib

import pytest

import blockws
import blockws.frames
from blockws.codes import CLEAN_CLOSE_CODES, CloseCode, Opcode, is_clean_close, may_be_sent


def test_codes_imports_nothing_from_blockws():
    # Every layer, exceptions.py included, imports it: it must not import them back.
    tree = ast.parse(pathlib.Path(blockws.codes.__file__).read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert all(node.level == 0 and node.module != "blockws" for node in imports)


def test_public_names_stay_where_they_were():
    assert blockws.CloseCode is blockws.frames.CloseCode is CloseCode
    assert blockws.Opcode is blockws.frames.Opcode is Opcode


def test_clean_closes():
    assert CLEAN_CLOSE_CODES == {1000, 1001, 1005}
    assert is_clean_close(1000) and is_clean_close(CloseCode.GOING_AWAY) and is_clean_close(1005)
    assert not any(is_clean_close(code) for code in (1002, 1006, 1011, 3000, 4000))


def test_codes_a_close_frame_may_carry():
    allowed = [code for code in range(0, 6000) if may_be_sent(code)]
    assert allowed == [1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)]


def test_recorded_close_codes_are_plain_ints_and_print_as_numbers(run_server, caplog):
    # The abort and failure paths record codes named in CloseCode; str() and
    # "%s" of an IntEnum member say "CloseCode.GOING_AWAY" before Python
    # 3.11, in log lines, the CLI and the application's own output.
    caplog.set_level(logging.DEBUG, "blockws.client")
    served: list[blockws.WebSocket] = []

    def handler(ws: blockws.WebSocket) -> None:
        served.append(ws)
        if ws.recv() == "big":
            ws.sendall("x" * 10)
            ws.recv()  # the client fails the connection with 1009
        else:
            ws.abort(CloseCode.GOING_AWAY, "bye")  # the server's own record; the client sees 1006

    server = run_server(handler)
    lost = blockws.connect(server.url, timeout=5)
    lost.sendall("go")
    with pytest.raises(blockws.ConnectionClosedError) as raised:
        lost.recv()
    lost.close()
    aborted = blockws.connect(server.url, timeout=5)
    aborted.abort(CloseCode.POLICY_VIOLATION, "no")
    failed = blockws.connect(server.url, timeout=5, max_size=1)
    failed.sendall("big")
    with pytest.raises(blockws.ConnectionClosedError) as too_big:
        failed.recv()
    server.stop()
    recorded = {
        "lost": (lost.close_code, 1006),
        "raised": (raised.value.code, 1006),
        "aborted": (aborted.close_code, 1008),
        "server": (served[0].close_code, 1001),
        "failed": (failed.close_code, 1009),
        "raised too": (too_big.value.code, 1009),
    }
    for what, (code, number) in recorded.items():
        # "%s": as logging formats its arguments.
        assert type(code) is int and str(code) == "%s" % code == str(number), what  # noqa: UP031
    notes = [r.getMessage() for r in caplog.records if r.name == "blockws.client"]
    closed = [note for note in notes if " closed: code " in note]
    assert [line.split(" closed: code ")[1].split()[0] for line in closed] == ["1006", "1008", "1009"]

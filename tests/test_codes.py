from __future__ import annotations

import ast
import pathlib

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

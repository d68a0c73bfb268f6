"""The table of Pings: matching Pongs to the Pings that wait for them and to the keepalive's."""

from __future__ import annotations

from collections import deque

import pytest

from blockws.pings import Pings


def test_a_pong_answers_the_keepalive_ping_once() -> None:
    pings = Pings()
    pings.expect_unwaited(b"ka01")
    assert pings.answered(deque([b"ka01"])) is not None
    assert pings.latency is not None
    assert pings.answered(deque([b"ka01"])) is None  # a second Pong with that payload: nothing sent it


def test_a_newer_keepalive_ping_replaces_the_unanswered_one() -> None:
    pings = Pings()
    pings.expect_unwaited(b"old!")
    pings.expect_unwaited(b"new!")
    assert pings.answered(deque([b"old!"])) is None
    assert pings.latency is None
    assert pings.answered(deque([b"new!"])) is not None


def test_a_waiting_ping_takes_its_pong_before_the_keepalive_one_with_the_same_payload() -> None:
    pings = Pings()
    waited = pings.expect(b"same")
    pings.expect_unwaited(b"same")
    pongs = deque([b"same"])
    assert pings.answered(pongs) is not None
    assert not pongs  # every Pong is taken
    assert waited.round_trip is not None and waited.waiter.is_set()
    pings.forget(b"same")  # as ping() does once it has its answer
    assert pings.answered(deque([b"same"])) is not None  # then the keepalive's


def test_expect_refuses_a_payload_already_waiting() -> None:
    pings = Pings()
    pings.expect(b"dup!")
    with pytest.raises(ValueError, match="already waiting"):
        pings.expect(b"dup!")
    pings.forget(b"dup!")
    assert pings.waiting == 0

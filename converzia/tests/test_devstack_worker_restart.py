"""`make run` (converzia/devstack.py) starts the job worker again when it exits, with a growing wait;
gunicorn exiting still stops the stack. Real short-lived processes stand in for the children; the
clock is passed in, so the waits are exact and the test takes no longer than the processes do."""

from __future__ import annotations

import os
import sys
import time

import pytest

from converzia.devstack import Stack, StackError

EXITS_AT_ONCE = [sys.executable, "-c", "import sys; sys.exit(3)"]
KEEPS_RUNNING = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture
def stack(tmp_path):
    started = Stack(tmp_path, stop_adopted=False)
    yield started
    assert started.shutdown() == []


def exited(stack: Stack, name: str) -> int:
    return stack.children[name].wait(timeout=30)


def test_a_worker_that_exits_is_started_again_after_a_wait_that_doubles_up_to_its_cap(stack, capsys):
    stack.spawn("worker", EXITS_AT_ONCE, os.environ, own_session=True)
    stack.restart_when_exits(
        "worker",
        EXITS_AT_ONCE,
        os.environ,
        own_session=True,
        first_wait_s=1,
        max_wait_s=2,
        healthy_after_s=60,
    )
    first = stack.children["worker"]
    assert exited(stack, "worker") == 3
    now = time.monotonic()

    assert stack.check_children(now=now) is False  # noticed: back in 1 s
    assert stack.check_children(now=now + 0.9) is False
    assert stack.children["worker"] is first
    assert stack.check_children(now=now + 1.0) is True
    second = stack.children["worker"]
    assert second.pid != first.pid

    assert exited(stack, "worker") == 3
    assert stack.check_children(now=now + 1.5) is False  # died young again: 2 s
    assert stack.check_children(now=now + 3.4) is False
    assert stack.check_children(now=now + 3.5) is True
    assert exited(stack, "worker") == 3
    assert stack.check_children(now=now + 4.0) is False  # capped at 2 s
    assert stack.check_children(now=now + 6.0) is True

    printed = capsys.readouterr().out
    assert "[devstack] worker exited (exit status 3) after" in printed
    assert "restarting it in 1.0 s" in printed
    assert "restarting it in 2.0 s" in printed
    assert "[devstack] worker restarted (pid" in printed and "restart 3)" in printed


def test_a_worker_that_ran_a_while_before_exiting_is_back_after_the_first_wait(stack):
    stack.spawn("worker", EXITS_AT_ONCE, os.environ, own_session=True)
    stack.restart_when_exits(
        "worker",
        EXITS_AT_ONCE,
        os.environ,
        own_session=True,
        first_wait_s=1,
        max_wait_s=8,
        healthy_after_s=60,
    )
    exited(stack, "worker")
    now = time.monotonic()
    stack.check_children(now=now)
    assert stack.check_children(now=now + 1) is True
    exited(stack, "worker")
    stack.check_children(now=now + 1.5)  # young: 2 s
    assert stack.check_children(now=now + 3.5) is True
    exited(stack, "worker")

    assert stack.check_children(now=now + 3.5 + 61) is False  # it had run over a minute: 1 s again
    assert stack.check_children(now=now + 3.5 + 62) is True


def test_gunicorn_exiting_still_stops_the_stack(stack):
    stack.spawn("worker", KEEPS_RUNNING, os.environ, own_session=True)
    stack.restart_when_exits("worker", KEEPS_RUNNING, os.environ, own_session=True)
    stack.spawn("gunicorn", [sys.executable, "-c", "import sys; sys.exit(1)"], os.environ, own_session=True)
    exited(stack, "gunicorn")

    with pytest.raises(StackError, match=r"gunicorn exited unexpectedly \(exit status 1\)"):
        stack.check_children()
    assert stack.children["worker"].poll() is None

"""OutboxItem.step: the unit every sender's platform call goes through."""

from __future__ import annotations

from typing import Any

import pytest

from bot.outbox import OutboxItem


def _item(**kw: Any) -> tuple[OutboxItem, list[dict[str, Any]]]:
    saved: list[dict[str, Any]] = []

    async def save(done: dict[str, Any]) -> None:
        saved.append(done)

    item = OutboxItem(
        id=7, channel="x", target="t", kind="message", payload={}, attempts=0, save=save, **kw
    )
    return item, saved


class Calls:
    """A fake platform call that records how often it ran."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.n = 0

    async def __call__(self) -> Any:
        self.n += 1
        return self.value


async def test_results_are_saved_before_the_next_call_and_never_repeated() -> None:
    item, saved = _item()
    first, second = Calls(11), Calls(12)
    assert await item.step("a", first) == 11
    assert saved == []  # nothing to save before the first call
    assert await item.step("b", second) == 12
    assert saved == [{"a": 11}]  # saved before the second call went out
    assert await item.step("a", first) == 11 and first.n == 1
    assert item.done == {"a": 11, "b": 12}


async def test_a_step_done_in_an_earlier_attempt_is_skipped() -> None:
    item, _ = _item(done={"a": 11})
    call = Calls(99)
    assert await item.step("a", call) == 11 and call.n == 0


async def test_in_doubt_a_found_result_is_recorded_instead_of_calling() -> None:
    item, _ = _item(done={"a": 11}, in_doubt=True)
    call = Calls(12)

    async def find() -> int | None:
        return 13

    assert await item.step("a", call) == 11  # done steps are not in doubt
    assert await item.step("b", call, find=find) == 13 and call.n == 0
    assert item.recovered == ["b"] and not item.in_doubt
    # Only the first step not done was in doubt: the next one is called without a look.
    assert await item.step("c", call, find=find) == 12 and call.n == 1


async def test_in_doubt_nothing_found_means_calling() -> None:
    item, _ = _item(in_doubt=True)
    call = Calls(12)

    async def find() -> int | None:
        return None

    assert await item.step("a", call, find=find) == 12 and call.n == 1
    assert item.recovered == [] and item.resent == []


async def test_in_doubt_without_a_look_the_call_is_made_again_and_counted() -> None:
    item, _ = _item(in_doubt=True)
    call = Calls(12)
    assert await item.step("a", call) == 12
    assert item.resent == ["a"]


async def test_an_idempotent_call_in_doubt_is_made_again_silently() -> None:
    item, _ = _item(in_doubt=True)
    call = Calls(True)
    assert await item.step("edit", call, idempotent=True) is True
    assert item.resent == [] and not item.in_doubt


async def test_a_failed_look_keeps_the_row_in_doubt() -> None:
    item, _ = _item(in_doubt=True)

    async def find() -> int | None:
        raise TimeoutError

    with pytest.raises(TimeoutError):
        await item.step("a", Calls(1), find=find)
    assert item.in_doubt and "a" not in item.done

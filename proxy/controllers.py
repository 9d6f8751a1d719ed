"""Per-service pause/stop state and the rollout (canary) split."""

from __future__ import annotations

import asyncio
from typing import Any

from .godur import SECOND

RUNNING, PAUSED, STOPPED = 0, 1, 2
STATE_NAMES = {RUNNING: "running", PAUSED: "paused", STOPPED: "stopped"}

# What a paused request learns when it is released.
RELEASED, REJECTED_STOPPED, EXPIRED = "released", "stopped", "expired"


class PauseController:
    """Holds requests while paused; releases them on resume or rejects them on stop."""

    def __init__(self) -> None:
        self.state = RUNNING
        self.stop_message = ""
        self.fail_after = 30 * SECOND
        self._waiters: set[asyncio.Future[str]] = set()

    def pause(self, fail_after: int) -> None:
        self.state = PAUSED
        self.fail_after = fail_after

    def stop(self, message: str) -> None:
        self.state = STOPPED
        self.stop_message = message
        self._release_all(REJECTED_STOPPED)

    def resume(self) -> None:
        self.state = RUNNING
        self._release_all(RELEASED)

    async def wait(self, started_at: float) -> str:
        """Wait while paused; the deadline counts from the request's arrival."""
        loop = asyncio.get_running_loop()
        remaining = started_at + self.fail_after / SECOND - loop.time()
        if remaining <= 0:
            return EXPIRED
        future: asyncio.Future[str] = loop.create_future()
        self._waiters.add(future)
        try:
            return await asyncio.wait_for(future, remaining)
        except TimeoutError:
            return EXPIRED
        finally:
            self._waiters.discard(future)

    def _release_all(self, outcome: str) -> None:
        for waiter in list(self._waiters):
            if not waiter.done():
                waiter.set_result(outcome)
        self._waiters.clear()

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "stop_message": self.stop_message,
            "fail_after": self.fail_after,
        }

    def load_json(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        state = data.get("state", RUNNING)
        if state in STATE_NAMES:
            self.state = state
        if isinstance(data.get("stop_message"), str):
            self.stop_message = data["stop_message"]
        if isinstance(data.get("fail_after"), int) and not isinstance(data["fail_after"], bool):
            self.fail_after = data["fail_after"]


def fnv1a_32(data: bytes) -> int:
    value = 0x811C9DC5
    for byte in data:
        value ^= byte
        value = (value * 0x01000193) & 0xFFFFFFFF
    return value


class RolloutController:
    """Sends a request to the rollout targets when its ``kamal-rollout`` cookie matches."""

    def __init__(self, percentage: int, allowlist: list[str]) -> None:
        self.percentage = percentage
        self.percentage_split_point = percentage / 100 * 4294967295
        self.allowlist = list(allowlist)
        self._allowed = frozenset(allowlist)

    def matches(self, cookie_value: str | None) -> bool:
        if cookie_value is None:
            return False
        if cookie_value in self._allowed:
            return True
        return fnv1a_32(cookie_value.encode()) <= self.percentage_split_point

    def to_json(self) -> dict[str, Any]:
        return {
            "percentage": self.percentage,
            "percentage_split_point": self.percentage_split_point,
            "allowlist": self.allowlist,
        }

    @classmethod
    def from_json(cls, data: Any) -> RolloutController | None:
        if not isinstance(data, dict):
            return None
        percentage = data.get("percentage", 0)
        allowlist = data.get("allowlist") or []
        if not isinstance(percentage, int) or not isinstance(allowlist, list):
            raise ValueError("invalid rollout_controller")
        return cls(percentage, [str(v) for v in allowlist])

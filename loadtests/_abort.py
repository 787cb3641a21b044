"""When a load run gives up early: the target has not answered for a while, or too many requests fail.

A pure decision (times and counts in, a reason or None out): the locustfile's guard greenlet feeds it the last
time the system answered its liveness probe and Locust's own request totals, and quits with exit code 1 on a
reason. Without it a run against a system that is down goes on for the profile's whole length at 100 % failures.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AbortRule:
    """`no_answer_s`: give up when the target has not answered for this long (0: never);
    `failure_ratio`: give up when more than this share of requests failed, once `min_requests` were made (1: never).
    """

    no_answer_s: float = 15.0
    failure_ratio: float = 0.5
    min_requests: int = 20

    def __post_init__(self) -> None:
        if self.no_answer_s < 0:
            raise ValueError(f"the no-answer window must not be negative, got {self.no_answer_s}")
        if not 0 < self.failure_ratio <= 1:
            raise ValueError(f"the failure ratio must be in (0, 1], got {self.failure_ratio}")
        if self.min_requests < 1:
            raise ValueError(f"the minimum number of requests must be at least 1, got {self.min_requests}")

    def reason(self, *, now_s: float, last_answer_s: float, requests: int, failures: int) -> str | None:
        """Why the run should stop now, or None to go on."""
        silent_s = now_s - last_answer_s
        if self.no_answer_s and silent_s >= self.no_answer_s:
            return f"the target has not answered for {silent_s:.0f} s (limit {self.no_answer_s:g} s)"
        if requests >= self.min_requests and failures > self.failure_ratio * requests:
            return (
                f"{failures} of {requests} requests failed ({failures / requests:.0%}; "
                f"limit {self.failure_ratio:.0%} after {self.min_requests} requests)"
            )
        return None

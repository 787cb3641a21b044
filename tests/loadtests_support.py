"""What the load tests' test files share: a phone, the summary's keys, a Prometheus scrape, turns and replies."""

from __future__ import annotations

from loadtests._ledger import Fragment, HistoryItem, Reply, Turn
from loadtests._script import tagged

PHONE = "79161234567"
SUMMARY_KEYS = {
    "profile": str,
    "started_at": str,
    "duration_s": float,
    "peak_users": int,
    "host": str,
    "format": str,
    "settings": dict,
    "requests": dict,
    "accept_ms": dict,
    "e2e_ms": dict,
    "e2e_ms_samples": list,
    "fragments_sent": int,
    "turns_sent": int,
    "turns_answered": int,
    "lost_turns": int,
    "double_replies": int,
    "replies": int,
    "merge": dict,
    "flush_lateness_ms": dict,
    "queue_lag_ms": dict,
    "dead_letters": int,
    "errors": list,
}


PROM_TEXT = """# HELP aiadmin_queue_wait_seconds Enqueue to pick-up
# TYPE aiadmin_queue_wait_seconds histogram
aiadmin_queue_wait_seconds_bucket{le="0.001"} 0.0
aiadmin_queue_wait_seconds_bucket{le="0.01"} 50.0
aiadmin_queue_wait_seconds_bucket{le="0.1"} 90.0
aiadmin_queue_wait_seconds_bucket{le="1.0"} 100.0
aiadmin_queue_wait_seconds_bucket{le="+Inf"} 100.0
aiadmin_queue_wait_seconds_count 100.0
aiadmin_queue_wait_seconds_sum 3.0
# HELP aiadmin_turn_seconds Worker time per turn
# TYPE aiadmin_turn_seconds histogram
aiadmin_turn_seconds_bucket{le="1.0"} 5.0
aiadmin_turn_seconds_bucket{le="+Inf"} 5.0
aiadmin_turn_seconds_count 5.0
aiadmin_turn_seconds_sum 1.0
"""


def make_turn(index: int, texts: list[str], *, at_ms: int, phone: str = PHONE, outcomes: str = "") -> Turn:
    turn = Turn(phone=phone, index=index, first_sent_ms=at_ms, last_sent_ms=at_ms + 500)
    for i, text in enumerate(texts):
        outcome = {"a": "accepted", "r": "refused", "p": "pending"}[(outcomes or "a" * len(texts))[i]]
        turn.fragments.append(Fragment(tagged(text, turn=index, fragment=i), outcome))  # type: ignore[arg-type]
    return turn


def reply(seq: int, at_ms: int, to: str = PHONE) -> Reply:
    return Reply(seq=seq, to=to, text=f"ответ {seq}", at_ms=at_ms)


def history(*texts: str, at_ms: int = 10) -> list[HistoryItem]:
    items: list[HistoryItem] = []
    for text in texts:
        items += [HistoryItem("client", text, at_ms), HistoryItem("admin", "ответ", at_ms)]
    return items

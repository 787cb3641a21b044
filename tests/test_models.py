"""Merging fragments: order and whitespace, checked on generated inputs."""

from __future__ import annotations

import random

import fakeredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from system.ingest.batch_store import BatchConfig, BatchStore
from system.models import InboundMessage, merge_texts
from system.settings import load_settings
from system.store.keys import Keys
from system.store.queue import JobQueue, QueueConfig

fragment = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@given(st.lists(fragment, max_size=12))
def test_merge_joins_trimmed_non_empty_fragments_in_order_with_one_space(texts: list[str]) -> None:
    merged = merge_texts(texts)
    kept = [t.strip() for t in texts if t.strip()]
    assert merged == " ".join(kept)
    assert merged == merged.strip()
    position = 0
    for piece in kept:  # every fragment appears, in arrival order
        position = merged.index(piece, position) + len(piece)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    st.lists(
        st.text(alphabet="абвгд ежз!?,.0123456789", min_size=1, max_size=15).filter(str.strip), min_size=1, max_size=30
    )
)
async def test_batches_keep_arrival_order_across_seals(texts: list[str]) -> None:
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(version=(7,)))
    settings_ = load_settings({"AIADMIN_RATE_LIMIT_SENDER_BURST": "0", "AIADMIN_RATE_LIMIT_GLOBAL_PER_S": "0"})
    keys = Keys()
    store = BatchStore(redis, keys=keys, config=BatchConfig.from_settings(settings_))
    for i, text in enumerate(texts):
        msg = InboundMessage(company_id=1, phone="79001234567", message_id=f"m{i}", text=text, received_ms=i)
        await store.append(msg, now_ms=i)
    queue = JobQueue(redis, keys=keys, config=QueueConfig.from_settings(settings_), rng=random.Random(0))
    await queue.ensure_groups()
    jobs: list[list[str]] = []
    while True:
        [claimed] = await store.claim(keys.shard(0), ["1:79001234567"], now_ms=10**9)
        if claimed.status != 1:
            break
        [delivery] = await queue.read("w", count=10, now_ms=10**9)
        jobs.append([m.message_id for m in delivery.job.messages])
        await queue.ack(delivery, now_ms=10**9)
    assert [mid for job in jobs for mid in job] == [f"m{i}" for i in range(len(texts))]
    assert all(len(job) <= 10 for job in jobs)
    assert [len(job) for job in jobs[:-1]] == [10] * (len(jobs) - 1)

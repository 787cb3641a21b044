"""The model sees long client texts cut to `max_message_chars`; the history keeps them whole."""

from __future__ import annotations

from system.models import BatchedMessage, Job, MessageKind
from system.turn.context import Context, Dialog, HistoryItem, Preferences
from system.turn.prompt import TRUNCATED_MARK, conversation, truncate_for_model, turn_text


def job(text: str) -> Job:
    message = BatchedMessage(message_id="wamid.1", text=text, kind=MessageKind.TEXT, received_ms=1)
    return Job(batch_id="b1", company_id=962302, phone="79001234567", messages=(message,), enqueued_ms=1)


def test_text_over_the_limit_is_cut_for_the_model_and_marked() -> None:
    text = "я" * 5000
    cut = truncate_for_model(text, max_chars=4096)
    assert len(cut) == 4096
    assert cut.endswith(TRUNCATED_MARK) and cut.startswith("я" * 4000)
    assert truncate_for_model("коротко", max_chars=4096) == "коротко"


def test_long_client_text_reaches_the_model_cut_but_stays_whole_in_the_turn() -> None:
    long_text = "Хочу записаться " * 1000  # 16,000 characters, over the 4,096 the model sees
    earlier = HistoryItem("client", "раньше " * 1000, 0)
    context = Context(dialog=Dialog(), history=(earlier,), preferences=Preferences())
    messages = conversation("system", context, job(long_text), max_client_chars=100)
    assert [len(m["content"]) for m in messages[1:]] == [100, 100]
    assert len(turn_text(job(long_text))) == len(long_text.strip())  # what the worker stores in the history

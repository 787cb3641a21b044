"""What a load-test client says: its phone, its booking conversation, and the tags that make fragments countable.

The conversation is the simulator's booking client (`simulator.users.User`, persona `rapid_booker`): its
phrases are the ones the fake LLM understands ("Хочу записаться" / "на стрижку машинкой" / "завтра в 15:00"),
and it answers the bot's offers ("давайте в 16:00"). Only the split into fragments is the profile's.

Every fragment ends in a tag, `#` and two Latin letters (turn, fragment: `#ab` is turn 0, fragment 1), so the
merged message the worker stored can be taken apart again. Latin letters only: digits could be read as a date
or a time by the fake LLM, and two-letter words are below its fuzzy matching of services and masters.
"""

from __future__ import annotations

import itertools
import random
import re
import string
from dataclasses import dataclass, field
from datetime import date

from simulator.llm_replies import DONE
from simulator.personas import PERSONAS, want_for
from simulator.users import User

TAG_LETTERS = string.ascii_lowercase
MAX_TAGGED = len(TAG_LETTERS)  # turns per client and fragments per turn a tag can number
TAG = re.compile(r"#([a-z])([a-z])(?![a-z])")
MAX_TURNS = 5  # a booking takes 1-3 turns; a client who is still not booked after this many leaves


def tag(turn: int, fragment: int) -> str:
    """The tag of fragment `fragment` of turn `turn` (both 0-based, under MAX_TAGGED)."""
    if not (0 <= turn < MAX_TAGGED and 0 <= fragment < MAX_TAGGED):
        raise ValueError(f"tags number turns and fragments 0..{MAX_TAGGED - 1}, got {turn}, {fragment}")
    return f"#{TAG_LETTERS[turn]}{TAG_LETTERS[fragment]}"


def tagged(text: str, *, turn: int, fragment: int) -> str:
    return f"{text} {tag(turn, fragment)}"


def tags_in(text: str) -> list[tuple[int, int]]:
    """(turn, fragment) of every tag in `text`, in order."""
    return [(TAG_LETTERS.index(t), TAG_LETTERS.index(f)) for t, f in TAG.findall(text)]


def split_words(text: str, count: int, rng: random.Random) -> list[str]:
    """`text` cut at word boundaries into `count` non-empty fragments (fewer when it has fewer words)."""
    words = text.split()
    if not words:
        return []
    count = max(1, min(count, len(words)))
    cuts = sorted(rng.sample(range(1, len(words)), count - 1))
    bounds = [0, *cuts, len(words)]
    return [" ".join(words[a:b]) for a, b in itertools.pairwise(bounds)]


@dataclass
class Conversation:
    """One client's booking conversation: what to say first, and what to answer to each reply."""

    phone: str
    rng: random.Random
    today: date
    opening_fragments: tuple[int, int]
    follow_fragments: tuple[int, int]
    _user: User = field(init=False, repr=False)

    def __post_init__(self) -> None:
        persona = PERSONAS["rapid_booker"]
        self._user = User(
            phone=self.phone,
            persona=persona,
            want=want_for(persona, self.rng),
            today=self.today,
            rng=self.rng,
            start_ms=0,
            achieved=_booked,
        )

    @property
    def booked(self) -> bool:
        return _booked(self._user)

    def opening(self) -> list[str]:
        """The first turn's fragments (untagged)."""
        return self._fragments(" ".join(self._user.opening()), self.opening_fragments)

    def answer(self, reply: str) -> list[str] | None:
        """The next turn's fragments after the bot's `reply`, or None when the client is done."""
        self._user.replies.append(reply)
        follow = self._user.follow_up(reply)
        if follow is None:
            return None
        return self._fragments(follow, self.follow_fragments)

    def _fragments(self, text: str, bounds: tuple[int, int]) -> list[str]:
        return split_words(text, self.rng.randint(*bounds), self.rng)


def _booked(user: User) -> bool:
    return any(r.startswith(DONE) for r in user.replies)

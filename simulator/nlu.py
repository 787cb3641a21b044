"""Rule-based understanding of a Russian client's text, and of the system prompt the fake LLM receives.

Pure functions: the time (`now`, already in the salon's zone), the catalogue and the morphology analyser
(pymorphy3's `MorphAnalyzer`, loaded once per app) are inputs. Services are matched on pymorphy3 lemmas with
rapidfuzz for typos ("стрижку машинкой", "машинкой подстричься", "стрижка машиной"); masters in any case
("к Сергею", "у Сергея"); dates and times by `simulator.nlu_when` (its docstring states the rules).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time
from enum import StrEnum
from typing import Any, Protocol

from rapidfuzz import fuzz
from rapidfuzz.distance import OSA

from simulator.nlu_when import TimeWindow, correct_day_words, month_number, parse_when

# Distinct words whose parses are kept: a day's conversations use a few thousand; a parse is a few hundred bytes.
MORPH_CACHE_WORDS = 50_000
_MASTER_FUZZ_MIN = 84  # a swapped letter pair in "алексей" (7 letters) gives 85.7; other names stay under 50
_MASTER_FUZZ_LEN = 5  # shorter words are too easily near a short name
_TYPO_MIN_LEN = 6  # a misspelt service word this long is compared with the titles' forms one edit away
_FUZZ_MIN = 80  # rapidfuzz ratio: "машина"~"машинка" is 92, "стришка"~"стрижка" 86, unrelated words < 60
# Client words → the lemma a catalogue title uses for the same thing.
_SYNONYMS = {
    "подстричься": "стрижка", "подстричь": "стрижка", "постричься": "стрижка", "постричь": "стрижка",
    "стричься": "стрижка", "стричь": "стрижка", "подстригать": "стрижка", "машина": "машинка",
    "оформить": "оформление", "оформлять": "оформление", "побрить": "бритьё", "побриться": "бритьё",
    "бриться": "бритьё", "брить": "бритьё", "покрасить": "окрашивание", "покраситься": "окрашивание",
    "покраска": "окрашивание", "бородка": "борода", "ребёнок": "детский", "сын": "детский",
}  # fmt: skip
_NICKNAMES = {  # keys with ё folded to е, as `lemmas` returns them
    "сережа": "сергей", "серега": "сергей", "леша": "алексей", "леха": "алексей", "саша": "александр",
    "дима": "дмитрий", "миша": "михаил", "коля": "николай", "ваня": "иван", "женя": "евгений",
    "аня": "анна", "маша": "мария", "катя": "екатерина", "оля": "ольга", "лена": "елена",
}  # fmt: skip
# Salon services a client may ask for that a barbershop's catalogue may lack (said back as "not offered").
_OTHER_SERVICES = re.compile(
    r"\b(маникюр\w*|педикюр\w*|массаж\w*|эпиляци\w*|депиляци\w*|окрашивани\w*|покраск\w*|мелировани\w*|"
    r"наращивани\w*|ресниц\w*|бров\w*|тату\w*|пирсинг\w*|укладк\w*|макияж\w*|шугаринг\w*|солярий\w*)"
)
_MARKER = re.compile(r"\[клиент прислал [^\]]*\]")
_STOP = frozenset({"и", "с", "на", "для", "по", "в", "от", "до"})


class Morph(Protocol):
    """The part of pymorphy3's MorphAnalyzer used here."""

    def parse(self, word: str) -> Sequence[Any]: ...

    def __hash__(self) -> int: ...  # the inflected forms of catalogue words are cached per analyser


class CachedMorph:
    """A `Morph` that remembers its words' parses (least recently used first out).

    Every request of a conversation repeats its history and the catalogue, so the same few words are parsed
    again and again; pymorphy3 answers a word in tens of microseconds, the cache in well under one.
    """

    def __init__(self, morph: Morph, *, max_words: int = MORPH_CACHE_WORDS) -> None:
        self._parse = functools.lru_cache(maxsize=max_words)(lambda word: tuple(morph.parse(word)))

    def parse(self, word: str) -> Sequence[Any]:
        return self._parse(word)


class Intent(StrEnum):
    GREETING = "greeting"
    BOOK = "book"
    AVAILABILITY = "availability"
    PRICES = "prices"
    MY_BOOKINGS = "my_bookings"
    CANCEL = "cancel"
    RESCHEDULE = "reschedule"
    GIVE_NAME = "give_name"
    THANKS_BYE = "thanks_bye"
    OFF_TOPIC = "off_topic"
    MEDIA = "media"


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """A catalogue service as the prompt lists it."""

    id: int
    title: str
    price: str = ""
    duration_min: int = 0


@dataclass(frozen=True, slots=True)
class Understanding:
    """What one client message says; `day`/`at` are the wanted (new) date and time, `from_*` the old ones."""

    intent: Intent
    service: ServiceRef | None = None
    service_options: tuple[ServiceRef, ...] = ()  # several services fit equally ("подстричься")
    unknown_service: str | None = None  # asked for something the catalogue lacks
    master: str | None = None
    day: date | None = None
    at: time | None = None
    window: TimeWindow | None = None
    from_day: date | None = None
    from_at: time | None = None
    name: str | None = None
    everything: bool = False  # "все записи"
    choice: int | None = None  # "первый" → 0, "последний" → -1
    record_id: int | None = None  # "запись 1234", "№1234": a record named by its number
    affirmative: bool = False
    greeting: bool = False
    unclear_day: bool = False  # a day-like word not understood ("в птнцу"): ask, never assume today
    unclear_master: str | None = None  # "к X" where X is no master's name: ask which master


@dataclass(frozen=True, slots=True)
class PromptFacts:
    """What the system prompt says: the only truth the fake LLM may use besides tool results."""

    salon: str = ""
    now: datetime = datetime(2000, 1, 1)  # naive, salon time
    services: tuple[ServiceRef, ...] = ()
    masters: tuple[str, ...] = ()
    client_name: str = ""
    draft: dict[str, str] = field(default_factory=dict)
    stage: str = ""
    offered: tuple[datetime, ...] = ()  # naive, salon time


# ---------------------------------------------------------------------------------------------- prompt

_PROMPT_NOW = re.compile(r"Сегодня \w+, (\d{1,2}) (\w+) (\d{4}), сейчас (\d{1,2}):(\d{2})")
_PROMPT_SERVICE = re.compile(r"^- (.+): (\S+) ₽, (\d+) мин \(id (\d+)\)$", re.M)


def parse_prompt(text: str) -> PromptFacts:
    """The facts of `system.turn.prompt.system_prompt`'s text; what is missing stays empty."""
    salon = re.search(r"^Салон: (.+)\.$", text, re.M)
    now = datetime(2000, 1, 1)
    if m := _PROMPT_NOW.search(text):
        month = month_number(m[2]) or 1
        now = datetime(int(m[3]), month, int(m[1]), int(m[4]), int(m[5]))
    services = tuple(
        ServiceRef(id=int(m[4]), title=m[1], price=m[2], duration_min=int(m[3])) for m in _PROMPT_SERVICE.finditer(text)
    )
    masters: tuple[str, ...] = ()
    if (m := re.search(r"^Мастера: (.+)\.$", text, re.M)) and "search_slots" not in m[1]:
        masters = tuple(name.strip() for name in m[1].split(", ") if name.strip())
    name = re.search(r"^Клиента зовут (.+)\.$", text, re.M)
    draft: dict[str, str] = {}
    stage = ""
    if m := re.search(r"^Текущий черновик записи: (.*) \(этап: (\w+)\)\.$", text, re.M):
        stage = m[2]
        for part in m[1].split(", "):
            key, sep, value = part.partition(": ")
            if sep:
                draft[key] = value
    offered: list[datetime] = []
    if m := re.search(r"^Последние предложенные варианты: (.+)\.$", text, re.M):
        for item in m[1].split(", "):
            try:
                offered.append(datetime.fromisoformat(item.strip()).replace(tzinfo=None))
            except ValueError:
                continue
    return PromptFacts(
        salon=salon[1] if salon else "",
        now=now,
        services=services,
        masters=masters,
        client_name=name[1] if name else "",
        draft=draft,
        stage=stage,
        offered=tuple(offered),
    )


# ---------------------------------------------------------------------------------------------- text


def understand(
    text: str,
    *,
    now: datetime,
    services: Sequence[ServiceRef],
    masters: Sequence[str],
    morph: Morph,
) -> Understanding:
    """The intent and the slots (service, master, dates, times, name) of one client message."""
    plain = _MARKER.sub(" ", text)
    if not plain.strip() and _MARKER.search(text):
        return Understanding(intent=Intent.MEDIA)
    t = normalize(plain)
    dated, unclear_day = correct_day_words(t, is_known=functools.partial(is_known, morph=morph))
    when = parse_when(dated, today=now.date())
    name = _name(plain, morph)
    service, options, unknown = _service(t, services, morph)
    master = _master(t, masters, morph, skip=name)
    u = Understanding(
        intent=Intent.OFF_TOPIC,
        service=service,
        service_options=options,
        unknown_service=unknown,
        master=master,
        day=when.day,
        at=when.at,
        window=when.window,
        from_day=when.from_day,
        from_at=when.from_at,
        name=name,
        everything=bool(re.search(r"\bвсе (мои |свои )?запис|\bвсех\b|\bвсе\s*$", t)),
        choice=_choice(t),
        record_id=int(m[1]) if (m := re.search(r"(?:запис\w*|id|№|номер)\s*#?\s*(\d{3,9})\b", t)) else None,
        affirmative=bool(re.match(r"(да|ага|угу|давайте|подходит|годится|записывайте|запишите|ок|окей)\b", t)),
        greeting=bool(_GREETING.search(t)),
        unclear_day=unclear_day and when.day is None,
        unclear_master=None if master or not masters else _unknown_master(t, morph),
    )
    return _with_intent(u, t)


_GREETING = re.compile(
    r"^(привет|здравствуй|здрасьте|здрасте|добр(ый|ое|ого) (день|утро|вечер|дня|утра|вечера)|хай\b|салют)"
)


_BOOK = re.compile(r"\bзапиш|\bзаписа|\bзапись\b|\bхочу\b|\bбронир|\bдавайте\b|\bподходит\b")
_PRICES = re.compile(r"\bсколько стои|\bцен[аыуе]?\b|\bпрайс|\bстоимост|\bпочем|\bкакие (есть |у вас )?услуги|\bуслуг")


def _with_intent(u: Understanding, t: str) -> Understanding:
    slots = u.service or u.service_options or u.day or u.at or u.window or u.choice is not None
    if re.search(r"\bотмен|\bне (смогу|приду|получится)|\bудали\w* (мою |мои )?запис", t):
        intent = Intent.CANCEL
    elif re.search(r"\bперенес|\bперенос|\bперезапиш|\bсдвин|\b(поменять|изменить|другое) время", t):
        intent = Intent.RESCHEDULE
    elif re.search(
        r"\b(мо[яиюей]\w*|у меня( есть)?|есть ли у меня) запис|\b(когда|куда|на когда) (я )?записан|\bя записан", t
    ):
        intent = Intent.MY_BOOKINGS
    elif _BOOK.search(t) and (u.day or u.at or u.window or not _PRICES.search(t)):
        intent = Intent.BOOK
    elif _PRICES.search(t):
        intent = Intent.PRICES
    elif re.search(r"\bсвобод|\bокош|\bокн[оа]\b|\bесть (ли )?(время|место|запись)|\bкогда можно|\bближайш", t):
        intent = Intent.AVAILABILITY
    elif slots or u.unknown_service or (u.master and not u.name):
        intent = Intent.BOOK
    elif u.name:
        intent = Intent.GIVE_NAME
    elif re.search(r"\bспасиб|\bблагодар|\bдо свидания|\bпока\b|\bвсего доброго|\bхорошего дня", t) or re.fullmatch(
        r"(ок|окей|хорошо|понял|поняла|ясно|отлично|супер|договорились)[.!)]*", t
    ):
        intent = Intent.THANKS_BYE
    elif u.greeting:
        intent = Intent.GREETING
    elif u.affirmative:
        intent = Intent.BOOK
    else:
        intent = Intent.OFF_TOPIC
    return replace(u, intent=intent)


def normalize(text: str) -> str:
    """Lower case, ё → е, single spaces: what the patterns are written against."""
    return " ".join(text.lower().replace("ё", "е").split())


def is_known(word: str, *, morph: Morph) -> bool:
    """Whether the dictionary knows the word (pymorphy3 guesses the parses of words it does not know)."""
    return any(getattr(p, "is_known", True) for p in morph.parse(word))


def lemmas(word: str, morph: Morph) -> set[str]:
    """The word and the normal forms of its likeliest parses (ё folded to е)."""
    out = {word.replace("ё", "е")}
    for parse in morph.parse(word)[:3]:
        out.add(str(parse.normal_form).replace("ё", "е"))
    return out


def _words(t: str) -> list[str]:
    return re.findall(r"[а-яa-z0-9]+(?:-[а-я]+)?", t)


# --- services and masters


def _service(
    t: str, services: Sequence[ServiceRef], morph: Morph
) -> tuple[ServiceRef | None, tuple[ServiceRef, ...], str | None]:
    said: set[str] = set()
    misspelt: list[str] = []  # words the dictionary lacks: compared with every form of the titles' words
    for word in _words(t):
        if word in _STOP or len(word) < 3:
            continue
        forms = lemmas(word, morph)
        said |= forms | {_SYNONYMS[f].replace("ё", "е") for f in forms if f in _SYNONYMS}
        if len(word) >= _TYPO_MIN_LEN and not is_known(word, morph=morph):
            misspelt.append(word)
            said |= {lemma.replace("ё", "е") for key, lemma in _SYNONYMS.items() if _one_typo(word, frozenset((key,)))}
    scored: list[tuple[float, int, ServiceRef]] = []
    for s in services:
        title = [w for w in _words(normalize(s.title)) if w not in _STOP and len(w) > 2]
        heads = [_first_lemma(w, morph) for w in title]
        matched = sum(
            1
            for w, h in zip(title, heads, strict=True)
            if any(_same(h, x) for x in said) or any(_one_typo(x, _word_forms(w, morph)) for x in misspelt)
        )
        if matched:
            scored.append((matched / len(heads), matched, s))
    other = _OTHER_SERVICES.search(t)
    if not scored:
        return None, (), other[1] if other else None
    scored.sort(key=lambda x: (-x[0], -x[1]))
    best = [s for score, n, s in scored if (score, n) == scored[0][:2]]
    if other and scored[0][0] < 1:
        return None, (), other[1]
    if len(best) == 1:
        return best[0], (), None
    return None, tuple(best), None


def _first_lemma(word: str, morph: Morph) -> str:
    parses = morph.parse(word)
    return (str(parses[0].normal_form) if parses else word).replace("ё", "е")


def _same(a: str, b: str) -> bool:
    return a == b or (min(len(a), len(b)) >= 5 and fuzz.ratio(a, b) >= _FUZZ_MIN)


def _master(t: str, masters: Sequence[str], morph: Morph, *, skip: str | None) -> str | None:
    keys = {normalize(m).split()[0]: m for m in masters if m.strip()}
    skipped = normalize(skip) if skip else ""
    for word in _words(t):
        if word == skipped or len(word) < 3:
            continue
        forms = lemmas(word, morph)
        forms |= {_NICKNAMES[f].replace("ё", "е") for f in forms if f in _NICKNAMES}
        for key, master in keys.items():
            if key in forms:
                return master
    return _master_misspelt(t, keys, morph, skipped=skipped)


def _master_misspelt(t: str, keys: dict[str, str], morph: Morph, *, skipped: str) -> str | None:
    """A master's name with a typo in any case ("к аелксею", "к срегею"): one edit (a swapped pair counts once)
    from a form of the name, or a normal form near enough; the closest wins."""
    best: tuple[float, str] | None = None
    for word in _words(t):
        if word == skipped or len(word) < _MASTER_FUZZ_LEN:
            continue
        forms = lemmas(word, morph)
        unknown = not is_known(word, morph=morph)
        for key, master in keys.items():
            score = max(fuzz.ratio(form, key) for form in forms)
            if unknown and _one_typo(word, _word_forms(key, morph)):
                score = max(score, 100.0 - len(word))  # a typo of an inflected form: near, below an exact lemma
            if score >= _MASTER_FUZZ_MIN and (best is None or score > best[0]):
                best = (score, master)
    return best[1] if best else None


@functools.lru_cache(maxsize=1024)
def _word_forms(word: str, morph: Morph) -> frozenset[str]:
    """Every inflected form of a word ("сергей" → "сергею", "мужская" → "мужскую"), a name's parse first."""
    parses = [p for p in morph.parse(word) if "Name" in p.tag] or list(morph.parse(word)[:1])
    return frozenset({word} | {str(f.word).replace("ё", "е") for p in parses for f in p.lexeme})


def _one_typo(word: str, forms: frozenset[str]) -> bool:
    """One edit (a swapped pair counts once: OSA distance) from one of the forms."""
    return any(OSA.distance(word, form, score_cutoff=1) <= 1 for form in forms)


def _unknown_master(t: str, morph: Morph) -> str | None:
    """The word after "к"/"у мастера" when it is a name or an unknown word, so no master's name was understood."""
    for m in re.finditer(r"\b(?:к|у)(?: мастер\w*)? ([а-я]{3,})\b", t):
        word = m[1]
        parses = morph.parse(word)
        if not is_known(word, morph=morph) or (parses and "Name" in parses[0].tag):  # "к тому же" is no Том
            return word
    return None


def _name(text: str, morph: Morph) -> str | None:
    patterns = (
        (r"(?i:меня зовут|мое имя|моё имя|зовут меня)\s+([А-ЯЁа-яё][а-яё-]+)", False),
        (r"([А-ЯЁ][а-яё]+)\s+(?i:меня зовут)", False),
        (r"(?:^|[\s,.!])(?:[Яя]|[Ээ]то)\s+([А-ЯЁа-яё][а-яё]+)", True),
    )
    for pattern, needs_name_tag in patterns:
        m = re.search(pattern, text)
        if not m:
            continue
        word = m[1]
        if needs_name_tag and not any("Name" in p.tag for p in morph.parse(word)):
            continue
        return word[:1].upper() + word[1:].lower()
    return None


def _choice(t: str) -> int | None:
    m = re.search(r"\b(перв|втор|трет|последн)(ый|ой|ое|ая|ий|ее|ую|ого|ом)\b", t)
    return None if not m else {"перв": 0, "втор": 1, "трет": 2, "последн": -1}[m[1]]

"""The fake LLM's Russian replies: facts from the prompt and tool results, wording varied by a seeded pick.

The marker phrases (DONE, ASK_WHICH_*, MOVE_MARK) are what the policy recognises in its own earlier replies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from simulator.nlu import Intent, Morph, PromptFacts, ServiceRef

DONE = "✅"  # opens every reply that completes a booking, a cancellation or a move
ASK_WHICH_CANCEL = "Какую запись отменить?"
ASK_WHICH_MOVE = "Какую запись перенести?"
MOVE_MARK = "перенести запись"
SLOTS_LEAD = r"Свободно:|выберите время:"  # what precedes a list of offered times
ANY_MASTER = "любой мастер"
SERVICES_LISTED = 6

_WEEKDAYS_ACC = ("в понедельник", "во вторник", "в среду", "в четверг", "в пятницу", "в субботу", "в воскресенье")
_MONTHS = (
    "января", "февраля", "марта", "апреля", "мая", "июня",
    "июля", "августа", "сентября", "октября", "ноября", "декабря",
)  # fmt: skip


def day_month(d: date) -> str:
    return f"{d.day} {_MONTHS[d.month - 1]}"


def human_day(d: date, today: date) -> str:
    """'завтра, 26 ноября', 'в пятницу, 28 ноября'."""
    relative = {0: "сегодня", 1: "завтра", 2: "послезавтра"}.get((d - today).days)
    return f"{relative or _WEEKDAYS_ACC[d.weekday()]}, {day_month(d)}"


def is_real_master(name: Any) -> bool:
    return isinstance(name, str) and bool(name) and name != ANY_MASTER


@dataclass(frozen=True, slots=True)
class Replies:
    """Reply texts for one turn."""

    facts: PromptFacts
    pick: Callable[[str, Sequence[str]], str]
    morph: Morph
    name: str = ""

    # --- small talk --------------------------------------------------------------------------------------

    def small_talk(self, intent: Intent) -> str:
        salon = self.facts.salon or "наш салон"
        hello = f"Здравствуйте, {self.name}!" if self.name else "Здравствуйте!"
        if intent is Intent.GREETING:
            return self.pick(
                "greeting",
                (
                    f"{hello} Это {salon}. Чем могу помочь: записать, перенести или отменить визит?",
                    f"{hello} Рады вам 😊 Хотите записаться или уточнить что-то по записи?",
                ),
            )
        if intent is Intent.THANKS_BYE:
            return self.pick(
                "thanks", ("Пожалуйста! Будем рады вас видеть 😊", "Всегда рады помочь! Хорошего дня!", "До встречи!")
            )
        if intent is Intent.MEDIA:
            return self.pick(
                "media",
                (
                    "Извините, я не могу прослушать голосовые и открыть вложения 🙏 Напишите, пожалуйста, текстом.",
                    "К сожалению, вложения я не открываю 🙏 Напишите, пожалуйста, текстом, чем помочь.",
                ),
            )
        return self.pick(
            "off_topic",
            (
                f"Я помогаю с записью в {salon}: подберу время, перенесу или отменю визит, подскажу цены. "
                "Чем могу помочь?",
                "Простите, с этим не подскажу 🙏 Могу записать вас, перенести или отменить визит. Что удобно?",
            ),
        )

    def name_saved(self, saved: dict[str, Any] | None) -> str:
        if not saved or "saved" not in saved:
            return "Простите, не разобрал имя 🙏 Как к вам обращаться?"
        return self.pick(
            "name",
            (
                f"Приятно познакомиться, {saved['saved']}! Чем могу помочь?",
                f"Очень приятно, {saved['saved']} 😊 Записать вас на услугу?",
            ),
        )

    # --- services ----------------------------------------------------------------------------------------

    def _services(self, listed: dict[str, Any] | None = None) -> list[str]:
        if self.facts.services:
            return [_service_line(s) for s in self.facts.services]
        docs = (listed or {}).get("services") or []
        return [f"{d.get('title')} — {d.get('price_rub')} ₽" for d in docs if isinstance(d, dict)]

    def unknown_service(self, wanted: str, available: Sequence[str] = ()) -> str:
        some = list(available) or self._services()
        offer = f" Могу предложить: {', '.join(some[:SERVICES_LISTED])}." if some else ""
        return f"К сожалению, «{wanted}» у нас не делают 🙏{offer} Записать вас на что-то из этого?"

    def which_service(self, options: Sequence[ServiceRef]) -> str:
        return "Уточните, пожалуйста, какую услугу: " + " или ".join(_service_line(s) for s in options) + "?"

    def ask_service(self, listed: dict[str, Any] | None) -> str:
        some = self._services(listed)
        menu = f" У нас есть: {', '.join(some[:SERVICES_LISTED])}." if some else ""
        return self.pick("ask_service", ("На какую услугу вас записать?", "Подскажите, на какую услугу?")) + menu

    def ask_day(self) -> str:
        return "Не совсем понял, на какой день вас записать? Напишите, например: «завтра», «в пятницу» или «15.01»."

    def ask_master(self, said: str) -> str:
        known = f" У нас работают: {', '.join(self.facts.masters)}." if self.facts.masters else ""
        return f"Не нашёл мастера «{said[:1].upper()}{said[1:]}».{known} К кому вас записать?"

    def prices(self, chosen: Sequence[ServiceRef], listed: dict[str, Any] | None) -> str:
        if len(chosen) == 1:
            s = chosen[0]
            return f"{s.title} — {s.price} ₽, {s.duration_min} мин. Записать вас?"
        lines = [_service_line(s) for s in chosen] or self._services(listed)
        if not lines:
            return "Прайс сейчас не могу подсказать 🙏 Уточните у администратора, пожалуйста."
        return "Наши услуги и цены:\n" + "\n".join(f"• {line}" for line in lines) + "\nЗаписать вас?"

    # --- slots and bookings ------------------------------------------------------------------------------

    def _day(self, value: Any) -> str:
        return human_day(datetime.fromisoformat(str(value)[:16]).date(), self.facts.now.date())

    def _master(self, name: Any) -> str:
        if not is_real_master(name):
            return ""
        parses = [p for p in self.morph.parse(str(name).split()[0]) if "Name" in p.tag]
        dative = parses[0].inflect({"datv"}) if parses else None
        return f" к {dative.word.capitalize()}" if dative else f", мастер {name}"

    def _slots(self, slots: Sequence[dict[str, Any]]) -> str:
        by_day: dict[str, list[str]] = {}
        for s in slots:
            times = by_day.setdefault(self._day(s["datetime"]), [])
            if s.get("time") not in times:
                times.append(str(s.get("time")))
        masters = {s.get("master") for s in slots if is_real_master(s.get("master"))}
        tail = f" (мастер {masters.pop()})" if len(masters) == 1 else ""
        return "; ".join(f"{day} — {', '.join(times)}" for day, times in by_day.items()) + tail

    def offer(
        self,
        slots: Sequence[dict[str, Any]],
        *,
        taken: Any = None,
        busy_day: date | None = None,
        outside_window: bool = False,
    ) -> str:
        lead = ""
        if busy_day is not None:
            lead = f"На {day_month(busy_day)} свободного времени уже нет. "
        elif taken is not None:
            lead = f"На {taken.strftime('%H:%M')} уже занято. "
        elif outside_window:
            lead = "В это время свободных окон нет. "
        ask = self.pick("ask_time", ("Какое время вам удобно?", "Какое время выбираете?", "Что вам подходит?"))
        return f"{lead}Свободно: {self._slots(slots)}. {ask}"

    def is_free(self, slot: dict[str, Any], service: str) -> str:
        at = f"{self._day(slot['datetime'])} в {slot.get('time')}"
        return f"Да, {at} свободно{self._master(slot.get('master'))}. Записать вас на «{service}»?"

    def nothing_free(self, day: date | None) -> str:
        when = f"на {day_month(day)} и ближайшие дни" if day else "в ближайшие дни"
        return f"К сожалению, {when} свободного времени нет 🙏 Посмотреть другую дату?"

    def booked(self, result: dict[str, Any]) -> str:
        doc = result.get("booked")
        if not isinstance(doc, dict):
            return self.tool_error(result)
        services = ", ".join(doc.get("services") or []) or "визит"
        opener = self.pick("booked", ("готово!", "записал вас!", "отлично, записал!"))
        opener = f"{DONE} {self.name}, {opener}" if self.name else f"{DONE} {opener[:1].upper()}{opener[1:]}"
        when = f"{self._day(doc['datetime'])} в {doc.get('time')}"
        return f"{opener} «{services}» {when}{self._master(doc.get('master'))}. Ждём вас!"

    def tool_error(self, result: dict[str, Any]) -> str:
        if result.get("available"):
            return self.unknown_service("такой услуги", [str(a) for a in result["available"]])
        if result.get("masters"):
            return f"Такого мастера для этой услуги нет 🙏 Могу записать к: {', '.join(result['masters'])}."
        if result.get("next_free"):
            return self.offer(result["next_free"], taken=None).replace(
                "Свободно:", "Увы, это время уже занято. Ближайшее свободное:", 1
            )
        if "next_free" in result:
            return "Увы, это время занято, а ближайших свободных окон нет 🙏 Посмотреть другую дату?"
        return f"Извините, не получилось: {result.get('error', 'ошибка')} Попробуйте, пожалуйста, чуть позже."

    def _record(self, b: dict[str, Any]) -> str:
        services = ", ".join(b.get("services") or []) or "визит"
        return f"{self._day(b['datetime'])} в {b.get('time')} — {services}{self._master(b.get('master'))}"

    def bookings(self, listed: dict[str, Any]) -> str:
        if "error" in listed:
            return self.tool_error(listed)
        items = listed.get("bookings") or []
        if not items:
            return "У вас пока нет предстоящих записей. Хотите записаться?"
        return "Ваши записи:\n" + "\n".join(f"• {self._record(b)}" for b in items)

    def no_bookings(self, *, cancel: bool) -> str:
        what = "отменять нечего" if cancel else "переносить нечего"
        return f"У вас нет предстоящих записей — {what}. Хотите записаться?"

    def which_booking(self, bookings: Sequence[dict[str, Any]], question: str, *, none_matched: bool) -> str:
        lead = "Не нашёл такой записи. " if none_matched else ""
        lines = "\n".join(f"{i}. {self._record(b)}" for i, b in enumerate(bookings, 1))
        return f"{lead}{question}\n{lines}"

    def cancelled(self, results: Sequence[dict[str, Any]]) -> str:
        done = [r["cancelled"] for r in results if isinstance(r.get("cancelled"), dict)]
        failed = [r for r in results if "cancelled" not in r]
        if not done:
            return self.tool_error(failed[0])
        lines = "\n".join(f"• {self._record(b)}" for b in done)
        tail = " Одну запись отменить не получилось, попробуйте позже." if failed else ""
        what = "записи" if len(done) > 1 else "запись"
        return f"{DONE} Отменил {what}:\n{lines}\n{tail}Будем рады видеть вас в другой раз!".replace("\n ", "\n")

    def rescheduled(self, result: dict[str, Any]) -> str:
        doc = result.get("rescheduled")
        if not isinstance(doc, dict):
            return self.tool_error(result).replace("Записать", "Перенести")
        return f"{DONE} Перенёс: теперь {self._record(doc)}. Ждём вас!"

    def ask_new_time(self, record: dict[str, Any]) -> str:
        return f"На какой день и время {MOVE_MARK} ({self._record(record)})?"

    def move_offer(self, record: dict[str, Any], slots: Sequence[dict[str, Any]], *, taken: Any, day: date) -> str:
        current = f"({self._record(record)})"
        if not slots:
            return f"На {day_month(day)} свободного времени нет. На какой другой день {MOVE_MARK} {current}?"
        lead = f"На {taken.strftime('%H:%M')} уже занято. " if taken is not None else ""
        return f"{lead}Чтобы {MOVE_MARK} {current}, выберите время: {self._slots(slots)}."


def _service_line(s: ServiceRef) -> str:
    return f"{s.title} — {s.price} ₽" if s.price else s.title

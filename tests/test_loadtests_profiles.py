"""The load profiles: stages, typing, names and what goes into the summary."""

from __future__ import annotations

import pytest

from loadtests._profiles import PROFILES, SPIKE_SPAWN_RATE, Profile, Stage, Typing, profile_named


def test_profile_ticks_through_its_stages_then_stops() -> None:
    spike = profile_named("spike")
    assert spike.tick(0) == (3, 3)
    assert spike.tick(60) == (12, SPIKE_SPAWN_RATE)  # the newcomers come in over seconds, not at once
    assert spike.tick(239.9) == (3, 9)
    assert spike.tick(240) is None
    assert spike.peak_users == 12
    short = profile_named("spike", scale=0.1)
    assert short.duration_s == pytest.approx(24.0)
    assert short.tick(6.5) == (12, SPIKE_SPAWN_RATE)


def test_profiles_are_known_by_name_and_steady_is_the_default() -> None:
    assert set(PROFILES) == {"steady", "burst", "spike", "soak"}
    assert profile_named(None).name == "steady"
    with pytest.raises(ValueError, match="known: steady, burst, spike, soak"):
        profile_named("stress")
    with pytest.raises(ValueError, match="positive"):
        profile_named("steady", scale=0)


def test_every_turn_fits_one_batch() -> None:
    """At most the default batch size (10) per turn, and gaps well under the batch timeout, else a turn splits."""
    for p in PROFILES.values():
        assert max(p.typing.opening_fragments + p.typing.follow_fragments) <= 10, p.name
        for timeout_ms in (500, 1000, 1500, 9000):
            low, high = p.typing.gap_range_ms(timeout_ms)
            assert low <= high <= 0.4 * timeout_ms
    assert PROFILES["burst"].typing.opening_fragments[0] >= 5  # rapid-fire means many fragments


def test_profile_description_goes_into_the_summary() -> None:
    typing = Typing((1, 2), (1, 1), (10, 20), (0, 0), (0, 0))
    described = Profile("x", "test", (Stage(10, 2, 1),), typing).scaled(0.5).describe()
    assert described["stages"] == [{"until_s": 5.0, "users": 2, "spawn_rate": 1}]


def test_steady_and_soak_load_at_the_references_rate_with_the_cheap_stand_ins() -> None:
    steady, soak = PROFILES["steady"], PROFILES["soak"]

    assert (steady.duration_s, steady.target_rps) == (600, 100.0)  # 10 minutes at the reference's 100 requests/s
    assert steady.peak_users >= 1_000  # each a conversation at once: no think time outside one
    assert (soak.duration_s, soak.target_rps) == (3600, 20.0)
    for p in (steady, soak):
        assert p.stand_ins.llm_mode == "scripted" and p.stand_ins.llm_latency_s == "5,5,5"
        assert dict(p.stand_ins.system)["AIADMIN_YCLIENTS_RPS"] == "500"  # the CRM budget raised, and said so
        assert p.describe()["stand_ins"] == p.stand_ins.describe()
    for name in ("burst", "spike"):  # the full fake and YClients' own budget
        assert PROFILES[name].stand_ins.llm_mode == "full" and PROFILES[name].stand_ins.system == ()

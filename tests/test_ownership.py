"""rtseg.ownership.SingleOwner: one owner at a time, held weakly (a Scheduler's, a Segmenter's)."""

from __future__ import annotations

import gc

import pytest

from rtseg.errors import ConfigError
from rtseg.ownership import SingleOwner


class Owner:
    """Something weakly referenceable that stands for a Segmenter or a stream."""


def _never() -> str:
    raise AssertionError("refusal() asked for with nobody else holding the object")


def test_a_first_claim_makes_the_owner() -> None:
    slot = SingleOwner()
    owner = Owner()
    assert slot.holder() is None
    slot.claim(owner, _never)
    assert slot.holder() is owner


def test_the_owner_claims_again_without_a_refusal() -> None:
    slot = SingleOwner()
    owner = Owner()
    slot.claim(owner, _never)
    slot.claim(owner, _never)  # each call of a Segmenter claims its scheduler
    assert slot.holder() is owner


def test_a_second_claimant_is_refused_with_the_callers_words_and_the_first_stays() -> None:
    slot = SingleOwner()
    first, second = Owner(), Owner()
    slot.claim(first, _never)
    asked: list[int] = []

    def refusal() -> str:
        asked.append(1)
        return "this scheduler already serves another Segmenter"

    with pytest.raises(ConfigError, match=r"^this scheduler already serves another Segmenter$"):
        slot.claim(second, refusal)
    assert asked == [1]  # built only when refusing
    assert slot.holder() is first


def test_release_then_another_claims() -> None:
    slot = SingleOwner()
    first, second = Owner(), Owner()
    slot.claim(first, _never)
    slot.release(first)
    assert slot.holder() is None
    slot.claim(second, _never)
    assert slot.holder() is second


def test_a_release_by_one_that_is_not_the_owner_leaves_the_owner() -> None:
    # an old owner letting go late (its run ended after another took over) must not free the new claim
    slot = SingleOwner()
    first, second = Owner(), Owner()
    slot.claim(first, _never)
    slot.release(second)
    assert slot.holder() is first
    with pytest.raises(ConfigError):
        slot.claim(second, lambda: "held")


def test_an_owner_dropped_without_releasing_frees_the_object() -> None:
    slot = SingleOwner()
    owner = Owner()
    slot.claim(owner, _never)
    del owner
    gc.collect()
    assert slot.holder() is None
    later = Owner()
    slot.claim(later, _never)
    assert slot.holder() is later

"""parse_mllm_output: bullet formats, headers in any order, caps, and "never raises" (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grain.common.parse import MAX_CAPTION_CHARS, MAX_DESCRIPTION_CHARS, MAX_DESCRIPTIONS, parse_mllm_output


def _check_invariants(caption, descs):
    assert isinstance(caption, str) and len(caption) <= MAX_CAPTION_CHARS
    assert isinstance(descs, list) and len(descs) <= MAX_DESCRIPTIONS
    assert all(isinstance(d, str) and d.strip() == d and d and len(d) <= MAX_DESCRIPTION_CHARS for d in descs)
    assert len({d.casefold() for d in descs}) == len(descs)
    assert "\n" not in caption and all("\n" not in d for d in descs)


@pytest.mark.parametrize("prefix", ["- ", "* ", "• ", "1. ", "1) ", "(1) ", "-", "  - ", "– ", "12. "])
def test_each_bullet_format(prefix):
    text = f"Caption: A dog on a lawn.\nDescriptions:\n{prefix}a brown dog\n{prefix}green grass"
    caption, descs = parse_mllm_output(text)
    assert caption == "A dog on a lawn."
    assert descs == ["a brown dog", "green grass"]


def test_headers_in_any_order_and_markdown():
    text = "**Descriptions:**\n- a red bus\n- a wet road\n\n**Caption:** A red bus drives on a wet road."
    assert parse_mllm_output(text) == ("A red bus drives on a wet road.", ["a red bus", "a wet road"])
    text = "## Caption\nCaption: two cats\nObjects:\n1. a tabby cat\n2. a black cat"
    caption, descs = parse_mllm_output(text)
    assert caption.endswith("two cats") and descs == ["a tabby cat", "a black cat"]


def test_duplicates_empties_and_cap():
    bullets = "\n".join(f"- thing {i % 13}" for i in range(40)) + "\n- \n-\n- THING 0.\n"
    caption, descs = parse_mllm_output("A pile of things.\n" + bullets)
    assert caption == "A pile of things."
    assert descs == [f"thing {i}" for i in range(MAX_DESCRIPTIONS)]


def test_no_bullets_is_a_caption_only():
    assert parse_mllm_output("A cat sleeping on a sofa in the sun.") == ("A cat sleeping on a sofa in the sun.", [])
    # a bullet-less list under a descriptions header is still the list
    assert parse_mllm_output("Caption: a cat\nDescriptions:\na cat\na sofa") == ("a cat", ["a cat", "a sofa"])


def test_numbers_inside_text_are_not_bullets():
    _, descs = parse_mllm_output("- 1.5 m tall ladder\n- 3 apples")
    assert descs == ["1.5 m tall ladder", "3 apples"]


def test_long_items_are_cut_at_a_word():
    caption, descs = parse_mllm_output("Caption: " + "word " * 1000 + "\n- " + "longdescription " * 50)
    assert len(caption) <= MAX_CAPTION_CHARS and caption.endswith("word")
    assert len(descs[0]) <= MAX_DESCRIPTION_CHARS and descs[0].endswith("longdescription")


def test_random_model_garbage():
    # what the tiny random LLaVA actually produced (control chars and U+FFFD from partial byte tokens)
    caption, descs = parse_mllm_output("~ sign\ufffd\x02Itsau logo3(Sky\ufffdRed")
    assert caption == "~ signItsau logo3(SkyRed" and descs == []


@pytest.mark.parametrize("bad", [None, 42, b"- bytes", "", "\x00\x01\x02", "\n\n\n", "-\n*\n1."])
def test_non_text_and_empty(bad):
    caption, descs = parse_mllm_output(bad)
    _check_invariants(caption, descs)
    assert descs == []


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_never_raises_on_any_text(text):
    _check_invariants(*parse_mllm_output(text))


_line = st.tuples(
    st.sampled_from(["", "- ", "* ", "• ", "1. ", "2) ", "Caption: ", "Descriptions:", "**Caption:** ", "   "]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60),
).map("".join)


@settings(max_examples=150, deadline=None)
@given(st.lists(_line, max_size=40))
def test_never_raises_on_structured_noise(lines):
    _check_invariants(*parse_mllm_output("\n".join(lines)))


@settings(max_examples=8, deadline=None)
@given(st.text(min_size=1, max_size=20), st.integers(min_value=5_000, max_value=40_000))
def test_huge_text_is_bounded(chunk, reps):
    _check_invariants(*parse_mllm_output((chunk + "\n- item\n") * (reps // len(chunk) + 1)))

"""The structured-output regex (prompts.answer_regex) and the parser agree: every answer the regex
allows parses into its caption and bullets (fast: no engine; the engine side is in test_describer.py)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grain.common.parse import _clean, parse_mllm_output
from annotators.prompts import answer_regex

WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
PHRASE = st.lists(WORD, min_size=1, max_size=4).map(" ".join)


@given(caption=PHRASE, descs=st.lists(PHRASE, min_size=1, max_size=10), space=st.booleans())
@settings(max_examples=200, deadline=None)
def test_well_formed_answers_match_and_parse_exactly(caption, descs, space):
    text = (" " if space else "") + f"Caption: {caption}\nDescriptions:\n" + "".join(f"- {d}\n" for d in descs)
    rx = answer_regex(10, 40, 40)
    assert re.fullmatch(rx, text)
    got_caption, got_descs = parse_mllm_output(text)
    assert got_caption == caption
    assert got_descs == list(dict.fromkeys(descs))  # duplicates dropped, order kept


@given(st.data())
@settings(max_examples=150, deadline=None)
def test_anything_the_regex_allows_parses_to_at_most_n_bullets_from_the_text(data):
    rx = answer_regex(4, 30, 20)
    text = data.draw(st.from_regex(rx, fullmatch=True))
    caption, descs = parse_mllm_output(text)
    assert len(descs) <= 4
    bullets = [line[2:] for line in text.split("\n") if line.startswith("- ")]
    assert 1 <= len(bullets) <= 4 and all(len(b) <= 20 for b in bullets)
    for d in descs:  # every description comes from one bullet line (cleaned as the parser does, trimmed)
        assert any(d.casefold() in _clean(b).casefold() for b in bullets), (d, text)


def test_regex_rejects_malformed_answers():
    rx = answer_regex(2, 10, 10)
    ok = "Caption: a cat\nDescriptions:\n- fur\n"
    assert re.fullmatch(rx, ok)
    for bad in ("Caption: a cat\nDescriptions:\n",  # no bullet
                "Caption: a cat\nDescriptions:\n- a\n- b\n- c\n",  # more than max_descriptions
                "Caption: 12345678901\nDescriptions:\n- fur\n",  # caption over its bound
                "Caption: a\nDescriptions:\n- \n",  # empty bullet
                "Caption: a\x07b\nDescriptions:\n- fur\n"):  # control character
        assert not re.fullmatch(rx, bad), bad


@pytest.mark.parametrize("kw", [{"max_descriptions": 0}, {"caption_max_chars": 0}, {"description_max_chars": 1.5}])
def test_bad_bounds_name_the_argument(kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name):
        answer_regex(**{"max_descriptions": 3, **kw})


def test_profiles_enable_it_where_documented():
    from annotators.config import load_config

    tiny, paper = load_config(profile="tiny"), load_config(profile="paper")
    assert tiny.models.structured_output is True and paper.models.structured_output is False
    assert load_config(profile="paper", overrides=["models.structured_output=true"]).models.structured_output
    # the tiny bounds leave room for one full bullet within the token budget (≥ 1 char per token)
    m = tiny.models
    assert len("Caption: \nDescriptions:\n- \n") + m.caption_max_chars + m.description_max_chars <= m.max_new_tokens

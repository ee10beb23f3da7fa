"""Parse an MLLM's free-text answer into (dense caption, short visual descriptions). Never raises.

Shared by the annotation stage's describer, which asks for a ``Caption:`` line and a ``Descriptions:``
bullet list (annotators/prompts.py), and by ``grain describe-classes`` (evaluation/describe.py, bullets
only); it lives in the library so that neither stage imports the other. A model may answer in any
order, with other bullet styles, without headers, or (a tiny random model) with garbage. Rules
(docs/method.md §1.2):

- Bullets: ``-``, ``*``, ``•``, ``·``, ``–``, ``1.``, ``1)``, ``(1)`` prefixes; the prefix is stripped.
- Headers ``Caption:`` / ``Descriptions:`` (also "Dense caption", "Objects", "Visual descriptions", any
  case, optional markdown ``**``/``#``) in any order; text after a header on the same line counts.
- Descriptions: empties and duplicates (case-insensitive, whitespace-collapsed) dropped, trailing
  punctuation trimmed, each cut to ``MAX_DESCRIPTION_CHARS``, at most ``MAX_DESCRIPTIONS`` kept.
- Caption: the text under the caption header; without one, the non-bullet lines outside the
  descriptions section. Cut to ``MAX_CAPTION_CHARS``. An answer with no bullets yields a caption and
  no descriptions (a valid row: it trains with L_ic only).
"""

from __future__ import annotations

import re
import unicodedata

from grain.common.schema import MAX_DESCRIPTIONS  # defined once, by the shard schema (docs/method.md §1.2)

MAX_DESCRIPTION_CHARS = 200  # OWLv2 reads 16 tokens anyway; long lines are the model rambling
MAX_CAPTION_CHARS = 1000
MAX_INPUT_CHARS = 100_000  # bound the work on a runaway generation

# A bullet prefix; a number bullet must not be followed by a digit ("1.5 m tall" is not a bullet).
_BULLET = re.compile(r"^\s*(?:[-*•·–—+▪●○◦]+|\(?\d{1,3}\s*[.)\]:](?!\d)|\(?[a-zA-Z][.)](?=\s))\s*")
_HEADER = re.compile(
    r"^\s*[#*_\s]*(?P<name>(?:dense\s+|short\s+|image\s+)?caption|(?:short\s+|visual\s+|object\s+)?descriptions?"
    r"|objects|visual\s+elements|bullets?)\s*[*_]*\s*[:：]\s*[*_]*\s*(?P<rest>.*)$",
    re.IGNORECASE,
)
_CONTROL = dict.fromkeys(c for c in range(0x20) if c not in (0x09, 0x0A))  # keep tab and newline
_TRIM = " \t\"'`*_.,;:!?-–—"


def _clean(text: str) -> str:
    """Collapse whitespace; drop control/format/unassigned characters and U+FFFD (random tokens decode to them)."""
    text = re.sub(r"\s+", " ", text)
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C" and ch != "\ufffd")
    return re.sub(r"\s+", " ", text).strip()


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(_TRIM + " ")


def _header_kind(name: str) -> str:
    return "caption" if "caption" in name.lower() else "descriptions"


def parse_mllm_output(text: object) -> tuple[str, list[str]]:
    """``text`` (any object; non-str → "") → ``(caption, descriptions)``; never raises.

    caption: str (possibly empty); descriptions: list[str], ≤ MAX_DESCRIPTIONS, unique case-insensitively.
    """
    try:
        return _parse(text if isinstance(text, str) else "")
    except Exception:  # noqa: BLE001 - the contract is "never raises"; a parser bug must not kill a batch
        return "", []


def _parse(text: str) -> tuple[str, list[str]]:
    text = text[:MAX_INPUT_CHARS].replace("\r\n", "\n").replace("\r", "\n")
    section = None  # None (before any header), "caption" or "descriptions"
    lines: list[tuple[str | None, bool, str]] = []  # (section, is_bullet, cleaned body)
    for raw in text.split("\n"):
        line = raw.translate(_CONTROL)
        m = _HEADER.match(line)
        if m:
            section = _header_kind(m.group("name"))
            line = m.group("rest")
        bullet = _BULLET.match(line)
        body = _clean(line[bullet.end():] if bullet else line)
        if body:
            lines.append((section, bool(bullet), body))
    any_bullets = any(b for _, b, _ in lines)
    caption_parts: list[str] = []
    loose_parts: list[str] = []  # non-bullet lines outside a caption section: the caption when there is no header
    descs: list[str] = []
    for sec, is_bullet, body in lines:
        if sec == "caption" and (not is_bullet or not caption_parts):
            caption_parts.append(body)  # "Caption:\n- a dog on grass" still names the caption
        elif is_bullet or (sec == "descriptions" and not any_bullets):
            descs.append(body)  # a bullet-less list under "Descriptions:" is still the list
        else:
            loose_parts.append(body)
    caption = " ".join(caption_parts) if caption_parts else " ".join(loose_parts)
    return _cut(caption, MAX_CAPTION_CHARS), _dedupe(descs)


def _dedupe(items: list[str]) -> list[str]:
    out, seen = [], set()
    for item in items:
        d = _cut(item.strip(_TRIM), MAX_DESCRIPTION_CHARS).strip(_TRIM)
        key = re.sub(r"\s+", " ", d.casefold())
        if not d or key in seen:
            continue
        seen.add(key)
        out.append(d)
        if len(out) == MAX_DESCRIPTIONS:
            break
    return out

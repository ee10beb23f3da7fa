"""Concepts made of described parts: the class grammar of `grain bench novel-concepts`.

A class is a creature with 3–5 parts. Every class has a head and a body, and some of wings, a tail and
legs. Each part carries three attributes from a fixed vocabulary:

    colour   red orange yellow green blue purple pink brown
    pattern  plain striped spotted                     ("plain" is not written)
    form     round square pointed  (head, body, wings: the part's shape)
             short long            (tail, legs: the part's size)

and one description, written as a multimodal LLM would ("a round red striped head", "pointed blue
wings", "a short yellow spotted tail"). A class's descriptions are its descriptors at test time.

The split (``make_concepts``) forces a route through the descriptions:

- *seen* classes are drawn at random; they alone appear in training images and text;
- *novel* classes (and a second, *dev*, group for validation) are new combinations of the seen classes'
  part descriptions: every description of a novel class, hence every word and every (part, attribute)
  pair, occurs in training descriptions; only the combination is new;
- some novel classes differ from a seen class, or from another novel class, only in which of two parts
  carries which colour (``Concept.sibling``): the same words, bound differently;
- class names are nonce strings (``nonce_names``); a novel name shares no BPE token with any training
  text, so its name prompt carries nothing (the ``names`` variant is the leakage control).

Everything is a pure function of the seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

PARTS = ("head", "body", "wings", "tail", "legs")  # drawing and description order
REQUIRED_PARTS = ("head", "body")
PLURAL_PARTS = ("wings", "legs")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown")
PATTERNS = ("plain", "striped", "spotted")
SHAPES = ("round", "square", "pointed")
SIZES = ("short", "long")
FORMS = {"head": SHAPES, "body": SHAPES, "wings": SHAPES, "tail": SIZES, "legs": SIZES}
SPLITS = ("seen", "novel", "dev")


@dataclass(frozen=True)
class Part:
    """One part of a creature and its attributes."""

    part: str  # one of PARTS
    form: str  # FORMS[part]
    colour: str  # one of COLOURS
    pattern: str  # one of PATTERNS

    def description(self) -> str:
        """``"a round red striped head"``, ``"long blue legs"`` (plain patterns are not written)."""
        words = " ".join([self.form, self.colour] + ([self.pattern] if self.pattern != "plain" else []) + [self.part])
        if self.part in PLURAL_PARTS:
            return words
        return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"

    def phrases(self) -> list[str]:
        """Other ways a caption may say the same (the dense MLLM caption varies its phrasing)."""
        be = "are" if self.part in PLURAL_PARTS else "is"
        adj = [self.form, self.colour] + ([self.pattern] if self.pattern != "plain" else [])
        listed = ", ".join(adj[:-1]) + " and " + adj[-1]
        its = f"{self.part} that {be} {listed}"
        return [self.description(), its if self.part in PLURAL_PARTS else f"a {its}"]


@dataclass(frozen=True)
class Concept:
    """A class: a nonce name, its parts (PARTS order), its split, and ``sibling``: the class it differs from
    only by which of two parts carries which colour (None when it has none)."""

    name: str
    parts: tuple[Part, ...]
    split: str
    sibling: str | None = None

    def descriptions(self) -> list[str]:
        return [p.description() for p in self.parts]

    def part(self, name: str) -> Part | None:
        return next((p for p in self.parts if p.part == name), None)


def _random_parts(rng: random.Random, min_parts: int, max_parts: int) -> list[str]:
    n = rng.randint(min_parts, max_parts) - len(REQUIRED_PARTS)
    optional = [p for p in PARTS if p not in REQUIRED_PARTS]
    chosen = set(REQUIRED_PARTS) | set(rng.sample(optional, n))
    return [p for p in PARTS if p in chosen]


def _swap_colours(parts: tuple[Part, ...], i: int, j: int) -> tuple[Part, ...]:
    out = list(parts)
    out[i], out[j] = replace(parts[i], colour=parts[j].colour), replace(parts[j], colour=parts[i].colour)
    return tuple(out)


def _swapped(parts: tuple[Part, ...], rng: random.Random, pool: set[Part], taken: set) -> tuple[Part, ...] | None:
    """A binding sibling of ``parts``: two parts of different colours swap colours, both new parts
    already in ``pool`` (so every description stays a training description), the result not ``taken``."""
    pairs = [(i, j) for i in range(len(parts)) for j in range(i + 1, len(parts)) if parts[i].colour != parts[j].colour]
    rng.shuffle(pairs)
    for i, j in pairs:
        cand = _swap_colours(parts, i, j)
        if cand[i] in pool and cand[j] in pool and cand not in taken:
            return cand
    return None


def _from_pool(rng: random.Random, pool_by_part: dict[str, list[Part]], min_parts: int, max_parts: int) -> tuple[Part, ...]:
    return tuple(rng.choice(pool_by_part[p]) for p in _random_parts(rng, min_parts, max_parts))


def _draw_group(rng, split, n, binding_pairs, seen_swaps, seen, pool, taken, min_parts, max_parts, tries=20000):
    """``n`` classes of ``split`` (unnamed: ``name`` is an index placeholder): ``seen_swaps`` binding
    siblings of seen classes, ``binding_pairs`` pairs of siblings within the group, the rest free
    recombinations of seen part descriptions."""
    if seen_swaps + 2 * binding_pairs > n:
        raise ValueError(f"concepts.{split}: {seen_swaps} seen swaps + 2 × {binding_pairs} binding pairs exceed {n} classes")
    pool_by_part = {p: sorted({q for q in pool if q.part == p}, key=Part.description) for p in PARTS}
    out: list[tuple[tuple[Part, ...], str | None, int | None]] = []  # (parts, seen sibling name, in-group sibling)
    for _ in range(tries):
        if len(out) >= n:
            break
        swaps = sum(1 for _, s, _ in out if s is not None)
        pairs = sum(1 for _, _, k in out if k is not None) // 2
        if swaps < seen_swaps:
            base = rng.choice(seen)
            cand = _swapped(base.parts, rng, pool, taken)
            if cand is not None:
                taken.add(cand)
                out.append((cand, base.name, None))
        elif pairs < binding_pairs:
            a = _from_pool(rng, pool_by_part, min_parts, max_parts)
            b = None if a in taken else _swapped(a, rng, pool, taken | {a})
            if b is not None:
                taken.update((a, b))
                out += [(a, None, len(out) + 1), (b, None, len(out))]
        else:
            a = _from_pool(rng, pool_by_part, min_parts, max_parts)
            if a not in taken:
                taken.add(a)
                out.append((a, None, None))
    if len(out) < n:
        raise ValueError(f"concepts.{split}: could draw only {len(out)} of {n} classes from the seen part pool "
                         f"({len(pool)} part descriptions); raise concepts.seen or lower the counts")
    return out


def make_concepts(seen: int, novel: int, dev: int, novel_binding_pairs: int, novel_seen_swaps: int,
                  dev_binding_pairs: int, dev_seen_swaps: int, min_parts: int = 3, max_parts: int = 5,
                  seed: int = 0) -> list[Concept]:
    """The class list: ``seen`` classes, then ``novel``, then ``dev`` (see the module docstring). Names are
    placeholders (``seen-007``); ``nonce_names`` gives the real ones once the training text is known."""
    if not len(REQUIRED_PARTS) <= min_parts <= max_parts <= len(PARTS):
        raise ValueError(f"concepts: need {len(REQUIRED_PARTS)} ≤ min_parts ≤ max_parts ≤ {len(PARTS)}, got {min_parts}, {max_parts}")
    rng = random.Random(seed)
    taken: set = set()
    seen_list: list[Concept] = []
    for _ in range(200 * max(seen, 1)):
        if len(seen_list) == seen:
            break
        parts = tuple(Part(p, rng.choice(FORMS[p]), rng.choice(COLOURS), rng.choice(PATTERNS))
                      for p in _random_parts(rng, min_parts, max_parts))
        if parts not in taken:
            taken.add(parts)
            seen_list.append(Concept(f"seen-{len(seen_list):03d}", parts, "seen"))
    pool = {q for c in seen_list for q in c.parts}
    out = list(seen_list)
    for split, n, pairs, swaps in (("novel", novel, novel_binding_pairs, novel_seen_swaps),
                                   ("dev", dev, dev_binding_pairs, dev_seen_swaps)):
        drawn = _draw_group(rng, split, n, pairs, swaps, seen_list, pool, taken, min_parts, max_parts)
        names = [f"{split}-{i:03d}" for i in range(len(drawn))]
        out += [Concept(names[i], parts, split, s if s is not None else (names[k] if k is not None else None))
                for i, (parts, s, k) in enumerate(drawn)]
    return out


# ---------------------------------------------------------------------------------------------
# Nonce names
# ---------------------------------------------------------------------------------------------

# Two disjoint letter sets: seen names from the first, novel and dev names from the second, so a novel name
# rarely shares a BPE piece with a seen one; ``nonce_names`` still checks every name's tokens.
SEEN_LETTERS = ("bdgklmnprst", "aou")
NOVEL_LETTERS = ("fhjvwxz", "eiy")


def bpe_ids(text: str) -> set[int]:
    """The BPE token ids of ``text`` (open_clip's tokenizer, no SOT/EOT)."""
    from grain.tokenizer import get_tokenizer

    return set(get_tokenizer().encode(text))


def nonce_names(n: int, rng: random.Random, letters: tuple[str, str], forbidden_ids: set[int] = frozenset(),
                taken: set[str] = frozenset(), tries: int = 100000) -> list[str]:
    """``n`` distinct two-syllable nonce words (consonant-vowel, consonant-vowel-consonant: "zefiv") whose
    BPE tokens avoid ``forbidden_ids`` and which are not in ``taken``."""
    cons, vowels = letters
    out: list[str] = []
    for _ in range(tries):
        if len(out) == n:
            return out
        w = rng.choice(cons) + rng.choice(vowels) + rng.choice(cons) + rng.choice(vowels) + rng.choice(cons)
        if w in taken or w in out or bpe_ids(w) & forbidden_ids:
            continue
        out.append(w)
    raise ValueError(f"nonce_names: found only {len(out)} of {n} names whose tokens avoid the training text")


def renamed(concepts: list[Concept], names: dict[str, str]) -> list[Concept]:
    """Placeholder names → real names (siblings too); names missing from ``names`` stay."""
    return [replace(c, name=names.get(c.name, c.name), sibling=names.get(c.sibling, c.sibling)) for c in concepts]


__all__ = ["COLOURS", "FORMS", "PARTS", "PATTERNS", "SPLITS", "Concept", "Part", "bpe_ids", "make_concepts",
           "nonce_names", "renamed"]

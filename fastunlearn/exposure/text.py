"""Generated training text for canary experiments, and its character vocabulary.

The reference inserts its canary into *Alice in Wonderland*; these machines hold no such
corpus, so :func:`generate_corpus` writes English-like sentences from a small seeded
grammar (with some numbers, so digits are not unique to the canary). Any real text can be
used instead: every function takes plain strings.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._numbers import check_int, check_seed, is_integer

__all__ = ["CharVocab", "DIGITS", "generate_corpus", "insert_canary"]

#: The canary secret's alphabet (the reference's telephone number).
DIGITS = "0123456789"

_SUBJECTS = (
    "the cat",
    "the old king",
    "a small dog",
    "the queen",
    "my sister",
    "the rabbit",
    "a tired farmer",
    "the young girl",
    "our teacher",
    "the baker",
    "a grey bird",
)
_VERBS = (
    "saw",
    "found",
    "painted",
    "carried",
    "wanted",
    "forgot",
    "watched",
    "followed",
    "opened",
    "counted",
    "lost",
    "described",
)
_OBJECTS = (
    "the garden",
    "a red door",
    "the long river",
    "a golden key",
    "the tea party",
    "some bread",
    "the tall tree",
    "a strange letter",
    "the white house",
    "two apples",
)
_ENDINGS = (
    "near the river",
    "after dinner",
    "in the morning",
    "without a word",
    "at the market",
    "before the storm",
    "with great care",
    "on the hill",
)


def generate_corpus(n_sentences: int | np.integer = 2000, seed: int | np.integer = 0) -> str:
    """Return ``n_sentences`` generated sentences, separated by spaces.

    Sentences follow ``subject verb object [ending|number]`` with punctuation; one in
    six mentions a number (``"room 42"``) so the digits occur in ordinary text.

    Raises:
        ValueError: If ``n_sentences < 1``.
        TypeError: If ``n_sentences`` or ``seed`` is not an int.

    """
    n_sentences = check_int("n_sentences", n_sentences, 1)
    seed = check_seed("seed", seed)  # None would seed from the clock
    rng = random.Random(seed)
    sentences = []
    for _ in range(n_sentences):
        words = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)]
        roll = rng.random()
        if roll < 1 / 6:
            words.append(f"in room {rng.randrange(1, 1000)}")
        elif roll < 0.6:
            words.append(rng.choice(_ENDINGS))
        sentence = " ".join(words)
        sentences.append(sentence[0].upper() + sentence[1:] + rng.choice(".....!?"))
    return " ".join(sentences)


def insert_canary(
    text: str,
    canary: str,
    insertions: int | np.integer,
    seed: int | np.integer = 0,
) -> tuple[str, list[int]]:
    """Insert ``canary`` ``insertions`` times at random sentence starts of ``text``.

    Args:
        text: Sentences separated by ``". "``, ``"! "`` or ``"? "``.
        canary: The full canary sentence (template filled with the secret).
        insertions: How many copies (the reference uses 6 to 29).
        seed: Seed of the positions.

    Returns:
        ``(new text, character offsets of the copies in the new text)``.

    Raises:
        ValueError: If ``insertions < 0``, ``canary`` is empty, or ``text`` has fewer
            sentence starts than ``insertions``.
        TypeError: If ``insertions`` or ``seed`` is not an int or ``text`` or ``canary``
            not a str.

    """
    seed = check_seed("seed", seed)  # None would seed from the clock
    insertions = check_int("insertions", insertions, 0)
    if not isinstance(canary, str):
        raise TypeError(f"'canary' must be a str, got {type(canary).__name__}")
    if not canary:
        raise ValueError("'canary' must be a non-empty str")
    if not isinstance(text, str):
        raise TypeError(f"'text' must be a str, got {type(text).__name__}")
    starts = [0] + [i + 2 for i in range(len(text) - 2) if text[i] in ".!?" and text[i + 1] == " "]
    if insertions > len(starts):
        raise ValueError(
            f"'insertions' {insertions} exceeds the {len(starts)} sentence starts of 'text'"
        )
    chosen = sorted(random.Random(seed).sample(starts, insertions))
    pieces, offsets, last, shift = [], [], 0, 0
    for pos in chosen:
        pieces += [text[last:pos], canary + " "]
        offsets.append(pos + shift)
        shift += len(canary) + 1
        last = pos
    pieces.append(text[last:])
    return "".join(pieces), offsets


@dataclass(frozen=True)
class CharVocab:
    """A character vocabulary: ``chars[i]`` is token ``i``.

    Attributes:
        chars: The characters, without repeats.

    """

    chars: str

    def __post_init__(self) -> None:
        if not isinstance(self.chars, str):
            raise TypeError(f"'chars' must be a str, got {type(self.chars).__name__}")
        if not self.chars:
            raise ValueError("'chars' must be a non-empty str")
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("'chars' must not repeat a character")

    @classmethod
    def from_texts(cls, *texts: str) -> CharVocab:
        """Build the vocabulary of every character in ``texts`` plus the digits, sorted.

        Raises:
            TypeError: If an element of ``texts`` is not a str.

        """
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"'texts' must be strings, got {type(text).__name__}")
        return cls("".join(sorted(set("".join(texts)) | set(DIGITS))))

    @property
    def size(self) -> int:
        """Number of tokens."""
        return len(self.chars)

    def encode(self, text: str | Sequence[str]) -> Tensor:
        """Token ids (int64) of a string ``[len]`` or of equal-length strings ``[n, len]``.

        Raises:
            ValueError: If a character is not in the vocabulary or lengths differ.
            TypeError: If ``text`` is not a str or a sequence of str.

        """
        index = {c: i for i, c in enumerate(self.chars)}
        if isinstance(text, bytes) or not isinstance(text, (str, Sequence)) or not all(
            isinstance(t, str) for t in ([text] if isinstance(text, str) else text)
        ):
            raise TypeError(f"'text' must be a str or a list of str, got {type(text).__name__}")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("'text' must be a str or a non-empty list of str")
        if len({len(t) for t in texts}) > 1:
            raise ValueError("'text' strings must all have the same length")
        try:
            ids = torch.tensor([[index[c] for c in t] for t in texts], dtype=torch.int64)
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} is not in the vocabulary") from None
        return ids[0] if isinstance(text, str) else ids.view(len(texts), -1)

    def decode(self, ids: Tensor) -> str:
        """Return the string of 1-D token ids (a tensor, a numpy array or a list of ints).

        Raises:
            ValueError: If ``ids`` is not 1-D or holds an id outside ``0..size-1``.
            TypeError: If ``ids`` is not a tensor, an array or an iterable of ids.

        """
        if isinstance(ids, (Tensor, np.ndarray)):
            if ids.ndim != 1:
                raise ValueError(f"'ids' must be 1-D, got shape {tuple(ids.shape)}")
            values = ids.tolist()
        elif isinstance(ids, Iterable) and not isinstance(ids, (str, bytes)):
            values = list(ids)
        else:
            raise TypeError(
                f"'ids' must be a 1-D tensor, array or list of ints, got {type(ids).__name__}"
            )
        if any(
            not is_integer(i) or not 0 <= i < self.size for i in values
        ):
            raise ValueError(f"'ids' holds ids outside the vocabulary 0..{self.size - 1}")
        return "".join(self.chars[int(i)] for i in values)

"""Part-of-speech gate over response tokens (spec §2): which tokens the attention loss sees.

The response ids are decoded token by token, grouped into words (a token that starts
with whitespace or punctuation starts a new word), the words are tagged with universal POS
tags, and every token inherits its word's tag. A token passes the gate when its tag is
one of the configured content tags (NOUN, VERB, ADJ, ADV, NUM, X by default).

Taggers, all offline (nothing is downloaded at run time):

- ``spacy``: spaCy with an installed English pipeline (``en_core_web_sm`` …);
- ``nltk``: NLTK's averaged-perceptron tagger, when its data is already on disk;
- ``lexicon``: a built-in closed-class lexicon. Closed classes (determiners, pronouns,
  adpositions, conjunctions, auxiliaries, particles, interjections) are finite lists, so
  they are tagged exactly; numbers and punctuation by their form; every other word is an
  open-class content word, tagged ``NOUN``. It cannot tell NOUN, VERB, ADJ and ADV apart,
  so it refuses tag sets that keep some of them and not the others; it cannot know proper
  nouns either (they count as open-class words).
- ``auto``: the first of spaCy, NLTK, lexicon that is available.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from functools import lru_cache
from typing import Callable, Sequence

import torch

logger = logging.getLogger(__name__)

__all__ = ["LexiconTagger", "build_tagger", "PartOfSpeechGate", "words_of_tokens"]

_CLOSED_CLASS = {
    "DET": "a an the this that these those each every some any no another either neither all both half such what "
           "which whatever whichever my your his her its our their",
    "PRON": "i me you he him she it we us they them myself yourself himself herself itself ourselves yourselves "
            "themselves mine yours hers ours theirs who whom whose whoever something anything nothing everything "
            "someone anyone everyone somebody anybody nobody everybody one ones",
    "ADP": "of in on at by for with about against between into through during before after above below to from up "
           "down out off over under again further than among across along around behind beside beyond despite "
           "except inside near onto outside per since toward towards upon via within without",
    "AUX": "is am are was were be been being have has had having do does did will would shall should can could may "
           "might must 's 're 've 'd 'll 'm",
    "CCONJ": "and or but nor yet so",
    "SCONJ": "if because although though while whereas unless until whether as once that",
    "PART": "not n't to 's",
    "INTJ": "oh ah hmm uh um wow hey yes okay ok",
}
_LEXICON = {word: tag for tag, words in _CLOSED_CLASS.items() for word in words.split()}
_NUMBER_WORDS = set(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million "
    "first second third fourth fifth".split()
)
_NUMBER = re.compile(r"^[+-]?\d+([.,:/]\d+)*%?$")
_OPEN_CLASS_TAGS = {"NOUN", "VERB", "ADJ", "ADV"}


class LexiconTagger:
    """Universal-tag tagger from closed-class lists; every open-class word is tagged ``NOUN``."""

    name = "lexicon"

    def __call__(self, words: Sequence[str]) -> list[str]:
        tags = []
        for word in words:
            lower = word.lower()
            if not word or all(unicodedata.category(ch).startswith(("P", "S", "Z")) for ch in word):
                tags.append("PUNCT")
            elif _NUMBER.match(word):
                tags.append("NUM")
            elif lower in _LEXICON:
                tags.append(_LEXICON[lower] if lower not in _NUMBER_WORDS else "NUM")
            elif lower in _NUMBER_WORDS:
                tags.append("NUM")
            else:
                tags.append("NOUN")
        return tags


class _SpacyTagger:
    name = "spacy"

    def __init__(self, pipeline):
        self._nlp = pipeline

    def __call__(self, words: Sequence[str]) -> list[str]:
        from spacy.tokens import Doc

        doc = Doc(self._nlp.vocab, words=list(words))
        for _, component in self._nlp.pipeline:
            doc = component(doc)
        return [token.pos_ for token in doc]


class _NltkTagger:
    name = "nltk"

    def __call__(self, words: Sequence[str]) -> list[str]:
        import nltk

        return [tag if tag != "." else "PUNCT" for _, tag in nltk.pos_tag(list(words), tagset="universal")]


def _try_spacy():
    try:
        import spacy
    except ImportError:
        return None
    for name in ("en_core_web_sm", "en_core_web_md", "en_core_web_lg"):
        try:
            return _SpacyTagger(spacy.load(name, disable=["parser", "ner", "lemmatizer"]))
        except OSError:
            continue
    return None


def _try_nltk():
    try:
        import nltk

        nltk.data.find("taggers/averaged_perceptron_tagger_eng")
        nltk.data.find("taggers/universal_tagset")
    except (ImportError, LookupError):
        return None
    return _NltkTagger()


def build_tagger(kind: str, content_tags: Sequence[str]) -> Callable[[Sequence[str]], list[str]]:
    """The tagger named by ``kind`` (``auto``/``spacy``/``nltk``/``lexicon``), checked against the tag set."""
    candidates = {"spacy": _try_spacy, "nltk": _try_nltk, "lexicon": LexiconTagger}
    order = ["spacy", "nltk", "lexicon"] if kind == "auto" else [kind]
    for name in order:
        if name not in candidates:
            raise ValueError(f"unknown POS tagger {name!r}; choose auto, spacy, nltk or lexicon")
        tagger = candidates[name]()
        if tagger is not None:
            break
    else:
        raise RuntimeError(
            f"POS tagger {kind!r} is not available offline: install spaCy with an English pipeline, or NLTK with "
            "its averaged_perceptron_tagger_eng and universal_tagset data, or use tagger=lexicon"
        )
    if tagger.name == "lexicon":
        kept = _OPEN_CLASS_TAGS & set(content_tags)
        if kept and kept != _OPEN_CLASS_TAGS:
            raise ValueError(
                f"the lexicon tagger cannot tell open-class tags apart, but pos_gate.tags keeps {sorted(kept)} "
                "and not all of NOUN/VERB/ADJ/ADV: install spaCy or NLTK data, or gate on all open classes"
            )
    logger.info("MAPO POS gate uses the %s tagger", tagger.name)
    return tagger


def words_of_tokens(pieces: Sequence[str]) -> tuple[list[str], list[int]]:
    """Group decoded token pieces into words; returns the words and each token's word index.

    A piece that begins with whitespace, or is punctuation, starts a new word; a piece made
    only of whitespace belongs to no word (index −1).
    """
    words: list[str] = []
    owner: list[int] = []
    for piece in pieces:
        stripped = piece.strip()
        if not stripped:
            owner.append(-1)
            continue
        is_punct = all(unicodedata.category(ch).startswith("P") for ch in stripped)
        starts_word = not words or piece[:1].isspace() or is_punct or _is_punct_word(words[-1])
        if starts_word:
            words.append(stripped)
        else:
            words[-1] += stripped
        owner.append(len(words) - 1)
    return words, owner


def _is_punct_word(word: str) -> bool:
    return all(unicodedata.category(ch).startswith("P") for ch in word)


class PartOfSpeechGate:
    """Computes ``pos_t`` for padded response ids with a tokenizer and a tagger."""

    def __init__(self, tokenizer, tags: Sequence[str], tagger: str = "auto"):
        self.content_tags = frozenset(tags)
        self.tagger = build_tagger(tagger, tags)
        self._tokenizer = tokenizer
        self._piece = lru_cache(maxsize=None)(self._decode_one)

    def _decode_one(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id], skip_special_tokens=False)

    def __call__(self, responses: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        """Bool ``[B, T]``: true where the valid response token belongs to a content word."""
        gate = torch.zeros(responses.shape, dtype=torch.bool)
        mask = response_mask.bool().cpu()
        ids = responses.cpu()
        for row in range(ids.shape[0]):
            positions = torch.nonzero(mask[row], as_tuple=False).reshape(-1).tolist()
            if not positions:
                continue
            pieces = [self._piece(int(ids[row, p])) for p in positions]
            words, owner = words_of_tokens(pieces)
            if not words:
                continue
            tags = self.tagger(words)
            for position, word_index in zip(positions, owner):
                if word_index >= 0 and tags[word_index] in self.content_tags:
                    gate[row, position] = True
        return gate.to(response_mask.device)

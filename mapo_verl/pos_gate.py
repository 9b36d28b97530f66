"""Part-of-speech gate over response tokens (docs/DESIGN.md "Part-of-speech gate"): which tokens the attention loss sees.

The response ids are decoded token by token and grouped into words: a token that starts
with whitespace or is punctuation starts a new word, and a token made only of whitespace
(a space, a newline) ends the current word and belongs to none. The words are tagged with
coarse POS tags and every token inherits its word's tag. A token passes the gate when its
tag is one of the configured content tags (NOUN, VERB, ADJ, ADV, NUM, X by default).

Taggers, all offline (nothing is downloaded at run time; docs/DESIGN.md "Part-of-speech gate"
has the table of how they differ):

- ``nltk``: NLTK's averaged-perceptron tagger (Penn Treebank tags), when its data is already
  on disk, mapped to coarse tags by :func:`penn_to_coarse` exactly as the authors' release
  does (auxiliaries are ``VB*`` and so ``VERB``; modals, ``WRB``, ``EX`` … fall to ``X``);
- ``spacy``: spaCy with an installed English pipeline (``en_core_web_sm`` …), universal tags;
- ``lexicon``: a built-in closed-class lexicon. Closed classes (determiners, pronouns,
  adpositions, conjunctions, auxiliaries, particles, interjections) are finite lists, so
  they are tagged exactly; numbers and punctuation by their form; every other word is an
  open-class content word, tagged ``NOUN``. It cannot tell NOUN, VERB, ADJ and ADV apart,
  so it refuses tag sets that keep some of them and not the others; it cannot know proper
  nouns either (they count as open-class words).
- ``auto``: the first of NLTK, spaCy, lexicon that is available.

Fallbacks, as the release: a response whose tagging raises, or (with
``pos_gate.empty_fallback``) whose gate would be all zero, is gated all ones.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from functools import lru_cache
from typing import Callable, Sequence

import torch

logger = logging.getLogger(__name__)

__all__ = ["LexiconTagger", "PENN_TO_COARSE", "penn_to_coarse", "build_tagger", "PartOfSpeechGate", "words_of_tokens"]

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


# Penn Treebank tag (or tag prefix, for the NN*/VB*/JJ*/RB* families) -> coarse tag, as the
# authors' release maps NLTK's output; every other Penn tag (MD, EX, FW, LS, POS, SYM, UH,
# WRB, RBR-less oddities …) is the catch-all ``X``.
PENN_TO_COARSE: dict[str, str] = {
    **{tag: "PUNCT" for tag in (".", ",", ":", "``", "''", "-LRB-", "-RRB-", "#", "$")},
    "NN": "NOUN", "VB": "VERB", "JJ": "ADJ", "RB": "ADV",
    **{tag: "PRON" for tag in ("PRP", "PRP$", "WP", "WP$")},
    **{tag: "DET" for tag in ("DT", "PDT", "WDT")},
    "IN": "ADP", "TO": "ADP", "CC": "CONJ", "CD": "NUM", "RP": "PART",
}
_PENN_FAMILIES = ("NN", "VB", "JJ", "RB")


def penn_to_coarse(tag: str) -> str:
    """The coarse tag of a Penn Treebank tag (:data:`PENN_TO_COARSE`, catch-all ``X``)."""
    tag = str(tag).upper()
    if tag in PENN_TO_COARSE:
        return PENN_TO_COARSE[tag]
    family = tag[:2]
    return PENN_TO_COARSE[family] if family in _PENN_FAMILIES else "X"


class _NltkTagger:
    """NLTK's Penn tagger, mapped by :func:`penn_to_coarse`; punctuation words are ``PUNCT`` untagged."""

    name = "nltk"

    def __init__(self, pos_tag):
        self._pos_tag = pos_tag

    def __call__(self, words: Sequence[str]) -> list[str]:
        lexical = [i for i, word in enumerate(words) if not _is_punct_word(word)]
        tags = ["PUNCT"] * len(words)
        tagged = self._pos_tag([words[i] for i in lexical]) if lexical else []
        if len(tagged) != len(lexical):
            raise RuntimeError(f"the NLTK tagger returned {len(tagged)} tags for {len(lexical)} words")
        for i, (_, tag) in zip(lexical, tagged):
            tags[i] = penn_to_coarse(tag)
        return tags


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
    """NLTK's tagger when NLTK and its averaged-perceptron data are installed (nothing is downloaded).

    The probe tags one word, as the release does, so any data layout NLTK itself accepts works.
    """
    try:
        import nltk

        nltk.pos_tag(["probe"])
    except (ImportError, LookupError):
        return None
    return _NltkTagger(nltk.pos_tag)


def build_tagger(kind: str, content_tags: Sequence[str]) -> Callable[[Sequence[str]], list[str]]:
    """The tagger named by ``kind`` (``auto``/``spacy``/``nltk``/``lexicon``), checked against the tag set."""
    candidates = {"nltk": _try_nltk, "spacy": _try_spacy, "lexicon": LexiconTagger}
    order = ["nltk", "spacy", "lexicon"] if kind == "auto" else [kind]
    for name in order:
        if name not in candidates:
            raise ValueError(f"unknown POS tagger {name!r}; choose auto, spacy, nltk or lexicon")
        tagger = candidates[name]()
        if tagger is not None:
            break
    else:
        raise RuntimeError(
            f"POS tagger {kind!r} is not available offline: install NLTK with its averaged_perceptron_tagger_eng "
            "data (README, 'POS tagger data'), or spaCy with an English pipeline, or use tagger=lexicon"
        )
    if tagger.name == "lexicon":
        kept = _OPEN_CLASS_TAGS & set(content_tags)
        if kept and kept != _OPEN_CLASS_TAGS:
            raise ValueError(
                f"the lexicon tagger cannot tell open-class tags apart, but pos_gate.tags keeps {sorted(kept)} "
                "and not all of NOUN/VERB/ADJ/ADV: install NLTK data or spaCy, or gate on all open classes"
            )
    logger.info("MAPO POS gate uses the %s tagger", tagger.name)
    return tagger


def words_of_tokens(pieces: Sequence[str]) -> tuple[list[str], list[int]]:
    """Group decoded token pieces into words; returns the words and each token's word index.

    A piece that begins with whitespace, or is punctuation, starts a new word; a piece made
    only of whitespace (``" "``, ``"\\n"``) belongs to no word (index −1) and ends the current
    one, so ``["dog", "\\n", "The"]`` is two words; so does a piece that ends with whitespace.
    """
    words: list[str] = []
    owner: list[int] = []
    word_ended = True
    for piece in pieces:
        stripped = piece.strip()
        if not stripped:
            owner.append(-1)
            word_ended = True
            continue
        is_punct = _is_punct_word(stripped)
        if word_ended or piece[:1].isspace() or is_punct or _is_punct_word(words[-1]):
            words.append(stripped)
        else:
            words[-1] += stripped
        word_ended = piece[-1:].isspace()  # ".\n" ends its word too
        owner.append(len(words) - 1)
    return words, owner


def _is_punct_word(word: str) -> bool:
    return all(unicodedata.category(ch).startswith("P") for ch in word)


class PartOfSpeechGate:
    """Computes ``pos_t`` for padded response ids with a tokenizer and a tagger.

    ``empty_fallback``: a response none of whose tokens passes the gate is gated all ones (the
    release's rule); a response whose tagging raises is gated all ones in any case.
    """

    def __init__(self, tokenizer, tags: Sequence[str], tagger: str = "auto", *, empty_fallback: bool = True):
        self.content_tags = frozenset(tags)
        self.tagger = build_tagger(tagger, tags)
        self.empty_fallback = empty_fallback
        self._tokenizer = tokenizer
        self._piece = lru_cache(maxsize=None)(self._decode_one)

    def _decode_one(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id], skip_special_tokens=False)

    def __call__(self, responses: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        """Bool ``[B, T]``: true where the valid response token belongs to a content word."""
        return self.gate_and_fallbacks(responses, response_mask)[0]

    def gate_and_fallbacks(self, responses: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gate [B, T], fell_back [B])``: the gate, and the rows that fell back to all ones."""
        rows_gate, fell_back = [], []
        for row, (row_ids, row_mask) in enumerate(zip(responses.cpu().tolist(), response_mask.bool().cpu().tolist())):
            row_gate = [False] * len(row_ids)
            positions = [t for t, valid in enumerate(row_mask) if valid]
            words, owner = words_of_tokens([self._piece(row_ids[t]) for t in positions])
            try:
                content = [tag in self.content_tags for tag in self.tagger(words)] if words else []
            except Exception:  # the release's rule: a tagger failure gates the response all ones
                logger.warning("MAPO POS gate: the %s tagger failed on row %d; gating it all ones",
                               self.tagger.name, row, exc_info=True)
                content = None
            if content is not None:
                for position, word_index in zip(positions, owner):
                    row_gate[position] = word_index >= 0 and content[word_index]
            fallback = bool(positions) and (content is None or (self.empty_fallback and not any(row_gate)))
            if fallback:
                for position in positions:
                    row_gate[position] = True
            rows_gate.append(row_gate)
            fell_back.append(fallback)
        gate = torch.tensor(rows_gate, dtype=torch.bool).reshape(responses.shape)
        return gate.to(response_mask.device), torch.tensor(fell_back, dtype=torch.bool)

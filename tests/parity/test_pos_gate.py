"""The POS gate as the authors' release does it: words end at whitespace-only tokens (and at
newlines), NLTK's Penn tags mapped to coarse tags with the catch-all X, tagger failure and
all-zero gates fall back to all ones.

NLTK's tagger data cannot be installed offline here (no PyPI or Debian package ships it), so
the NLTK path runs against a stub ``nltk`` module whose ``pos_tag`` returns fixed Penn tags:
everything after NLTK's own tagging (word grouping, the probe, the mapping, the fallbacks) is
the real code.
"""

import sys
import types

import pytest
import torch

from mapo_verl.pos_gate import (
    PENN_TO_COARSE,
    LexiconTagger,
    PartOfSpeechGate,
    build_tagger,
    penn_to_coarse,
    words_of_tokens,
)

DEFAULT_TAGS = ["NOUN", "VERB", "ADJ", "ADV", "NUM", "X"]

# Penn tags a tagger would give these words (fixed, as the release's own test patches its tagger)
PENN = {"dog": "NN", "runs": "VBZ", "quickly": "RB", "The": "DT", "cat": "NN", "is": "VBZ", "can": "MD",
        "sleep": "VB", "when": "WRB", "there": "EX", "and": "CC", "3": "CD", "up": "RP", "it": "PRP"}


class PieceTokenizer:
    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.pieces[i] for i in ids)


def install_stub_nltk(monkeypatch, pos_tag):
    stub = types.ModuleType("nltk")
    stub.pos_tag = pos_tag
    monkeypatch.setitem(sys.modules, "nltk", stub)


def penn_tagger(words):
    return [(word, PENN.get(word, "NN")) for word in words]


def gate_of(pieces, tags=DEFAULT_TAGS, tagger="nltk", **kwargs):
    gate = PartOfSpeechGate(PieceTokenizer(pieces), tags, tagger, **kwargs)
    ids = torch.arange(len(pieces))[None, :]
    return gate.gate_and_fallbacks(ids, torch.ones_like(ids))


def test_a_newline_ends_the_word():
    words, owner = words_of_tokens(["dog", "\n", "The", " cat", ".\n", "A"])
    assert words == ["dog", "The", "cat", ".", "A"]
    assert owner == [0, -1, 1, 2, 3, 4]
    # before the fix "dog" and "The" merged into "dogThe"
    assert words_of_tokens(["sec", "ond", "\n\n", "tone"])[0] == ["second", "tone"]


def test_penn_to_coarse_table_as_the_release():
    want = {"NN": "NOUN", "NNS": "NOUN", "NNP": "NOUN", "VB": "VERB", "VBZ": "VERB", "VBD": "VERB", "JJ": "ADJ",
            "JJR": "ADJ", "RB": "ADV", "RBS": "ADV", "PRP": "PRON", "PRP$": "PRON", "WP": "PRON", "WP$": "PRON",
            "DT": "DET", "PDT": "DET", "WDT": "DET", "IN": "ADP", "TO": "ADP", "CC": "CONJ", "CD": "NUM",
            "RP": "PART", ".": "PUNCT", ",": "PUNCT", ":": "PUNCT", "``": "PUNCT", "''": "PUNCT", "-LRB-": "PUNCT",
            "-RRB-": "PUNCT", "#": "PUNCT", "$": "PUNCT",
            # the catch-all
            "MD": "X", "EX": "X", "FW": "X", "LS": "X", "POS": "X", "SYM": "X", "UH": "X", "WRB": "X"}
    assert {tag: penn_to_coarse(tag) for tag in want} == want
    assert set(PENN_TO_COARSE.values()) <= {"PUNCT", "NOUN", "VERB", "ADJ", "ADV", "PRON", "DET", "ADP", "CONJ",
                                            "NUM", "PART"}


def test_release_projection_dog_runs_quickly(monkeypatch):
    install_stub_nltk(monkeypatch, penn_tagger)
    gate, fell_back = gate_of([" dog", " runs", " quickly"], tags=["NOUN", "VERB"])
    assert gate[0].tolist() == [True, True, False] and not bool(fell_back[0])


def test_tagger_failure_gates_the_response_all_ones(monkeypatch):
    calls = []

    def failing(words):
        calls.append(list(words))
        if words != ["probe"]:
            raise RuntimeError("tagger failed")
        return [("probe", "NN")]

    install_stub_nltk(monkeypatch, failing)
    gate, fell_back = gate_of([" dog", " runs", " quickly"], tags=["NOUN", "VERB"])
    assert gate[0].tolist() == [True, True, True] and bool(fell_back[0])
    assert calls[0] == ["probe"]  # the availability probe, as the release


def test_auxiliaries_and_modals_are_gated_with_nltk_not_with_the_lexicon(monkeypatch):
    install_stub_nltk(monkeypatch, penn_tagger)
    pieces = ["The", " cat", " is", " up", " and", " can", " sleep", " when", " there", " 3"]
    nltk_gate, _ = gate_of(pieces)
    # DT NN VBZ RP CC MD VB WRB EX CD -> DET NOUN VERB PART CONJ X VERB X X NUM
    assert nltk_gate[0].tolist() == [False, True, True, False, False, True, True, True, True, True]
    lexicon_gate, _ = gate_of(pieces, tagger="lexicon")
    # the lexicon: is/can AUX (not gated), up ADP; when/there are not in its closed classes (open class)
    assert LexiconTagger()(["is", "can", "when", "there"]) == ["AUX", "AUX", "NOUN", "NOUN"]
    assert lexicon_gate[0].tolist() == [False, True, False, False, False, False, True, True, True, True]


def test_all_zero_gate_falls_back_to_all_ones_unless_disabled(monkeypatch):
    install_stub_nltk(monkeypatch, penn_tagger)
    gate, fell_back = gate_of(["The", " and", "."])
    assert gate[0].tolist() == [True, True, True] and bool(fell_back[0])
    gate, fell_back = gate_of(["The", " and", "."], empty_fallback=False)
    assert gate[0].tolist() == [False, False, False] and not bool(fell_back[0])


def test_punctuation_is_never_sent_to_the_tagger(monkeypatch):
    seen = []

    def recording(words):
        seen.extend(words)
        return penn_tagger(words)

    install_stub_nltk(monkeypatch, recording)
    gate, _ = gate_of([" dog", ",", " cat", "."])
    assert "," not in seen and "." not in seen
    assert gate[0].tolist() == [True, False, True, False]


def test_auto_prefers_nltk_then_falls_back_to_the_lexicon(monkeypatch):
    install_stub_nltk(monkeypatch, penn_tagger)
    assert build_tagger("auto", DEFAULT_TAGS).name == "nltk"

    def no_data(words):
        raise LookupError("Resource averaged_perceptron_tagger_eng not found")

    install_stub_nltk(monkeypatch, no_data)
    monkeypatch.setitem(sys.modules, "spacy", None)  # no spaCy either
    assert build_tagger("auto", DEFAULT_TAGS).name == "lexicon"
    with pytest.raises(RuntimeError, match="averaged_perceptron_tagger_eng"):
        build_tagger("nltk", DEFAULT_TAGS)

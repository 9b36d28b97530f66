"""POS gate (offline lexicon tagger, word grouping) and the audio ablation of model inputs."""

import pytest
import torch

from mapo_verl.modalities import AUDIO, ablate_audio, has_modality
from mapo_verl.core import position_deciles, sums_by_decile
from mapo_verl.pos_gate import LexiconTagger, PartOfSpeechGate, build_tagger, words_of_tokens


def test_lexicon_tags_closed_classes_numbers_and_punctuation():
    words = ["The", "second", "tone", "is", "higher", "than", "the", "first", ",", "so", "answer", "B", "42", "."]
    tags = LexiconTagger()(words)
    assert tags == ["DET", "NUM", "NOUN", "AUX", "NOUN", "ADP", "DET", "NUM", "PUNCT", "CCONJ", "NOUN", "NOUN",
                    "NUM", "PUNCT"]


def test_lexicon_refuses_tag_sets_it_cannot_separate():
    build_tagger("lexicon", ["NOUN", "VERB", "ADJ", "ADV", "NUM", "X"])
    with pytest.raises(ValueError, match="cannot tell open-class tags apart"):
        build_tagger("lexicon", ["NOUN", "NUM"])
    with pytest.raises(ValueError, match="unknown POS tagger"):
        build_tagger("stanza", ["NOUN"])


def test_word_grouping_of_subword_pieces():
    words, owner = words_of_tokens(["The", " sec", "ond", " tone", ",", " hi", "gher", " ", "!"])
    assert words == ["The", "second", "tone", ",", "higher", "!"]
    assert owner == [0, 1, 1, 2, 3, 4, 4, -1, 5]


class PieceTokenizer:
    """A tokenizer stand-in: id -> fixed text piece (what decode([id]) returns)."""

    pieces = {0: "<pad>", 1: "The", 2: " sec", 3: "ond", 4: " tone", 5: " is", 6: " high", 7: "er", 8: ".", 9: " 3"}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.pieces[i] for i in ids)


def test_gate_marks_every_subword_of_a_content_word():
    gate = PartOfSpeechGate(PieceTokenizer(), ["NOUN", "VERB", "ADJ", "ADV", "NUM", "X"], tagger="lexicon")
    responses = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8], [9, 8, 0, 0, 0, 0, 0, 0]])
    mask = torch.tensor([[1] * 8, [1, 1, 0, 0, 0, 0, 0, 0]])
    got = gate(responses, mask)
    assert got[0].tolist() == [False, True, True, True, False, True, True, False]
    assert got[1].tolist() == [True, False, False, False, False, False, False, False]


def test_ablation_modes():
    features = torch.randn(1, 8, 20)
    sample = {"input_features": features, "feature_attention_mask": torch.ones(1, 20), "pixel_values": torch.ones(2)}
    dropped = ablate_audio(sample, "drop")
    # features gone, clip lengths kept (rope positions); the original is untouched
    assert set(dropped) == {"pixel_values", "feature_attention_mask"} and "input_features" in sample
    zeroed = ablate_audio(sample, "zero")
    assert zeroed["input_features"].abs().sum() == 0 and torch.equal(zeroed["feature_attention_mask"], torch.ones(1, 20))
    noisy = ablate_audio(sample, "noise", noise_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert noisy["input_features"].shape == features.shape
    assert noisy["input_features"].std().item() == pytest.approx(2 * features.std().item(), rel=0.2)
    assert not torch.allclose(noisy["input_features"], features)
    assert ablate_audio(None, "drop") is None
    assert ablate_audio({"pixel_values": torch.ones(1)}, "drop") == {"pixel_values": torch.ones(1)}
    assert has_modality(sample, AUDIO) and not has_modality({}, AUDIO)
    assert not has_modality({"input_features": torch.zeros(0)}, AUDIO)
    with pytest.raises(ValueError, match="ablation mode"):
        ablate_audio(sample, "mute")


def test_position_deciles_and_sums():
    mask = torch.tensor([[1] * 10 + [0] * 10, [1] * 20])
    deciles = position_deciles(mask)
    assert deciles[0, :10].tolist() == list(range(10)) and deciles[0, 10:].eq(-1).all()
    assert deciles[1].tolist() == [k // 2 for k in range(20)]
    sums, counts = sums_by_decile(torch.ones(2, 20), mask)
    assert counts.tolist() == [3.0] * 10 and sums.tolist() == [3.0] * 10

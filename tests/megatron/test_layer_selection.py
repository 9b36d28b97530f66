"""Layer-index resolution of the Megatron hook (spec §3: negative indices count from the end)."""

import pytest

pytest.importorskip("megatron.core")

from mapo_verl.megatron.attention_hook import resolve_layer_numbers  # noqa: E402


def test_negative_indices_count_from_the_end():
    assert resolve_layer_numbers([-3, -2, -1], 48) == [46, 47, 48]
    assert resolve_layer_numbers([0, -1], 4) == [1, 4]


@pytest.mark.parametrize("layers", [[4], [-5]])
def test_out_of_range_index_names_the_key_and_range(layers):
    with pytest.raises(ValueError, match=r"mapo\.attention\.layers holds .*allowed: -4\.\.3"):
        resolve_layer_numbers(layers, 4, key="mapo.attention.layers")


def test_the_same_layer_twice_is_refused():
    with pytest.raises(ValueError, match="same decoder layer twice"):
        resolve_layer_numbers([3, -1], 4)

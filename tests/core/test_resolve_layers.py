"""Layer-index resolution shared by the HF probe, the Megatron hook and the launch check."""

import pytest

from mapo_verl.core import resolve_layers


def test_negative_indices_count_from_the_end():
    assert resolve_layers([-3, -2, -1], 48) == [45, 46, 47]
    assert resolve_layers([-1, 0], 4) == [0, 3]


@pytest.mark.parametrize("layers", [[4], [-5]])
def test_out_of_range_index_names_the_key_and_range(layers):
    with pytest.raises(ValueError, match=r"mapo\.attention\.layers: layer -?\d is out of range .*allowed: -4 \.\. 3"):
        resolve_layers(layers, 4, key="mapo.attention.layers")


def test_the_same_layer_twice_is_refused():
    with pytest.raises(ValueError, match=r"policy_loss\.mapo\.attention\.layers: \[3, -1\] names the same layer twice"):
        resolve_layers([3, -1], 4)

"""Input checks shared by the math core.

Every public core function validates what it is given and fails with a message that
names the argument and the offending rows, instead of returning NaN or a silently wrong
number. The checks cost one host sync per tensor, paid once per batch.
"""

from __future__ import annotations

import torch

__all__ = ["as_bool_mask", "check_finite_where", "check_same_shape", "first_rows", "check_per_sequence"]


def first_rows(row_flags: torch.Tensor, limit: int = 5) -> list[int]:
    """The first ``limit`` row indices where ``row_flags`` is true (for error messages)."""
    return torch.nonzero(row_flags.reshape(-1), as_tuple=False).reshape(-1)[:limit].tolist()


def as_bool_mask(mask: torch.Tensor, name: str, shape: torch.Size | None = None) -> torch.Tensor:
    """Return ``mask`` as a bool tensor, checking it holds only 0/1 values.

    Args:
        mask: bool, integer or floating tensor of 0/1 values.
        name: argument name used in error messages.
        shape: expected shape, if any.
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if shape is not None and mask.shape != shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point() or mask.is_complex():
        bad = ~((mask == 0) | (mask == 1))
    else:
        bad = (mask != 0) & (mask != 1)
    if bool(bad.any()):
        rows = first_rows(bad.reshape(mask.shape[0], -1).any(dim=-1)) if mask.dim() > 1 else first_rows(bad)
        raise ValueError(f"{name} must contain only 0/1 values; rows {rows} hold other values")
    return mask != 0


def check_same_shape(reference: torch.Tensor, reference_name: str, **tensors: torch.Tensor | None) -> None:
    """Check that every given tensor has ``reference``'s shape."""
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.shape != reference.shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}, expected {tuple(reference.shape)} "
                f"(the shape of {reference_name})"
            )


def check_finite_where(values: torch.Tensor, mask: torch.Tensor, name: str) -> None:
    """Raise if ``values`` holds NaN or ±inf at a position where ``mask`` is true.

    Positions outside the mask (padding) are ignored: padding is never read.
    """
    if not values.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {values.dtype}")
    bad = ~torch.isfinite(values) & mask
    if bool(bad.any()):
        row_bad = bad.reshape(bad.shape[0], -1).any(dim=-1)
        kinds = []
        if bool((torch.isnan(values) & mask).any()):
            kinds.append("NaN")
        if bool((torch.isinf(values) & mask).any()):
            kinds.append("inf")
        raise ValueError(
            f"{name} holds {'/'.join(kinds)} at valid response positions of rows {first_rows(row_bad)}; "
            "entropies and attention masses must be finite"
        )


def check_per_sequence(values: torch.Tensor | None, name: str, batch: int) -> torch.Tensor | None:
    """Check a per-sequence tensor has shape ``[batch]``."""
    if values is None:
        return None
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [{batch}], got {type(values).__name__}")
    if values.shape != (batch,):
        raise ValueError(f"{name} has shape {tuple(values.shape)}, expected ({batch},): one value per sequence")
    return values

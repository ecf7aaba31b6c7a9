"""Neuron selections as the command line writes them (``--neurons 0-63`` or ``1,5,7-9``)."""

from __future__ import annotations

from dnd.errors import DnDError


def parse_neurons(spec: str | None) -> list[int] | None:
    """``"0-3,7"`` → ``[0, 1, 2, 3, 7]``; None means every neuron."""
    if spec is None or not spec.strip():
        return None
    neurons: set[int] = set()
    for part in spec.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last) if dash else int(first)
        except ValueError:
            raise DnDError(f"--neurons {spec!r}: expected numbers and ranges such as 0-63 or 1,5,7-9") from None
        if low < 0 or high < low:
            raise DnDError(f"--neurons {spec!r}: {part.strip()!r} is not a valid range")
        neurons.update(range(low, high + 1))
    return sorted(neurons)

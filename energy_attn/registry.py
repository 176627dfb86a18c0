"""Energies by name, so a config can say `energy: sigmoid`."""
from __future__ import annotations

import difflib
from typing import Callable

_ENERGIES: dict[str, Callable] = {}


def register_energy(name: str, fn: Callable | None = None):
    """Register `fn` under `name`; usable as a decorator: @register_energy("mine")."""
    def add(f):
        if name in _ENERGIES and _ENERGIES[name] is not f:
            raise ValueError(f"an energy named {name!r} is already registered")
        _ENERGIES[name] = f
        return f
    return add if fn is None else add(fn)


def get_energy(energy: str | Callable) -> Callable:
    if callable(energy):
        return energy
    if not isinstance(energy, str):
        raise TypeError(f"energy must be a name or a function, got {type(energy).__name__}")
    if energy not in _ENERGIES:
        close = difflib.get_close_matches(energy, _ENERGIES, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown energy {energy!r}.{hint} Registered energies: {sorted(_ENERGIES)}")
    return _ENERGIES[energy]


def available_energies() -> list[str]:
    return sorted(_ENERGIES)

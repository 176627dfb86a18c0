"""Energies by name, so a config can say `energy: sigmoid`."""
from __future__ import annotations

import difflib
import reprlib
from typing import Callable

_ENERGIES: dict[str, Callable] = {}


def register_energy(name: str, fn: Callable | None = None):
    """Register `fn` under `name`; usable as a decorator: @register_energy("mine").

    `name` must be a non-empty string without whitespace (it is what a config writes,
    e.g. `energy: mine`) and `fn` a callable F(q, k, v, zeta, *, mask, **params)
    returning a scalar; otherwise TypeError/ValueError. Registering a second,
    different function under a taken name is a ValueError.
    """
    if not isinstance(name, str):
        raise TypeError(f"register_energy: the name must be a string, got "
                        f"{type(name).__name__} {reprlib.repr(name)}")
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"register_energy: the name must be a non-empty string without "
                         f"whitespace, got {name!r}")

    def add(f):
        if not callable(f):
            raise TypeError(f"register_energy({name!r}, ...): the energy must be callable, a "
                            f"function F(q, k, v, zeta, *, mask, **params); got "
                            f"{type(f).__name__} {reprlib.repr(f)}")
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

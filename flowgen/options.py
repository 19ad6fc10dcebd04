"""Choosing a component by name from a table and building it from keyword options, with one message for each
mistake (the unknown name with the valid ones, the unknown options with the component's options), raised as
ValueError before anything is traced. Used by every ``get``/``build`` of paths, solvers, time samplers, couplings,
sources and training methods."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping


def choose(table: Mapping[str, type], name, kind: str):
    """``table[name]``; ValueError "unknown <kind> 'x'; valid <kind>s: a, b" otherwise."""
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(table)}")
    return table[name]


def options_of(cls, hidden: Iterable[str] = ()) -> list[str]:
    """The keyword options a dataclass ``cls`` takes (its init fields), less ``hidden`` ones set by the caller."""
    hidden = set(hidden)
    return [f.name for f in dataclasses.fields(cls) if f.init and f.name not in hidden]


def check_options(cls, kwargs: Mapping, what: str, hidden: Iterable[str] = ()) -> None:
    """ValueError "unknown options [...] for <what>; its options are [...]" if ``kwargs`` has keys ``cls`` lacks."""
    valid = options_of(cls, hidden)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown options {unknown} for {what}; its options are {valid or 'none'}")


def build(table: Mapping[str, type], name, kind: str, kwargs: Mapping, hidden: Iterable[str] = ()):
    """``table[name](**kwargs)`` with the name and the options checked (``hidden`` options may be passed but are
    not offered to the user, e.g. a path set by the caller)."""
    cls = choose(table, name, kind)
    check_options(cls, {k: v for k, v in kwargs.items() if k not in set(hidden)}, f"{kind} {name!r}", hidden)
    return cls(**kwargs)

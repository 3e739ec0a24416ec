"""Lazy public names for a package's ``__init__`` (PEP 562), so importing it stays light."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_attributes(package: str, names: Mapping[str, str], namespace: dict, public: list[str]
                    ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: each name in ``names`` (name -> defining
    module) is imported on first access and cached in ``namespace`` (the package's globals)."""

    def __getattr__(name: str):
        try:
            module = names[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(public) | set(namespace))

    return __getattr__, __dir__

"""What every configuration dataclass shares: a JSON round trip and copies with some fields changed.

The configuration dataclasses (``TrainConfig``, ``MetaConfig``, ``FitConfig``, ``RefineConfig``,
``LossWeights``) own every default of the project; this mixin gives them one ``to_dict`` / ``from_dict`` /
``with_`` instead of a copy each. Enums are written as their values; a nested configuration as its own dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, fields, replace
from enum import Enum
from typing import Any, TypeVar, cast

__all__ = ["Config"]

C = TypeVar("C", bound="Config")


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Config):
        return value.to_dict()
    return value


class Config:
    """Mixin for frozen configuration dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary: enums as their values, nested configurations as dictionaries."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(cast(Any, self))}

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        """Inverse of :meth:`to_dict` (a missing field takes its default)."""
        kw = dict(d)
        for f in fields(cast(Any, cls)):
            factory = f.default_factory
            if f.name in kw and factory is not MISSING and isinstance(factory, type) and issubclass(factory, Config):
                kw[f.name] = factory.from_dict(kw[f.name])
        return cls(**kw)

    def with_(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated again)."""
        return cast(C, replace(cast(Any, self), **changes))

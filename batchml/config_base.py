"""What every `batchml.toml` struct shares: strict frozen structs, number constraints, validation.

Its own module so that the config's parts (`config_gates`, `config_releases`, `config`) build on it without
importing one another.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from batchml.config_errors import describe
from batchml.errors import ConfigError, InvalidNameError

_T = TypeVar("_T", bound="Strict")

#: Number constraints, as msgspec metadata.
Share = Annotated[float, Meta(ge=0.0, le=1.0)]
PositiveShare = Annotated[float, Meta(gt=0.0, le=1.0)]
NonNegative = Annotated[float, Meta(ge=0.0)]
Positive = Annotated[float, Meta(gt=0.0)]
AtLeastOne = Annotated[int, Meta(ge=1)]


class Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Immutable, and a mapping with a key the struct does not know is refused."""

    @classmethod
    def prepare(cls, data: Any) -> Any:
        """The mapping as validation should see it (a hook for structs that normalise input first)."""
        return data

    @classmethod
    def from_mapping(cls: type[_T], data: Any, source: str = "<config>") -> _T:
        """Validate `data` (as read from TOML or JSON) into this struct; errors name the field and value."""
        return _convert(data, cls, source)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values under their config-file names (`in`, not `in_`)."""
        return msgspec.to_builtins(self)


def _convert(data: Any, cls: type[_T], source: str) -> _T:
    try:
        prepared = cls.prepare(data)
        return msgspec.convert(prepared, cls)
    except InvalidNameError as exc:  # from `prepare`: names are checked before the structs
        raise ConfigError(f"invalid config {source!r}: {exc}") from None
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config {source!r}: {describe(str(exc), prepared, cls)}") from None

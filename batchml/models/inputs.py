"""What a model version expects as input: its features as the model card records them.

Kept apart from `features` (which encodes columns with pyarrow and numpy), so that reading a card, as the
registry and `batchml models list` do, imports neither.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

FeatureKind = Literal["numeric", "categorical"]


@dataclass(frozen=True)
class Feature:
    """One model input: the dataset column it binds to, how it is encoded, and its training dtype."""

    name: str
    kind: FeatureKind
    dtype: str
    categories: tuple[str, ...] = ()
    #: Training values beyond the category cap, all encoded as the one category `len(categories)`.
    other: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the model card."""
        data = asdict(self)
        data["categories"] = list(self.categories)
        data["other"] = list(self.other)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Feature:
        """Parse the model card's JSON form."""
        return cls(
            data["name"],
            data["kind"],
            data["dtype"],
            tuple(data.get("categories", ())),
            tuple(data.get("other", ())),
        )

    @property
    def other_code(self) -> int | None:
        """The code of the "other" category, or None when every training value is its own category."""
        return len(self.categories) if self.other else None

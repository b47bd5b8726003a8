"""Optimization profiles: min:opt:max of the batch and sequence dimensions of every engine input."""

from __future__ import annotations

import re
from dataclasses import dataclass

from debertrt.core.errors import DebertrtError

PROFILE_DIMS = ("batch", "sequence")


@dataclass(frozen=True)
class Profile:
    """min:opt:max for the batch and sequence dimensions of every input."""

    batch: tuple[int, int, int] = (1, 4, 16)
    sequence: tuple[int, int, int] = (1, 128, 512)

    def __post_init__(self):
        for dim in PROFILE_DIMS:
            values = tuple(int(v) for v in getattr(self, dim))
            if len(values) != 3:
                raise DebertrtError(f"profile {dim} needs min:opt:max, got {values}")
            lo, opt, hi = values
            if lo < 1:
                raise DebertrtError(f"profile {dim} min must be >= 1, got {lo}")
            if not lo <= opt <= hi:
                raise DebertrtError(f"profile {dim} {lo}:{opt}:{hi}: need min <= opt <= max")
            object.__setattr__(self, dim, values)

    @classmethod
    def parse(cls, text: str) -> "Profile":
        """``batch=1:4:16,sequence=1:128:512``; a single number is a static dimension
        (``batch=8`` is 8:8:8); a dimension left out keeps its default."""
        values = {}
        for part in filter(None, (p.strip() for p in re.split(r"[,\s]+", text))):
            key, sep, spec = part.partition("=")
            key = key.strip()
            if not sep or key not in PROFILE_DIMS:
                raise DebertrtError(f"bad profile {text!r}: write e.g. batch=1:4:16,sequence=1:128:512")
            if key in values:
                raise DebertrtError(f"bad profile {text!r}: {key} given twice")
            try:
                numbers = tuple(int(v) for v in spec.split(":"))
            except ValueError:
                raise DebertrtError(f"bad profile {text!r}: {key} needs integers min:opt:max") from None
            if len(numbers) == 1:
                numbers = numbers * 3
            if len(numbers) != 3:
                raise DebertrtError(f"bad profile {text!r}: {key} needs min:opt:max (or one number)")
            values[key] = numbers
        if not values:
            raise DebertrtError(f"empty profile {text!r}: write e.g. batch=1:4:16,sequence=1:128:512")
        return cls(**values)

    def __str__(self) -> str:
        return ",".join(f"{d}={':'.join(map(str, getattr(self, d)))}" for d in PROFILE_DIMS)

    def to_dict(self) -> dict:
        return {d: list(getattr(self, d)) for d in PROFILE_DIMS}

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        return cls(**{d: tuple(data[d]) for d in PROFILE_DIMS})

    def shapes(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(min, opt, max) shapes of a [batch, sequence] input."""
        return tuple((self.batch[i], self.sequence[i]) for i in range(3))

    def contains(self, batch: int, sequence: int) -> bool:
        return self.batch[0] <= batch <= self.batch[2] and self.sequence[0] <= sequence <= self.sequence[2]

    def fit_to(self, max_sequence: int) -> "Profile":
        """The default profile clipped to a model's maximum sequence."""
        lo, opt, hi = self.sequence
        hi = min(hi, max_sequence)
        return Profile(self.batch, (min(lo, hi), min(opt, hi), hi))


DEFAULT_PROFILE = Profile()

"""Optimization profiles: min:opt:max of the batch, choices (multiple choice only) and sequence
dimensions of every engine input."""

from __future__ import annotations

import re
from dataclasses import dataclass

from debertrt.core.errors import DebertrtError

PROFILE_DIMS = ("batch", "choices", "sequence")
DEFAULT_CHOICES = (1, 4, 8)  # a multiple-choice engine's choices when its profile names none


@dataclass(frozen=True)
class Profile:
    """min:opt:max for the batch and sequence dimensions of every input, and for the choices
    dimension of [batch, choices, sequence] inputs (None: ``DEFAULT_CHOICES`` where needed)."""

    batch: tuple[int, int, int] = (1, 4, 16)
    sequence: tuple[int, int, int] = (1, 128, 512)
    choices: tuple[int, int, int] | None = None

    def __post_init__(self):
        for dim in self.dims:
            values = tuple(int(v) for v in getattr(self, dim))
            if len(values) != 3:
                raise DebertrtError(f"profile {dim} needs min:opt:max, got {values}")
            lo, opt, hi = values
            if lo < 1:
                raise DebertrtError(f"profile {dim} min must be >= 1, got {lo}")
            if not lo <= opt <= hi:
                raise DebertrtError(f"profile {dim} {lo}:{opt}:{hi}: need min <= opt <= max")
            object.__setattr__(self, dim, values)

    @property
    def dims(self) -> tuple[str, ...]:
        """The dimensions this profile sets, in input order."""
        return tuple(d for d in PROFILE_DIMS if getattr(self, d) is not None)

    @classmethod
    def parse(cls, text: str) -> "Profile":
        """``batch=1:4:16,sequence=1:128:512`` (``choices=2:4:8`` for multiple choice); a single
        number is a static dimension (``batch=8`` is 8:8:8); a dimension left out keeps its default."""
        values = {}
        for part in filter(None, (p.strip() for p in re.split(r"[,\s]+", text))):
            key, sep, spec = part.partition("=")
            key = key.strip()
            if not sep or key not in PROFILE_DIMS:
                raise DebertrtError(f"bad profile {text!r}: write e.g. batch=1:4:16,sequence=1:128:512 "
                                    f"(and choices=2:4:8 for multiple choice)")
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
        return ",".join(f"{d}={':'.join(map(str, getattr(self, d)))}" for d in self.dims)

    def to_dict(self) -> dict:
        return {d: list(getattr(self, d)) for d in self.dims}

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        return cls(**{d: tuple(data[d]) for d in PROFILE_DIMS if data.get(d) is not None})

    def for_rank(self, rank: int) -> "Profile":
        """This profile for inputs of ``rank`` axes: choices filled in (default ``DEFAULT_CHOICES``) for
        [batch, choices, sequence]; refused for [batch, sequence] inputs that have no choices axis."""
        if rank == 3:
            return self if self.choices is not None else Profile(self.batch, self.sequence, DEFAULT_CHOICES)
        if rank == 2 and self.choices is not None:
            raise DebertrtError(f"profile {self}: the model's inputs are [batch, sequence], with no choices axis; "
                                f"leave choices= out (it is for --task multiple-choice)")
        if rank not in (2, 3):
            raise DebertrtError(f"inputs of {rank} axes: debertrt engines take [batch, sequence] or "
                                f"[batch, choices, sequence]")
        return self

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes of an input: [batch, sequence] or [batch, choices, sequence]."""
        return tuple(tuple(getattr(self, d)[i] for d in self.dims) for i in range(3))

    def contains(self, batch: int, sequence: int, choices: int | None = None) -> bool:
        """Whether inputs of this batch, sequence (and choices, for a profile with that axis) fall in it."""
        given = {"batch": batch, "sequence": sequence, "choices": choices}
        if (choices is None) != (self.choices is None):
            return False
        return all(getattr(self, d)[0] <= given[d] <= getattr(self, d)[2] for d in self.dims)

    def fit_to(self, max_sequence: int) -> "Profile":
        """The default profile clipped to a model's maximum sequence."""
        lo, opt, hi = self.sequence
        hi = min(hi, max_sequence)
        return Profile(self.batch, (min(lo, hi), min(opt, hi), hi), self.choices)


DEFAULT_PROFILE = Profile()

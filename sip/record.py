"""A base for the small immutable value objects built for every SIP message.

A frozen dataclass would do the job, but its generated __init__ stays interpreted under mypyc
and sets each field through object.__setattr__: about 1 µs for a ten-field object, against
0.03 µs for a compiled class with an explicit __init__. A REGISTER builds half a dozen of them.
Subclasses declare their attributes `Final` (mypy refuses reassignment; mypyc makes them
read-only at run time) and list them in FIELDS, which gives equality, hashing and repr.
"""

from __future__ import annotations

from typing import Any, ClassVar


class Record:
    __slots__ = ()
    FIELDS: ClassVar[tuple[str, ...]] = ()

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.FIELDS)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Record)
        return self.values() == other.values()

    def __hash__(self) -> int:
        return hash(self.values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.FIELDS)
        return f"{type(self).__name__}({shown})"

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

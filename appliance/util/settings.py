"""The base of every settings Struct, and the constrained numbers they use (STYLE rule 31).

Each component owns its settings as a `ConfigBase` Struct beside its code (`manager/settings.py`,
`syncer/settings.py`, `proxy/settings.py`, `replicas/settings.py`, `health.HttpSettings`,
`logsetup.LogSettings`); `appliance/config.py` composes them into the file's sections, so every
default is written once. The policy: keyword-only, frozen, unknown keys are errors, kebab-case
keys. A component that also needs values the file does not hold (paths, what the app derives)
extends its section in a subclass and builds it with `extend`; the file never sees those fields.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

Positive = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(gt=0)]
NonNegative = Annotated[float, Meta(ge=0)]
Port = Annotated[int, Meta(ge=0, le=65535)]


class ConfigBase(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """A section of the config file (or a component's settings built on one)."""


S = TypeVar("S", bound=ConfigBase)


def extend(section: ConfigBase, cls: type[S], **extra: Any) -> S:
    """`section`'s values in `cls` (a subclass of its type), plus the fields only `cls` has."""
    if not issubclass(cls, type(section)):
        raise TypeError(f"{cls.__name__} does not extend {type(section).__name__}")
    return cls(**msgspec.structs.asdict(section), **extra)

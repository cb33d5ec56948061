"""What every model configuration shares: a frozen dataclass that round-trips through dicts."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Type, TypeVar

ConfigT = TypeVar("ConfigT", bound="DictConfig")


class DictConfig:
    """Mixin of the registry's frozen dataclass configurations.

    ``to_dict`` gives nested plain dicts (JSON-friendly once tuples become lists); ``from_dict``
    is its inverse: each configuration's ``__post_init__`` turns nested dicts and JSON lists back
    into its own types, so ``Config.from_dict(json.loads(json.dumps(c.to_dict()))) == c``.
    """

    @classmethod
    def from_dict(cls: Type[ConfigT], values: Mapping[str, Any]) -> ConfigT:
        return cls(**dict(values))

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

"""Register tuner types that live outside PEFT.

PEFT 0.21 has a registration function, `peft.utils.register_peft_method`, but it only accepts names that are
already members of the closed `PeftType` enum ("Unknown PEFT type ..., please add an entry to
peft.utils.peft_types.PeftType"). There is no public hook for outside tuner types, so `register_peft_type`
does the one missing step itself: it adds a member to `PeftType` at run time, then hands over to PEFT's own
`register_peft_method`, which fills the prefix/config/tuner mappings that every PEFT entry point reads
(`get_peft_model`, `PeftConfig.from_pretrained`, `PeftModel.from_pretrained`, transformers' `load_adapter`).

Why a real enum member and not a plain string: transformers' `load_adapter` and parts of PEFT call
`config.peft_type.value`; a plain string fails there.

The enum surgery relies on CPython's `enum` internals (`_member_map_`, `_value2member_map_`,
`_member_names_`). `check_peft_internals()` verifies every assumption and raises a clear error if a PEFT or
Python upgrade changed them; `tests/test_registration.py` runs it so an upgrade fails loudly in CI.
"""

from __future__ import annotations

import enum

import peft
from peft.utils import PeftType


__all__ = ["check_peft_internals", "is_registered", "register_peft_type"]


def check_peft_internals() -> None:
    """Raise `RuntimeError` if the PEFT internals that `register_peft_type` relies on are not as expected."""
    from peft import mapping
    from peft.utils import peft_types

    problems = []
    if not (isinstance(PeftType, enum.EnumMeta) and issubclass(PeftType, str)):
        problems.append("PeftType is no longer a str Enum")
    for attr in ("_member_map_", "_value2member_map_", "_member_names_"):
        if not hasattr(PeftType, attr):
            problems.append(f"PeftType has no `{attr}`")
    if not callable(getattr(peft_types, "register_peft_method", None)):
        problems.append("peft.utils.peft_types.register_peft_method is gone")
    for name in ("PEFT_TYPE_TO_CONFIG_MAPPING", "PEFT_TYPE_TO_TUNER_MAPPING", "PEFT_TYPE_TO_PREFIX_MAPPING"):
        if not isinstance(getattr(mapping, name, None), dict):
            problems.append(f"peft.mapping.{name} is not a dict")
    if problems:
        raise RuntimeError(
            f"hf_plugins cannot register its PEFT tuner types with peft {peft.__version__}: "
            + "; ".join(problems)
            + ". hf_plugins supports peft>=0.21,<0.22; install that range (pip install 'peft>=0.21,<0.22')."
        )


def _add_enum_member(key: str) -> PeftType:
    """Add `key` as a member of `PeftType` (value == name == key) and return it; reuse it if present."""
    existing = PeftType._member_map_.get(key)
    if existing is not None:
        return existing
    member = str.__new__(PeftType, key)
    member._name_ = key
    member._value_ = key
    member.__objclass__ = PeftType
    member.__init__(key)
    PeftType._member_map_[key] = member
    PeftType._value2member_map_[key] = member
    PeftType._member_names_.append(key)
    # Python >= 3.12 looks members up as class attributes (3.11 went through EnumType.__getattr__ and
    # _member_map_); set it with type.__setattr__, since EnumType.__setattr__ refuses to touch members.
    type.__setattr__(PeftType, key, member)
    return member


def is_registered(name: str) -> bool:
    """True if `name` (e.g. "lift") is a PEFT type with a registered config class."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return name.upper() in PeftType._member_map_ and name.upper() in PEFT_TYPE_TO_CONFIG_MAPPING


def register_peft_type(name: str, config_cls: type, model_cls: type, prefix: str | None = None) -> PeftType:
    """Make `name` a PEFT tuner type usable through every PEFT and transformers entry point. Idempotent.

    Args:
        name: lower-case method name, e.g. "lift". The config's `peft_type` becomes `PeftType[name.upper()]`.
        config_cls: the `PeftConfig` subclass.
        model_cls: the `BaseTuner` subclass; its `prefix` must equal `prefix`.
        prefix: parameter-name prefix, default `name + "_"` (transformers' `load_adapter` assumes this form).

    Returns:
        The `PeftType` member.
    """
    check_peft_internals()
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils.peft_types import register_peft_method

    if name != name.lower() or name.endswith("_") or not name.isidentifier():
        raise ValueError(f"PEFT type names must be lower-case identifiers not ending in '_', got {name!r}")
    prefix = prefix or name + "_"
    key = name.upper()
    member = _add_enum_member(key)
    if key in PEFT_TYPE_TO_CONFIG_MAPPING:
        if PEFT_TYPE_TO_CONFIG_MAPPING[key] is config_cls and PEFT_TYPE_TO_TUNER_MAPPING.get(key) is model_cls:
            return member  # already registered by an earlier import
        raise ValueError(
            f"PEFT type {key} is already registered with {PEFT_TYPE_TO_CONFIG_MAPPING[key].__name__}; "
            f"refusing to replace it with {config_cls.__name__}."
        )
    register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=prefix)
    return member

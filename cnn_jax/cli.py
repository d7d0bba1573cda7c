"""Command-line flags from settings dataclasses: the one way experiments and scripts declare flags.

`define_flags(recipe)` defines one absl flag per leaf setting of the (nested) frozen dataclass
`recipe` (`cnn_jax.settings`): the flat field name, the recipe's value as the default (what
`--help` shows) and the field's docstring line as the help. `parse(recipe)` is the recipe with
the flags given on the command line applied, validated by the dataclasses as they are rebuilt.
Only flags actually given count, so one set of flags can override several recipes (a study's
arms). The settings themselves stay in the library's dataclasses; only this module and the
entry points touch absl.

Types: bool, int, float, str, `Literal[...]` (an enum flag), `tuple[str, ...]` (a comma-separated
list), `tuple[int, int]` (a size: `224` or `224,160`), `tuple[float, float]` (`0.08,1`), each also
`Optional`.
"""
from __future__ import annotations

import types
import typing
from typing import Any, Iterable, Literal, Union

from absl import flags

from cnn_jax import settings


class PairParser(flags.ArgumentParser):
    """Two numbers as `a,b`; for sizes a single `N` means (N, N)."""

    def __init__(self, element: type, square: bool):
        self.element, self.square = element, square

    def parse(self, argument):
        if argument is None or isinstance(argument, tuple):
            return argument
        hint = "N (square) or H,W in pixels" if self.square else "two numbers as a,b"
        try:
            values = tuple(self.element(p.strip()) for p in str(argument).split(","))
        except ValueError:
            raise ValueError(f"{argument!r} is not {hint}") from None
        if len(values) == 1 and self.square:
            values = values * 2
        if len(values) != 2:
            raise ValueError(f"{argument!r} is not {hint}")
        return values

    def flag_type(self):
        return "size" if self.square else "pair"


class PairSerializer(flags.ArgumentSerializer):
    def serialize(self, value):
        return "" if value is None else ",".join(str(v) for v in value)


def _unwrap_optional(annotation):
    if typing.get_origin(annotation) in (Union, types.UnionType):
        kept = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(kept) == 1:
            return kept[0]
    return annotation


def define_flags(recipe, *, required: Iterable[str] = (), flag_values=flags.FLAGS) -> None:
    """Defines a flag for every leaf setting of `recipe` (shared names once), defaults from `recipe`."""
    required = set(required)
    defaults = settings.flatten(recipe)
    helps: dict[str, list[str]] = {}
    for leaf in settings.leaves(type(recipe)):
        if not leaf.help:
            raise TypeError(f"setting {leaf.name!r} of {leaf.owner.__name__} has no line in the class "
                            f"docstring's Attributes: section, which is its flag's help")
        helps.setdefault(leaf.name, []).append(leaf.help)
    seen = set()
    for leaf in settings.leaves(type(recipe)):
        if leaf.name in seen:
            continue
        seen.add(leaf.name)
        _define(leaf.name, _unwrap_optional(leaf.annotation), settings.get(recipe, leaf.path),
                "; ".join(helps[leaf.name]), flag_values)
        if leaf.name in required:
            flags.mark_flag_as_required(leaf.name, flag_values=flag_values)
    missing = required - set(defaults)
    if missing:
        raise ValueError(f"required flags {sorted(missing)} are not settings of {type(recipe).__name__}")


def _define(name: str, annotation, default, help_text: str, flag_values) -> None:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        flags.DEFINE_bool(name, default, help_text, flag_values=flag_values)
    elif annotation is int:
        flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
    elif annotation is float:
        flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
    elif annotation is str:
        flags.DEFINE_string(name, default, help_text, flag_values=flag_values)
    elif origin is Literal:
        flags.DEFINE_enum(name, default, [str(a) for a in args], help_text, flag_values=flag_values)
    elif origin is tuple and args == (str, Ellipsis):
        flags.DEFINE_list(name, list(default) if default is not None else None, help_text,
                          flag_values=flag_values)
    elif origin is tuple and args in ((int, int), (float, float)):
        flags.DEFINE(PairParser(args[0], square=args[0] is int), name, default, help_text,
                     flag_values=flag_values, serializer=PairSerializer())
    else:
        raise TypeError(f"setting {name!r} has type {annotation!r}, which has no flag type here")


def given(config_type: type, flag_values=flags.FLAGS) -> dict[str, Any]:
    """The settings of `config_type` given on the command line, by flat name, as the dataclasses take them."""
    values = {}
    for leaf in settings.leaves(config_type):
        flag = flag_values[leaf.name]
        if flag.present and leaf.name not in values:
            value = flag.value
            values[leaf.name] = tuple(value) if isinstance(value, list) else value
    return values


def parse(recipe, flag_values=flags.FLAGS):
    """`recipe` with every flag given on the command line applied (ValueError if one is invalid)."""
    return settings.replace(recipe, **given(type(recipe), flag_values))

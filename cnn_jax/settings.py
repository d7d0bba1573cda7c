"""Settings as frozen dataclasses: flat names, bookkeeping marks, and what identifies a run.

A setting is declared once: a field of a frozen dataclass (`cnn_jax.train.TrainConfig`,
`cnn_jax.data.DataConfig`, an experiment's own), documented by a line in the class docstring's
"Attributes:" section. Dataclasses nest (an experiment holds a DataConfig and a TrainConfig);
every leaf field has a flat name, its field name, which is also its command-line flag
(`cnn_jax.cli`). A name that several sections share (`seed`) is one setting that sets them all.

A field marked `bookkeeping` (logging, caches, where the data lies) does not change what a run
computes; every other field is part of the run's identity, which the workdir records at the first
start (`identity`). Rule for new settings: the field's default must reproduce the behaviour from
before the setting existed, so a record that lacks it is read as holding that default
(`absent_defaults`); a field whose default deliberately changes behaviour declares the old value
(`changed_default`).
"""
from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any, Iterator, Mapping

BOOKKEEPING = "bookkeeping"
NOT_A_FLAG = "not_a_flag"
ABSENT = "absent"


def changed_default(default, *, absent) -> Any:
    """A result-changing field whose default is not what runs did before it existed: a record without
    it is read as `absent` (the old behaviour), not as `default`."""
    return dataclasses.field(default=default, metadata={ABSENT: absent})


def bookkeeping(default, **kwargs) -> Any:
    """A field that does not change what a run computes (not part of its identity)."""
    return dataclasses.field(default=default, metadata={BOOKKEEPING: True}, **kwargs)


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One setting: its flat name, the path of fields that reaches it, and its declaration."""
    name: str
    path: tuple[str, ...]
    field: dataclasses.Field
    owner: type
    annotation: Any

    @property
    def bookkeeping(self) -> bool:
        return bool(self.field.metadata.get(BOOKKEEPING))

    @property
    def help(self) -> str:
        return attribute_docs(self.owner).get(self.name, "")


def leaves(config_type: type) -> Iterator[Leaf]:
    """Every leaf setting of the (nested) dataclass type, depth first in field order."""
    hints = typing.get_type_hints(config_type)
    for field in dataclasses.fields(config_type):
        annotation = hints[field.name]
        if dataclasses.is_dataclass(annotation):
            for leaf in leaves(annotation):
                yield dataclasses.replace(leaf, path=(field.name, *leaf.path))
        elif not field.metadata.get(NOT_A_FLAG):
            yield Leaf(field.name, (field.name,), field, config_type, annotation)


def flatten(config) -> dict[str, Any]:
    """The value of every leaf setting of `config`, by flat name (tuples as lists, as JSON has them)."""
    values = {}
    for leaf in leaves(type(config)):
        value = _json_ready(get(config, leaf.path))
        if leaf.name in values and values[leaf.name] != value:
            raise ValueError(f"setting {leaf.name!r} is shared by several sections, which must agree: "
                             f"{values[leaf.name]!r} and {value!r}")
        values[leaf.name] = value
    return values


def identity(config, extra: Mapping[str, Any] = ()) -> dict[str, Any]:
    """The settings that change what `config`'s run computes (no bookkeeping), plus `extra`."""
    kept = {leaf.name for leaf in leaves(type(config)) if not leaf.bookkeeping}
    values = {name: value for name, value in flatten(config).items() if name in kept}
    values.update({name: _json_ready(value) for name, value in dict(extra).items()})
    return values


def absent_defaults(config_type: type) -> dict[str, Any]:
    """What each setting means when an older record lacks it: its declared default, or for a
    `changed_default` field the value that reproduces the behaviour from before it existed."""
    values = {}
    for leaf in leaves(config_type):
        if ABSENT in leaf.field.metadata:
            values.setdefault(leaf.name, _json_ready(leaf.field.metadata[ABSENT]))
        elif leaf.field.default is not dataclasses.MISSING:
            values.setdefault(leaf.name, _json_ready(leaf.field.default))
    return values


def replace(config, **values):
    """`config` with the named leaf settings set (in every section that has the name); unknown names raise.

    Each dataclass is rebuilt once with all of its changes, so that settings validated together
    (a schedule and its warmup) are checked only in their final combination.
    """
    known = {}
    for leaf in leaves(type(config)):
        known.setdefault(leaf.name, []).append(leaf.path)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown settings {unknown}; known: {', '.join(sorted(known))}")
    changes: dict = {}
    for name, value in values.items():
        for path in known[name]:
            node = changes
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
    return _rebuild(config, changes)


def _rebuild(config, changes: dict):
    fields = {name: _rebuild(getattr(config, name), change) if isinstance(change, dict)
              and dataclasses.is_dataclass(getattr(config, name)) else change
              for name, change in changes.items()}
    return dataclasses.replace(config, **fields) if fields else config


def get(config, path: tuple[str, ...]):
    for name in path:
        config = getattr(config, name)
    return config


def _json_ready(value):
    if isinstance(value, tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _json_ready(v) for k, v in value.items()}
    return value


_ATTRIBUTE = re.compile(r"^(\s+)(\w+): (.*)$")


def attribute_docs(cls: type) -> dict[str, str]:
    """The "Attributes:" sections of `cls`'s docstring and its bases' (Google style), by attribute name."""
    docs = {}
    for klass in reversed(cls.__mro__):
        docs.update(_own_attribute_docs(klass))
    return docs


def _own_attribute_docs(cls: type) -> dict[str, str]:
    docs, lines = {}, (cls.__dict__.get("__doc__") or "").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Attributes:"), None)
    if start is None:
        return docs
    name, indent = None, None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        match = _ATTRIBUTE.match(line)
        if match and (indent is None or len(match.group(1)) == indent):
            indent, name = len(match.group(1)), match.group(2)
            docs[name] = match.group(3).strip()
        elif name is not None and indent is not None and len(line) - len(line.lstrip()) > indent:
            docs[name] += " " + line.strip()
        else:
            break
    return docs

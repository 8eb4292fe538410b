"""Read a profile's YAML as a person means it: YAML 1.2 numbers and booleans, no silent overrides.

PyYAML follows YAML 1.1, where `lr: 1e-3` is the string "1e-3" (its floats need a dot),
`backend: off` is the boolean false, `positions: 010` is 8 (octal) and `max_seconds: 1:30` is
90 (base 60), and a key written twice silently keeps the last value. This loader reads
scalars with the YAML 1.2 core schema instead (true/false only, 1e-3 a float, 010 ten) and
refuses a repeated key. Words like yes/no/on/off stay text, so the profile check can say
clearly what a setting expects (and accept them where it expects a switch).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from extract.errors import UserError

INT_TAG, FLOAT_TAG, BOOL_TAG = (f"tag:yaml.org,2002:{kind}" for kind in ("int", "float", "bool"))
_EXPONENT = r"(?:[eE][-+]?[0-9]+)"
_FLOAT = re.compile(
    rf"^(?:[-+]?(?:[0-9]+\.[0-9]*{_EXPONENT}?|\.[0-9]+{_EXPONENT}?|[0-9]+{_EXPONENT})"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_INT = re.compile(r"^(?:[-+]?[0-9]+|0x[0-9a-fA-F]+|0o[0-7]+)$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")


class ProfileLoader(yaml.SafeLoader):
    """SafeLoader with the YAML 1.2 core schema's scalars and no repeated keys."""

    yaml_implicit_resolvers: dict = {}

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise ConstructorError(
                    None, None, f"'{key}' is set twice (first on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _construct_int(loader: ProfileLoader, node: ScalarNode) -> int:
    text = loader.construct_scalar(node)
    return int(text, 0 if text[:2].lower() in ("0x", "0o") else 10)


for _tag, _pattern, _first in (
    (BOOL_TAG, _BOOL, list("tTfF")),
    (INT_TAG, _INT, list("-+0123456789")),
    (FLOAT_TAG, _FLOAT, list("-+.0123456789")),
    ("tag:yaml.org,2002:null", _NULL, ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:merge", re.compile(r"^<<$"), ["<"]),
):
    ProfileLoader.add_implicit_resolver(_tag, _pattern, _first)
ProfileLoader.add_constructor(INT_TAG, _construct_int)

_KINDS = {SequenceNode: "a list", ScalarNode: "a single value"}


def read_profile_yaml(path: Path) -> dict[str, Any]:
    """The profile file as a mapping, or one UserError line saying where it is not one."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the profile ({exc})") from None
    loader = ProfileLoader(text)
    try:
        node: Node | None = loader.get_single_node()
        if node is None:
            raise UserError(f"{path}: the profile is empty (it needs at least `modalities:`)")
        if not isinstance(node, MappingNode):
            raise UserError(
                f"{path}: line {node.start_mark.line + 1}: a profile must be a mapping of "
                f"settings (key: value), not {_KINDS.get(type(node), 'that')}"
            )
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise UserError(f"{path}: {_yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc})") from None
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    """'line L, column C: what is wrong', with the usual fix for a tab."""
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = exc.problem or exc.context or "not valid YAML"
    if "\\t" in problem or "\t" in problem:
        problem += " (indent with spaces: YAML does not allow tabs)"
    return f"{where}not valid YAML: {problem}"

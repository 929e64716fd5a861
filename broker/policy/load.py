"""Reading a policy: YAML composed into nodes (so every value keeps its line), validated by the
models of ``model.py``, and pydantic's errors turned into one ``PolicyError`` whose lines read
``policy.yaml:12: rules[0].max_ttl: bad duration 'forever': ...``.

File and line come first, as compilers print them (editors and CI logs jump to the place), then
the field path (operators grep for it). Every problem pydantic finds is listed, the first
``_MAX_SHOWN`` of them. ``read_yaml`` and ``validate`` serve other files of the policy room too
(``cases.py``'s expected decisions), with the same messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from access.broker.policy.cases import CaseFile
from access.broker.policy.fields import Located, type_name
from access.broker.policy.model import Policy, PolicyError, PolicyFile, Problem

__all__ = [
    "load_cases",
    "load_policy",
    "policy_from_data",
    "policy_from_text",
    "read_text",
    "read_yaml",
    "validate",
]

_MAX_SHOWN = 20
# libyaml's parser where PyYAML has it (a 44,000-line file: 1.1 s instead of 6.4 s); the
# constructor is the safe one either way, and both keep every node's line.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


def load_policy(path: Path | str) -> Policy:
    """Load and validate the YAML policy at ``path``.

    Raises:
        PolicyError: the file cannot be read, is not YAML, or is not a valid policy; the
            message names the file, the line and the field path.
    """
    return policy_from_text(read_text(path), source=str(path))


def load_cases(path: Path | str) -> tuple[CaseFile, tuple[int | None, ...]]:
    """Load a policy's tests (``cases.py``) and the line of each case.

    Raises:
        PolicyError: the file cannot be read, is not YAML, or is not a valid table of cases.
    """
    source = str(path)
    data, root = read_yaml(read_text(path), source)
    cases = validate(CaseFile, data if data is not None else {}, source=source, root=root)
    return cases, tuple(_line(root, ("cases", i)) for i in range(len(cases.cases)))


def read_text(path: Path | str) -> str:
    """The text of a policy-room file.

    Raises:
        PolicyError: the file cannot be read (or is not UTF-8).
    """
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc}") from exc


def policy_from_text(text: str, *, source: str) -> Policy:
    """Validate a policy's YAML ``text`` (``source`` names it in messages).

    Raises:
        PolicyError: not YAML, or not a valid policy.
    """
    data, root = read_yaml(text, source)
    return policy_from_data(data if data is not None else {}, source=source, root=root)


def read_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """Plain data and the composed root node (for lines) of YAML ``text``.

    Raises:
        PolicyError: not valid YAML (the message names the line).
    """
    # SafeLoader: tags such as !!python/object are refused, nothing is constructed but plain data.
    loader = _LOADER(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = source if mark is None else f"{source}:{mark.line + 1}"
        raise PolicyError(f"{where}: not valid YAML: {exc}") from exc
    finally:
        loader.dispose()
    return data, root


def policy_from_data(data: Any, *, source: str | None = None, root: yaml.Node | None = None) -> Policy:
    """Validate parsed YAML (or a dict built in code) into a ``Policy``.

    ``source`` (the file name) prefixes every message; ``root`` (the composed YAML) gives lines.

    Raises:
        PolicyError: the data is not a valid policy; the message names the offending path.
    """
    document = validate(PolicyFile, data, source=source, root=root)
    warnings = [Problem(_where(loc), message, _line(root, loc)) for loc, message in document.warnings()]
    return Policy.from_file(document, warnings)


def validate(model: type[M], data: Any, *, source: str | None, root: yaml.Node | None) -> M:
    """``data`` validated by ``model``; pydantic's errors in our words, with file and line.

    Raises:
        PolicyError: the data is not valid; one line per problem (``problems`` has them all).
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(error, root, model) for error in exc.errors(include_url=False)]
        lines = [problem.located(source) for problem in problems[:_MAX_SHOWN]]
        if len(problems) > _MAX_SHOWN:
            prefix = "" if source is None else f"{source}: "
            lines.append(f"{prefix}and {len(problems) - _MAX_SHOWN} more problem(s)")
        raise PolicyError("\n".join(lines), problems) from None


# ---------------------------------------------------------------- pydantic errors, in our words


def _problem(error: ErrorDetails, root: yaml.Node | None, model: type[BaseModel]) -> Problem:
    loc: Loc = tuple(error["loc"])
    # The line of the key itself for an unknown key, of the mapping that lacks it for a missing one.
    line = _line(root, loc)
    kind = error["type"]
    value = error.get("input")
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, Located):
        loc, message = (*loc, *cause.loc), cause.message
        line = _line(root, loc)
    elif kind in ("value_error", "assertion_error") and cause is not None:
        message = str(cause)
    elif kind == "missing":
        loc, message = loc[:-1], f"missing {loc[-1]!r}"
    elif kind == "extra_forbidden":
        allowed = list(getattr(_model_at(model, loc[:-1]), "model_fields", ()))
        loc, message = loc[:-1], f"unknown key {str(loc[-1])!r} (allowed: {', '.join(allowed)})"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        message = f"expected a mapping, got {type_name(value)}"
    elif kind in ("tuple_type", "list_type", "set_type", "frozen_set_type"):
        message = f"expected a list, got {type_name(value)}"
    elif kind == "string_type":
        message = f"expected a string, got {type_name(value)}"
    elif kind == "too_long":
        message = f"at most {error.get('ctx', {}).get('max_length')} items"
    elif kind == "too_short":
        message = f"at least {error.get('ctx', {}).get('min_length')} item(s)"
    else:
        message = error["msg"]
    return Problem(_where(loc), message, line)


def _where(loc: Loc) -> str:
    """``("rules", 0, "max_ttl")`` as ``rules[0].max_ttl``; the root is ``policy``."""
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    return text.removeprefix(".") or "policy"


def _line(root: yaml.Node | None, loc: Loc) -> int | None:
    """The line of the deepest node on ``loc`` (the parent, for a key that is missing)."""
    if root is None:
        return None
    node = root
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next(
                (
                    value
                    for key, value in node.value
                    if isinstance(key, yaml.ScalarNode) and key.value == part
                ),
                None,
            )
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node = child
    return int(node.start_mark.line) + 1


def _model_at(top: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model that validates the mapping at ``loc``, to list the keys it allows."""
    model: type[BaseModel] | None = top
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue  # an item of a list of models: the list's annotation named the model
        info = model.model_fields.get(part)
        model = None if info is None else _inner_model(info.annotation)
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None

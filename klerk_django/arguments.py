"""Check and encode the JSON arguments of jobs and actions.

Arguments are checked at enqueue time, in every mode, so that a value the
database would refuse (or silently change) is reported to the caller with
the argument that holds it, before any SQL runs.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Callable
from typing import Any

from .conf import settings
from .exceptions import ArgumentError

_SCALARS = (str, bool, int, float, type(None))

# MariaDB refuses JSON nested more than 31 levels deep; the stored form of a
# call, {"args": [...], "kwargs": {...}}, takes two of them.
MAX_NESTING = 29
STORED_NESTING = MAX_NESTING + 2
LARGEST_FLOAT = 1e16

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 200


def pack(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Return the stored form of call arguments, or raise ArgumentError."""
    for index, value in enumerate(args):
        check(value, f"args[{index}]")
    for key, value in kwargs.items():
        _check_text(key, key, f"The keyword argument name {key!r}")
        check(value, key)

    packed = {"args": list(args), "kwargs": dict(kwargs)}
    check_size(packed)
    return packed


def unpack(stored: Any) -> tuple[list[Any], dict[str, Any]]:
    """Return positional and keyword arguments from their stored form."""
    if isinstance(stored, str):
        stored = json.loads(stored)
    if not isinstance(stored, dict):
        raise ArgumentError(
            f"Stored arguments must be an object, found {type(stored).__name__}.",
            value=stored,
        )
    return list(stored.get("args", [])), dict(stored.get("kwargs", {}))


def check(value: Any, path: str) -> None:
    """Raise ArgumentError unless ``value`` round-trips through JSON."""
    _check(value, path, ())


def _check(value: Any, path: str, parents: tuple[int, ...]) -> None:
    if isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, float):
        _check_float(value, path)
    elif isinstance(value, _SCALARS):
        return
    elif isinstance(value, (list, dict)):
        _check_container(value, path, parents)
    else:
        raise ArgumentError(
            f"Argument {path!r} has type {type(value).__name__!r}, which is not "
            "JSON; pass str, int, float, bool, None, list or dict (convert "
            "dates, UUIDs and decimals to strings yourself).",
            path,
            value,
        )


def _check_float(value: float, path: str) -> None:
    if not math.isfinite(value):
        raise ArgumentError(
            f"Argument {path!r} is {value!r}; JSON has no NaN or infinity.",
            path,
            value,
        )
    # JSON writes such floats with an exponent; PostgreSQL keeps them as
    # decimal integers, which come back as ints of another value.
    if abs(value) >= LARGEST_FLOAT:
        raise ArgumentError(
            f"Argument {path!r} is the float {value!r}; floats of 1e16 or more "
            "do not come back from every database unchanged, so pass an int "
            "or a string.",
            path,
            value,
        )


def _check_container(
    value: list[Any] | dict[Any, Any], path: str, parents: tuple[int, ...]
) -> None:
    if id(value) in parents:
        raise ArgumentError(
            f"Argument {path!r} contains itself; JSON cannot store a cycle.",
            path,
            value,
        )
    parents = (*parents, id(value))
    if len(parents) > MAX_NESTING:
        raise ArgumentError(
            f"Argument {path!r} is nested too deeply: lists and objects may "
            f"nest at most {MAX_NESTING} levels in an argument.",
            path,
            value,
        )

    if isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]", parents)
        return
    for key, item in value.items():
        if not isinstance(key, str):
            raise ArgumentError(
                f"Argument {path!r} has the key {key!r} of type "
                f"{type(key).__name__!r}; JSON object keys must be strings.",
                path,
                value,
            )
        _check_text(key, f"{path} key")
        _check(item, f"{path}[{key!r}]", parents)


def _check_text(value: str, path: str, subject: str = "") -> None:
    subject = subject or f"Argument {path!r}"
    if "\x00" in value:
        raise ArgumentError(
            f"{subject} contains a NUL character (\\u0000), which databases "
            "refuse in text and JSON.",
            path,
            value,
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ArgumentError(
            f"{subject} contains a lone surrogate, which is not valid UTF-8 "
            "and which databases refuse.",
            path,
            value,
        ) from None


def check_size(packed: dict[str, Any]) -> None:
    """Raise ArgumentError when the encoded arguments pass the size limit."""
    limit = settings.MAX_ARGUMENTS_BYTES
    if limit is None:
        return

    size = len(json.dumps(packed, separators=(",", ":")).encode())
    if size > limit:
        raise ArgumentError(
            f"Arguments take {size} bytes as JSON, more than "
            f"KLERK_MAX_ARGUMENTS_BYTES = {limit}; store large data elsewhere "
            "and pass its key.",
            value=size,
        )


def scrub(value: Any, default: Callable[[Any], Any] = repr) -> Any:
    """Return ``value`` as JSON that any database accepts.

    Results, inputs and error texts come from user code after the fact;
    refusing them would leave the job or command unrecorded, so NUL
    characters and lone surrogates are escaped, NaN and infinities become
    text, and other values become ``default(value)`` (their ``repr`` unless
    told otherwise). Cycles, and containers nested deeper than every
    database accepts, are replaced by a short ``repr``.
    """
    return _scrub(value, default, ())


def _scrub(value: Any, default: Callable[[Any], Any], parents: tuple[int, ...]) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if not isinstance(value, (list, tuple, dict)):
        return _scrub(_default(value, default), repr, parents)

    if id(value) in parents or len(parents) >= STORED_NESTING - 1:
        return scrub_text(_short.repr(value))
    parents = (*parents, id(value))
    if isinstance(value, dict):
        return {
            _scrub_key(key): _scrub(item, default, parents)
            for key, item in value.items()
        }
    return [_scrub(item, default, parents) for item in value]


def _default(value: Any, default: Callable[[Any], Any]) -> Any:
    converted = default(value)
    if converted is value or isinstance(converted, (list, tuple, dict)):
        return repr(value)
    return converted


def _scrub_key(key: Any) -> str:
    if isinstance(key, str):
        return scrub_text(key)
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)
    return scrub_text(_short.repr(key))


def scrub_text(text: str) -> str:
    """Return ``text`` with NUL characters and lone surrogates escaped."""
    text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text

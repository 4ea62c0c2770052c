"""What ``train.py`` says when a run cannot start: smallmed's own message first and alone.

jsonargparse wraps an error raised while the CLI builds a class (``image_size must be at least 8``)
in "Does not validate against any of the Union subtypes ... Expected a <class 'NoneType'>", and a
typo in a config file arrives as "Option 'lrr' is not accepted" after 50 lines of usage. Here the
wrapper is peeled off, a typo gets the key's full name, where it was given (the config file or the
command line) and the closest valid key, and the full trace stays behind ``--traceback``.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

UNION_WRAPPER = "Does not validate against any of the Union subtypes"
NONE_TYPE_LINE = "Expected a <class 'NoneType'>"


def _bullets(text: str) -> list[str]:
    """The ``- ...`` items under ``Errors:``, each with its indented continuation lines, NoneType's left out."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Errors:"), None)
    if start is None:
        return []
    items: list[list[str]] = []
    indent = None
    for line in lines[start + 1 :]:
        stripped = line.strip()
        if not stripped:
            continue
        depth = len(line) - len(line.lstrip())
        if stripped.startswith("- ") and (indent is None or depth <= indent):
            indent = depth
            items.append([stripped[2:]])
        elif indent is not None and depth > indent and items:
            items[-1].append(stripped)
        else:
            break
    return [" ".join(item) for item in items if item[0] != NONE_TYPE_LINE]


def class_arguments(class_path: str) -> list[str]:
    """Constructor arguments of a class, through its ``**kwargs`` chain (empty for an unknown class)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(__import__(module, fromlist=[name]), name)
    except (ImportError, AttributeError, ValueError):
        return []
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def given_value(args: Sequence[str] | dict[str, Any] | None, section: str, key: str) -> tuple[Any, str] | None:
    """The value the user gave for ``<section>.init_args.<key>`` (or ``<section>.<key>``) and where: a
    config file's name, "on the command line" or "in the config"; the last one given wins."""
    def in_config(config: Any) -> Any:
        node = config.get(section) if isinstance(config, dict) else None
        return ((node.get("init_args") or {}).get(key, node.get(key))) if isinstance(node, dict) else None

    if isinstance(args, dict):
        value = in_config(args)
        return (value, "in the config") if value is not None else None
    words = list(args or [])
    found = None
    for i, word in enumerate(words):
        flag, _, inline = word.partition("=")
        value_text = inline or (words[i + 1] if i + 1 < len(words) else None)
        if flag == "--config" and value_text:
            try:
                value = in_config(yaml.safe_load(Path(value_text).read_text()) or {})
            except (OSError, yaml.YAMLError):
                continue
            if value is not None:
                found = (value, f"in {value_text}")
        elif flag in (f"--{section}.init_args.{key}", f"--{section}.{key}") and value_text is not None:
            found = (yaml.safe_load(value_text), "on the command line")
    return found


def _where(section: str, key: str, args: Sequence[str] | dict[str, Any] | None) -> str:
    """Where the user gave ``section.key``: a config file's name, or the command line."""
    found = given_value(args, section, key)
    return found[1] if found else "in the config"


def _explain_unknown_option(item: str, section: str | None, args) -> str | None:
    found = re.search(r"class_path '([\w.]+)'.*Option '(\w+)' is not accepted", item)
    if not found:
        return None
    class_path, key = found.groups()
    section = section or "model"
    known = class_arguments(class_path)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else f" Its options: {', '.join(known)}."
    return f"{section}.init_args.{key} ({_where(section, key, args)}): {class_path.rsplit('.', 1)[-1]} has no option '{key}'.{hint}"


def explain(err: BaseException, args: Sequence[str] | dict[str, Any] | None = None) -> str:
    """A short message for a run that could not start (see the module docstring)."""
    text = str(err).strip()
    unrecognized = re.match(r"(?i)unrecognized arguments: (.*)", text)
    if unrecognized:
        options = getattr(err, "smallmed_options", [])
        hints = []
        for flag in (w.split("=", 1)[0] for w in unrecognized.group(1).split() if w.startswith("--")):
            close = difflib.get_close_matches(flag, options, n=1, cutoff=0.75)
            hints.append(f"{flag} (did you mean {close[0]}?)" if close else flag)
        return f"unknown option(s): {', '.join(hints)}. HINT: `train.py --help` lists every option"
    if UNION_WRAPPER not in text:
        return text if isinstance(err, ValueError) or not text else f"{type(err).__name__}: {text}"
    section = re.search(r'Parser key "(\w+)"', text)
    section_name = section.group(1) if section else None
    messages = []
    for item in _bullets(text):
        unknown = _explain_unknown_option(item, section_name, args)
        messages.append(unknown or re.sub(r"^Problem with given class_path '[\w.]+': ", "", item))
    return "; ".join(messages) or text.splitlines()[0]

"""The argument parser of autosam's commands (:class:`Parser`: strict flag spellings, ``did you
mean ...?``) and the method option flags (``--name value``) a command passes on to the method."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
from typing import Iterable, NoReturn

from autosam.cli.arguments import fold_value
from autosam.plugins import get_method
from autosam.results_folder import default_method_of, resolve_auto_method


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` for autosam's commands, strict about flag spellings.

    - No prefix abbreviations (``allow_abbrev=False``): ``--dev`` is not ``--device``.
    - A single-dash token is never split into a one-letter flag and a word: ``-device cuda`` is not
      ``-d evice`` (argparse's default), it is ``-device`` or an unknown flag. A one-letter flag with
      an attached value that does not start with a letter still works (``-f0``, ``-np4`` is a flag).
    - An unknown flag stops the command (exit 2) with ``did you mean ...?`` naming the closest
      spelling this command knows (difflib, ignoring dashes, ``_`` vs ``-`` and case).
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._argv: list[str] = []
        self.add_argument("--verbose", action="store_true",
                          help="on an error, also print the Python traceback (without it: one line naming the file "
                               "and the problem)")

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self._argv, namespace)

    def error(self, message: str) -> NoReturn:
        # argparse reports a missing required argument before unknown flags; a misspelt flag is
        # often the reason the argument is missing (-djfil x), so name it with its suggestion too
        if "unrecognized arguments" not in message:
            hints = [f"{t} (did you mean {h}?)" for t in self._unknown_flags()
                     if (h := suggest_flag(t, self.flag_spellings()))]
            if hints:
                message += "; unrecognized arguments: " + " ".join(hints)
        super().error(message)

    def _unknown_flags(self) -> list[str]:
        out = []
        for token in self._argv:
            if token == "--":
                break
            if token.startswith("-") and len(token) > 1 and not _is_number(token):
                parsed = self._parse_optional(token)
                if parsed is not None and not isinstance(parsed, list) and parsed[0] is None:
                    out.append(token)
        return out

    def _get_option_tuples(self, option_string):
        tuples = super()._get_option_tuples(option_string)
        if len(option_string) > 2 and option_string[0] in self.prefix_chars and option_string[1] not in self.prefix_chars:
            attached = option_string[2:]
            return [t for t in tuples if t[1] == option_string[:2] and not attached[0].isalpha()]
        return tuples

    def flag_spellings(self) -> list[str]:
        return [s for action in self._actions for s in action.option_strings]

    def parse_args(self, args=None, namespace=None):
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            self.fail_unknown(extra)
        return parsed

    def fail_unknown(self, tokens: Iterable[str], extra_known: Iterable[str] = ()) -> NoReturn:
        """Exit 2 with argparse's ``unrecognized arguments`` plus a suggestion per unknown flag."""
        known = self.flag_spellings() + list(extra_known)
        shown = []
        for token in tokens:
            hint = suggest_flag(token, known) if token.startswith("-") else None
            shown.append(f"{token} (did you mean {hint}?)" if hint else token)
        self.error("unrecognized arguments: " + " ".join(shown))


def _flag_key(flag: str) -> str:
    return flag.split("=", 1)[0].lstrip("-").replace("-", "_").lower()


def suggest_flag(token: str, known: Iterable[str]) -> str | None:
    """The spelling in ``known`` closest to ``token`` (``-devcie`` -> ``-device``), or None."""
    by_key: dict[str, list[str]] = {}
    for flag in known:
        by_key.setdefault(_flag_key(flag), []).append(flag)
    key = _flag_key(token)
    if not key:
        return None
    match = difflib.get_close_matches(key, list(by_key), n=1, cutoff=0.6)
    if not match:
        return None
    spellings = by_key[match[0]]
    dashes = len(token) - len(token.lstrip("-"))
    same = [s for s in spellings if len(s) - len(s.lstrip("-")) == dashes]
    return " / ".join(same or spellings)


def method_overrides_from(parser: Parser, extra: list[str], option_names: Iterable[str] | None) -> dict:
    """Method option flags (``--name value``) among the tokens ``parse_known_args`` left over.

    A token that is not a method option exits with argparse's error (code 2) and the closest
    spelling among the command's flags and the method's options: a single-dash token is never a
    method option (``-devcie`` -> did you mean ``-device``), nor is a misspelt command flag
    (``--epoch`` -> ``--epochs``). ``option_names`` None (the method could not be looked up here)
    keeps the ``--name`` tokens that resemble no command flag; the method then rejects unknown
    names itself.
    """
    options = None if option_names is None else {n.replace("-", "_") for n in option_names}
    option_flags = [f"--{n.replace('_', '-')}" for n in (options or ())]
    unknown = []
    for i, token in enumerate(extra):
        if not token.startswith("-") or _is_number(token):
            continue
        if not token.startswith("--") or len(token) <= 2:
            unknown.append(token)
        elif options is not None and _flag_key(token) not in options:
            unknown.append(token)
        elif options is None and suggest_flag(token, parser.flag_spellings()):
            unknown.append(token)
    if unknown:
        parser.fail_unknown(unknown, option_flags)
    try:
        return parse_method_overrides(extra)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))


def method_option_names(method_name: str, dataset=None, configuration: str | None = None,
                        plans_name: str | None = None, auto: str = "best") -> list[str] | None:
    """Option names of ``method_name``, or None when it cannot be resolved here (the command then
    reports the problem itself). ``auto`` is resolved as prediction does (``auto="best"``: the
    winner of find_best_configuration, else the plans' default) or as training does
    (``auto="plans"``: the plans' default method)."""
    try:
        if method_name == "auto":
            plans_name = plans_name or "autosamPlans"
            method_name = (default_method_of(dataset, plans_name, configuration) if auto == "plans"
                           else resolve_auto_method(dataset, plans_name, configuration))
        return [f.name for f in dataclasses.fields(get_method(method_name).Options)]
    except Exception:
        return None


def parse_method_overrides(extra: list[str]) -> dict[str, str | list[str]]:
    """Method option flags left over by ``argparse.parse_known_args`` -> ``{option: value}``.

    ``--backbone litemedsam --lr 3e-4 --use-lora --patch 64 64 64 --no-mirror=1`` gives
    ``{"backbone": "litemedsam", "lr": "3e-4", "use_lora": "true", "patch": ["64", "64", "64"],
    "no_mirror": "1"}``: a flag without a value means ``true``; several values give a list. The
    values stay strings; :func:`autosam.method.build_options` converts them to the option
    types and rejects unknown names with the list of the method's options.
    """
    out: dict[str, str | list[str]] = {}
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or len(token) <= 2:
            raise argparse.ArgumentTypeError(f"unexpected argument {token!r}; method options look like --name value")
        name, eq, value = token[2:].partition("=")
        key = name.replace("-", "_")
        if eq:
            out[key] = value
            i += 1
            continue
        values = []
        i += 1
        while i < len(extra) and not (extra[i].startswith("--") and len(extra[i]) > 2 and not _is_number(extra[i])):
            values.append(extra[i])
            i += 1
        out[key] = "true" if not values else values[0] if len(values) == 1 else values
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def parse_with_method_overrides(parser: "Parser", argv: list[str] | None, option_names=lambda args: None):
    """``parser.parse_known_args`` for prediction commands: returns ``(args, method overrides,
    folds)``. The leftover ``--name value`` flags are method options, checked by
    :func:`method_overrides_from` against ``option_names(args)`` (the method's option names, or
    None when unknown here); ``args.f`` is read by :func:`fold_value` (``None`` when not given)."""
    args, extra = parser.parse_known_args(argv)
    overrides = method_overrides_from(parser, extra, option_names(args)) if extra else {}
    try:
        folds = [fold_value(f) for f in args.f] if args.f else None
    except ValueError as exc:
        parser.error(f"argument -f: {exc}")
    return args, overrides, folds

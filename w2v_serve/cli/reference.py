"""The CLI reference, docs/cli.md, generated from the ``w2v`` argparse parsers.

    python -m w2v_serve.cli.reference                   # to stdout
    python -m w2v_serve.cli.reference --out docs/cli.md # what `make cli-docs` runs

Every subcommand (nested ones too) with its usage, description, arguments, flags, their help,
defaults and choices, then the environment variables the code reads (found in the source of
``w2v_serve``, ``training`` and ``export``). tests/test_cli_reference.py fails when docs/cli.md
differs from this output.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Optional

PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent
SOURCES = ("w2v_serve", "training", "export")

# What each environment variable does; one found in the source without an entry here is listed
# with the files that read it.
ENVIRONMENT = {
    "W2V_AUTH_TOKEN": "`w2v serve`: the bearer token clients must send (as `--auth-token`); "
                      "`w2v stream`: the token to send (as `--token`). A flag wins over the variable.",
    "W2V_NO_PROGRESS": "`w2v transcribe`: set to any non-empty value to hide the progress bar "
                       "(it is shown only when stderr is a terminal).",
    "W2V_TRITONSERVER": "the `tritonserver` binary to run (`w2v triton`, `w2v serve --backend triton`); "
                        "default: the one in the `nvidia-pytriton` wheel.",
    "W2V_TRITON_LOG": "`w2v serve --backend triton`: a file for the started tritonserver's log.",
    "XDG_CACHE_HOME": "the cache root (default `~/.cache`): `w2v/` under it holds the TensorRT engine cache, "
                      "OpenVINO's compiled-model cache and the assembled Triton backend folder.",
    "IRSTLM": "`w2v lm build`: the IRSTLM installation to use (default: Debian's `/usr/lib/irstlm`).",
    "WORLD_SIZE": "`w2v pretrain` / `w2v finetune` under torchrun: the number of processes (set by torchrun).",
    "RANK": "`w2v pretrain` / `w2v finetune` under torchrun: this process's rank (set by torchrun).",
    "LOCAL_RANK": "`w2v pretrain` / `w2v finetune` under torchrun: this process's device index (set by torchrun).",
}
# Read only to pass them on to a child process, extended.
_PASSED_THROUGH = {"PATH", "LD_LIBRARY_PATH", "PYTHONPATH"}

_READS = [re.compile(p) for p in (r"os\.environ\.get\(\s*[\"'](\w+)[\"']", r"os\.environ\[\s*[\"'](\w+)[\"']\s*\]",
                                  r"os\.getenv\(\s*[\"'](\w+)[\"']")]
_CONSTANT = re.compile(r"^(\w+_ENV)\s*=\s*[\"'](\w+)[\"']", re.M)


def environment_variables(root: Path = PACKAGE_ROOT) -> dict[str, list[str]]:
    """Variable -> the source files (relative paths) that read it."""
    found: dict[str, set[str]] = {}
    for package in SOURCES:
        for path in sorted((root / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            names = {m.group(1) for rx in _READS for m in rx.finditer(text)}
            for constant, value in _CONSTANT.findall(text):
                if re.search(rf"os\.environ\.get\(\s*{constant}\b|os\.environ\[\s*{constant}\s*\]", text):
                    names.add(value)
            for name in names - _PASSED_THROUGH:
                found.setdefault(name, set()).add(path.relative_to(root).as_posix())
    return {k: sorted(v) for k, v in sorted(found.items())}


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _relative(value: object) -> object:
    """Defaults under the project root are shown relative to it (the page does not name a machine)."""
    if isinstance(value, str) and value.startswith(str(PACKAGE_ROOT) + os.sep):
        return os.path.relpath(value, PACKAGE_ROOT)
    return value


def _default(action: argparse.Action) -> str:
    value = action.default
    if value is None or value is argparse.SUPPRESS or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
        return ""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return ""
    if isinstance(value, (list, tuple)) and not value:
        return ""
    return f"`{_relative(value)}`"


def _name(action: argparse.Action) -> str:
    if action.option_strings:
        flags = ", ".join(f"`{s}`" for s in action.option_strings)
        if action.nargs == 0:
            return flags
        metavar = action.metavar or (action.dest.upper() if not action.choices else None)
        if action.choices and not action.metavar:
            metavar = "{" + ",".join(str(c) for c in action.choices) + "}"
        if isinstance(metavar, tuple):
            metavar = " ".join(metavar)
        suffix = {"?": f" [{metavar}]", "*": f" [{metavar} ...]", "+": f" {metavar} [...]"}.get(action.nargs, f" {metavar}")
        return f"{flags} `{suffix.strip()}`"
    metavar = action.metavar or action.dest
    return f"`{metavar}`" + (" ..." if action.nargs in ("*", "+") else "")


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        params = {**vars(action), "prog": "", "default": _relative(action.default)}
        if action.choices is not None:
            params["choices"] = ", ".join(map(str, action.choices))
        try:
            text = text % params
        except (KeyError, TypeError, ValueError):
            pass
    extras = []
    if action.choices and action.option_strings and action.metavar:
        extras.append("one of " + ", ".join(f"`{c}`" for c in action.choices))
    if isinstance(action, argparse._AppendAction) and "repeatable" not in text:
        extras.append("repeatable")
    if action.required and action.option_strings:
        extras.append("required")
    return _cell("; ".join([t for t in [text] + extras if t]))


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:  # an alias
                    continue
                seen.add(id(sub))
                yield name, helps.get(name, ""), sub


def _section(path: list[str], summary: str, parser: argparse.ArgumentParser, lines: list[str]) -> None:
    title = " ".join(path)
    lines += [f"{'#' * min(len(path) + 1, 4)} `{title}`", ""]
    if summary:
        lines += [_cell(summary), ""]
    usage = " ".join(parser.format_usage().split())
    usage = usage.removeprefix("usage: ")
    lines += ["```", _wrap_usage(usage), "```", ""]
    if parser.description and parser.description != summary:
        lines += [" ".join(parser.description.split()), ""]
    rows = []
    for group in parser._action_groups:
        for action in group._group_actions:
            if isinstance(action, argparse._SubParsersAction) or action.help is argparse.SUPPRESS:
                continue
            rows.append(f"| {_name(action)} | {_help(action)} | {_default(action)} |")
    if rows:
        lines += ["| argument | meaning | default |", "|---|---|---|", *rows, ""]
    children = list(_subparsers(parser))
    if children:
        lines += ["Subcommands: " + ", ".join(f"[`{title} {n}`](#{_anchor(title + ' ' + n)})" for n, _, _ in children), ""]
    if parser.epilog:
        lines += [" ".join(parser.epilog.split()), ""]
    for name, help_text, sub in children:
        _section(path + [name], help_text, sub, lines)


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def _wrap_usage(usage: str, width: int = 100) -> str:
    out, line = [], ""
    for word in re.findall(r"\[[^\[\]]*(?:\[[^\[\]]*\][^\[\]]*)*\]|\S+", usage):
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = "    " + word
        else:
            line = f"{line} {word}" if line else word
    out.append(line)
    return "\n".join(out)


def render() -> str:
    from w2v_serve.cli import build_parser

    parser = build_parser()
    parser.prog = "w2v"
    lines = [
        "# CLI reference",
        "",
        "<!-- Generated by `make cli-docs` (python -m w2v_serve.cli.reference --out docs/cli.md) "
        "from the argparse parsers; do not edit by hand. -->",
        "",
        "[← README](../README.md)",
        "",
        "Every `w2v` subcommand and flag, as `w2v COMMAND --help` prints them, and the environment "
        "variables the code reads. An empty default is none (or off, for a switch).",
        "",
        "Commands: " + ", ".join(f"[`{n}`](#{_anchor('w2v ' + n)})" for n, _, _ in _subparsers(parser)),
        "",
    ]
    _section(["w2v"], "", parser, lines)
    lines += ["## Environment variables", "", "| variable | meaning | read in |", "|---|---|---|"]
    for name, files in environment_variables().items():
        meaning = ENVIRONMENT.get(name, "")
        lines.append(f"| `{name}` | {_cell(meaning)} | {', '.join(f'`{f}`' for f in files)} |")
    lines.append("")
    return "\n".join(lines)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m w2v_serve.cli.reference",
                                     description="Write the w2v CLI reference (Markdown) from the argparse parsers.")
    parser.add_argument("--out", metavar="FILE", help="write here (atomically) instead of to stdout")
    args = parser.parse_args(argv)
    text = render()
    if args.out:
        _write_atomically(Path(args.out), text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

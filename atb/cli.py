"""The one configuration mechanism: a typed dataclass per job, filled from the command line by fire.

`run_cli(Config, run)` exposes the dataclass fields as flags, rejects unknown flags with the list of valid
ones, coerces values to the annotated types, and turns expected user errors (bad arch, missing file,
existing output) into one clear line on stderr and exit status 2, never a traceback. A flag's `--help` line
is the `# comment` after its field. fire reads `a,b` as a tuple and a JSON object as a dict: a `list[...]`
field takes either (or a comma-separated string) and a `str` field gets the text back, JSON as JSON.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import json
import os
import signal
import subprocess
import sys
import time
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

import fire

C = TypeVar("C")

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, KeyError)


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _coerce(name, value, args[0])
    if origin is list:
        items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (tuple, list)) \
            else [value]
        items = [v.strip() if isinstance(v, str) else v for v in items]
        return [_coerce(name, v, args[0] if args else str) for v in items if v != ""]
    if annotation is bool:
        if isinstance(value, str):
            if value.lower() in {"1", "true", "yes"}:
                return True
            if value.lower() in {"0", "false", "no"}:
                return False
            raise ValueError(f"--{name} expects true/false, got {value!r}")
        return bool(value)
    if annotation in (int, float):
        try:
            return annotation(value)
        except (TypeError, ValueError):
            raise ValueError(f"--{name} expects {annotation.__name__}, got {value!r}") from None
    if annotation is str:
        if isinstance(value, (dict, list)):
            return json.dumps(value)
        if isinstance(value, tuple):
            return ",".join(_coerce(name, v, str) for v in value)
        return str(value)
    return value


def build_config(cls: type[C], values: dict[str, Any]) -> C:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown option(s) {['--' + u for u in unknown]}; valid options: "
                         f"{', '.join('--' + f for f in fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})


def run_cli(cls: type[C], run: Callable[[C], Any], prog: str | None = None) -> None:
    """One job, one dataclass: `python tools/x.py --field value ...`."""
    prog = prog or Path(sys.argv[0]).stem
    fire.Fire(_entry(cls, run, prog, _wants_help()), name=prog)


def run_subcommands(commands: dict[str, tuple[type, Callable[[Any], Any]]], prog: str | None = None) -> None:
    """Several related jobs in one tool: `python tools/x.py <command> --field value ...`."""
    prog = prog or Path(sys.argv[0]).stem
    help_only = _wants_help()
    fire.Fire({name: _entry(cls, run, f"{prog} {name}", help_only) for name, (cls, run) in commands.items()},
              name=prog)


def _wants_help() -> bool:
    return any(arg in ("--help", "-h") for arg in sys.argv[1:])


def _entry(cls: type[C], run: Callable[[C], Any], prog: str, help_only: bool = False) -> Callable[..., None]:
    def entry(**kwargs: Any) -> None:
        try:
            run(build_config(cls, kwargs))
        except PermissionError as err:
            _user_error(prog, f"cannot write {err.filename or err}: permission denied; choose a writable "
                              "--out_dir or fix its permissions")
        except USER_ERRORS as err:
            _user_error(prog, err.args[0] if isinstance(err, KeyError) and err.args else err)
        if "torch.distributed" in sys.modules:  # a finished multi-rank job: see exit_after_success
            # imported here so that a tool's input errors come without importing torch
            from atb.train.distributed import exit_after_success

            exit_after_success()

    factories = {f.name: f.default_factory for f in dataclasses.fields(cls) if f.default_factory is not dataclasses.MISSING}
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY,
                        default=factories[p.name]() if p.name in factories else p.default)
              for p in inspect.signature(cls).parameters.values()]
    # fire would run the job with the flags it knows and only then complain about the others; taking them
    # all lets build_config reject a mistyped flag before anything runs
    if not help_only:  # (with **kwargs in the signature fire would take --help for a flag)
        params.append(inspect.Parameter("unknown_flags", inspect.Parameter.VAR_KEYWORD))
    entry.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    # fire shows a Google-style "Args:" section of the docstring under each flag
    entry.__doc__ = (cls.__doc__ or "") + "\n\nArgs:\n" + "".join(
        f"    {name}: {text}\n" for name, text in field_help(cls).items())
    return entry


def field_help(cls: type) -> dict[str, str]:
    """Each field's one-line help: the `# comment` after it in the class body (base classes included)."""
    helps: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass) and klass is not object:
            helps.update(_field_comments(klass))
    return {f.name: helps.get(f.name, "") for f in dataclasses.fields(cls)}


@functools.cache
def _field_comments(cls: type) -> dict[str, str]:
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments: dict[str, str] = {}
    field_name = None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and field_name is None:
            field_name = tok.string
        elif tok.type == tokenize.COMMENT and field_name is not None:
            comments[field_name] = tok.string.lstrip("#").strip()
        if tok.type in (tokenize.NEWLINE, tokenize.NL):
            field_name = None
    return {name: text for name, text in comments.items() if name in cls.__dataclass_fields__}


def _user_error(prog: str, message: Any) -> None:
    """One line on stderr, exit 2. Under a launcher every rank reads the same inputs, so rank 0 reports and
    the others wait for it: it reaches the same error and the launcher ends them, with the same code and
    no second message, instead of rank 0 dying in a collective that this rank left."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1 and rank != 0:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(2))
        time.sleep(WAIT_FOR_RANK0_S)  # rank 0 did not fail the same way: report this rank's own error
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


WAIT_FOR_RANK0_S = 20.0


def git_hash(cwd: str | Path | None = None) -> str:
    """The code version a run used; 'unknown' outside a git checkout. A dirty tree is marked '+dirty'."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def config_record(cfg: Any) -> dict[str, Any]:
    """The resolved config as JSON-able data, with the git hash, for a run directory."""
    data = dataclasses.asdict(cfg)
    return {"config": data, "git": git_hash(), "argv": sys.argv}

"""The one configuration mechanism: a typed dataclass per job, filled from the command line by fire.

`run_cli(Config, run)` exposes the dataclass fields as flags (fire shows them in `--help`), rejects unknown
flags with the list of valid ones, coerces values to the annotated types, and turns expected user errors
(bad arch, missing file, existing output) into one clear line on stderr and exit status 2, never a
traceback.
"""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
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
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _coerce(name, value, args[0])
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
        return str(value)
    if origin in (list, tuple) and isinstance(value, (str, int, float)):
        items = [v for v in str(value).split(",") if v] if isinstance(value, str) else [value]
        return [_coerce(name, v, args[0]) if args else v for v in items]
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
            from atb.train.distributed import exit_after_success

            exit_after_success()

    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in inspect.signature(cls).parameters.values()]
    # fire would run the job with the flags it knows and only then complain about the others; taking them
    # all lets build_config reject a mistyped flag before anything runs
    if not help_only:  # (with **kwargs in the signature fire would take --help for a flag)
        params.append(inspect.Parameter("unknown_flags", inspect.Parameter.VAR_KEYWORD))
    entry.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    entry.__doc__ = cls.__doc__
    return entry


def _user_error(prog: str, message: Any) -> None:
    """One line on stderr, exit 2. Under a launcher every rank reads the same inputs, so rank 0 reports and
    the others wait for it: it reaches the same error and the launcher ends them, with the same code and
    no second message, instead of rank 0 dying in a collective that this rank left."""
    import os
    import signal
    import time

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

"""Jobs that read a SuperPLM use the data it was trained on: corpus, dev split, seed, seq_len, tokenizer.

Pre-training records them with every checkpoint (and the SuperPLM folder keeps that record in
`supernet.json`). Search and develop leave these flags unset by default and take the recorded values, so
candidates are scored on the run's own held-out blocks; a flag the user gives wins, and the log says so.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from atb.data.corpus import DEMO


def corpus_parts(corpus: str | list[str]) -> list[str]:
    """A corpus flag or record as a list (records written before --corpus took a list hold one string)."""
    return [c for c in (corpus.split(",") if isinstance(corpus, str) else corpus) if c]


def absolute_corpus(corpus: str | list[str]) -> list[str]:
    """`corpus` with each path made absolute, so the record still names it from another directory."""
    return [c if c == DEMO else str(Path(c).resolve()) for c in corpus_parts(corpus)]


def missing_corpus_parts(corpus: str | list[str]) -> list[str]:
    return [c for c in corpus_parts(corpus) if c != DEMO and not Path(c).exists()]


def _comparable(flag: str, value: Any) -> Any:
    return absolute_corpus(value) if flag == "corpus" else value


def adopt_recorded_data(cfg: Any, meta: dict[str, Any], fields: dict[str, tuple[str, Any]], source: str,
                        prog: str, announce: bool = True, need_corpus: bool = True) -> None:
    """Fill each of `cfg`'s data flags left None from the SuperPLM record `meta`.

    `fields` maps flag -> (record key, value when the record lacks it). An explicit flag that differs from
    the record is kept and reported; a recorded corpus that no longer exists is an error naming it.
    """
    for flag, (key, fallback) in fields.items():
        given, recorded = getattr(cfg, flag), meta.get(key)
        if flag == "corpus" and recorded is not None:
            recorded = corpus_parts(recorded)
        if given is None:
            setattr(cfg, flag, recorded if recorded is not None else fallback)
            if flag == "corpus" and recorded is not None and need_corpus and missing_corpus_parts(recorded):
                raise FileNotFoundError(
                    f"the SuperPLM {source} was trained on corpus {recorded}, which no longer exists "
                    f"({', '.join(missing_corpus_parts(recorded))}); pass --corpus <path> with the same text, "
                    "so that its dev split stays held out")
        elif recorded is not None and _comparable(flag, given) != recorded and announce:
            print(f"{prog}: --{flag} {given} overrides the SuperPLM's recorded {key} {recorded} ({source})",
                  file=sys.stderr)

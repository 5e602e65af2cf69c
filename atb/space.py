"""Architectures and search spaces.

An `Arch` names one homogeneous BERT (every layer the same, as in the paper). A `SearchSpace` says which
archs one SuperPLM holds; every arch of it is a sub-network of `space.largest()`. Spaces are plain
YAML/JSON specs so a user can define their own; the paper's two spaces ship as presets.

Attention heads are sliced *per head*: a sub-arch with `heads` heads of size `qkv / heads` uses the first
`heads` heads of the supernet and the first `qkv / heads` dims of each. When the head size is fixed (the
MLM space) that is simply the leading block; when heads are fixed and qkv varies (the KD space) it is the
paper's per-head slicing, which keeps every head alive so attention maps align with a 12-head teacher.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

ARCH_FIELDS = ("layers", "hidden", "heads", "qkv", "ffn")


class SpaceError(ValueError):
    """An arch or spec that does not fit a search space; the message names field, value and allowed set."""


@dataclass(frozen=True, order=True)
class Arch:
    layers: int
    hidden: int
    heads: int
    qkv: int
    ffn: int

    @property
    def head_dim(self) -> int:
        return self.qkv // self.heads

    @property
    def is_vanilla_bert(self) -> bool:
        """Stock transformers BERT ties the attention width to the hidden size."""
        return self.qkv == self.hidden

    @property
    def name(self) -> str:
        return f"L{self.layers}_H{self.hidden}_A{self.heads}_Q{self.qkv}_F{self.ffn}"

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Arch":
        missing = [f for f in ARCH_FIELDS if f not in data]
        if missing:
            raise SpaceError(f"arch is missing field(s) {missing}; an arch needs {list(ARCH_FIELDS)}")
        unknown = sorted(set(data) - set(ARCH_FIELDS))
        if unknown:
            raise SpaceError(f"arch has unknown field(s) {unknown}; an arch has {list(ARCH_FIELDS)}")
        values = {}
        for f in ARCH_FIELDS:
            v = data[f]
            if isinstance(v, bool) or not isinstance(v, int):
                raise SpaceError(f"arch field '{f}' must be an integer, got {v!r}")
            values[f] = v
        return cls(**values)

    @classmethod
    def parse(cls, text: str | dict | "Arch") -> "Arch":
        """Accept an Arch, a dict, a JSON object string, or the compact name `L4_H256_A4_Q256_F1024`."""
        if isinstance(text, Arch):
            return text
        if isinstance(text, dict):
            return cls.from_dict(text)
        text = text.strip()
        if text.startswith("{"):
            try:
                return cls.from_dict(json.loads(text))
            except json.JSONDecodeError as err:
                raise SpaceError(f"arch {text!r} is not valid JSON: {err}") from None
        keys = {"L": "layers", "H": "hidden", "A": "heads", "Q": "qkv", "F": "ffn"}
        parts = text.split("_")
        try:
            values = {keys[p[0]]: int(p[1:]) for p in parts}
        except (KeyError, ValueError, IndexError):
            raise SpaceError(
                f"cannot parse arch {text!r}: expected JSON or a name like L4_H256_A4_Q256_F1024"
            ) from None
        return cls.from_dict(values)


@dataclass(frozen=True)
class IntRange:
    min: int
    max: int
    step: int = 1

    def values(self) -> list[int]:
        return list(range(self.min, self.max + 1, self.step))

    def __contains__(self, value: int) -> bool:
        return self.min <= value <= self.max and (value - self.min) % self.step == 0

    def describe(self) -> str:
        return f"{self.min}..{self.max} step {self.step}"


def _parse_range(spec: dict, field: str) -> IntRange:
    raw = spec.get(field)
    if not isinstance(raw, dict) or not {"min", "max"} <= set(raw):
        raise SpaceError(f"space spec field '{field}' must be a mapping with min, max (and optional step), got {raw!r}")
    try:
        rng = IntRange(int(raw["min"]), int(raw["max"]), int(raw.get("step", 1)))
    except (TypeError, ValueError):
        raise SpaceError(f"space spec field '{field}' must hold integers, got {raw!r}") from None
    if rng.min < 1 or rng.max < rng.min or rng.step < 1:
        raise SpaceError(f"space spec field '{field}' needs 1 <= min <= max and step >= 1, got {raw!r}")
    if rng.max not in rng:
        raise SpaceError(f"space spec field '{field}': max {rng.max} is not reachable from min {rng.min} in steps of {rng.step}")
    return rng


@dataclass(frozen=True)
class SearchSpace:
    """Ranges for each arch field. Either `head_dim` is fixed (qkv = head_dim * heads) or `qkv` has a range."""

    name: str
    layers: IntRange
    hidden: IntRange
    heads: IntRange
    ffn: IntRange
    head_dim: int | None = None
    qkv: IntRange | None = None

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "SearchSpace":
        if not isinstance(spec, dict):
            raise SpaceError(f"space spec must be a mapping, got {type(spec).__name__}")
        known = {"name", "layers", "hidden", "heads", "ffn", "head_dim", "qkv"}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise SpaceError(f"space spec has unknown field(s) {unknown}; allowed: {sorted(known)}")
        ranges = {f: _parse_range(spec, f) for f in ("layers", "hidden", "heads", "ffn")}
        if ("head_dim" in spec) == ("qkv" in spec):
            raise SpaceError("space spec needs exactly one of 'head_dim' (qkv = head_dim * heads) or 'qkv' (a range)")
        head_dim = spec.get("head_dim")
        if head_dim is not None and (isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1):
            raise SpaceError(f"space spec field 'head_dim' must be a positive integer, got {head_dim!r}")
        space = cls(
            name=str(spec.get("name", "custom")),
            **ranges,
            head_dim=head_dim,
            qkv=_parse_range(spec, "qkv") if "qkv" in spec else None,
        )
        if space.qkv is not None and not space.qkv_choices(space.heads.max):
            raise SpaceError(f"space '{space.name}': no qkv in {space.qkv.describe()} is divisible by {space.heads.max} heads")
        if space.max_qkv % space.heads.max:
            raise SpaceError(f"space '{space.name}': the largest qkv {space.max_qkv} must split into {space.heads.max} heads")
        return space

    @classmethod
    def load(cls, name_or_path: str | Path) -> "SearchSpace":
        """A preset name (mlm, kd, demo, tiny, tiny_kd) or a path to a YAML/JSON spec file."""
        text = str(name_or_path)
        path = Path(text)
        if path.suffix.lower() in {".yaml", ".yml", ".json"} or path.is_file():
            if not path.is_file():
                raise SpaceError(f"space spec file {path} does not exist")
            try:
                spec = yaml.safe_load(path.read_text())
            except yaml.YAMLError as err:
                raise SpaceError(f"space spec file {path} is not valid YAML/JSON: {err}") from None
            return cls.from_spec(spec)
        preset = resources.files("atb") / "presets" / f"{text}.yaml"
        if not preset.is_file():
            raise SpaceError(f"unknown space {text!r}: not a file, and presets are {presets()}")
        return cls.from_spec(yaml.safe_load(preset.read_text()))

    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.name}
        for f in ("layers", "hidden", "heads", "ffn"):
            spec[f] = dataclasses.asdict(getattr(self, f))
        if self.head_dim is not None:
            spec["head_dim"] = self.head_dim
        else:
            spec["qkv"] = dataclasses.asdict(self.qkv)
        return spec

    # ---- geometry -----------------------------------------------------------------------------
    @property
    def max_qkv(self) -> int:
        return self.head_dim * self.heads.max if self.head_dim is not None else self.qkv.max

    @property
    def max_head_dim(self) -> int:
        """Size of each head in the supernet; sub-heads take the leading dims of it."""
        return self.max_qkv // self.heads.max

    def qkv_choices(self, heads: int) -> list[int]:
        if self.head_dim is not None:
            return [self.head_dim * heads]
        return [q for q in self.qkv.values() if q % heads == 0 and q // heads <= self.max_head_dim]

    def largest(self) -> Arch:
        return Arch(self.layers.max, self.hidden.max, self.heads.max, self.max_qkv, self.ffn.max)

    def smallest(self) -> Arch:
        heads = self.heads.min
        while not self.qkv_choices(heads):
            heads += self.heads.step
        return Arch(self.layers.min, self.hidden.min, heads, min(self.qkv_choices(heads)), self.ffn.min)

    # ---- validation ---------------------------------------------------------------------------
    def validate(self, arch: Arch) -> Arch:
        for f in ("layers", "hidden", "heads", "ffn"):
            rng: IntRange = getattr(self, f)
            value = getattr(arch, f)
            if value not in rng:
                raise SpaceError(f"arch {arch.name}: {f}={value} is outside space '{self.name}' (allowed {rng.describe()})")
        allowed = self.qkv_choices(arch.heads)
        if arch.qkv not in allowed:
            how = f"head_dim {self.head_dim} x {arch.heads} heads" if self.head_dim else (
                f"{self.qkv.describe()}, divisible by heads={arch.heads}, head size <= {self.max_head_dim}")
            raise SpaceError(f"arch {arch.name}: qkv={arch.qkv} is outside space '{self.name}' (allowed {allowed} = {how})")
        return arch

    def check_within(self, outer: "SearchSpace") -> None:
        """Every arch of this space must be one of `outer` (searching a part of a SuperPLM's space)."""
        problems = []
        for f in ("layers", "hidden", "heads", "ffn"):
            outside = [v for v in getattr(self, f).values() if v not in getattr(outer, f)]
            if outside:
                problems.append(f"{f} {outside} not in {getattr(outer, f).describe()}")
        for heads in self.heads.values():
            outside = sorted(set(self.qkv_choices(heads)) - set(outer.qkv_choices(heads)))
            if outside:
                problems.append(f"qkv {outside} with {heads} heads not in {outer.qkv_choices(heads)}")
        if problems:
            raise SpaceError(f"space '{self.name}' is not part of space '{outer.name}': {'; '.join(problems)}")

    def contains(self, arch: Arch) -> bool:
        try:
            self.validate(arch)
            return True
        except SpaceError:
            return False

    # ---- sampling and evolution ---------------------------------------------------------------
    def sample(self, rng: random.Random) -> Arch:
        heads = rng.choice([h for h in self.heads.values() if self.qkv_choices(h)])
        return Arch(
            layers=rng.choice(self.layers.values()),
            hidden=rng.choice(self.hidden.values()),
            heads=heads,
            qkv=rng.choice(self.qkv_choices(heads)),
            ffn=rng.choice(self.ffn.values()),
        )

    def mutate(self, arch: Arch, rng: random.Random, prob: float) -> Arch:
        """Resample each field with probability `prob`; qkv is re-drawn when the heads no longer fit it."""
        fresh = self.sample(rng)
        values = {f: (getattr(fresh, f) if rng.random() < prob else getattr(arch, f)) for f in ARCH_FIELDS}
        return self._repair(values, rng)

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        values = {f: getattr(a if rng.random() < 0.5 else b, f) for f in ARCH_FIELDS}
        return self._repair(values, rng)

    def _repair(self, values: dict[str, int], rng: random.Random) -> Arch:
        choices = self.qkv_choices(values["heads"])
        if values["qkv"] not in choices:
            values["qkv"] = rng.choice(choices)
        return self.validate(Arch(**values))

    def enumerate_size(self) -> int:
        n_qkv = sum(len(self.qkv_choices(h)) for h in self.heads.values())
        return len(self.layers.values()) * len(self.hidden.values()) * len(self.ffn.values()) * n_qkv


def presets() -> list[str]:
    folder = resources.files("atb") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


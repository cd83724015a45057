"""Search spaces for `lmforge sweep`: parameter specs, the `sweep:` section, random and grid."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import AfterValidator, Field

from lmforge.errors import LmforgeError
from lmforge.settings import Settings

_SPEC = re.compile(r"^\s*([a-z]+)\s*\((.*)\)\s*$", re.DOTALL)
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
KINDS = ("loguniform", "uniform", "int", "choice")
SYNTAX = "loguniform(a,b), uniform(a,b), int(a,b), int(a,b,log) or choice(x,y,...)"


@dataclass(frozen=True)
class Param:
    """One searched setting: its key path, the kind of range and the range itself."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()

    @property
    def spec(self) -> str:
        """The canonical spec text, which a resumed sweep compares with the stored one."""
        if self.kind == "choice":
            return f"choice({', '.join(yaml_scalar(v) for v in self.choices)})"
        if self.kind == "int":
            return f"int({int(self.low)}, {int(self.high)}{', log' if self.log else ''})"
        return f"{self.kind}({self.low!r}, {self.high!r})"

    def extremes(self) -> list[Any]:
        """The values that must all validate for every draw to be a valid setting."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    def draw(self, rng: np.random.Generator) -> Any:
        if self.kind == "choice":
            return self.choices[int(rng.integers(len(self.choices)))]
        if self.kind == "int":
            if not self.log:
                return int(rng.integers(int(self.low), int(self.high) + 1))
            # uniform in log space over [low, high + 1), floored: each integer gets its share
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high + 1)))
            return min(int(value), int(self.high))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))

    def contains(self, value: Any) -> bool:
        """Whether `value` is one this parameter can take."""
        if self.kind == "choice":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and value != int(value):
            return False
        return self.low <= value <= self.high

    def grid(self, points: int | None) -> list[Any]:
        """The values the grid sampler tries for this parameter."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1))
        if points is None:
            raise LmforgeError(f"--param {self.key}={self.spec}: the grid sampler cannot "
                               f"enumerate a continuous range; give --grid-points K (K values "
                               f"from low to high), or use the random or tpe sampler")
        space = np.geomspace if self.kind == "loguniform" else np.linspace
        return [float(v) for v in space(self.low, self.high, points)]


def yaml_scalar(value: Any) -> str:
    """A value as YAML text that reads back as the same value, in `--set` and inside
    `choice(...)` alike: 1e-05 gets its dot, a comma its quotes."""
    text = yaml.safe_dump([value], default_flow_style=True, allow_unicode=True, width=10**6)
    return text.strip()[1:-1]


def parse_spec(key: str, spec: str, where: str | None = None) -> Param:
    """`loguniform(1e-4,1e-2)` -> Param; a bad spec raises an error naming key and spec."""
    where = where or f"--param {key}={spec}"
    match = _SPEC.match(spec) if isinstance(spec, str) else None
    if match is None or match.group(1) not in KINDS:
        raise LmforgeError(f"{where}: not a search spec; expected {SYNTAX}")
    kind, body = match.groups()
    try:
        args = yaml.safe_load(f"[{body}]")
    except yaml.YAMLError:
        raise LmforgeError(f"{where}: cannot read the arguments {body!r}") from None
    if any(isinstance(a, (list, dict)) or a is None and kind != "choice" for a in args):
        raise LmforgeError(f"{where}: arguments must be single values (YAML scalars)")
    if kind == "choice":
        if not args:
            raise LmforgeError(f"{where}: choice needs at least one value")
        # PyYAML reads 1e-4 (no dot) as a string; a choice of numbers means numbers
        values = tuple(float(a) if isinstance(a, str) and _NUMBER.match(a) else a for a in args)
        return Param(key, kind, choices=values)
    return _range(key, kind, args, where)


def _range(key: str, kind: str, args: list, where: str) -> Param:
    log = kind == "int" and len(args) == 3 and args[2] == "log"
    expected = 3 if log else 2
    if len(args) != expected:
        form = "int(a,b) or int(a,b,log)" if kind == "int" else f"{kind}(a,b)"
        raise LmforgeError(f"{where}: expected {form}, found {len(args)} argument(s)")
    try:
        low, high = (float(a) for a in args[:2])
    except (TypeError, ValueError):
        raise LmforgeError(f"{where}: the bounds must be numbers, found {args[0]!r} and "
                           f"{args[1]!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise LmforgeError(f"{where}: expected low < high, found low={low:g}, high={high:g}")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise LmforgeError(f"{where}: int bounds must be whole numbers, found {low:g} and "
                           f"{high:g}")
    if (kind == "loguniform" or log) and low <= 0:
        raise LmforgeError(f"{where}: a log range needs low > 0, found low={low:g}")
    return Param(key, kind, low, high, log)


def parse_param(assignment: str) -> Param:
    """`trainer.lr=loguniform(1e-4,1e-2)` -> Param."""
    key, sep, spec = assignment.partition("=")
    if not sep or not key.strip():
        raise LmforgeError(f"--param {assignment}: expected KEY.PATH=SPEC, e.g. "
                           f"trainer.lr=loguniform(1e-4,1e-2)")
    return parse_spec(key.strip(), spec.strip())


def _valid_spec(spec: str) -> str:
    try:
        parse_spec("", spec, where=repr(spec))
    except LmforgeError as exc:
        raise ValueError(str(exc)) from None  # pydantic adds the key path, the config its line
    return spec


class SweepSettings(Settings):
    """How `lmforge sweep` searches this config; `lmforge run` ignores the section.

    Command-line options override these; a `--param` replaces the spec of the same key."""

    params: dict[str, Annotated[str, AfterValidator(_valid_spec)]] = Field(
        default_factory=dict, description=f"key path -> spec: {SYNTAX}")
    trials: int | None = Field(None, ge=1, description="trials to run; default 10, or the "
                                                       "whole grid")
    sampler: Literal["tpe", "random", "grid"] | None = Field(
        None, description="default: tpe when optuna is installed, else random")
    seed: int = Field(0, ge=0, description="the sampler's seed")
    objective: str = Field("val.loss", description="SPLIT.METRIC read from each eval.json")
    direction: Literal["minimize", "maximize"] | None = Field(
        None, description="inferred for known metrics (loss: minimize, accuracy: maximize)")
    jobs: int = Field(1, ge=1, description="trials run at once")
    nproc: int = Field(1, ge=1, description="processes per trial, started by torchrun as "
                                            "`lmforge run --nproc` starts them")
    grid_points: int | None = Field(None, ge=2, description="values per continuous range "
                                                           "(grid sampler)")
    prune: bool = Field(True, description="tpe: stop trials whose validation loss is worse "
                                          "than the median of earlier trials at the same step")
    prune_startup_trials: int = Field(5, ge=0, description="trials completed before pruning "
                                                           "starts")
    prune_warmup_steps: int = Field(0, ge=0, description="steps of each trial never pruned")
    baseline_first: bool = Field(
        True, description="trial 1 runs the config's own values of the searched settings "
                          "(random and tpe samplers), so the best trial is never worse than the "
                          "config as it stands")


def grid_size(params: list[Param], points: int | None) -> int:
    return math.prod(len(p.grid(points)) for p in params)


def grid_params(params: list[Param], points: int | None, number: int) -> dict[str, Any]:
    """Trial `number` (from 1) of the grid, the last parameter varying fastest."""
    index = number - 1
    chosen: dict[str, Any] = {}
    for param in reversed(params):
        values = param.grid(points)
        index, position = divmod(index, len(values))
        chosen[param.key] = values[position]
    return {p.key: chosen[p.key] for p in params}


def random_params(params: list[Param], seed: int, number: int) -> dict[str, Any]:
    """Trial `number`'s draw: a function of (seed, number) only, so a resumed sweep agrees."""
    rng = np.random.default_rng([seed, number])
    return {p.key: p.draw(rng) for p in params}

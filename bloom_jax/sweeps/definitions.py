"""What a sweep is made of: trials as {'dotted.config.key': value} dicts (`grid`, `zipped`,
`product`, `sample` over `LogUniform`, `Uniform` and `Choice`), the directory name of each,
and the config each resolves to. Sweep config files build their trials with these."""

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import random
import re

import ml_collections

from bloom_jax import config_lib

MAX_NAME = 120              # characters of a trial directory name


# -------------------------------------------------------------------------- building trials


def grid(axes: dict[str, list]) -> list[dict]:
  """Every combination of the axes' values; the last key varies fastest."""
  return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def zipped(axes: dict[str, list]) -> list[dict]:
  """The i-th value of every axis together (e.g. a learning rate with its warmup)."""
  lengths = {key: len(values) for key, values in axes.items()}
  if len(set(lengths.values())) > 1:
    raise config_lib.ConfigError(f'zipped: the axes differ in length: {lengths}')
  return [dict(zip(axes, values, strict=True)) for values in zip(*axes.values(), strict=True)]


def product(*sweeps: list[dict]) -> list[dict]:
  """One trial from each sweep, merged, in every combination: e.g. a grid over zipped pairs."""
  trials = []
  for parts in itertools.product(*sweeps):
    merged = {}
    for part in parts:
      shared = set(merged) & set(part)
      if shared:
        raise config_lib.ConfigError(f'product: {sorted(shared)[0]} is set by two sweeps')
      merged.update(part)
    trials.append(merged)
  return trials


def _significant(x: float) -> float:
  # Three significant digits: trial names and commands then carry the exact value.
  return float(f'{x:.3g}')


@dataclasses.dataclass(frozen=True)
class LogUniform:
  """A scale-like value (a learning rate): uniform in log space over [low, high]."""

  low: float
  high: float

  def __post_init__(self):
    if not 0 < self.low < self.high:
      raise config_lib.ConfigError(f'LogUniform: need 0 < low < high, got {self.low}, {self.high}')

  def sample(self, rng: random.Random) -> float:
    return _significant(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

  def suggest(self, trial, key: str) -> float:
    return trial.suggest_float(key, self.low, self.high, log=True)


@dataclasses.dataclass(frozen=True)
class Uniform:
  """A value uniform over [low, high]."""

  low: float
  high: float

  def __post_init__(self):
    if not self.low < self.high:
      raise config_lib.ConfigError(f'Uniform: need low < high, got {self.low}, {self.high}')

  def sample(self, rng: random.Random) -> float:
    return _significant(rng.uniform(self.low, self.high))

  def suggest(self, trial, key: str) -> float:
    return trial.suggest_float(key, self.low, self.high)


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of a few values (batch sizes, schedules, on/off)."""

  values: tuple

  def sample(self, rng: random.Random):
    return rng.choice(self.values)

  def suggest(self, trial, key: str):
    return trial.suggest_categorical(key, self.values)


def sample(space: dict, n: int, seed: int) -> list[dict]:
  """`n` random trials from a search space {key: LogUniform | Uniform | Choice}."""
  rng = random.Random(seed)
  return [{key: dist.sample(rng) for key, dist in space.items()} for _ in range(n)]


# -------------------------------------------------------------------------- trial names


@dataclasses.dataclass(frozen=True)
class Trial:
  name: str                   # its directory under the sweep's workdir
  overrides: dict             # {'dotted.config.key': value}
  number: int | None = None   # the Optuna trial number (--search optuna)


def labels(keys) -> dict[str, str]:
  """Each key's shortest dotted suffix that no other swept key ends with, else the key:
  `optimizer.learning_rate` -> `learning_rate`, but `tasks.lm.rate` and `tasks.sentiment.rate`
  keep their task."""
  keys = list(dict.fromkeys(keys))
  out = {}
  for key in keys:
    parts = key.split('.')
    others = [k for k in keys if k != key]
    suffixes = ('.'.join(parts[-n:]) for n in range(1, len(parts)))
    out[key] = next((s for s in suffixes
                     if not any(o == s or o.endswith('.' + s) for o in others)), key)
  return out


def shown(value) -> str:
  """A swept value as trial names and plot ticks write it."""
  return f'{value:.4g}' if isinstance(value, float) else str(value)


def _digest(overrides: dict) -> str:
  canonical = json.dumps(sorted((k, repr(v)) for k, v in overrides.items()))
  return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def trial_name(overrides: dict, label: dict[str, str]) -> str:
  """`learning_rate=0.001,batch_size=32`: readable, and safe as one directory name."""
  name = ','.join(f'{label[k]}={shown(v)}' for k, v in overrides.items()) or 'base'
  name = re.sub(r'[^A-Za-z0-9._,=+-]', '_', name)
  if len(name) > MAX_NAME:
    name = f'{name[:MAX_NAME - 9]}-{_digest(overrides)}'
  return name


def name_trials(sweep: list[dict]) -> list[Trial]:
  """Trials with unique names; trials whose names collide get their overrides' digest."""
  label = labels(k for overrides in sweep for k in overrides)
  names = [trial_name(overrides, label) for overrides in sweep]
  seen = {}
  for i, overrides in enumerate(sweep):
    digest = _digest(overrides)
    if digest in seen:
      raise config_lib.ConfigError(f'get_sweep: trials {seen[digest]} and {i} are the same '
                                   f'({overrides})')
    seen[digest] = i
  taken = {n for n in names if names.count(n) > 1}
  return [Trial(f'{n}-{_digest(o)}' if n in taken else n, o) for n, o in zip(names, sweep,
                                                                               strict=True)]


# -------------------------------------------------------------------------- config


def resolve(base: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """The base config with a trial's overrides; an unknown key or a wrong type is an error."""
  config = copy.deepcopy(base)
  for key, value in overrides.items():
    node = config
    *parents, field = key.split('.')
    for part in parents:
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or field not in node:
      raise config_lib.ConfigError(f'{key}: not a key of the config (swept in get_sweep)')
    if isinstance(node[field], ml_collections.ConfigDict):
      raise config_lib.ConfigError(f'{key}: a section, not a value; sweep its fields')
    try:
      node[field] = value
    except TypeError:
      raise config_lib.ConfigError(f'{key}: {value!r} does not fit its type '
                                   f'{type(node[field]).__name__}') from None
  return config

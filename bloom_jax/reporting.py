"""What a run tells the person watching it: the resolved config, progress, a table per
evaluation, a summary with the next commands at the end, and a profiler trace on request.

Only process 0 prints. On a terminal the progress is one line redrawn in place (`\r`);
anywhere else (a pipe, a file, a scheduler's log) it is a plain line after the first step,
at the first log step, then every `PLAIN_EVERY_S` seconds and at the last step, so a log
stays readable and no line grows without bound.
"""

import json
import math
import os
import shlex
import sys
import time

import jax

from bloom_jax.errors import ConfigError

PLAIN_EVERY_S = 30.0


# -------------------------------------------------------------------------- config


def write_config(workdir: str, config) -> str:
  """DIR/config.json: the resolved config of this invocation (overrides applied)."""
  path = os.path.join(workdir, 'config.json')
  with open(path, 'w', encoding='utf-8') as f:
    f.write(config.to_json_best_effort(indent=2) + '\n')
  return path


def config_text(config) -> str:
  """The config as sorted `key: value` lines, nested sections indented (YAML)."""
  text = str(config).rstrip()
  if text.startswith('{'):  # a value YAML cannot represent: ml_collections gave one dict line
    text = config.to_json_best_effort(indent=2, sort_keys=True)
  return text


# -------------------------------------------------------------------------- metrics


def metrics_table(results: dict[str, float]) -> str:
  """`<prefix>/<task>/<metric>` values as a table: one row per task, one column per metric
  (loss first, then in order of appearance); `-` where a task has no such metric."""
  tasks, columns, cells = [], [], {}
  for key, value in results.items():
    parts = key.split('/')
    if len(parts) != 3:
      continue
    _, task, metric = parts
    tasks += [task] if task not in tasks else []
    columns += [metric] if metric not in columns else []
    cells[task, metric] = _number(value)
  columns.sort(key=lambda m: m != 'loss')
  header = ['task', *columns]
  rows = [[task, *(cells.get((task, m), '-') for m in columns)] for task in tasks]
  widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
  return '\n'.join('  '.join([row[0].ljust(widths[0])]
                             + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)])
                   for row in [header, *rows])


def _number(value: float) -> str:
  return f'{value:.4f}' if abs(value) < 1e5 or not math.isfinite(value) else f'{value:.4g}'


def write_eval(workdir: str, split: str, step: int, results: dict[str, float]) -> str:
  """DIR/eval/<split>_<step>.json, as `bloom_jax.evaluate` writes it; returns the path."""
  out_dir = os.path.join(workdir, 'eval')
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f'{split}_{step}.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump({'step': step, 'split': split, **results}, f, indent=2)
  return path


def last_evaluation(metrics_path: str, up_to_step: int) -> dict:
  """The last evaluation line of a metrics.jsonl at or before `up_to_step` ({} if none):
  what a resumed run reports as its final evaluation until it evaluates again."""
  last = {}
  try:
    with open(metrics_path, encoding='utf-8') as f:
      for text in f:
        try:
          line = json.loads(text)
        except ValueError:  # a line cut short by a killed process
          continue
        if line.get('step', math.inf) <= up_to_step and any(k.startswith('eval/') for k in line):
          last = line
  except FileNotFoundError:
    pass
  return last


def evaluation_text(step: int, results: dict, best=None, improved: bool = False,
                    stale: int = 0, patience: int = 0) -> str:
  """What one evaluation during training prints: its table and where the best stands."""
  lines = [f'Evaluation at step {step} (validation):', metrics_table(results)]
  if best is not None and best.step is not None:
    note = ('new best' if improved else
            f'no improvement in {stale} evaluation{"s" if stale != 1 else ""}'
            + (f', early stop after {patience}' if patience else ''))
    lines.append(f'best {best.metric} = {_number(best.value)} at step {best.step} ({note})')
  return '\n'.join(lines)


def summary(*, workdir: str, step: int, total_steps: int, ending: str, final: dict,
            best=None, test: tuple | None = None, task: str | None = None,
            tensorboard: bool = True) -> str:
  """The end of a run: where it stopped, its final and best metrics, the test scores and
  the commands that use it. `test`: (step, results, path or None)."""
  lines = ['', f'Run finished at step {step}/{total_steps} ({ending}). Workdir: {workdir}']
  if final:
    lines += [f'Final evaluation (step {final["step"]}, validation):',
              metrics_table({k: v for k, v in final.items() if k.startswith('eval/')})]
  if best is not None and best.step is not None:
    lines += [f'Best by {best.metric} ({best.mode}): {_number(best.value)} at step {best.step}'
              + (':' if len(best.metrics) > 1 else '')]
    if len(best.metrics) > 1:
      lines.append(metrics_table(best.metrics))
  if test is not None:
    test_step, results, path = test
    if results:
      lines += [f'Test split, checkpoint {test_step}' + (f' (written to {path}):' if path else ':'),
                metrics_table(results)]
    else:
      lines.append('Test split: no task of the run has one.')
  run = shlex.quote(workdir)
  step_flag = ' --step best' if best is not None and best.step is not None else ''
  lines += ['Next:',
            f'  evaluate:     python -m bloom_jax.evaluate --workdir {run}{step_flag}']
  if task:
    lines.append(f'  predict:      python -m bloom_jax.predict --workdir {run} --task {task} '
                 "--text 'your text'")
  if tensorboard:
    lines.append(f'  TensorBoard:  tensorboard --logdir {run}')
  return '\n'.join(lines)


# -------------------------------------------------------------------------- progress


def duration(seconds: float) -> str:
  if not math.isfinite(seconds) or seconds < 0:
    return '?'
  seconds = round(seconds)
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'


class Console:
  """Process 0's printed output: a progress line with the step, loss, steps/s and ETA,
  and whole messages (tables, summaries) that never land inside it."""

  def __init__(self, total_steps: int, *, enabled: bool = True, stream=None,
               interactive: bool | None = None, every_s: float = PLAIN_EVERY_S,
               clock=time.monotonic):
    self.total, self.enabled, self.every_s, self._clock = total_steps, enabled, every_s, clock
    self._stream = stream or sys.stdout
    self.interactive = self._stream.isatty() if interactive is None else interactive
    self._open_width = 0         # width of the in-place line now on the terminal (0: none)
    self._last_plain = -math.inf
    self._shown_loss = False
    self.start(0)

  def start(self, step: int) -> None:
    """Counts the overall rate (until a log step measures one) from here."""
    self._start, self._t0 = step, self._clock()

  def progress(self, step: int, loss: float | None = None, steps_per_s: float | None = None,
               force: bool = False) -> None:
    """`steps_per_s`: the rate over the last log window; else the rate since start()."""
    if not self.enabled:
      return
    now = self._clock()
    rate = steps_per_s or (step - self._start) / max(now - self._t0, 1e-9)
    text = (f'step {step}/{self.total} ({100 * step / self.total:.0f}%)'
            + (f'  loss {loss:.4f}' if loss is not None else '')
            + f'  {rate:.2f} steps/s  ETA {duration((self.total - step) / max(rate, 1e-9))}')
    if self.interactive:
      self._write('\r' + text.ljust(self._open_width))
      self._open_width = len(text)
      if step == self.total or force:
        self._end_line()
    elif (force or step == self.total or now - self._last_plain >= self.every_s
          or (loss is not None and not self._shown_loss)):
      self._write(text + '\n')
      self._last_plain, self._shown_loss = now, self._shown_loss or loss is not None

  def print(self, text: str) -> None:
    if self.enabled:
      self._end_line()
      self._write(text + '\n')

  def end_line(self) -> None:
    if self.enabled:
      self._end_line()

  def _end_line(self) -> None:
    if self._open_width:
      self._write('\n')
      self._open_width = 0

  def _write(self, text: str) -> None:
    self._stream.write(text)
    self._stream.flush()


# -------------------------------------------------------------------------- profiling


def profile_window(value: str, total_steps: int) -> tuple[int, int] | None:
  """`profile_steps` ('' or 'FIRST,LAST') as (first, last); ConfigError naming the key."""
  if not value:
    return None
  try:
    first, last = (int(part) for part in str(value).split(','))
  except ValueError:
    first = last = None
  if first is None or not 1 <= first <= last <= total_steps:
    raise ConfigError(f"profile_steps: must be 'FIRST,LAST' with 1 <= FIRST <= LAST <= "
                      f'total_steps ({total_steps}), e.g. \'10,12\'; got {value!r}')
  return first, last


class Trace:
  """A jax.profiler trace of the steps in `window` (a profile_window), written to
  `directory`/plugins/profile/<time>/: `<host>.xplane.pb` for TensorBoard's profile tab,
  `<host>.trace.json.gz` for ui.perfetto.dev. Steps a resumed run has passed are skipped."""

  def __init__(self, window, directory: str, start_step: int):
    self.directory, self._active = directory, False
    self.first, self.last = window or (0, -1)
    self.first = max(self.first, start_step + 1)

  def begin(self, step: int) -> None:
    if step == self.first and self.first <= self.last:
      jax.profiler.start_trace(self.directory)
      self._active = True

  def end(self, step: int, state) -> str | None:
    """Stops after the window's last step (once its computation is done); returns a line
    saying where the trace is, or None."""
    if not (self._active and step == self.last):
      return None
    jax.block_until_ready(state)
    self.stop()
    return (f'Wrote a profiler trace of steps {self.first}-{self.last} to {self.directory} '
            f'(tensorboard --logdir {shlex.quote(self.directory)}, Profile tab; or its '
            '.trace.json.gz in ui.perfetto.dev)')

  def stop(self) -> None:
    if self._active:
      self._active = False
      jax.profiler.stop_trace()

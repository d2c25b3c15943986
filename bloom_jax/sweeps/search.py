"""--search optuna: an Optuna study in DIR/optuna.db proposes each trial from the results so
far (`ask`) and learns each finished one's best evaluation (`tell`)."""

from collections.abc import Iterator

from absl import app

from bloom_jax.sweeps import definitions, reports


def _optuna():
  try:
    import optuna  # noqa: PLC0415 - an optional dependency
  except ImportError:
    raise app.UsageError("--search optuna needs optuna: pip install 'bloom_jax[sweep]'") from None
  return optuna


def open_study(workdir: str, mode: str, sampler: str, seed: int):
  """The sweep's study in DIR/optuna.db, created or resumed."""
  optuna = _optuna()
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  direction = 'maximize' if mode == 'max' else 'minimize'
  study = optuna.create_study(study_name='sweep', storage=f'sqlite:///{workdir}/optuna.db',
                              load_if_exists=True, direction=direction)
  if study.direction.name.lower() != direction:
    raise app.UsageError(f'--mode: the study in {workdir} was created to '
                         f'{study.direction.name.lower()}')
  # Reseeded by progress: a resumed random search must not repeat its first draws.
  seed += len(study.trials)
  study.sampler = (optuna.samplers.TPESampler(seed=seed) if sampler == 'tpe'
                   else optuna.samplers.RandomSampler(seed=seed))
  return study


def left_running(study) -> list:
  """The study's trials still marked running: a stopped sweep left them unfinished."""
  return study.get_trials(states=(_optuna().trial.TrialState.RUNNING,))


def study_trial(number: int, params: dict, label: dict[str, str]) -> definitions.Trial:
  return definitions.Trial(f'{number:03d},{definitions.trial_name(params, label)}', dict(params),
                           number)


def ask(study, space: dict, label: dict[str, str], total: int) -> Iterator[definitions.Trial]:
  """Trials a stopped sweep left running (they resume), then new ones up to `total`."""
  for frozen in left_running(study):
    yield study_trial(frozen.number, frozen.params, label)
  while len(study.trials) < total:
    trial = study.ask()
    for key, dist in space.items():
      dist.suggest(trial, key)
    yield study_trial(trial.number, trial.params, label)


def tell(study, result: reports.Result, metric: str) -> None:
  if result.status == 'done' and metric in result.best:
    study.tell(result.trial.number, result.best[metric])
  elif result.status in ('done', 'failed'):
    study.tell(result.trial.number, state=_optuna().trial.TrialState.FAIL)
  # An incomplete trial (its trainer was stopped) stays running; the next sweep resumes it.

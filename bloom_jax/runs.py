"""What every program shares about a run: its model, optimizer and jitted step built from a
config, its data, and loading a trained run back from its workdir.

Entry points (`train`, `evaluate`, `predict`, `hf`) import this; none imports another.
"""

import dataclasses
import functools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from bloom_jax import checkpointing, compat, config_lib, hf, optim, sharding, steps
from bloom_jax.data import pipeline
from bloom_jax.model import BloomConfig
from bloom_jax.multitask_model import MultiTaskModel, shared_mask


@dataclasses.dataclass(frozen=True)
class Setup:
  """The model, its shardings and the jitted step for one config, task list and mesh."""

  model_config: BloomConfig
  tasks: tuple                                # the mixture's TaskSpecs, in order
  graphdef: nnx.GraphDef
  abstract_state: nnx.State
  state_shardings: dict
  init_train_state: Callable[[], dict]
  abstract_train_state: Callable[[], dict]    # the restore target: shapes + shardings
  train_step: Callable

  @property
  def num_params(self) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.abstract_state))


def build(config, tasks: dict, vocab_size: int, mesh) -> Setup:
  """The run's model and step. `tasks`: name -> TaskSpec (`tasks.configure`, or a
  pipeline's `tasks`, which also carry their batch sizes)."""
  model_cfg = config_lib.model_config(config, vocab_size=vocab_size)
  balancing = config.get('loss_balancing', 'static')  # runs saved before the key: static
  make_model = lambda: MultiTaskModel(model_cfg, tasks, rngs=nnx.Rngs(config.seed),
                                      task_uncertainty=balancing == 'uncertainty')
  graphdef, abstract_state = nnx.split(nnx.eval_shape(make_model))
  optimizer = optim.make_optimizer(config.optimizer, config.total_steps)

  # Parameters and optimizer state are created already sharded: no full copy ever sits
  # on one device. Adam's moments are sharded like their parameters.
  param_shardings = compat.to_pure_dict(sharding.state_shardings(abstract_state, mesh))
  init_params = jax.jit(lambda: compat.to_pure_dict(nnx.state(make_model())),
                        out_shardings=param_shardings)
  abstract_params = jax.eval_shape(init_params)
  opt_shardings = sharding.like_params(jax.eval_shape(optimizer.init, abstract_params),
                                       abstract_params, param_shardings, mesh)
  init_opt = jax.jit(optimizer.init, out_shardings=opt_shardings)
  replicated = sharding.replicated(mesh)
  state_shardings = {'params': param_shardings, 'opt_state': opt_shardings,
                     'step': replicated, 'nonfinite': replicated}
  averaged = config_lib.keeps_average(config)
  if averaged:
    state_shardings['ema_params'] = param_shardings

  def init_train_state():
    params = init_params()
    if config.model.get('init_from_hf'):
      params = _with_hf_trunk(params, config.model.init_from_hf, param_shardings)
    counters = jax.device_put({'step': np.zeros((), np.int32),
                               'nonfinite': np.full((2,), -1, np.int32)}, replicated)
    state = {'params': params, 'opt_state': init_opt(params), **counters}
    if averaged:  # a copy, not an alias: the step donates (and so overwrites) both
      state['ema_params'] = jax.jit(lambda p: jax.tree.map(jnp.copy, p),
                                    out_shardings=param_shardings)(params)
    return state

  def abstract_train_state():
    shapes = {'params': abstract_params, 'opt_state': jax.eval_shape(init_opt, abstract_params),
              'step': jax.ShapeDtypeStruct((), jnp.int32),
              'nonfinite': jax.ShapeDtypeStruct((2,), jnp.int32)}
    if averaged:
      shapes['ema_params'] = abstract_params
    return checkpointing.abstract_like(shapes, state_shardings)

  ordered = tuple(tasks.values())
  step = functools.partial(
      steps.train_step, graphdef=graphdef, abstract_state=abstract_state, tasks=ordered,
      optimizer=optimizer,
      schedule=optim.learning_rate_schedule(config.optimizer, config.total_steps),
      seed=config.seed, grad_accum=config.optimizer.grad_accum, balancing=balancing,
      max_gain=float(config.get('gradnorm_max_gain', 0.0)),
      shared=(shared_mask(abstract_params)  # runs saved before the key: 'all'
              if config.get('gradnorm_scope', 'all') == 'shared' else None),
      ema_decay=float(config.optimizer.get('ema_decay', 0.0)))  # runs saved before the key: 0
  train_step = jax.jit(
      compat.traced_under(mesh, step),  # the activations' sharding constraints apply
      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
      out_shardings=(state_shardings, replicated), donate_argnums=0)
  return Setup(model_cfg, ordered, graphdef, abstract_state, state_shardings, init_train_state,
               abstract_train_state, train_step)


def _with_hf_trunk(params, hf_dir, param_shardings):
  """Replaces the freshly initialised trunk with a Hugging Face checkpoint's weights."""
  trunk_cfg = hf.read_config(hf_dir)
  loaded = hf.load_params(hf_dir, trunk_cfg)
  mismatched = [k for k, v in loaded.items() if k not in params['bloom']]
  if mismatched or jax.tree.map(np.shape, loaded) != jax.tree.map(np.shape, params['bloom']):
    raise config_lib.ConfigError(
        f'model.init_from_hf: {hf_dir} has a trunk of another shape than config.model')
  trunk = jax.device_put(loaded, param_shardings['bloom'])
  return {**params, 'bloom': jax.tree.map(lambda a, b: a.astype(b.dtype), trunk, params['bloom'])}


def prepare_data(config, workdir: str, mesh) -> pipeline.Pipeline:
  """The run's data. Process 0 prepares it (tokenizer, examples) first; the others then
  read its cache instead of racing to write the same files.

  The pipeline completes `config` in place (`tasks.resolve`: task modules imported and
  their paths made absolute, labels read from training files written in), so that the
  config a run saves rebuilds the same tasks when it resumes, is evaluated or predicts.
  """
  multiple = sharding.data_parallel_size(mesh) * config.optimizer.grad_accum
  pipe = None
  if jax.process_index() == 0:
    pipe = pipeline.Pipeline(config, workdir=workdir, multiple=multiple)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('bloom_jax: data prepared')
  return pipe or pipeline.Pipeline(config, workdir=workdir, multiple=multiple)


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run restored from its workdir; `params` are those it is evaluated with
  (the moving average if the run kept one, `steps.inference_params`)."""

  config: ml_collections.ConfigDict
  pipe: pipeline.Pipeline
  setup: Setup
  mesh: object
  params: dict
  step: int


def load_run(workdir: str, step: int | None = None) -> Run:
  """The checkpoint at `step` (default: the latest) of a trained run, with its data."""
  workdir = os.path.abspath(workdir)
  ckpt = checkpointing.Checkpointer(workdir, keep=1_000_000, create=False)
  saved = ckpt.all_steps()
  if not saved:
    raise FileNotFoundError(f'{workdir}: no checkpoints (train first with bloom_jax.train)')
  if step is None:
    step = max(saved)
  elif step not in saved:
    raise FileNotFoundError(f'{workdir}: no checkpoint for step {step} (have {sorted(saved)})')
  config = ml_collections.ConfigDict(ckpt.restore_config(step))
  try:
    mesh = sharding.make_mesh(config.mesh)
  except ValueError:
    logging.warning("The run's mesh does not fit %d devices; using data parallelism.",
                    jax.device_count())
    mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1))
  pipe = prepare_data(config, workdir, mesh)
  setup = build(config, pipe.tasks, pipe.tokenizer.vocab_size, mesh)
  state, _ = ckpt.restore(step, setup.abstract_train_state())
  ckpt.close()
  return Run(config, pipe, setup, mesh, steps.inference_params(state), step)

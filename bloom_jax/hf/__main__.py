r"""Moves trunks between Hugging Face checkpoints and bloom_jax training runs.

  # A HF checkpoint becomes step 0 of a run; `bloom_jax.train` with the same workdir
  # and config then fine-tunes it (task heads start fresh). The run needs the
  # checkpoint's own tokenizer (config_lib.tokenizer_size says why):
  python -m bloom_jax.hf import --hf_dir bloom-560m --config configs/finetune_hf.py \
      --config.tokenizer.path=bloom-560m/tokenizer.json --workdir runs/ft
  # The trunk and LM head of a run's checkpoint, plus its tokenizer, as a transformers
  # BloomForCausalLM directory inside the workdir (here runs/ft/exported/):
  python -m bloom_jax.hf export --workdir runs/ft --hf_dir exported/ [--step N]
"""

import os

import jax
from absl import flags
from ml_collections import config_flags

from bloom_jax import checkpointing, cli, config_lib, hf, runs, sharding

FLAGS = flags.FLAGS


def import_checkpoint(hf_dir: str, config, workdir: str) -> None:
  if os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise config_lib.ConfigError(f'--workdir: {workdir} already holds checkpoints; importing '
                                 'would mix two runs')
  with config.unlocked():  # --config is locked, and few configs name this key
    config.model.init_from_hf = hf_dir
  config_lib.validate(config)
  mesh = sharding.make_mesh(config.mesh)
  pipe = runs.prepare_data(config, workdir, mesh)
  setup = runs.build(config, pipe.tasks, pipe.tokenizer.vocab_size, mesh)
  ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)
  ckpt.save(0, setup.init_train_state(), pipe.train_iterator().get_state(), config.to_json())
  ckpt.wait()
  ckpt.close()
  print(f'{hf_dir} -> {workdir} (step 0)')


def export_checkpoint(workdir: str, hf_dir: str, step: int | None) -> None:
  run = runs.load_run(workdir, step)
  trunk = hf.from_params(run.setup.model_config, jax.device_get(run.params['bloom']))
  hf.save(trunk, hf_dir)
  run.pipe.tokenizer.save(os.path.join(hf_dir, 'tokenizer.json'))
  print(f'{workdir} step {run.step} -> {hf_dir}')


def main(argv):
  if len(argv) != 2 or argv[1] not in ('import', 'export'):
    raise config_lib.ConfigError('usage: python -m bloom_jax.hf import|export [flags]')
  if not FLAGS.hf_dir or not FLAGS.workdir:
    raise config_lib.ConfigError('--hf_dir and --workdir are required')
  if argv[1] == 'import':
    if FLAGS.config is None:
      raise config_lib.ConfigError('import needs --config (the run the weights start)')
    import_checkpoint(FLAGS.hf_dir, FLAGS.config, FLAGS.workdir)
  else:
    export_checkpoint(FLAGS.workdir, cli.inside_workdir(FLAGS.workdir, FLAGS.hf_dir, '--hf_dir'),
                      FLAGS.step)


if __name__ == '__main__':
  flags.DEFINE_string('hf_dir', None, 'A transformers BLOOM checkpoint directory.')
  flags.DEFINE_string('workdir', None, 'A bloom_jax.train workdir.')
  flags.DEFINE_integer('step', None, 'export: checkpoint step (default: the latest).')
  config_flags.DEFINE_config_file('config', None, 'import: the training config.')
  cli.run(main)

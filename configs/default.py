"""Default run: every head type on the built-in synthetic data, a tiny BLOOM trunk.

  python -m bloom_jax.train --config configs/default.py --workdir /tmp/bloom_default

Finishes in a few minutes on 2 CPU cores and needs no download.
"""

import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1500             # optimizer updates
  c.log_every = 50                 # steps between metrics.jsonl lines
  c.eval_every = 500               # steps between validation passes
  c.checkpoint_every = 500         # steps between (asynchronous) checkpoints
  c.keep_checkpoints = 2           # newest checkpoints kept, besides the best one
  c.best_metric = 'eval/sentiment/accuracy'  # checkpoint kept as "best" ('' disables)
  c.best_mode = 'max'
  c.early_stop_patience = 0        # stop after this many evaluations without a better
                                   #   best_metric (0: never stop early)
  c.eval_test_at_end = False       # at the end, score the best checkpoint (the last without
                                   #   best_metric) on the tasks' test splits
  c.peak_tflops_per_device = 0.0   # MFU's denominator (0: the chip's datasheet bf16 peak; on
                                   #   CPU a matmul measured at start)
  c.profile_steps = ''             # 'FIRST,LAST': a jax.profiler trace of those steps in
                                   #   DIR/profile/ ('': none)
  c.skip_nonfinite = False         # True: skip an update whose loss/grads are NaN/inf
  c.loss_balancing = 'static'      # how task losses combine: 'static' (loss_weight only) |
                                   #   'gradnorm_per_task' | 'uncertainty' (docs/multitask.md)
  c.gradnorm_max_gain = 0.0        # gradnorm_per_task: cap on the factor a task's gradient is
                                   #   scaled up by (0: none); read by no other method
  c.gradnorm_scope = 'all'         # gradnorm_per_task: the parameters its norms and gains are
                                   #   over, 'all' | 'shared' (the trunk; docs/multitask.md)
  c.tensorboard = True             # also write TensorBoard event files (loads TensorFlow)

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # -1 fills the devices

  c.data = ml_collections.ConfigDict()
  c.data.dir = ''                  # root of local data files (unused by the synthetic tasks)
  c.data.tfds_dir = ''             # TFDS data_dir + prepared arrays ('': $BLOOM_JAX_TFDS_DIR
                                   #   or ~/.cache/bloom_jax/tfds)
  c.data.batch_size = 96           # rows per step, all tasks together
  c.data.pack = True               # several examples per row (segment ids keep them apart)
  c.data.pack_group = 1024         # examples packed together (docs/data.md, "Streaming input")
  c.data.read_threads = 2          # grain threads reading and packing ahead of the step
  c.data.prefetch_groups = 2       # packed groups per task held ready
  c.data.input_shards = 0          # shares of the training stream (0: one per process); fixed,
                                   #   the batches do not depend on the process count
  c.data.rates = 'explicit'        # 'explicit' | 'size' | 'temperature'
  c.data.temperature = 2.0         # for rates='temperature'
  c.data.eval_batch_size = 64
  c.data.eval_examples = 512       # cap per task and split for periodic evals (0 = all)

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ''            # a tokenizer.json; '' trains a BPE on the mixture's train text
  c.tokenizer.vocab_size = 512
  c.tokenizer.train_on = ''        # tasks whose text trains the BPE ('': the mixture's)

  c.task_modules = ''              # Python files (comma-separated) that register tasks or task
                                   #   types, imported first (docs/data.md, "Adding a task")

  # Tasks of the mixture: the registry (bloom_jax/tasks.py) declares them; these
  # fields set how they train together.
  # `attention`: 'causal' | 'bidirectional' | 'prefix' ('': the task type's own mode).
  c.tasks = ml_collections.ConfigDict()
  for name, max_length in [('sentiment', 32), ('tagging', 32), ('summarize', 32), ('lm', 64)]:
    c.tasks[name] = ml_collections.ConfigDict(
        dict(rate=1.0, loss_weight=1.0, max_length=max_length, attention=''))
  c.tasks.sentiment.pos_tagger = ''  # a finished tagging run's workdir: its part-of-speech
                                     #   tags become an input (docs/data.md)
  c.tasks.summarize.rate = 2.0     # copying nouns needs more examples than the rest to click

  c.model = ml_collections.ConfigDict()
  c.model.hidden_size = 64
  c.model.n_layer = 2
  c.model.n_head = 4
  c.model.position = 'alibi'       # 'alibi' | 'sinusoidal' | 'none'
  c.model.split_heads = False      # bidirectional attention: half the heads read each way
  c.model.dtype = 'float32'        # compute dtype
  c.model.param_dtype = 'float32'
  # 'none' | 'full' | 'dots'. 'dots' keeps only the matmul outputs for the backward pass and
  # recomputes the cheap elementwise rest: less memory, and on CPU a faster step than
  # 'none', which writes every GeLU intermediate into the layer scan's stacked residuals.
  c.model.remat = 'dots'
  c.model.dropout = 0.0
  c.model.init_std = 0.02

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.schedule = 'cosine'  # 'cosine' | 'linear' | 'constant'
  c.optimizer.weight_decay = 0.01
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.98
  c.optimizer.clip_norm = 1.0
  c.optimizer.grad_accum = 1       # micro-batches per update
  c.optimizer.ema_decay = 0.0      # > 0: evaluate, predict and export a moving average of the
                                   #   parameters with this decay (0: the parameters)
  c.optimizer.ngram_optimizer = 'adamw'  # the bags of n-grams (tasks.<name>.ngrams): 'adamw'
                                   #   as the rest, or 'sgd' | 'adagrad' at their own
  c.optimizer.ngram_learning_rate = 0.0  # peak learning rate (docs/multitask.md)
  return c

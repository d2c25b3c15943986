import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bloom_jax import decoding
from bloom_jax.model import Bloom, BloomConfig, init_cache, unstack_layers

PAD = 3
NEVER = -1  # an EOS id no model emits
PROMPT_LENGTHS = (7, 5, 3, 1)
# Large weights make a tiny random model depend on its context and put clear gaps
# between its top logits, so argmax comparisons survive float reordering.
CFG = BloomConfig(vocab_size=96, hidden_size=32, n_layer=3, n_head=4, init_std=1.0)


def peaky_model(cfg: BloomConfig, seed: int = 0) -> Bloom:
  model = Bloom(cfg, rngs=nnx.Rngs(seed))
  model.word_embeddings[...] = 3.0 * model.word_embeddings[...]
  return model


def left_padded(lengths, vocab_size, seed=0):
  width = max(lengths)
  ids = np.random.default_rng(seed).integers(0, vocab_size, (len(lengths), width))
  mask = (np.arange(width)[None, :] >= width - np.asarray(lengths)[:, None]).astype(np.int32)
  return jnp.asarray(np.where(mask, ids, PAD), jnp.int32), jnp.asarray(mask)


@pytest.fixture(scope='module')
def split():
  return nnx.split(peaky_model(CFG))


@pytest.fixture(scope='module')
def prompts():
  return left_padded(PROMPT_LENGTHS, CFG.vocab_size)


@functools.partial(jax.jit, static_argnames=('graphdef', 'mode'))
def full_logits(graphdef, state, ids, mask, prefix_mask=None, mode='causal'):
  return nnx.merge(graphdef, state)(ids, mask, mode=mode, prefix_mask=prefix_mask)


def argmax_without_cache(split, prompt_ids, prompt_mask, max_new_tokens, eos_id, mode):
  """Step-by-step argmax, re-running the full forward pass over the whole sequence.

  The sequence buffer has room for every new token from the start, masked out until
  written: trailing padding changes nothing before it, and one shape compiles once.
  """
  batch, width = prompt_ids.shape
  ids = np.pad(np.asarray(prompt_ids), ((0, 0), (0, max_new_tokens)), constant_values=PAD)
  mask = np.pad(np.asarray(prompt_mask), ((0, 0), (0, max_new_tokens)))
  prefix_mask = jnp.asarray(mask) if mode == 'prefix' else None
  tokens = np.full((batch, max_new_tokens), PAD)
  done = np.zeros(batch, bool)
  for i in range(max_new_tokens):
    logits = full_logits(*split, jnp.asarray(ids), jnp.asarray(mask), prefix_mask, mode)
    token = np.where(done, PAD, np.argmax(np.asarray(logits[:, width + i - 1]), axis=-1))
    tokens[:, i] = ids[:, width + i] = token
    mask[:, width + i] = 1
    done |= token == eos_id
  return tokens


def log_prob(split, prompt_ids, prompt_mask, continuations):
  """Summed log-probability of each continuation (a token list) after its prompt row."""
  longest = max(len(c) for c in continuations)
  tails = np.array([list(c) + [PAD] * (longest - len(c)) for c in continuations])
  tail_mask = np.array([[1] * len(c) + [0] * (longest - len(c)) for c in continuations])
  ids = jnp.concatenate([prompt_ids, jnp.asarray(tails, jnp.int32)], axis=1)
  mask = jnp.concatenate([prompt_mask, jnp.asarray(tail_mask, jnp.int32)], axis=1)
  logp = jax.nn.log_softmax(full_logits(*split, ids, mask)[:, -longest - 1:-1])
  picked = jnp.take_along_axis(logp, jnp.asarray(tails)[..., None], axis=-1)[..., 0]
  return np.asarray(jnp.sum(picked * tail_mask, axis=1))


def first_new_token(tokens, row, position):
  """An EOS id that makes `row` stop at `position` (the token it emits there first)."""
  token = int(tokens[row, position])
  assert token not in tokens[row, :position], 'pick a row/position where the token is new'
  return token


@pytest.fixture(scope='module')
def free_run(split, prompts):
  """Greedy decoding that never meets an EOS."""
  return decoding.generate(*split, *prompts, max_new_tokens=10, eos_id=NEVER, pad_id=PAD)


@pytest.fixture(scope='module')
def eos_id(free_run):
  return first_new_token(np.asarray(free_run['tokens']), row=1, position=3)


@pytest.mark.parametrize('mode', ['causal', 'prefix'])
def test_cached_greedy_equals_full_forward_argmax(split, prompts, mode):
  out = decoding.generate(*split, *prompts, max_new_tokens=10, eos_id=NEVER, pad_id=PAD,
                          prompt_mode=mode)
  expected = argmax_without_cache(split, *prompts, 10, NEVER, mode)
  np.testing.assert_array_equal(out['tokens'], expected)
  np.testing.assert_array_equal(out['lengths'], [10] * len(PROMPT_LENGTHS))


def test_a_model_unstacked_once_decodes_the_same(split, prompts, free_run):
  graphdef, state = decoding.unstacked(*split)
  unstacked = nnx.merge(graphdef, state)
  assert isinstance(unstacked.h, nnx.List) and unstack_layers(unstacked) is unstacked
  out = decoding.generate(graphdef, state, *prompts, max_new_tokens=10, eos_id=NEVER,
                          pad_id=PAD)
  np.testing.assert_array_equal(out['tokens'], free_run['tokens'])
  np.testing.assert_allclose(out['scores'], free_run['scores'], rtol=1e-5)


def test_prefix_mode_reads_the_prompt_both_ways(split, prompts, free_run):
  prefix = decoding.generate(*split, *prompts, max_new_tokens=10, eos_id=NEVER, pad_id=PAD,
                             prompt_mode='prefix')
  rows_with_context = np.asarray(PROMPT_LENGTHS) > 1
  differs = np.any(np.asarray(prefix['tokens']) != np.asarray(free_run['tokens']), axis=1)
  assert differs[rows_with_context].any()


def test_eos_ends_a_row_and_the_rest_is_pad(split, prompts, eos_id):
  out = decoding.generate(*split, *prompts, max_new_tokens=10, eos_id=eos_id, pad_id=PAD)
  tokens, lengths = np.asarray(out['tokens']), np.asarray(out['lengths'])
  np.testing.assert_array_equal(tokens, argmax_without_cache(split, *prompts, 10, eos_id, 'causal'))
  assert lengths[1] == 4 and tokens[1, 3] == eos_id
  for row, length in enumerate(lengths):
    assert np.all(tokens[row, length:] == PAD)
    assert eos_id not in tokens[row, :length - 1]


def test_scores_are_summed_log_probs(split, prompts, eos_id):
  out = decoding.generate(*split, *prompts, max_new_tokens=10, eos_id=eos_id, pad_id=PAD)
  tokens, lengths = np.asarray(out['tokens']), np.asarray(out['lengths'])
  emitted = [list(t[:n]) for t, n in zip(tokens, lengths, strict=True)]
  np.testing.assert_allclose(out['scores'], log_prob(split, *prompts, emitted), rtol=1e-4)


def test_loop_stops_once_every_row_has_ended(split, prompts, eos_id):
  graphdef, state = split
  steps = []

  def logits_fn(state, ids, mask, cache, mode, prefix_mask):
    jax.debug.callback(lambda: steps.append(1))
    return nnx.merge(graphdef, state)(ids, mask, mode=mode, prefix_mask=prefix_mask, cache=cache)

  out = jax.jit(lambda state, ids, mask: decoding.decode(
      logits_fn, lambda b, n: init_cache(CFG, b, n), state, ids, mask, max_new_tokens=30,
      eos_id=eos_id, pad_id=PAD))(state, prompts[0][1:2], prompts[1][1:2])
  jax.effects_barrier()
  # The prompt pass, then one step per token fed back: all but the EOS.
  assert int(out['lengths'][0]) == 4
  assert len(steps) == 4


def test_beam_of_one_is_greedy(split, prompts, eos_id):
  greedy = decoding.generate(*split, *prompts, max_new_tokens=10, eos_id=eos_id, pad_id=PAD)
  beam = decoding.generate(*split, *prompts, max_new_tokens=10, eos_id=eos_id, pad_id=PAD,
                           method='beam', num_beams=1, length_penalty=0.6)
  np.testing.assert_array_equal(beam['tokens'], greedy['tokens'])
  np.testing.assert_array_equal(beam['lengths'], greedy['lengths'])
  penalty = decoding.gnmt_length_penalty(greedy['lengths'], 0.6)
  np.testing.assert_allclose(beam['scores'], greedy['scores'] / penalty, rtol=1e-5)


def test_beam_search_scores_at_least_greedy(split, prompts, eos_id):
  greedy = decoding.generate(*split, *prompts, max_new_tokens=10, eos_id=eos_id, pad_id=PAD)
  beam = decoding.generate(*split, *prompts, max_new_tokens=10, eos_id=eos_id, pad_id=PAD,
                           method='beam', num_beams=4, length_penalty=1.0)
  greedy_scores = greedy['scores'] / decoding.gnmt_length_penalty(greedy['lengths'], 1.0)
  assert np.all(np.asarray(beam['scores']) >= np.asarray(greedy_scores) - 1e-5)
  assert np.any(np.asarray(beam['scores']) > np.asarray(greedy_scores) + 1e-3)
  tokens, lengths = np.asarray(beam['tokens']), np.asarray(beam['lengths'])
  found = [list(t[:n]) for t, n in zip(tokens, lengths, strict=True)]
  recomputed = log_prob(split, *prompts, found) / decoding.gnmt_length_penalty(lengths, 1.0)
  np.testing.assert_allclose(beam['scores'], recomputed, rtol=1e-4)


def history_logits_fn(table, ids, mask, cache, mode, prefix_mask):
  """A synthetic LM: logits are the row of a random `table` picked by a hash of the whole
  sequence so far, so a beam fed another beam's history scores visibly wrong. Its cache
  keeps the history [T, B], batch second, as no real cache does."""
  history = jax.lax.dynamic_update_slice_in_dim(cache['history'], ids.T, cache['index'], 0)
  index = cache['index'] + ids.shape[1]
  return table[history_hash(history, index, table.shape[0])][:, None], {
      'history': history, 'index': index}


def history_hash(history, length, size):
  """sum_j (token_j + 1) 5^j mod `size` over the first `length` rows of [T, B] `history`."""
  powers = jnp.array([pow(5, j, size) for j in range(history.shape[0])])[:, None]
  seen = jnp.arange(history.shape[0])[:, None] < length
  return jnp.sum(jnp.where(seen, (history + 1) * powers, 0), axis=0) % size


def history_log_prob(log_probs, prompt, continuation):
  """The synthetic LM's log-probability of `continuation` after `prompt`, in plain Python."""
  sequence, total = [int(t) for t in prompt] + list(continuation), 0.0
  for i in range(len(prompt), len(sequence)):
    code = sum((t + 1) * 5 ** j for j, t in enumerate(sequence[:i])) % len(log_probs)
    total += log_probs[code, sequence[i]]
  return total


def new_history(batch, length):
  return {'history': jnp.zeros((length, batch), jnp.int32), 'index': jnp.zeros((), jnp.int32)}


def random_table(seed, eos, eos_bias):
  return (3 * jax.random.normal(jax.random.key(seed), (997, 4))).at[:, eos].add(eos_bias)


def history_search(**options):
  """Jitted decoding of full-length prompts [B, Lp] with the synthetic LM of a table."""
  return jax.jit(lambda table, prompt_ids: decoding.decode(
      history_logits_fn, new_history, table, prompt_ids, jnp.ones_like(prompt_ids), pad_id=PAD,
      **options))


# A rare EOS makes the best sequences long enough for histories to matter; a likely
# one makes many beams end early.
@pytest.mark.parametrize('alpha, eos_bias', [(0.0, -3.0), (1.5, -3.0), (1.5, 1.0)])
def test_wide_beam_finds_the_best_sequence(alpha, eos_bias):
  # Vocabulary 4 and 4 new tokens give 121 possible continuations; 108 beams keep all of
  # them, so beam search must return the exhaustive optimum.
  eos, steps = 2, 4
  prompt_ids = jnp.array([[0, 1], [3, 3]], jnp.int32)
  search = history_search(max_new_tokens=steps, eos_id=eos, method='beam', num_beams=108,
                          length_penalty=alpha)
  others = [t for t in range(4) if t != eos]
  candidates = [list(p) + [eos] for n in range(steps) for p in itertools.product(others, repeat=n)]
  candidates += [list(p) for p in itertools.product(others, repeat=steps)]
  penalties = np.array([float(decoding.gnmt_length_penalty(len(c), alpha)) for c in candidates])
  for seed in range(3):
    table = random_table(seed, eos, eos_bias)
    log_probs = np.asarray(jax.nn.log_softmax(table))
    out = search(table, prompt_ids)
    for row in range(2):
      scores = np.array([history_log_prob(log_probs, prompt_ids[row], c) for c in candidates])
      scores /= penalties
      best = candidates[int(np.argmax(scores))]
      assert int(out['lengths'][row]) == len(best)
      assert list(np.asarray(out['tokens'][row, :len(best)])) == best
      np.testing.assert_allclose(out['scores'][row], scores.max(), rtol=1e-5)


@pytest.mark.parametrize('alpha', [0.0, 1.5])
def test_one_beam_is_greedy_on_random_histories(alpha):
  prompt_ids = jnp.array([[0, 1], [3, 3], [1, 0], [2, 2]], jnp.int32)
  greedy = history_search(max_new_tokens=8, eos_id=2, method='greedy')
  beam = history_search(max_new_tokens=8, eos_id=2, method='beam', num_beams=1,
                        length_penalty=alpha)
  for seed in range(5):
    table = random_table(seed, eos=2, eos_bias=0.0)
    np.testing.assert_array_equal(beam(table, prompt_ids)['tokens'],
                                  greedy(table, prompt_ids)['tokens'])


def test_beam_search_decides_each_example_as_if_alone():
  # Examples in one batch are decided at different steps; each must get what it gets alone.
  prompt_ids = jnp.array([[0, 1], [3, 3], [1, 0], [2, 2], [1, 1]], jnp.int32)
  search = history_search(max_new_tokens=12, eos_id=2, method='beam', num_beams=2,
                          length_penalty=2.0)
  for seed in range(10):
    table = random_table(seed, eos=2, eos_bias=0.0)
    together = search(table, prompt_ids)
    for row in range(len(prompt_ids)):
      single = search(table, prompt_ids[row:row + 1])
      np.testing.assert_array_equal(together['tokens'][row], single['tokens'][0])
      np.testing.assert_allclose(together['scores'][row], single['scores'][0], rtol=1e-6)


def test_sampling_is_deterministic_per_seed(split, prompts):
  def sample(seed):
    return np.asarray(decoding.generate(*split, *prompts, max_new_tokens=10, eos_id=NEVER,
                                        pad_id=PAD, method='sample', temperature=2.0,
                                        seed=seed)['tokens'])

  np.testing.assert_array_equal(sample(0), sample(0))
  assert np.any(sample(0) != sample(1))


@pytest.mark.parametrize('filters', [{'top_k': 1}, {'top_p': 1e-6}])
def test_sampling_from_the_top_token_is_greedy(split, prompts, free_run, filters):
  out = decoding.generate(*split, *prompts, max_new_tokens=10, eos_id=NEVER, pad_id=PAD,
                          method='sample', temperature=2.0, seed=3, **filters)
  np.testing.assert_array_equal(out['tokens'], free_run['tokens'])


@pytest.mark.parametrize('temperature, top_k, top_p, expected', [
    (1.0, 0, 1.0, [0.4, 0.3, 0.2, 0.1]),
    (0.5, 0, 1.0, [16 / 30, 9 / 30, 4 / 30, 1 / 30]),  # p ** 2, renormalised
    (1.0, 2, 1.0, [4 / 7, 3 / 7, 0, 0]),
    (1.0, 0, 0.5, [4 / 7, 3 / 7, 0, 0]),               # 0.4 < 0.5 <= 0.4 + 0.3
    (1.0, 0, 0.75, [4 / 9, 3 / 9, 2 / 9, 0]),
    (1.0, 3, 0.6, [4 / 7, 3 / 7, 0, 0]),               # top-p over the renormalised top 3
])
def test_sample_token_distribution(temperature, top_k, top_p, expected):
  logits = jnp.log(jnp.array([[0.4, 0.3, 0.2, 0.1]]))
  keys = jax.random.split(jax.random.key(0), 40_000)
  draws = jax.vmap(lambda key: decoding.sample_token(key, logits, temperature, top_k, top_p))(keys)
  frequencies = np.bincount(np.asarray(draws).ravel(), minlength=4) / len(keys)
  np.testing.assert_allclose(frequencies, expected, atol=0.01)


@pytest.mark.skipif(jax.device_count() < 4, reason='needs 4 devices (a forced CPU count)')
def test_decoding_runs_on_sharded_state(split, prompts, eos_id):
  graphdef, state = split
  mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ('data', 'tensor'))
  vocab_split = NamedSharding(mesh, PartitionSpec('tensor'))
  replicated = NamedSharding(mesh, PartitionSpec())
  sharded_state = jax.tree.map(
      lambda x: jax.device_put(x, vocab_split if x.shape[0] == CFG.vocab_size else replicated),
      state)
  batch = NamedSharding(mesh, PartitionSpec('data'))
  sharded_prompts = [jax.device_put(x, batch) for x in prompts]
  for method in ('greedy', 'beam'):
    expected = decoding.generate(graphdef, state, *prompts, max_new_tokens=10, eos_id=eos_id,
                                 pad_id=PAD, method=method)
    out = decoding.generate(graphdef, sharded_state, *sharded_prompts, max_new_tokens=10,
                            eos_id=eos_id, pad_id=PAD, method=method)
    np.testing.assert_array_equal(out['tokens'], expected['tokens'])


def test_bad_options_are_named(split, prompts):
  with pytest.raises(ValueError, match="method.*'topk'.*top_p"):
    decoding.generate(*split, *prompts, max_new_tokens=4, eos_id=2, pad_id=PAD, method='topk',
                      top_p=0.0)


def test_greedy_matches_transformers(tmp_path):
  pytest.importorskip('transformers')
  torch = pytest.importorskip('torch')
  from bloom_jax import hf
  from tests.hf_fixtures import padded_batch, random_hf_bloom, save_hf

  hf_model = random_hf_bloom(vocab_size=96, hidden_size=32, n_head=4, n_layer=2)
  ids, mask = padded_batch(np.random.default_rng(2), 96, PROMPT_LENGTHS, 7, 'left')
  with torch.no_grad():
    hf_out = hf_model.generate(torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                               max_new_tokens=12, do_sample=False, use_cache=True,
                               pad_token_id=PAD, eos_token_id=2).numpy()[:, ids.shape[1]:]

  model = hf.load(save_hf(hf_model, str(tmp_path)))
  ours = decoding.generate(*nnx.split(model), jnp.asarray(ids, jnp.int32), jnp.asarray(mask),
                           max_new_tokens=12, eos_id=2, pad_id=PAD)
  tokens = np.asarray(ours['tokens'])
  assert hf_out.shape[1] > 1 and len(np.unique(hf_out)) > 4, 'a degenerate continuation'
  # transformers stops once every row has ended, so its output may be shorter.
  np.testing.assert_array_equal(tokens[:, :hf_out.shape[1]], hf_out)
  assert np.all(tokens[:, hf_out.shape[1]:] == PAD)

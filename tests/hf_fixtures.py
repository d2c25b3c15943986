"""Random tiny transformers BLOOM checkpoints, for parity tests that need no network.

Importing this module needs torch and transformers; callers guard it with
`pytest.importorskip`.
"""

import os

import numpy as np
import torch
import transformers


def random_hf_bloom(vocab_size: int, hidden_size: int, n_head: int, n_layer: int,
                    seed: int = 0) -> transformers.BloomForCausalLM:
  """A BloomForCausalLM whose every parameter is random, biases and LayerNorms included.

  HF's init leaves biases at 0 and LayerNorm scales at 1, which would hide a wrong
  layout for exactly those tensors (e.g. the head-interleaved QKV bias); std 0.02
  would also make logits so small that 1e-4 proves little.
  """
  cfg = transformers.BloomConfig(vocab_size=vocab_size, hidden_size=hidden_size, n_head=n_head,
                                 n_layer=n_layer, hidden_dropout=0.0, attention_dropout=0.0)
  torch.manual_seed(seed)
  model = transformers.BloomForCausalLM(cfg).eval()
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
      if 'layernorm' in name or name.startswith('transformer.ln_f'):
        p.copy_((1.0 + 0.2 * noise) if name.endswith('weight') else 0.2 * noise)
      elif name.endswith('bias'):
        p.copy_(0.2 * noise)
      else:
        fan_in = p.shape[-1]
        p.copy_(noise * (1.5 / np.sqrt(fan_in)))
  return model


def save_hf(model: transformers.BloomForCausalLM, directory: str, **kwargs) -> str:
  os.makedirs(directory, exist_ok=True)
  model.save_pretrained(directory, **kwargs)
  return directory


def hf_logits(model: transformers.BloomForCausalLM, ids: np.ndarray,
              mask: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    out = model(input_ids=torch.as_tensor(np.asarray(ids, np.int64)),
                attention_mask=torch.as_tensor(np.asarray(mask, np.int64)))
  return out.logits.float().numpy()


def padded_batch(rng: np.random.Generator, vocab_size: int, lengths, total: int, side: str):
  """ids and mask [len(lengths), total]: row r has lengths[r] real tokens, padded on `side`."""
  ids = rng.integers(0, vocab_size, (len(lengths), total))
  mask = np.zeros((len(lengths), total), np.int64)
  for r, n in enumerate(lengths):
    if side == 'left':
      mask[r, total - n:] = 1
    else:
      mask[r, :n] = 1
  return ids, mask

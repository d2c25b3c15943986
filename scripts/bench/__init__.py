"""scripts/benchmark.py's measurements, by theme.

  probes       timers, ceilings, XLA's cost and memory analysis, products alone, our step
  comparison   the default run: ours against transformers, compile time, remat memory
  accelerator  --config: one config's train step per (remat, attention kernel) variant
"""

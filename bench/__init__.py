"""Benchmark: what parity costs beyond the renders themselves.

Five benchmarks, one module each, all run from the repository root as
``python -m bench [options]`` (the options and which benchmark they pick:
:mod:`bench.__main__`; what each measures and how to read it: ``bench/README.md``):

- :mod:`bench.cpu`, the default: one ai-toolkit job rendered four ways (a bare diffusers
  loop, ``parity run`` without and with attribution, a per-request server-like loop) and
  one API request two ways (``parity render``, a bare loop), each variant in a fresh
  process, on the tiny models::

      python -m bench                  # 3 checkpoints x 4 samples, 6 steps, 3 repeats
      python -m bench --quick          # 2 x 2, 2 steps, 1 repeat
      python -m bench --json out.json  # every measurement

- :mod:`bench.fleet`: jobs per hour of one multi-job ``parity run`` with 1 and with 2
  local workers (CPU): ``python -m bench --fleet [--quick]``.
- :mod:`bench.full_size`: the real Z-Image architecture with random weights (CUDA),
  variants a-d in one process at 1024x1024, and metric throughput:
  ``python -m bench --full-size --device cuda``; ``--scale tiny`` runs the same code
  path at toy size, also on CPU.
- :mod:`bench.noise_floor`: with ``--full-size --noise-floor``, how far renders of one
  setting move with SDPA's kernel and with TF32, scored with parity's metrics.
- :mod:`bench.oom`: with ``--full-size --oom-fallback``, the engine's out-of-memory
  fallback exercised for real (CUDA only).

:mod:`bench.common` holds what they share. ``bash bench/gpu.sh`` runs the full-size
benchmark with both GPU checks as one command. ``bench`` is not part of the installed
``parity`` package: it imports from the repository root (``python -m`` puts the current
folder on the path; from elsewhere, put the checkout on ``PYTHONPATH``).
"""

"""The FLUX.1 family's facts: FLUX.1-dev LoRAs trained with ai-toolkit (``arch: flux``).

- :mod:`parity.flux.tiny`: a deterministic tiny random-weight FLUX.1 checkpoint in
  diffusers format, for tests and for making ground truth with the real upstream code.

What ai-toolkit and the reference server each do for this family, with the upstream file,
line and commit of every rule, is written down in ``docs/families/flux.md``.

Nothing here imports a stage of parity: the stages ask these modules.
"""

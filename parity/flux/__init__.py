"""The FLUX.1 family's facts: FLUX.1-dev LoRAs trained with ai-toolkit (``arch: flux``).

- :mod:`parity.flux.aitk`: how ai-toolkit samples a FLUX.1 preview (its era, scheduler,
  qtypes, and the preview options parity refuses);
- :mod:`parity.flux.server`: the reference server's ``flux`` model;
- :mod:`parity.flux.checkpoints`: FLUX.1-dev's hub id, transformer class and scheduler;
- :mod:`parity.flux.pipeline`: how ``FluxPipeline`` is loaded, fed and called;
- :mod:`parity.flux.family`: all of it as one :class:`parity.family.Family`;
- :mod:`parity.flux.tiny`: a deterministic tiny random-weight FLUX.1 checkpoint in
  diffusers format, for tests and for making ground truth with the real upstream code.

What ai-toolkit and the reference server each do for this family, with the upstream file,
line and commit of every rule, is written down in ``docs/families/flux.md``.

Nothing here imports a stage of parity: the stages ask these modules.
"""

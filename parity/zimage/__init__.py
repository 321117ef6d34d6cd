"""The Z-Image family's facts: Z-Image, Z-Image-Turbo and De-Turbo.

- :mod:`parity.zimage.aitk`: how ai-toolkit samples a Z-Image preview (defaults, floors,
  guidance, scheduler shift, quantization settings, release eras);
- :mod:`parity.zimage.server`: the reference server's rules and its request schema;
- :mod:`parity.zimage.diffusers_era`: what ``ZImagePipeline`` does in each diffusers era;
- :mod:`parity.zimage.checkpoints`: hub ids and the reference models' checkpoints;
- :mod:`parity.zimage.tiny`: deterministic tiny random-weight checkpoints for tests.

Nothing here imports a stage of parity: the stages ask these modules.
"""

"""The Z-Image family's facts: Z-Image, Z-Image-Turbo and De-Turbo.

- :mod:`parity.zimage.aitk`: how ai-toolkit samples a Z-Image preview (guidance, size
  floor and sigmas per release era, scheduler shift, qtypes);
- :mod:`parity.zimage.server`: the reference server's three Z-Image models;
- :mod:`parity.zimage.diffusers_era`: what ``ZImagePipeline`` does in each diffusers era;
- :mod:`parity.zimage.checkpoints`: hub ids and the reference models' checkpoints;
- :mod:`parity.zimage.pipeline`: how ``ZImagePipeline`` is loaded, fed and called;
- :mod:`parity.zimage.family`: all of it as one :class:`parity.family.Family`;
- :mod:`parity.zimage.tiny`: deterministic tiny random-weight checkpoints for tests.

Nothing here imports a stage of parity: the stages ask these modules.
"""

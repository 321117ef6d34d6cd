"""The Qwen-Image family's facts: Qwen/Qwen-Image and Qwen-Image-2512 LoRAs trained with
ai-toolkit (``arch: qwen_image``, ``qwen_image:2512``).

- :mod:`parity.qwenimage.aitk`: how ai-toolkit samples a Qwen-Image preview (its era,
  size floor to 32, scheduler, qtypes, tiled VAE decode under ``low_vram``);
- :mod:`parity.qwenimage.server`: the reference server's ``qwen_image`` and
  ``qwen_image_2512`` models;
- :mod:`parity.qwenimage.checkpoints`: hub ids, transformer class and the shipped
  scheduler;
- :mod:`parity.qwenimage.pipeline`: how ``QwenImagePipeline`` is loaded, fed and called
  (true CFG);
- :mod:`parity.qwenimage.family`: all of it as one :class:`parity.family.Family`;
- :mod:`parity.qwenimage.tiny`: a deterministic tiny random-weight Qwen-Image checkpoint
  in diffusers format, for tests and for making ground truth with the real upstream code.

What ai-toolkit and the reference server each do for this family, with the upstream file,
line and commit of every rule, is written down in ``docs/families/qwen-image.md``.

Nothing here imports a stage of parity: the stages ask these modules.
"""

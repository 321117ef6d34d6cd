"""The Qwen-Image family's facts: Qwen/Qwen-Image LoRAs trained with ai-toolkit
(``arch: qwen_image``).

- :mod:`parity.qwenimage.tiny`: a deterministic tiny random-weight Qwen-Image checkpoint
  in diffusers format, for tests and for making ground truth with the real upstream code.
"""

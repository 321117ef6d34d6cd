"""parity: does the reference server reproduce your ai-toolkit LoRA previews (Z-Image, FLUX.1)?"""

__version__ = "0.1.0"

"""parity: does the reference server reproduce your ai-toolkit Z-Image LoRA previews?"""

__version__ = "0.1.0"

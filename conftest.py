"""Repository-level pytest configuration: tests run on CPU and never reach a model hub."""

import os

# Set before any Hugging Face library is imported, so nothing can try the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tiny models render fastest on one thread; several threads per pytest worker
# oversubscribe the cores and slow renders down by an order of magnitude.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

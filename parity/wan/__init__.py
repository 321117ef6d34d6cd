"""Wan text-to-video (Wan 2.1 T2V, Wan 2.2 A14B T2V)."""

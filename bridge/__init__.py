"""sdbridge: a real-time StreamDiffusion bridge for NDI, Spout and shared memory."""

__version__ = "0.1.0"

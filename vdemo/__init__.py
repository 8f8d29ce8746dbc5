"""vdemo: an interactive browser lab for video diffusion (see README.md: what exists, and its Architecture section)."""

__version__ = "0.1.0"

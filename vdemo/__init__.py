"""vdemo: an interactive browser lab for video diffusion (see README.md and DESIGN.md)."""

__version__ = "0.1.0"

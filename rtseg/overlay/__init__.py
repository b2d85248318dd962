"""Turning results into images."""

from .annotate import MODES, OverlayStyle, annotate, colorize

__all__ = ["MODES", "OverlayStyle", "annotate", "colorize"]

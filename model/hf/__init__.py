"""Hugging Face export templates: the files `neurograph export hf` ships beside copies of the
model family modules (see launch/export/hf.py). They are written for the exported folder's flat
layout: `from ..x import` here becomes `from .x import` there."""

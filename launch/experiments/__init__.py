"""Experiments as a product feature: sweeps of configs x seeds on one prepared dataset
(`sweep.py`), Markdown reports made from their MLflow runs (`report.py`), and inspection of a
trained neuron graph (`inspection.py`)."""

"""Serving: the registry's champion behind ``/predict``, with feedback, health and metrics."""

"""Monitoring: drift between a window of production predictions and the champion's reference (Evidently)."""

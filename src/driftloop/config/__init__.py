"""Configuration: one typed settings object, loaded from ``configs/*.yaml`` and the environment."""

"""The entry layer: the ``driftloop`` command, the demo scenario and the DVC pipeline's stages."""

"""Pre-training: the stage on the driver (stage.py) and the loop on every Ray Train worker (loop.py)."""

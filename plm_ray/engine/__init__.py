"""The one training-step layer: the DeepSpeed config an engine spec and the hardware make
(deepspeed_config.py) and the engine around it (engine.py)."""

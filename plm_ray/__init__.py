"""plm-ray: BERT-style pre-training (Ray Train + DeepSpeed ZeRO) and fine-tuning sweeps (Ray Tune)."""

__version__ = "0.2.0"

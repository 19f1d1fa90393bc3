"""`python -m benchmarks.gpu` (`make bench-gpu`): plm-ray against the HF Trainer and a plain PyTorch
loop on one GPU, side by side in one run (BENCHMARKS.md, "GPU"). Modules: monitor (GPU sampling and
the matmul peak), recipes (HF Trainer, plain loop, plm-ray's engine), commands (plm-ray's own CLI),
finetune (a sweep's trials against HF Trainer fine-tuning)."""

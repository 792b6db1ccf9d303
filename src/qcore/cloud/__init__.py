"""The cloud side (PyTorch): model, fake quantization, training, calibration, export."""

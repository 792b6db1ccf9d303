"""The edge side (NumPy only, never PyTorch): inference and calibration of a QuantizedModel."""

"""NumPy-only data subsets kept on the device: QCore selection and update."""

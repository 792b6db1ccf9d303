"""NumPy-only building blocks shared by the cloud and the edge side."""

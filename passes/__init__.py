"""onnxopt passes: one module or folder per family; see registry.py."""

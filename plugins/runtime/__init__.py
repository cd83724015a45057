"""Running exported bundles with onnxruntime, numpy and the tokenizer library: no torch."""

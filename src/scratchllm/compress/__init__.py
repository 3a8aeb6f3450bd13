"""Compression: smaller, faster models from trained ones (layer 3: reads models, never trains them).

- `quantize`: weight-only int8 (per output channel) and int4 (group-wise, symmetric or asymmetric)
  quantization of a model's linear layers and token embedding; the layer that runs them is
  `model.quant_linear`.
- `blocks`: llama.cpp's q8_0 and q4_0 block formats (32 weights and an fp16 scale a block), for GGUF files
  (`interop.gguf`).

Later here (the compression issue): pruning.
"""

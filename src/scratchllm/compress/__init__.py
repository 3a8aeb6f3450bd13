"""Compression: smaller, faster models from trained ones (layer 3: reads models, never trains them).

- `quantize`: weight-only int8 (per output channel) and int4 (group-wise, symmetric or asymmetric)
  quantization of a model's linear layers and token embedding; the layer that runs them is
  `model.quant_linear`.

Later here (the compression issue): pruning.
"""

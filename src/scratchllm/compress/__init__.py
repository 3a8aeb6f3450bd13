"""Compression: smaller, faster models from trained ones (layer 3, beside `train`).

- `quantize`: weight-only int8 (per output channel) and int4 (group-wise, symmetric or asymmetric)
  quantization of a model's linear layers and token embedding; the layer that runs them is
  `model.quant_linear`.
- `prune`: magnitude pruning of the blocks' linear layers, unstructured (masks, `model.masks`, keep
  the zeros through training) or structured (whole attention heads or MLP neurons: the tensors and the
  config shrink), and a recovery finetune through the one training loop (`train.loop`).
- `blocks`: llama.cpp's q8_0 and q4_0 block formats (32 weights and an fp16 scale a block), for GGUF files
  (`interop.gguf`).
"""

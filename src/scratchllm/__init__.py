"""scratchllm: a GPT built from first principles on PyTorch.

Importing the package is cheap: it loads no torch. Subpackages by layer (see README and DESIGN):
config/runtime/errors, then tokenizer and model, then data, generate and steps, then train.
"""

__version__ = "0.1.0"

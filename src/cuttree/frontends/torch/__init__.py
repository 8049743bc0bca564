"""The PyTorch frontend: reading a model (trace, labels, op rules, module rules), changing it
(surgery, folding), checking it (validate), running it (calibrate, sparsity masks, measure).

The module rules of attention (``nn.MultiheadAttention``, timm's, torchvision's and Hugging
Face's) are registered when this package is imported; they recognise third-party classes by
module and name, so timm and transformers are never imported here. The twin classes that
replace some of those modules for tracing are in :mod:`cuttree.frontends.torch.plugins`.
Nothing here imports keras.
"""

# Register the module rules of attention and of the third-party families into
# cuttree.frontends.torch.rules (which never imports them back).
from cuttree.frontends.torch import attention  # noqa: F401
from cuttree.frontends.torch.plugins import timm, torchvision, transformers  # noqa: F401

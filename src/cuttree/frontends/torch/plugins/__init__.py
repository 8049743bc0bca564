"""Plugins for third-party model families: the twin classes and head-count updates of
torchvision's and timm's attention blocks that cuttree traces in a form of its own.

:mod:`cuttree.frontends.torch.attention` recognises these classes by module and name and imports
a plugin only when it meets one of its modules, so cuttree never imports timm or torchvision for
a model that does not use them.
"""

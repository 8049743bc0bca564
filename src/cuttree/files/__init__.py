"""Files: the ``.cuttree`` format (``cuttree_file``), which code a file may run (``trust``), the
sparse codec (``sparse``), atomic writes (``atomic``), ONNX export checked against the original
(``onnx``) and Hugging Face ``save_pretrained`` output (``huggingface``). No pickle anywhere.
"""

from typing import Any

from cuttree import _aliases


def __getattr__(name: str) -> Any:  # the names the old module cuttree.files held
    return _aliases.old_name(__name__, name)

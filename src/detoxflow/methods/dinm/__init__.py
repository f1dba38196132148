"""DINM (Wang et al., ACL 2024): detoxify by locating and editing one layer per SafeEdit instance.

``locate`` finds the layer where the safe and unsafe responses differ most,
``edit`` tunes that layer's MLP output projection and restores it afterwards.
The method side knows SafeEdit's data format but nothing of its metrics.
"""

from .edit import DinmEditor, DinmSettings, EditRecord, edit_model, kl_term, knowledge_reference, nll_term
from .inputs import EditInputs, encode_pair, instance_inputs
from .locate import Location, locate_toxic_layer

__all__ = [
    "DinmEditor", "DinmSettings", "EditInputs", "EditRecord", "Location", "edit_model",
    "encode_pair", "instance_inputs", "kl_term", "knowledge_reference", "locate_toxic_layer", "nll_term",
]

"""One module per SAE architecture; importing this package registers them all by name."""

from assay.sae.architectures.batchtopk import BatchTopKConfig, BatchTopKSAE
from assay.sae.architectures.gated import GatedConfig, GatedSAE
from assay.sae.architectures.jumprelu import JumpReLUConfig, JumpReLUSAE
from assay.sae.architectures.matryoshka import MatryoshkaConfig, MatryoshkaSAE
from assay.sae.architectures.qf_jumprelu import QFJumpReLUConfig, QFJumpReLUSAE
from assay.sae.architectures.relu import ReLUConfig, ReLUSAE
from assay.sae.architectures.topk import TopKConfig, TopKSAE

__all__ = [
    "BatchTopKConfig", "BatchTopKSAE", "GatedConfig", "GatedSAE", "JumpReLUConfig", "JumpReLUSAE",
    "MatryoshkaConfig", "MatryoshkaSAE", "QFJumpReLUConfig", "QFJumpReLUSAE", "ReLUConfig", "ReLUSAE",
    "TopKConfig", "TopKSAE",
]

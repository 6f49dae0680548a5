"""Networks speaking the library's contract: ``UNet(z, lam, c) -> eps`` (null label ``K``) and
``NoiseClassifier(z, lam) -> logits``, with named size presets (``tiny``, ``small``, ``base``)."""

from .classifier import CLASSIFIER_PRESETS, ClassifierConfig, NoiseClassifier, classifier_config
from .protocol import GuidedNetwork, Network, check_network
from .student import GuidedStudent, StudentConfig, student_config
from .unet import UNET_PRESETS, UNet, UNetConfig, unet_config

__all__ = [
    "GuidedNetwork",
    "Network",
    "check_network",
    "UNetConfig",
    "UNet",
    "unet_config",
    "UNET_PRESETS",
    "ClassifierConfig",
    "NoiseClassifier",
    "classifier_config",
    "CLASSIFIER_PRESETS",
    "GuidedStudent",
    "StudentConfig",
    "student_config",
]

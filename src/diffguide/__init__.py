"""diffguide: guided diffusion models — classifier-free and classifier guidance, samplers, evaluation.

    import diffguide as dg
    model = dg.load("mnist")
    x = model.sample(range(10), w=2.0, sampler="ddim", steps=50, seed=0)
"""

from . import guidance, prediction, samplers, schedule
from .api import Pipeline, load, sample_images
from .guidance import RewardGuidance, guided
from .sampling import SamplingConfig

__version__ = "0.1.0"
__all__ = ["Pipeline", "load", "sample_images", "guided", "RewardGuidance", "SamplingConfig", "guidance", "prediction",
           "samplers", "schedule"]

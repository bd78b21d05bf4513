"""ddpm-objectives-hf: the whole DDPM training objective for Hugging Face diffusers."""

from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  (diffusers looks it up here)

from .elbo import call_model, slice_model_kwargs, variational_bound
from .likelihood import discretized_gaussian_log_likelihood, normal_kl
from .losses import DiffusionLossMixin, DiffusionLossOutput, diffusion_loss
from .pipeline_ddpm_objective import DDPMObjectivePipeline
from .scheduling_ddpm_objective import DDPMObjectiveScheduler
from .timestep_sampling import (
    ImportanceSampler,
    LogitNormalSampler,
    StratifiedSampler,
    TimestepSampler,
    make_timestep_sampler,
)
from .weighting import WEIGHTINGS, register_weighting

__all__ = [
    "DDPMObjectivePipeline",
    "DDPMObjectiveScheduler",
    "DiffusionLossMixin",
    "DiffusionLossOutput",
    "ImportanceSampler",
    "LogitNormalSampler",
    "StratifiedSampler",
    "TimestepSampler",
    "WEIGHTINGS",
    "call_model",
    "diffusion_loss",
    "discretized_gaussian_log_likelihood",
    "make_timestep_sampler",
    "normal_kl",
    "register_weighting",
    "slice_model_kwargs",
    "variational_bound",
]
__version__ = "0.1.0"

"""vitlab: reference implementations, data, plots, widgets and learner checks for the vitlab course.

`vitlab.device` is the module; its function is `vitlab.device.device()`. The profile helpers are also
here at the top: `vitlab.profile()`, `vitlab.by_profile(...)`, `vitlab.seed_everything(n)`.
"""
from vitlab.device import autocast_dtype, by_profile, profile, seed_everything

__all__ = ["autocast_dtype", "by_profile", "profile", "seed_everything"]
__version__ = "0.1.0"

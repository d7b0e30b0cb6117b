"""When a guide acts along the diffusion time: the guidance window (``side extract --guidance-window``).

The SIDE paper guides at every step (no window). A window ``[t_min, t_max]`` guides only at the sampling
timesteps t inside it; one that holds none of them would turn guidance off without a word, so it is refused
before sampling (`GuidanceWindow.check_fires`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin


@dataclass(frozen=True)
class GuidanceWindow:
    """
    Guide only at the steps whose timestep t lies in ``[t_min, t_max]``.

    Args:
        t_min (`float`): the smallest timestep guided.
        t_max (`float`): the largest timestep guided.

    Example:

    ```py
    >>> from diffusers import DDIMScheduler
    >>> from diffusers_side.guidance.schedule import GuidanceWindow
    >>> window = GuidanceWindow(200, 1000)
    >>> window.contains(500), window.contains(100)
    (True, False)
    >>> GuidanceWindow(500, 1000).check_fires(DDIMScheduler(num_train_timesteps=100), 10)
    Traceback (most recent call last):
    ValueError: guidance_window=(500, 1000) holds none of the 10 sampling timesteps (90 down to 0) ...
    ```
    """

    t_min: float
    t_max: float

    def __post_init__(self):
        if math.isnan(self.t_min) or math.isnan(self.t_max) or self.t_min > self.t_max:
            raise ValueError(f"guidance_window=({self.t_min:g}, {self.t_max:g}) must be (t_min, t_max) with t_min <= t_max.")

    @classmethod
    def coerce(cls, window: "GuidanceWindow | tuple[float, float] | list[float] | None") -> "GuidanceWindow | None":
        """A window from a ``(t_min, t_max)`` pair (`None` stays `None`: guide at every step)."""
        if window is None or isinstance(window, GuidanceWindow):
            return window
        if len(window) != 2 or not window[0] <= window[1]:
            raise ValueError(f"guidance_window={window!r} must be (t_min, t_max) with t_min <= t_max.")
        return cls(float(window[0]), float(window[1]))

    def contains(self, timestep: torch.Tensor | float) -> bool:
        """Whether ``timestep`` lies in the window."""
        return self.t_min <= float(timestep) <= self.t_max

    def check_fires(self, scheduler: SchedulerMixin, num_inference_steps: int) -> None:
        """Raise `ValueError` when none of the scheduler's ``num_inference_steps`` timesteps lies in the window."""
        timesteps = [float(t) for t in sampling_timesteps(scheduler, num_inference_steps)]
        if not any(self.contains(t) for t in timesteps):
            raise ValueError(
                f"guidance_window=({self.t_min:g}, {self.t_max:g}) holds none of the {len(timesteps)} sampling timesteps "
                f"({max(timesteps):g} down to {min(timesteps):g}), so guidance would be off at every step; choose a "
                f"window that overlaps [{min(timesteps):g}, {max(timesteps):g}], or drop it to guide at every step."
            )


def sampling_timesteps(scheduler: SchedulerMixin, num_inference_steps: int) -> torch.Tensor:
    """The timesteps ``scheduler`` samples with ``num_inference_steps`` steps, from a copy (``scheduler`` is left as it is)."""
    copy = type(scheduler).from_config(scheduler.config)
    copy.set_timesteps(num_inference_steps)
    return copy.timesteps

"""The resources a training run's job asks for, from its recipe: nodes, one task per device, GPUs, CPUs."""

from dataclasses import dataclass

from ..config import Config
from ..errors import MbtasksError


@dataclass(frozen=True)
class JobResources:
    """What a job asks the scheduler for. One task per device (Lightning's SLURM environment takes each task for one
    process of the run); each task's CPUs are its loader workers and itself."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    timeout_min: int

    @classmethod
    def of_recipe(cls, config: Config, timeout_min: int) -> "JobResources":
        """The recipe's train.num_nodes, train.devices (a count or a list of indices) on train.accelerator, and
        data.num_workers."""
        train = config.train
        devices = train.devices
        if isinstance(devices, str) and devices.strip().isdigit():
            devices = int(devices)
        if isinstance(devices, (list, tuple)):
            devices = len(devices)
        if type(devices) is not int or devices < 1:
            raise MbtasksError(
                f"train.devices={train.devices}: a job asks the scheduler for a number of devices on each node; "
                "set train.devices=N"
            )
        on_gpu = train.accelerator in ("gpu", "cuda")
        return cls(
            nodes=train.num_nodes,
            tasks_per_node=devices,
            gpus_per_node=devices if on_gpu else 0,
            cpus_per_task=config.data.num_workers + 1,
            timeout_min=timeout_min,
        )

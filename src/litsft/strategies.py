"""FSDP2 over every device of every node, from one config line (no mesh sizes to keep in sync)."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from litsft.atomic_files import replace_folder, temporary_folder_beside
from litsft.lightning_compat import saves_distributed_checkpoint, set_data_parallel_size


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallelism with FSDP2 (`fully_shard`), which also runs on CPU (gloo).

    Lightning's `ModelParallelStrategy` with a data-parallel size of all processes and no tensor parallelism:
    `SFTModule.configure_model` shards each transformer block. Unlike Lightning's `FSDPStrategy` (FSDP1) it
    works on CPU, so the same config is tested here with 2 CPU processes.
    """

    def __init__(
        self,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = timedelta(minutes=30),
    ) -> None:
        """
        Args:
            save_distributed_checkpoint: Each rank writes its shard (fast, a folder); False writes one file.
            process_group_backend: 'nccl' on GPUs, 'gloo' on CPU (default: chosen from the device).
            timeout: Collective timeout.
        """
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )

    def setup_environment(self) -> None:
        # Every process is a data-parallel rank (the parent class would default to one per node).
        set_data_parallel_size(self, self.num_nodes * self.num_processes)
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        """With LoRA the checkpoint holds the adapters alone: check its keys, then load just those (Lightning's
        sharded load asks the checkpoint for every key of the model, the frozen base included)."""
        module = self.lightning_module
        adapters = getattr(module, "adapter_state_keys", None)
        if not adapters:
            return super().load_checkpoint(checkpoint_path, weights_only)
        from litsft.model.lora import check_adapter_keys

        path = Path(self.broadcast(checkpoint_path))
        if not path.is_dir():  # one file (save_distributed_checkpoint false): Lightning loads it non-strictly
            saved = torch.load(path, map_location="cpu", mmap=True, weights_only=weights_only)["state_dict"]
            check_adapter_keys(saved, adapters, module.frozen_state_keys, where=f"checkpoint {path}")
            return super().load_checkpoint(path, weights_only)
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        saved = [k.removeprefix("state_dict.") for k in dcp.FileSystemReader(path).read_metadata().state_dict_metadata]
        saved = [k for k in saved if k.startswith("model.")]
        check_adapter_keys(saved, adapters, module.frozen_state_keys, where=f"checkpoint {path}")
        # the adapters' local shards (views of the parameters), filled from the checkpoint
        state = {"state_dict": {k: v for k, v in get_model_state_dict(module).items() if k in adapters}}
        dcp.load(state, checkpoint_id=path)
        set_model_state_dict(module, state["state_dict"], options=StateDictOptions(strict=False))
        for idx, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{idx}"
            optimizer_state = {key: get_optimizer_state_dict(module, optimizer)}
            dcp.load(optimizer_state, checkpoint_id=path)
            set_optimizer_state_dict(
                module, optimizer, optim_state_dict=optimizer_state[key], options=StateDictOptions(cpu_offload=True)
            )
        return torch.load(path / "meta.pt", weights_only=weights_only)  # Lightning's metadata file (loops, hparams)

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        """A sharded checkpoint (a folder of shards) is written into a temporary folder beside its target, then
        swapped in whole: a crash during the save leaves the previous checkpoint as it was. One file: through
        the strategy's CheckpointIO (atomic too, see litsft.run.checkpoint_io)."""
        if not saves_distributed_checkpoint(self) or storage_options is not None:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        target = Path(self.broadcast(filepath))
        tmp = Path(self.broadcast(str(temporary_folder_beside(target)) if self.global_rank == 0 else None))
        try:
            super().save_checkpoint(checkpoint, tmp)  # every rank writes its shard, rank 0 the metadata
            self.barrier("litsft-sharded-checkpoint-written")
            if self.global_rank == 0:
                if target.is_file():
                    target.unlink()
                replace_folder(tmp, target)
        except BaseException:
            if self.global_rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.barrier("litsft-sharded-checkpoint-in-place")

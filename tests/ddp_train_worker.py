"""One rank of a DDP SAE-training run, for tests/test_distributed_train.py (run by torchrun).

    torchrun --nproc-per-node 2 tests/ddp_train_worker.py OUT ARCH [--resume] [--die-at STEP]

Trains SAE ARCH on `chunks()` (every rank takes chunks r, r + world, ...: what `iter_tokens(part=)`
gives), rank 0 saving to OUT; then every rank's weights are gathered and rank 0 writes
OUT/ranks.json saying whether all ranks ended with the same SAE. `--die-at S`: rank 1 exits hard
at the start of step S (as a killed process would).
"""

from __future__ import annotations

import argparse
import json
import logging
import os

import torch

from assay import distributed
from assay.sae.base import build_sae
from assay.sae.synthetic import PlantedDictionary
from assay.sae.trainer import TrainConfig, Trainer

D_IN, WIDTH, CHUNK, N_CHUNKS = 16, 64, 48, 24
SPARSITY = {"topk": {"k": 4}, "batchtopk": {"k": 4}, "jumprelu": {"l0_coefficient": 0.05},
            "qf_jumprelu": {"l0_coefficient": 0.05, "omega_0": 0.1}}


def chunks() -> list[torch.Tensor]:
    planted = PlantedDictionary(d_in=D_IN, n_features=48, active=3.0, seed=1)
    return [planted.sample(CHUNK) for _ in range(N_CHUNKS)]


def config() -> TrainConfig:
    # 24 x 48 tokens in global batches of 32: 36 steps, the lr decaying over the last 20%
    return TrainConfig(total_tokens=N_CHUNKS * CHUNK, batch_size=32, lr=3e-3, lr_warmup_steps=5, buffer_tokens=256,
                       scale_batches=2, checkpoint_every=4, log_every=4, progress=False, seed=3)


def sae(arch: str):
    return build_sae(arch, d_in=D_IN, d_sae=WIDTH, seed=5, **SPARSITY[arch])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("arch")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--die-at", type=int, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    distributed.join()  # no group when launched as one process
    rank, world = distributed.rank(), distributed.world_size()
    trainer = Trainer({args.arch: sae(args.arch)}, config(), args.out)
    if args.die_at is not None and rank == 1:
        step = trainer._step

        def dying(x):
            if trainer.state.step + 1 == args.die_at:
                os._exit(17)
            step(x)

        trainer._step = dying
    trainer.fit(chunks()[rank::world], resume=args.resume)
    mine = torch.cat([p.detach().reshape(-1) for p in trainer.saes[args.arch].state_dict().values()]).double()
    every = [torch.zeros_like(mine) for _ in range(world)]
    if world > 1:
        torch.distributed.all_gather(every, mine)
    else:
        every = [mine]
    if rank == 0:
        spread = max(float((e - mine).abs().max()) for e in every)
        with open(os.path.join(args.out, "ranks.json"), "w") as f:
            json.dump({"world": world, "max_difference_between_ranks": spread, "steps": trainer.state.step}, f)


if __name__ == "__main__":
    main()

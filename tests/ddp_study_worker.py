"""One rank of `assay experiment saes` under torchrun on the tiny model, for
tests/test_distributed_train.py:  torchrun --nproc-per-node 2 tests/ddp_study_worker.py DATA OUT"""

from __future__ import annotations

import sys

from transformers import AutoTokenizer

import assay.models
from assay import distributed
from assay.experiment import SAESpec, StudyConfig
from assay.experiment.study_saes import run_study_saes
from assay.models.loading import DEFAULT_MODEL
from assay.models.resolve import _resolve
from conftest import tiny_gemma3


def study_config(data: str) -> StudyConfig:
    sae = SAESpec(width=64, k=8, pretrain_tokens=1500, chat_tokens=1500, finetune_tokens=600, max_tokens=64,
                  batch_size=256, eval_texts=2, eval_max_tokens=16)
    return StudyConfig(data=data, layer=1, layer_sweep=False, aggregations=["all.max"], n_boot=20,
                       methods=["dense-logistic", "1-sparse"], sae=sae, autointerp_latents=0, autointerp_lm_latents=0)


def main() -> None:
    data, out = sys.argv[1:3]
    tiny = tiny_gemma3(AutoTokenizer.from_pretrained(_resolve(DEFAULT_MODEL, None)[0]))
    assay.models.load = lambda *a, **k: tiny  # the study loads its model through this name
    distributed.join()
    result = run_study_saes(study_config(data), out, progress=False)
    print(f"rank {distributed.rank()}: {'result' if result else 'no result'}")


if __name__ == "__main__":
    main()

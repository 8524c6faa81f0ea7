"""Two real processes (gloo, world_size=2): every rank gets the same number of batches from uneven shards and
from the JSON sampler, epoch after epoch, under a DDP model whose every step all-reduces (a mismatch would hang
until the process-group timeout and fail the test)."""

from __future__ import annotations

import json
import os
import socket
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import CLIPImageProcessor

from dc.data.datamodule import LlavaDataModule
from dc.data.visual import VisualProcessor
from dc.models.visual import SingleView, ViewTokens

from data_helpers import good_records, image_bytes, shard_sample, write_layout, write_tar
from dc_testing import make_template, tiny_tokenizer

SHARD_SIZES = (9, 3, 7, 2, 6)  # uneven on purpose: 5 shards over 2 ranks × 2 workers
BATCH = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_rank(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    common = dict(
        tokenizer=tiny_tokenizer(),
        template=make_template("vicuna_v1"),
        visual=VisualProcessor(SingleView("pad"), proc, ViewTokens(4, 4), image_size=32),
        batch_size=BATCH,
        max_length=128,
        group_by_modality_length=True,
        megabatch_factor=2,
    )
    result = {}
    for fmt, kw in {
        "shards": {"format": "shards", "shards": f"{root}/shards", "num_workers": 2},
        "json": {"train_file": f"{root}/data.json", "image_folder": f"{root}/images", "num_workers": 0},
    }.items():
        dm = LlavaDataModule(**common, **kw)
        dm.setup()
        loader = dm.train_dataloader()
        counts, ids = [], []
        for epoch in range(2):
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)  # what Lightning does for the JSON sampler
            n = 0
            for batch in loader:
                # a collective per batch, as DDP's gradient all-reduce: every rank must take this step (a rank with
                # fewer batches leaves the other waiting until the timeout). No autograd: after a fork, autograd's
                # threads are unusable when this test process ran a backward pass before (xdist order decides).
                dist.all_reduce(torch.full((1,), float(batch["input_ids"].shape[0])))
                ids.extend(batch["ids"])
                n += 1
            counts.append(n)
        result[fmt] = {"counts": counts, "len": len(loader), "ids": ids}
    Path(root, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def _write_shards(root: Path) -> list[dict]:
    records = good_records(20, 7)
    out = root / "shards"
    out.mkdir()
    manifest, k = {"shards": []}, 0
    for n, size in enumerate(SHARD_SIZES):
        samples = []
        for rec in records[k : k + size]:
            samples.append(shard_sample(f"{k:09d}", rec, image_bytes(k) if "image" in rec else None))
            k += 1
        write_tar(out / f"s-{n:06d}.tar", samples)
        manifest["shards"].append({"name": f"s-{n:06d}.tar", "count": size})
    (out / "index.json").write_text(json.dumps(manifest))
    return records


def test_two_ranks_get_equal_batches(tmp_path):
    records = _write_shards(tmp_path)
    write_layout(tmp_path, records)
    # fork: the two ranks inherit this process's imports (spawn would re-import torch/transformers: ~30 s here)
    mp.start_processes(_run_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    total = sum(SHARD_SIZES)
    # shards: the manifest's count split evenly, exactly, both epochs, though rank 0 holds more shards
    assert r0["shards"]["counts"] == r1["shards"]["counts"] == [total // (2 * BATCH)] * 2
    assert r0["shards"]["len"] == r1["shards"]["len"] == total // (2 * BATCH)
    # json: same count on both ranks, and together they cover every record each epoch
    assert r0["json"]["counts"] == r1["json"]["counts"] == [r0["json"]["len"]] * 2
    assert set(r0["json"]["ids"]) | set(r1["json"]["ids"]) == {r["id"] for r in records}


def test_lightning_leaves_the_samplers_alone(tmp_path, tokenizer, template, visual):
    """Under DDP Lightning would swap a plain sampler for a DistributedSampler; ours already is one."""
    import lightning as L

    records = good_records(8, 2)
    path, folder = write_layout(tmp_path, records)
    dm = LlavaDataModule(
        train_file=str(path),
        image_folder=str(folder),
        tokenizer=tokenizer,
        template=template,
        visual=visual,
        batch_size=2,
    )
    dm.setup()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False)
    loader = dm.train_dataloader()
    assert not trainer._data_connector._requires_distributed_sampler(loader)

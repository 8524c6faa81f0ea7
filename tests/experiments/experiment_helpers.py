"""Overrides that make a recipe point tiny (2 optimizer steps per stage, 8 held-out questions): for sweep tests."""

TINY = [
    "trainer.enable_progress_bar=false",
    "data.batch_size=4",
    "data.prepare.n_pretrain=16",
    "data.prepare.n_instruct=16",
    "data.prepare.n_eval=2",
    "pretrain.stage.global_batch_size=4",
    "+pretrain.trainer.max_steps=2",
    "finetune.stage.global_batch_size=4",
    "+finetune.trainer.max_steps=2",
    "benchmarks.synthetic.root=${data.prepare.root}",
    "benchmarks.synthetic.blank_control=false",
    "benchmarks.synthetic.max_new_tokens=2",
    "eval.batch_size=8",
]

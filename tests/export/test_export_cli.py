"""The commands end to end: dc checkpoint → `python -m dc.export` → eval.py on the export (model=hf) gives the
checkpoint's own answers and accuracy; a reference directory → `python -m dc.export.reference` → a dc checkpoint that
eval.py scores and train.py continues from; an STI export is refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dc.export.__main__ import export
from dc.export.errors import ExportError
from dc.pipeline import evaluate, train

from dc_testing import compose_config
from export_helpers import tiny_cfg  # noqa: F401 - shared fixtures module of these tests


def _train(train_cfg, *overrides: str) -> tuple[Path, Path]:
    cfg = train_cfg("trainer.max_steps=2", *overrides)
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", Path(cfg.data.image_folder).parent


def _answers(path: Path) -> dict[str, str]:
    return {a["id"]: a["text"] for a in map(json.loads, path.read_text().splitlines())}


@pytest.mark.parametrize("connector", ["dci", "sci"])
def test_eval_on_the_export_equals_eval_on_the_checkpoint(train_cfg, tmp_path: Path, connector: str) -> None:
    ckpt, root = _train(train_cfg, f"connector={connector}")
    out = tmp_path / "hf"
    export(compose_config("export", [f"ckpt_path={ckpt}", f"out_dir={out}"]))
    assert (out / "config.json").exists() and list(out.glob("*.safetensors"))
    common = [f"benchmark.root={root}", "benchmark.blank_control=false", "batch_size=4"]
    ours, _ = evaluate(compose_config("eval", [f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'a'}", *common]))
    theirs, _ = evaluate(
        compose_config("eval", ["model=hf", f"model.path={out}", f"paths.output_dir={tmp_path / 'b'}", *common])
    )
    a = _answers(tmp_path / "a" / "synthetic_answers.jsonl")
    b = _answers(tmp_path / "b" / "synthetic_answers.jsonl")
    assert len(a) == 16 and a == b  # identical greedy answers on every held-out question
    assert ours["synthetic/accuracy"] == theirs["synthetic/accuracy"]


def test_sti_export_is_refused_with_the_reason(train_cfg, tmp_path: Path) -> None:
    ckpt, _ = _train(train_cfg, "connector=sti", "trainer.max_steps=1")
    with pytest.raises(ExportError, match="connector=sti") as err:
        export(compose_config("export", [f"ckpt_path={ckpt}", f"out_dir={tmp_path / 'hf'}"]))
    assert "along the token axis" in str(err.value)
    assert not (tmp_path / "hf").exists()


def test_imported_reference_is_a_dc_checkpoint_eval_and_train_use(train_cfg, tmp_path: Path, data_dir: Path) -> None:
    from test_export_reference import D, random_projector, tiny_llama, write_tower

    from dc.data.tiny_tokenizer import build_tiny_tokenizer
    from dc.export.reference import main
    from dc.export.reference_writer import write_reference_dir

    tower = write_tower("clip", tmp_path)
    tok = build_tiny_tokenizer()
    src = write_reference_dir(
        tmp_path / "ref", llm=tiny_llama(tok), tokenizer=tok, projector=random_projector(3 * D),
        vision_tower=str(tower), mm_hidden_size=3 * D, dense_connector_type="dci",
    )  # fmt: skip
    main([str(src), str(tmp_path / "imported"), "--encoder", "tiny_clip"])
    ckpt = tmp_path / "imported" / "dc.ckpt"
    from dc.data.synthetic import generate

    root = generate(data_dir / "synthetic" / "seed0_64_64_4", n_pretrain=64, n_instruct=64, n_eval=4)
    metrics, objs = evaluate(
        compose_config(
            "eval",
            [
                f"ckpt_path={ckpt}",
                f"benchmark.root={root}",
                "limit=4",
                "benchmark.blank_control=false",
                f"paths.output_dir={tmp_path / 'e'}",
            ],
        )
    )
    assert "synthetic/accuracy" in metrics and objs["model"].describe()["connector"] == "DenseChannelIntegration"
    # stage 2 continues from the imported connector: its first weights are the imported ones
    cfg = train_cfg(
        "trainer.max_steps=1",
        f"stage.init_connector_from={ckpt}",
        "llm.hidden_size=128",
        f"encoder.model.pretrained={tower}",
        "callbacks=none",
    )
    _, objects = train(cfg)
    assert objects["trainer"].global_step == 1


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        ("dc.export.consolidate", ["{tmp}/run", "{tmp}/out.ckpt"], "{tmp}/run: not a sharded checkpoint folder"),
        ("dc.export.lora", ["{tmp}/missing.ckpt", "{tmp}/lora"], "checkpoint {tmp}/missing.ckpt does not exist"),
        ("dc.export.reference", ["{tmp}/missing", "{tmp}/imported"], "{tmp}/missing: no such directory"),
    ],
)
def test_command_line_errors_are_one_line(
    module: str, argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib

    (tmp_path / "run").mkdir()  # a folder, but not a sharded checkpoint
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(tmp=tmp_path) for a in argv])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message.format(tmp=tmp_path)}") and err.count("\n") == 1
    assert not (tmp_path / "out.ckpt").exists() and not (tmp_path / "imported").exists()

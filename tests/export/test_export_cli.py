"""The commands end to end: dc checkpoint → `python -m dc.export` → eval.py on the export (model=hf) gives the
checkpoint's own answers and accuracy; a stage-1 checkpoint exports with the preprocessing and template it was
trained with unless overridden; bad options are one line before the checkpoint is read; a reference directory →
`python -m dc.export.reference` → a dc checkpoint that eval.py scores and train.py continues from; an STI export is
refused with the reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoProcessor

from dc.export.__main__ import check_options, export
from dc.export.errors import ExportError, export_user_errors
from dc.export.staging import staging_path
from dc.pipeline import evaluate, train
from dc.utils.cli import errors_as_messages

from dc_testing import compose_config
from export_helpers import tiny_cfg  # noqa: F401 - shared fixtures module of these tests


def _train(train_cfg, *overrides: str) -> tuple[Path, Path]:
    cfg = train_cfg("trainer.max_steps=2", *overrides)
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", Path(cfg.data.image_folder).parent


def _answers(path: Path) -> dict[str, str]:
    return {a["id"]: a["text"] for a in map(json.loads, path.read_text().splitlines())}


@pytest.mark.parametrize("connector", ["dci", "sci"])
def test_eval_on_the_export_equals_eval_on_the_checkpoint(train_cfg, tmp_path: Path, connector: str, caplog) -> None:
    ckpt, root = _train(train_cfg, f"connector={connector}")
    out = tmp_path / "hf"
    export(compose_config("export", [f"ckpt_path={ckpt}", f"out_dir={out}"]))
    assert (out / "config.json").exists() and list(out.glob("*.safetensors"))
    record = json.loads((out / "dc_export.json").read_text())  # stage 2: padded images, the LLM's template
    assert (record["image_aspect"], record["template"], record["stage"]) == ("pad", "vicuna_v1", "finetune")
    common = [f"benchmark.root={root}", "benchmark.blank_control=false", "batch_size=4"]
    ours, _ = evaluate(compose_config("eval", [f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'a'}", *common]))
    theirs, _ = evaluate(
        compose_config("eval", ["model=hf", f"model.path={out}", f"paths.output_dir={tmp_path / 'b'}", *common])
    )
    a = _answers(tmp_path / "a" / "synthetic_answers.jsonl")
    b = _answers(tmp_path / "b" / "synthetic_answers.jsonl")
    assert len(a) == 16 and a == b  # identical greedy answers on every held-out question
    assert ours["synthetic/accuracy"] == theirs["synthetic/accuracy"]
    if connector == "dci":  # the processor prepares a stock model's images: image_aspect is said to be unused
        square = ["model=hf", f"model.path={out}", f"paths.output_dir={tmp_path / 'c'}", "image_aspect=square"]
        with caplog.at_level("WARNING", logger="dc.eval.models"):
            evaluate(compose_config("eval", [*square, *common, "limit=2"]))
        assert "image_aspect=square is not used by model=hf" in caplog.text


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def _safetensors_dtypes(folder: Path) -> set[str]:
    dtypes = set()
    for path in folder.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            dtypes |= {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    return dtypes


def test_stage1_checkpoint_exports_as_it_was_trained(
    train_cfg, tmp_path: Path, capsys: pytest.CaptureFixture[str], umask_027
) -> None:
    """Stage 1 trains on square images with the plain template: the export follows unless told otherwise, says it
    is a connector-only model, and records what it chose; dtype is honoured; every file gets the umask's mode."""
    ckpt, _ = _train(train_cfg, "stage=pretrain", "trainer.max_steps=1")
    capsys.readouterr()  # the training's own output
    out = tmp_path / "hf"
    export(compose_config("export", [f"ckpt_path={ckpt}", f"out_dir={out}"]))
    note = capsys.readouterr().out
    assert note.count("\n") == 1 and "stage-1 (pretrain) checkpoint, a connector-only model" in note
    assert "image_aspect=square and template plain" in note
    record = json.loads((out / "dc_export.json").read_text())
    assert (record["template"], record["image_aspect"], record["stage"], record["dtype"]) == (
        "plain", "square", "pretrain", "float32",
    )  # fmt: skip
    processor = AutoProcessor.from_pretrained(out)
    assert processor.image_processor.do_pad is False  # square: the encoder's processor alone
    prompt = [{"role": "user", "content": "<image>\nDescribe it."}]
    assert processor.apply_chat_template(prompt, add_generation_prompt=True) == "<s><image>"  # plain: image only
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == dict.fromkeys(
        (p.name for p in out.iterdir()), 0o640
    )  # model.safetensors included (safetensors writes 0600)

    other = tmp_path / "hf-chat"
    overrides = ["image_aspect=pad", "template=vicuna_v1", "dtype=bfloat16"]
    export(compose_config("export", [f"ckpt_path={ckpt}", f"out_dir={other}", *overrides]))
    assert "template vicuna_v1" in capsys.readouterr().out
    record = json.loads((other / "dc_export.json").read_text())
    assert (record["template"], record["image_aspect"], record["dtype"]) == ("vicuna_v1", "pad", "bfloat16")
    assert AutoProcessor.from_pretrained(other).image_processor.do_pad is True
    assert _safetensors_dtypes(other) == {"BF16"} and _safetensors_dtypes(out) == {"F32"}


def _export_error(capsys: pytest.CaptureFixture[str], *overrides: str) -> str:
    """The one line `python -m dc.export <overrides>` prints (as its `main` reports errors)."""
    with pytest.raises(SystemExit) as exit_info, errors_as_messages(export_user_errors()):
        export(compose_config("export", list(overrides)))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err[len("error: ") :].rstrip("\n")


BOTH = ["ckpt_path={data}", "out_dir={tmp}/hf"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["out_dir={tmp}/hf"], "ckpt_path must be given, e.g. python -m dc.export ckpt_path="),
        (["ckpt_path={data}"], "out_dir must be given, e.g. python -m dc.export ckpt_path="),
        ([], "ckpt_path and out_dir must be given"),
        (
            [*BOTH, "image_aspect=squre"],
            "image_aspect='squre': expected one of ('pad', 'square'), or null (the checkpoint's own)",
        ),
        ([*BOTH, "verify=maybe"], "verify='maybe': expected true or false"),
        ([*BOTH, "verify=no"], "verify='no': expected true or false"),
        ([*BOTH, "verify=off"], "verify='off': expected true or false"),
        ([*BOTH, "verify=1"], "verify=1: expected true or false"),
        ([*BOTH, "template=vicuna"], "template='vicuna': expected one of ['chatml', 'llama_3', 'llama_3_dc', 'phi2', "),
        ([*BOTH, "dtype=bf16"], "dtype='bf16': expected one of ['float32', 'bfloat16', 'float16']"),
        ([*BOTH, "+foo=1"], "unknown option foo: python -m dc.export takes ["),
    ],
)
def test_export_options_are_one_line_before_the_checkpoint_is_read(
    overrides: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "answers.jsonl"  # not a checkpoint: reading it first would report that instead
    data.write_text('{"id": 1}\n')
    assert _export_error(capsys, *(o.format(tmp=tmp_path, data=data) for o in overrides)).startswith(message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl"]


@pytest.mark.parametrize("value", ["true", "false", "True"])
def test_verify_takes_hydra_booleans(value: str) -> None:
    cfg = compose_config("export", ["ckpt_path=a.ckpt", "out_dir=b", f"verify={value}"])
    check_options(cfg)
    assert cfg.verify is (value.lower() == "true")


def test_export_refuses_what_is_not_a_dc_checkpoint_or_would_be_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "answers.jsonl"
    data.write_text('{"id": 1}\n')
    out = tmp_path / "hf"
    assert _export_error(capsys, f"ckpt_path={data}", f"out_dir={out}").startswith(f"{data}: not a checkpoint")
    weights = tmp_path / "pytorch_model.bin"  # a torch.save dict, but no dc model config in it
    torch.save({"w": torch.zeros(2)}, weights)
    assert _export_error(capsys, f"ckpt_path={weights}", f"out_dir={out}").startswith(
        f"ckpt_path={weights}: not a dc checkpoint"
    )
    staging_path(out).mkdir()  # a folder of the user's where the export would stage: refused and kept
    (staging_path(out) / "notes.txt").write_text("mine")
    assert _export_error(capsys, f"ckpt_path={weights}", f"out_dir={out}").startswith(
        f"{staging_path(out)} exists and is not a leftover of dc"
    )
    assert (staging_path(out) / "notes.txt").read_text() == "mine"
    out.mkdir()
    assert (
        _export_error(capsys, f"ckpt_path={weights}", f"out_dir={out}")
        == f"out_dir={out} exists; choose a new directory"
    )


def test_command_writes_no_log_into_the_working_directory(tmp_path: Path) -> None:
    """`python -m dc.export` as a user runs it: a missing option is one line, and nothing lands in the cwd (Hydra's
    job log was written there as __main__.log)."""
    run = subprocess.run(
        [sys.executable, "-m", "dc.export", "ckpt_path=x.ckpt"], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 1
    assert run.stderr.startswith("error: out_dir must be given") and run.stderr.count("\n") == 1, run.stderr
    assert list(tmp_path.iterdir()) == []


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
        ("dc.export.reference", ["{tmp}/model.bin", "{tmp}/imported"], "{tmp}/model.bin is a file, not a folder"),
    ],
)
def test_command_line_errors_are_one_line(
    module: str, argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib

    (tmp_path / "run").mkdir()  # a folder, but not a sharded checkpoint
    (tmp_path / "model.bin").write_bytes(b"weights")  # a file where a folder is expected
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(tmp=tmp_path) for a in argv])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message.format(tmp=tmp_path)}") and err.count("\n") == 1
    assert not (tmp_path / "out.ckpt").exists() and not (tmp_path / "imported").exists()

"""Nothing run that shouldn't be, nothing lost: malicious checkpoints are refused before any of their code runs,
offline errors name the config key at once, every config check runs before anything is downloaded, a resumed run
keeps its earlier CSV metrics, and a killed checkpoint write leaves nothing in $TMPDIR."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dc.pipeline import evaluate, train
from dc.training.checkpoint import NotACheckpointError, ResumeConfigError, UnsafeCheckpointError, read_checkpoint
from dc.training.checkpoint_io import DirectCheckpointIO, clean_partial_files
from dc.utils.errors import ConfigError

from dc_testing import ROOT, compose_config


class Payload:
    """Unpickling this writes a marker file (what a malicious checkpoint would do instead)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _trained(train_cfg) -> tuple[Path, Path]:
    cfg = train_cfg("trainer.max_steps=1")
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", Path(cfg.data.image_folder).parent


def test_pickle_payload_is_refused_and_never_runs(train_cfg, tmp_path: Path) -> None:
    ckpt, root = _trained(train_cfg)
    state = torch.load(ckpt, weights_only=True)
    marker = tmp_path / "pwned"
    state["hyper_parameters"]["extra"] = Payload(str(marker))
    bad = tmp_path / "bad.ckpt"
    torch.save(state, bad)
    with pytest.raises(UnsafeCheckpointError, match="bad.ckpt: refusing to load it"):
        evaluate(
            compose_config("eval", [f"ckpt_path={bad}", f"benchmark.root={root}", f"paths.output_dir={tmp_path / 'e'}"])
        )
    with pytest.raises(UnsafeCheckpointError, match="refusing"):
        train(train_cfg("trainer.max_steps=1", f"stage.init_connector_from={bad}"))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("where", "node"),
    [
        (("encoder", "model", "config"), {"_target_": "dc.data.synthetic.generate", "root": "{tmp}/written"}),
        (("llm", "template"), {"_target_": "os.system", "_args_": ["touch {tmp}/written"]}),
    ],
)
def test_nested_target_in_a_stored_config_is_refused(train_cfg, tmp_path: Path, where, node) -> None:
    ckpt, root = _trained(train_cfg)
    state = torch.load(ckpt, weights_only=True)
    target = state["hyper_parameters"]["model"]
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = {
        k: (v.format(tmp=tmp_path) if isinstance(v, str) else [a.format(tmp=tmp_path) for a in v])
        for k, v in node.items()
    }
    bad = tmp_path / "nested.ckpt"
    torch.save(state, bad)
    with pytest.raises(UnsafeCheckpointError, match=rf"{'.'.join(where)}\._target_: {node['_target_']}"):
        evaluate(
            compose_config("eval", [f"ckpt_path={bad}", f"benchmark.root={root}", f"paths.output_dir={tmp_path / 'e'}"])
        )
    assert not (tmp_path / "written").exists()


def _run(args: list[str], **env: str) -> tuple[subprocess.CompletedProcess, float]:
    base = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE",)}
    base.update({"WANDB_MODE": "disabled", "HF_ENDPOINT": "http://127.0.0.1:9", **env})  # an unreachable hub
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=base
    )
    return out, time.perf_counter() - start


def test_headline_command_offline_fails_fast_naming_the_key(tmp_path: Path) -> None:
    out, seconds = _run(["connector=dci", "encoder=siglip", "llm=vicuna7b", f"hydra.run.dir={tmp_path}"])
    assert out.returncode != 0
    assert "llm.pretrained=lmsys/vicuna-7b-v1.5: cannot load it: the hub is unreachable" in out.stderr
    assert "set llm.pretrained=<dir>" in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 6 and seconds < 60


def test_bad_index_is_reported_before_any_download(tmp_path: Path) -> None:
    out, _ = _run(
        ["connector=sti", "encoder=siglip", "llm=vicuna7b", "connector.layers=[7,99]", f"hydra.run.dir={tmp_path}"]
    )
    assert "connector.layers[1]=99 is out of range for encoder 'siglip'" in out.stderr
    out, _ = _run(["llm=vicuna7b", "llm.pretrained=/no/such/dir", "encoder=tiny_clip", f"hydra.run.dir={tmp_path}"])
    assert "llm.pretrained=/no/such/dir: no such directory" in out.stderr
    # data files that nothing generates are checked before the (unreachable) LLM is looked up
    out, _ = _run(["llm=vicuna7b", "data=llava_instruct", f"paths.data_dir={tmp_path}", f"hydra.run.dir={tmp_path}"])
    missing = tmp_path / "LLaVA-Instruct" / "llava_v1_5_mix665k.json"
    assert f"error: data.train_file={missing}: no such file (set DATA_ROOT" in out.stderr
    assert "llm.pretrained" not in out.stderr


def test_config_mistakes_name_the_key(train_cfg, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="data.batch_size='four'"):
        train(train_cfg("data.batch_size=four"))
    with pytest.raises(FileNotFoundError, match="stage.init_connector_from=.*no such file"):
        train(train_cfg(f"stage.init_connector_from={tmp_path / 'missing.ckpt'}"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_steps=abc", "trainer.max_steps='abc': expected an integer"),
        ("trainer.max_epochs=1.5", "trainer.max_epochs=1.5: expected an integer"),
        ("stage.lr=fast", "stage.lr='fast': expected a non-negative number"),
        ("seed=abc", "seed='abc': expected an integer"),
        ("data.val_fraction=1.5", r"data.val_fraction=1.5: expected a number in \[0, 1\)"),
        ("stage.image_aspect=foo", r"stage.image_aspect='foo': expected one of \('pad', 'square'\)"),
        ("data.max_length=-5", r"data.max_length=-5: expected a positive integer"),
        (
            "paths.data_dir=${oc.env:DC_TEST_UNSET}",
            r"paths.data_dir=\$\{oc.env:DC_TEST_UNSET\}: cannot be resolved: Environment variable 'DC_TEST_UNSET'",
        ),
        ("data.batch_size=${no.such.key}", r"data.batch_size=\$\{no.such.key\}: cannot be resolved: Interpolation key"),
        ("stage=lora stage.lora.r=0", r"stage.lora.r=0: expected a positive number"),
        ("stage=lora stage.lora.r=2.5", r"stage.lora.r=2.5: expected an integer"),
        ("stage=lora stage.lora.alpha=abc", r"stage.lora.alpha='abc': expected a number"),
        ("stage=lora stage.lora.dropout=1.5", r"stage.lora.dropout=1.5: expected a number in \[0, 1\)"),
        ("stage=lora stage.lora.bias=foo", r"stage.lora.bias='foo': expected one of \('none', 'all', 'lora_only'\)"),
        ("stage=lora stage.lora.exclude=q_proj", r"stage.lora.exclude='q_proj': expected a list of layer names"),
        ("trainer=fsdp trainer.strategy.state_dict_type=local", r"state_dict_type='local': expected one of"),
        ("trainer=fsdp trainer.strategy.reduce_dtype=int8", r"trainer.strategy.reduce_dtype='int8': expected a float"),
        ("trainer=fsdp stage.sharding=NO_SHARD", r"stage.sharding='NO_SHARD': expected one of"),
        ("trainer=fsdp trainer.strategy.reduce_grads_per=layer", r"reduce_grads_per='layer': expected one of"),
        (
            "trainer=fsdp1 trainer.strategy.buffer_dtype=halfs",
            r"trainer.strategy.buffer_dtype='halfs': expected a float",
        ),
        ("trainer=fsdp1 trainer.strategy.state_dict_type=local", r"state_dict_type='local': expected one of"),
    ],
)
def test_plain_values_are_checked_naming_the_key(train_cfg, override: str, message: str) -> None:
    from dc.pipeline import ConfigError

    with pytest.raises(ConfigError, match=message):
        train(train_cfg(*override.split()))


def test_a_file_whose_every_record_is_too_long_says_why(train_cfg) -> None:
    from dc.data.records import BadDataError

    with pytest.raises(BadDataError, match=r"64 random records in a row are bad \(too_long 64;.*raise data.max_length"):
        train(train_cfg("data.max_length=5", "trainer.max_steps=1"))


def test_a_file_is_not_a_model_directory(tmp_path: Path) -> None:
    from dc.models.hub import PretrainedNotFoundError, check_source

    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(PretrainedNotFoundError, match=r"model.path=.*last.ckpt: a file.*model=dc ckpt_path=<file>"):
        check_source(str(ckpt), "model.path")


def test_config_errors_print_one_line_and_other_errors_keep_their_traceback(capsys) -> None:
    from dc.pipeline import accumulation, user_errors
    from dc.utils.cli import errors_as_messages

    with pytest.raises(SystemExit) as exit_info, errors_as_messages(user_errors()):
        accumulation(6, 4, 1)  # a ConfigError: its message is for the user
    assert exit_info.value.code == 1
    assert "error: stage.global_batch_size=6 is not a multiple of data.batch_size=4" in capsys.readouterr().err
    with pytest.raises(ValueError, match="a bug"), errors_as_messages(user_errors()):
        raise ValueError("a bug")  # anything else: a traceback as usual


class _BadFromWorker(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> int:
        from dc.data.records import BadDataError

        raise BadDataError("64 random records in a row are bad (too_long 64); raise data.max_length")


def test_a_bad_data_error_from_a_loader_worker_prints_its_own_message(capsys) -> None:
    """PyTorch re-raises a worker's error with the worker's traceback inside the message; one line is printed."""
    from dc.pipeline import user_errors
    from dc.utils.cli import errors_as_messages

    loader = torch.utils.data.DataLoader(_BadFromWorker(), num_workers=1)
    with pytest.raises(SystemExit), errors_as_messages(user_errors()):
        next(iter(loader))
    err = capsys.readouterr().err
    assert err == (
        "error: 64 random records in a row are bad (too_long 64); raise data.max_length "
        "(in DataLoader worker process 0)\n"
    )


def test_train_py_prints_a_config_mistake_without_a_traceback(tmp_path: Path) -> None:
    out, _ = _run(["debug=fast", "logger=[]", "llm.loss=foo", f"hydra.run.dir={tmp_path}"], HF_HUB_OFFLINE="1")
    assert out.returncode == 1
    assert "error: llm.loss='foo': expected one of ('auto', 'chunked', 'liger', 'dense')" in out.stderr
    assert "Traceback" not in out.stderr
    assert "GPU available" not in out.stdout + out.stderr  # refused before the Lightning trainer is built
    assert "error: llm.loss='foo'" in (tmp_path / "train.log").read_text()  # the log says why the run stopped


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("llm.loss=foo", r"llm\.loss='foo': expected one of"),
        ("llm.attention=flat", r"llm\.attention='flat': expected 'unpadded' or 'padded'"),
        ("llm.activation_checkpointing=some", r"llm\.activation_checkpointing='some': expected one of"),
        ("llm.compile=maybe", r"llm\.compile"),
        ("stage.optimizer_impl=fast", r"stage\.optimizer_impl='fast': expected one of"),
        ("stage.global_batch_size=6", r"stage\.global_batch_size=6 is not a multiple of data\.batch_size=4 × 1"),
        ("trainer.devices=2", r"stage\.global_batch_size=4 is not a multiple of data\.batch_size=4 × 2"),
        ("image=anyres image.pinpoints=[[50,100]]", r"image\.pinpoints \[\(50, 100\)\] are not multiples"),
    ],
)
def test_validate_refuses_option_mistakes_before_anything_is_built(train_cfg, override: str, message: str) -> None:
    """Checked by `validate` (no weights, data or trainer), so the one-line error is all a user sees."""
    from dc.pipeline import validate

    cfg = train_cfg("data.batch_size=4", "stage.global_batch_size=4", *override.split(" "))
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_resume_keeps_the_earlier_csv_metrics(train_cfg) -> None:
    cfg = train_cfg("trainer.max_steps=2", "callbacks.checkpoint.every_n_train_steps=1")
    train(cfg)
    csv = Path(cfg.paths.output_dir) / "csv"
    first = (csv / "metrics.csv").read_text()
    train(train_cfg("trainer.max_steps=3", "callbacks.checkpoint.every_n_train_steps=1", "ckpt_path=last"))
    assert (csv / "metrics.1.csv").read_text() == first and (csv / "metrics.csv").exists()


def test_resuming_with_another_model_is_refused_naming_what_changed(train_cfg) -> None:
    """The weights of a DCI run must not silently continue as an SCI connector (same shapes), nor fail with a
    state-dict size mismatch (another projector); speed settings may change. A refused resume leaves the run's
    CSV metrics as they were."""
    cfg = train_cfg("trainer.max_steps=1")
    train(cfg)
    csv = Path(cfg.paths.output_dir) / "csv"
    first = (csv / "metrics.csv").read_text()
    with pytest.raises(ResumeConfigError, match=r"connector\._target_: '.*DenseChannelIntegration' -> '.*Sparse"):
        train(train_cfg("trainer.max_steps=2", "connector=sci", "ckpt_path=last"))
    assert sorted(p.name for p in csv.glob("metrics*.csv")) == ["metrics.csv"]
    assert (csv / "metrics.csv").read_text() == first
    with pytest.raises(ResumeConfigError, match=r"stage\.train: \['connector', 'llm'\] -> \['connector'\]"):
        train(train_cfg("trainer.max_steps=2", "stage.train=[connector]", "ckpt_path=last"))
    with pytest.raises(ResumeConfigError, match=r"connector\._target_: .* -> '.*MLPConnector'"):
        train(train_cfg("trainer.max_steps=2", "connector=mlp", "ckpt_path=last"))  # not a size-mismatch traceback
    _, objects = train(train_cfg("trainer.max_steps=2", "llm.activation_checkpointing=full", "ckpt_path=last"))
    assert objects["trainer"].global_step == 2


def test_resume_changes_compares_what_the_model_is() -> None:
    from dc.training.checkpoint import resume_changes

    saved = {
        "model": {"connector": {"_target_": "a.DCI", "groups": [[0, 11], [12, 23]]}, "llm": {"pretrained": "/old"}},
        "stage": {"train": ["connector"], "lora": None},
    }
    same = {  # a key dc added since (absent from the checkpoint) and a moved pretrained copy: not changes
        "model": {
            "connector": {"_target_": "a.DCI", "groups": [[0, 11], [12, 23]], "new_key": 1},
            "llm": {"pretrained": "/new"},
        },
        "stage": {"train": ["connector"], "lora": None, "lr": 1.0},
    }
    assert resume_changes(saved, same) == []
    other = {
        "model": {"connector": {"_target_": "a.DCI", "groups": [[0, 7], [8, 23]]}, "llm": {"pretrained": "/old"}},
        "stage": {"train": ["connector"], "lora": {"r": 8}},
    }
    assert resume_changes(saved, other) == [
        "connector.groups: [[0, 11], [12, 23]] -> [[0, 7], [8, 23]]",
        "stage.lora: None -> {'r': 8}",
    ]


def test_what_is_not_a_checkpoint_is_named_as_such(train_cfg, tmp_path: Path) -> None:
    ckpt, _ = _trained(train_cfg)
    text = tmp_path / "text.ckpt"
    text.write_text("hello\n")
    with pytest.raises(NotACheckpointError, match=r"text.ckpt: not a checkpoint .* starts with b'hello"):
        read_checkpoint(text)
    json_file = tmp_path / "data.json"
    json_file.write_text('[{"id": 1}]')
    with pytest.raises(NotACheckpointError, match="data.json: not a checkpoint"):
        read_checkpoint(json_file)
    cut = tmp_path / "cut.ckpt"
    data = ckpt.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        NotACheckpointError, match=r"cut.ckpt: a truncated checkpoint \(\d+ bytes, the end of the archive missing\)"
    ):
        read_checkpoint(cut)
    with pytest.raises(NotACheckpointError, match=r"is a folder, not a checkpoint file.*checkpoints/last.ckpt"):
        read_checkpoint(ckpt.parent.parent)
    assert read_checkpoint(ckpt)["global_step"] == 1


def _flip_inside_largest_member(src: Path, dst: Path) -> str:
    """Copy `src` with 16 bytes inverted in the middle of its largest archive member's data; returns its name."""
    import struct
    import zipfile

    with zipfile.ZipFile(src) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    data = bytearray(src.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    middle = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    dst.write_bytes(bytes(data))
    return info.filename


def test_a_checkpoint_with_flipped_bytes_is_refused_naming_the_member(train_cfg, tmp_path: Path) -> None:
    """torch.load takes such a file without complaint (the weights are silently wrong); dc checks the CRC-32s."""
    ckpt, _ = _trained(train_cfg)
    bad = tmp_path / "flipped.ckpt"
    member = _flip_inside_largest_member(ckpt, bad)
    assert torch.load(bad, weights_only=True)["global_step"] == 1  # what would happen without the check
    with pytest.raises(NotACheckpointError, match=rf"flipped.ckpt: a damaged checkpoint \(member {member}: Bad CRC"):
        read_checkpoint(bad)
    assert read_checkpoint(bad, mmap=True)["global_step"] == 1  # the config alone: no check (nothing else read)
    with pytest.raises(NotACheckpointError, match="flipped.ckpt: a damaged checkpoint"):
        train(train_cfg("trainer.max_steps=2", f"ckpt_path={bad}"))  # a resume from it
    table = tmp_path / "table.ckpt"  # damage in the archive's table of contents (its end)
    data = bytearray(ckpt.read_bytes())
    data[-40:-30] = bytes(10)
    table.write_bytes(bytes(data))
    with pytest.raises(NotACheckpointError, match=r"table.ckpt: a damaged checkpoint \(its table of contents"):
        read_checkpoint(table)


def test_checkpoint_writes_stay_in_the_checkpoint_folder(tmp_path: Path, monkeypatch) -> None:
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    folder = tmp_path / "ckpts"
    DirectCheckpointIO().save_checkpoint({"w": torch.ones(3)}, folder / "last.ckpt.partial")
    DirectCheckpointIO().save_checkpoint({"w": torch.zeros(3)}, folder / "other.ckpt")
    assert not list(tmpdir.iterdir())
    assert torch.equal(read_checkpoint(folder / "other.ckpt")["w"], torch.zeros(3))
    (folder / ".x.ckpt.tmp-123").write_bytes(b"half")  # what a SIGKILL during a write leaves
    removed = clean_partial_files(folder)
    assert sorted(p.name for p in removed) == [".x.ckpt.tmp-123", "last.ckpt.partial"]
    assert [p.name for p in folder.iterdir()] == ["other.ckpt"]


def test_an_optimized_metric_the_run_did_not_produce_is_named(capsys) -> None:
    from omegaconf import OmegaConf

    from dc.pipeline import optimized_metric, user_errors
    from dc.utils.cli import errors_as_messages

    cfg = OmegaConf.create({"optimized_metric": "train/loss"})
    assert optimized_metric(cfg, {"train/loss": 2.5, "val/loss": 3.0}) == 2.5
    with pytest.raises(SystemExit), errors_as_messages(user_errors()):
        optimized_metric(cfg, {})  # a run that trained nothing: one line, not a KeyError traceback
    assert capsys.readouterr().err == "error: optimized_metric='train/loss' is not among this run's metrics: []\n"


def test_a_bad_strategy_setting_is_refused_before_the_logger_and_the_data(tmp_path: Path) -> None:
    """The FSDP strategies' settings are checked with the rest of the config: no logger folder is made and no
    data generated for a run that cannot start."""
    from dc.pipeline import ConfigError

    from dc_testing import compose_config

    out, data = tmp_path / "out", tmp_path / "data"
    cfg = compose_config(
        "train",
        [
            "debug=fast",
            "trainer=fsdp",
            "trainer.strategy.state_dict_type=local",
            "logger=csv",
            f"paths.output_dir={out}",
            f"paths.data_dir={data}",
            "run_name=x",
        ],
    )
    with pytest.raises(ConfigError, match="trainer.strategy.state_dict_type='local'"):
        train(cfg)
    assert not data.exists() and not (out / "csv").exists()


def test_a_broken_local_model_directory_is_one_line_naming_the_key(tmp_path: Path) -> None:
    """A local directory with a truncated weight file: the library's reason, after the key and the path."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from dc.models.hub import PretrainedNotFoundError, from_pretrained

    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llm")
    weights = tmp_path / "llm" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(
        PretrainedNotFoundError, match=rf"^llm.pretrained={tmp_path / 'llm'}: cannot read its files: \w+"
    ):
        from_pretrained(AutoModelForCausalLM.from_pretrained, str(tmp_path / "llm"), "llm.pretrained")


def test_resuming_on_another_number_of_processes_is_refused_before_the_model(train_cfg, monkeypatch) -> None:
    """The data position of a 2-process checkpoint cannot continue on 1 process: said before any model is built."""
    import dc.pipeline
    from dc.training.checkpoint import ResumeConfigError

    cfg = train_cfg("trainer.max_steps=1")
    train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    (state,) = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state["world_size"] == 1
    state["world_size"] = 2  # as a 2-process run writes it
    torch.save(ckpt, last)

    def built(*args, **kwargs):
        raise AssertionError("the model was built before the refusal")

    monkeypatch.setattr(dc.pipeline, "DCModule", built)
    with pytest.raises(ResumeConfigError, match=r"written with 2 ranks, this run has 1 .*same number of devices"):
        train(train_cfg("trainer.max_steps=2", "ckpt_path=last"))

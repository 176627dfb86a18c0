"""train.loop.metrics: metrics.jsonl, W&B modes without network, the progress bar."""
import io
import json

import numpy as np
import pytest

from train.loop import metrics as M
from train.loop.metrics import LoggingWarning, MetricsLogger, ProgressBar, read_metrics


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """No credentials, W&B's own folders inside tmp_path, and no mode forced by env."""
    home = tmp_path / "home"
    home.mkdir()
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(home / ".netrc"))         # does not exist
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return home


def test_jsonl_appends_across_instances(tmp_path):
    with MetricsLogger(tmp_path, wandb_mode="disabled") as log:
        log.log(1, {"loss": np.float32(2.5), "tokens_per_s": 1000.0})
        log.log(1, {"loss": 2.4, "perplexity": 11.0}, split="val")
    # A resumed run opens the same directory again: history is kept, new rows appended.
    with MetricsLogger(tmp_path, wandb_mode="disabled") as log:
        log.log(2, {"loss": 2.0, "grad_norm": float("nan")})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [(r["step"], r["split"]) for r in rows] == [(1, "train"), (1, "val"), (2, "train")]
    assert rows[0]["loss"] == 2.5 and isinstance(rows[0]["loss"], float)
    assert np.isnan(rows[2]["grad_norm"]) and all("time" in r for r in rows)
    assert [r["step"] for r in read_metrics(tmp_path, split="train")] == [1, 2]


def test_half_written_last_line_is_isolated(tmp_path):
    killed = '{"step": 1, "split": "train", "loss": 3.0}\n{"step": 2, "spl'   # no final newline
    (tmp_path / "metrics.jsonl").write_text(killed)
    with MetricsLogger(tmp_path, wandb_mode="disabled") as log:
        log.log(3, {"loss": 1.0})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["step"] == 3
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 3]


def test_config_yaml_has_one_writer_the_trainer(tmp_path):
    """The logger hands the config to W&B only; config.yaml is train.config.dump_yaml's,
    written whole (through a temporary file), and reloads to the same Config."""
    from train.config import dump_yaml, load_config
    MetricsLogger(tmp_path, wandb_mode="disabled", config={"optim": {"lr": 1e-3}}).close()
    assert not (tmp_path / "config.yaml").exists()
    cfg = load_config(None, ["model.d_model=64"])
    dump_yaml(cfg, tmp_path / "config.yaml")
    assert load_config(str(tmp_path / "config.yaml")) == cfg
    assert not list(tmp_path.glob("*.tmp"))


def test_disabled_mode_touches_no_wandb(tmp_path, wandb_env, monkeypatch):
    import wandb
    monkeypatch.setattr(wandb, "init", lambda *a, **k: pytest.fail("wandb.init called"))
    with MetricsLogger(tmp_path, wandb_mode="disabled") as log:
        log.log(1, {"loss": 1.0})
        assert log.wandb_mode == "disabled" and log.run is None
    assert not (tmp_path / "wandb").exists()


def test_offline_mode_writes_under_run_dir_and_resumes_same_id(tmp_path, wandb_env):
    with MetricsLogger(tmp_path, wandb_mode="offline", config={"a": 1}) as log:
        assert log.wandb_mode == "offline"
        log.log(1, {"loss": 2.0})
        log.log(1, {"loss": 2.2}, split="val")
        first_id = log.run.id
    run_id = (tmp_path / "wandb_id.txt").read_text().strip()
    assert run_id == first_id
    info = json.loads((tmp_path / "wandb_run.json").read_text())
    assert info["mode"] == "offline" and info["id"] == run_id
    assert info["offline_dir"].startswith(str(tmp_path / "wandb"))
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    with MetricsLogger(tmp_path, wandb_mode="offline") as log:    # resumed process
        assert log.run.id == run_id


def test_auto_mode_without_key_is_offline(wandb_env, monkeypatch):
    assert M.resolve_wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert M.resolve_wandb_mode("auto") == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    netrc = f"machine api.wandb.ai\n  login user\n  password {'k' * 40}\n"
    (wandb_env / ".netrc").write_text(netrc)
    assert M.resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")       # an explicit environment choice wins
    assert M.resolve_wandb_mode("auto") == "disabled"
    with pytest.raises(ValueError):
        M.resolve_wandb_mode("sometimes")


def test_failing_wandb_init_falls_back_with_a_warning(tmp_path, wandb_env, monkeypatch):
    import wandb

    calls = []

    def broken_init(*args, **kwargs):
        calls.append(kwargs["mode"])
        raise RuntimeError("network is unreachable")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(LoggingWarning, match="wandb init failed.*network is unreachable") as rec:
        log = MetricsLogger(tmp_path, wandb_mode="online")
    assert calls == ["online", "offline"] and len(rec) == 1     # one warning line
    assert log.wandb_mode == "disabled" and log.run is None
    log.log(1, {"loss": 1.0})          # training goes on; the jsonl still gets everything
    log.close()
    assert read_metrics(tmp_path)[0]["loss"] == 1.0


def test_failing_wandb_log_disables_wandb(tmp_path, wandb_env, monkeypatch):
    class BrokenRun:
        id = "abc"
        dir = str(tmp_path / "wandb" / "offline-run-x-abc" / "files")
        def define_metric(self, *a, **k): pass
        def log(self, *a, **k): raise OSError("disk full")
        def finish(self): pass

    import wandb
    monkeypatch.setattr(wandb, "init", lambda **k: BrokenRun())
    log = MetricsLogger(tmp_path, wandb_mode="offline")
    with pytest.warns(LoggingWarning, match="disk full"):
        log.log(1, {"loss": 1.0})
    assert log.run is None
    log.log(2, {"loss": 0.5})
    log.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_progress_bar_plain_lines_when_not_a_tty():
    out = io.StringIO()
    bar = ProgressBar(100, initial_step=40, every=20, file=out)
    for step in range(41, 101):
        bar.update(step, loss=2.0 - step / 100, tokens_per_s=12345.6)
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["60/100", "80/100", "100/100"]
    assert "loss 1.4000" in lines[0] and "12,346 tok/s" in lines[0] and "ETA" in lines[0]


def test_progress_bar_disabled_prints_nothing():
    out = io.StringIO()
    bar = ProgressBar(10, enabled=False, file=out)
    for step in range(1, 11):
        bar.update(step, 1.0, 1.0)
    bar.close()
    assert out.getvalue() == ""


def test_progress_bar_uses_tqdm_on_a_tty():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    bar = ProgressBar(10, file=out)
    for step in range(1, 11):
        bar.update(step, 0.5, 2000.0)
    bar.close()
    text = out.getvalue()
    assert "10/10" in text and "loss 0.5000" in text and "2,000 tok/s" in text


def test_background_start_keeps_every_row_in_order(tmp_path, wandb_env, monkeypatch):
    """With background=True W&B starts in a thread; rows logged before it is up wait
    and reach the run in order, and a real offline start works off the main thread."""
    import threading
    import wandb
    gate, logged, real_init = threading.Event(), [], wandb.init

    class SlowRun:
        id = "slow1"
        dir = str(tmp_path / "wandb" / "offline-run-x-slow1" / "files")
        def define_metric(self, *a, **k): pass
        def log(self, row): logged.append(row)
        def finish(self): pass

    def slow_init(**kwargs):
        gate.wait(10)
        return SlowRun()

    monkeypatch.setattr(wandb, "init", slow_init)
    log = MetricsLogger(tmp_path, wandb_mode="offline", background=True)
    log.log(1, {"loss": 2.0})
    log.log(2, {"loss": 1.5}, split="val")
    assert logged == []                          # W&B is still starting: rows wait
    gate.set()
    log.close()
    assert logged == [{"step": 1, "train/loss": 2.0}, {"step": 2, "val/loss": 1.5}]
    assert log.wandb_mode == "offline"
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    monkeypatch.setattr(wandb, "init", real_init)

    with MetricsLogger(tmp_path / "real", wandb_mode="offline", background=True) as real:
        real.log(1, {"loss": 1.0})
    assert real.wandb_mode == "offline"
    assert list((tmp_path / "real" / "wandb").glob("offline-run-*/run-*.wandb"))

import json
import os
import subprocess
import sys

import pytest

from common.cli import main


def test_eval_json_on_tiny_random(capsys):
    assert main(["eval", "--model", "tiny-random", "--seqlen", "64", "--max-windows", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["windows"] == 2 and out["seqlen"] == 64 and out["ppl"] > 1
    assert out["data"].startswith("embedded:eval") and out["stored_bytes"] > 0


def test_eval_prints_protocol_with_number(capsys, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("Some words to evaluate. " * 40)
    assert main(["eval", "--model", "tiny-random", "--text-file", str(f), "--seqlen", "32"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PPL ") and "data=file:t.txt" in out and "dtype=float32" in out


@pytest.mark.parametrize("argv, message", [
    (["eval", "--model", "bogus spec"], "Unknown model spec"),
    (["eval", "--model", "tiny-random", "--seqlen", "99999"], "beyond this model's context"),
    (["eval", "--model", "tiny-random", "--text-file", "/no/such/file"], "does not exist"),
    (["eval", "--model", "tiny-random", "--max-windows", "0"], "not a positive number"),
    (["eval", "--model", "tiny-random", "--data", "nope"], "Unknown data"),
])
def test_bad_input_exits_2_with_one_message(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "What to do" in err
    assert "Traceback" not in err


def test_short_text_file(capsys, tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("tiny")
    assert main(["eval", "--model", "tiny-random", "--text-file", str(f), "--seqlen", "64"]) == 2
    assert "fewer than one window" in capsys.readouterr().err


def test_console_entry_points_doctor_json():
    env = dict(os.environ, WORKSHOP_BLOCK_NETWORK="1")
    run = subprocess.run([sys.executable, "-m", "common", "doctor", "--json"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["versions"]["torch"].startswith("2.") and report["mode"] in ("quick", "full")
    assert report["embedded_model"].endswith(".gguf")


def test_argparse_errors_exit_2():
    run = subprocess.run([sys.executable, "-m", "common", "eval", "--seqlen", "many"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2 and "invalid int value" in run.stderr


def test_invalid_mode(monkeypatch, capsys):
    monkeypatch.setenv("WORKSHOP_MODE", "fast")
    assert main(["eval", "--model", "tiny-random"]) == 2
    assert "WORKSHOP_MODE" in capsys.readouterr().err


def test_json_stdout_carries_the_result_alone(capsys):
    """modelopt prints reports on stdout; with --json they must not spoil the result."""
    assert main(["quantize", "--model", "tiny-random", "--method", "modelopt:FP8_DEFAULT_CFG", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["method"] == "modelopt:FP8_DEFAULT_CFG"

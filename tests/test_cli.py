import json
import os
import re
import subprocess
import sys

import pytest

from common.cli import main


def test_eval_json_on_tiny_random(capsys):
    assert main(["eval", "--model", "tiny-random", "--seqlen", "64", "--max-windows", "2", "--cloze-items", "8",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["ppl"]) == ["wiki", "python-docs"]  # in domain and out of domain, by default
    for name, r in out["ppl"].items():
        assert r["windows"] == 2 and r["seqlen"] == 64 and r["ppl"] > 1
        assert r["data"].startswith(f"{name}:eval") and f"data={name}:eval" in r["protocol"]
    assert out["ppl"]["wiki"]["ppl"] != out["ppl"]["python-docs"]["ppl"] and out["stored_bytes"] > 0
    assert list(out["cloze"]) == ["wiki", "python-docs"]   # last-word accuracy on the same two texts
    for name, r in out["cloze"].items():
        assert r["items"] == 8 and 0 <= r["accuracy"] <= 1 and r["correct"] == round(8 * r["accuracy"])
        assert f"data={name}:eval" in r["protocol"] and f"8 of {r['available']} items (md5 {r['items_md5']})" in r["protocol"]


def test_eval_cloze_options(capsys):
    assert main(["eval", "--model", "tiny-random", "--seqlen", "64", "--max-windows", "1", "--no-cloze", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cloze"] == {}
    assert main(["eval", "--model", "tiny-random", "--seqlen", "64", "--max-windows", "1", "--cloze-data", "python-docs",
                 "--cloze-items", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cloze = [line for line in lines if line.startswith("last-word")]
    assert len(cloze) == 1 and re.match(r"last-word python-docs: \d+\.\d% \(\d/4; a constant guess ", cloze[0])
    assert "last-word accuracy, data=python-docs:eval" in cloze[0] and "greedy exact word" in cloze[0]


def test_eval_prints_protocol_with_number(capsys, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("Some words to evaluate. " * 40)
    assert main(["eval", "--model", "tiny-random", "--eval-data", str(f), "--eval-data", "wiki", "--seqlen", "32",
                 "--cloze-items", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"PPL {f}: ") and "data=file:t.txt" in lines[0] and "dtype=float32" in lines[0]
    assert lines[1].startswith("PPL wiki: ") and "data=wiki:eval" in lines[1]
    assert lines[2].startswith("last-word wiki: ") and "4 of 4779 items (md5 " in lines[2] and "dtype=float32" in lines[2]
    assert lines[3].startswith("last-word python-docs: ")


@pytest.mark.parametrize("argv, message", [
    (["eval", "--model", "bogus spec"], "Unknown model spec"),
    (["eval", "--model", "tiny-random", "--seqlen", "99999"], "beyond this model's context"),
    (["eval", "--model", "tiny-random", "--eval-data", "/no/such/file"], "does not exist"),
    (["eval", "--model", "tiny-random", "--eval-data", "/tmp"], "is a directory"),
    (["eval", "--model", "tiny-random", "--max-windows", "0"], "not a positive number"),
    (["eval", "--model", "tiny-random", "--seqlen", "0"], "--seqlen 0"),
    (["eval", "--model", "tiny-random", "--eval-data", "nope"], "Unknown text 'nope'"),
    (["eval", "--model", "tiny-random", "--eval-data", "self"], "has no eval part"),
    (["eval", "--model", "tiny-random", "--eval-data", "wiki", "--eval-data", "wiki"], "more than once"),
    (["quantize", "--model", "tiny-random", "--method", "gptq", "--calib-data", "wiki+nope"], "Unknown text 'nope'"),
    (["quantize", "--model", "tiny-random", "--method", "gptq", "--calib-data", "wiki+wiki"], "names a text twice"),
    (["quantize", "--model", "tiny-random", "--method", "gptq", "--calib-samples", "4000",
      "--calib-seqlen", "2048"], "more than the"),
    (["quantize", "--model", "tiny-random", "--method", "gptq", "--calib-samples", "0"], "--calib-samples 0"),
    (["prune", "--model", "tiny-random", "--sparsity", "1.5"], "outside [0, 1)"),
    (["quantize", "--model", "tiny-random", "--method", "fp8", "--symmetric"], "--symmetric applies to"),
    (["quantize", "--model", "tiny-random", "--method", "awq", "--true-sequential"], "--true-sequential applies to gptq"),
    (["quantize", "--model", "tiny-random", "--table", "lab02", "--true-sequential"], "takes no"),
    (["prune", "--model", "tiny-random", "--method", "wanda", "--true-sequential"], "--true-sequential applies to sparsegpt"),
    (["prune", "--model", "tiny-random", "--table", "lab03", "--true-sequential"], "takes no --true-sequential"),
])
def test_bad_input_exits_2_with_one_message(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "What to do" in err
    assert "Traceback" not in err


def test_self_calibration_needs_a_model_that_generates(tiny):
    from common.data import calibration_batch
    from common.errors import WorkshopError
    with pytest.raises(WorkshopError, match="no model that can generate"):
        calibration_batch(tiny[1], 2, 16, "self")


def test_quantize_prints_one_perplexity_per_text(capsys, tmp_path):
    f = tmp_path / "other.txt"
    f.write_text("Another text entirely, about rivers and mountains. " * 60)
    argv = ["quantize", "--model", "tiny-random", "--method", "gptq", "--bits", "3", "--group-size", "16", "--eval",
            "--eval-data", "wiki", "--eval-data", str(f), "--seqlen", "64", "--max-windows", "2",
            "--calib-data", "wiki+python-docs", "--calib-samples", "4", "--calib-seqlen", "32"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "on 4x32 tokens of wiki+python-docs:calib" in text
    assert text.count("PPL before wiki: ") == 1 and text.count(f"PPL after  {f}: ") == 1
    assert main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["ppl_after"]) == {"wiki", str(f)} and out["ppl_after"]["wiki"]["ppl"] != out["ppl_before"]["wiki"]["ppl"]


def test_short_text_file(capsys, tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("tiny")
    assert main(["eval", "--model", "tiny-random", "--eval-data", str(f), "--seqlen", "64"]) == 2
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


def test_quantize_symmetric_stores_int4_without_zero_points(tmp_path, capsys):
    from common.models import load_model
    from common.quant.qlinear import QuantLinear
    out = tmp_path / "int4"
    assert main(["quantize", "--model", "tiny-random", "--method", "rtn", "--bits", "4", "--group-size", "32",
                 "--symmetric", "--out", str(out)]) == 0
    layers = [m for m in load_model(str(out), device="cpu")[0].modules() if isinstance(m, QuantLinear)]
    assert layers and all(bool((m.zeros == 8).all()) for m in layers)   # the INT4 layout's zero for a symmetric grid

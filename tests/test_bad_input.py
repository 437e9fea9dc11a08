"""Bad input gets one clear message and exit code 2 before any work, and a write that fails anyway
ends the same way, with nothing half-written. Each case is a row of the bad-input table of issue 38
(tried as a new user would): the model must not even load for input that can be checked without it.
"""
import errno
import os
import time

import pytest

import common.models
from common.cli import main


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the command loads a model: the input should have been refused before."""
    def loaded(*args, **kwargs):
        pytest.fail("the model was loaded before the bad input was refused")
    monkeypatch.setattr(common.models, "load_model", loaded)


def refused(capsys, argv, message):
    """The one message (after any progress bars of work that had to run first)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error: " in err
    err = err[err.index("error: "):]
    assert err.count("error: ") == 1 and message in err and "What to do" in err
    return err


def test_an_existing_output_is_refused_before_the_model_loads(tmp_path, capsys, no_model_load):
    full = tmp_path / "full"
    full.mkdir()
    (full / "model.safetensors").write_text("x")
    afile = tmp_path / "int4.onnx"
    afile.write_text("old graph")
    refused(capsys, ["quantize", "--model", "tiny-random", "--method", "gptq", "--out", str(full)], "exists and is not empty")
    refused(capsys, ["quantize", "--model", "tiny-random", "--method", "rtn", "--out", str(afile)], "exists")
    refused(capsys, ["export", "--model", "tiny-random", "--method", "rtn", "--bits", "4", "--symmetric",
                     "--group-size", "32", "--format", "onnx", "--out", str(afile)], "exists")
    assert afile.read_text() == "old graph"
    refused(capsys, ["prune", "--model", "tiny-random", "--method", "wanda", "--out", str(full)], "exists")
    refused(capsys, ["distill", "--model", "tiny-random", "--student", "tiny-random", "--out", str(full)], "exists")


@pytest.mark.parametrize("command", [
    ["quantize", "--model", "tiny-random", "--method", "rtn", "--out"],
    ["export", "--model", "tiny-random", "--method", "rtn", "--bits", "4", "--symmetric", "--group-size", "32",
     "--format", "onnx", "--out"],
])
def test_a_folder_that_takes_no_files_is_refused_before_the_model_loads(command, tmp_path, capsys, no_model_load):
    err = refused(capsys, command + ["/proc/workshop-out"], "does not take new files")
    assert "/proc" in err
    refused(capsys, command + [str(tmp_path / "no" / "such" / "folder")], "does not exist")


def test_a_write_that_fails_after_the_work_ends_in_one_message(tmp_path, capsys, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(common.models, "save_pretrained_atomic", full_disk)
    err = refused(capsys, ["quantize", "--model", "tiny-random", "--method", "rtn", "--group-size", "32",
                           "--out", str(tmp_path / "q")], "No space left on device")
    assert "Nothing was left half-written" in err and not (tmp_path / "q").exists()


def test_a_file_that_is_not_text_is_refused(tmp_path, capsys, no_model_load):
    binary = tmp_path / "random.bin"
    binary.write_bytes(os.urandom(4096))
    refused(capsys, ["eval", "--model", "tiny-random", "--eval-data", str(binary)], "is not a text file")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e ".encode("latin-1") * 50)
    refused(capsys, ["eval", "--model", "tiny-random", "--eval-data", str(latin)], "not UTF-8")


@pytest.mark.parametrize("mix, where", [("wiki+", "after the last"), ("+wiki", "before the first"),
                                        ("wiki++python-docs", "between two")])
def test_an_empty_part_of_a_mix_is_named(mix, where, capsys, no_model_load):
    refused(capsys, ["quantize", "--model", "tiny-random", "--method", "gptq", "--calib-data", mix], f"empty part {where}")


@pytest.mark.parametrize("argv, message", [
    (["--pattern", "2:4", "--sparsity", "0.3"], "contradicts the pattern 2:4"),
    (["--pattern", "3:2"], "is not N:M"),
    (["--pattern", "two:four"], "is not N:M"),
])
def test_pattern_errors_come_before_the_model_loads(argv, message, capsys, no_model_load):
    refused(capsys, ["prune", "--model", "tiny-random", "--method", "magnitude"] + argv, message)


@pytest.mark.parametrize("argv, message", [
    (["--cloze-data", "python-code"], "it is code"),
    (["--cloze-data", "nope"], "Unknown text 'nope' for the last-word task"),
    (["--cloze-data", "sotu"], "not one of the course's evaluation texts"),
    (["--cloze-data", "/etc/hostname"], "built only from the course's embedded prose texts"),
    (["--cloze-data", "wiki", "--cloze-data", "wiki"], "--cloze-data names wiki more than once"),
    (["--cloze-items", "0"], "0 last-word items"),
    (["--cloze-data", "python-docs", "--cloze-items", "100000"], "python-docs has"),
    (["--no-cloze", "--cloze-data", "wiki"], "--no-cloze skips"),
])
def test_last_word_task_errors_come_before_the_model_loads(argv, message, capsys, no_model_load):
    refused(capsys, ["eval", "--model", "tiny-random"] + argv, message)


@pytest.mark.parametrize("argv, message", [
    (["--method", "width", "--importance", "gradient"], "Unknown importance 'gradient'"),
    (["--method", "width", "--allocation", "global", "--importance", "taylor"], "Unknown allocation 'global'"),
    (["--method", "width", "--allocation", "adaptive"], "activation scores are not in one unit across layers"),
    (["--method", "wanda", "--allocation", "adaptive"], "--allocation applies to width, not wanda"),
])
def test_width_importance_and_allocation_errors_come_before_the_model_loads(argv, message, capsys, no_model_load):
    refused(capsys, ["prune", "--model", "tiny-random"] + argv, message)


@pytest.mark.parametrize("argv, message", [
    (["--method", "awq", "--act-bits", "4"], "--act-bits applies to rtn and gptq"),
    (["--method", "rtn", "--act-bits", "1"], "integer grids of 2 to 8 bits"),
    (["--kv-bits", "4"], "Add --eval"),
    (["--kv-bits", "3", "--eval"], "--kv-bits 3"),
    (["--method", "rtn", "--rotate", "--out", "/tmp/never-written-rotated"], "a saved checkpoint does not carry"),
    (["--rotate"], "Nothing to do"),
    (["--table", "lab02", "--act-bits", "4"], "--table runs a fixed list"),
])
def test_activation_rotation_and_kv_options_are_checked_before_the_model_loads(argv, message, capsys, no_model_load):
    refused(capsys, ["quantize", "--model", "tiny-random"] + argv, message)


def test_modelopt_sparsity_is_2_4_and_says_so(capsys, no_model_load):
    refused(capsys, ["prune", "--model", "tiny-random", "--method", "modelopt:sparsegpt", "--sparsity", "0.7"],
            "contradicts the pattern 2:4")


def test_int8_export_with_groups_is_refused_plainly(capsys, no_model_load):
    err = refused(capsys, ["export", "--model", "tiny-random", "--method", "rtn", "--bits", "8", "--format", "onnx",
                           "--out", "/tmp/never-written.onnx"], "no packed INT8 form")
    assert "--group-size 0 --symmetric" in err and "common.quant" not in err


def test_wikitext2_that_cannot_come_fails_at_once(capsys, monkeypatch, no_model_load):
    import common.data
    monkeypatch.setattr(common.data, "wikitext2_cached", lambda: False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    start = time.perf_counter()
    refused(capsys, ["eval", "--model", "tiny-random", "--eval-data", "wikitext2"], "cannot be reached")
    assert time.perf_counter() - start < 10   # datasets' own retries took 40 s
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    refused(capsys, ["eval", "--model", "tiny-random", "--eval-data", "wikitext2"], "HF_DATASETS_OFFLINE=1")


def test_a_group_size_that_does_not_divide_names_one_that_does(capsys):
    err = refused(capsys, ["quantize", "--model", "embedded", "--method", "rtn", "--group-size", "128"],
                  "does not divide")
    assert "Use --group-size 64 or 32" in err


def test_a_student_that_is_not_a_model_says_so(tmp_path, capsys, no_model_load):
    (tmp_path / "notes.txt").write_text("not a model")
    err = refused(capsys, ["distill", "--student", str(tmp_path)], "is not a model folder")
    assert "--model" not in err

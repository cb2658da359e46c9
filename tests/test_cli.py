"""Specification of the command line: it starts without torch, fails in one clear line, and validates parameters."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import assert_one_clear_error_line
from pipeline import params
from pipeline.cache import Cache
from pipeline.cli import main
from pipeline.params import UsageError
from stages.params import ColorizeParams, PrepareParams, VaeParams

TABLES = ("vae", "colorize")


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60)


# ----- no torch where none is needed ---------------------------------------------------------------------------------


def test_help_does_not_import_torch(tmp_path):
    done = run_python(
        "import sys; from click.testing import CliRunner; from pipeline.cli import main; "
        "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
        "assert 'pipeline prepare' in r.output, r.output; "
        "assert 'torch' not in sys.modules, 'torch was imported'", tmp_path)

    assert done.returncode == 0, done.stderr


def test_prepare_of_the_embedded_default_does_not_import_torch(tmp_path):
    done = run_python(
        "import sys; from click.testing import CliRunner; from pipeline.cli import main; "
        "r = CliRunner().invoke(main, ['prepare', '--count', '40', '--outputs', 'outputs']); "
        "assert r.exit_code == 0, r.output; assert 'prepare: ran' in r.output, r.output; "
        "assert 'torch' not in sys.modules, 'torch was imported'", tmp_path)

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "outputs" / "prepare" / "latest" / "gray.npy").is_file()


# ----- user mistakes: one line, non-zero exit, nothing cached --------------------------------------------------------


def assert_nothing_cached(outputs: Path) -> None:
    stage_folder = outputs / "prepare"
    assert not (stage_folder / "latest").exists() and not (stage_folder / "latest").is_symlink()
    assert Cache(outputs).entries("prepare") == []
    if stage_folder.exists():
        assert [p for p in stage_folder.rglob("*") if not p.is_dir()] == []


def test_missing_source_path_fails_in_one_line_and_caches_nothing(pipeline, outputs, tmp_path):
    result = pipeline("prepare", "--source", tmp_path / "no-such-folder")

    assert_one_clear_error_line(result, "no-such-folder", "--source")
    assert_nothing_cached(outputs)


def test_an_outputs_folder_that_cannot_be_created_fails_in_one_line_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    result = CliRunner().invoke(main, ["prepare", "--count", "10", "--outputs", str(blocker / "outputs")])

    assert_one_clear_error_line(result, str(blocker), "--outputs")


def test_empty_source_folder_fails_in_one_line_and_caches_nothing(pipeline, outputs, tmp_path):
    (tmp_path / "empty").mkdir()

    result = pipeline("prepare", "--source", tmp_path / "empty", "--count", "all")

    assert_one_clear_error_line(result, "no images found", str(tmp_path / "empty"))
    assert_nothing_cached(outputs)


def test_fewer_usable_images_than_count_fails_in_one_line_and_caches_nothing(pipeline, outputs, make_folder):
    folder = make_folder(5)
    (folder / "broken.png").write_text("not a picture")

    result = pipeline("prepare", "--source", folder, "--count", "8")

    error = assert_one_clear_error_line(result, "only 5 usable images", "--count 8", "--count all")
    assert "1 skipped" in error
    assert_nothing_cached(outputs)


def test_missing_labels_file_fails_in_one_line_and_caches_nothing(pipeline, outputs, make_folder, tmp_path):
    result = pipeline("prepare", "--source", make_folder(4), "--labels", tmp_path / "tags.csv", "--count", "all")

    assert_one_clear_error_line(result, "tags.csv", "--labels")
    assert_nothing_cached(outputs)


def test_a_failed_prepare_leaves_the_previous_entry_as_latest(pipeline, outputs, make_folder):
    assert pipeline("prepare", "--count", "40").exit_code == 0
    before = (outputs / "prepare" / "latest").resolve()

    result = pipeline("prepare", "--source", make_folder(3), "--count", "8")

    assert result.exit_code != 0
    assert (outputs / "prepare" / "latest").resolve() == before
    assert [m.entry for m in Cache(outputs).entries("prepare")] == [before.name]


def test_crop_center_half_is_accepted(pipeline, outputs, make_folder):
    result = pipeline("prepare", "--source", make_folder(4), "--count", "all", "--crop", "center:0.5")

    assert result.exit_code == 0, result.output
    assert "-c0.5-" in (outputs / "prepare" / "latest").resolve().name


@pytest.mark.parametrize("crop", ["bogus", "center", "center:", "center:half", "edge:0.5"])
def test_malformed_crop_is_a_usage_error_saying_how_to_write_it(pipeline, outputs, crop):
    result = pipeline("prepare", "--crop", crop)

    assert result.exit_code == 2
    assert_one_clear_error_line(result, repr(crop), "center:F")
    assert not outputs.exists()


@pytest.mark.parametrize("option, value, mentions", [
    ("--crop", "center:0", ("prepare.crop", "at least 0.05")),
    ("--crop", "center:1.5", ("prepare.crop", "at most 1")),
    ("--count", "-3", ("prepare.count", "at least 0")),
    ("--size", "2", ("prepare.size", "at least 4")),
    ("--test-fraction", "0.95", ("prepare.test_fraction", "at most 0.9")),
    ("--test-fraction", "nan", ("prepare.test_fraction", "nan")),
])
def test_out_of_range_prepare_option_fails_in_one_line_naming_the_parameter(pipeline, outputs, option, value, mentions):
    result = pipeline("prepare", option, value)

    assert_one_clear_error_line(result, *mentions)
    assert not outputs.exists()


def test_count_that_is_neither_a_number_nor_all_is_a_usage_error(pipeline):
    result = pipeline("prepare", "--count", "many")

    assert result.exit_code == 2
    assert_one_clear_error_line(result, "'many'", "'all'")


def test_negative_seed_fails_in_one_line_naming_the_parameter(pipeline, outputs):
    result = pipeline("prepare", "--count", "40", "--seed", "-1")

    assert_one_clear_error_line(result, "prepare.seed")


# ----- parameters: --set, coercion, validation -----------------------------------------------------------------------


def test_parse_sets_groups_assignments_by_stage_and_the_last_one_wins():
    parsed = params.parse_sets(["vae.latent_dim=8", " colorize.epochs = 3", "vae.latent_dim=16", "vae.arch=conv"],
                               TABLES)

    assert parsed == {"vae": {"latent_dim": "16", "arch": "conv"}, "colorize": {"epochs": "3"}}


@pytest.mark.parametrize("assignment", ["vae.latent_dim", "latent_dim=8", "vae.=8", "=8"])
def test_parse_sets_rejects_a_malformed_assignment_with_the_expected_form(assignment):
    with pytest.raises(UsageError) as error:
        params.parse_sets([assignment], TABLES)

    assert repr(assignment) in str(error.value)
    assert "STAGE.PARAM=VALUE" in str(error.value)
    assert "\n" not in str(error.value)


def test_parse_sets_rejects_an_unknown_stage_and_lists_the_known_ones():
    with pytest.raises(UsageError, match=r"unknown stage 'gan'.*vae, colorize"):
        params.parse_sets(["gan.lr=0.1"], TABLES)


def test_build_coerces_strings_to_the_declared_types():
    vae = params.build(VaeParams, "vae", {"latent_dim": "8", "lr": "0.01", "arch": "conv", "beta": "2"})
    colorize = params.build(ColorizeParams, "colorize", {"exact_luma": "yes", "epochs": 3.0})
    off = params.build(ColorizeParams, "colorize", {"exact_luma": "Off"})

    assert (vae.latent_dim, vae.lr, vae.arch, vae.beta) == (8, 0.01, "conv", 2.0)
    assert type(vae.latent_dim) is int and type(vae.beta) is float
    assert vae.epochs == VaeParams().epochs  # untouched parameters keep their defaults
    assert colorize.exact_luma is True and colorize.epochs == 3 and type(colorize.epochs) is int
    assert off.exact_luma is False


def test_build_with_no_overrides_gives_the_defaults():
    assert params.build(VaeParams, "vae", {}) == VaeParams()
    assert params.build(PrepareParams, "prepare", {}) == PrepareParams()


def test_build_rejects_an_unknown_parameter_and_lists_the_known_ones():
    with pytest.raises(UsageError) as error:
        params.build(VaeParams, "vae", {"latnt_dim": "8"})

    message = str(error.value)
    assert message.startswith("unknown parameter vae.latnt_dim")
    assert "vae.latent_dim" in message
    assert "\n" not in message


def test_old_colourfulness_weight_spelling_still_sets_the_parameter_with_a_one_line_note():
    notes = []
    built = params.build(ColorizeParams, "colorize", {"colourfulness_weight": "0.3"}, notes.append)

    assert built.colorfulness_weight == 0.3
    assert len(notes) == 1 and "\n" not in notes[0]
    assert "colorize.colorfulness_weight" in notes[0]


@pytest.mark.parametrize("cls, table, name, value, expected", [
    (VaeParams, "vae", "latent_dim", "eight", "vae.latent_dim: expected a whole number, got 'eight'"),
    (VaeParams, "vae", "latent_dim", "2.5", "vae.latent_dim: expected a whole number"),
    (VaeParams, "vae", "epochs", 2.5, "vae.epochs: expected a whole number, got 2.5"),
    (VaeParams, "vae", "epochs", True, "vae.epochs: expected a whole number, got True"),
    (VaeParams, "vae", "lr", "fast", "vae.lr: expected a number, got 'fast'"),
    (VaeParams, "vae", "lr", "nan", "vae.lr: expected a finite number, got 'nan'"),
    (VaeParams, "vae", "lr", float("inf"), "vae.lr: expected a finite number"),
    (ColorizeParams, "colorize", "exact_luma", "maybe", "colorize.exact_luma: expected true or false, got 'maybe'"),
])
def test_build_rejects_a_value_of_the_wrong_type_naming_the_parameter(cls, table, name, value, expected):
    with pytest.raises(UsageError) as error:
        params.build(cls, table, {name: value})

    assert str(error.value).startswith(expected)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("cls, table, name, value, expected", [
    (VaeParams, "vae", "latent_dim", "0", "vae.latent_dim: must be at least 1, got 0"),
    (VaeParams, "vae", "latent_dim", "513", "vae.latent_dim: must be at most 512, got 513"),
    (VaeParams, "vae", "beta", "-0.5", "vae.beta: must be at least 0.0, got -0.5"),
    (VaeParams, "vae", "arch", "rnn", "vae.arch: 'rnn' is not one of conv, fc"),
    (VaeParams, "vae", "channels", "2", "vae.channels: 2 is not one of 1, 3"),
    (PrepareParams, "prepare", "test_fraction", 0.95, "prepare.test_fraction: must be at most 0.9, got 0.95"),
])
def test_build_rejects_an_out_of_range_value_naming_the_parameter(cls, table, name, value, expected):
    with pytest.raises(UsageError) as error:
        params.build(cls, table, {name: value})

    assert str(error.value) == expected


# ----- parameters: TOML config and --set precedence ------------------------------------------------------------------


def test_config_tables_are_read_and_set_wins_over_them(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('[vae]\nlatent_dim = 4\nepochs = 2\n\n[colorize]\narch = "conv"\n')

    from_file = params.read_config(config, TABLES)
    merged = params.merge(from_file, params.parse_sets(["vae.latent_dim=16"], TABLES))
    vae = params.build(VaeParams, "vae", merged["vae"])
    colorize = params.build(ColorizeParams, "colorize", merged["colorize"])

    assert from_file == {"vae": {"latent_dim": 4, "epochs": 2}, "colorize": {"arch": "conv"}}
    assert (vae.latent_dim, vae.epochs) == (16, 2)
    assert colorize.arch == "conv"


def test_merge_lets_later_layers_win_key_by_key_without_dropping_others():
    merged = params.merge({"vae": {"a": 1, "b": 2}}, {"vae": {"b": 3}, "colorize": {"c": 4}}, {"vae": {"a": 5}})

    assert merged == {"vae": {"a": 5, "b": 3}, "colorize": {"c": 4}}


@pytest.mark.parametrize("text, expected", [
    ("[gan]\nlr = 1\n", "unknown table [gan]"),
    ("epochs = 3\n", "unknown table [epochs]"),
    ("[vae\nlatent_dim = 4\n", "is not valid TOML"),
])
def test_bad_config_file_is_a_one_line_usage_error(tmp_path, text, expected):
    config = tmp_path / "run.toml"
    config.write_text(text)

    with pytest.raises(UsageError) as error:
        params.read_config(config, TABLES)

    assert expected in str(error.value) and str(config) in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_config_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="config file .*nope.toml does not exist"):
        params.read_config(tmp_path / "nope.toml", TABLES)

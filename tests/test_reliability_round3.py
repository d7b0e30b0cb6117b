"""Reliability round three: defects a second hostile probe (issue 21's "same probe, new cases") found on main.

Each test fails on main before its fix. The probe itself (cases, logs, before/after table) lives outside git, under
/work/outputs/probe3/. Tests drive the `side` command in process through `test_reliability.run`, which also asserts
that every failure is one line without a traceback.
"""

import json
from pathlib import Path

import pytest
from test_reliability import no_model_loading, run, save_ddpm, write_labels  # noqa: F401 (no_model_loading is a fixture, used by name)

from diffusers_side.cli import main as side

STUDY = {
    "pipeline": "digits-rare",
    "reference": "digits-rare",
    "inputs": {"num_synthetic": 8},
    "selection": {"seed": 1, "num_images": 4},
    "report": {"seed": 2, "num_images": 4},
    "configurations": [{"name": "uncond", "method": "uncond"}],
}


def study_config(tmp_path: Path, edit=None, text: str | None = None) -> Path:
    payload = json.loads(json.dumps(STUDY))
    if edit is not None:
        edit(payload)
    path = tmp_path / "my study.json"
    path.write_text(text if text is not None else json.dumps(payload))
    return path


# --- study config: every error names the file and the key; values checked before any model loads -----------------


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda d: d["inputs"].update(num_synthetic=-5), "inputs.num_synthetic=-5"),  # main blamed 'num_images=-5'
        (lambda d: d["inputs"].update(classifier_learning_rate="fast"), "inputs.classifier_learning_rate"),
        (lambda d: d["inputs"].update(scheduler="nosuch"), "inputs.scheduler"),
        (lambda d: d["configurations"][0].update(guidance_scale="ten"), "guidance_scale='ten'"),
        (lambda d: d["configurations"][0].update(guidance_window=[900, 100]), "guidance_window=[900, 100]"),
        (lambda d: d["configurations"][0].update(target_selection="top7"), "target_selection"),
        (lambda d: d.update(reference=None), "reference=None"),
        (lambda d: d["report"].update(seed=1), "selection seed equals the report seed"),
        (lambda d: d.pop("configurations"), "lacks ['configurations']"),
    ],
)
@pytest.mark.usefixtures("no_model_loading")
def test_study_config_errors_name_the_file_and_the_key(tmp_path, capsys, edit, named):
    config = study_config(tmp_path, edit)
    code, _, err = run(["study", config, "--phase", "selection", "--output", tmp_path / "study"], capsys)
    assert code == 2 and str(config) in err and named in err, err
    assert not (tmp_path / "study").exists()


@pytest.mark.usefixtures("no_model_loading")
def test_study_config_key_given_twice_is_refused(tmp_path, capsys):
    # JSON keeps the last of two equal keys without a word: a config edited by hand must not change meaning silently
    text = json.dumps(STUDY)[:-1] + ', "reference": "digits"}'
    config = study_config(tmp_path, text=text)
    code, _, err = run(["study", config, "--phase", "selection", "--output", tmp_path / "study"], capsys)
    assert code == 2 and str(config) in err and "['reference'] given twice" in err, err


# --- an unknown flag is blamed on the subcommand it was given to -----------------------------------------------------


@pytest.mark.parametrize(
    "argv, command",
    [
        (["synthesize", "--num-samples", "2", "--output", "out", "--num-image", "4"], "side synthesize"),
        (["canary", "audit", "--pipeline", "p", "--canaries", "c", "--output", "o", "--num-images", "0"], "side canary audit"),
    ],
)
def test_unknown_flag_names_the_subcommand_and_its_help(argv, command, capsys):
    # main said `side: error: unrecognized arguments ... (see `side --help`)`, whose help lists no flag of the command
    with pytest.raises(SystemExit) as exit:
        side(argv)
    code, err = exit.value.code, capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and code == 2 and err.strip().endswith(f"(see `{command} --help`)") and f"{command}: error: unrecognized arguments" in err, err


# --- a dangling symbolic link as --output: named, before any work --------------------------------------------------


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize("command", ["synthesize", "evaluate", "label"])
def test_dangling_symlink_output_is_named(tmp_path, capsys, command):
    # main: `side synthesize: error: [Errno 17] File exists: '.../out'` (after loading the model)
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone" / "deep")
    argv = {
        "synthesize": ["synthesize", "--pipeline", tmp_path / "p", "--num-samples", "2", "--output", link],
        "evaluate": ["evaluate", "--generated", tmp_path / "g", "--reference", tmp_path / "r", "--output", link],
        "label": ["label", "--synthetic", tmp_path / "s", "--output", link, "--features", "pixels", "--clusters", "2"],
    }[command]
    for needed in ("p", "g", "r", "s"):
        (tmp_path / needed).mkdir()
    code, _, err = run(argv, capsys)
    assert code == 2 and f"{link} is a symbolic link to {tmp_path / 'gone' / 'deep'}, which does not exist" in err, err


@pytest.mark.usefixtures("no_model_loading")
def test_dangling_symlink_output_dir_of_training_is_named(tmp_path, capsys):
    # the training scripts check --output_dir with check_writable, not check_output_folder: same class, same answer
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "gone")
    data = write_labels(tmp_path / "labels")
    argv = ["train-classifier", "--pretrained_model_name_or_path", save_ddpm(tmp_path / "ddpm"), "--train_data_dir", data,
            "--output_dir", link, "--max_train_steps", "1"]
    code, _, err = run(argv, capsys)
    assert code == 2 and f"--output_dir {link} is a symbolic link to {tmp_path / 'gone'}, which does not exist" in err, err

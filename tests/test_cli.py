import subprocess
import sys

import pytest
from PIL import Image

from diffalign.cli import main
from diffalign.sample import read_prompts


def test_sample_writes_a_grid_from_a_local_model(tiny_model, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a red circle\n\n   \na photo of two blue squares\n")
    out = tmp_path / "grid.png"
    code = main(["sample", "--model", str(tiny_model("sd15")), "--prompts", str(prompts),
                 "--num-images", "2", "--steps", "2", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "skipped 2 empty line(s)" in printed and "4 images" in printed
    with Image.open(out) as grid:
        assert grid.width == grid.height >= 2 * 256  # 2 images per row (one prompt each), 2 rows, upscaled


def test_prompt_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_prompts(tmp_path / "missing.txt")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n")
    with pytest.raises(ValueError, match="blank.txt: no prompts"):
        read_prompts(blank)


def test_console_script_help_lists_subcommands():
    result = subprocess.run([sys.executable, "-m", "diffalign.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("train", "score", "eval", "demo", "sample", "prefs", "runs"):
        assert command in result.stdout


def test_unavailable_subcommand_says_so(capsys, monkeypatch):
    from diffalign import cli

    monkeypatch.setitem(cli.SUBCOMMANDS, "later", ("diffalign.not_written_yet", "a command of a later version"))
    assert main(["later"]) == 2
    assert "not yet available" in capsys.readouterr().err

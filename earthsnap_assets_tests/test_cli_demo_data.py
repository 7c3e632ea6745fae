"""`earthsnap demo-data`: re-running it (as `make demo` does) redraws its own folder; a user's folder is never wiped."""

from click.testing import CliRunner

from earthsnap_assets.cli import main


def test_demo_data_can_run_twice_in_its_default_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("EARTHSNAP_HOME", str(tmp_path))
    args = ["demo-data", "--images-per-species", "2", "--no-upload"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    stale = tmp_path / "demo-data" / "stale.txt"
    stale.write_text("left from an interrupted run")
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert "generated" in second.output and not stale.exists()


def test_demo_data_refuses_a_non_empty_folder_it_did_not_choose(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("a user's file")
    result = CliRunner().invoke(main, ["demo-data", "--out", str(mine), "--images-per-species", "2", "--no-upload"])
    assert result.exit_code != 0
    assert (mine / "keep.txt").read_text() == "a user's file"

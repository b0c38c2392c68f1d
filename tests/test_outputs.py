"""Output paths: folders created or refused in one line, results files replaced whole or not at all."""

import pytest

from mbtasks.errors import MbtasksError
from mbtasks.io.outputs import output_file, output_folder, replaced_atomically, write_text_atomically


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), replaced_atomically(path) as temporary:
        temporary.write_text("half of the new")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["result.json"]
    write_text_atomically(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_the_temporary_keeps_the_suffix_writers_read_the_format_from(tmp_path):
    with replaced_atomically(tmp_path / "plot.png") as temporary:
        assert temporary.suffix == ".png" and temporary.parent == tmp_path
        temporary.write_bytes(b"\x89PNG")
    assert (tmp_path / "plot.png").read_bytes() == b"\x89PNG"


def test_output_folders_are_created_and_files_in_the_way_refused(tmp_path):
    assert output_folder(tmp_path / "a" / "b").is_dir()
    assert output_file(tmp_path / "c" / "m.json").parent.is_dir()
    (tmp_path / "file").write_text("mine")
    for make, path, problem in [
        (output_folder, tmp_path / "file", "file: is a file, not a folder to write into"),
        (output_file, tmp_path / "file" / "sub" / "m.json", "file: is a file, not a folder"),
        (output_file, tmp_path / "a", "a: is a folder, not a file to write"),
    ]:
        with pytest.raises(MbtasksError, match=problem):
            make(path)
    assert (tmp_path / "file").read_text() == "mine"


def test_an_existing_file_is_refused_unless_overwrite(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("the user's figures")
    with pytest.raises(MbtasksError) as refused:
        output_file(path)
    assert str(refused.value) == f"{path}: exists: pass --overwrite to replace it, or choose another path"
    assert path.read_text() == "the user's figures"
    assert output_file(path, overwrite=True) == path and path.read_text() == "the user's figures"

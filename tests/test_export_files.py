"""An export directory's manifest and its replacement: what ``autoprune.load`` trusts, and an export always whole."""
from pathlib import Path

import pytest

from autoprune import AutopruneError
from autoprune.deploy.export import MANIFEST_FILE, MODEL_FILE, replace_directory, verify_manifest, write_manifest


def an_export(directory: Path, **files: bytes) -> Path:
    directory.mkdir(parents=True)
    for name, data in {"model.pt": b"weights", "policy.json": b"{}", **files}.items():
        (directory / name).write_bytes(data)
    write_manifest(directory)
    return directory


def test_a_whole_manifest_passes(tmp_path):
    verify_manifest(an_export(tmp_path / "e"))


@pytest.mark.parametrize("keep", [["policy.json"], []], ids=["without-model.pt", "empty"])
def test_a_manifest_that_leaves_out_what_load_reads_is_refused(tmp_path, keep):
    out = an_export(tmp_path / "e")
    manifest = out / MANIFEST_FILE
    manifest.write_text("".join(f"{line}\n" for line in manifest.read_text().splitlines()
                                if line.split("  ", 1)[1] in keep))
    with pytest.raises(AutopruneError, match=f"{MANIFEST_FILE} does not list {MODEL_FILE}"):
        verify_manifest(out)


@pytest.mark.parametrize("name", ["../outside.pt", "/etc/hostname", "sub/model.pt", ".."])
def test_a_manifest_naming_a_file_outside_the_export_is_refused(tmp_path, name):
    out = an_export(tmp_path / "e")
    (tmp_path / "outside.pt").write_bytes(b"x")
    with (out / MANIFEST_FILE).open("a") as f:
        f.write(f"{'0' * 64}  {name}\n")
    with pytest.raises(AutopruneError, match="not a file of the export directory"):
        verify_manifest(out)


def test_a_malformed_manifest_line_is_refused(tmp_path):
    out = an_export(tmp_path / "e")
    with (out / MANIFEST_FILE).open("a") as f:
        f.write("model.pt\n")
    with pytest.raises(AutopruneError, match="line 3 of MANIFEST.sha256 is not"):
        verify_manifest(out)


def test_a_new_export_replaces_the_old_one_whole(tmp_path):
    out = an_export(tmp_path / "e", **{"v.txt": b"old"})
    replace_directory(an_export(tmp_path / ".e.tmp", **{"v.txt": b"new"}), out)
    assert (out / "v.txt").read_bytes() == b"new"
    verify_manifest(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]  # nothing set aside is left


def test_a_swap_that_fails_midway_leaves_the_previous_export_in_place(tmp_path, monkeypatch):
    out = an_export(tmp_path / "e", **{"v.txt": b"old"})
    new = an_export(tmp_path / ".e.tmp", **{"v.txt": b"new"})
    real = Path.rename

    def rename(self, target):
        if self == new:
            raise OSError("disk gone")
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="disk gone"):
        replace_directory(new, out)
    assert (out / "v.txt").read_bytes() == b"old"
    verify_manifest(out)
    assert not (tmp_path / ".e.old").exists()

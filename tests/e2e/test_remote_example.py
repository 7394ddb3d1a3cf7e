"""examples/remote-blender/run.sh: a scene and a script sent encrypted, rendered by
blender on a "host" reached over SSH, the PNG back with the submitter only."""

from pathlib import Path

from tests.conftest import requires_root
from tests.e2e import run_example
from tests.png import SIGNATURE


@requires_root
def test_the_remote_blender_example_renders_and_leaves_nothing_on_the_host(tmp_path: Path) -> None:
    result = run_example("remote-blender", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "left on the host: 0 files" in result.stdout
    assert "as the CAS recorded" in result.stderr and "tolerates sim" in result.stderr
    assert (tmp_path / "demo" / "out" / "frame_0001.png").read_bytes().startswith(SIGNATURE)

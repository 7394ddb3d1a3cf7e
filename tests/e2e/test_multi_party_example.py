"""examples/multi-party/run.sh: a volume exported to a pinned analyst session, end to end."""

from pathlib import Path

from tests.conftest import requires_root
from tests.e2e import run_example


@requires_root
def test_the_multi_party_example_runs_end_to_end(tmp_path: Path) -> None:
    result = run_example("multi-party", tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "analysis: 1000 records, mean age" in result.stdout
    assert "no plaintext record" in result.stdout
    assert "you may not read session 'hospital/records'" in result.stdout
    refusal = (
        "attestation refused: session 'hospital/records' exports volume 'records' "
        "to session 'lab/analysis' pinned at hash"
    )
    assert refusal in out
    assert "patient-0001" not in out  # the modified program never ran
    assert "demo: done." in result.stdout

"""The canonical session hash: layout never changes it, meaning always does."""

import copy

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import session_dict
from tests.unit.policy.test_loader import GOOD
from veil.policy import parse_session, session_hash

BASE = session_dict(
    command=["/bin/true", "$$VEIL::pw$$"],
    environment={"A": "1", "B": "$$VEIL::pw:hex$$"},
    measurement="sha256:" + "cd" * 32,
)


def _hash(text: str) -> str:
    return session_hash(parse_session(text))


def _shuffled(value: object, rnd: st.DataObject) -> object:
    if isinstance(value, dict):
        keys = rnd.draw(st.permutations(list(value)))
        return {k: _shuffled(value[k], rnd) for k in keys}
    if isinstance(value, list):
        return [_shuffled(v, rnd) for v in value]
    return value


@settings(max_examples=50, deadline=None)
@given(
    data=st.data(), flow=st.booleans(), width=st.integers(20, 200), quote=st.sampled_from([None, "'", '"'])
)
def test_layout_key_order_quoting_and_comments_do_not_change_the_hash(
    data: st.DataObject, flow: bool, width: int, quote: str | None
) -> None:
    reference = _hash(yaml.safe_dump(BASE))
    shuffled = _shuffled(BASE, data)
    text = yaml.safe_dump(
        shuffled, default_flow_style=flow, width=width, sort_keys=False, default_style=quote
    )
    text = "# a comment\n" + text + "\n# trailing comment\n"
    assert _hash(text) == reference


@settings(max_examples=50, deadline=None)
@given(
    change=st.sampled_from(
        [
            ("name", "test/other"),
            ("env", "A"),
            ("arg", 1),
            ("tolerate", []),
            ("size", 25),
            ("pwd", "/tmp"),
        ]
    )
)
def test_any_change_of_meaning_changes_the_hash(change: tuple[str, object]) -> None:
    changed = copy.deepcopy(BASE)
    what, value = change
    service = changed["services"][0]
    if what == "name":
        changed["name"] = value
    elif what == "env":
        service["environment"][value] = "2"
    elif what == "arg":
        service["command"].append("--verbose")
    elif what == "tolerate":
        changed["security"]["tolerate"] = value
    elif what == "size":
        changed["secrets"][0]["size"] = value
    elif what == "pwd":
        service["pwd"] = value
    assert _hash(yaml.safe_dump(changed)) != _hash(yaml.safe_dump(BASE))


def test_defaults_written_out_or_left_implicit_hash_the_same() -> None:
    explicit = dict(BASE, access_policy={"read": ["CREATOR"], "update": ["CREATOR"]}, predecessor=None)
    assert _hash(yaml.safe_dump(explicit)) == _hash(yaml.safe_dump(BASE))


def test_a_quoted_number_and_a_number_mean_the_same() -> None:
    text = yaml.safe_dump(BASE).replace("version: '1'", "version: 1")
    assert "version: 1\n" in text
    assert _hash(text) == _hash(yaml.safe_dump(BASE))


def test_keys_added_to_the_language_leave_earlier_hashes_unchanged() -> None:
    """sim_platforms, owner pins and import hashes are left out of the canonical form while
    unset: a session stored before they existed keeps its hash (and every pin naming it)."""
    text = GOOD + (
        "volumes:\n"
        "  - name: data\n"
        f'    export: [{{session: lab/x, session_hash: "{"ab" * 32}"}}]\n'
        "  - name: in\n"
        "    import: {session: lab/y, volume: v}\n"
    )
    text = text.replace("  - name: db_pass\n", "  - name: db_pass\n    export: [{session: lab/z}]\n")
    # the hash veil 0.1.0 gave this text before those keys existed
    assert _hash(text) == "6da072c9ac268a8da539455971d106ce2b6590146e2051cb649eff9367372977"
    pinned = text.replace("export: [{session: lab/z}]", f"export: [{{session: lab/z, owner: '{'cd' * 32}'}}]")
    assert _hash(pinned) != _hash(text)

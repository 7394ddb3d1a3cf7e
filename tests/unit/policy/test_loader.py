"""Parsing sessions: valid documents, and every kind of mistake reported with its position."""

import textwrap

import pytest
import yaml

from tests.conftest import session_dict
from veil.policy import PolicyError, parse_session
from veil.policy.loader import check_session

M = "sha256:" + "ab" * 32

GOOD = textwrap.dedent(
    f"""\
    name: acme/payments
    version: "1"
    security:
      tolerate: [sim]
    services:
      - name: api
        attestation:
          - platform: sim
            measurement: "{M}"
        command: ["/usr/bin/python3", "/app/server.py", "--db-pass", "$$VEIL::db_pass$$"]
        environment:
          DB_PASS: "$$VEIL::db_pass$$"
          PORT: 8080
          KEY_HEX: "$$VEIL::key:hex$$"
        pwd: /app
        files:
          - path: /etc/app/key.b64
            content: "$$VEIL::key:base64$$"
            mode: "0400"
    secrets:
      - name: db_pass
        kind: ascii
        size: 32
      - name: key
        kind: binary
        size: 16
      - name: fixed
        kind: binary
        value: "00ff"
        encoding: hex
    """
)


def problems(text: str) -> list[tuple[int, int, str, str]]:
    with pytest.raises(PolicyError) as caught:
        parse_session(text, "s.yaml")
    return [(p.line, p.column, p.message, p.hint) for p in caught.value.problems]


def test_a_complete_session_parses() -> None:
    session = parse_session(GOOD)
    assert session.name == "acme/payments"
    api = session.service("api")
    assert api is not None
    assert api.environment["PORT"] == "8080"
    assert api.files[0].mode_bits == 0o400
    assert session.tolerates_sim
    assert [s.name for s in session.secrets] == ["db_pass", "key", "fixed"]


def test_unknown_key_is_reported_with_line_column_and_hint() -> None:
    text = GOOD.replace("    pwd: /app", "    pwdd: /app")
    [(line, column, message, hint)] = problems(text)
    assert (line, column) == (15, 5)
    assert "unknown key 'pwdd'" in message
    assert hint == "did you mean 'pwd'?"


def test_every_problem_is_reported_not_only_the_first() -> None:
    text = GOOD.replace("    pwd: /app", "    pwdd: /app").replace("name: acme/payments", "name: Acme!")
    found = problems(text)
    assert len(found) == 2
    assert found[0][0] == 1  # name, line 1, sorted by position
    assert "session name" in found[0][2]


def test_bad_yaml_syntax_is_located() -> None:
    [(line, _, message, _)] = problems("name: x\nservices: [\n  - a\n")
    assert line == 3
    assert "invalid YAML" in message


def test_duplicate_keys_are_refused() -> None:
    [(line, _, message, _)] = problems("name: a\nname: b\nversion: '1'\n")
    assert line == 2
    assert "duplicate key 'name'" in message


def test_unknown_secret_reference_is_located() -> None:
    text = GOOD.replace('DB_PASS: "$$VEIL::db_pass$$"', 'DB_PASS: "$$VEIL::db_pas$$"')
    [(line, column, message, hint)] = problems(text)
    assert (line, column) == (12, 16)
    assert message == "unknown secret 'db_pas'"
    assert "db_pass" in hint


def test_binary_secret_cannot_go_raw_into_the_environment() -> None:
    text = GOOD.replace('KEY_HEX: "$$VEIL::key:hex$$"', 'KEY_HEX: "$$VEIL::key$$"')
    [(_, _, message, hint)] = problems(text)
    assert "binary secret 'key' cannot be placed raw" in message
    assert "$$VEIL::key:hex$$" in hint


def test_unknown_format_and_malformed_placeholder() -> None:
    text = GOOD.replace("$$VEIL::key:base64$$", "$$VEIL::key:rot13$$").replace(
        '"--db-pass"', '"$$VEIL::oops"'
    )
    messages = [m for _, _, m, _ in problems(text)]
    assert "malformed secret placeholder" in messages
    assert "unknown format 'rot13' for secret 'key'" in messages


def test_missing_required_key() -> None:
    text = GOOD.replace(
        '    command: ["/usr/bin/python3", "/app/server.py", "--db-pass", "$$VEIL::db_pass$$"]\n', ""
    )
    [(line, _, message, _)] = problems(text)
    assert message == "missing required key 'command' in services[0]"
    assert line == 6


def test_boolean_environment_values_must_be_quoted() -> None:
    text = GOOD.replace("PORT: 8080", "DEBUG: yes")
    [(_, _, message, _)] = problems(text)
    assert "quote it" in message


def test_unknown_tolerance_is_refused() -> None:
    [(_, _, message, _)] = problems(GOOD.replace("tolerate: [sim]", "tolerate: [simulation]"))
    assert "unknown tolerance 'simulation'" in message


def test_duplicate_names_are_refused() -> None:
    text = GOOD.replace("  - name: key\n", "  - name: db_pass\n")
    messages = [m for _, _, m, _ in problems(text)]
    assert "duplicate secret name 'db_pass'" in messages


def test_explicit_binary_value_needs_an_encoding() -> None:
    [(_, _, message, _)] = problems(
        GOOD.replace("        encoding: hex\n", "").replace("    encoding: hex\n", "")
    )
    assert "needs 'encoding: hex' or 'encoding: base64'" in message


def test_measurement_format_is_checked() -> None:
    [(_, _, message, _)] = problems(GOOD.replace(M, "sha256:xyz"))
    assert "64 lower-case hex digits" in message


def test_relative_injected_path_is_refused() -> None:
    [(_, _, message, _)] = problems(GOOD.replace("path: /etc/app/key.b64", "path: etc/app/key.b64"))
    assert "absolute" in message


def test_an_empty_file_is_a_clear_error() -> None:
    [(_, _, message, _)] = problems("")
    assert "no YAML document" in message


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        (None, "unknown secret 'k'"),
        ({"name": "k", "kind": "ascii", "size": 32}, "cannot be a volume key"),
        ({"name": "k", "kind": "binary", "size": 16}, "cannot be a volume key"),
        ({"name": "k", "kind": "binary", "value": "00" * 31, "encoding": "hex"}, "cannot be a volume key"),
    ],
)
def test_a_volume_key_is_a_32_byte_binary_secret(secret: dict[str, object] | None, message: str) -> None:
    document = session_dict(command=["/bin/true"], measurement="sha256:" + "ab" * 32)
    document["volumes"] = [{"name": "v", "key": "k"}]
    document["secrets"] = [secret] if secret else []
    found = problems(yaml.safe_dump(document))
    assert any(message in p[2] for p in found), found


def test_an_initial_tag_is_64_hex_digits_and_measure_is_command_or_image() -> None:
    document = session_dict(command=["/bin/true"], measurement="sha256:" + "ab" * 32, measure="disk")
    document["volumes"] = [{"name": "v", "initial_tag": "xyz"}]
    found = " ".join(p[2] for p in problems(yaml.safe_dump(document)))
    assert "volume tag" in found and "measure" in found
    document["services"][0]["measure"] = "image"
    document["volumes"] = [{"name": "v", "key": "k", "initial_tag": "ab" * 32}]
    document["secrets"] = [{"name": "k", "kind": "binary", "size": 32}]
    assert parse_session(yaml.safe_dump(document)).services[0].measure == "image"


def test_check_warns_about_secrets_in_argv_and_notes_unnamed_sim_platforms() -> None:
    session, warnings = check_session(GOOD, "s.yaml")
    assert session.name == "acme/payments"
    [argv, unused, sim] = warnings
    assert (argv.severity, argv.line) == ("warning", 10)
    assert "secret 'fixed' is used nowhere" in unused.message and unused.line == 27
    assert "secret 'db_pass' is in the command line" in argv.message and "environment" in argv.hint
    assert str(argv).startswith("s.yaml:10:") and ": warning: " in str(argv)
    assert sim.severity == "note" and "sim_platforms" in sim.message
    quiet = GOOD.replace(', "--db-pass", "$$VEIL::db_pass$$"', "").replace(
        "  tolerate: [sim]\n", f"  tolerate: [sim]\n  sim_platforms: ['{'ab' * 32}']\n"
    )
    quiet = quiet.replace("  - name: fixed\n", "  - name: fixed\n    export_public: true\n")
    assert check_session(quiet, "s.yaml")[1] == []


@pytest.mark.parametrize(
    ("written", "shell"),
    [
        ("$VEIL::db_pass$", False),  # one dollar each side
        ("$$VEIL::db_pass$", None),  # does not close: an error (malformed placeholder)
        ("$VEIL::db_pass$$", False),
        ("VEIL::db_pass$$", False),
        ("VEIL::db_pass", False),
        ("4242VEIL::db_pass4242", True),  # an unquoted heredoc made $$ the shell's pid
        ("pass=$VEIL::db_pass:hex$ end", False),
    ],
)
def test_near_miss_placeholders_are_named(written: str, shell: bool | None) -> None:
    text = GOOD.replace('KEY_HEX: "$$VEIL::key:hex$$"', f'KEY_HEX: "{written}"')
    if shell is None:
        assert any("malformed secret placeholder" in p[2] for p in problems(text))
        return
    near = [w for w in check_session(text, "s.yaml")[1] if "looks like a secret placeholder" in w.message]
    assert len(near) == 1 and near[0].line == 14, near
    assert ("process id" in near[0].hint) is shell
    assert "VEIL::db_pass" in near[0].message


def test_well_formed_placeholders_and_plain_text_are_no_near_miss() -> None:
    text = GOOD.replace("PORT: 8080", 'PORT: "8080 $$VEIL::db_pass$$$$VEIL::key:hex$$ VEILED::x"')
    assert not [w for w in check_session(text, "s.yaml")[1] if "looks like" in w.message]


def test_secrets_used_by_volumes_shields_and_certificates_are_used() -> None:
    document = session_dict(command=["/bin/true"], measurement=M)
    document["secrets"] = [
        {"name": "vk", "kind": "binary", "size": 32},
        {"name": "ca-key", "kind": "private-key"},
        {"name": "ca", "kind": "x509-ca", "private_key": "ca-key"},
        {"name": "cert-key", "kind": "private-key"},
        {"name": "cert", "kind": "x509", "private_key": "cert-key", "issuer": "ca"},
        {"name": "left", "kind": "ascii", "size": 8},
        {
            "name": "shared",
            "kind": "ascii",
            "size": 8,
            "export": [{"session": "other/app", "owner": "ab" * 32}],
        },
    ]
    document["volumes"] = [{"name": "v", "key": "vk"}]
    document["services"][0]["network"] = {
        "servers": [{"listen": "0.0.0.0:8443", "forward": "127.0.0.1:8080", "identity": "cert"}]
    }
    _, warnings = check_session(yaml.safe_dump(document), "s.yaml")
    assert [w.message.split(":")[0] for w in warnings if "used nowhere" in w.message] == [
        "secret 'left' is used nowhere"
    ]


def test_names_must_match_whole_not_up_to_a_newline() -> None:
    for bad in ('name: "acme/payments\\n"', 'name: "acme/payments\\nx"'):
        text = GOOD.replace("name: acme/payments", bad)
        assert any("session name" in p[2] for p in problems(text))
    text = GOOD.replace("  - name: db_pass\n", '  - name: "db_pass\\n"\n')
    assert text != GOOD
    assert any("secrets[0].name" in p[2] for p in problems(text))


def test_limits_refuse_hostile_documents_before_building_them() -> None:
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x","x"]\n' + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(7)
    )
    [(line, _, message, hint)] = problems(bomb)
    assert line == 5 and "expands to more than 20000 nodes" in message and "aliases" in hint
    assert "nests deeper than 64 levels" in problems("a: " + "[" * 5000 + "]" * 5000)[0][2]
    assert "refers to a node that contains it" in problems("a: &x [*x]\n")[0][2]
    assert "the limit is" in problems("a: " + "x" * (1 << 20))[0][2]
    # aliases within the limit are fine: counted once per use
    shared = GOOD.replace('DB_PASS: "$$VEIL::db_pass$$"', 'DB_PASS: &pw "$$VEIL::db_pass$$"').replace(
        "PORT: 8080\n", "PORT: 8080\n      COPY: *pw\n"
    )
    assert parse_session(shared).service("api").environment["COPY"] == "$$VEIL::db_pass$$"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "where", "hint"),
    [
        ("name: a\nservices:\n\t- name: x\n", (3, 1), "never tabs"),
        ("name: a\ncommand: echo a: b\n", (2, 16), "must be quoted"),
        ("name: a\n  version: 1\n", (2, 10), "indented more than the key above it"),
        ("name: a\nservices:\n  - name: x\n   pwd: /\n", (4, 4), "indentation"),
        ('name: "a\n', (2, 1), "never closed"),
        ("name: @a\n", (1, 7), "must be quoted"),
        ('pwd: "C:\\data"\n', (1, 10), "single quotes"),
        ("name: *x\n", (1, 7), "anchor &name"),
    ],
)
def test_yaml_syntax_errors_come_with_a_hint(text: str, where: tuple[int, int], hint: str) -> None:
    [(line, column, message, given)] = problems(text)
    assert (line, column) == where and message.startswith("invalid YAML: ")
    assert hint in given


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("=\n", (1, 1)),  # YAML 1.1's "value key" tag: found by schemathesis as a 500 of the CAS
        ("name: =\n", (1, 7)),
        ("=: 1\n", (1, 1)),
        ("name: !!python/object:os.system x\n", (1, 7)),
    ],
)
def test_a_scalar_yaml_cannot_construct_is_a_located_problem(text: str, where: tuple[int, int]) -> None:
    found = problems(text)
    assert (found[0][0], found[0][1]) == where
    assert "is not a value YAML can read here" in found[0][2] and "quote it" in found[0][3]

"""`slmops keys add|list|revoke`: a key printed once, listed without it, revoked by name
or id; mistakes are one clear message and a non-zero exit."""

from __future__ import annotations

import re

import pytest

from slmops.tasks.core.config import load_params
from slmops.tasks.feedback.keys import KeyStore, Principal, Role
from tests.slmops.run_cli import cli

KEY = re.compile(r"slm_[0-9a-f]{12}_\S+")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project: defaults, the feedback database under tmp_path."""
    (tmp_path / "params.yaml").write_text("")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def verify(project, key: str) -> Principal | None:
    with KeyStore.from_params(load_params(project / "params.yaml")) as keys:
        return keys.verify(key)


def test_add_prints_a_working_key_once_and_list_never_shows_it(project, monkeypatch, capsys):
    code, output = cli(monkeypatch, capsys, "keys", "add", "rita", "--role", "reviewer")
    assert code == 0, output
    (key,) = KEY.findall(output)
    assert "will not be shown again" in output
    principal = verify(project, key)
    assert principal is not None and (principal.name, principal.role) == ("rita", Role.reviewer)

    code, output = cli(monkeypatch, capsys, "keys", "list")
    assert code == 0, output
    assert "rita" in output and "reviewer" in output and principal.key_id in output
    assert key.split("_", 2)[2] not in output and not KEY.search(output)


def test_revoke_by_name_or_id_then_a_new_key_for_the_name(project, monkeypatch, capsys):
    _, output = cli(monkeypatch, capsys, "keys", "add", "carol", "--role", "client")
    (first,) = KEY.findall(output)
    code, output = cli(monkeypatch, capsys, "keys", "revoke", "carol")
    assert code == 0 and "revoked the key" in output and "within 5 s" in output, output
    assert verify(project, first) is None

    _, output = cli(monkeypatch, capsys, "keys", "add", "carol", "--role", "admin")
    (second,) = KEY.findall(output)
    key_id = second.split("_")[1]
    code, output = cli(monkeypatch, capsys, "keys", "revoke", key_id)
    assert code == 0 and key_id in output, output
    assert verify(project, second) is None
    _, output = cli(monkeypatch, capsys, "keys", "list")
    assert output.count("carol") == 2 and "admin" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add", "rita", "--role", "superuser"), "role 'superuser': expected one of"),
        (("add", "api-token", "--role", "admin"), "principal of the shared token"),
        (("add", "two words", "--role", "client"), "principal name 'two words'"),
        (("revoke", "nobody"), "no active key named or with id 'nobody'"),
    ],
    ids=["bad_role", "reserved_name", "bad_name", "unknown"],
)
def test_mistakes_are_one_message_and_exit_1(project, monkeypatch, capsys, args, message):
    code, output = cli(monkeypatch, capsys, "keys", *args)
    assert code == 1 and message in output and "Traceback" not in output, output


def test_a_second_active_key_for_a_name_is_refused(project, monkeypatch, capsys):
    cli(monkeypatch, capsys, "keys", "add", "rita", "--role", "reviewer")
    code, output = cli(monkeypatch, capsys, "keys", "add", "rita", "--role", "admin")
    assert code == 1 and "already has an active key" in output and "keys revoke rita" in output


def test_help_explains_roles_and_commands(monkeypatch, capsys):
    code, output = cli(monkeypatch, capsys, "keys", "--help")
    assert code == 0
    for word in ("add", "list", "revoke", "client", "reviewer", "admin"):
        assert word in output
    code, output = cli(monkeypatch, capsys, "keys", "add", "--help")
    assert code == 0 and "--role" in output and "/feedback and /review" in output
    code, output = cli(monkeypatch, capsys, "keys", "add", "rita")  # no --role
    assert code == 2 and "--role" in output

"""API keys in the feedback database: made once, stored as salted hashes, verified in
constant time by their public id, revoked by name or id."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from slmops.tasks.core.config import parse_params
from slmops.tasks.feedback.keys import (
    TOKEN_PRINCIPAL,
    ApiKeyError,
    KeyStore,
    Principal,
    Role,
    api_keys_table,
    parse_key,
)
from slmops.tasks.feedback.store import make_engine


@pytest.fixture
def keys(tmp_path: Path):
    params = parse_params({}, tmp_path / "params.yaml", root=tmp_path)
    with KeyStore.from_params(params) as store:
        yield store


def test_a_key_verifies_to_its_principal_and_only_its_salted_hash_is_stored(keys):
    made, key = keys.add("alice", "reviewer", created_by="cli:ops")
    prefix, key_id, secret = key.split("_", 2)
    assert (prefix, key_id) == ("slm", made.id) and len(secret) >= 43  # 32 random bytes
    assert keys.verify(key) == Principal("alice", Role.reviewer, made.id)
    with keys.engine.connect() as conn:
        (row,) = conn.execute(sa.select(api_keys_table)).all()
    stored = " ".join(str(v) for v in row)
    assert secret not in stored and key not in stored
    assert len(row.salt) == 32 and len(row.hash) == 64 and row.created_by == "cli:ops"
    # A second key gets another salt: equal secrets would not give equal hashes.
    other, _ = keys.add("bob", "client", created_by=None)
    with keys.engine.connect() as conn:
        salts = conn.execute(sa.select(api_keys_table.c.salt)).scalars().all()
    assert len(set(salts)) == 2 and other.role is Role.client


@pytest.mark.parametrize(
    "mangle",
    [
        lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),  # wrong secret
        lambda k: k.replace("slm_", "slm_0", 1)[:-1],  # an id that is not one
        lambda k: "slm_ffffffffffff_" + k.split("_", 2)[2],  # unknown id, right secret
        lambda k: k.split("_", 2)[2],  # the secret alone
        lambda k: "",
        lambda k: k + "x" * 200,  # absurdly long
    ],
    ids=["wrong_secret", "bad_id", "unknown_id", "secret_only", "empty", "too_long"],
)
def test_anything_but_the_exact_key_verifies_to_nobody(keys, mangle):
    _, key = keys.add("alice", "admin", created_by=None)
    assert keys.verify(mangle(key)) is None


def test_revoking_by_name_or_id_and_a_new_key_for_the_name(keys):
    first, key = keys.add("alice", "reviewer", created_by=None)
    with pytest.raises(ApiKeyError, match="already has an active key"):
        keys.add("alice", "admin", created_by=None)
    revoked = keys.revoke("alice")
    assert revoked.id == first.id and revoked.revoked_at is not None
    assert keys.verify(key) is None and not keys.has_active()
    with pytest.raises(ApiKeyError, match="no active key named or with id 'alice'"):
        keys.revoke("alice")
    second, key2 = keys.add("alice", "client", created_by=None)
    assert keys.verify(key2) == Principal("alice", Role.client, second.id)
    keys.revoke(second.id)
    listed = keys.keys()
    assert [(k.name, k.id, k.active) for k in listed] == [
        ("alice", first.id, False),
        ("alice", second.id, False),
    ]
    assert not hasattr(listed[0], "hash") and not hasattr(listed[0], "salt")


@pytest.mark.parametrize(
    ("name", "role", "message"),
    [
        (TOKEN_PRINCIPAL, "admin", "principal of the shared token"),
        ("", "client", "principal name ''"),
        ("has space", "client", "principal name 'has space'"),
        ("x" * 65, "client", "1 to 64"),
        ("alice", "superuser", "role 'superuser': expected one of client, reviewer, admin"),
    ],
    ids=["reserved", "empty", "space", "too_long", "unknown_role"],
)
def test_bad_names_and_roles_are_refused_with_the_reason(keys, name, role, message):
    with pytest.raises(ApiKeyError, match=message.replace("(", r"\(")):
        keys.add(name, role, created_by=None)
    assert keys.keys() == []


def test_on_postgres_one_active_key_per_name_and_a_new_one_after_revoking(
    postgres_url,
    tmp_path,
):
    with KeyStore(make_engine(postgres_url, tmp_path)) as keys:
        first, key = keys.add("alice", "reviewer", created_by=None)
        with pytest.raises(ApiKeyError, match="already has an active key"):
            keys.add("alice", "admin", created_by=None)
        keys.revoke("alice")
        second, key2 = keys.add("alice", "admin", created_by=None)
        assert keys.verify(key) is None
        assert keys.verify(key2) == Principal("alice", Role.admin, second.id)
        # The partial unique index itself refuses a second active row.
        with pytest.raises(sa.exc.IntegrityError), keys.engine.begin() as conn:
            conn.execute(
                api_keys_table.insert().values(
                    id="0" * 12,
                    name="alice",
                    role="client",
                    salt="00",
                    hash="00",
                    created_at=first.created_at,
                )
            )


def test_each_role_implies_the_ones_before_it():
    assert Role.admin.allows(Role.reviewer) and Role.admin.allows(Role.client)
    assert Role.reviewer.allows(Role.client) and Role.reviewer.allows(Role.reviewer)
    assert not Role.reviewer.allows(Role.admin) and not Role.client.allows(Role.reviewer)


def test_parse_key_reads_the_id_and_the_secret_with_underscores():
    assert parse_key("slm_0123456789ab_a_b-c") == ("0123456789ab", "a_b-c")
    assert parse_key("slm_0123456789AB_x") is None  # ids are lowercase hex
    assert parse_key("Bearer slm_0123456789ab_x") is None

import pytest

from slmops.tasks.core.redact import redact_text, redact_uri


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("postgresql://user:pass@host/db", "postgresql://user:***@host/db"),
        (
            "postgresql+psycopg://u:p%40ss@db.internal:5432/mlflow",
            "postgresql+psycopg://u:***@db.internal:5432/mlflow",
        ),
        ("mysql://u:p@ss:w0rd@host/db", "mysql://u:***@host/db"),  # "@" and ":" in the password
        ("https://:tok3n@mlflow.example.com", "https://:***@mlflow.example.com"),
        # A "/" in the password (was shown whole: the match stopped at the "/").
        ("postgresql://u:pa/ss@db/mlflow", "postgresql://u:***@db/mlflow"),
        (
            "postgresql://u:a/b@c:d@db:5432/x?sslmode=require",
            "postgresql://u:***@db:5432/x?sslmode=require",
        ),
        # A token as the whole user info (was shown whole: no colon, no match).
        ("https://ghp_T0k3n@github.com/org/repo.git", "https://***@github.com/org/repo.git"),
        (
            "postgresql://host/db?user=u&password=s3cret&sslmode=require",
            "postgresql://host/db?user=u&password=***&sslmode=require",
        ),
        # A user name alone cannot be told from a token: masked too.
        ("postgresql://user@host/db", "postgresql://***@host/db"),
        # Nothing to hide: unchanged.
        ("sqlite:////work/mlflow/mlflow.db", "sqlite:////work/mlflow/mlflow.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("http://127.0.0.1:5000/path?x=a@b", "http://127.0.0.1:5000/path?x=a@b"),
        ("mlflow/artifacts", "mlflow/artifacts"),
    ],
)
def test_redact_uri_masks_only_the_password(uri: str, shown: str):
    assert redact_uri(uri) == shown


def test_redact_text_masks_uris_in_a_message_and_named_secrets():
    text = (
        "cannot reach postgresql://mlflow:hunter2@db/mlflow (timeout); "
        "webhook https://hooks.slack.com/services/T0/B0/XYZ failed"
    )
    out = redact_text(text, secrets=["https://hooks.slack.com/services/T0/B0/XYZ", ""])
    assert "hunter2" not in out and "XYZ" not in out
    assert out == "cannot reach postgresql://mlflow:***@db/mlflow (timeout); webhook *** failed"

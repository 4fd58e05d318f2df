"""IAM/STS flows end to end: the CLI as a subprocess against a local moto
server made strict by the identity shim, with a real ssh-agent."""

from __future__ import annotations

import pytest
from conftest import FakeAws, expire_profile, iamsorry, run_cli


def test_python_api_mints_for_the_named_user(manager: FakeAws) -> None:
    creds = iamsorry.get_temp_credentials_for_user(None, "sue", 3600)
    sts = manager.client("sts", creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])
    assert sts.get_caller_identity()["Arn"].endswith("user/iam-sorry/sue")
    iamsorry.update_profile_credentials("sue-copy", creds, "sue")
    copy = iamsorry.read_aws_credentials()["sue-copy"]
    assert copy["credentials_owner"] == "sue" and manager.whoami(copy).endswith("user/iam-sorry/sue")
    assert iamsorry.credentials_need_refresh(copy, threshold_minutes=5)[0] is False
    assert iamsorry.credentials_need_refresh(copy, threshold_minutes=90)[0] is True
    with pytest.raises(iamsorry.NamespaceError):
        iamsorry.get_temp_credentials_for_user(None, "bob", 3600)
    session = iamsorry.create_session_with_profile("sue")
    assert session.client("sts").get_caller_identity()["Arn"].endswith("user/iam-sorry/sue")
    mgr_session = iamsorry.create_session_with_profile("sue-mgr")
    assert mgr_session.client("sts").get_caller_identity()["Arn"].endswith("user/sue-mgr")


def test_boto3_session_refreshes_itself_mid_use(manager: FakeAws, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials that run out while a service holds the session: the next
    call re-mints through iam-sorry and is sue's fresh identity."""
    from datetime import datetime, timedelta, timezone

    assert run_cli("sue", "--duration", "1").returncode == 0
    session = iamsorry.create_session_with_profile("sue")
    sts = session.client("sts")
    assert sts.get_caller_identity()["Arn"].endswith("user/iam-sorry/sue")
    creds = session.get_credentials()
    first_key = creds.get_frozen_credentials().access_key
    # Fifty-five minutes later: botocore's clock says so, the stored [sue]
    # has run out, and the old session is dead at the server.
    skew = 55 * 60
    monkeypatch.setattr(creds, "_time_fetcher", lambda: datetime.now(timezone.utc) + timedelta(seconds=skew))
    expire_profile("sue")
    manager.shim.expire_sessions()
    identity = sts.get_caller_identity()
    assert identity["Arn"].endswith("user/iam-sorry/sue")
    assert creds.get_frozen_credentials().access_key != first_key
    assert manager.profiles()["sue"]["aws_access_key_id"] == creds.get_frozen_credentials().access_key

"""The service's configuration and authorisation: the TOML file checked in
full, groups from NSS and the config, deny by default, the policies that keep
each namespace role inside its namespace (parliament and the policy
evaluator of test_policies), ``--setup-service`` against moto, and
``serve --check`` against the realm's keytab."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import servicekit
from conftest import FakeAws, assert_clean_error, exported, hand_over, iamsorry, run_bare, run_cli
from test_policies import blocking_problems, evaluate, findings_of, owned, run_parliament, severity_problems

ACCT = "123456789012"
REALM = "IAMSORRY.TEST"
ALLOWED = ["arn:aws:iam::aws:policy/ReadOnlyAccess", f"arn:aws:iam::{ACCT}:policy/sue-*"]
BOUNDARY = f"arn:aws:iam::{ACCT}:policy/iam-sorry-sue-boundary"

EXAMPLE = """
[service]
listen = "0.0.0.0:8443"
tls_cert = "/etc/iam-sorry/tls.crt"
tls_key = "/etc/iam-sorry/tls.key"
keytab = "/etc/iam-sorry/http.keytab"
realms = ["EXAMPLE.EDU"]
audit = "sqlite:////var/lib/iam-sorry/audit.db"
region = "us-west-2"

[groups]
lab-sue = ["sue", "ann"]

[namespaces.sue]
members = ["sue", "group:lab-sue"]
actions = ["credentials", "create-user", "delete-user", "attach-policy", "detach-policy", "create-role", "service-key"]
policies = ["arn:aws:iam::aws:policy/ReadOnlyAccess"]
max_hours = 36
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "service.toml"
    path.write_text(text)
    return path


def test_the_issues_example_config_reads_as_written(tmp_path: Path) -> None:
    cfg = iamsorry.load_service_config(str(write(tmp_path, EXAMPLE)))
    assert (cfg.listen, cfg.realms, cfg.region, cfg.threads) == ("0.0.0.0:8443", ["EXAMPLE.EDU"], "us-west-2", 32)
    assert cfg.audit_path() == "/var/lib/iam-sorry/audit.db" and cfg.audit_key == "/var/lib/iam-sorry/audit.key"
    assert cfg.keytab == "/etc/iam-sorry/http.keytab" and cfg.trusted_proxies == []
    rule = cfg.namespaces["sue"]
    assert (rule.members, rule.max_hours) == (["sue", "group:lab-sue"], 36)
    assert "list" not in rule.actions and cfg.groups == {"lab-sue": ["sue", "ann"]}


def test_relative_paths_are_relative_to_the_config(tmp_path: Path) -> None:
    text = EXAMPLE.replace('"/etc/iam-sorry/tls.crt"', '"tls/cert.pem"').replace(
        "sqlite:////var/lib/iam-sorry/audit.db", "sqlite:///state/audit.db"
    )
    cfg = iamsorry.load_service_config(str(write(tmp_path, text)))
    assert cfg.tls_cert == str(tmp_path / "tls" / "cert.pem")
    assert cfg.audit_path() == str(tmp_path / "state" / "audit.db")
    assert cfg.audit_key == str(tmp_path / "state" / "audit.key")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('listen = "0.0.0.0:8443"', 'lisen = "0.0.0.0:8443"', "[service] lisen: unknown key"),
        ('listen = "0.0.0.0:8443"', 'listen = "8443"', "listen: must be HOST:PORT"),
        ('keytab = "/etc/iam-sorry/http.keytab"\n', "", "keytab: missing"),
        ('realms = ["EXAMPLE.EDU"]', 'realms = "EXAMPLE.EDU"', "realms: must be a list"),
        ('realms = ["EXAMPLE.EDU"]', "realms = [1]", "realms: must be a list of non-empty strings"),
        ("sqlite:////var/lib/iam-sorry/audit.db", "mysql://db/audit", "must be sqlite:///PATH or postgresql://"),
        ("sqlite:////var/lib/iam-sorry/audit.db", "postgresql://db/audit", "audit_key: required with a PostgreSQL"),
        ('"service-key"]', '"service-key", "sudo"]', "unknown action 'sudo'"),
        ('"arn:aws:iam::aws:policy/ReadOnlyAccess"]', '"ReadOnlyAccess"]', "is not a policy ARN"),
        ("max_hours = 36", "max_hours = 37", "max_hours: must be 1..36"),
        ("max_hours = 36", "max_hours = true", "max_hours: must be a int"),
        ("[namespaces.sue]", "[namespaces.sue-x]", "a namespace is a user-name prefix"),
        ('lab-sue = ["sue", "ann"]', 'lab-sue = "sue"', "[groups] lab-sue: must be a list"),
        ('region = "us-west-2"', 'region = "us-west-2"\nthreads = 0', "threads: must be 1..1024"),
        ('region = "us-west-2"', 'region = "us-west-2"\nprincipal = "me"', "principal: must be the ARN"),
        (
            'region = "us-west-2"',
            'region = "us-west-2"\ntrusted_proxies = ["10.0.0.5"]',
            "proxy_secret_file: is required",
        ),
        ("[groups]", "[grups]", "[top level] grups: unknown key"),
        ("[service]", "[service\n", "not valid TOML"),
    ],
)
def test_config_mistakes_are_one_clear_error(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in EXAMPLE
    path = write(tmp_path, EXAMPLE.replace(old, new))
    with pytest.raises(iamsorry.UsageError) as caught:
        iamsorry.load_service_config(str(path))
    assert message in str(caught.value)
    assert_clean_error(run_cli("serve", "--config", str(path), "--check"), message)


def test_a_missing_config_is_one_clear_error(tmp_path: Path) -> None:
    assert_clean_error(run_cli("serve", "--config", str(tmp_path / "none.toml")), "cannot read the service config")


def test_groups_come_from_nss_and_the_config(tmp_path: Path) -> None:
    assert "root" in iamsorry.nss_groups("root")
    assert iamsorry.nss_groups("no-such-user-here") == []  # never "root" for a name NSS does not know
    cfg = iamsorry.load_service_config(str(write(tmp_path, EXAMPLE)))
    assert iamsorry.groups_of(cfg, "ann") == ["lab-sue"]
    assert "root" in iamsorry.groups_of(cfg, "root") and "lab-sue" not in iamsorry.groups_of(cfg, "root")


def test_authorisation_denies_by_default_and_says_what_was_missing(tmp_path: Path) -> None:
    cfg = iamsorry.load_service_config(str(write(tmp_path, EXAMPLE)))
    assert iamsorry.authorise(cfg, "sue@R", "sue", [], "credentials", "sue").name == "sue"
    assert iamsorry.authorise(cfg, "ann@R", "ann", ["lab-sue"], "create-user", "sue").name == "sue"
    cases = [
        ("bob", [], "credentials", "sue", "bob@R is not a member of namespace sue (action credentials)"),
        ("sue", [], "credentials", "bob", "not a member of namespace bob"),
        ("sue", [], "list", "sue", "action list is not allowed in namespace sue"),
        ("bob", ["sue"], "credentials", "sue", "not a member"),  # a group named like a member is not the member
    ]
    for user, groups, action, namespace, message in cases:
        with pytest.raises(iamsorry.Forbidden) as caught:
            iamsorry.authorise(cfg, f"{user}@R", user, groups, action, namespace)
        assert message in str(caught.value)
        assert (caught.value.namespace, caught.value.action) == (namespace, action)
    assert iamsorry.allowed_actions(cfg, "bob", []) == {}


def role_policy() -> dict[str, Any]:
    """Everything the namespace role of sue may do: both inline policies."""
    docs = iamsorry.namespace_role_policies("sue", ACCT, ALLOWED).values()
    return {"Version": "2012-10-17", "Statement": [st for doc in docs for st in doc["Statement"]]}


def user(name: str) -> str:
    return f"arn:aws:iam::{ACCT}:user/{name}"


ADMIN_POLICY = "arn:aws:iam::aws:policy/AdministratorAccess"
SUE_X = f"arn:aws:iam::{ACCT}:policy/sue-x"
ANN_OWNED = {"aws:RequestTag/owner": "ann", "iam:PermissionsBoundary": BOUNDARY.replace("-sue-", "-ann-")}


def _created_by(person: str, source_identity: str | None = None) -> dict[str, Any]:
    """CreateUser by the namespace role acting for ``source_identity``,
    tagging the user delegated-by=``person``, with sue's boundary."""
    return {
        "aws:RequestTag/owner": "sue",
        "aws:RequestTag/delegated-by": person,
        "aws:TagKeys": ["owner", "delegated-by"],
        "aws:SourceIdentity": source_identity or person,
        "iam:PermissionsBoundary": BOUNDARY,
    }


def role(name: str) -> str:
    return f"arn:aws:iam::{ACCT}:role/{name}"


@pytest.mark.parametrize(
    "policy",
    [
        iamsorry.service_role_policy("sue", ACCT, ALLOWED),
        iamsorry.service_role_policy("sue", ACCT, []),
        iamsorry.service_user_policy(ACCT),
        iamsorry.boundary_policy("sue", ACCT),
    ],
    ids=["role", "role-without-allow-list", "service-user", "boundary"],
)
def test_the_service_policies_pass_parliament(policy: dict[str, Any]) -> None:
    analyzed = run_parliament(policy)
    found = findings_of(analyzed)
    assert severity_problems(found) == [] and blocking_problems(analyzed, found) == []
    assert iamsorry.policy_size(policy) <= iamsorry.INLINE_ROLE_POLICY_MAX_CHARS


@pytest.mark.parametrize(
    ("action", "resource", "context", "expected"),
    [
        ("iam:CreateAccessKey", user("iam-sorry/sue-etl"), owned("sue"), "Allow"),
        ("iam:CreateAccessKey", user("iam-sorry/sue-etl"), {}, "ImplicitDeny"),  # not the namespace's
        ("iam:CreateAccessKey", user("sue-etl"), owned("sue"), "ImplicitDeny"),  # not made by iam-sorry
        ("iam:CreateAccessKey", user("bob"), {}, "ImplicitDeny"),
        ("iam:CreateAccessKey", user("iam-sorry/sue-etl"), owned("bob"), "ImplicitDeny"),
        ("iam:CreateAccessKey", user("iam-sorry-service/iam-sorry-service"), {}, "ImplicitDeny"),
        ("iam:CreateUser", user("iam-sorry/sue-etl"), _created_by("sue@" + REALM), "Allow"),
        ("iam:CreateUser", user("iam-sorry/sue-etl"), _created_by("ann@" + REALM, "sue@" + REALM), "ImplicitDeny"),
        ("iam:DeleteUser", user("iam-sorry/sue-etl"), owned("sue"), "Allow"),
        ("iam:DeleteUser", user("iam-sorry/sue-etl"), {}, "ImplicitDeny"),  # only what the namespace owns
        ("iam:DeleteUser", user("iam-sorry/sue-x/bob-y"), owned("sue"), "Deny"),  # nothing below the path
        ("iam:DeleteUser", user("iam-sorry/bob-etl"), owned("sue"), "ImplicitDeny"),
        ("iam:AttachUserPolicy", user("iam-sorry/sue-etl"), {"iam:PolicyARN": ALLOWED[0], **owned("sue")}, "Allow"),
        ("iam:AttachUserPolicy", user("iam-sorry/sue-etl"), {"iam:PolicyARN": ALLOWED[0]}, "ImplicitDeny"),
        ("iam:AttachUserPolicy", user("iam-sorry/sue-etl"), {"iam:PolicyARN": SUE_X, **owned("sue")}, "Allow"),
        (
            "iam:AttachUserPolicy",
            user("iam-sorry/sue-etl"),
            {"iam:PolicyARN": ADMIN_POLICY, **owned("sue")},
            "ImplicitDeny",
        ),
        # no delegation through the service: never a user of another namespace
        ("iam:CreateUser", user("iam-sorry/ann-x"), {**_created_by("sue@" + REALM), **ANN_OWNED}, "ImplicitDeny"),
        ("iam:DetachRolePolicy", role("iam-sorry-sue-x"), {"iam:PolicyARN": ADMIN_POLICY}, "ImplicitDeny"),
        ("iam:DetachRolePolicy", role("iam-sorry-sue-x"), {"iam:PolicyARN": ALLOWED[0]}, "Allow"),
        ("iam:AttachRolePolicy", role("iam-sorry-sue-x/other"), {"iam:PolicyARN": ALLOWED[0]}, "Deny"),
        ("iam:AttachUserPolicy", user("bob"), {"iam:PolicyARN": ALLOWED[0]}, "ImplicitDeny"),
        ("iam:AttachRolePolicy", role("iam-sorry-sue-x"), {"iam:PolicyARN": ALLOWED[0]}, "Allow"),
        ("iam:AttachRolePolicy", role("iam-sorry-bob-x"), {"iam:PolicyARN": ALLOWED[0]}, "ImplicitDeny"),
        ("iam:CreateRole", role("iam-sorry-sue-x"), {"iam:PermissionsBoundary": BOUNDARY}, "Allow"),
        ("iam:CreateRole", role("iam-sorry-sue-x"), {}, "Deny"),
        ("iam:CreateRole", role("iam-sorry-sue-x"), {"iam:PermissionsBoundary": BOUNDARY + "x"}, "Deny"),
        ("iam:DeleteRolePermissionsBoundary", role("iam-sorry-sue-x"), {}, "Deny"),
        ("iam:ListUsers", "*", {}, "Allow"),
        ("iam:PutUserPolicy", user("sue-etl"), {}, "ImplicitDeny"),
        ("iam:PassRole", role("iam-sorry-sue-x"), {}, "ImplicitDeny"),
    ],
)
def test_a_namespace_role_cannot_leave_its_namespace(
    action: str, resource: str, context: dict[str, Any], expected: str
) -> None:
    """Even a service that authorised wrongly: the role's own policy decides."""
    assert evaluate(role_policy(), action, resource, username="(a role has none)", **context) == expected


def test_the_service_user_may_only_become_its_roles_and_the_boundary_stops_iam_writes() -> None:
    mine = role("iam-sorry-service/iam-sorry-service.sue")
    for action in iamsorry.SERVICE_ASSUME_ACTIONS:
        assert evaluate(iamsorry.service_user_policy(ACCT), action, mine) == "Allow"
    assert evaluate(iamsorry.service_user_policy(ACCT), "sts:AssumeRole", role("admin")) == "ImplicitDeny"
    assert evaluate(iamsorry.service_user_policy(ACCT), "iam:CreateUser", user("x")) == "ImplicitDeny"
    boundary = iamsorry.boundary_policy("sue", ACCT)
    for action in ("iam:CreateUser", "iam:AttachRolePolicy", "iam:PutRolePolicy", "iam:UpdateAssumeRolePolicy"):
        assert evaluate(boundary, action, "*") == "Deny", action
    for action in ("s3:GetObject", "lambda:CreateFunction"):
        assert evaluate(boundary, action, "*") == "Allow", action
    for action in ("iam:PassRole", "iam:GetRole"):  # the namespace's own roles, for Lambda deploys
        assert evaluate(boundary, action, role("iam-sorry-sue-x")) == "Allow", action


def test_the_trust_policy_names_the_service_and_a_person_of_a_realm() -> None:
    principal = user("iam-sorry-service/iam-sorry-service")
    trust = iamsorry.service_trust_policy(principal, [REALM, "OTHER.EDU"])
    assert {s["Principal"]["AWS"] for s in trust["Statement"]} == {principal}
    person = trust["Statement"][0]
    assert person["Action"] == ["sts:AssumeRole", "sts:SetSourceIdentity"]
    assert person["Condition"] == {"StringLike": {"sts:SourceIdentity": [f"*@{REALM}", "*@OTHER.EDU"]}}


def service_config(tmp_path: Path, extra: str = "") -> Path:
    return write(
        tmp_path,
        EXAMPLE.replace('region = "us-west-2"', f'region = "us-west-2"\n{extra}')
        + """
[namespaces.lab]
members = ["group:lab-sue"]
actions = ["credentials"]
""",
    )


def test_setup_service_creates_everything_once_and_then_keeps_it_up_to_date(aws: FakeAws, tmp_path: Path) -> None:
    config = service_config(tmp_path)
    first = run_cli("--profile", "aws-admin", "--setup-service", str(config))
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("aws_secret_access_key = ") == 1 and "[iam-sorry-service]" in first.stdout
    iam = aws.client("iam")
    service = iam.get_user(UserName="iam-sorry-service")["User"]
    assert service["Path"] == "/iam-sorry-service/"
    assert iam.list_user_policies(UserName="iam-sorry-service")["PolicyNames"] == ["iam-sorry-service"]
    for namespace in ("sue", "lab"):
        made = iam.get_role(RoleName=f"iam-sorry-service.{namespace}")["Role"]
        trust = made["AssumeRolePolicyDocument"]
        trust = json.loads(trust) if isinstance(trust, str) else trust
        assert made["Path"] == "/iam-sorry-service/"
        assert {s["Principal"]["AWS"] for s in trust["Statement"]} == {service["Arn"]}
        names = iam.list_role_policies(RoleName=made["RoleName"])["PolicyNames"]
        assert sorted(names) == sorted([f"iam-sorry-{namespace}", "iam-sorry-service"])
    boundaries = {p["PolicyName"] for p in iam.list_policies(Scope="Local")["Policies"]}
    assert {"iam-sorry-sue-boundary", "iam-sorry-lab-boundary"} <= boundaries
    extra = iam.get_role_policy(RoleName="iam-sorry-service.lab", PolicyName="iam-sorry-service")["PolicyDocument"]
    assert "arn:aws:iam::123456789012:policy/iam-sorry-lab-boundary" in json.dumps(extra)

    aws.shim.reset_calls()
    again = run_cli("--profile", "aws-admin", "--setup-service", str(config))
    assert again.returncode == 0, again.stderr
    assert "aws_secret_access_key" not in again.stdout and "up to date" in again.stdout
    assert aws.shim.calls["CreateAccessKey"] == aws.shim.calls["CreateUser"] == aws.shim.calls["CreateRole"] == 0
    iam.create_role(RoleName="iam-sorry-service.gone", Path="/iam-sorry-service/", AssumeRolePolicyDocument="{}")
    assert (
        "iam-sorry-service.gone is in no namespace"
        in run_cli("--profile", "aws-admin", "--setup-service", str(config)).stdout
    )


def test_setup_service_leaves_one_key_when_the_answer_to_its_creation_is_lost(
    aws: FakeAws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS makes the service's key, but its answer comes after the client
    gave up, and botocore's retry makes a second: the one nobody was shown
    must go, or a live key of the service's user would sit unheld."""
    monkeypatch.setattr(iamsorry._AWS_PATIENCE, "timeout", 1.0)
    aws.shim.slow("CreateAccessKey", 2.0, after=True)
    cfg = iamsorry.load_service_config(str(service_config(tmp_path)))
    shown = iamsorry.setup_service(iamsorry.Store().load(), "aws-admin", cfg, None)
    assert aws.shim.calls["CreateAccessKey"] == 2
    [held] = aws.key_status("iam-sorry-service")
    assert f"aws_access_key_id = {held}" in shown


def test_setup_service_uses_a_role_the_config_names(aws: FakeAws, tmp_path: Path) -> None:
    principal = "arn:aws:iam::123456789012:role/ec2-iam-sorry"
    proc = run_cli(
        "--profile", "aws-admin", "--setup-service", str(service_config(tmp_path, f'principal = "{principal}"'))
    )
    assert proc.returncode == 0, proc.stderr
    assert "aws_secret_access_key" not in proc.stdout
    iam = aws.client("iam")
    with pytest.raises(Exception, match="NoSuchEntity"):
        iam.get_user(UserName="iam-sorry-service")
    trust = iam.get_role(RoleName="iam-sorry-service.sue")["Role"]["AssumeRolePolicyDocument"]
    assert principal in json.dumps(trust)


def test_setup_service_refuses_a_service_user_someone_else_made(aws: FakeAws, tmp_path: Path) -> None:
    aws.client("iam").create_user(UserName="iam-sorry-service")  # at the root path: a namespace "iam" could own it
    proc = run_cli("--profile", "aws-admin", "--setup-service", str(service_config(tmp_path)))
    assert_clean_error(proc, "is not the service's (it is outside /iam-sorry-service/)")
    assert aws.client("iam").list_roles(PathPrefix="/iam-sorry-service/")["Roles"] == []
    assert_clean_error(run_cli("--setup-service", str(service_config(tmp_path))), "needs --profile ADMIN_PROFILE")


@pytest.fixture
def checked(krb_realm: Any, tmp_path: Path) -> Path:
    servicekit.make_tls(tmp_path)
    return servicekit.write_config(tmp_path, krb_realm, servicekit.free_port())


def test_serve_check_validates_config_keytab_tls_and_audit(checked: Path) -> None:
    proc = run_cli("serve", "--config", str(checked), "--check")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"✓ config {checked}: listen 127.0.0.1:")
    assert any("keytab" in ln and "HTTP/localhost@IAMSORRY.TEST" in ln for ln in lines)
    assert any("will be made on the first start" in ln for ln in lines)
    assert not (checked.parent / "audit").exists()  # --check changes nothing


def test_serve_check_finds_what_is_wrong(checked: Path, krb_realm: Any, tmp_path: Path) -> None:
    text = checked.read_text()
    (tmp_path / "garbage.keytab").write_bytes(b"not a keytab")
    other = tmp_path / "other.keytab"
    if "svc-other" not in krb_realm.kadmin_local("listprincs"):
        krb_realm.add_service("svc-other", other)
    else:
        krb_realm.kadmin_local(f"ktadd -k FILE:{other} svc-other@{krb_realm.realm}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    servicekit.make_tls(elsewhere)
    cases = [
        (str(krb_realm.keytab), str(tmp_path / "garbage.keytab"), "is not a keytab"),
        (str(krb_realm.keytab), str(tmp_path / "none.keytab"), "cannot read the keytab"),
        (str(krb_realm.keytab), str(other), "holds no HTTP/HOST principal of IAMSORRY.TEST"),
        ('tls_key = "tls.key"', 'tls_key = "elsewhere/tls.key"', "cannot use the TLS certificate"),
        ('tls_cert = "tls.crt"', 'tls_cert = "missing.crt"', "cannot use the TLS certificate"),
    ]
    for old, new, message in cases:
        checked.write_text(text.replace(old, new))
        assert_clean_error(run_cli("serve", "--config", str(checked), "--check"), message)


def test_the_service_commands_take_their_own_options(checked: Path) -> None:
    assert_clean_error(run_cli("serve"), "serve needs --config FILE")
    assert_clean_error(run_cli("serve", "--config", str(checked), "sue"), "serve cannot be combined with sue")
    assert_clean_error(run_cli("serve", "--config", str(checked), "--whoami"), "cannot be combined with --whoami")
    assert_clean_error(run_cli("--check"), "--check belongs to iam-sorry serve")
    assert_clean_error(run_cli("--config", str(checked), "sue"), "--config belongs to iam-sorry serve")
    assert_clean_error(run_cli("--since", "1d"), "--since belongs to iam-sorry audit list")


def test_a_user_named_like_a_command_can_still_be_minted(aws: FakeAws, ed25519: Path) -> None:
    args = iamsorry.parse_args(["--duration", "2", "serve"])
    assert (args.action, args.name) == ("mint", "serve")
    boot = run_cli(env=exported(hand_over("serve-mgr")))  # the namespace serve, and its user serve
    assert boot.returncode == 0, boot.stderr
    before = time.time()
    proc = run_cli("--duration", "2", "serve")
    assert proc.returncode == 0, proc.stderr
    profile = aws.profiles()["serve"]
    assert aws.whoami(profile).endswith(":user/iam-sorry/serve")
    assert before + 2 * 3600 - 120 < iamsorry.parse_time(profile["expiration"]) <= time.time() + 2 * 3600


def test_without_the_server_extra_serve_says_what_to_install(checked: Path) -> None:
    proc = run_bare("serve", "--config", str(checked), env={})
    assert_clean_error(proc, "the service needs gunicorn", "pip install 'iam-sorry[server]'")


def test_the_audit_scheme_is_checked_with_an_audit_key_too(tmp_path: Path) -> None:
    text = EXAMPLE.replace(
        'audit = "sqlite:////var/lib/iam-sorry/audit.db"',
        'audit = "mysql://db/audit"\naudit_key = "/etc/iam-sorry/audit.key"',
    )
    with pytest.raises(iamsorry.UsageError, match="audit: must be sqlite:///PATH or postgresql://"):
        iamsorry.load_service_config(str(write(tmp_path, text)))


def test_a_keytab_or_tls_key_open_to_others_is_refused(checked: Path, krb_realm: Any, tmp_path: Path) -> None:
    """Whoever reads the keytab can forge tickets to the service; whoever
    reads the TLS key can be the service."""
    keytab = tmp_path / "http.keytab"
    shutil.copyfile(krb_realm.keytab, keytab)
    keytab.chmod(0o600)
    checked.write_text(checked.read_text().replace(str(krb_realm.keytab), str(keytab)))
    assert run_cli("serve", "--config", str(checked), "--check").returncode == 0
    for path, what in ((keytab, "the keytab"), (tmp_path / "tls.key", "the TLS key")):
        path.chmod(0o644)
        assert_clean_error(run_cli("serve", "--config", str(checked), "--check"), f"{what} {path} is open to others")
        path.chmod(0o600)


def test_setup_service_sees_every_page_of_roles(aws: FakeAws, tmp_path: Path) -> None:
    """ListRoles answers 100 roles at a time."""
    iam = aws.client("iam")
    for n in range(101):
        iam.create_role(RoleName=f"iam-sorry-service.old{n}", Path="/iam-sorry-service/", AssumeRolePolicyDocument="{}")
    proc = run_cli("--profile", "aws-admin", "--setup-service", str(service_config(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("is in no namespace") == 101


@pytest.mark.parametrize("principal", ["süe@EXAMPLE.EDU", "sue\u0661@EXAMPLE.EDU", "s" * 60 + "@EXAMPLE.EDU"])
def test_a_principal_sts_would_refuse_is_no_person_here(principal: str) -> None:
    with pytest.raises(iamsorry.Unauthorized, match="is not a person this service serves"):
        iamsorry.local_user(principal, ["EXAMPLE.EDU"])
    assert iamsorry.local_user("sue@EXAMPLE.EDU", ["EXAMPLE.EDU"]) == "sue"

"""Policy templates: parliament-clean, structurally sound, and right when replayed.

Three layers:
1. parliament (default auditors, i.e. what ``parliament --file`` runs): no
   finding above LOW, and none of the findings that stop parliament's analysis
   or mean an action/condition/resource is not what AWS documents (some of
   those are rated LOW, e.g. UNKNOWN_ACTION and INVALID_SID).  The community
   auditors are run too; their findings must be an acknowledged set (they rate
   minting access keys - the tool's purpose - as MEDIUM/HIGH).
2. Structural checks, one per hard requirement.  Each check returns a list of
   problems and is also run on deliberately broken policies to prove it fails.
3. A small, approximate IAM evaluator (explicit Deny > Allow > implicit deny,
   wildcards, ${aws:username}, String*/Arn*/Null operators, ForAllValues /
   ForAnyValue, IfExists) replaying concrete requests.  It is not AWS; it
   encodes the documented evaluation rules so that condition mistakes show up
   as wrong decisions.
"""

from __future__ import annotations

import copy
import json
import pathlib
import re
from collections.abc import Callable
from typing import Any

import parliament
import pytest
from conftest import iamsorry as P
from conftest import run_cli
from parliament import (
    UnknownActionException,
    UnknownPrefixException,
    analyze_policy_string,
    enhance_finding,
    expand_action,
)

BUILDERS = {"manager": P.manager_policy, "refresh": P.refresh_policy, "lambda": P.lambda_policy}
ACCOUNTS = ["123456789012", "*"]
PREFIXES = ["sue", "dirk"]
KINDS = list(BUILDERS)
ACCT = "123456789012"

ALLOWED_SEVERITIES = {
    "MUTE",
    "INFO",
    "LOW",
}  # parliament: MUTE<INFO<LOW<MEDIUM<HIGH<CRITICAL
BLOCKING_ISSUES = {
    "EXCEPTION",
    "MALFORMED_JSON",
    "MALFORMED",
    "DUPLICATE_SID",
    "INVALID_SID",
    "UNKNOWN_ACTION",
    "UNKNOWN_PREFIX",
    "UNKNOWN_CONDITION_FOR_ACTION",
    "UNKNOWN_OPERATOR",
    "INVALID_ARN",
    "RESOURCE_MISMATCH",
    "MISMATCHED_TYPE",
    "MISMATCHED_TYPE_OPERATION_TO_NULL",
}
SIZE_LIMITS = {
    "manager": P.INLINE_USER_POLICY_MAX_CHARS,  # put-user-policy on <prefix>-mgr
    "refresh": P.INLINE_USER_POLICY_MAX_CHARS,
    "lambda": P.INLINE_ROLE_POLICY_MAX_CHARS,  # put-role-policy on iam-sorry-<prefix>-*
}

# Severities/titles of community findings live in a separate file that the CLI
# merges for --include-community-auditors; do the same.
parliament.override_config(
    str(pathlib.Path(parliament.__file__).parent / "community_auditors" / "config_override.yaml")
)

# Community-auditor findings accepted as inherent to the tool's purpose.
# Anything else above LOW (e.g. PRIVILEGE_ESCALATION via AttachUserPolicy) fails.
_MINTING = {
    ("CREDENTIALS_EXPOSURE", ""),
    ("PERMISSIONS_MANAGEMENT_ACTIONS", ""),
    ("PRIVILEGE_ESCALATION", "CreateAccessKey"),
}
ACCEPTED_COMMUNITY: dict[str, set[tuple[str, str]]] = {
    "manager": _MINTING,
    "refresh": _MINTING,
    "lambda": {
        ("PERMISSIONS_MANAGEMENT_ACTIONS", ""),
        ("PRIVILEGE_ESCALATION", "PassExistingRoleToNewLambdaThenInvoke"),
        ("PRIVILEGE_ESCALATION", "PassExistingRoleToNewLambdaThenTriggerWithNewDynamo"),
        (
            "PRIVILEGE_ESCALATION",
            "PassExistingRoleToNewLambdaThenTriggerWithExistingDynamo",
        ),
        ("PRIVILEGE_ESCALATION", "EditExistingLambdaFunctionWithRole"),
    },
}

# The manager must never be allowed these (the test owns this list on purpose,
# independent of policies.py).
MANAGER_FORBIDDEN_ALLOWS = {
    a.lower()
    for a in [
        "iam:PassRole",
        "iam:UntagUser",
        "iam:DeleteUser",
        "iam:CreateLoginProfile",
        "iam:UpdateLoginProfile",
        "iam:AttachUserPolicy",
        "iam:PutUserPolicy",
        "iam:DeleteUserPolicy",
        "iam:DetachUserPolicy",
        "iam:PutUserPermissionsBoundary",
        "iam:DeleteUserPermissionsBoundary",
        "iam:AddUserToGroup",
        "iam:AttachRolePolicy",
        "iam:PutRolePolicy",
        "iam:DeleteRolePolicy",
        "iam:DetachRolePolicy",
        "iam:PutRolePermissionsBoundary",
        "iam:DeleteRolePermissionsBoundary",
        "iam:UpdateAssumeRolePolicy",
        "iam:DeleteRole",
        "iam:AttachGroupPolicy",
        "iam:PutGroupPolicy",
        "iam:CreatePolicy",
        "iam:CreatePolicyVersion",
        "iam:SetDefaultPolicyVersion",
    ]
}


# --- helpers -------------------------------------------------------------------------


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return as_list(policy["Statement"])


def allows(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in statements(policy) if s["Effect"] == "Allow"]


def denies(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in statements(policy) if s["Effect"] == "Deny"]


def by_sid(policy: dict[str, Any], sid: str) -> list[dict[str, Any]]:
    return [s for s in statements(policy) if s.get("Sid") == sid]


def expanded_actions(stmt: dict[str, Any]) -> set[str]:
    """Lower-case 'svc:action' after expanding wildcards with parliament's data."""
    out: set[str] = set()
    for action in as_list(stmt.get("Action", [])):
        for a in expand_action(action, raise_exceptions=False):
            out.add(f"{a['service']}:{a['action']}".lower())
    return out


def resources(stmt: dict[str, Any]) -> list[str]:
    return as_list(stmt.get("Resource", []))


def run_parliament(policy: dict[str, Any], *, community: bool = False) -> Any:
    return analyze_policy_string(json.dumps(policy, indent=2), include_community_auditors=community)


def findings_of(analyzed: Any) -> list[Any]:
    return [enhance_finding(f) for f in analyzed.findings]


def severity_problems(findings: list[Any]) -> list[str]:
    return [f"{f.severity} {f.issue} {f.detail}" for f in findings if f.severity not in ALLOWED_SEVERITIES]


def blocking_problems(analyzed: Any, findings: list[Any]) -> list[str]:
    problems = [f"{f.issue} {f.detail}" for f in findings if f.issue in BLOCKING_ISSUES]
    if not analyzed.is_valid:
        problems.append("parliament marked the policy invalid (analysis stopped)")
    return problems


def print_findings(title: str, findings: list[Any]) -> None:
    print(f"\n[parliament] {title}: {len(findings)} finding(s)")
    for f in findings:
        print(f"    {f.severity:8} {f.issue} {f.detail} {f.location}")


def all_params() -> list[tuple[str, str, str]]:
    return [(k, p, a) for k in KINDS for p in PREFIXES for a in ACCOUNTS]


def wild(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """IAM wildcard match: '*' any run of characters (including '/'), '?' one."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.fullmatch(regex, value, flags) is not None


# --- structural checks (each returns a list of problems) ------------------------------


def shape_problems(policy: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if json.loads(json.dumps(policy)) != policy:
        problems.append("policy does not round-trip through json")
    if policy.get("Version") != "2012-10-17":
        problems.append("Version must be 2012-10-17")
    if set(policy) != {"Version", "Statement"}:
        problems.append(f"unexpected top-level keys {sorted(policy)}")
    sids: list[str] = []
    for stmt in statements(policy):
        sid = stmt.get("Sid")
        if not isinstance(sid, str) or not re.fullmatch(r"[0-9A-Za-z]+", sid):
            problems.append(f"statement without valid Sid: {stmt}")
            continue
        sids.append(sid)
        if stmt.get("Effect") not in ("Allow", "Deny"):
            problems.append(f"{sid}: bad Effect")
        for banned in ("NotAction", "NotResource", "NotPrincipal", "Principal"):
            if banned in stmt:
                problems.append(f"{sid}: uses {banned}")
        if not as_list(stmt.get("Action", [])) or not resources(stmt):
            problems.append(f"{sid}: empty Action or Resource")
    if len(sids) != len(set(sids)):
        problems.append("duplicate Sid")
    return problems


def action_problems(policy: dict[str, Any]) -> list[str]:
    """Every action exists in parliament's IAM data; Allow statements list
    explicit actions (wildcards are tolerated only in Deny statements)."""
    problems: list[str] = []
    for stmt in statements(policy):
        for action in as_list(stmt["Action"]):
            if stmt["Effect"] == "Allow" and ("*" in action or "?" in action):
                problems.append(f"{stmt['Sid']}: wildcard action {action} in an Allow")
            try:
                found = expand_action(action)
            except (UnknownActionException, UnknownPrefixException, ValueError) as exc:
                problems.append(f"{stmt['Sid']}: {exc}")
                continue
            if not found:
                problems.append(f"{stmt['Sid']}: unknown action {action}")
    return problems


def size_problems(policy: dict[str, Any], limit: int) -> list[str]:
    size = P.policy_size(policy)
    return [f"{size} chars > {limit}"] if size > limit else []


def delegation_problems(policy: dict[str, Any], prefix: str, account: str) -> list[str]:
    """CreateUser/TagUser outside the namespace only with the delegation tags,
    TagUser only on users without an owner tag."""
    namespace = set(P.namespace_user_arns(prefix, account))
    problems: list[str] = []
    for stmt in allows(policy):
        acts = expanded_actions(stmt)
        sid = stmt["Sid"]
        for action in ("iam:createuser", "iam:taguser"):
            if action not in acts or not [r for r in resources(stmt) if r not in namespace]:
                continue
            if acts - {"iam:createuser", "iam:taguser"}:
                problems.append(f"{sid}: delegation shares a statement with {sorted(acts)}")
            cond = stmt.get("Condition", {})
            if set(cond) - {"StringEquals", "ForAllValues:StringEquals", "Null"}:
                problems.append(f"{sid}: unexpected operators {sorted(cond)}")
            if cond.get("StringEquals", {}).get("aws:RequestTag/delegated-by") != "${aws:username}":
                problems.append(f"{sid}: {action} without delegated-by=${{aws:username}}")
            keys = cond.get("ForAllValues:StringEquals", {}).get("aws:TagKeys")
            if keys is None or not set(as_list(keys)) <= {"owner", "delegated-by"}:
                problems.append(f"{sid}: {action} tag keys not limited to owner/delegated-by")
            null = cond.get("Null", {})
            if null.get("aws:RequestTag/owner") != "false":
                problems.append(f"{sid}: {action} does not require the owner tag")
            if action == "iam:taguser" and null.get("aws:ResourceTag/owner") != "true":
                problems.append(f"{sid}: TagUser outside the namespace on already-owned users")
    return problems


def forbidden_problems(policy: dict[str, Any]) -> list[str]:
    """No PassRole anywhere (not even in a Deny), no authorization changes, no
    UntagUser, no Allow on Resource '*'."""
    problems: list[str] = []
    for stmt in statements(policy):
        if "iam:passrole" in expanded_actions(stmt) or "passrole" in json.dumps(stmt).lower():
            problems.append(f"{stmt['Sid']}: mentions iam:PassRole")
    for stmt in allows(policy):
        bad = expanded_actions(stmt) & MANAGER_FORBIDDEN_ALLOWS
        if bad:
            problems.append(f"{stmt['Sid']}: allows {sorted(bad)}")
        if "*" in resources(stmt):
            problems.append(f"{stmt['Sid']}: Allow on Resource '*'")
    return problems


def _denies_with(policy: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in denies(policy) if action.lower() in expanded_actions(s)]


def foreign_owner_problems(policy: dict[str, Any], prefix: str, account: str) -> list[str]:
    """Explicit Deny of key writes on namespace users owned outside the namespace."""
    wanted = {"iam:createaccesskey", "iam:deleteaccesskey", "iam:updateaccesskey"}
    for s in denies(policy):
        cond = s.get("Condition", {})
        owners = as_list(cond.get("StringNotLike", {}).get("aws:ResourceTag/owner", []))
        if (
            wanted <= expanded_actions(s)
            and set(resources(s)) >= set(P.namespace_user_arns(prefix, account))
            and cond.get("Null") == {"aws:ResourceTag/owner": "false"}
            and sorted(owners) == sorted([prefix, f"{prefix}-*"])
        ):
            return []
    return ["no Deny for key writes on namespace users owned by someone else"]


def owned_user_problems(policy: dict[str, Any], account: str) -> list[str]:
    """Explicit Deny of UntagUser, and of TagUser touching owner/delegated-by,
    on every user that already has an owner tag."""
    problems: list[str] = []
    any_user = P.all_users_arn(account)
    owned = {"Null": {"aws:ResourceTag/owner": "false"}}
    if not any(any_user in resources(s) and s.get("Condition") == owned for s in _denies_with(policy, "iam:UntagUser")):
        problems.append("no Deny iam:UntagUser on users with an owner tag")
    ok = False
    for s in _denies_with(policy, "iam:TagUser"):
        cond = dict(s.get("Condition", {}))
        if any_user not in resources(s) or cond.pop("Null", None) != owned["Null"]:
            continue
        keys = {k.lower() for block in cond.values() for k in as_list(block.get("aws:TagKeys", []))}
        # Either every TagUser on owned users is denied, or at least the
        # ones touching owner/delegated-by (case-insensitively: IAM user tag
        # keys are case-insensitive).
        if not cond or (set(cond) == {"ForAnyValue:StringEqualsIgnoreCase"} and {"owner", "delegated-by"} <= keys):
            ok = True
    if not ok:
        problems.append("no Deny on TagUser changing owner/delegated-by of owned users")
    return problems


def view_problems(policy: dict[str, Any], account: str) -> list[str]:
    any_user = P.all_users_arn(account)
    return [
        f"{action} not allowed unconditionally on every user"
        for action in ("iam:getuser", "iam:listusertags")
        if not any(
            action in expanded_actions(s) and any_user in resources(s) and "Condition" not in s for s in allows(policy)
        )
    ]


def self_problems(policy: dict[str, Any], prefix: str, account: str) -> list[str]:
    """The manager's own ARN is covered for its key actions, and it cannot
    tag itself."""
    problems: list[str] = []
    me = f"{prefix}-mgr"
    own = f"arn:aws:iam::{ACCT if account == '*' else account}:user/{me}"
    for action in (
        "iam:listaccesskeys",
        "iam:createaccesskey",
        "iam:updateaccesskey",
        "iam:deleteaccesskey",
    ):
        if not any(
            action in expanded_actions(s)
            and "Condition" not in s
            and any(wild(r.replace("${aws:username}", me), own) for r in resources(s))
            for s in allows(policy)
        ):
            problems.append(f"{action} not allowed on the manager itself")
    if not any(
        P.own_user_arn(account) in resources(s) and "Condition" not in s for s in _denies_with(policy, "iam:TagUser")
    ):
        problems.append("the manager may tag itself")
    return problems


def pathed_problems(policy: dict[str, Any], account: str, actions: list[str]) -> list[str]:
    pathed = {P.pathed_identity_arns(account)[0], P.pathed_identity_arns(account)[1]}
    for s in denies(policy):
        if pathed <= set(resources(s)) and {a.lower() for a in actions} <= expanded_actions(s) and "Condition" not in s:
            return []
    return [f"no unconditional Deny of {actions} on user/*/* and role/*/*"]


def refresh_problems(policy: dict[str, Any], prefix: str, account: str) -> list[str]:
    problems: list[str] = []
    namespace = set(P.namespace_user_arns(prefix, account))
    needed = {"iam:getuser", "iam:createaccesskey", "iam:deleteaccesskey"}
    granted: set[str] = set()
    for stmt in allows(policy):
        acts = expanded_actions(stmt)
        granted |= acts
        if acts - needed:
            problems.append(f"{stmt['Sid']}: more than minting needs: {sorted(acts - needed)}")
        if set(resources(stmt)) - namespace or "Condition" in stmt:
            problems.append(f"{stmt['Sid']}: not exactly the namespace users")
    if granted != needed:
        problems.append(f"minting needs {sorted(needed - granted)}")
    return problems


def lambda_problems(policy: dict[str, Any], prefix: str, account: str) -> list[str]:
    problems: list[str] = []
    role_arn = f"arn:aws:iam::{account}:role/iam-sorry-{prefix}-*"
    function_arn = f"arn:aws:lambda:*:{account}:function:{prefix}-*"
    namespace_roots = {
        "lambda": [function_arn, f"arn:aws:lambda:*:{account}:event-source-mapping:"],
        "s3": [f"arn:aws:s3:::{prefix}-*"],
        "dynamodb": [f"arn:aws:dynamodb:*:{account}:table/{prefix}-*"],
        "logs": [f"arn:aws:logs:*:{account}:log-group:/aws/lambda/{prefix}-*"],
        "iam": [role_arn],
    }
    for stmt in allows(policy):
        sid = stmt["Sid"]
        for action in as_list(stmt["Action"]):
            if "*" in action:
                problems.append(f"{sid}: wildcard action {action}")
        services = {a.split(":")[0] for a in expanded_actions(stmt)}
        if services & {"cloudfront", "acm", "route53"}:
            problems.append(f"{sid}: unscopable service {sorted(services)}")
        for res in resources(stmt):
            if res == "*" or res.endswith(":event-source-mapping:*"):
                cond = stmt.get("Condition", {})
                if cond.get("ArnLike", {}).get("lambda:FunctionArn") != function_arn:
                    problems.append(f"{sid}: {res} not bound to namespace functions")
                continue
            if not any(res.startswith(root) for svc in services for root in namespace_roots.get(svc, [])):
                problems.append(f"{sid}: resource {res} outside namespace")
        if "iam:passrole" in expanded_actions(stmt):
            if resources(stmt) != [role_arn]:
                problems.append(f"{sid}: PassRole resource {resources(stmt)}")
            if stmt.get("Condition") != {"StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}}:
                problems.append(f"{sid}: PassRole without iam:PassedToService=lambda.amazonaws.com")
            if len(expanded_actions(stmt)) != 1:
                problems.append(f"{sid}: PassRole shares a statement")
    granted = set().union(*(expanded_actions(s) for s in allows(policy)))
    for needed in (
        "lambda:createfunction",
        "iam:passrole",
        "s3:putobject",
        "s3:createbucket",
        "dynamodb:putitem",
        "dynamodb:query",
        "dynamodb:getrecords",
        "logs:createloggroup",
        "logs:putlogevents",
    ):
        if needed not in granted:
            problems.append(f"missing {needed}")
    return problems


# --- approximate IAM evaluator --------------------------------------------------------

_NEGATED = {"StringNotEquals", "StringNotLike", "ArnNotLike", "ArnNotEquals"}


def _subst(text: str, ctx: dict[str, Any]) -> str:
    return text.replace("${aws:username}", str(ctx["aws:username"]))


def _compare(base: str, expected: str, actual: str) -> bool:
    if base in ("StringEquals", "StringNotEquals", "ArnEquals", "ArnNotEquals"):
        return expected == actual
    if base == "StringEqualsIgnoreCase":
        return expected.lower() == actual.lower()
    if base in ("StringLike", "StringNotLike", "ArnLike", "ArnNotLike"):
        return wild(expected, actual)
    raise AssertionError(f"evaluator does not know {base}")


def _condition_holds(op: str, key: str, expected: Any, ctx: dict[str, Any]) -> bool:
    lookup = {k.lower(): v for k, v in ctx.items()}  # condition key names are case-insensitive
    present = key.lower() in lookup
    if op == "Null":
        return (str(expected).lower() == "true") != present
    set_op = None
    if ":" in op:
        set_op, op = op.split(":", 1)
    if_exists = op.endswith("IfExists")
    base = op.removesuffix("IfExists")
    wanted = [_subst(str(e), ctx) for e in as_list(expected)]
    if not present:
        if if_exists or set_op == "ForAllValues":
            return True
        if set_op == "ForAnyValue":
            return False
        return base in _NEGATED  # a missing key makes negated operators true
    hits = [any(_compare(base, e, str(v)) for e in wanted) for v in as_list(lookup[key.lower()])]
    if set_op == "ForAllValues":
        return all(hits)
    if set_op == "ForAnyValue":
        return any(hits)
    return not hits[0] if base in _NEGATED else hits[0]


def _applies(stmt: dict[str, Any], action: str, resource: str, ctx: dict[str, Any]) -> bool:
    if not any(wild(a, action, ignore_case=True) for a in as_list(stmt["Action"])):
        return False
    if not any(wild(_subst(r, ctx), resource) for r in resources(stmt)):
        return False
    return all(
        _condition_holds(op, key, expected, ctx)
        for op, block in stmt.get("Condition", {}).items()
        for key, expected in block.items()
    )


def evaluate(
    policy: dict[str, Any],
    action: str,
    resource: str,
    username: str = "sue-mgr",
    **context: Any,
) -> str:
    ctx = {"aws:username": username, **context}
    matched = [s for s in statements(policy) if _applies(s, action, resource, ctx)]
    if any(s["Effect"] == "Deny" for s in matched):
        return "Deny"
    if any(s["Effect"] == "Allow" for s in matched):
        return "Allow"
    return "ImplicitDeny"


def user(name: str) -> str:
    return f"arn:aws:iam::{ACCT}:user/{name}"


def role(name: str) -> str:
    return f"arn:aws:iam::{ACCT}:role/{name}"


def tags(**kv: str) -> dict[str, Any]:
    """Request-tag context as IAM builds it ('_' in a keyword stands for '-')."""
    real = {k.replace("_", "-"): v for k, v in kv.items()}
    ctx: dict[str, Any] = {f"aws:RequestTag/{k}": v for k, v in real.items()}
    ctx["aws:TagKeys"] = list(real)
    return ctx


def owned(owner: str, by: str | None = None) -> dict[str, Any]:
    ctx = {"aws:ResourceTag/owner": owner}
    if by:
        ctx["aws:ResourceTag/delegated-by"] = by
    return ctx


# === tests: parliament ====================================================================


@pytest.mark.parametrize(("kind", "prefix", "account"), all_params())
def test_parliament_no_findings_above_low(kind: str, prefix: str, account: str) -> None:
    analyzed = run_parliament(BUILDERS[kind](prefix, account))
    found = findings_of(analyzed)
    print_findings(f"{kind} {prefix} {account} (default auditors)", found)
    assert severity_problems(found) == []
    assert blocking_problems(analyzed, found) == []


@pytest.mark.parametrize(("kind", "prefix", "account"), all_params())
def test_parliament_community_findings_are_acknowledged(kind: str, prefix: str, account: str) -> None:
    found = findings_of(run_parliament(BUILDERS[kind](prefix, account), community=True))
    print_findings(f"{kind} {prefix} {account} (with community auditors)", found)
    unexpected = {
        (f.severity, f.issue, str(f.location.get("type", "")))
        for f in found
        if (f.issue, str(f.location.get("type", ""))) not in ACCEPTED_COMMUNITY[kind]
        and f.severity not in ALLOWED_SEVERITIES
    }
    assert unexpected == set()


@pytest.mark.parametrize(
    "stmt",
    [
        pytest.param(
            {
                "Sid": "Bad",
                "Effect": "Allow",
                "Action": "lambda:CreateFunction",
                "Resource": "arn:aws:s3:::sue-x",
            },
            id="RESOURCE_MISMATCH-medium",
        ),
        pytest.param(
            {
                "Sid": "Bad",
                "Effect": "Allow",
                "Action": "lambda:GetFunction",
                "Resource": f"arn:aws:lambda:*:{ACCT}:function:sue-*",
                "Condition": {"StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}},
            },
            id="UNKNOWN_CONDITION_FOR_ACTION-medium",
        ),
        pytest.param(
            {
                "Sid": "Bad",
                "Effect": "Allow",
                "Action": "lambda:CreateFunctions",
                "Resource": f"arn:aws:lambda:*:{ACCT}:function:sue-*",
            },
            id="UNKNOWN_ACTION-low-but-blocking",
        ),
        pytest.param(
            {
                "Sid": "Bad-Sid",
                "Effect": "Allow",
                "Action": "lambda:GetFunction",
                "Resource": f"arn:aws:lambda:*:{ACCT}:function:sue-*",
            },
            id="INVALID_SID-low-but-blocking",
        ),
    ],
)
def test_parliament_gate_detects_bad_statement(stmt: dict[str, Any]) -> None:
    policy = copy.deepcopy(P.lambda_policy("sue", ACCT))
    policy["Statement"].append(stmt)
    analyzed = run_parliament(policy)
    found = findings_of(analyzed)
    print_findings("mutated lambda policy", found)
    assert severity_problems(found) or blocking_problems(analyzed, found)


# === tests: structure ======================================================================


@pytest.mark.parametrize(("kind", "prefix", "account"), all_params())
def test_shape_actions_and_size(kind: str, prefix: str, account: str) -> None:
    policy = BUILDERS[kind](prefix, account)
    assert shape_problems(policy) == []
    assert action_problems(policy) == []
    assert size_problems(policy, SIZE_LIMITS[kind]) == []


def test_manager_policy_fits_inline_quota_for_long_prefixes() -> None:
    # 28 characters is the longest prefix that fits with a 12-digit account.
    assert size_problems(P.manager_policy("a" * 28, ACCT), P.INLINE_USER_POLICY_MAX_CHARS) == []
    assert size_problems(P.manager_policy("a" * 29, ACCT), P.INLINE_USER_POLICY_MAX_CHARS)


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("account", ACCOUNTS)
def test_manager_structure(prefix: str, account: str) -> None:
    policy = P.manager_policy(prefix, account)
    assert delegation_problems(policy, prefix, account) == []
    assert forbidden_problems(policy) == []
    assert foreign_owner_problems(policy, prefix, account) == []
    assert owned_user_problems(policy, account) == []
    assert view_problems(policy, account) == []
    assert self_problems(policy, prefix, account) == []
    assert pathed_problems(policy, account, ["iam:CreateUser", "iam:CreateRole", "iam:CreateAccessKey"]) == []


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("account", ACCOUNTS)
def test_refresh_structure(prefix: str, account: str) -> None:
    policy = P.refresh_policy(prefix, account)
    assert refresh_problems(policy, prefix, account) == []
    assert forbidden_problems(policy) == []
    assert foreign_owner_problems(policy, prefix, account) == []
    assert pathed_problems(policy, account, ["iam:CreateAccessKey", "iam:DeleteAccessKey"]) == []


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("account", ACCOUNTS)
def test_lambda_structure(prefix: str, account: str) -> None:
    assert lambda_problems(P.lambda_policy(prefix, account), prefix, account) == []


def test_lambda_unscoped_services_are_left_out_and_documented() -> None:
    granted = {a.split(":")[0] for st in allows(P.lambda_policy("sue", ACCT)) for a in expanded_actions(st)}
    assert "lambda" in granted and not granted & {"cloudfront", "acm", "route53"}
    readme = " ".join((pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text().split())
    assert "CloudFront, ACM and Route53 cannot be scoped to a name prefix and are left out" in readme


def test_lambda_s3_pins_bucket_owner_only_when_account_known() -> None:
    for sid in ("S3NamespaceBuckets", "S3NamespaceObjects"):
        (known,) = by_sid(P.lambda_policy("sue", ACCT), sid)
        (unknown,) = by_sid(P.lambda_policy("sue", "*"), sid)
        assert known["Condition"] == {"StringEqualsIfExists": {"s3:ResourceAccount": ACCT}}
        assert "Condition" not in unknown


def test_namespace_helpers() -> None:
    assert P.namespace_user_arns("sue", ACCT) == [user("sue"), user("sue-*")]
    assert P.namespace_role_arns("sue", "*") == ["arn:aws:iam::*:role/iam-sorry-sue-*"]
    assert P.namespace_prefix("sue-mgr") == "sue"
    assert any(wild(a, user("sue-mgr")) for a in P.namespace_user_arns("sue", ACCT))
    assert not any(wild(a, user("suex")) for a in P.namespace_user_arns("sue", ACCT))


@pytest.mark.parametrize(
    ("prefix", "account"),
    [
        ("", ACCT),
        ("sue-x", ACCT),
        ("s*", ACCT),
        ("su?", ACCT),
        ("s/x", ACCT),
        ("sue", "12345"),
        ("sue", "abc"),
    ],
)
def test_invalid_inputs_rejected(prefix: str, account: str) -> None:
    for builder in BUILDERS.values():
        with pytest.raises(P.UsageError):
            builder(prefix, account)


def test_cli_prints_only_json_on_stdout() -> None:
    proc = run_cli("--print-policy", "sue", "--account-id", ACCT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == P.manager_policy("sue", ACCT)
    assert "put-user-policy" in proc.stderr
    refresh = run_cli("--print-refresh-policy", "sue", "--account-id", ACCT)
    assert json.loads(refresh.stdout) == P.refresh_policy("sue", ACCT)
    alias = run_cli("--print-admin-policy", "sue", "--account-id", ACCT)
    assert alias.stdout == proc.stdout
    unknown = run_cli("--print-policy", "sue")
    assert json.loads(unknown.stdout) == P.manager_policy("sue", "*")
    assert "'*'" in unknown.stderr and "warning" in unknown.stderr
    bad = run_cli("--print-policy", "sue-x", "--account-id", ACCT)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and bad.stdout == ""


# === tests: behaviour (approximate evaluator) ==================================================

MANAGER_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    # viewing any user
    ("iam:GetUser", user("sue-app"), {}, "Allow"),
    ("iam:GetUser", user("jimmy-bedrock"), owned("jimmy", "sue-mgr"), "Allow"),
    ("iam:GetUser", user("sue-bedrock"), owned("jimmy"), "Allow"),
    ("iam:ListUserTags", user("admin"), {}, "Allow"),
    # minting for namespace users
    ("iam:CreateUser", user("sue-app"), {}, "Allow"),
    ("iam:CreateUser", user("sue"), {}, "Allow"),
    ("iam:CreateAccessKey", user("sue-app"), {}, "Allow"),
    ("iam:DeleteAccessKey", user("sue-app"), {}, "Allow"),
    ("iam:CreateAccessKey", user("sue"), owned("sue"), "Allow"),
    ("iam:CreateAccessKey", user("sue-app"), owned("sue-team"), "Allow"),
    ("iam:ListAccessKeys", user("sue-app"), {}, "ImplicitDeny"),
    ("iam:UpdateAccessKey", user("sue"), {}, "ImplicitDeny"),
    # recommended: tag namespace users at creation so nobody can claim them later
    (
        "iam:CreateUser",
        user("sue-app"),
        tags(owner="sue", delegated_by="sue-mgr"),
        "Allow",
    ),
    (
        "iam:TagUser",
        user("sue-app"),
        tags(owner="sue", delegated_by="sue-mgr"),
        "Allow",
    ),
    ("iam:CreateUser", user("suex"), {}, "ImplicitDeny"),
    ("iam:CreateUser", user("sue2-app"), {}, "ImplicitDeny"),
    # namespace user delegated to someone else
    ("iam:CreateAccessKey", user("sue-bedrock"), owned("jimmy"), "Deny"),
    ("iam:DeleteAccessKey", user("sue-bedrock"), owned("jimmy"), "Deny"),
    ("iam:UpdateAccessKey", user("sue-bedrock"), owned("jimmy"), "Deny"),
    ("iam:CreateAccessKey", user("sue-bedrock"), owned("suex"), "Deny"),
    (
        "iam:TagUser",
        user("sue-bedrock"),
        {**owned("jimmy"), **tags(owner="sue", delegated_by="sue-mgr")},
        "Deny",
    ),
    # bootstrap rotation on itself
    ("iam:ListAccessKeys", user("sue-mgr"), {}, "Allow"),
    ("iam:CreateAccessKey", user("sue-mgr"), {}, "Allow"),
    ("iam:UpdateAccessKey", user("sue-mgr"), {}, "Allow"),
    ("iam:DeleteAccessKey", user("sue-mgr"), {}, "Allow"),
    (
        "iam:TagUser",
        user("sue-mgr"),
        tags(owner="jimmy", delegated_by="sue-mgr"),
        "Deny",
    ),
    ("iam:DeleteUser", user("sue-mgr"), {}, "ImplicitDeny"),
    # delegation: create outside the namespace, exactly owner + delegated-by=<me>
    (
        "iam:CreateUser",
        user("jimmy-bedrock"),
        tags(owner="jimmy", delegated_by="sue-mgr"),
        "Allow",
    ),
    ("iam:CreateUser", user("jimmy-bedrock"), {}, "ImplicitDeny"),
    ("iam:CreateUser", user("jimmy-bedrock"), tags(owner="jimmy"), "ImplicitDeny"),
    (
        "iam:CreateUser",
        user("jimmy-bedrock"),
        tags(delegated_by="sue-mgr"),
        "ImplicitDeny",
    ),
    (
        "iam:CreateUser",
        user("jimmy-bedrock"),
        tags(owner="jimmy", delegated_by="dirk-mgr"),
        "ImplicitDeny",
    ),
    (
        "iam:CreateUser",
        user("jimmy-bedrock"),
        tags(owner="jimmy", delegated_by="sue-mgr", team="x"),
        "ImplicitDeny",
    ),
    (
        "iam:CreateUser",
        user("jimmy-bedrock"),
        tags(Owner="jimmy", delegated_by="sue-mgr"),
        "ImplicitDeny",
    ),
    # a path would smuggle a foreign name into user/sue-*
    ("iam:CreateUser", user("sue-x/jimmy"), {}, "Deny"),
    (
        "iam:CreateUser",
        user("ops/jimmy"),
        tags(owner="jimmy", delegated_by="sue-mgr"),
        "Deny",
    ),
    ("iam:CreateAccessKey", user("sue-x/jimmy"), {}, "Deny"),
    # delegation: tag an unowned user once, then read-only
    (
        "iam:TagUser",
        user("jimmy-bedrock"),
        tags(owner="jimmy", delegated_by="sue-mgr"),
        "Allow",
    ),
    (
        "iam:TagUser",
        user("jimmy-bedrock"),
        tags(delegated_by="sue-mgr"),
        "ImplicitDeny",
    ),
    ("iam:TagUser", user("jimmy-bedrock"), tags(team="x"), "ImplicitDeny"),
    (
        "iam:TagUser",
        user("jimmy-bedrock"),
        {**owned("jimmy", "sue-mgr"), **tags(owner="sue", delegated_by="sue-mgr")},
        "Deny",
    ),
    (
        "iam:TagUser",
        user("jimmy-bedrock"),
        {**owned("jimmy"), **tags(Owner="sue")},
        "Deny",
    ),
    (
        "iam:TagUser",
        user("jimmy-bedrock"),
        {**owned("jimmy"), **tags(team="x")},
        "Deny",
    ),
    (
        "iam:UntagUser",
        user("jimmy-bedrock"),
        {**owned("jimmy", "sue-mgr"), "aws:TagKeys": ["owner"]},
        "Deny",
    ),
    (
        "iam:UntagUser",
        user("sue-app"),
        {**owned("sue"), "aws:TagKeys": ["owner"]},
        "Deny",
    ),
    ("iam:UntagUser", user("sue-app"), {"aws:TagKeys": ["team"]}, "ImplicitDeny"),
    (
        "iam:CreateAccessKey",
        user("jimmy-bedrock"),
        owned("jimmy", "sue-mgr"),
        "ImplicitDeny",
    ),
    (
        "iam:DeleteAccessKey",
        user("jimmy-bedrock"),
        owned("jimmy", "sue-mgr"),
        "ImplicitDeny",
    ),
    ("iam:CreateAccessKey", user("admin"), {}, "ImplicitDeny"),
    # roles
    ("iam:CreateRole", role("iam-sorry-sue-lambda"), {}, "Allow"),
    ("iam:GetRole", role("iam-sorry-sue-lambda"), {}, "Allow"),
    ("iam:TagRole", role("iam-sorry-sue-lambda"), tags(owner="sue"), "Allow"),
    ("iam:CreateRole", role("iam-sorry-dirk-lambda"), {}, "ImplicitDeny"),
    ("iam:CreateRole", role("iam-sorry-sue-x/admin"), {}, "Deny"),
    ("iam:UpdateAssumeRolePolicy", role("iam-sorry-sue-lambda"), {}, "ImplicitDeny"),
    ("iam:AttachRolePolicy", role("iam-sorry-sue-lambda"), {}, "ImplicitDeny"),
    ("iam:PutRolePolicy", role("iam-sorry-sue-lambda"), {}, "ImplicitDeny"),
    ("iam:DeleteRole", role("iam-sorry-sue-lambda"), {}, "ImplicitDeny"),
    ("iam:AttachUserPolicy", user("sue-app"), {}, "ImplicitDeny"),
    ("iam:PutUserPolicy", user("sue-app"), {}, "ImplicitDeny"),
    ("iam:AddUserToGroup", user("sue-app"), {}, "ImplicitDeny"),
    ("iam:PassRole", role("iam-sorry-sue-lambda"), {}, "ImplicitDeny"),
]


@pytest.mark.parametrize(("action", "resource", "ctx", "expected"), MANAGER_CASES)
def test_manager_behaviour(action: str, resource: str, ctx: dict[str, Any], expected: str) -> None:
    assert evaluate(P.manager_policy("sue", ACCT), action, resource, **ctx) == expected


@pytest.mark.parametrize("account", ACCOUNTS)
def test_other_manager_cannot_touch_sue(account: str) -> None:
    dirk = P.manager_policy("dirk", account)
    for action in ("iam:CreateAccessKey", "iam:DeleteAccessKey", "iam:CreateUser"):
        assert evaluate(dirk, action, user("sue-app"), username="dirk-mgr") == "ImplicitDeny"
    assert evaluate(dirk, "iam:CreateAccessKey", user("dirk-app"), username="dirk-mgr") == "Allow"
    assert (
        evaluate(
            dirk,
            "iam:CreateAccessKey",
            user("dirk-x"),
            username="dirk-mgr",
            **owned("sue"),
        )
        == "Deny"
    )


REFRESH_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("iam:GetUser", user("sue-app"), {}, "Allow"),
    ("iam:CreateAccessKey", user("sue-app"), {}, "Allow"),
    ("iam:DeleteAccessKey", user("sue-app"), {}, "Allow"),
    ("iam:CreateAccessKey", user("sue-bedrock"), owned("jimmy"), "Deny"),
    ("iam:CreateAccessKey", user("sue-x/jimmy"), {}, "Deny"),
    ("iam:ListAccessKeys", user("sue-app"), {}, "ImplicitDeny"),
    ("iam:UpdateAccessKey", user("sue-app"), {}, "ImplicitDeny"),
    ("iam:CreateUser", user("sue-new"), {}, "ImplicitDeny"),
    ("iam:TagUser", user("sue-app"), tags(team="x"), "ImplicitDeny"),
    ("iam:GetUser", user("admin"), {}, "ImplicitDeny"),
    ("iam:CreateAccessKey", user("jimmy-bedrock"), {}, "ImplicitDeny"),
]


@pytest.mark.parametrize(("action", "resource", "ctx", "expected"), REFRESH_CASES)
def test_refresh_behaviour(action: str, resource: str, ctx: dict[str, Any], expected: str) -> None:
    assert evaluate(P.refresh_policy("sue", ACCT), action, resource, **ctx) == expected


def fn(name: str) -> str:
    return f"arn:aws:lambda:us-east-1:{ACCT}:function:{name}"


LAMBDA_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("lambda:CreateFunction", fn("sue-api"), {}, "Allow"),
    ("lambda:UpdateFunctionCode", fn("sue-api"), {}, "Allow"),
    ("lambda:InvokeFunction", fn("sue-api:live"), {}, "Allow"),
    ("lambda:CreateFunction", fn("dirk-api"), {}, "ImplicitDeny"),
    ("lambda:PutFunctionConcurrency", fn("sue-api"), {}, "ImplicitDeny"),
    (
        "lambda:AddPermission",
        fn("sue-api"),
        {"lambda:Principal": "s3.amazonaws.com"},
        "Allow",
    ),
    ("lambda:AddPermission", fn("sue-api"), {"lambda:Principal": "*"}, "ImplicitDeny"),
    (
        "lambda:AddPermission",
        fn("sue-api"),
        {"lambda:Principal": "999999999999"},
        "ImplicitDeny",
    ),
    (
        "lambda:CreateEventSourceMapping",
        "*",
        {"lambda:FunctionArn": fn("sue-api")},
        "Allow",
    ),
    (
        "lambda:CreateEventSourceMapping",
        "*",
        {"lambda:FunctionArn": fn("dirk-api")},
        "ImplicitDeny",
    ),
    (
        "lambda:DeleteEventSourceMapping",
        f"arn:aws:lambda:us-east-1:{ACCT}:event-source-mapping:1234",
        {"lambda:FunctionArn": fn("dirk-api")},
        "ImplicitDeny",
    ),
    (
        "iam:PassRole",
        role("iam-sorry-sue-exec"),
        {"iam:PassedToService": "lambda.amazonaws.com"},
        "Allow",
    ),
    (
        "iam:PassRole",
        role("iam-sorry-sue-exec"),
        {"iam:PassedToService": "ec2.amazonaws.com"},
        "ImplicitDeny",
    ),
    ("iam:PassRole", role("iam-sorry-sue-exec"), {}, "ImplicitDeny"),
    (
        "iam:PassRole",
        role("admin"),
        {"iam:PassedToService": "lambda.amazonaws.com"},
        "ImplicitDeny",
    ),
    (
        "iam:PassRole",
        role("iam-sorry-dirk-exec"),
        {"iam:PassedToService": "lambda.amazonaws.com"},
        "ImplicitDeny",
    ),
    ("s3:CreateBucket", "arn:aws:s3:::sue-data", {}, "Allow"),
    ("s3:PutObject", "arn:aws:s3:::sue-data/k", {"s3:ResourceAccount": ACCT}, "Allow"),
    (
        "s3:GetObject",
        "arn:aws:s3:::sue-data/k",
        {"s3:ResourceAccount": "999999999999"},
        "ImplicitDeny",
    ),
    ("s3:PutObject", "arn:aws:s3:::dirk-data/k", {}, "ImplicitDeny"),
    ("s3:PutBucketPolicy", "arn:aws:s3:::sue-data", {}, "ImplicitDeny"),
    ("s3:PutObjectAcl", "arn:aws:s3:::sue-data/k", {}, "ImplicitDeny"),
    ("dynamodb:PutItem", f"arn:aws:dynamodb:eu-west-1:{ACCT}:table/sue-t", {}, "Allow"),
    (
        "dynamodb:Query",
        f"arn:aws:dynamodb:eu-west-1:{ACCT}:table/sue-t/index/g1",
        {},
        "Allow",
    ),
    (
        "dynamodb:GetRecords",
        f"arn:aws:dynamodb:eu-west-1:{ACCT}:table/sue-t/stream/2024",
        {},
        "Allow",
    ),
    (
        "dynamodb:PutItem",
        f"arn:aws:dynamodb:eu-west-1:{ACCT}:table/dirk-t",
        {},
        "ImplicitDeny",
    ),
    (
        "logs:CreateLogGroup",
        f"arn:aws:logs:us-east-1:{ACCT}:log-group:/aws/lambda/sue-api",
        {},
        "Allow",
    ),
    (
        "logs:PutLogEvents",
        f"arn:aws:logs:us-east-1:{ACCT}:log-group:/aws/lambda/sue-api:log-stream:x",
        {},
        "Allow",
    ),
    (
        "logs:CreateLogGroup",
        f"arn:aws:logs:us-east-1:{ACCT}:log-group:/aws/lambda/dirk-api",
        {},
        "ImplicitDeny",
    ),
    ("cloudfront:CreateDistribution", "*", {}, "ImplicitDeny"),
    ("acm:RequestCertificate", "*", {}, "ImplicitDeny"),
    (
        "route53:ChangeResourceRecordSets",
        "arn:aws:route53:::hostedzone/Z1",
        {},
        "ImplicitDeny",
    ),
]


@pytest.mark.parametrize(("action", "resource", "ctx", "expected"), LAMBDA_CASES)
def test_lambda_behaviour(action: str, resource: str, ctx: dict[str, Any], expected: str) -> None:
    assert evaluate(P.lambda_policy("sue", ACCT), action, resource, username="sue", **ctx) == expected


# === the checks above can fail: run them on broken policies ==================================

Mutator = Callable[[dict[str, Any]], None]


def _add(stmt: dict[str, Any]) -> Mutator:
    return lambda policy: policy["Statement"].append(stmt)


def _drop(sid: str) -> Mutator:
    def mutate(policy: dict[str, Any]) -> None:
        policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] != sid]

    return mutate


def _edit(sid: str, change: Callable[[dict[str, Any]], Any]) -> Mutator:
    def mutate(policy: dict[str, Any]) -> None:
        for s in policy["Statement"]:
            if s["Sid"] == sid:
                change(s)

    return mutate


def _manager_checks(policy: dict[str, Any]) -> list[str]:
    return (
        shape_problems(policy)
        + action_problems(policy)
        + size_problems(policy, P.INLINE_USER_POLICY_MAX_CHARS)
        + delegation_problems(policy, "sue", ACCT)
        + forbidden_problems(policy)
        + foreign_owner_problems(policy, "sue", ACCT)
        + owned_user_problems(policy, ACCT)
        + view_problems(policy, ACCT)
        + self_problems(policy, "sue", ACCT)
        + pathed_problems(policy, ACCT, ["iam:CreateUser", "iam:CreateRole", "iam:CreateAccessKey"])
    )


NS = f"arn:aws:iam::{ACCT}:user/sue-*"
MANAGER_MUTATIONS: dict[str, Mutator] = {
    "unconditional CreateUser on *": _add(
        {"Sid": "Bad", "Effect": "Allow", "Action": "iam:CreateUser", "Resource": "*"}
    ),
    "unconditional TagUser on all users": _add(
        {
            "Sid": "Bad",
            "Effect": "Allow",
            "Action": "iam:TagUser",
            "Resource": P.all_users_arn(ACCT),
        }
    ),
    "delegation without owner tag": _edit(
        "DelegateUnownedUser",
        lambda s: s["Condition"]["Null"].pop("aws:RequestTag/owner"),
    ),
    "delegation with IfExists": _edit(
        "DelegateUnownedUser",
        lambda s: s["Condition"].update({"StringEqualsIfExists": s["Condition"].pop("StringEquals")}),
    ),
    "delegation with any tag keys": _edit(
        "DelegateUnownedUser", lambda s: s["Condition"].pop("ForAllValues:StringEquals")
    ),
    "delegation on owned users": _edit(
        "DelegateUnownedUser",
        lambda s: s["Condition"]["Null"].pop("aws:ResourceTag/owner"),
    ),
    "PassRole via wildcard": _add({"Sid": "Bad", "Effect": "Allow", "Action": "iam:Pass*", "Resource": NS}),
    "PassRole even as Deny": _add({"Sid": "Bad", "Effect": "Deny", "Action": "iam:PassRole", "Resource": "*"}),
    "AttachUserPolicy in namespace": _add(
        {
            "Sid": "Bad",
            "Effect": "Allow",
            "Action": "iam:AttachUserPolicy",
            "Resource": NS,
        }
    ),
    "UntagUser in namespace": _add({"Sid": "Bad", "Effect": "Allow", "Action": "iam:UntagUser", "Resource": NS}),
    "iam:* in namespace": _add({"Sid": "Bad", "Effect": "Allow", "Action": "iam:*", "Resource": NS}),
    "no untag deny": _edit("DenyRetagOwnedUsers", lambda s: s.update({"Action": ["iam:TagUser"]})),
    "no retag deny": _edit("DenyRetagOwnedUsers", lambda s: s.update({"Action": ["iam:UntagUser"]})),
    "retag deny only for case-sensitive keys": _edit(
        "DenyRetagOwnedUsers",
        lambda s: s["Condition"].update({"ForAnyValue:StringEquals": {"aws:TagKeys": ["owner", "delegated-by"]}}),
    ),
    "no foreign-owner deny": _drop("DenyUsersOwnedByOthers"),
    "foreign-owner deny without Null": _edit("DenyUsersOwnedByOthers", lambda s: s["Condition"].pop("Null")),
    "no view": _drop("ViewAnyUser"),
    "no self rotation": _drop("RotateOwnKey"),
    "self may tag itself": _drop("DenyTagSelf"),
    "paths allowed": _drop("DenyPathedIdentities"),
    "missing Sid": _edit("ViewAnyUser", lambda s: s.pop("Sid")),
    "unknown action": _add({"Sid": "Bad", "Effect": "Allow", "Action": "iam:CreateUsers", "Resource": NS}),
    "too big for inline": _add(
        {
            "Sid": "Big",
            "Effect": "Allow",
            "Action": "iam:GetUser",
            "Resource": [f"{NS}{i:03}" for i in range(10)],
        }
    ),
}


@pytest.mark.parametrize("name", list(MANAGER_MUTATIONS))
def test_manager_checks_detect_broken_policy(name: str) -> None:
    policy = copy.deepcopy(P.manager_policy("sue", ACCT))
    assert _manager_checks(policy) == []
    MANAGER_MUTATIONS[name](policy)
    try:
        problems = _manager_checks(policy)
    except KeyError as exc:  # e.g. a missing Sid breaks the checkers themselves
        problems = [f"KeyError {exc}"]
    assert problems, f"mutation {name!r} went unnoticed"


LAMBDA_MUTATIONS: dict[str, Mutator] = {
    "PassRole without condition": _edit("PassNamespaceRolesToLambda", lambda s: s.pop("Condition")),
    "PassRole to any service": _edit(
        "PassNamespaceRolesToLambda",
        lambda s: s["Condition"]["StringEquals"].update({"iam:PassedToService": "*"}),
    ),
    "PassRole on all roles": _edit(
        "PassNamespaceRolesToLambda",
        lambda s: s.update({"Resource": f"arn:aws:iam::{ACCT}:role/*"}),
    ),
    "lambda:* everywhere": _add({"Sid": "Bad", "Effect": "Allow", "Action": "lambda:*", "Resource": "*"}),
    "functions outside namespace": _edit(
        "LambdaNamespaceFunctions",
        lambda s: s.update({"Resource": f"arn:aws:lambda:*:{ACCT}:function:*"}),
    ),
    "other buckets": _edit("S3NamespaceObjects", lambda s: s.update({"Resource": "arn:aws:s3:::*/*"})),
    "other tables": _edit(
        "DynamoDBNamespaceTables",
        lambda s: s.update({"Resource": f"arn:aws:dynamodb:*:{ACCT}:table/*"}),
    ),
    "all log groups": _edit(
        "LogsNamespaceLambdaLogGroups",
        lambda s: s.update({"Resource": f"arn:aws:logs:*:{ACCT}:log-group:*"}),
    ),
    "cloudfront": _add(
        {
            "Sid": "Bad",
            "Effect": "Allow",
            "Action": "cloudfront:CreateDistribution",
            "Resource": f"arn:aws:cloudfront::{ACCT}:distribution/*",
        }
    ),
    "unconditioned ESM on *": _edit("LambdaCreateEventSourceMapping", lambda s: s.pop("Condition")),
    "no logs": _drop("LogsNamespaceLambdaLogGroups"),
}


@pytest.mark.parametrize("name", list(LAMBDA_MUTATIONS))
def test_lambda_checks_detect_broken_policy(name: str) -> None:
    policy = copy.deepcopy(P.lambda_policy("sue", ACCT))
    assert lambda_problems(policy, "sue", ACCT) == []
    LAMBDA_MUTATIONS[name](policy)
    assert lambda_problems(policy, "sue", ACCT), f"mutation {name!r} went unnoticed"


@pytest.mark.parametrize(
    "mutate",
    [
        _edit("MintForNamespaceUsers", lambda s: s["Action"].append("iam:UpdateAccessKey")),
        _edit(
            "ReadNamespaceUsers",
            lambda s: s.update({"Resource": P.all_users_arn(ACCT)}),
        ),
        _drop("ReadNamespaceUsers"),
    ],
    ids=["extra action", "GetUser on all users", "no GetUser"],
)
def test_refresh_check_detects_broken_policy(mutate: Mutator) -> None:
    policy = copy.deepcopy(P.refresh_policy("sue", ACCT))
    assert refresh_problems(policy, "sue", ACCT) == []
    mutate(policy)
    assert refresh_problems(policy, "sue", ACCT)


def test_evaluator_detects_missing_deny() -> None:
    policy = copy.deepcopy(P.manager_policy("sue", ACCT))
    _drop("DenyUsersOwnedByOthers")(policy)
    assert evaluate(policy, "iam:CreateAccessKey", user("sue-bedrock"), **owned("jimmy")) == "Allow"

"""Make moto's credential handling strict enough to test a credential broker.

Written against moto 5.2.1 (boto3/botocore 1.43). moto is a good AWS stand-in
for resources, but it is lenient about *who* signs a request, and a credential
tool is mostly about exactly that.  This shim closes the gaps our tests need:

* GetSessionToken: moto returns one fixed example key for every caller, so a
  test cannot tell whose credentials were minted.  Here every call mints a
  unique ``ASIA...`` key, secret and session token bound to the signer's
  identity, with ``Expiration = now + DurationSeconds`` (900..129600, as AWS
  enforces for IAM users).
* GetCallerIdentity with minted credentials returns the IAM user they belong
  to (``arn:aws:iam::<acct>:user/<NAME>``), as AWS does.
* moto accepts requests signed by deactivated or deleted IAM keys; AWS answers
  ``InvalidClientTokenId`` (HTTP 403).  The shim does the same, and can also
  reject keys younger than ``Shim.propagation_delay`` seconds, which is how
  AWS behaves while a new key propagates.
* Expired minted sessions are rejected with ``ExpiredToken`` (HTTP 403).
* Every request is counted per action at the server, and faults can be
  injected per action, so tests can assert on real traffic (also when the
  code under test runs in other processes against ``ThreadedMotoServer``).
  Answers can be made slow per action, before the action runs (AWS is slow)
  or after it (AWS did it, but the answer comes too late: a lost answer).
* AssumeRole: moto ignores ``SourceIdentity`` and session tags, never checks
  that the role exists, and never reads its trust policy.  Here the role must
  exist; its trust policy must name the caller (its ARN, its account's root
  or ``*``) for ``sts:AssumeRole``, and also allow ``sts:SetSourceIdentity``
  and ``sts:TagSession`` when the request carries a source identity or tags;
  a ``StringLike`` condition on ``sts:SourceIdentity`` is honoured (a subset
  of IAM's evaluation, enough for the trust policies iam-sorry writes).  The
  session's role, name, source identity and tags are remembered, and every
  request is logged with the source identity and session name of the role
  session that signed it (``Shim.log``), as CloudTrail shows them.

Keys moto has never seen (e.g. the conventional ``testing`` admin key) keep
working as before: tests sign administrative calls with arbitrary keys.

What is patched (``install`` patches, ``uninstall`` restores):

``moto.core.responses.BaseResponse.call_action``
    The one place every request of a query/JSON protocol service (IAM, STS and
    most others) passes through after moto has parsed it, both under
    ``mock_aws`` and in the server.  The wrapper counts the call, injects
    faults and checks the signing key before moto runs the action.  Services
    with their own dispatch (S3 and a few REST APIs) bypass it and keep moto's
    lenient behaviour.
``moto.sts.responses.TokenResponse.get_session_token``
    Replaced: mints per-signer credentials as described above.
``moto.sts.models.STSBackend.get_caller_identity``
    Wrapped: answers for minted credentials, otherwise defers to moto.
``moto.iam.models.IAMBackend.create_access_key``
    Wrapped: remembers which keys were issued and when, because moto forgets
    deleted keys entirely and would otherwise treat them as unknown admin keys.
``moto.iam.responses.IamResponse.create_user`` / ``create_role``
    Wrapped: a ``PermissionsBoundary`` must name an existing policy
    (``NoSuchEntity`` otherwise, as in AWS; moto checks only its form), and a
    user's boundary is kept and returned by GetUser (moto drops it).
``moto.iam.responses.IamResponse.put_user_permissions_boundary``
    Added (moto does not implement it), with the same check.
``moto.iam.models.IAMBackend.update_user``
    Wrapped: moto keeps tags by ARN, so a new path would drop a user's tags;
    AWS keeps them.
``moto.sts.responses.TokenResponse.assume_role``
    Wrapped: checks the role and its trust policy, then records the session.
``moto.iam.responses.IamResponse.list_service_specific_credentials``
    Added (moto lacks it): a user has none, as moto cannot create any.

The signing key is taken exactly as moto takes it (``get_access_key``: the
SigV4 ``Authorization`` credential scope).  Minted keys are registered with
moto's IAM backend as temporary keys, like moto's own AssumeRole, so moto maps
them to the right account.  ``install`` raises ``ShimIncompatibleError`` if a
moto upgrade removed any of these internals.
"""

from __future__ import annotations

import base64
import collections
import datetime
import fnmatch
import functools
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape


class ShimIncompatibleError(RuntimeError):
    """moto's internals no longer match what this shim was written against."""


try:
    import moto
    from moto.core.responses import ActionResult, BaseResponse
    from moto.core.utils import get_service_model, utcnow
    from moto.iam.models import AccessKey, IAMBackend, User, iam_backends
    from moto.iam.responses import IamResponse
    from moto.server import ThreadedMotoServer
    from moto.sts.models import STSBackend
    from moto.sts.responses import TokenResponse
    from moto.utilities.utils import PARTITION_NAMES
except ImportError as exc:  # pragma: no cover - only on an incompatible moto
    raise ShimIncompatibleError(f"moto_shim was written against moto 5.2.1 and cannot import {exc.name}") from exc

WRITTEN_FOR_MOTO = "5.2.1"
DEFAULT_DURATION = 43200
MIN_DURATION = 900
MAX_DURATION = 129600
INVALID_TOKEN = "The security token included in the request is invalid."
EXPIRED_TOKEN = "The security token included in the request is expired"
Response = tuple[int, dict[str, str], str]


class AwsError(Exception):
    """An error the shim answers with instead of letting moto run the action."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def _invalid_token() -> AwsError:
    return AwsError("InvalidClientTokenId", INVALID_TOKEN, 403)


@dataclass(frozen=True)
class RoleSession:
    """What AWS keeps about an AssumeRole session and CloudTrail shows."""

    role_arn: str
    session_name: str
    source_identity: str | None
    tags: dict[str, str]
    assumed_by: str  # the ARN that called AssumeRole


@dataclass(frozen=True)
class Call:
    """One request as the server saw it; for role sessions, who is behind it."""

    service: str
    action: str
    access_key: str
    source_identity: str | None
    session_name: str | None


@dataclass
class _Session:
    token: str
    user_id: str
    arn: str
    account: str
    expiration: datetime.datetime


class Shim:
    """State and knobs shared by every patched code path (one per process).

    ``propagation_delay`` (seconds, default 0) and ``calls`` (a Counter keyed
    by action name, counted at the server, rejected requests included) are
    plain attributes; ``calls`` is only written under the lock.
    ``session_seconds`` (default None) caps the lifetime of minted sessions,
    so that a benchmark sees credentials go stale without waiting hours.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: collections.Counter[str] = collections.Counter()
        self.log: list[Call] = []
        self.role_sessions: dict[str, RoleSession] = {}
        self.reset()

    def reset(self) -> None:
        """Forget calls, faults, sessions, issued keys and the delay.

        The Shim outlives ``mock_aws`` contexts and servers, so fixtures call
        this between tests.  Afterwards, keys and sessions from before the
        reset count as unknown keys (accepted), not as deleted or expired.
        """
        with self._lock:
            self.propagation_delay = 0.0
            self.session_seconds: int | None = None
            self.calls.clear()
            self.log = []
            self.role_sessions = {}
            self._faults: dict[str, collections.deque[AwsError]] = collections.defaultdict(collections.deque)
            self._delays: dict[str, collections.deque[tuple[float, bool]]] = collections.defaultdict(collections.deque)
            self._sessions: dict[str, _Session] = {}
            self._issued: dict[str, float] = {}
            self._revoked: set[str] = set()

    def settle(self) -> None:
        """Treat every key issued so far as propagated, so that a
        ``propagation_delay`` set next applies only to keys created later."""
        with self._lock:
            for key in self._issued:
                self._issued[key] = float("-inf")

    def reset_calls(self) -> None:
        with self._lock:
            self.calls.clear()
            self.log = []

    def fail(self, action: str, code: str = "ServiceFailure", times: int = 1, status: int = 500) -> None:
        """Make the next ``times`` requests for ``action`` fail with ``code``.

        Faults fire before authentication, so they hit the next requests
        whatever signed them.  botocore retries 5xx and throttling codes on
        its own; every attempt consumes a fault and counts in ``calls``.
        """
        error = AwsError(code, f"Injected {code} for {action}", status)
        with self._lock:
            self._faults[action].extend([error] * times)

    def clear_faults(self) -> None:
        """Forget the faults and delays not yet used (a failed test's leftovers)."""
        with self._lock:
            self._faults.clear()
            self._delays.clear()

    def slow(self, action: str, seconds: float, times: int = 1, after: bool = False) -> None:
        """Make the next ``times`` answers to ``action`` wait ``seconds``.

        ``after=False``: the server waits before it runs the action (AWS is
        slow; a client that gives up first changed nothing).  ``after=True``:
        it runs the action, then waits before answering (AWS did it, but a
        client that gives up first never learns so).  Combined with
        ``fail``, the fault (checked first) does not consume a delay.
        """
        with self._lock:
            self._delays[action].extend([(seconds, after)] * times)

    def expire_sessions(self) -> None:
        """Expire every session credential minted so far (not later ones)."""
        past = utcnow() - datetime.timedelta(seconds=1)
        with self._lock:
            for session in self._sessions.values():
                session.expiration = past

    def revoke_role_sessions(self) -> None:
        """What "Revoke active sessions" on a role does: every AssumeRole
        session issued so far is refused from now on (later ones work)."""
        with self._lock:
            self._revoked |= set(self.role_sessions)

    def identity_of(self, access_key_id: str) -> str | None:
        """ARN a minted session or a live IAM user key resolves to, else None."""
        session = self._session(access_key_id)
        if session is not None:
            return session.arn
        found = _find_user_key(access_key_id)
        return found[1].arn if found and found[1] else None

    def role_session(self, access_key_id: str) -> RoleSession | None:
        """The AssumeRole session a key belongs to, else None."""
        with self._lock:
            return self.role_sessions.get(access_key_id)

    def calls_of(self, service: str) -> list[Call]:
        with self._lock:
            return [c for c in self.log if c.service == service]

    # -- used by the patched moto code -------------------------------------

    def _admit(self, action: str, service: str = "", access_key: str = "") -> float:
        """Count and log the call, raise its fault or wait its delay; the
        seconds to wait after the action ran (0 for none)."""
        with self._lock:
            self.calls[action] += 1
            session = self.role_sessions.get(access_key)
            who = (session.source_identity, session.session_name) if session else (None, None)
            self.log.append(Call(service, action, access_key, *who))
            pending = self._faults.get(action)
            error = pending.popleft() if pending else None
            delays = self._delays.get(action)
            delay = delays.popleft() if delays and error is None else (0.0, False)
        if error is not None:
            raise error
        if not delay[1]:
            time.sleep(delay[0])
        return delay[0] if delay[1] else 0.0

    def _session(self, access_key_id: str) -> _Session | None:
        with self._lock:
            return self._sessions.get(access_key_id)

    def _record_issued(self, access_key_id: str) -> None:
        with self._lock:
            self._issued[access_key_id] = time.monotonic()

    def _authenticate(self, access_key_id: str, token: str | None) -> None:
        with self._lock:
            revoked = access_key_id in self._revoked
        if revoked:  # AWS denies them by a policy on the role; moto has no such check
            raise AwsError("AccessDenied", f"{access_key_id[:4]}... is not authorized: its session was revoked", 403)
        session = self._session(access_key_id)
        if session is not None:
            _check_session(session, token)
        else:
            self._check_iam_key(access_key_id)

    def _check_iam_key(self, access_key_id: str) -> None:
        with self._lock:
            issued = self._issued.get(access_key_id)
        found = _find_user_key(access_key_id)
        if found is None:
            if issued is not None:  # moto forgot it: deleted
                raise _invalid_token()
            return  # never issued by IAM: an admin/test key or moto's own temp key
        key, user = found
        if key.status != "Active" or user is None:
            raise _invalid_token()
        if issued is not None and time.monotonic() - issued < self.propagation_delay:
            raise _invalid_token()

    def _mint(self, account: str, partition: str, identity: tuple[str, str, str], duration: int) -> AccessKey:
        key = iam_backends[account][partition].create_temp_access_key()
        user_id, arn, owner = identity
        expiration = utcnow() + datetime.timedelta(seconds=duration)
        token = base64.b64encode(secrets.token_bytes(120)).decode()
        with self._lock:
            self._sessions[key.access_key_id] = _Session(token, user_id, arn, owner, expiration)
        return key


def _check_session(session: _Session, token: str | None) -> None:
    # AWS rejects an ASIA key sent without its token; catches code that drops it.
    if token != session.token:
        raise _invalid_token()
    if utcnow() >= session.expiration:
        raise AwsError("ExpiredToken", EXPIRED_TOKEN, 403)


def _find_user_key(access_key_id: str) -> tuple[AccessKey, User | None] | None:
    """The IAM user access key with this id and its (possibly deleted) user."""
    # list(): the server may create account backends in other threads meanwhile.
    for _account, backends in list(iam_backends.items()):
        for partition in PARTITION_NAMES:
            backend = backends[partition]
            key = backend.access_keys.get(access_key_id)
            if key is not None and key.user_name is not None:
                return key, backend.users.get(key.user_name)
    return None


_SHIM = Shim()
_ORIGINALS: dict[tuple[type, str], Any] = {}
_INSTALL_LOCK = threading.Lock()


# -- replacements ------------------------------------------------------------


def _security_token(response: BaseResponse) -> str | None:
    token = response.headers.get("X-Amz-Security-Token")
    if token:
        return str(token)
    presigned = response.querystring.get("X-Amz-Security-Token")
    return presigned[0] if presigned else None


def _error_response(response: BaseResponse, error: AwsError) -> Response:
    """Serialise like AWS so botocore raises ClientError with this code."""
    model = get_service_model(response.boto3_service_name)
    request_id = str(uuid.uuid4())
    headers = {"x-amzn-RequestId": request_id}
    if model.protocol in ("json", "rest-json"):
        headers.update({"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": error.code})
        return error.status, headers, json.dumps({"__type": error.code, "message": error.message})
    namespace = model.metadata.get("xmlNamespace", "")
    fault = "Sender" if error.status < 500 else "Receiver"
    body = (
        f'<ErrorResponse xmlns="{escape(namespace)}"><Error><Type>{fault}</Type>'
        f"<Code>{escape(error.code)}</Code><Message>{escape(error.message)}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    headers["Content-Type"] = "text/xml"
    return error.status, headers, body


def _wrap_call_action(original: Callable[[BaseResponse], Any]) -> Callable[[BaseResponse], Any]:
    @functools.wraps(original)
    def call_action(self: BaseResponse) -> Any:
        try:
            late = _SHIM._admit(self._get_action(), self.boto3_service_name, self.get_access_key())
            _SHIM._authenticate(self.get_access_key(), _security_token(self))
            result = original(self)
        except AwsError as error:
            return _error_response(self, error)
        time.sleep(late)
        return result

    return call_action


def _duration_seconds(response: TokenResponse) -> int:
    duration = response._get_int_param("DurationSeconds", DEFAULT_DURATION)
    if duration < MIN_DURATION:
        bound = f"greater than or equal to {MIN_DURATION}"
    elif duration > MAX_DURATION:
        bound = f"less than or equal to {MAX_DURATION}"
    else:
        return int(duration)
    message = (
        f"1 validation error detected: Value '{duration}' at 'durationSeconds' "
        f"failed to satisfy constraint: Member must have value {bound}"
    )
    raise AwsError("ValidationError", message, 400)


def _wrap_get_session_token(original: Callable[[TokenResponse], Any]) -> Callable[[TokenResponse], Any]:
    @functools.wraps(original)
    def get_session_token(self: TokenResponse) -> ActionResult:
        duration = _duration_seconds(self)
        duration = min(duration, _SHIM.session_seconds or duration)
        signer = self.get_access_key()
        if _SHIM._session(signer) or self.backend.get_assumed_role_from_access_key(signer):
            raise AwsError("AccessDenied", "Cannot call GetSessionToken with session credentials", 403)
        # The session is whoever moto says signed the call: an IAM user for
        # user keys, moto's default identity for unknown admin keys.
        identity = self.backend.get_caller_identity(signer, self.region)
        key = _SHIM._mint(self.current_account, self.partition, identity, duration)
        session = _SHIM._session(key.access_key_id)
        assert session is not None
        credentials = {
            "AccessKeyId": key.access_key_id,
            "SecretAccessKey": key.secret_access_key,
            "SessionToken": session.token,
            "Expiration": session.expiration,
        }
        return ActionResult({"Credentials": credentials})

    return get_session_token


def _wrap_get_caller_identity(original: Callable[..., tuple[str, str, str]]) -> Callable[..., tuple[str, str, str]]:
    @functools.wraps(original)
    def get_caller_identity(self: STSBackend, access_key_id: str, region: str) -> tuple[str, str, str]:
        session = _SHIM._session(access_key_id)
        if session is not None:
            return session.user_id, session.arn, session.account
        return original(self, access_key_id, region)

    return get_caller_identity


def _wrap_create_access_key(original: Callable[..., AccessKey]) -> Callable[..., AccessKey]:
    @functools.wraps(original)
    def create_access_key(self: IAMBackend, *args: Any, **kwargs: Any) -> AccessKey:
        key = original(self, *args, **kwargs)
        _SHIM._record_issued(key.access_key_id)
        return key

    return create_access_key


def _boundary(response: IamResponse) -> dict[str, str] | None:
    """The request's PermissionsBoundary, checked to exist as AWS does."""
    arn = response._get_param("PermissionsBoundary")
    if not arn:
        return None
    response.backend.get_policy(arn)  # raises NoSuchEntity, which moto answers as AWS would
    return {"PermissionsBoundaryType": "PermissionsBoundaryPolicy", "PermissionsBoundaryArn": arn}


def _wrap_create_user(original: Callable[[IamResponse], Any]) -> Callable[[IamResponse], Any]:
    @functools.wraps(original)
    def create_user(self: IamResponse) -> Any:
        boundary = _boundary(self)
        result = original(self)
        if boundary:
            self.backend.get_user(self._get_param("UserName")).permissions_boundary = boundary
        return result

    return create_user


def _wrap_create_role(original: Callable[[IamResponse], Any]) -> Callable[[IamResponse], Any]:
    @functools.wraps(original)
    def create_role(self: IamResponse) -> Any:
        _boundary(self)
        return original(self)

    return create_role


def _wrap_update_user(original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def update_user(self: IAMBackend, user_name: str, new_path: str | None = None, *args: Any, **kwargs: Any) -> None:
        old_arn = self.get_user(user_name).arn
        tags = self.tagger.list_tags_for_resource(old_arn)["Tags"]
        original(self, user_name, new_path, *args, **kwargs)
        user = self.get_user(kwargs.get("new_user_name") or (args[0] if args else None) or user_name)
        if user.arn != old_arn:
            self.tagger.delete_all_tags_for_resource(old_arn)
            self.tagger.tag_resource(user.arn, tags)

    return update_user


def _put_user_permissions_boundary(self: IamResponse) -> Any:
    user = self.backend.get_user(self._get_param("UserName"))
    user.permissions_boundary = _boundary(self)
    from moto.core.responses import EmptyResult

    return EmptyResult()


def _trusts(trust: dict[str, Any], caller: str, action: str, source_identity: str | None) -> bool:
    """Whether a trust policy allows ``caller`` the STS ``action``: Allow
    statements only, principals by exact ARN, account root or ``*``, and a
    StringLike condition on sts:SourceIdentity (enough for iam-sorry's own)."""
    account = caller.split(":")[4]
    for stmt in trust.get("Statement", []):
        actions = stmt.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        principals = stmt.get("Principal", {})
        aws = principals.get("AWS", []) if isinstance(principals, dict) else principals
        aws = [aws] if isinstance(aws, str) else aws
        if stmt.get("Effect") != "Allow" or not any(fnmatch.fnmatchcase(action, a) for a in actions):
            continue
        if not any(p in ("*", caller, account, f"arn:aws:iam::{account}:root") for p in aws):
            continue
        wanted = stmt.get("Condition", {}).get("StringLike", {}).get("sts:SourceIdentity")
        if wanted is not None:
            wanted = [wanted] if isinstance(wanted, str) else wanted
            if source_identity is None or not any(fnmatch.fnmatchcase(source_identity, w) for w in wanted):
                continue
        return True
    return False


def _check_trust(response: TokenResponse, role_arn: str, source_identity: str | None, tags: bool) -> str:
    """The caller's ARN, after AWS's checks on the role and its trust policy."""
    caller = response.backend.get_caller_identity(response.get_access_key(), response.region)[1]
    account, name = role_arn.split(":")[4], role_arn.rsplit("/", 1)[-1]
    role = iam_backends[account][response.partition].roles
    found = next((r for r in role.values() if r.name == name and r.arn == role_arn), None)
    denied = AwsError("AccessDenied", f"User: {caller} is not authorized to perform: sts:AssumeRole on {role_arn}", 403)
    if found is None:
        raise denied
    trust = json.loads(found.assume_role_policy_document)
    needed = ["sts:AssumeRole"] + ["sts:SetSourceIdentity"] * bool(source_identity) + ["sts:TagSession"] * tags
    if not all(_trusts(trust, caller, action, source_identity) for action in needed):
        raise denied
    return str(caller)


def _wrap_assume_role(original: Callable[[TokenResponse], Any]) -> Callable[[TokenResponse], Any]:
    @functools.wraps(original)
    def assume_role(self: TokenResponse) -> ActionResult:
        role_arn = self._get_param("RoleArn")
        source_identity = self._get_param("SourceIdentity")
        tags = {t["Key"]: t["Value"] for t in self._get_param("Tags") or []}
        caller = _check_trust(self, role_arn, source_identity, bool(tags))
        result = original(self)
        key = result.result["Credentials"].access_key_id
        session = RoleSession(role_arn, self._get_param("RoleSessionName"), source_identity, tags, caller)
        with _SHIM._lock:
            _SHIM.role_sessions[key] = session
        return result

    return assume_role


def _list_service_specific_credentials(self: IamResponse) -> ActionResult:
    self.backend.get_user(self._get_param("UserName"))  # NoSuchEntity for an unknown user, as AWS
    return ActionResult({"ServiceSpecificCredentials": []})


_PATCHES: list[tuple[type, str, Callable[[Any], Any]]] = [
    (BaseResponse, "call_action", _wrap_call_action),
    (TokenResponse, "get_session_token", _wrap_get_session_token),
    (STSBackend, "get_caller_identity", _wrap_get_caller_identity),
    (IAMBackend, "create_access_key", _wrap_create_access_key),
    (IamResponse, "create_user", _wrap_create_user),
    (IamResponse, "create_role", _wrap_create_role),
    (IAMBackend, "update_user", _wrap_update_user),
    (TokenResponse, "assume_role", _wrap_assume_role),
]
# What moto lacks altogether: added by install, removed by uninstall.
_ADDITIONS: list[tuple[type, str, Callable[..., Any]]] = [
    (IamResponse, "put_user_permissions_boundary", _put_user_permissions_boundary),
    (IamResponse, "list_service_specific_credentials", _list_service_specific_credentials),
]
_ALSO_USED: list[tuple[type, str]] = [
    (BaseResponse, "get_access_key"),
    (BaseResponse, "_get_action"),
    (BaseResponse, "_get_int_param"),
    (BaseResponse, "_get_param"),
    (BaseResponse, "boto3_service_name"),
    (TokenResponse, "backend"),
    (STSBackend, "get_assumed_role_from_access_key"),
    (IAMBackend, "create_temp_access_key"),
    (IAMBackend, "get_policy"),
    (IamResponse, "_get_param"),
]


def _check_internals() -> None:
    missing = [f"{cls.__qualname__}.{name}" for cls, name, _ in _PATCHES if name not in vars(cls)]
    missing += [f"{cls.__qualname__}.{name} (now in moto)" for cls, name, _ in _ADDITIONS if hasattr(cls, name)]
    missing += [f"{cls.__qualname__}.{name}" for cls, name in _ALSO_USED if not hasattr(cls, name)]
    # A subclass override would silently bypass the gate for that service.
    missing += [
        f"{cls.__qualname__}.call_action (overridden)"
        for cls in (TokenResponse, IamResponse)
        if cls.call_action is not BaseResponse.call_action
    ]
    if missing:
        raise ShimIncompatibleError(
            f"moto {moto.__version__} lacks internals moto_shim (written for moto {WRITTEN_FOR_MOTO}) "
            f"relies on: {', '.join(missing)}"
        )


def install() -> Shim:
    """Patch moto in this process (idempotent) and return the shared Shim."""
    with _INSTALL_LOCK:
        if not _ORIGINALS:
            _check_internals()
            for cls, name, wrap in _PATCHES:
                original = vars(cls)[name]
                _ORIGINALS[(cls, name)] = original
                setattr(cls, name, wrap(original))
            for cls, name, added in _ADDITIONS:
                setattr(cls, name, added)
    return _SHIM


def uninstall() -> None:
    """Restore moto's original behaviour; the Shim keeps its state."""
    with _INSTALL_LOCK:
        for (cls, name), original in _ORIGINALS.items():
            setattr(cls, name, original)
        if _ORIGINALS:
            for cls, name, _ in _ADDITIONS:
                delattr(cls, name)
        _ORIGINALS.clear()


def start_server() -> tuple[str, Callable[[], None]]:
    """Run a ThreadedMotoServer on a free 127.0.0.1 port with the shim installed.

    Returns the endpoint URL (for ``AWS_ENDPOINT_URL`` or ``endpoint_url``)
    and a function that stops the server.  The server shares this process's
    moto state; ``POST <url>/moto-api/reset`` clears it.
    """
    install()
    # werkzeug logs every request; with dozens of client processes that
    # buries the output of a failing test.
    werkzeug_log = logging.getLogger("werkzeug")
    if werkzeug_log.level == logging.NOTSET:
        werkzeug_log.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}", server.stop

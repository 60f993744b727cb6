"""schemathesis hooks for scripts/api-fuzz: the server's rules that no JSON Schema can state.

The document states every rule it can (crates/postern-api/src/schema_rules.rs). What is left
depends on the clock, on stored state, or on arithmetic between parts of one string. Each
rule below either moves a generated value into what the server accepts, so that the request
still tests the operation, or, for stored state, accepts the server's refusal by its exact
problem. Nothing else is excused: any other disagreement fails the run.
"""

import datetime
import ipaddress
import re

import schemathesis

# Ranges no resource may reach (postern_domain::validate::forbidden_ranges), and /0.
FORBIDDEN = [
    ipaddress.ip_network(net)
    for net in [
        "127.0.0.0/8",
        "::1/128",
        "169.254.0.0/16",
        "fe80::/10",
        "fd00:ec2::254/128",
        "100.64.0.0/10",
        "fd70:6f73:7465:726e::/64",
        "198.18.0.0/15",
        "fd70:6f73:7465:726f::/64",
    ]
]
PORT_RANGE = re.compile(r"(\d+)( *- *)(\d+)")
DURATION = re.compile(r"^(\d+)(s|m|min|h|d|w|y)$")
SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
WINDOW = re.compile(r"^(\s*\S.*?\s+)(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})(\s+)\S+(\s*)$", re.S)


def reachable(network):
    return network.prefixlen > 0 and not any(network.overlaps(bad) for bad in FORBIDDEN)


def resource_address(kind, address):
    """An `ip` or `cidr` address outside the reserved ranges, with no host bits."""
    if not isinstance(address, str):
        return address
    try:
        network = ipaddress.ip_network(address.strip(), strict=False)
    except ValueError:
        return address
    if kind == "cidr" and "/" in address:
        address = str(network)
    if reachable(network):
        return address
    if kind == "ip":
        return "192.0.2.10" if network.version == 4 else "2001:db8::10"
    return "192.0.2.0/24" if network.version == 4 else "2001:db8::/64"


def ports(value):
    """A range's start is not after its end."""
    if not isinstance(value, str):
        return value

    def ordered(match):
        start, dash, end = match.groups()
        low, high = sorted([start, end], key=lambda text: int(text))
        return f"{low}{dash}{high}"

    return PORT_RANGE.sub(ordered, value)


def windows(values):
    """One known time zone for all windows of a condition, and an end unlike the start."""
    if not isinstance(values, list):
        return values
    mapped = []
    for value in values:
        match = WINDOW.match(value) if isinstance(value, str) else None
        if not match:
            mapped.append(value)
            continue
        days, start_h, start_m, end_h, end_m, space, tail = match.groups()
        if (int(start_h), start_m) == (int(end_h), end_m):
            end_h = "24" if (int(start_h), start_m) != (0, "00") else "12"
            end_m = "00"
        mapped.append(f"{days}{start_h}:{start_m}-{end_h}:{end_m}{space}UTC{tail}")
    return mapped


def future(value):
    """An expiry in the future, at least a few minutes from now."""
    if not isinstance(value, str):
        return value
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if when.tzinfo is None:
        return value
    now = datetime.datetime.now(datetime.timezone.utc)
    if when > now + datetime.timedelta(minutes=5):
        return value
    return (now + datetime.timedelta(hours=12)).isoformat().replace("+00:00", "Z")


def overlap(value):
    """A rotation window every account accepts: longer than zero, at most a day (the lowest
    cap an account may set on token lifetimes, which the fuzzer also changes)."""
    match = DURATION.match(value) if isinstance(value, str) else None
    if not match:
        return value
    seconds = int(match.group(1)) * SECONDS[match.group(2)]
    return value if 0 < seconds <= 86400 else "24h"


def listed(value):
    return value if isinstance(value, list) else []


def fix_resource(body):
    kind = body.get("type")
    if kind in ("ip", "cidr") and "address" in body:
        body["address"] = resource_address(kind, body["address"])
    for rule in listed(body.get("filters")):
        if isinstance(rule, dict) and "ports" in rule:
            rule["ports"] = ports(rule["ports"])


def fix_conditions(body):
    for condition in listed(body.get("conditions")):
        if isinstance(condition, dict) and condition.get("property") == "time_window":
            condition["values"] = windows(condition.get("values"))


def fix_body(path, body):
    if not isinstance(body, dict):
        return body
    if path.startswith("/v1/resources"):
        fix_resource(body)
    elif path.startswith("/v1/policies"):
        fix_conditions(body)
    if "expires_at" in body:
        body["expires_at"] = future(body["expires_at"])
    if path.endswith("/rotate") and "overlap" in body:
        body["overlap"] = overlap(body["overlap"])
    if path.endswith("/workload-identities"):
        # A key set's keys cannot be generated from a schema; the claims that have fields of
        # their own are refused by name.
        body.pop("jwks", None)
        claims = body.get("claims")
        if isinstance(claims, dict):
            for reserved in ("iss", "aud", "sub", "exp", "nbf", "iat", "jti"):
                claims.pop(reserved, None)
    if path.startswith("/v1/identity-providers") and listed(body.get("admin_groups")) and not body.get("groups_claim"):
        # Admin groups are read from the groups claim: one is needed with them.
        body["groups_claim"] = "groups"
    token = body.get("token")
    if isinstance(token, dict) and "expires_at" in token:
        token["expires_at"] = future(token["expires_at"])
    return body


# Bodies from hypothesis (fuzzing and stateful phases) pass through `map_body`, the examples
# and coverage phases through `map_case`.
@schemathesis.hook
def map_body(context, body):
    if context.operation is None:
        return body
    return fix_body(context.operation.path, body)


@schemathesis.hook
def map_case(context, case):
    if isinstance(case.body, dict):
        case.body = fix_body(case.operation.path, case.body)
    return case


# Refusals that depend on what is stored, matched by their exact problem.
STATEFUL_REFUSALS = [
    # The Everyone group's members are managed by the portal.
    ("group_id", "the Everyone group is managed by the portal"),
    # A new address without a type is checked against the resource's stored type.
    ("address", "is not an IP address"),
    ("address", "is not a CIDR range"),
    ("address", "is not a DNS name"),
    ("address", "an Internet resource covers every address"),
    # A reference to a group, site, resource or actor that does not exist (or not here).
    ("", " in this account"),
    # Tokens belong to machines; the actor in the path may be a person.
    ("actor_id", "signs in and holds no tokens"),
    # Guardrails are for service accounts' tokens; the actor in the path may be an API client.
    ("max_clients", "apply to service-account tokens only"),
    # The longest token lifetime is an account setting the fuzzer also changes.
    ("expires_at", "is later than this account allows"),
    # An account holds at most 20 webhooks; the fuzzer creates many.
    ("url", "an account has at most 20 webhooks"),
    # And at most 10 identity providers, 50 workload identities per service account.
    ("issuer", "an account has at most 10 identity providers"),
    ("issuer", "a service account has at most 50 workload identities"),
]


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keeps every failure but a 422 for a rule on stored state."""
    if "positive_data_acceptance" not in getattr(failure, "checks", ()) or response.status_code != 422:
        return True
    try:
        problem = response.json()
    except ValueError:
        return True
    field, detail = problem.get("field", ""), problem.get("detail", "")
    body = case.body if isinstance(case.body, dict) else {}
    for rule_field, text in STATEFUL_REFUSALS:
        if (rule_field and field != rule_field) or text not in detail:
            continue
        if rule_field == "address" and (case.method.upper() != "PATCH" or body.get("type")):
            continue
        return False
    return True

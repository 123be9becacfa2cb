"""Specification of the identity rules: ServiceAccount annotations (§service-account-annotations,
§compose-role-arn), the ConfigMap mapping (§config-map with §differences), the Pod Identity
list (§pod-identity-file) and the precedence applied by `resolve` (§precedence, §no-role,
§common-settings). A §anchor is a section of docs/mutation.md.
"""

from __future__ import annotations

import pytest

from injector.core.identity import (
    ConfigMapError,
    IdentityTables,
    Mode,
    PodIdentities,
    parse_config_map,
    parse_go_bool,
    parse_go_int64,
    parse_pod_identities,
    resolve,
    service_account_entry,
)
from injector.core.settings import MutationSettings, SettingsError

ROLE = "arn:aws:iam::111122223333:role/app"
DEFAULTS = MutationSettings()


def annotations(**values: str) -> dict[str, str]:
    """SA annotations under the default prefix: role_arn="x" → eks.amazonaws.com/role-arn."""
    return {f"eks.amazonaws.com/{key.replace('_', '-')}": value for key, value in values.items()}


# --- ServiceAccount annotations (§service-account-annotations) --------------------------------


def test_unannotated_service_account_has_no_role_and_flag_defaults():
    """§service-account-annotations: every SA gets an entry; without annotations the flags supply the values."""
    settings = MutationSettings(token_audience="aud.example", token_expiration=7200, sts_regional_endpoint=True)
    entry = service_account_entry(None, settings)
    assert (entry.role_arn, entry.audience, entry.regional_sts, entry.token_expiration) == (
        "", "aud.example", True, 7200,
    )
    assert entry.problems == ()


def test_role_arn_annotation_is_taken_as_written():
    assert service_account_entry(annotations(role_arn=ROLE), DEFAULTS).role_arn == ROLE


@pytest.mark.parametrize(
    "value",
    ["arn:aws:iam::12345:role/short-account", "arn:aws:s3:::bucket", "just-a-name", "arn:aws:iam::111122223333:user/u"],
)
def test_invalid_role_arn_is_still_used_and_reported(value: str):
    """§service-account-annotations: a role ARN that fails validation only logs a warning; the value is still used."""
    entry = service_account_entry(annotations(role_arn=value), DEFAULTS)
    assert entry.role_arn == value
    assert entry.problems, "the malformed ARN must be reported"


@pytest.mark.parametrize(
    "value",
    [ROLE, "arn:aws-cn:iam::111122223333:role/path/to/app", "arn:aws-us-gov:iam::111122223333:role/a.b@c+d=e,f"],
)
def test_valid_role_arn_reports_no_problem(value: str):
    assert service_account_entry(annotations(role_arn=value), DEFAULTS).problems == ()


def test_audience_annotation_overrides_the_flag():
    entry = service_account_entry(annotations(audience="vault.example"), MutationSettings(token_audience="x"))
    assert entry.audience == "vault.example"


def test_empty_audience_annotation_is_taken_as_is():
    """§service-account-annotations: the audience annotation is a raw string, even when empty."""
    assert service_account_entry(annotations(audience=""), DEFAULTS).audience == ""


# The 8-case regional-STS matrix of the Go webhook's cache_test.go: annotation × flag default.
@pytest.mark.parametrize(
    ("annotation", "flag", "expected"),
    [
        ("true", True, True),
        ("true", False, True),
        ("false", True, False),
        ("false", False, False),
        ("", True, True),
        ("", False, False),
        (None, True, True),
        (None, False, False),
    ],
)
def test_regional_sts_annotation_overrides_the_flag_and_empty_means_default(annotation, flag, expected):
    """§service-account-annotations: sts-regional-endpoints wins either way; an empty value is
    invalid ⇒ flag default."""
    values = {} if annotation is None else annotations(sts_regional_endpoints=annotation)
    entry = service_account_entry(values, MutationSettings(sts_regional_endpoint=flag))
    assert entry.regional_sts is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [(s, True) for s in ("1", "t", "T", "TRUE", "true", "True")]
    + [(s, False) for s in ("0", "f", "F", "FALSE", "false", "False")],
)
def test_go_parse_bool_accepts_exactly_twelve_spellings(text: str, expected: bool):
    assert parse_go_bool(text) is expected


@pytest.mark.parametrize("text", ["", "yes", "no", "on", "off", "tRUE", "TRue", "fALSE", "2", " true", "true ", "y"])
def test_go_parse_bool_rejects_other_spellings(text: str):
    assert parse_go_bool(text) is None


@pytest.mark.parametrize("flag", [True, False])
@pytest.mark.parametrize("text", ["yes", "on", "enabled", "TRue"])
def test_unparsable_regional_sts_annotation_falls_back_to_the_flag_and_is_reported(text: str, flag: bool):
    settings = MutationSettings(sts_regional_endpoint=flag)
    entry = service_account_entry(annotations(sts_regional_endpoints=text), settings)
    assert entry.regional_sts is flag
    assert entry.problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3600", 3600),
        ("+3600", 3600),
        ("-3600", -3600),
        ("0", 0),
        ("-0", 0),
        ("007200", 7200),
        ("9223372036854775807", 2**63 - 1),
        ("-9223372036854775808", -(2**63)),
    ],
)
def test_go_parse_int_accepts_signed_decimal_int64(text: str, expected: int):
    assert parse_go_int64(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", " 3600", "3600 ", "3600s", "1h", "1e3", "36.00", "0x10", "3_600", "+-1", "--1", "+", "١٢٣",
     "9223372036854775808", "-9223372036854775809"],
)
def test_go_parse_int_rejects_everything_else(text: str):
    assert parse_go_int64(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3600", 3600), ("+3600", 3600), ("600", 600), ("599", 600), ("0", 600), ("-5", 600), ("172800", 172800)],
)
def test_token_expiration_annotation_is_min_clamped_to_600_without_upper_bound(text: str, expected: int):
    """§token-lifetime/§service-account-annotations: values below 600 are raised to 600; there is no maximum."""
    assert service_account_entry(annotations(token_expiration=text), DEFAULTS).token_expiration == expected


@pytest.mark.parametrize("text", ["", "1h", " 3600", "3600.0", "ten"])
def test_invalid_token_expiration_annotation_falls_back_to_the_flag_and_is_reported(text: str):
    entry = service_account_entry(annotations(token_expiration=text), MutationSettings(token_expiration=5000))
    assert entry.token_expiration == 5000
    assert entry.problems


def test_token_expiration_flag_below_600_is_raised_at_start_up():
    """§flags: --token-expiration below 600 is raised to 600."""
    assert MutationSettings(token_expiration=1).token_expiration == 600
    assert service_account_entry({}, MutationSettings(token_expiration=1)).token_expiration == 600


def test_annotation_prefix_selects_which_annotations_count():
    """§flags: --annotation-prefix renames every annotation key."""
    settings = MutationSettings(annotation_prefix="iam.corp.example")
    entry = service_account_entry(
        {"eks.amazonaws.com/role-arn": ROLE, "iam.corp.example/token-expiration": "1234"}, settings
    )
    assert entry.role_arn == ""
    assert entry.token_expiration == 1234
    assert service_account_entry({"iam.corp.example/role-arn": ROLE}, settings).role_arn == ROLE


# --- --compose-role-arn (§compose-role-arn) ---------------------------------------------------


COMPOSE = MutationSettings(compose_role_arn=True, aws_account_id="123456789012", aws_partition="aws-cn")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("reader", "arn:aws-cn:iam::123456789012:role/reader"),
        ("team/reader", "arn:aws-cn:iam::123456789012:role/team/reader"),
        ("arn:aws:iam::111122223333:role/explicit", "arn:aws:iam::111122223333:role/explicit"),
    ],
)
def test_compose_role_arn_expands_values_without_arn_prefix(value: str, expected: str):
    """§compose-role-arn: a value not containing "arn:" becomes arn:<partition>:iam::<account>:role/<value>."""
    entry = service_account_entry(annotations(role_arn=value), COMPOSE)
    assert entry.role_arn == expected
    assert entry.problems == ()


def test_without_compose_role_arn_a_bare_name_is_used_verbatim():
    entry = service_account_entry(annotations(role_arn="reader"), DEFAULTS)
    assert entry.role_arn == "reader"
    assert entry.problems


@pytest.mark.parametrize(
    "kwargs",
    [{"aws_account_id": ""}, {"aws_account_id": "12345"}, {"aws_account_id": "123456789012", "aws_partition": "mars"}],
)
def test_compose_role_arn_needs_an_account_id_and_a_known_partition(kwargs):
    with pytest.raises(SettingsError):
        MutationSettings(compose_role_arn=True, **kwargs)


# --- ConfigMap (§config-map) ------------------------------------------------------------------


def test_config_map_entry_with_all_members():
    mapping = parse_config_map(
        {"ns/sa": {"RoleARN": ROLE, "Audience": "aud", "UseRegionalSTS": True, "TokenExpiration": 4000}}, DEFAULTS
    )
    entry = mapping.lookup("ns", "sa")
    assert (entry.role_arn, entry.audience, entry.regional_sts, entry.token_expiration) == (ROLE, "aud", True, 4000)


@pytest.mark.parametrize(
    "members",
    [
        {"rolearn": ROLE, "audience": "aud", "useregionalsts": True, "tokenexpiration": 4000},
        {"ROLEARN": ROLE, "AUDIENCE": "aud", "USEREGIONALSTS": True, "TOKENEXPIRATION": 4000},
        {"roleArn": ROLE, "Audience": "aud", "useRegionalSts": True, "tokenExpiration": 4000},
    ],
)
def test_config_map_member_names_match_case_insensitively(members):
    """§config-map: Go's decoder matches member names case-insensitively."""
    entry = parse_config_map({"ns/sa": members}, DEFAULTS).lookup("ns", "sa")
    assert (entry.role_arn, entry.audience, entry.regional_sts, entry.token_expiration) == (ROLE, "aud", True, 4000)


def test_config_map_unknown_members_are_ignored():
    entry = parse_config_map({"ns/sa": {"RoleARN": ROLE, "Region": 5, "Comment": ["x"]}}, DEFAULTS).lookup("ns", "sa")
    assert entry.role_arn == ROLE


def test_config_map_null_members_count_as_absent():
    """Go's decoder leaves a field at its zero value for JSON null."""
    entry = parse_config_map(
        {"ns/sa": {"RoleARN": ROLE, "Audience": None, "UseRegionalSTS": None, "TokenExpiration": None}},
        MutationSettings(token_expiration=5000),
    ).lookup("ns", "sa")
    assert (entry.audience, entry.regional_sts, entry.token_expiration) == ("sts.amazonaws.com", False, 5000)


@pytest.mark.parametrize(
    "bad_entry",
    [
        {"RoleARN": 5},
        {"RoleARN": ["arn"]},
        {"Audience": False},
        {"UseRegionalSTS": "true"},
        {"UseRegionalSTS": 1},
        {"TokenExpiration": "3600"},
        {"TokenExpiration": 3600.5},
        {"TokenExpiration": True},
        "arn:aws:iam::111122223333:role/not-an-object",
        ["not", "an", "object"],
    ],
)
def test_config_map_wrong_type_anywhere_rejects_the_whole_document(bad_entry):
    """§config-map: a wrong type in any entry rejects the document (the previous mapping stays)."""
    document = {"good/one": {"RoleARN": ROLE}, "bad/one": bad_entry}
    with pytest.raises(ConfigMapError):
        parse_config_map(document, DEFAULTS)


@pytest.mark.parametrize("document", [[], "text", 5, None])
def test_config_map_document_must_be_an_object(document):
    with pytest.raises(ConfigMapError):
        parse_config_map(document, DEFAULTS)


def test_config_map_key_without_slash_is_rejected_alone():
    """§differences: a key without "/" is rejected (Go crashes) and the rest is kept."""
    mapping = parse_config_map({"no-slash": {"RoleARN": ROLE}, "ns/sa": {"RoleARN": ROLE}}, DEFAULTS)
    assert mapping.lookup("ns", "sa") is not None
    assert len(mapping.rejected) == 1 and "no-slash" in mapping.rejected[0]
    assert len(mapping) == 1


@pytest.mark.parametrize("stored", [0, None])
def test_config_map_token_expiration_zero_or_absent_means_the_flag_default(stored):
    member = {} if stored is None else {"TokenExpiration": stored}
    mapping = parse_config_map({"ns/sa": {"RoleARN": ROLE, **member}}, MutationSettings(token_expiration=43200))
    assert mapping.lookup("ns", "sa").token_expiration == 43200


def test_config_map_token_expiration_below_600_is_raised_to_600():
    """Deliberate difference (§differences): the Go webhook passes 300 through and the
    API server then rejects the pod (a projected token lives at least 600 s)."""
    mapping = parse_config_map({"ns/sa": {"RoleARN": ROLE, "TokenExpiration": 300}}, DEFAULTS)
    assert mapping.lookup("ns", "sa").token_expiration == 600


def test_config_map_entry_without_audience_gets_the_default_audience():
    """§differences (Go leaves it empty, §config-map)."""
    mapping = parse_config_map({"ns/sa": {"RoleARN": ROLE}}, MutationSettings(token_audience="sts.internal"))
    assert mapping.lookup("ns", "sa").audience == "sts.internal"


def test_config_map_regional_sts_ignores_the_flag():
    """§flag-interactions: ConfigMap entries carry their own boolean, default false."""
    mapping = parse_config_map({"ns/sa": {"RoleARN": ROLE}}, MutationSettings(sts_regional_endpoint=True))
    assert mapping.lookup("ns", "sa").regional_sts is False


def test_config_map_role_arn_is_neither_composed_nor_validated():
    """§config-map/§compose-role-arn: composition applies to SA annotations only."""
    mapping = parse_config_map({"ns/sa": {"RoleARN": "bare-name"}}, COMPOSE)
    assert mapping.lookup("ns", "sa").role_arn == "bare-name"


def test_config_map_star_matches_the_name_in_any_namespace():
    mapping = parse_config_map({"*/builder": {"RoleARN": ROLE}}, DEFAULTS)
    assert mapping.lookup("anything", "builder").role_arn == ROLE
    assert mapping.lookup("anything", "other") is None
    assert mapping.lookup_exact("anything", "builder") is None


@pytest.mark.parametrize(
    ("namespace", "matches"),
    [("team-a", True), ("team-blue", True), ("team-", True), ("team", False), ("teams-a", False), ("ops", False)],
)
def test_config_map_namespace_globs(namespace: str, matches: bool):
    """§differences: namespace patterns such as team-* work."""
    mapping = parse_config_map({"team-*/builder": {"RoleARN": ROLE}}, DEFAULTS)
    assert (mapping.lookup(namespace, "builder") is not None) is matches


def test_config_map_exact_beats_glob_beats_star():
    mapping = parse_config_map(
        {
            "*/builder": {"RoleARN": "arn:aws:iam::111122223333:role/star"},
            "team-*/builder": {"RoleARN": "arn:aws:iam::111122223333:role/glob"},
            "team-a/builder": {"RoleARN": "arn:aws:iam::111122223333:role/exact"},
        },
        DEFAULTS,
    )
    assert mapping.lookup("team-a", "builder").role_arn.endswith("/exact")
    assert mapping.lookup("team-b", "builder").role_arn.endswith("/glob")
    assert mapping.lookup("ops", "builder").role_arn.endswith("/star")


def test_config_map_more_specific_glob_wins():
    mapping = parse_config_map(
        {
            "team-*/builder": {"RoleARN": "arn:aws:iam::111122223333:role/team"},
            "team-blue-*/builder": {"RoleARN": "arn:aws:iam::111122223333:role/blue"},
        },
        DEFAULTS,
    )
    assert mapping.lookup("team-blue-1", "builder").role_arn.endswith("/blue")
    assert mapping.lookup("team-red-1", "builder").role_arn.endswith("/team")


# --- Pod Identity list (§pod-identity-file) ---------------------------------------------------


def test_pod_identities_are_exact_namespace_service_account_pairs():
    found = parse_pod_identities(
        {"identities": [{"namespace": "a", "serviceAccount": "x"}, {"namespace": "b", "serviceAccount": "y"}]}
    )
    assert found == PodIdentities(frozenset({("a", "x"), ("b", "y")}))


@pytest.mark.parametrize("document", [None, {}, {"identities": None}, {"identities": []}, {"other": 1}])
def test_empty_pod_identities(document):
    """`null` is an empty list to Go's decoder, and so is an absent or null "identities"."""
    assert parse_pod_identities(document) == PodIdentities()


@pytest.mark.parametrize("document", [[], "a/x", 1, {"identities": {"a": "x"}}, {"identities": "a/x"}])
def test_a_document_of_the_wrong_shape_is_rejected_whole(document):
    with pytest.raises(ValueError):
        parse_pod_identities(document)


@pytest.mark.parametrize("entry", [
    {"Namespace": "a", "ServiceAccount": "x"},
    {"NAMESPACE": "a", "serviceaccount": "x"},
    {"nameSpace": "a", "SERVICEACCOUNT": "x"},
    {"namespace": "a", "\u017ferviceAccount": "x"},  # Go folds ſ (U+017F) to s
])
def test_keys_match_case_insensitively_as_go_decodes_them(entry):
    assert parse_pod_identities({"Identities": [entry]}).pairs == {("a", "x")}


@pytest.mark.parametrize("key", ["name_space", "namespace ", "namespacé", "na\u0131mespace", "namespaces"])
def test_a_key_that_only_looks_alike_is_not_the_field(key):
    found = parse_pod_identities({"identities": [{key: "a", "serviceAccount": "x"}]})
    assert found.pairs == frozenset()
    assert [bad.index for bad in found.skipped] == [0]


def test_a_later_key_overwrites_an_earlier_one_and_null_overwrites_nothing():
    """As Go's decoder fills a struct: member by member, in document order."""
    found = parse_pod_identities({"identities": [
        {"namespace": "first", "Namespace": "second", "serviceAccount": "x"},
        {"namespace": "kept", "NAMESPACE": None, "serviceAccount": "y"},
    ]})
    assert found.pairs == {("second", "x"), ("kept", "y")}


def test_unknown_members_are_ignored():
    document = {"identities": [{"namespace": "a", "serviceAccount": "x", "roleArn": "arn:aws:iam::1:role/r"}],
                "version": 2}
    assert parse_pod_identities(document) == PodIdentities(frozenset({("a", "x")}))


@pytest.mark.parametrize(("entry", "problem"), [
    ("a/x", "an entry must be an object, not str"),
    (None, "an entry must be an object, not null"),
    (["a", "x"], "an entry must be an object, not list"),
    ({"namespace": 1, "serviceAccount": "x"}, '"namespace" must be a string'),
    ({"namespace": "a", "ServiceAccount": {"name": "x"}}, '"serviceAccount" must be a string'),
    ({"namespace": "a"}, 'it needs a non-empty "namespace" and "serviceAccount"'),
    ({"namespace": "", "serviceAccount": "x"}, 'it needs a non-empty "namespace" and "serviceAccount"'),
    ({"namespace": None, "serviceAccount": "x"}, 'it needs a non-empty "namespace" and "serviceAccount"'),
])
def test_a_bad_entry_is_skipped_named_and_the_rest_are_kept(entry, problem):
    found = parse_pod_identities({"identities": [{"namespace": "a", "serviceAccount": "x"}, entry,
                                                 {"namespace": "b", "serviceAccount": "y"}]})
    assert found.pairs == {("a", "x"), ("b", "y")}
    assert [(bad.index, bad.problem) for bad in found.skipped] == [(1, problem)]
    assert str(found.skipped[0]).startswith("identities[1] ")


def test_a_skipped_entry_is_named_briefly():
    found = parse_pod_identities({"identities": [{"namespace": "a" * 200}]})
    assert found.skipped[0].entry.startswith('{"namespace":"aaa')
    assert len(found.skipped[0].entry) <= 80


# --- resolve: §precedence, §no-role, §common-settings -----------------------------------------


def tables(sa: dict | None = None, config_map: dict | None = None, pod_identity: bool = False,
           settings: MutationSettings = DEFAULTS, namespace: str = "ns", name: str = "sa") -> IdentityTables:
    result = IdentityTables()
    if sa is not None:
        result.service_accounts[f"{namespace}/{name}"] = service_account_entry(sa, settings)
    if config_map is not None:
        result.config_map = parse_config_map(config_map, settings)
    if pod_identity:
        result.pod_identities = frozenset({(namespace, name)})
    return result


def test_pod_identity_beats_the_role_annotation():
    """§container-credentials (the Go fixture rawPodWithRoleArn): container credentials win; the role ARN is ignored."""
    settings = MutationSettings(cc_audience="pods.example")
    found = resolve("ns", "sa", tables(annotations(role_arn=ROLE), pod_identity=True, settings=settings), settings)
    assert found.identity.mode is Mode.CONTAINER_CREDENTIALS
    assert found.identity.role_arn == ""
    assert found.identity.audience == "pods.example"


def test_pod_identity_common_configuration_comes_from_the_service_account():
    """§common-settings: SA entry (annotated or not) first; its values default to the flags."""
    settings = MutationSettings(sts_regional_endpoint=True, token_expiration=7200)
    found = resolve("ns", "sa", tables({}, pod_identity=True, settings=settings), settings).identity
    assert (found.regional_sts, found.token_expiration) == (True, 7200)
    found = resolve(
        "ns", "sa",
        tables(annotations(sts_regional_endpoints="false", token_expiration="10000"), pod_identity=True), DEFAULTS,
    ).identity
    assert (found.regional_sts, found.token_expiration) == (False, 10000)


def test_pod_identity_common_configuration_service_account_beats_config_map():
    config_map = {"ns/sa": {"RoleARN": ROLE, "UseRegionalSTS": True, "TokenExpiration": 5400}}
    found = resolve("ns", "sa", tables({}, config_map, pod_identity=True), DEFAULTS).identity
    assert (found.regional_sts, found.token_expiration) == (False, 86400)


def test_pod_identity_common_configuration_falls_back_to_the_exact_config_map_entry():
    config_map = {"ns/sa": {"UseRegionalSTS": True, "TokenExpiration": 5400}}
    found = resolve("ns", "sa", tables(None, config_map, pod_identity=True), DEFAULTS).identity
    assert (found.regional_sts, found.token_expiration) == (True, 5400)


@pytest.mark.parametrize("key", ["*/sa", "n*/sa", "other/sa"])
def test_pod_identity_common_configuration_ignores_non_exact_config_map_keys(key):
    """§container-credentials: the wildcard is not consulted; unknown SA ⇒ (false, 86400) whatever the flags."""
    settings = MutationSettings(sts_regional_endpoint=True, token_expiration=3600)
    config_map = {key: {"UseRegionalSTS": True, "TokenExpiration": 5400}}
    found = resolve("ns", "sa", tables(None, config_map, pod_identity=True, settings=settings), settings).identity
    assert (found.regional_sts, found.token_expiration) == (False, 86400)


def test_pod_identity_requires_the_exact_pair():
    pods = IdentityTables(pod_identities=frozenset({("ns", "sa")}))
    assert resolve("other", "sa", pods, DEFAULTS).identity is None
    assert resolve("ns", "other", pods, DEFAULTS).identity is None


def test_role_annotation_beats_the_config_map_entirely():
    """§config-map (precedence): all four fields come from the SA when it has a role."""
    config_map = {"ns/sa": {"RoleARN": "arn:aws:iam::111122223333:role/cm", "Audience": "cm", "UseRegionalSTS": True,
                            "TokenExpiration": 1234}}
    found = resolve("ns", "sa", tables(annotations(role_arn=ROLE), config_map), DEFAULTS)
    assert found.identity.mode is Mode.WEB_IDENTITY
    assert (found.identity.role_arn, found.identity.audience, found.identity.regional_sts,
            found.identity.token_expiration) == (ROLE, "sts.amazonaws.com", False, 86400)


@pytest.mark.parametrize("sa", [None, {}, annotations(audience="sa-aud")])
def test_service_account_without_role_falls_through_to_the_config_map(sa):
    """§no-role: unknown SA or SA without role ⇒ ConfigMap ns/name, then */name."""
    config_map = {"ns/sa": {"RoleARN": ROLE, "Audience": "cm-aud", "TokenExpiration": 2400}}
    found = resolve("ns", "sa", tables(sa, config_map), DEFAULTS)
    assert found.identity.mode is Mode.WEB_IDENTITY
    assert (found.identity.role_arn, found.identity.audience, found.identity.token_expiration) == (
        ROLE, "cm-aud", 2400,
    )
    assert found.service_account_known is (sa is not None)


def test_config_map_precedence_in_resolve_exact_then_glob_then_star():
    config_map = {
        "*/sa": {"RoleARN": "arn:aws:iam::111122223333:role/star"},
        "n*/sa": {"RoleARN": "arn:aws:iam::111122223333:role/glob"},
        "ns/sa": {"RoleARN": "arn:aws:iam::111122223333:role/exact"},
    }
    table = tables(None, config_map)
    assert resolve("ns", "sa", table, DEFAULTS).identity.role_arn.endswith("/exact")
    assert resolve("nx", "sa", table, DEFAULTS).identity.role_arn.endswith("/glob")
    assert resolve("zz", "sa", table, DEFAULTS).identity.role_arn.endswith("/star")


def test_config_map_entry_without_role_does_not_mutate():
    found = resolve("ns", "sa", tables(None, {"ns/sa": {"Audience": "x"}}), DEFAULTS)
    assert found.identity is None


def test_unknown_service_account_resolves_to_no_identity():
    found = resolve("ns", "sa", IdentityTables(), DEFAULTS)
    assert found.identity is None
    assert found.service_account_known is False


def test_known_service_account_without_role_resolves_to_no_identity_but_is_known():
    """§web-identity: found without role ⇒ no mutation, and not a "missing SA"."""
    found = resolve("ns", "sa", tables({}), DEFAULTS)
    assert found.identity is None
    assert found.service_account_known is True
    assert found.reason != resolve("ns", "sa", IdentityTables(), DEFAULTS).reason


def test_web_identity_takes_audience_sts_and_expiration_from_the_service_account():
    settings = MutationSettings(token_audience="flag-aud", sts_regional_endpoint=True, token_expiration=5000)
    found = resolve("ns", "sa", tables(annotations(role_arn=ROLE), settings=settings), settings).identity
    assert (found.mode, found.audience, found.regional_sts, found.token_expiration) == (
        Mode.WEB_IDENTITY, "flag-aud", True, 5000,
    )


@pytest.mark.parametrize("document", [{"identities": {}}, {"identities": ""}, {"identities": 0}])
def test_identities_that_are_not_a_list_are_an_error_not_an_empty_set(document):
    """docs/reference.md#identity-files: a malformed file keeps the previous identities, so it
    must not parse as 'none'."""
    with pytest.raises(ValueError):
        parse_pod_identities(document)


def test_a_config_map_whose_config_is_null_maps_nothing(tmp_path):
    from injector.sources.manifests import load_config_map

    manifest = tmp_path / "cm.yaml"
    manifest.write_text("kind: ConfigMap\nmetadata: {name: pod-identity-webhook}\ndata: {config: 'null'}\n")
    assert len(load_config_map(manifest, DEFAULTS)) == 0

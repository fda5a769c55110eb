"""Strict, independent checks of the documents the release lane emits.

The authorities are other people's implementations, installed by
ci/validators.sh into a venv:

- in-toto Statement v1, SLSA Provenance v1 and test-result v0.1: the in-toto
  project's protobuf bindings (`in-toto-attestation`), parsed with
  `google.protobuf.json_format` and unknown fields rejected; the rules the
  bindings' Go validators enforce (required fields, digest encodings) are
  applied on top, since the Python package ships only a few of them.
- SPDX 2.3 JSON: the SPDX project's `spdx-tools` parser and full validator;
  as spdx-tools silently drops fields it does not know, every key of the input
  must survive a round trip through spdx-tools' own model and JSON writer.

Each check returns a list of reasons (empty: the document conforms).
"""

import base64
import binascii
import io
import json
import os
import re
import sys


def _ensure_venv():
    """Re-executes the calling script under the validators' venv when the
    checkers are not importable from the current interpreter."""
    try:
        import google.protobuf.json_format  # noqa: F401
        import in_toto_attestation  # noqa: F401
        import spdx_tools  # noqa: F401

        return
    except ImportError:
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    venv = os.environ.get("LANE_VALIDATORS") or os.path.join(root, "target", "validators")
    python = os.path.join(venv, "bin", "python")
    if os.path.exists(python) and os.path.realpath(sys.prefix) != os.path.realpath(venv):
        os.execv(python, [python, os.path.abspath(sys.argv[0]), *sys.argv[1:]])
    sys.stderr.write(
        f"the validators are not installed in {venv}: run bash ci/validators.sh\n"
    )
    sys.exit(2)


_ensure_venv()

from google.protobuf import json_format  # noqa: E402
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2  # noqa: E402
from in_toto_attestation.predicates.test_result.v0 import test_result_pb2  # noqa: E402
from in_toto_attestation.v1 import statement_pb2  # noqa: E402

STATEMENT_V1 = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
TEST_RESULT_V01 = "https://in-toto.io/attestation/test-result/v0.1"
SPDX_DOCUMENT_V23 = "https://spdx.dev/Document/v2.3"
PAYLOAD_INTOTO = "application/vnd.in-toto+json"

# Fixed-size digest algorithms of in-toto's DigestSet, in bytes (as the
# bindings' Go ResourceDescriptor validator knows them).
DIGEST_SIZES = {
    "md5": 16, "sha1": 20, "sha224": 28, "sha512_224": 28, "sha256": 32,
    "sha512_256": 32, "sha384": 48, "sha512": 64, "sha3_224": 28,
    "sha3_256": 32, "sha3_384": 48, "sha3_512": 64, "gitCommit": 20,
    "dirHash": 32,
}
TEST_RESULTS = {"PASSED", "WARNED", "FAILED"}
# RFC 3986: scheme ":" hier-part, no whitespace.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]+$")


class Invalid(Exception):
    pass


def load_json(text, where):
    """Parses JSON, rejecting duplicate keys (the last one would silently win)."""

    def pairs(items):
        out = {}
        for k, v in items:
            if k in out:
                raise Invalid(f"{where}: duplicate key {k!r}")
            out[k] = v
        return out

    try:
        return json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as e:
        raise Invalid(f"{where}: not JSON: {e}") from None


def _strict_parse(obj, message, where):
    """Parses `obj` into `message` with protobuf's JSON parser, unknown fields
    rejected; then rejects proto field names (json_format accepts
    `build_type` for `buildType`, the in-toto JSON form does not)."""
    try:
        json_format.ParseDict(obj, message, ignore_unknown_fields=False)
    except json_format.ParseError as e:
        raise Invalid(f"{where}: {e}") from None
    _json_names_only(obj, message.DESCRIPTOR, where)
    return message


def _json_names_only(obj, descriptor, where):
    if descriptor.full_name.startswith("google.protobuf."):
        return  # Struct, Value, Timestamp: free-form or scalar
    if not isinstance(obj, dict):
        return
    fields = {f.json_name: f for f in descriptor.fields}
    for key, value in obj.items():
        f = fields.get(key)
        if f is None:
            raise Invalid(f"{where}: unknown field {key!r} (the schema names {sorted(fields)})")
        if f.message_type is None or f.message_type.GetOptions().map_entry:
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            sub = f"{where}.{key}" + (f"[{i}]" if isinstance(value, list) else "")
            _json_names_only(item, f.message_type, sub)


def _uri(value, what, where):
    if not _URI.match(value):
        raise Invalid(f"{where}: {what} {value!r} is not a URI (RFC 3986: scheme:rest)")


def _resource_descriptor(rd, where, need_digest=False):
    """in-toto ResourceDescriptor v1 rules."""
    if not rd.name and not rd.uri and not rd.digest and not rd.content:
        raise Invalid(f"{where}: a ResourceDescriptor needs one of name, uri, digest or content")
    if need_digest and not rd.digest:
        raise Invalid(f"{where}: a subject needs a digest")
    if rd.uri:
        _uri(rd.uri, "uri", where)
    if rd.download_location:
        _uri(rd.download_location, "downloadLocation", where)
    for alg, value in rd.digest.items():
        size = DIGEST_SIZES.get(alg)
        if size is None:
            continue  # custom algorithms are allowed
        try:
            raw = binascii.unhexlify(value)
        except (binascii.Error, ValueError):
            raise Invalid(f"{where}: digest {alg} is not hex: {value!r}") from None
        if len(raw) != size:
            raise Invalid(f"{where}: digest {alg} has {len(raw)} bytes, wants {size}")


def check_provenance(predicate, where):
    """SLSA Provenance v1 (required fields as the bindings' validators)."""
    p = _strict_parse(predicate, provenance_pb2.Provenance(), where)
    bd, rd = p.build_definition, p.run_details
    if not p.HasField("build_definition"):
        raise Invalid(f"{where}: buildDefinition is required")
    if not bd.build_type:
        raise Invalid(f"{where}: buildDefinition.buildType is required")
    _uri(bd.build_type, "buildDefinition.buildType", where)
    if not bd.HasField("external_parameters"):
        raise Invalid(f"{where}: buildDefinition.externalParameters is required")
    for i, dep in enumerate(bd.resolved_dependencies):
        _resource_descriptor(dep, f"{where}.buildDefinition.resolvedDependencies[{i}]")
    if not p.HasField("run_details"):
        raise Invalid(f"{where}: runDetails is required")
    if not rd.HasField("builder"):
        raise Invalid(f"{where}: runDetails.builder is required")
    if not rd.builder.id:
        raise Invalid(f"{where}: runDetails.builder.id is required")
    _uri(rd.builder.id, "runDetails.builder.id", where)
    for i, dep in enumerate(rd.builder.builder_dependencies):
        _resource_descriptor(dep, f"{where}.runDetails.builder.builderDependencies[{i}]")
    for i, dep in enumerate(rd.byproducts):
        _resource_descriptor(dep, f"{where}.runDetails.byproducts[{i}]")


def check_test_result(predicate, where):
    """in-toto test-result v0.1: result and configuration are required."""
    t = _strict_parse(predicate, test_result_pb2.TestResult(), where)
    if t.result not in TEST_RESULTS:
        raise Invalid(f"{where}: result {t.result!r} is not one of {sorted(TEST_RESULTS)}")
    if not t.configuration:
        raise Invalid(f"{where}: configuration is required (a list of ResourceDescriptors)")
    for i, c in enumerate(t.configuration):
        _resource_descriptor(c, f"{where}.configuration[{i}]")
    if t.url:
        _uri(t.url, "url", where)


def check_statement_obj(obj, where):
    if not isinstance(obj, dict):
        raise Invalid(f"{where}: a statement is a JSON object")
    s = _strict_parse(obj, statement_pb2.Statement(), where)
    if s.type != STATEMENT_V1:
        raise Invalid(f"{where}: _type is {s.type!r}, wants {STATEMENT_V1!r}")
    if not s.subject:
        raise Invalid(f"{where}: at least one subject is required")
    for i, sub in enumerate(s.subject):
        _resource_descriptor(sub, f"{where}.subject[{i}]", need_digest=True)
    if not s.predicate_type:
        raise Invalid(f"{where}: predicateType is required")
    _uri(s.predicate_type, "predicateType", where)
    predicate = obj.get("predicate")
    if not isinstance(predicate, dict) or not predicate:
        raise Invalid(f"{where}: predicate must be a non-empty object")
    pwhere = f"{where}.predicate"
    if s.predicate_type == SLSA_PROVENANCE_V1:
        check_provenance(predicate, pwhere)
    elif s.predicate_type == TEST_RESULT_V01:
        check_test_result(predicate, pwhere)
    elif s.predicate_type == SPDX_DOCUMENT_V23:
        reasons = check_spdx_obj(predicate, pwhere)
        if reasons:
            raise Invalid("; ".join(reasons))
    else:
        raise Invalid(
            f"{where}: predicateType {s.predicate_type!r} has no strict checker here "
            f"(known: {SLSA_PROVENANCE_V1}, {TEST_RESULT_V01}, {SPDX_DOCUMENT_V23})"
        )
    return s.predicate_type


def check_statement_file(path):
    """A bare statement or a DSSE envelope whose payload is one. Returns the
    predicate type; raises Invalid with the reason."""
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    obj = load_json(text, path)
    if isinstance(obj, dict) and "payloadType" in obj:
        unknown = set(obj) - {"payloadType", "payload", "signatures"}
        if unknown:
            raise Invalid(f"{path}: DSSE envelope has unknown fields {sorted(unknown)}")
        if obj["payloadType"] != PAYLOAD_INTOTO:
            raise Invalid(f"{path}: payloadType is {obj['payloadType']!r}, wants {PAYLOAD_INTOTO!r}")
        sigs = obj.get("signatures")
        if not isinstance(sigs, list):
            raise Invalid(f"{path}: DSSE envelope needs a signatures list")
        for i, sig in enumerate(sigs):
            if not isinstance(sig, dict) or not isinstance(sig.get("sig"), str) or set(sig) - {"keyid", "sig"}:
                raise Invalid(f"{path}: signatures[{i}] must be {{keyid?, sig}}")
        try:
            payload = base64.b64decode(obj.get("payload", ""), validate=True)
        except (binascii.Error, ValueError):
            raise Invalid(f"{path}: DSSE payload is not standard base64") from None
        obj = load_json(payload.decode("utf-8"), f"{path} (payload)")
        where = f"{path} (payload)"
    else:
        where = path
    return check_statement_obj(obj, where)


# ---- SPDX 2.3 ----------------------------------------------------------

# Spec fields spdx-tools' model reads but writes back in another form.
_SPDX_CONVERTED = {"documentDescribes", "packages[].hasFiles"}


def _key_paths(obj, prefix=""):
    out = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{prefix}.{k}" if prefix else k
            out.add(p)
            out |= _key_paths(v, p)
    elif isinstance(obj, list):
        for v in obj:
            out |= _key_paths(v, prefix + "[]")
    return out


def check_spdx_obj(obj, where):
    from spdx_tools.spdx.parser.error import SPDXParsingError
    from spdx_tools.spdx.parser.jsonlikedict.json_like_dict_parser import JsonLikeDictParser
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document
    from spdx_tools.spdx.writer.json.json_writer import write_document_to_stream

    if not isinstance(obj, dict):
        return [f"{where}: an SPDX document is a JSON object"]
    if obj.get("spdxVersion") != "SPDX-2.3":
        return [f"{where}: spdxVersion is {obj.get('spdxVersion')!r}, wants 'SPDX-2.3'"]
    try:
        doc = JsonLikeDictParser().parse(obj)
    except SPDXParsingError as e:
        return [f"{where}: {m}" for m in e.get_messages()]
    except Exception as e:  # noqa: BLE001 - spdx-tools raises plain errors on wrong types
        return [f"{where}: spdx-tools cannot read it: {type(e).__name__}: {e}"]
    reasons = [f"{where}: {m.validation_message}" for m in validate_full_spdx_document(doc, "SPDX-2.3")]
    out = io.StringIO()
    write_document_to_stream(doc, out, validate=False)
    known = _key_paths(json.loads(out.getvalue()))
    unknown = sorted(p for p in _key_paths(obj) - known if p not in _SPDX_CONVERTED)
    reasons += [f"{where}: unknown field {p!r} (not in the SPDX 2.3 model)" for p in unknown]
    return reasons


def check_spdx_file(path):
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    return check_spdx_obj(load_json(text, path), path)

#!/usr/bin/env bash
# Installs the independent validators the conformance tests run into a venv:
#   in-toto-attestation (protobuf bindings of in-toto Statement v1, SLSA
#   Provenance v1 and test-result v0.1) and spdx-tools (SPDX 2.3), pinned in
#   ci/validate/requirements.txt.
# The venv is $LANE_VALIDATORS (default: target/validators under the
# repository root). Packages come through the machine's own pip configuration;
# no index is named here. Re-running is cheap: the venv is rebuilt only when
# the requirements changed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${LANE_VALIDATORS:-$root/target/validators}"
requirements="$root/ci/validate/requirements.txt"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
stamp="$venv/.lane-requirements.sha256"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; then
  echo "validators: $venv is up to date"
  exit 0
fi

rm -rf "$venv"
python3 -m venv "$venv" || {
  echo "validators: python3 -m venv failed; install it with: apt-get install -y python3-venv" >&2
  exit 1
}
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  --require-virtualenv -r "$requirements"
"$venv/bin/python" -m pip check
# Prove the checkers load before declaring the venv ready.
"$venv/bin/python" - <<'PY'
import google.protobuf.json_format
import in_toto_attestation.v1.statement_pb2
import in_toto_attestation.predicates.provenance.v1.provenance_pb2
import in_toto_attestation.predicates.test_result.v0.test_result_pb2
import spdx_tools.spdx.parser.parse_anything
import spdx_tools.spdx.validation.document_validator
PY
echo "$want" >"$stamp"
echo "validators: installed into $venv"

#!/usr/bin/env bash
# Installs what the tests need on a machine of this project's kind (Debian,
# Rust, a running Docker Engine), and nothing that is already there, so a
# second run takes a second or two:
#   - Debian packages: docker-registry (the real OCI registry the tests
#     publish to), apache2-utils (htpasswd, the registry with auth), skopeo
#     and umoci (independent checkers of what the lane writes), time (GNU
#     time, peak memory in `cargo xtask bench`), python3-venv (the
#     validators' venv), apt-file (its apt configuration makes apt-get update
#     fetch Debian's Contents index, from which drift names packages),
#     openssl (checks the lane's signatures; the test OIDC issuer's RS256
#     keys and signatures), pigz (the parallel gzip reference of
#     `cargo xtask bench`);
#   - apt's indexes: Packages (lock, Debian base images) and Contents
#     (drift), refreshed with apt-get update when absent (LANE_APT_UPDATE=1
#     forces a refresh);
#   - the independent in-toto/SLSA and SPDX validators (ci/validators.sh, a
#     venv from PyPI through the machine's pip configuration);
#   - cargo-nextest and clippy when cargo lacks them.
# Packages come through the machine's own apt configuration; no mirror is
# named here. Installing Debian packages needs root: run as another user, it
# prints the one apt-get line to run and stops.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export DEBIAN_FRONTEND=noninteractive

packages=(docker-registry apache2-utils skopeo umoci time python3-venv apt-file openssl pigz)
missing=()
for p in "${packages[@]}"; do
  if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]]; then
    missing+=("$p")
  fi
done

# True when apt keeps at least one index file of this kind (Identifier).
has_index() {
  local f
  while IFS= read -r f; do
    [[ -n "$f" && -f "$f" ]] && return 0
  done < <(apt-get indextargets --format '$(FILENAME)' "Identifier: $1" 2>/dev/null)
  return 1
}

as_root() {
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "setup: $1 needs root; run as root:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends ${packages[*]}" >&2
    exit 1
  fi
}

if ((${#missing[@]})); then
  as_root "installing ${missing[*]}"
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # apt-file's configuration is in place now: fetch the Contents index too.
  apt-get update -qq
elif [[ "${LANE_APT_UPDATE:-0}" == 1 ]] || ! has_index Packages || ! has_index Contents-deb; then
  as_root "refreshing apt's indexes"
  echo "setup: apt-get update (Packages and Contents indexes)"
  apt-get update -qq
fi
if ! has_index Contents-deb; then
  echo "setup: apt keeps no Contents index after apt-get update; check that apt-file's /etc/apt/apt.conf.d/50apt-file.conf is in place" >&2
  exit 1
fi

# Independent strict validators (in-toto/SLSA, SPDX) from PyPI, pinned, in a
# venv; rebuilt only when ci/validate/requirements.txt changed.
bash "$root/ci/validators.sh"

# Cargo tools the test command and .ci/run use.
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest (cargo install --locked)"
  cargo install --locked cargo-nextest
fi
if ! cargo clippy --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null; then
    rustup component add clippy
  else
    echo "setup: cargo clippy is missing and there is no rustup to add it" >&2
    exit 1
  fi
fi
# The Docker Engine is part of the machine (it is never installed here).
if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
  echo "setup: warning: no Docker Engine answers (docker version); the smoke, drift and release tests need one running" >&2
fi
echo "setup: ready"

//! Python runtime images (issue 13): pinned wheels, import drift and the
//! smoke-import, end to end on the sample image `pyhello` (on
//! `base-python`, from pinned Debian packages) with real wheels from PyPI
//! (through the machine's pip configuration), real Debian packages, the
//! real Docker Engine and the real Distribution registry.

use std::fs;
use std::process::Output;

use crate::support::Fixture;
use crate::support::registry::{Creds, Registry};
use serde_json::Value;

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON on stdout ({e}):\n{}", text(out)))
}

/// `drift pyhello --json`: (exit ok, the image's report, stderr).
fn drift(f: &Fixture) -> (bool, Value, String) {
    let out = f.xtask(&["drift", "pyhello", "--json"]);
    let v = json_of(&out);
    let img = v["images"][0].clone();
    (
        out.status.success(),
        img,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn gate<'a>(image: &'a Value, name: &str) -> &'a Value {
    image["decision"]["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"] == name)
        .unwrap_or_else(|| panic!("no gate {name} in {image}"))
}

fn pyhello(report: &Value) -> &Value {
    report["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["image"] == "pyhello")
        .unwrap_or_else(|| panic!("no pyhello in {report}"))
}

/// The tag `platform/pyhello:latest` in the local store, if any.
fn local_tag(f: &Fixture) -> Option<String> {
    let index = fs::read(f.path("target/local-registry/platform/pyhello/index.json")).ok()?;
    let v: Value = serde_json::from_slice(&index).unwrap();
    v["manifests"]
        .as_array()?
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "latest")
        .map(|m| m["digest"].as_str().unwrap().to_string())
}

fn smoke_imports(out: &Output) -> Value {
    let v = json_of(out);
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "python-imports")
        .unwrap_or_else(|| panic!("no python-imports check in {v}"))
        .clone()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Appends a line to a file of the fixture.
fn append(f: &Fixture, rel: &str, line: &str) {
    let mut t = fs::read_to_string(f.path(rel)).unwrap();
    t.push_str(line);
    f.write(rel, &t);
}

fn replace(f: &Fixture, rel: &str, from: &str, to: &str) {
    let t = fs::read_to_string(f.path(rel)).unwrap();
    assert!(t.contains(from), "{rel} has no {from:?}");
    f.write(rel, &t.replacen(from, to, 1));
}

/// Acceptance 1: pyhello builds byte-reproducibly, its drift (ELF and
/// Python) and smoke-import pass, and release accepts it into the local
/// store and, from a CI identity, into the real registry; the provenance
/// lists every wheel and .deb with its package URL.
#[test]
fn pyhello_is_reproducible_clean_and_released() {
    let f = Fixture::copy_of_repo("py-release");
    let repro = f.ok(&["repro", "pyhello", "--json"]);
    let repro: Value = serde_json::from_str(&repro).unwrap();
    for i in repro["images"].as_array().unwrap() {
        assert_eq!(i["equal"], true, "{i}");
    }

    let (ok, img, err) = drift(&f);
    assert!(ok, "drift of pyhello fails:\n{err}");
    let py = &img["python"];
    assert_eq!(py["unresolved"], serde_json::json!([]), "{py}");
    assert_eq!(py["missing_requirements"], serde_json::json!([]));
    let dists: Vec<(String, String)> = py["distributions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().into(),
                d["kind"].as_str().unwrap().into(),
            )
        })
        .collect();
    for want in [
        ("python-dateutil", "wheel"),
        ("six", "wheel"),
        ("python3-yaml", "debian"),
    ] {
        assert!(dists.contains(&(want.0.into(), want.1.into())), "{dists:?}");
    }
    let yaml = py["imports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["module"] == "yaml")
        .unwrap();
    assert_eq!(yaml["provider"]["name"], "python3-yaml");
    // The extension module's library resolves (ELF drift) to libyaml-0-2.
    let ext = img["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| {
            o["path"]
                .as_str()
                .unwrap()
                .contains("yaml/_yaml.cpython-311")
        })
        .expect("the _yaml extension is analysed");
    assert!(
        strings(&ext["depends_on"]).contains(&"libyaml-0-2".to_string()),
        "{ext}"
    );

    let out = f.xtask(&["smoke", "pyhello", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let imports = smoke_imports(&out);
    assert_eq!(imports["passed"], true, "{imports}");
    let loaded = strings(&imports["python_imports"]["modules_loaded"]);
    for m in ["yaml._yaml", "dateutil", "six", "pyhello"] {
        assert!(
            loaded.contains(&m.to_string()),
            "{m} not imported: {loaded:?}"
        );
    }

    let out = f.xtask(&["release", "pyhello", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report = json_of(&out);
    let p = pyhello(&report);
    assert_eq!(p["accepted"], true, "{p}");
    for g in [
        "reproducible",
        "no-drift",
        "smoke",
        "pinned-inputs",
        "sbom-complete",
    ] {
        assert_eq!(gate(p, g)["state"], "passed", "{g}: {}", gate(p, g));
    }
    let smoke = &gate(p, "smoke")["evidence"];
    let check = smoke["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "python-imports")
        .expect("the smoke gate ran the smoke-import");
    assert!(
        strings(&check["python_imports"]["modules_loaded"]).contains(&"yaml._yaml".to_string())
    );
    assert!(local_tag(&f).is_some());
    // Provenance: every wheel and .deb as a resolved dependency.
    let deps = p["provenance"]["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap()
        .clone();
    let uris: Vec<String> = deps
        .iter()
        .filter_map(|d| d["uri"].as_str().map(str::to_string))
        .collect();
    for purl in [
        "pkg:pypi/python-dateutil@2.9.0.post0",
        "pkg:pypi/six@1.17.0",
        "pkg:deb/debian/python3-yaml@6.0-3%2Bb2?arch=amd64",
        "pkg:deb/debian/python3.11-minimal@",
    ] {
        let d = deps
            .iter()
            .find(|d| d["uri"].as_str().is_some_and(|u| u.starts_with(purl)))
            .unwrap_or_else(|| panic!("{purl} is not in resolvedDependencies: {uris:?}"));
        assert_eq!(d["digest"]["sha256"].as_str().unwrap().len(), 64, "{d}");
    }

    // From a CI identity into the real registry.
    let reg = Registry::start();
    // A verified CI run: the fixture's policy trusts the test issuer.
    let creds = Creds::none().ci(&f);
    let out = creds.xtask(
        &f,
        &["release", "pyhello", "--registry", &reg.host(), "--json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let report = json_of(&out);
    assert_eq!(pyhello(&report)["accepted"], true);
    assert_eq!(
        reg.tag_digest("platform/pyhello", "latest").as_deref(),
        pyhello(&report)["digest"].as_str(),
        "{report}"
    );
}

/// Acceptance 2: the incident, replayed. The application gains `import
/// idna`, a distribution nobody curated: drift fails naming file:line, the
/// module and the distribution to add; release is rejected and no tag
/// moves; run anyway, the smoke-import fails with ModuleNotFoundError for
/// idna. Curating it (image.toml + lock) makes drift, smoke and release pass.
#[test]
fn the_incident_is_caught_before_publishing_and_curating_fixes_it() {
    let f = Fixture::copy_of_repo("py-incident");
    let svc = "images/pyhello/app/pyhello/service.py";
    let line = fs::read_to_string(f.path(svc)).unwrap().lines().count() + 1;
    append(&f, svc, "import idna\n");
    f.commit("service: use idna");

    let (ok, img, err) = drift(&f);
    assert!(!ok, "drift must fail");
    let want = format!(
        "images/pyhello/app/pyhello/service.py:{line}: `import idna`: module idna is not in the image"
    );
    assert!(err.contains(&want), "{want}\nnot in:\n{err}");
    assert!(
        err.contains("python3-idna"),
        "the distribution to add is named:\n{err}"
    );
    let un = &img["python"]["unresolved"][0];
    assert_eq!(un["module"], "idna");
    assert_eq!(un["line"], line as u64);
    assert!(
        strings(&un["providers"]).contains(&"deb:python3-idna".to_string()),
        "Debian's Contents index names the package: {un}"
    );

    let out = f.xtask(&["release", "pyhello", "--json"]);
    assert!(
        !out.status.success(),
        "release must be rejected:\n{}",
        text(&out)
    );
    let report = json_of(&out);
    let p = pyhello(&report);
    assert_eq!(p["accepted"], false);
    assert_eq!(gate(p, "no-drift")["state"], "failed");
    assert!(
        gate(p, "no-drift")["summary"]
            .as_str()
            .unwrap()
            .contains("import idna")
    );
    assert_eq!(gate(p, "smoke")["state"], "failed");
    assert_eq!(p["tagged"], serde_json::json!([]));
    assert_eq!(local_tag(&f), None, "no tag may move");

    let out = f.xtask(&["smoke", "pyhello", "--json"]);
    assert!(!out.status.success());
    let imports = smoke_imports(&out);
    let failed = &imports["python_imports"]["failed"][0];
    assert_eq!(failed["module"], "idna", "{imports}");
    assert_eq!(
        failed["error"],
        "ModuleNotFoundError: No module named 'idna'"
    );
    assert!(
        strings(&imports["failures"])
            .iter()
            .any(|f| f.starts_with("import of module idna failed: ModuleNotFoundError")),
        "{imports}"
    );

    // Curate it as drift said: the Debian package, then lock.
    replace(
        &f,
        "images/pyhello/image.toml",
        "packages = [\"python3-yaml\"]",
        "packages = [\"python3-yaml\", \"python3-idna\"]",
    );
    f.ok(&["lock"]);
    f.commit("curate python3-idna");
    let (ok, _, err) = drift(&f);
    assert!(ok, "{err}");
    let out = f.xtask(&["release", "pyhello", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(pyhello(&json_of(&out))["accepted"], true);
    assert!(local_tag(&f).is_some());
}

/// Acceptance 3: a curated wheel whose Requires-Dist is not in the image
/// (the lock left six out) fails drift naming both distributions.
#[test]
fn a_missing_requires_dist_fails_drift_naming_both() {
    let f = Fixture::copy_of_repo("py-reqdist");
    let lock = fs::read_to_string(f.path("lockfiles/python.lock")).unwrap();
    let six = lock
        .find("[[wheel]]\nname = \"six\"")
        .expect("six is locked");
    let end = lock[six + 1..]
        .find("[[wheel]]")
        .map_or(lock.len(), |i| six + 1 + i);
    f.write(
        "lockfiles/python.lock",
        &format!("{}{}", &lock[..six], &lock[end..]),
    );
    let (ok, img, err) = drift(&f);
    assert!(!ok);
    assert!(
        err.contains("distribution python-dateutil 2.9.0.post0 requires six (six >=1.5), which is not installed"),
        "{err}"
    );
    assert_eq!(img["python"]["missing_requirements"][0]["requires"], "six");
    // The lock is not closed any more: --check names the requirement it
    // cannot meet inside the lock, and the fix.
    let err = f.fails(&["lock", "--check"]);
    assert!(
        err.contains("no wheel in lockfiles/python.lock satisfies six>=1.5")
            && err.contains("run cargo xtask lock"),
        "{err}"
    );
}

/// Acceptance 4: python3-yaml curated but libyaml-0-2 left out fails drift,
/// naming libyaml-0.so.2, libyaml-0-2 and the extension module.
#[test]
fn python3_yaml_without_libyaml_fails_drift_naming_the_extension() {
    let f = Fixture::copy_of_repo("py-libyaml");
    replace(
        &f,
        "images/pyhello/image.toml",
        "packages = [\"python3-yaml\"]",
        "packages = [\"python3-yaml\"]\nexclude = [\"libyaml-0-2\"]",
    );
    f.ok(&["lock"]);
    let (ok, img, err) = drift(&f);
    assert!(!ok);
    let line = err
        .lines()
        .find(|l| l.contains("Python extension module yaml._yaml"))
        .unwrap_or_else(|| panic!("no extension failure in:\n{err}"));
    for needle in [
        "/usr/lib/python3/dist-packages/yaml/_yaml.cpython-311-x86_64-linux-gnu.so",
        "debian python3-yaml",
        "needs libyaml-0.so.2",
        "package libyaml-0-2",
    ] {
        assert!(line.contains(needle), "{needle} not in {line}");
    }
    assert_eq!(
        img["python"]["extension_problems"][0]["library"],
        "libyaml-0.so.2"
    );
}

/// Acceptance 5: optional, TYPE_CHECKING and non-literal dynamic imports
/// are reported as such and do not fail drift; a curated distribution
/// nothing imports is listed as unused.
#[test]
fn optional_type_checking_and_dynamic_imports_are_reported_and_unused_listed() {
    let f = Fixture::copy_of_repo("py-kinds");
    replace(
        &f,
        "images/pyhello/image.toml",
        "requirements = [\"python-dateutil==2.9.0.post0\"]",
        "requirements = [\"python-dateutil==2.9.0.post0\", \"idna==3.10\"]",
    );
    f.ok(&["lock"]);
    let (ok, img, err) = drift(&f);
    assert!(ok, "{err}");
    let py = &img["python"];
    let site = |list: &str| -> Vec<(String, String)> {
        py[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["module"].as_str().unwrap().to_string(),
                    i["code"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert!(
        site("optional").contains(&("ujson".into(), "import ujson as fastjson".into())),
        "{py}"
    );
    assert!(site("type_checking").contains(&(
        "http.server".into(),
        "from http.server import BaseServer".into()
    )));
    assert_eq!(
        site("dynamic"),
        [(String::new(), "importlib.import_module(name)".to_string())]
    );
    assert_eq!(py["dynamic"][0]["status"], "not_checked");
    assert_eq!(strings(&py["unused"]), ["idna"]);
    let human = f.ok(&["drift", "pyhello"]);
    assert!(human.contains("optional import: images/pyhello/app/pyhello/service.py:18: import ujson as fastjson (unresolved)"), "{human}");
    assert!(human.contains("unused distribution: idna"), "{human}");
}

/// (name, data, symlink target) of one crafted zip entry.
type ZipEntry<'a> = (&'a str, &'a str, Option<&'a str>);

/// A zip written by Python's zipfile (an independent writer): (name, data,
/// symlink target) entries.
fn crafted_wheel(entries: &[ZipEntry]) -> Vec<u8> {
    let dir = crate::support::TempDir::new("wheel");
    let out = dir.path().join("w.whl");
    let spec = serde_json::to_string(
        &entries
            .iter()
            .map(|(n, d, l)| serde_json::json!([n, d, l]))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let script = r#"
import json, sys, zipfile, hashlib, base64
entries = json.loads(sys.argv[2])
record = []
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for name, data, link in entries:
        info = zipfile.ZipInfo(name)
        if link is not None:
            info.external_attr = (0o120777 << 16)
            z.writestr(info, link)
            continue
        info.external_attr = (0o100644 << 16)
        z.writestr(info, data)
        if not name.endswith("RECORD"):
            h = base64.urlsafe_b64encode(hashlib.sha256(data.encode()).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={h},{len(data.encode())}")
    if not any(n.endswith("RECORD") for n, _, _ in entries):
        z.writestr("six-1.17.0.dist-info/RECORD", "\n".join(record) + "\nsix-1.17.0.dist-info/RECORD,,\n")
"#;
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&out)
        .arg(&spec)
        .status()
        .unwrap();
    assert!(status.success());
    fs::read(&out).unwrap()
}

/// Puts `bytes` in place of the locked six wheel: the lock names its size
/// and sha256 (so it passes verification) and the cache holds it.
fn swap_six(f: &Fixture, bytes: &[u8]) {
    let lock = fs::read_to_string(f.path("lockfiles/python.lock")).unwrap();
    let six = lock.find("name = \"six\"").unwrap();
    let (head, tail) = lock.split_at(six);
    let size_at = tail.find("size = ").unwrap();
    let size_end = size_at + tail[size_at..].find('\n').unwrap();
    let sha_at = tail.find("sha256 = ").unwrap();
    let sha_end = sha_at + tail[sha_at..].find('\n').unwrap();
    let hex = crate::support::registry::sha256_of(bytes);
    let hex = hex.trim_start_matches("sha256:");
    let tail = format!(
        "{}size = {}{}sha256 = \"sha256:{hex}\"{}",
        &tail[..size_at],
        bytes.len(),
        &tail[size_end..sha_at],
        &tail[sha_end..]
    );
    f.write("lockfiles/python.lock", &format!("{head}{tail}"));
    let cache = f.path(&format!("target/lane-cache/wheels/{hex}.whl"));
    fs::create_dir_all(cache.parent().unwrap()).unwrap();
    fs::write(cache, bytes).unwrap();
}

/// Acceptance 6: bad input is refused before anything is installed, with a
/// clear error and no layout written: a wheel whose sha256 does not match
/// the lock, a wheel with `../`, an absolute path or a symlink, a RECORD
/// whose hash does not match a file, a source file that does not parse.
#[test]
fn bad_wheels_and_sources_are_refused_before_anything_is_installed() {
    let f = Fixture::copy_of_repo("py-bad");
    let layout = f.path("target/images/pyhello");
    let meta = "Metadata-Version: 2.1\nName: six\nVersion: 1.17.0\n\n";
    let wheel = "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n";
    let good = [
        ("six.py", "x = 1\n", None),
        ("six-1.17.0.dist-info/METADATA", meta, None),
        ("six-1.17.0.dist-info/WHEEL", wheel, None),
    ];
    let cases: Vec<(Vec<ZipEntry>, &str)> = vec![
        (
            vec![("../../../../tmp/evil.py", "x", None)],
            "\"../../../../tmp/evil.py\" has a \"..\" component",
        ),
        (
            vec![("/etc/cron.d/evil", "x", None)],
            "\"/etc/cron.d/evil\" is an absolute path",
        ),
        (
            vec![("six_link.py", "", Some("/etc/shadow"))],
            "\"six_link.py\" is a symlink",
        ),
        (
            vec![(
                "six-1.17.0.dist-info/RECORD",
                "six.py,sha256=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA,6\nsix-1.17.0.dist-info/METADATA,,\nsix-1.17.0.dist-info/WHEEL,,\nsix-1.17.0.dist-info/RECORD,,\n",
                None,
            )],
            "six.py: RECORD says sha256=AAAA",
        ),
    ];
    for (extra, why) in cases {
        let mut entries = good.to_vec();
        entries.extend(extra);
        swap_six(&f, &crafted_wheel(&entries));
        let err = f.fails(&["build", "pyhello"]);
        assert!(
            err.contains("wheel six-1.17.0-py2.py3-none-any.whl: the archive is refused"),
            "{err}"
        );
        assert!(err.contains(why), "{why} not in:\n{err}");
        assert!(!layout.exists(), "no layout may be written");
    }

    // A cached wheel whose bytes do not match the lock.
    let f = Fixture::copy_of_repo("py-bad-hash");
    let lock = fs::read_to_string(f.path("lockfiles/python.lock")).unwrap();
    let six = &lock[lock.find("name = \"six\"").unwrap()..];
    let hex = six.split("sha256 = \"sha256:").nth(1).unwrap()[..64].to_string();
    let cached = f.path(&format!("target/lane-cache/wheels/{hex}.whl"));
    fs::create_dir_all(cached.parent().unwrap()).unwrap();
    fs::write(&cached, b"not the wheel the lock pins").unwrap();
    let err = f.fails(&["build", "pyhello"]);
    assert!(
        err.contains("wheel six-1.17.0-py2.py3-none-any.whl (six 1.17.0): the cached copy")
            && err.contains("does not match lockfiles/python.lock"),
        "{err}"
    );
    assert!(!f.path("target/images/pyhello").exists());

    // A source file that does not parse: named by path and line, nothing built.
    fs::remove_file(&cached).unwrap();
    append(
        &f,
        "images/pyhello/app/pyhello/config.py",
        "\ndef broken(:\n    pass\n",
    );
    let lines = fs::read_to_string(f.path("images/pyhello/app/pyhello/config.py"))
        .unwrap()
        .lines()
        .count();
    let _ = fs::remove_dir_all(f.path("target/images"));
    let err = f.fails(&["build", "pyhello"]);
    let want = format!("images/pyhello/app/pyhello/config.py:{}:", lines - 1);
    assert!(
        err.contains(&want) && err.contains("Python syntax error"),
        "{want} not in:\n{err}"
    );
    assert!(!f.path("target/images").exists(), "nothing may be built");
}

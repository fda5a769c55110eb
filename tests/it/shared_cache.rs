//! The shared action cache in a registry (issue 16): runners share built
//! layers through the real Distribution registry; a poisoned entry is
//! refused; a run that is not authoritative writes nothing; the
//! reproducible gate stays an independent rebuild.

use base64::Engine as _;
use std::fs;

use serde_json::{Value, json};

use crate::support::registry::{Creds, Registry};
use crate::support::{Fixture, report, show, signed_files_workspace};

const CACHE_REPO: &str = "ci/lane-cache";

/// verify's files-only image with a second layer.
fn image() -> String {
    let image = format!(
        "{}\n[[layer]]\nname = \"two\"\nfiles = [{{ src = \"data/two.txt\", dest = \"/srv/two.txt\" }}]\n",
        crate::verify::IMAGE.split("[[smoke]]").next().unwrap()
    ) + "\n[[smoke]]"
        + crate::verify::IMAGE.split("[[smoke]]").nth(1).unwrap();
    image
}

/// A workspace with the two-layer image, committed.
fn workspace(label: &str) -> (Fixture, crate::support::TempDir, String) {
    let (f, keys, key) = signed_files_workspace(label, &image());
    f.write("images/files/data/two.txt", "two\n");
    f.commit("a second layer");
    (f, keys, key)
}

/// `build --json --cache HOST/ci/lane-cache` with `creds`: the report.
fn build(f: &Fixture, creds: &Creds, reg: &Registry) -> Value {
    let location = format!("{}/{CACHE_REPO}", reg.host());
    let out = creds.xtask(f, &["build", "--json", "--cache", &location]);
    assert!(out.status.success(), "{}", show(&out));
    report(&out)
}

fn files(r: &Value) -> &Value {
    r["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "files")
        .expect("the files image was built")
}

/// Acceptance 1 and 3: the first runner (authoritative) fills the cache;
/// the second, a clone in another directory with an empty local cache and
/// no CI identity, builds every layer from it: 0 compressions, the same
/// digests, nothing written. Its own change is built locally and not
/// written either.
#[test]
fn a_second_runner_builds_from_the_registry_cache_and_a_pull_request_writes_nothing() {
    let reg = Registry::start();
    let (a, _keys, _key) = workspace("cache-a");
    let ci = Creds::none().ci(&a);
    let first = build(&a, &ci, &reg);
    let fa = files(&first);
    let layers = fa["layers"].as_array().unwrap().len() as u64;
    assert_eq!(layers, 2);
    assert_eq!(first["shared_cache"]["writes"], true, "{first}");
    assert_eq!(fa["cache"]["misses"], layers);
    // One entry per layer, and one per image: its input key to its
    // manifest digest (issue 25, point 7).
    assert_eq!(first["shared_cache"]["written"], layers + 1);
    let entries = reg.tags(CACHE_REPO);
    assert_eq!(entries.len() as u64, layers + 1, "{entries:?}");
    assert_eq!(
        entries.iter().filter(|t| t.starts_with("layer-")).count() as u64,
        layers,
        "{entries:?}"
    );
    assert_eq!(
        entries.iter().filter(|t| t.starts_with("image-")).count(),
        1,
        "{entries:?}"
    );

    let b = Fixture::clone_of(&a, "cache-b");
    assert!(!b.path("target").exists(), "the second runner starts cold");
    let second = build(&b, &Creds::none(), &reg);
    let fb = files(&second);
    assert_eq!(second["shared_cache"]["writes"], false, "{second}");
    assert_eq!(fb["cache"]["misses"], 0, "no layer compressed: {second}");
    assert_eq!(fb["cache"]["remote_hits"], layers);
    assert_eq!(second["shared_cache"]["hits"], layers);
    assert_eq!(second["shared_cache"]["rejected"], json!([]));
    assert_eq!(fb["manifest_digest"], fa["manifest_digest"]);
    assert_eq!(fb["layers"], fa["layers"]);

    // A pull request's change: built here, never written to the cache.
    b.write("images/files/data/two.txt", "changed in a pull request\n");
    b.commit("pull request");
    let pr = build(&b, &Creds::none(), &reg);
    assert_eq!(files(&pr)["cache"]["misses"], 1, "{pr}");
    assert_eq!(pr["shared_cache"]["written"], 0);
    assert_eq!(
        reg.tags(CACHE_REPO),
        entries,
        "a pull request writes nothing"
    );
}

/// Acceptance 2: a blob altered in the registry, and a result document
/// that points at another (valid, self-consistent) layer's blob, are both
/// detected, reported and not used; the build still gives the right digest.
#[test]
fn poisoned_cache_entries_are_refused_and_the_build_stays_right() {
    let reg = Registry::start();
    let (a, _keys, _key) = workspace("poison-a");
    let ci = Creds::none().ci(&a);
    let first = build(&a, &ci, &reg);
    let right = files(&first)["manifest_digest"].clone();
    let layers: Vec<Value> = files(&first)["layers"].as_array().unwrap().clone();

    // The entry of each layer: tag -> its manifest.
    let entry_of = |layer: &Value| -> (String, Value) {
        for tag in reg.tags(CACHE_REPO) {
            let m: Value =
                serde_json::from_slice(&reg.skopeo_raw(&format!("{CACHE_REPO}:{tag}")).unwrap())
                    .unwrap();
            if m["layers"][0]["digest"] == layer["digest"] {
                return (tag, m);
            }
        }
        panic!("no cache entry for {layer}");
    };

    // 1. The blob of the first layer altered in the registry's storage.
    let blob = reg.blob_file(layers[0]["digest"].as_str().unwrap());
    let mut bytes = fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();
    let c = Fixture::clone_of(&a, "poison-c");
    let r = build(&c, &Creds::none(), &reg);
    let rejected = r["shared_cache"]["rejected"].to_string();
    assert!(rejected.contains("poisoned"), "{r}");
    assert_eq!(
        files(&r)["cache"]["misses"],
        1,
        "the altered layer was built here"
    );
    assert_eq!(files(&r)["cache"]["remote_hits"], 1);
    assert_eq!(files(&r)["manifest_digest"], right);

    // 2. The second layer's entry rewritten: its result document points at
    // the first layer's blob, with that blob's own digest, diff_id and
    // sizes (consistent in itself: only the content check can tell).
    fs::write(&blob, {
        bytes[last] ^= 0xff;
        &bytes
    })
    .unwrap();
    let (tag, _) = entry_of(&layers[1]);
    let (_, m0) = entry_of(&layers[0]);
    let doc0: Value = {
        let d = m0["config"]["digest"].as_str().unwrap();
        serde_json::from_slice(&fs::read(reg.blob_file(d)).unwrap()).unwrap()
    };
    let mut forged = doc0.clone();
    forged["key"] = json!(format!("sha256:{}", tag.trim_start_matches("layer-")));
    let remote = xtask::adapters::registry::preflight(
        &reg.host().parse().unwrap(),
        &[CACHE_REPO.to_string()],
    )
    .unwrap();
    let doc = lane_core::oci::canonical_json(&forged).unwrap();
    remote
        .push_small_blob(CACHE_REPO, doc.digest.as_str(), &doc.bytes)
        .unwrap();
    // The writer embeds the document in the config descriptor (`data`);
    // the forgery does too, consistently.
    assert!(m0["config"]["data"].is_string(), "{m0}");
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut manifest = m0.clone();
    manifest["config"]["digest"] = json!(doc.digest);
    manifest["config"]["size"] = json!(doc.size());
    manifest["config"]["data"] = json!(b64(&doc.bytes));
    let put = |manifest: &Value| {
        let manifest = lane_core::oci::canonical_json(manifest).unwrap();
        remote
            .put_manifest_read_back(
                &xtask::adapters::registry::ManifestPut {
                    repo: CACHE_REPO,
                    reference: &tag,
                    media_type: lane_core::evidence::MEDIA_MANIFEST,
                    bytes: &manifest.bytes,
                },
                "the forged entry",
            )
            .unwrap();
    };
    put(&manifest);
    let d = Fixture::clone_of(&a, "poison-d");
    let r = build(&d, &Creds::none(), &reg);
    let rejected = r["shared_cache"]["rejected"].to_string();
    assert!(
        rejected.contains(&tag) && rejected.contains("this key's entries make"),
        "{r}"
    );
    assert_eq!(files(&r)["cache"]["misses"], 1, "{r}");
    assert_eq!(files(&r)["manifest_digest"], right);

    // 3. An embedded document that is not the blob its descriptor names
    // (the first layer's document named, the forged one embedded):
    // refused before anything else is read.
    let mut m1 = m0.clone();
    m1["config"]["data"] = json!(b64(&doc.bytes));
    put(&m1);
    let e = Fixture::clone_of(&a, "poison-e");
    let r = build(&e, &Creds::none(), &reg);
    let rejected = r["shared_cache"]["rejected"].to_string();
    assert!(
        rejected.contains(&tag) && rejected.contains("embedded result document"),
        "{r}"
    );
    assert_eq!(files(&r)["cache"]["misses"], 1, "{r}");
    assert_eq!(files(&r)["manifest_digest"], right);
}

/// Acceptance 4: with a shared cache configured (and filled by an
/// authoritative run), the reproducible gate passes on a reproducible image
/// and still fails on one that embeds its build path: its second build
/// never reads a cache.
#[test]
fn the_reproducible_gate_is_unchanged_by_a_shared_cache() {
    let reg = Registry::start();
    let location = format!("{}/{CACHE_REPO}", reg.host());
    let (f, _keys, key) = workspace("cache-repro");
    let ci = Creds::none().ci(&f);
    let args = [
        "release",
        "--json",
        "--signing-key",
        &key,
        "--cache",
        &location,
    ];
    let out = ci.xtask(&f, &args);
    let r = report(&out);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(r["shared_cache"]["writes"], true);
    assert_eq!(
        crate::support::gate(&r["images"][0], "reproducible")["state"],
        "passed"
    );

    let h = Fixture::copy_of_repo("cache-nonrepro");
    crate::support::embed_build_path(&h);
    let ci = Creds::none().ci(&h);
    let out = ci.xtask(&h, &["release", "hello", "--json", "--cache", &location]);
    assert!(!out.status.success(), "{}", show(&out));
    let r = report(&out);
    let hello = crate::support::hello(&r);
    assert_eq!(
        crate::support::gate(hello, "reproducible")["state"],
        "failed",
        "{r}"
    );
    assert_eq!(hello["accepted"], false);
    assert!(r["shared_cache"]["written"].as_u64().unwrap() > 0, "{r}");
}

/// Acceptance 5: a parallel build of the generated 50-image workspace
/// (five bases, 45 images on them) gives the same digests, layer for
/// layer, as a serial one (`--jobs 1`), each from a cold cache.
#[test]
fn a_parallel_build_of_fifty_images_gives_the_serial_digests() {
    let a = Fixture::with_files("scale-serial", &[]);
    xtask::commands::bench::scale_workspace(&a.root, 50).unwrap();
    a.commit("fifty images");
    let b = Fixture::clone_of(&a, "scale-parallel");
    let serial: Value = serde_json::from_str(&a.ok(&["build", "--json", "--jobs", "1"])).unwrap();
    let parallel: Value = serde_json::from_str(&b.ok(&["build", "--json", "--jobs", "4"])).unwrap();
    let images = |r: &Value| -> Vec<(Value, Value, Value)> {
        r["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["name"].clone(),
                    i["manifest_digest"].clone(),
                    i["layers"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(images(&serial).len(), 50);
    assert_eq!(images(&serial), images(&parallel));
    for r in [&serial, &parallel] {
        let misses: u64 = r["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["cache"]["misses"].as_u64().unwrap())
            .sum();
        assert_eq!(misses, 100, "both builds were cold: {r}");
    }
}

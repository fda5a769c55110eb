//! `cargo xtask bench --quick` as a smoke check of the benchmark harness
//! (issue 8). No figure is asserted: benchmarks are measured, not timed tests.

use crate::support::{Fixture, column};

#[test]
fn bench_quick_reports_every_case_with_both_figures_and_the_ratio() {
    let f = Fixture::copy_of_repo("bench");
    let out = f.ok(&["bench", "--quick", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let cases = report["cases"].as_array().unwrap();
    let names = column(&report["cases"], "name");
    let case = |prefix: &str| {
        cases
            .iter()
            .find(|c| c["name"].as_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("no case {prefix:?} in {names:?}"))
    };
    for want in [
        "layer assembly",
        "warm rebuild",
        "rebuild after one changed file",
        "the no-secrets gate's scan",
        "peak memory",
        "layer assembly against parallel gzip",
        "cold build of 50 generated images",
        "warm no-change build (50 generated images)",
        "build with every layer cached, no file fingerprint known (50 generated images)",
        "fresh checkout, only the registry cache warm (50 generated images)",
        "release of 6 generated images on base-cc",
        "release after a README-only commit (6 generated images)",
        "release after one of 6 generated images changed",
        "release on a fresh runner, no change (6 generated images)",
    ] {
        case(want);
    }
    // Every generated image (and base-cc under them) was released, accepted.
    let release = case("release of 6 generated images");
    assert_eq!(
        release["notes"][0], "7 images released (all accepted), every gate run on each",
        "{release}"
    );
    // Note `i` of the case named `prefix...`.
    let note = |prefix: &str, i: usize| -> String {
        let c = case(prefix);
        c["notes"][i]
            .as_str()
            .unwrap_or_else(|| panic!("no note {i} in {c}"))
            .to_string()
    };
    // The fresh checkout compressed nothing: every layer came from the
    // registry cache.
    let fresh = note("fresh checkout, only the registry cache warm", 0);
    assert!(fresh.ends_with(", 0 compressed"), "{fresh}");
    // With every layer cached and no fingerprint known, files are hashed,
    // nothing is compressed.
    let lost = note(
        "build with every layer cached, no file fingerprint known",
        1,
    );
    assert!(
        lost.ends_with(" bytes of files hashed for the keys, 0 compressed, nothing fetched"),
        "{lost}"
    );
    // Where the fresh checkout's time went: the lane's CPU and the
    // registry's, both measured.
    let cpu = note("fresh checkout, only the registry cache warm", 1);
    assert!(
        cpu.starts_with("fresh checkout, mean of the runs: ")
            && cpu.contains("CPU: the lane ")
            && !cpu.contains("the registry 0.00 s"),
        "{cpu}"
    );
    for c in cases {
        for side in ["lane", "reference"] {
            for k in ["min", "median", "max"] {
                assert!(
                    c[side][k].as_f64().is_some_and(|v| v > 0.0),
                    "{side}.{k} of {c}"
                );
            }
        }
        assert!(c["ratio"].as_f64().is_some_and(|v| v > 0.0), "{c}");
    }
    // skopeo's reference is a true first publish (a registry of its own
    // each run), by the registry's access log.
    let first = note("publish to a fresh repository", 0);
    assert!(
        first.ends_with("(every blob uploaded, none mounted, by the registry's access log)"),
        "{first}"
    );
    // Evidence reuse (issue 25): a README-only commit compresses,
    // uploads and smoke-tests nothing; one changed image of seven runs its
    // gates, the other six carry theirs over; a fresh runner with the
    // target store and the registry cache warm builds nothing (issue 25,
    // point 7) and starts no smoke container.
    let readme = note("release after a README-only commit", 0);
    assert_eq!(
        readme,
        "README-only commit: 0 layers compressed, 0 blob bytes uploaded, 0 smoke containers started, 7 of 7 images carried their gates over"
    );
    let one = note("release after one of 6 generated images changed", 0);
    assert!(
        one.starts_with(
            "one image (app-05) changed: 6 of 7 images carried their gates over, 1 ran every gate"
        ),
        "{one}"
    );
    let fresh_runner = note("release on a fresh runner, no change", 0);
    assert!(
        fresh_runner.starts_with("fresh runner, no change: 7 of 7 images held")
            && fresh_runner.contains(", 0 layers compressed, 0 layers fetched from the registry cache, 0 blob bytes uploaded, 0 smoke containers started, 7 of 7 images carried their gates over"),
        "{fresh_runner}"
    );
    // The no-secrets scan read every layer of the four images.
    let scan = note("the no-secrets gate's scan", 0);
    assert!(scan.starts_with("4 images, "), "{scan}");
    // An unchanged re-publish uploads no blob bytes.
    let again = note("publish again", 0);
    assert!(again.starts_with("blob bytes uploaded: lane 0,"), "{again}");
    // The warm rebuild read and compressed nothing.
    let warm = note("warm rebuild", 0);
    assert!(
        warm.contains("0 misses, 0 bytes read, 0 bytes compressed"),
        "{warm}"
    );
}

#[test]
fn bench_case_runs_only_the_groups_named() {
    let f = Fixture::copy_of_repo("bench-case");
    let out = f.ok(&["bench", "--quick", "--case", "memory", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        column(&report["cases"], "name"),
        ["peak memory, one 64 MiB layer"],
        "{report}"
    );
    let err = f.fails(&["bench", "--case", "nothing"]);
    assert!(
        err.contains("possible values") && err.contains("publish"),
        "{err}"
    );
}

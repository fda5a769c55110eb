//! A base image pulled from a registry by digest (issue 5, acceptance 6):
//! published to the real registry, pinned in lockfiles/bases.lock, pulled,
//! verified, cached; the same reference by tag only is refused.

use crate::support::registry::{Creds, Registry};
use crate::support::{self, Fixture, show};

const APP: &str = r#"
name = "app"
repository = "test/app"
base = "BASE"

[[layer]]
name = "conf"
files = [{ src = "app.conf", dest = "/etc/app.conf" }]

[config]
entrypoint = ["/lib64/ld-linux-x86-64.so.2", "--version"]
"#;

fn app(f: &Fixture, base: &str) {
    f.write("images/app/image.toml", &APP.replace("BASE", base));
    f.write("images/app/app.conf", "setting=1\n");
}

#[test]
fn a_registry_base_pinned_by_digest_is_pulled_verified_and_cached() {
    let reg = Registry::start();
    let f = Fixture::copy_of_repo("regbase");
    let out = Creds::none().xtask(
        &f,
        &["publish", "base-cc", "--registry", &reg.host(), "--json"],
    );
    assert!(out.status.success(), "{}", show(&out));
    let published: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest = published["images"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let base_layers = f.build_json(&["base-cc"]);
    let base_layers = support::image(&base_layers, "base-cc")["layers"].clone();

    let reference = format!("{}/platform/base-cc@{digest}", reg.host());
    app(&f, &reference);
    // Not pinned in lockfiles/bases.lock yet: refused.
    f.commit("app on a registry base");
    let err = f.fails(&["build", "app"]);
    assert!(
        err.contains(&format!(
            "base {reference} is not pinned in lockfiles/bases.lock"
        )),
        "{err}"
    );

    f.write(
        "lockfiles/bases.lock",
        &format!("version = 1\n\n[[base]]\nreference = \"{reference}\"\n"),
    );
    f.commit("pin the base");
    let report = f.build_json(&["app"]);
    let img = support::image(&report, "app");
    let layers = img["layers"].as_array().unwrap();
    assert_eq!(layers.len(), base_layers.as_array().unwrap().len() + 1);
    assert_eq!(
        &layers[..layers.len() - 1],
        base_layers.as_array().unwrap().as_slice(),
        "the base's layers, as published"
    );
    let layout = f.path("target/images/app");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            layout
                .join("blobs/sha256")
                .join(&img["manifest_digest"].as_str().unwrap()[7..]),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.base.digest"],
        digest.as_str()
    );
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.base.name"],
        reference.as_str()
    );
    // skopeo reads what was built.
    support::run_ok(
        std::process::Command::new("skopeo")
            .args(["inspect", &format!("oci:{}", layout.display())]),
    );

    // Cached by digest: a rebuild with the registry gone still works.
    let first = img["manifest_digest"].clone();
    drop(reg);
    std::fs::remove_dir_all(f.path("target/images")).unwrap();
    let again = f.build_json(&["app"]);
    assert_eq!(support::image(&again, "app")["manifest_digest"], first);
}

#[test]
fn a_registry_base_by_tag_only_is_refused() {
    let f = Fixture::copy_of_repo("regbase-tag");
    app(&f, "127.0.0.1:5000/platform/base-cc:latest");
    f.commit("tag-only base");
    let err = f.fails(&["build", "app"]);
    assert!(err.contains("images/app/image.toml:4:8: base image \"127.0.0.1:5000/platform/base-cc:latest\" is pinned by tag only"), "{err}");
    assert!(
        err.contains("(\"127.0.0.1:5000/platform/base-cc@sha256:...\")"),
        "{err}"
    );
    assert!(!f.path("target/images/app").exists());
}

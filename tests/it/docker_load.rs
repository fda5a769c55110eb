//! `docker load` reads the OCI layout `cargo xtask build` writes (issue 15):
//! the layout carries Docker's `manifest.json` next to `index.json`, as
//! `docker save` on Engine 25+ writes both, so a plain tar of the folder
//! loads on this machine's engine (20.10, which cannot read an OCI layout
//! alone) and the engine's image ID is our config digest.

use std::fs;
use std::process::{Command, Stdio};

use crate::support::{Fixture, image, run};

/// Removes an image tag from the engine when dropped (only the tag: an image
/// other tags still name stays).
struct RemoveTag(String);

impl Drop for RemoveTag {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", &self.0]).output();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn tar_of_the_layout_loads_with_docker_load_and_keeps_our_config_digest() {
    // A repository and a label of this test only: its own tag and config
    // digest in the shared engine, so removing it touches nothing else.
    let f = Fixture::copy_of_repo("docker-load");
    let repository = format!("lane-test/docker-load-{}", std::process::id());
    let path = "images/hello/image.toml";
    let toml = fs::read_to_string(f.path(path)).unwrap();
    assert!(toml.contains("repository = \"platform/hello\""), "{toml}");
    assert!(toml.contains("labels = {"), "{toml}");
    let toml = toml
        .replacen(
            "repository = \"platform/hello\"",
            &format!("repository = \"{repository}\""),
            1,
        )
        .replacen(
            "labels = {",
            &format!("labels = {{ \"lane.test.case\" = \"{repository}\","),
            1,
        );
    f.write(path, &toml);
    f.commit("docker-load variant");

    let report = f.build_json(&["hello"]);
    let hello = image(&report, "hello");
    let config_digest = hello["config_digest"].as_str().unwrap();
    let layers: Vec<String> = hello["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let d = l["digest"].as_str().unwrap();
            format!("blobs/sha256/{}", &d["sha256:".len()..])
        })
        .collect();
    let tag = format!("{repository}:latest");

    // manifest.json names the layout's own blobs: config, every layer in
    // order (base-cc's first), and the image's repository and tags.
    let layout = f.path("target/images/hello");
    let docker_manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        docker_manifest,
        serde_json::json!([{
            "Config": format!("blobs/sha256/{}", &config_digest["sha256:".len()..]),
            "RepoTags": [tag],
            "Layers": layers,
        }])
    );
    assert!(
        layers.len() >= 3,
        "base-cc's layer and hello's own: {layers:?}"
    );

    // Exactly what a user types: tar -C target/images/hello -c . | docker load
    let _cleanup = RemoveTag(tag.clone());
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar runs");
    let load = run(Command::new("docker")
        .arg("load")
        .stdin(tar.stdout.take().unwrap()));
    assert!(tar.wait().unwrap().success(), "tar of {layout:?} failed");
    assert!(
        load.status.success(),
        "docker load of a tar of the layout failed:\nstdout: {}\nstderr: {}",
        text(&load.stdout),
        text(&load.stderr)
    );
    assert!(
        text(&load.stdout).contains(&format!("Loaded image: {tag}")),
        "{}",
        text(&load.stdout)
    );

    // The engine's answer through the docker CLI: the image ID is the
    // digest of our config blob (the classic image store of Engine 20.10).
    let out = run(Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", &tag]));
    assert!(
        out.status.success(),
        "docker image inspect: {}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout).trim(), config_digest);

    // The gzip layer blobs were read as they are: the image runs.
    let out = run(Command::new("timeout").args([
        "60",
        "docker",
        "run",
        "--rm",
        "--network",
        "none",
        &tag,
        "--version",
    ]));
    assert!(
        out.status.success() && text(&out.stdout).starts_with("hello 0.1.0"),
        "docker run {tag} --version: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

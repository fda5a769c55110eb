//! `cargo xtask audit`: its flags and its output, over `lane::audit`.

use crate::adapters::workspace::Workspace;
use crate::cli::ReadArgs;
use crate::lane::audit::{Audit, ReleaseOf, audit};
use crate::lane::verify;
use anyhow::Result;
use serde_json::Value;
use std::process::ExitCode;

/// The one-screen human answer.
pub fn summary(a: &Audit) -> String {
    let mut o = String::new();
    o.push_str("(source, lane and gates come only from statements signed by a trusted key; '-' where there is none)\n");
    if let Some(t) = &a.tag {
        o.push_str(&format!(
            "tag {}:{} resolves NOW to {}\n",
            a.repository, t.name, t.resolves_to
        ));
    }
    o.push_str(&format!(
        "what     image {} {}@{}\n         config {}; base {} {}\n",
        s(&a.image.name),
        a.repository,
        a.image.digest,
        s(&a.image.config),
        s(&a.image.base["name"]),
        s(&a.image.base["digest"]),
    ));
    for l in &a.image.layers {
        o.push_str(&format!(
            "         layer {} ({} bytes)\n",
            s(&l["digest"]),
            s(&l["size"])
        ));
    }
    o.push_str(&format!(
        "source   {} @ {} (clean: {})\n",
        s(&a.source["repository"]),
        s(&a.source["revision"]),
        s(&a.source["clean"])
    ));
    o.push_str(&format!(
        "lane     builder {} (authoritative: {})\n         invocation {}\n         {} .. {}\n",
        s(&a.builder["id"]),
        s(&a.builder["authoritative"]),
        s(&a.builder["invocation"]),
        s(&a.builder["startedOn"]),
        s(&a.builder["finishedOn"]),
    ));
    o.push_str(&format!(
        "identity {}@{}\n         tags now: {}; release tags: {}\n",
        a.repository,
        a.image.digest,
        if a.tags.is_empty() {
            "none".into()
        } else {
            a.tags.join(", ")
        },
        if a.release_tags.is_empty() {
            "none".into()
        } else {
            a.release_tags.join(", ")
        },
    ));
    o.push_str(&format!("gates    result {}\n", s(&a.gate_result)));
    for g in &a.gates {
        o.push_str(&format!(
            "         {:<22} {:<7} {}\n",
            g.gate, g.state, g.summary
        ));
    }
    o.push_str(&format!(
        "releases {} of this digest (signed by a trusted key), oldest first\n",
        a.releases.len()
    ));
    let line = |r: &ReleaseOf, signature: bool| {
        format!(
            "         {} {} by {}{}\n",
            s(&r.started_on),
            s(&r.revision),
            s(&r.builder),
            if signature {
                format!(" ({})", r.signature)
            } else {
                String::new()
            }
        )
    };
    for r in &a.releases {
        o.push_str(&line(r, false));
    }
    if !a.unverified_releases.is_empty() {
        o.push_str(&format!(
            "unverified {} provenance statement(s) not signed by a trusted key: claims, not facts\n",
            a.unverified_releases.len()
        ));
        for r in &a.unverified_releases {
            o.push_str(&line(r, true));
        }
    }
    if a.verification.verified {
        o.push_str("verify   VERIFIED\n");
    } else {
        o.push_str("verify   NOT VERIFIED\n");
        for r in &a.verification.reasons {
            o.push_str(&format!("         - {r}\n"));
        }
    }
    o
}

/// Answer, for one digest or tag: what was built, from which source, by
/// which lane, which tags point at it, which gates ran, does it verify.
///
/// Given REPO:TAG, first says which digest the tag resolves to now, so a
/// tag moved behind the lane's back shows up (with its evidence, or its
/// lack of evidence). Exits 0 when the audit could be made, whatever it
/// finds; use `verify` to gate on the answer.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub read: ReadArgs,
}

pub fn run(ws: &Workspace, args: Args) -> Result<ExitCode> {
    let read = args.read;
    let reference = &read.reference;
    let location = verify::parse_reference(reference)?.location;
    let (policy, mut store) = read.open(ws, location)?;
    let a = audit(store.as_mut(), &policy, reference, read.allow_local_builder)?;
    if read.json {
        println!("{}", serde_json::to_string_pretty(&a)?);
    } else {
        print!("{}", summary(&a));
    }
    Ok(ExitCode::SUCCESS)
}

/// A JSON value as one word of the summary (`-` for null).
fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

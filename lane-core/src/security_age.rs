//! The opt-in `security-updates` gate: a policy that sets
//! `[gates] security_update_max_age_days = N` rejects a release when a
//! Debian security update of a package locked into the image has been
//! offered for longer than N days. Off by default: the lock is the pin,
//! and what an index offers today is otherwise a report (`lock --outdated`).
//!
//! Since when an update is offered: Debian's indexes record no publication
//! date, so the age is counted from the update's build date, the `mtime`
//! of its `.deb`'s ar members (dpkg-deb sets it from `SOURCE_DATE_EPOCH`,
//! the date of the package's newest changelog entry). A package is built
//! before it is published, so the age counted is never less than the time
//! it has been offered: the gate errs on the side of rejecting. Pure: the
//! updates, their build dates and the time in, the gate's result out.

use serde::Serialize;
use serde_json::json;

use crate::gates::{GateName, GateResult};

/// A security update the machine's apt index offers for a locked package.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecurityUpdate {
    pub name: String,
    pub locked: String,
    pub available: String,
    /// The suite that offers it (`bookworm-security`).
    pub suite: String,
    /// Its build date (seconds since the epoch), or why it is not known.
    pub built_at: Result<i64, String>,
}

/// The build date of a `.deb` from the first bytes of the file: the
/// `mtime` of its first ar member (`debian-binary`). `None` when the bytes
/// are not an ar archive's start.
pub fn deb_build_time(prefix: &[u8]) -> Option<i64> {
    // Read by hand: the first header's fields are fixed-width ASCII, and a
    // crafted name table would make the ar crate allocate what it claims.
    let h = prefix.strip_prefix(b"!<arch>\n")?.get(..60)?;
    if &h[58..60] != b"`\n" || h.starts_with(b"/") {
        return None;
    }
    std::str::from_utf8(&h[16..28]).ok()?.trim().parse().ok()
}

const DAY: i64 = 86_400;

/// The `security-updates` gate over the updates of one image's packages.
pub fn gate(updates: &[SecurityUpdate], now: i64, max_days: u32) -> GateResult {
    let mut too_old = Vec::new();
    let mut unknown = Vec::new();
    for u in updates {
        match &u.built_at {
            Ok(t) => {
                let days = (now - t).div_euclid(DAY);
                if days > i64::from(max_days) {
                    too_old.push(format!(
                        "{} {} -> {} ({}), built {} days ago",
                        u.name, u.locked, u.available, u.suite, days
                    ));
                }
            }
            Err(why) => unknown.push(format!(
                "{} {} -> {} ({}): since when is not known: {why}",
                u.name, u.locked, u.available, u.suite
            )),
        }
    }
    let ok = too_old.is_empty() && unknown.is_empty();
    GateResult::check(
        GateName::SecurityUpdates,
        ok,
        if ok {
            format!(
                "{} security update(s) offered for the image's packages, none older than {max_days} days",
                updates.len()
            )
        } else {
            format!(
                "security updates offered for longer than the policy's {max_days} days: {}; run cargo xtask lock, check the image, and commit the new lock",
                too_old
                    .into_iter()
                    .chain(unknown)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        },
        json!({ "max_age_days": max_days, "now": now, "updates": updates }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gates::GateState;

    fn ar(mtime: &str) -> Vec<u8> {
        let mut b = b"!<arch>\n".to_vec();
        b.extend(
            format!(
                "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                "debian-binary", mtime, 0, 0, 100644, 4
            )
            .as_bytes(),
        );
        b.extend(b"2.0\n");
        b
    }

    fn update(built_at: Result<i64, String>) -> SecurityUpdate {
        SecurityUpdate {
            name: "zlib1g".into(),
            locked: "1:1.2.13.dfsg-1".into(),
            available: "1:1.2.13.dfsg-1+deb12u1".into(),
            suite: "bookworm-security".into(),
            built_at,
        }
    }

    #[test]
    fn the_build_date_is_the_first_ar_members_mtime() {
        assert_eq!(deb_build_time(&ar("1704067200")), Some(1_704_067_200));
        assert_eq!(deb_build_time(b"not an archive"), None);
        assert_eq!(deb_build_time(&ar("soon")), None);
    }

    #[test]
    fn an_update_older_than_the_limit_or_of_unknown_age_rejects() {
        let now = 1_704_067_200 + 10 * DAY;
        let built = Ok(1_704_067_200);
        assert_eq!(
            gate(&[update(built.clone())], now, 10).state,
            GateState::Passed
        );
        let r = gate(&[update(built)], now + 1, 9);
        assert_eq!(r.state, GateState::Failed);
        assert!(
            r.summary.contains("zlib1g") && r.summary.contains("10 days ago"),
            "{}",
            r.summary
        );
        let r = gate(
            &[update(Err("apt could not download it".into()))],
            now,
            1000,
        );
        assert_eq!(r.state, GateState::Failed, "fail closed");
        assert!(r.summary.contains("not known"), "{}", r.summary);
        assert_eq!(gate(&[], now, 0).state, GateState::Passed);
    }
}

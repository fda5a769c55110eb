//! One rule for every URL a server hands back (issue 27, finding 2 and 7):
//! a registry's `Location` and Bearer `realm`, an HTTP redirect, an
//! issuer's `jwks_uri`. Judged against the URL of the server that handed
//! it: never userinfo (it hides which host is reached), never https to
//! http, only http or https; the same host (scheme and host name; another
//! port of it counts, as a registry's token service on its own port does)
//! may be plain http only where the first one was (a loopback registry);
//! another host must be https, and receives no credential of the first.

use anyhow::{Result, anyhow, bail};
use reqwest::Url;

/// Where a handed-back URL leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handed {
    /// The host that handed it (any port): its credentials may go along.
    SameHost(Url),
    /// Another host, over https: nothing of the first host's credentials
    /// goes along (but a token realm may get the registry's own).
    OtherHost(Url),
}

impl Handed {
    pub fn url(&self) -> &Url {
        match self {
            Handed::SameHost(u) | Handed::OtherHost(u) => u,
        }
    }
}

/// Judges `to` (absolute, or relative to `from`) as handed back by `from`;
/// `what` names it in the error (`the upload's Location`).
pub fn handed(from: &Url, to: &str, what: &str) -> Result<Handed> {
    let url = from
        .join(to)
        .map_err(|e| anyhow!("{what} {to:?} is not a URL: {e}"))?;
    check(from, url, what)
}

/// [`handed`] for an already parsed URL (a redirect's target).
pub fn check(from: &Url, url: Url, what: &str) -> Result<Handed> {
    if !url.username().is_empty() || url.password().is_some() {
        bail!(
            "{what} {} holds userinfo (user@host): refused, it hides which host is reached",
            shown(&url)
        );
    }
    if !matches!(url.scheme(), "http" | "https") {
        bail!("{what} {} is not http or https: refused", shown(&url));
    }
    if from.scheme() == "https" && url.scheme() == "http" {
        bail!(
            "{what} {} leads from https to plain http: refused",
            shown(&url)
        );
    }
    let same = url.scheme() == from.scheme() && url.host_str() == from.host_str();
    if same {
        return Ok(Handed::SameHost(url));
    }
    if url.scheme() != "https" {
        bail!(
            "{what} {} is another host over plain http: refused (another host only over https)",
            shown(&url)
        );
    }
    Ok(Handed::OtherHost(url))
}

/// `scheme://host[:port]/path` of a URL: no query (it may carry tokens).
fn shown(url: &Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or("?"),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    ) + url.path()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn the_rule() {
        let reg = from("http://127.0.0.1:5000/v2/");
        assert!(matches!(
            handed(&reg, "/v2/x/blobs/uploads/1", "L").unwrap(),
            Handed::SameHost(_)
        ));
        assert!(matches!(
            handed(&reg, "http://127.0.0.1:5000/token", "L").unwrap(),
            Handed::SameHost(_)
        ));
        // Another port of the same host: the same host.
        assert!(matches!(
            handed(&reg, "http://127.0.0.1:5001/token", "L").unwrap(),
            Handed::SameHost(_)
        ));
        // Another (loopback) host over http: refused.
        assert!(handed(&reg, "http://127.0.0.2:5000/token", "L").is_err());
        // Another host over https: allowed, as another origin.
        assert!(matches!(
            handed(&reg, "https://auth.example/token", "L").unwrap(),
            Handed::OtherHost(_)
        ));
        // userinfo, other schemes, https to http.
        assert!(handed(&reg, "http://[::1]@127.0.0.1:5000/x", "L").is_err());
        assert!(handed(&reg, "https://u:p@auth.example/token", "L").is_err());
        assert!(handed(&reg, "file:///etc/passwd", "L").is_err());
        let tls = from("https://registry.example/v2/");
        assert!(handed(&tls, "http://registry.example/v2/x", "L").is_err());
        let e = handed(&reg, "http://evil.example/x?token=secret", "the Location")
            .unwrap_err()
            .to_string();
        assert!(e.contains("the Location") && !e.contains("secret"), "{e}");
    }
}

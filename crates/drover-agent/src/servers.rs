//! Several servers (replicas on one database): the agent holds one stream at a time and moves on to the
//! next server when it cannot connect or its stream breaks. `drover-sim` uses the same list.

use tonic::transport::Endpoint;

use crate::identity::{self, Identity, IdentityError};

/// Servers one agent may be given at most: a config mistake, not a fleet, past this.
pub const MAX_SERVERS: usize = 32;

/// The `--server` values, split on commas, normalized, deduplicated and limited. Empty means none given.
pub fn parse(values: &[String]) -> Result<Vec<String>, IdentityError> {
    let mut out: Vec<String> = Vec::new();
    for v in values.iter().flat_map(|v| v.split(',')) {
        if v.trim().is_empty() {
            continue;
        }
        let url = identity::normalize_url(v)?;
        if !out.contains(&url) {
            out.push(url);
        }
    }
    if out.len() > MAX_SERVERS {
        return Err(IdentityError::BadUrl(
            format!("{} servers", out.len()),
            format!("give at most {MAX_SERVERS}"),
        ));
    }
    Ok(out)
}

/// The servers to attach to, in order, and the one in use.
pub struct Servers {
    list: Vec<(String, Endpoint)>,
    current: usize,
}

impl Servers {
    /// The given servers, or the one the node enrolled with when none is given.
    pub fn new(identity: &Identity, urls: &[String]) -> Result<Self, IdentityError> {
        let urls = if urls.is_empty() {
            vec![identity.info.server.clone()]
        } else {
            urls.to_vec()
        };
        let list = urls
            .into_iter()
            .map(|u| identity.endpoint(&u).map(|e| (u, e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { list, current: 0 })
    }

    pub fn url(&self) -> &str {
        &self.list[self.current % self.list.len()].0
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.list[self.current % self.list.len()].1
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Moves to the next server (after a failed connect or a dropped stream); `true` when there is another.
    pub fn advance(&mut self) -> bool {
        self.current = (self.current + 1) % self.list.len();
        self.list.len() > 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_split_normalized_and_deduplicated() {
        let got = parse(&["a:9090,https://b:9090".into(), "a:9090".into(), " ".into()]).unwrap();
        assert_eq!(got, vec!["https://a:9090", "https://b:9090"]);
        assert!(parse(&["http://a:9090".into()]).is_err());
        let many: Vec<String> = (0..=MAX_SERVERS).map(|i| format!("h{i}:9090")).collect();
        assert!(parse(&many).is_err());
    }
}

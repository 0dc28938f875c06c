//! A backend's base URL, parsed: a leaf shared by backends and the members of pools.

/// A parsed `http(s)://authority[/base-path]`, ready to have the operation's path appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    pub https: bool,
    pub authority: String,
    /// Without trailing `/`; empty for the root.
    pub base_path: String,
}

impl BackendUrl {
    pub fn parse(url: &str) -> Result<BackendUrl, String> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("'{url}' must start with http:// or https://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains(['@', ' ', '?', '#']) {
            return Err(format!("'{url}' has no valid host"));
        }
        if path.contains(['?', '#', ' ']) {
            return Err(format!(
                "'{url}' must not contain a query, fragment or spaces"
            ));
        }
        let url = BackendUrl {
            https,
            authority: authority.to_owned(),
            base_path: path.trim_end_matches('/').to_owned(),
        };
        // Whatever awc will be asked to parse later must parse now.
        url.join("/", "")
            .parse::<awc::http::Uri>()
            .map_err(|e| format!("'{}': {e}", url.join("/", "")))?;
        Ok(url)
    }

    /// The full URL for a backend path (starting with `/`, or empty) and a raw query.
    pub fn join(&self, path: &str, query: &str) -> String {
        let scheme = if self.https { "https://" } else { "http://" };
        let mut out = String::with_capacity(
            scheme.len()
                + self.authority.len()
                + self.base_path.len()
                + path.len()
                + query.len()
                + 1,
        );
        out.push_str(scheme);
        out.push_str(&self.authority);
        out.push_str(&self.base_path);
        if path.is_empty() && self.base_path.is_empty() {
            out.push('/');
        } else {
            out.push_str(path);
        }
        if !query.is_empty() {
            out.push('?');
            out.push_str(query);
        }
        out
    }

    /// The host name (no port, no brackets), for TLS.
    pub fn host(&self) -> &str {
        let a = self.authority.as_str();
        if let Some(rest) = a.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        a.rsplit_once(':').map_or(a, |(h, _)| h)
    }
}

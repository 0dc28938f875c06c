//! Templates in policy values.
//!
//! Two kinds of reference may appear in a policy string:
//! - `{{name}}`: a named value, substituted when the gateway compiles its snapshot (so the value is
//!   resolved once per configuration, not per request);
//! - `{request.ip}`, `{request.header.X-Tenant}`, `{subscription.id}`, `{id}`, …: request values,
//!   rendered per request from the compiled segments.
//!
//! Only `{` followed by an identifier and `}` is a reference; any other brace is literal text, so
//! JSON bodies such as `{"error": "x"}` need no escaping.

use std::fmt;

/// A request value a template can refer to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Var {
    SubscriptionId,
    ProductName,
    ApiName,
    OperationName,
    GatewayName,
    RequestIp,
    RequestMethod,
    RequestPath,
    RequestHost,
    RequestId,
    RequestHeader(String),
    RequestQuery(String),
    /// A parameter of the operation's URL template (`{id}` in `/orders/{id}`).
    Param(String),
    /// A variable set earlier in the pipeline (e.g. by `cache-lookup-value`).
    Variable(String),
    /// A field of the client certificate of the TLS connection (mutual TLS); empty without one.
    ClientCertificate(CertField),
}

/// `{request.client-certificate.FIELD}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertField {
    Subject,
    Issuer,
    /// SHA-256 of the DER certificate, lowercase hex.
    Thumbprint,
    /// Lowercase hex.
    SerialNumber,
    /// RFC 3339.
    NotBefore,
    NotAfter,
}

impl CertField {
    pub const ALL: [CertField; 6] = [
        CertField::Subject,
        CertField::Issuer,
        CertField::Thumbprint,
        CertField::SerialNumber,
        CertField::NotBefore,
        CertField::NotAfter,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CertField::Subject => "subject",
            CertField::Issuer => "issuer",
            CertField::Thumbprint => "thumbprint",
            CertField::SerialNumber => "serial-number",
            CertField::NotBefore => "not-before",
            CertField::NotAfter => "not-after",
        }
    }
}

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Var::SubscriptionId => f.write_str("{subscription.id}"),
            Var::ProductName => f.write_str("{product.name}"),
            Var::ApiName => f.write_str("{api.name}"),
            Var::OperationName => f.write_str("{operation.name}"),
            Var::GatewayName => f.write_str("{gateway.name}"),
            Var::RequestIp => f.write_str("{request.ip}"),
            Var::RequestMethod => f.write_str("{request.method}"),
            Var::RequestPath => f.write_str("{request.path}"),
            Var::RequestHost => f.write_str("{request.host}"),
            Var::RequestId => f.write_str("{request.id}"),
            Var::RequestHeader(h) => write!(f, "{{request.header.{h}}}"),
            Var::RequestQuery(q) => write!(f, "{{request.query.{q}}}"),
            Var::Param(p) => write!(f, "{{{p}}}"),
            Var::Variable(v) => write!(f, "{{variable.{v}}}"),
            Var::ClientCertificate(c) => {
                write!(f, "{{request.client-certificate.{}}}", c.as_str())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    NamedValue(String),
    Var(Var),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    pub segments: Vec<Segment>,
}

/// The variables a template may use, listed in error messages.
pub const KNOWN_VARS: &str = "{subscription.id}, {product.name}, {api.name}, {operation.name}, \
{gateway.name}, {request.ip}, {request.method}, {request.path}, {request.host}, {request.id}, \
{request.header.NAME}, {request.query.NAME}, {request.client-certificate.subject|issuer|\
thumbprint|serial-number|not-before|not-after}, {variable.NAME}, {PARAM}";

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = s;
        while let Some(pos) = rest.find('{') {
            literal.push_str(&rest[..pos]);
            let after = &rest[pos..];
            if let Some(inner) = after.strip_prefix("{{") {
                let end = inner
                    .find("}}")
                    .ok_or_else(|| format!("unclosed named value reference in '{s}'"))?;
                let name = inner[..end].trim();
                if !is_identifier(name) {
                    return Err(format!(
                        "'{{{{{name}}}}}' is not a valid named value reference"
                    ));
                }
                flush(&mut literal, &mut segments);
                segments.push(Segment::NamedValue(name.to_owned()));
                rest = &inner[end + 2..];
                continue;
            }
            let inner = &after[1..];
            match inner.find('}') {
                Some(end) if is_identifier(&inner[..end]) => {
                    flush(&mut literal, &mut segments);
                    segments.push(Segment::Var(parse_var(&inner[..end])?));
                    rest = &inner[end + 1..];
                }
                _ => {
                    literal.push('{');
                    rest = inner;
                }
            }
        }
        literal.push_str(rest);
        flush(&mut literal, &mut segments);
        Ok(Template { segments })
    }

    pub fn named_values(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::NamedValue(n) => Some(n.as_str()),
            _ => None,
        })
    }

    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Var(v) => Some(v),
            _ => None,
        })
    }

    /// Replaces named value references with their values; `lookup` returns `None` for an
    /// unknown name, which is reported back.
    pub fn resolve_named_values<'a>(
        mut self,
        lookup: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Template, String> {
        let mut out = Vec::with_capacity(self.segments.len());
        for seg in self.segments.drain(..) {
            match seg {
                Segment::NamedValue(n) => match lookup(&n) {
                    Some(v) => push_literal(&mut out, v),
                    None => return Err(format!("unknown named value '{{{{{n}}}}}'")),
                },
                Segment::Literal(l) => push_literal(&mut out, &l),
                other => out.push(other),
            }
        }
        Ok(Template { segments: out })
    }

    /// The literal text when the template has no request variables.
    pub fn as_literal(&self) -> Option<String> {
        let mut out = String::new();
        for s in &self.segments {
            match s {
                Segment::Literal(l) => out.push_str(l),
                _ => return None,
            }
        }
        Some(out)
    }
}

/// Substitutes `{{name}}` references in a plain string (a backend URL, a key, a certificate),
/// leaving any other braces alone.
pub fn substitute_named_values<'a>(
    s: &str,
    lookup: impl Fn(&str) -> Option<&'a str>,
) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find("{{") {
        out.push_str(&rest[..pos]);
        let inner = &rest[pos + 2..];
        let end = inner
            .find("}}")
            .ok_or_else(|| "unclosed named value reference".to_owned())?;
        let name = inner[..end].trim();
        match lookup(name) {
            Some(v) => out.push_str(v),
            None => return Err(format!("unknown named value '{{{{{name}}}}}'")),
        }
        rest = &inner[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Names referenced as `{{name}}` in a plain string.
pub fn named_value_refs(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(pos) = rest.find("{{") {
        let inner = &rest[pos + 2..];
        let Some(end) = inner.find("}}") else { break };
        out.push(inner[..end].trim().to_owned());
        rest = &inner[end + 2..];
    }
    out
}

fn push_literal(out: &mut Vec<Segment>, text: &str) {
    if let Some(Segment::Literal(prev)) = out.last_mut() {
        prev.push_str(text);
    } else if !text.is_empty() {
        out.push(Segment::Literal(text.to_owned()));
    }
}

fn flush(literal: &mut String, segments: &mut Vec<Segment>) {
    if !literal.is_empty() {
        segments.push(Segment::Literal(std::mem::take(literal)));
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn parse_var(s: &str) -> Result<Var, String> {
    let unknown = || format!("unknown template variable '{{{s}}}'; known: {KNOWN_VARS}");
    let named = |prefix: &str| -> Option<String> {
        s.strip_prefix(prefix)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
    };
    Ok(match s {
        "subscription.id" => Var::SubscriptionId,
        "product.name" => Var::ProductName,
        "api.name" => Var::ApiName,
        "operation.name" => Var::OperationName,
        "gateway.name" => Var::GatewayName,
        "request.ip" => Var::RequestIp,
        "request.method" => Var::RequestMethod,
        "request.path" => Var::RequestPath,
        "request.host" => Var::RequestHost,
        "request.id" => Var::RequestId,
        _ => {
            if let Some(c) = s.strip_prefix("request.client-certificate.") {
                match CertField::ALL.into_iter().find(|f| f.as_str() == c) {
                    Some(f) => Var::ClientCertificate(f),
                    None => return Err(unknown()),
                }
            } else if let Some(h) = named("request.header.") {
                Var::RequestHeader(h)
            } else if let Some(q) = named("request.query.") {
                Var::RequestQuery(q)
            } else if let Some(v) = named("variable.") {
                Var::Variable(v)
            } else if !s.contains('.') {
                Var::Param(s.to_owned())
            } else {
                return Err(unknown());
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vars_named_values_and_literal_braces() {
        let t = Template::parse("k-{request.header.X-Tenant}-{{env}}-{id} {\"a\": 1}").unwrap();
        assert_eq!(
            t.segments,
            vec![
                Segment::Literal("k-".into()),
                Segment::Var(Var::RequestHeader("X-Tenant".into())),
                Segment::Literal("-".into()),
                Segment::NamedValue("env".into()),
                Segment::Literal("-".into()),
                Segment::Var(Var::Param("id".into())),
                Segment::Literal(" {\"a\": 1}".into()),
            ]
        );
    }

    #[test]
    fn client_certificate_fields() {
        for f in CertField::ALL {
            let text = format!("{{request.client-certificate.{}}}", f.as_str());
            let t = Template::parse(&text).unwrap();
            assert_eq!(t.segments, vec![Segment::Var(Var::ClientCertificate(f))]);
            assert_eq!(Var::ClientCertificate(f).to_string(), text);
        }
        let e = Template::parse("{request.client-certificate.key}").unwrap_err();
        assert!(e.contains("unknown template variable"), "{e}");
    }

    #[test]
    fn unknown_namespace_is_an_error() {
        let e = Template::parse("{request.heder.X}").unwrap_err();
        assert!(e.contains("unknown template variable"), "{e}");
    }

    #[test]
    fn resolves_named_values_into_literals() {
        let t = Template::parse("Bearer {{token}}")
            .unwrap()
            .resolve_named_values(|n| (n == "token").then_some("abc"))
            .unwrap();
        assert_eq!(t.as_literal().as_deref(), Some("Bearer abc"));
        let err = Template::parse("{{nope}}")
            .unwrap()
            .resolve_named_values(|_| None)
            .unwrap_err();
        assert!(err.contains("nope"));
    }

    #[test]
    fn plain_substitution() {
        assert_eq!(
            substitute_named_values("http://{{host}}:80/{x}", |_| Some("h")).unwrap(),
            "http://h:80/{x}"
        );
        assert_eq!(named_value_refs("{{a}} and {{ b }}"), vec!["a", "b"]);
    }
}

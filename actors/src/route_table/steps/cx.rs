//! What compiling one policy needs to know, and the checks every step family shares. A leaf:
//! the step families import it, it imports none of them.

use std::collections::HashMap;
use std::sync::Arc;

use outpost_model::Problems;
use outpost_model::policy::Section;
use outpost_model::template::{Segment, Template, Var, substitute_named_values};

use crate::expr::{Expression, Place};
use crate::jwks::JwksRegistry;
use crate::route_table::backend::CompiledBackend;

/// A value written as a template (`value`) or as an expression (`value-expression`).
#[derive(Debug)]
pub enum Text {
    Template(Template),
    Expression(Expression),
}

/// What compiling one policy needs to know, and where its problems go.
pub(crate) struct StepCx<'a> {
    pub(crate) named_values: &'a HashMap<&'a str, &'a str>,
    pub(crate) backends: &'a HashMap<&'a str, Arc<CompiledBackend>>,
    /// Shared key sources of `validate-jwt`, kept across configurations.
    pub(crate) jwks: &'a JwksRegistry,
    /// URL template parameters when compiling an operation's own document: `{param}` references
    /// are checked against them. At wider scopes a missing parameter renders empty.
    pub(crate) params: Option<&'a [String]>,
    /// Location of the policy, e.g. `apis/orders.policies.inbound[2].set-header`.
    pub(crate) at: String,
    /// The section the policy is in (a `choose` passes its own on to its policies).
    pub(crate) section: Section,
    pub(crate) problems: &'a mut Problems,
}

impl StepCx<'_> {
    pub(crate) fn problem(&mut self, field: &str, message: impl Into<String>) {
        let path = if field.is_empty() {
            self.at.clone()
        } else {
            format!("{}.{field}", self.at)
        };
        self.problems.push(path, message);
    }

    /// Parses a request template, substituting named values.
    pub(crate) fn template(&mut self, field: &str, s: &str) -> Option<Template> {
        let named_values = self.named_values;
        let parsed = Template::parse(s)
            .and_then(|t| t.resolve_named_values(|n| named_values.get(n).copied()));
        match parsed {
            Ok(t) => {
                if let Some(params) = self.params {
                    for v in t.vars() {
                        if let Var::Param(p) = v
                            && !params.iter().any(|x| x == p)
                        {
                            self.problem(
                                field,
                                format!(
                                    "'{{{p}}}' is not a parameter of the operation's URL template"
                                ),
                            );
                        }
                    }
                }
                Some(t)
            }
            Err(e) => {
                self.problem(field, e);
                None
            }
        }
    }

    /// Compiles a CEL expression for this section, named values substituted as text first.
    pub(crate) fn expression(&mut self, field: &str, s: &str) -> Option<Expression> {
        let source = self.plain(field, s)?;
        let place = match self.section {
            Section::Inbound | Section::Backend => Place::Request,
            Section::Outbound | Section::OnError => Place::Response,
        };
        match Expression::compile(&source, place) {
            Ok(e) => Some(e),
            Err(e) => {
                self.problem(field, format!("expression {e}"));
                None
            }
        }
    }

    /// A value given as `value` (template) or `value-expression`; `None` without either.
    pub(crate) fn text(
        &mut self,
        field: &str,
        template: Option<&str>,
        expression: Option<&str>,
    ) -> Option<Option<Text>> {
        match (template, expression) {
            (Some(t), None) => self.template(field, t).map(|t| Some(Text::Template(t))),
            (None, Some(e)) => {
                let field = format!("{field}-expression");
                let e = self.expression(&field, e)?;
                if let Err(message) = e.expect_text() {
                    self.problem(&field, format!("expression {message}"));
                    return None;
                }
                Some(Some(Text::Expression(e)))
            }
            (None, None) => Some(None),
            (Some(_), Some(_)) => {
                self.problem(
                    "",
                    format!("set at most one of {field} and {field}-expression"),
                );
                None
            }
        }
    }

    /// Substitutes named values in a plain string (no request variables).
    pub(crate) fn plain(&mut self, field: &str, s: &str) -> Option<String> {
        let named_values = self.named_values;
        match substitute_named_values(s, |n| named_values.get(n).copied()) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(field, e);
                None
            }
        }
    }
}

/// The literal text of a template that uses no request variable, if it is one.
pub fn literal(t: &Template) -> Option<&str> {
    match t.segments.as_slice() {
        [] => Some(""),
        [Segment::Literal(l)] => Some(l),
        _ => None,
    }
}

/// A header name from a policy, checked once here so the hot path never parses one.
pub(crate) fn header_name(
    cx: &mut StepCx<'_>,
    field: &str,
    name: &str,
) -> Option<awc::http::header::HeaderName> {
    match awc::http::header::HeaderName::from_bytes(name.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            cx.problem(field, format!("'{name}' is not a valid header name"));
            None
        }
    }
}

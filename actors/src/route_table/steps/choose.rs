//! `choose` and `set-variable`: the policies made of expressions (see `crate::expr`).

use std::sync::Arc;

use outpost_model::policy::{Choose, Policy, SetVariable};

use super::cx::{StepCx, Text};
use super::{Item, Step, compile_policy};
use crate::expr::Expression;

/// `choose`: the steps of the first branch whose condition is true, else `otherwise`.
#[derive(Debug)]
pub struct ChooseStep {
    pub branches: Vec<(Expression, Box<[Step]>)>,
    pub otherwise: Box<[Step]>,
}

impl ChooseStep {
    /// Every step nested in this one, at any depth.
    pub fn nested(&self) -> impl Iterator<Item = &Step> {
        self.branches
            .iter()
            .flat_map(|(_, steps)| steps.iter())
            .chain(self.otherwise.iter())
    }
}

/// `set-variable`.
#[derive(Debug)]
pub struct SetVariableStep {
    pub name: String,
    pub value: Text,
}

pub(super) fn choose(p: &Choose, cx: &mut StepCx<'_>) -> Option<Step> {
    let mut ok = true;
    let mut branches = Vec::with_capacity(p.when.len());
    if p.when.is_empty() {
        cx.problem("when", "a choose needs at least one when");
        ok = false;
    }
    for (i, w) in p.when.iter().enumerate() {
        let field = format!("when[{i}].condition");
        let condition = cx
            .expression(&field, &w.condition)
            .and_then(|c| match c.expect_bool() {
                Ok(()) => Some(c),
                Err(message) => {
                    cx.problem(&field, format!("expression {message}"));
                    None
                }
            });
        let steps = nested(cx, &format!("when[{i}].policies"), &w.policies);
        match (condition, steps) {
            (Some(c), Some(s)) => branches.push((c, s)),
            _ => ok = false,
        }
    }
    let otherwise = nested(cx, "otherwise", &p.otherwise);
    if !ok {
        return None;
    }
    Some(Step::Choose(Arc::new(ChooseStep {
        branches,
        otherwise: otherwise?,
    })))
}

/// The policies of one branch, compiled for the section the `choose` is in.
fn nested(cx: &mut StepCx<'_>, list: &str, policies: &[Policy]) -> Option<Box<[Step]>> {
    let mut ok = true;
    let mut steps = Vec::with_capacity(policies.len());
    for (j, policy) in policies.iter().enumerate() {
        let at = format!("{}.{list}[{j}].{}", cx.at, policy.name());
        let refusal = match policy {
            Policy::Base => Some("'base' cannot be inside choose".to_owned()),
            // Preflights are answered before the pipeline runs, from the operation's own
            // sections: a cors policy behind a condition could never answer one.
            Policy::Cors(_) => Some("'cors' cannot be inside choose".to_owned()),
            _ if !outpost_model::Policy::allowed_sections(policy.name())
                .is_some_and(|s| s.contains(&cx.section)) =>
            {
                Some(format!(
                    "'{}' is not allowed in {}",
                    policy.name(),
                    cx.section.as_str()
                ))
            }
            _ => None,
        };
        if let Some(message) = refusal {
            cx.problems.push(at, message);
            ok = false;
            continue;
        }
        let mut inner = StepCx {
            named_values: cx.named_values,
            backends: cx.backends,
            jwks: cx.jwks,
            params: cx.params,
            at,
            section: cx.section,
            problems: &mut *cx.problems,
        };
        match compile_policy(policy, &mut inner) {
            Some(Item::Step(s)) => steps.push(s),
            Some(Item::Base) | None => ok = false,
        }
    }
    ok.then(|| steps.into_boxed_slice())
}

pub(super) fn set_variable(p: &SetVariable, cx: &mut StepCx<'_>) -> Option<Step> {
    if p.name.is_empty() {
        cx.problem("name", "must not be empty");
        return None;
    }
    let value = match cx.text("value", p.value.as_deref(), p.value_expression.as_deref())? {
        Some(v) => v,
        None => {
            cx.problem("", "set exactly one of value and value-expression");
            return None;
        }
    };
    Some(Step::SetVariable(Arc::new(SetVariableStep {
        name: p.name.clone(),
        value,
    })))
}

//! Policy expressions: CEL (the Common Expression Language of Kubernetes and Envoy), compiled
//! once per snapshot with the route table and evaluated per request by the gateway's pipeline.
//!
//! The engine is the `cel` crate (cel-rust). It parses and interprets but has no type checker
//! and no cost limit of its own, so this module adds what a gateway needs around it:
//!
//! - **Names are checked at compile time.** The walk over the parsed tree refuses unknown
//!   variables (`requst`), unknown fields of `request`, `response` and `context`
//!   (`request.heders`), `response` where there is none (inbound, backend) and unknown
//!   functions, with the position in the expression. The control plane runs this compiler as
//!   its validator, so such an expression is refused at publish time.
//! - **Size is bounded at compile time**: the source length, the parser's nesting and the tree's
//!   depth and node count. The interpreter recurses over the tree on the worker's stack, so the
//!   depth bound is what keeps evaluation within it. Parsing itself recurses deeply (the parser
//!   is generated and keeps no stack guard), so it runs on a thread of its own with a large stack.
//! - **Evaluation is bounded**: every comprehension (`all`, `exists`, `exists_one`, `map`,
//!   `filter`) is rewritten to charge its range's size to a per-evaluation budget before it
//!   iterates, so nested loops over large lists are cut off after [`MAX_ITERATIONS`] items in
//!   all, with [`EvalError::Limit`]. Without loops, the work and the size of every value are
//!   linear in the expression's size and its inputs. Text results are capped at
//!   [`MAX_TEXT_BYTES`].
//! - **Evaluation cannot panic the worker**: it runs under `catch_unwind`.
//! - **Only what an expression reads is built per request**: [`Needs`] lists the fields it uses,
//!   so `request.method == 'GET'` does not copy the request's headers.

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, LazyLock};

use cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr};
use cel::common::value::CowVal;
use cel::{Context, Env, ExecutionError};

pub use cel::Value;
pub use cel::objects::{Key, Map};

/// Longest expression source, in bytes.
pub const MAX_SOURCE_BYTES: usize = 4096;
/// Deepest nesting of parenthesised sub-expressions the parser accepts.
pub const MAX_NESTING: u16 = 24;
/// Deepest syntax tree: what bounds the interpreter's recursion. An unoptimised build takes
/// about 35 KiB of stack per level, so 24 levels fit in half a worker thread's 2 MiB.
pub const MAX_DEPTH: usize = 24;
/// Most nodes in the syntax tree (after macros are expanded).
pub const MAX_NODES: usize = 1000;
/// Most items all comprehensions of one evaluation may iterate over, together.
pub const MAX_ITERATIONS: u64 = 10_000;
/// Longest text an expression may produce (a header value, a body, a variable).
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Stack of the thread that parses: generous, since the generated parser recurses per token of
/// a left-nested chain; only the pages touched are committed.
const PARSE_STACK_BYTES: usize = 64 * 1024 * 1024;

/// Name of the function the compiler wraps every comprehension's range in.
const CHARGE: &str = "@outpost_charge";

/// Fields of `request`, in [`Needs::request`] bit order.
pub const REQUEST_FIELDS: [&str; 9] = [
    "method",
    "path",
    "host",
    "headers",
    "query",
    "ip",
    "id",
    "params",
    "certificate",
];
/// Fields of `response`.
pub const RESPONSE_FIELDS: [&str; 2] = ["status", "headers"];
/// Fields of `context`.
pub const CONTEXT_FIELDS: [&str; 7] = [
    "api",
    "operation",
    "product",
    "subscription",
    "gateway",
    "variables",
    "responses",
];
/// Fields of each answer in `context.responses` (`send-request`).
pub const CALL_RESPONSE_FIELDS: [&str; 5] = ["status", "headers", "body", "json", "error"];
/// Fields of `request.certificate`.
pub const CERTIFICATE_FIELDS: [&str; 6] = [
    "subject",
    "issuer",
    "thumbprint",
    "serial_number",
    "not_before",
    "not_after",
];

/// The standard functions an expression may call (CEL's standard definitions that the engine
/// implements, without the time types). The macros `has`, `all`, `exists`, `exists_one`, `map`
/// and `filter` are expanded by the parser and are always available.
const FUNCTIONS: [&str; 13] = [
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "type",
    "dyn",
];

/// Type names, values of their own (`type(x) == string`).
const TYPES: [&str; 10] = [
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "list",
    "map",
    "null_type",
    "type",
];

static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    env.add_overload(
        CHARGE,
        "outpost_charge_dyn",
        vec![cel::common::types::DYN_TYPE],
        charge,
    )
    .expect("a name no expression can write is free");
    Arc::new(env)
});

thread_local! {
    /// Iterations left to the evaluation running on this thread. Evaluation is synchronous, so
    /// a thread runs one at a time and a plain cell is enough.
    static BUDGET: Cell<u64> = const { Cell::new(MAX_ITERATIONS) };
    static EXCEEDED: Cell<bool> = const { Cell::new(false) };
}

/// Charges the size of a comprehension's range to the evaluation's budget; returns the range.
fn charge<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let range = args
        .into_iter()
        .next()
        .ok_or_else(ExecutionError::missing_argument_or_target)?;
    let size = range
        .as_sizer()
        .map_or(1, |s| u64::try_from(*s.size().inner()).unwrap_or(0));
    let left = BUDGET.get();
    if size > left || EXCEEDED.get() {
        EXCEEDED.set(true);
        BUDGET.set(0);
        return Err(ExecutionError::function_error(
            "comprehension",
            format!("more than {MAX_ITERATIONS} iterations"),
        ));
    }
    BUDGET.set(left - size);
    Ok(range)
}

/// Where an expression is used: `response` exists only once there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// `inbound`, `backend`.
    Request,
    /// `outbound`, `on-error`.
    Response,
}

/// Which inputs an expression reads: the gateway builds only these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// Bit `i`: `request.REQUEST_FIELDS[i]`.
    pub request: u16,
    /// Bit `i`: `response.RESPONSE_FIELDS[i]`.
    pub response: u16,
    /// Bit `i`: `context.CONTEXT_FIELDS[i]`.
    pub context: u16,
    pub jwt: bool,
}

impl Needs {
    /// Whether `request.FIELD` (one of [`REQUEST_FIELDS`]) is read.
    pub fn request(&self, field: &str) -> bool {
        bit(&REQUEST_FIELDS, field).is_some_and(|b| self.request & b != 0)
    }
    pub fn response(&self, field: &str) -> bool {
        bit(&RESPONSE_FIELDS, field).is_some_and(|b| self.response & b != 0)
    }
    pub fn context(&self, field: &str) -> bool {
        bit(&CONTEXT_FIELDS, field).is_some_and(|b| self.context & b != 0)
    }
    pub fn union(self, other: Needs) -> Needs {
        Needs {
            request: self.request | other.request,
            response: self.response | other.response,
            context: self.context | other.context,
            jwt: self.jwt || other.jwt,
        }
    }
}

fn bit(fields: &[&str], field: &str) -> Option<u16> {
    fields.iter().position(|f| *f == field).map(|i| 1 << i)
}

/// A compiled expression. Cheap to share: steps hold it in an `Arc`.
#[derive(Debug)]
pub struct Expression {
    tree: IdedExpr,
    needs: Needs,
    /// The result's type when the compiler can tell it.
    gives: Ty,
}

/// The inputs of one evaluation, built by the gateway for [`Expression::needs`]; a root the
/// expression does not read may be left `None`.
#[derive(Debug, Default)]
pub struct Vars {
    pub request: Option<Value>,
    pub response: Option<Value>,
    pub context: Option<Value>,
    pub jwt: Option<Value>,
}

/// Why an evaluation failed. Each is answered by the pipeline as a policy error.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum EvalError {
    #[error("the expression exceeded its evaluation limit ({0})")]
    Limit(String),
    #[error("the expression failed: {0}")]
    Failed(String),
    #[error("the expression gave {got}, where {want} is needed")]
    WrongType { want: &'static str, got: String },
    #[error("the expression stopped unexpectedly (an interpreter fault); it was refused")]
    Panicked,
}

impl Expression {
    /// Parses and checks `source` for use at `place`. The message of an error names the
    /// position in the expression (`1:9`) where there is one.
    pub fn compile(source: &str, place: Place) -> Result<Expression, String> {
        if source.len() > MAX_SOURCE_BYTES {
            return Err(format!(
                "the expression is {} bytes long; at most {MAX_SOURCE_BYTES} are allowed",
                source.len()
            ));
        }
        if source.trim().is_empty() {
            return Err("the expression is empty".to_owned());
        }
        std::thread::scope(|s| {
            let worker = std::thread::Builder::new()
                .name("expr-compile".into())
                .stack_size(PARSE_STACK_BYTES)
                .spawn_scoped(s, || compile_here(source, place));
            match worker {
                Ok(handle) => handle.join().unwrap_or_else(|_| {
                    Err("the expression parser failed on this expression".to_owned())
                }),
                Err(e) => Err(format!("cannot start the expression compiler: {e}")),
            }
        })
    }

    pub fn needs(&self) -> &Needs {
        &self.needs
    }

    /// The type of the result (`a string`, `a bool`, …) when it is known at compile time;
    /// `None` when it depends on the request (`jwt` claims, a map's value of unknown type).
    pub fn gives(&self) -> Option<&'static str> {
        (self.gives != Ty::Dyn).then(|| self.gives.name())
    }

    /// Refuses, at compile time, a result that can never be a bool (a `choose` condition).
    pub fn expect_bool(&self) -> Result<(), String> {
        match &self.gives {
            Ty::Bool | Ty::Dyn => Ok(()),
            other => Err(format!(
                "a condition must give a bool; this expression gives {}",
                other.name()
            )),
        }
    }

    /// Refuses, at compile time, a result that can never become text (a list, a map).
    pub fn expect_text(&self) -> Result<(), String> {
        match self.gives {
            Ty::List | Ty::Map(_) | Ty::Type => Err(format!(
                "a value must give a string, number or bool; this expression gives {}",
                self.gives.name()
            )),
            _ => Ok(()),
        }
    }

    /// Evaluates with the iteration budget and the panic guard.
    pub fn eval(&self, vars: Vars) -> Result<Value, EvalError> {
        let mut cx = Context::with_env(ENV.clone());
        for (name, value) in [
            ("request", vars.request),
            ("response", vars.response),
            ("context", vars.context),
            ("jwt", vars.jwt),
        ] {
            if let Some(v) = value {
                cx.add_variable_from_value(name, v);
            }
        }
        BUDGET.set(MAX_ITERATIONS);
        EXCEEDED.set(false);
        let result = catch_unwind(AssertUnwindSafe(|| cx.resolve(&self.tree)));
        let exceeded = EXCEEDED.replace(false);
        match result {
            // A logical operator may have absorbed the budget's error (`false && …`): the
            // result would depend on where the cut fell, so it is an error all the same.
            _ if exceeded => Err(EvalError::Limit(format!(
                "more than {MAX_ITERATIONS} comprehension iterations"
            ))),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(EvalError::Failed(e.to_string())),
            Err(_) => Err(EvalError::Panicked),
        }
    }

    /// A condition: the result must be a bool.
    pub fn eval_bool(&self, vars: Vars) -> Result<bool, EvalError> {
        match self.eval(vars)? {
            Value::Bool(b) => Ok(b),
            other => Err(EvalError::WrongType {
                want: "a bool",
                got: type_name(&other).to_owned(),
            }),
        }
    }

    /// A value for a header, a query parameter, a body or a variable: strings as they are,
    /// numbers and bools as CEL prints them, `null` as empty text.
    pub fn eval_text(&self, vars: Vars) -> Result<String, EvalError> {
        let text = match self.eval(vars)? {
            Value::String(s) => Arc::unwrap_or_clone(s),
            Value::Int(i) => i.to_string(),
            Value::UInt(u) => u.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => String::new(),
            Value::Bytes(b) => {
                String::from_utf8(Arc::unwrap_or_clone(b)).map_err(|_| EvalError::WrongType {
                    want: "text",
                    got: "bytes that are not UTF-8".to_owned(),
                })?
            }
            other => {
                return Err(EvalError::WrongType {
                    want: "a string, number or bool",
                    got: type_name(&other).to_owned(),
                });
            }
        };
        if text.len() > MAX_TEXT_BYTES {
            return Err(EvalError::Limit(format!(
                "a text of {} bytes; at most {MAX_TEXT_BYTES} are allowed",
                text.len()
            )));
        }
        Ok(text)
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::List(_) => "a list",
        Value::Map(_) => "a map",
        Value::Function(..) => "a function",
        Value::Int(_) => "an int",
        Value::UInt(_) => "a uint",
        Value::Float(_) => "a double",
        Value::String(_) => "a string",
        Value::Bytes(_) => "bytes",
        Value::Bool(_) => "a bool",
        Value::Null => "null",
        _ => "a value of another type",
    }
}

/// Builds a CEL map from string keys.
pub fn map<I, K>(entries: I) -> Value
where
    I: IntoIterator<Item = (K, Value)>,
    K: Into<String>,
{
    let map: HashMap<Key, Value> = entries
        .into_iter()
        .map(|(k, v)| (Key::String(Arc::new(k.into())), v))
        .collect();
    Value::Map(Map { map: Arc::new(map) })
}

/// A CEL string.
pub fn text(s: impl Into<String>) -> Value {
    Value::String(Arc::new(s.into()))
}

fn compile_here(source: &str, place: Place) -> Result<Expression, String> {
    let parser = ENV.parser().max_recursion_depth(MAX_NESTING);
    let (tree, info) = parser.parse_with_source_info(source).map_err(|errors| {
        errors
            .errors
            .iter()
            .map(|e| {
                // The parser counts lines from 1 and columns from 0.
                format!("{}:{}: {}", e.pos.0, e.pos.1 + 1, e.msg)
            })
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let mut check = Check {
        source,
        info: &info,
        place,
        scopes: Vec::new(),
        needs: Needs::default(),
        nodes: 0,
        errors: Vec::new(),
        next_id: u64::MAX / 2,
    };
    let mut tree = tree;
    check.walk(&mut tree, 1);
    if check.nodes > MAX_NODES {
        check.errors.push(format!(
            "the expression has {} nodes; at most {MAX_NODES} are allowed",
            check.nodes
        ));
    }
    let gives = if check.errors.is_empty() {
        check.infer(&tree)
    } else {
        Ty::Dyn
    };
    if !check.errors.is_empty() {
        check.errors.dedup();
        return Err(check.errors.join("; "));
    }
    Ok(Expression {
        tree,
        needs: check.needs,
        gives,
    })
}

/// What the compiler knows of a value's type: enough to refuse what can never work
/// (`request.method + 1`, `!request.path`, a condition that gives a string), never a guess.
/// `Dyn` is unknown (a claim, a comprehension's variable) and passes everywhere.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Bool,
    Int,
    UInt,
    Double,
    String,
    Bytes,
    Null,
    List,
    /// A map, with the type of its values.
    Map(Box<Ty>),
    Type,
    Dyn,
}

impl Ty {
    fn name(&self) -> &'static str {
        match self {
            Ty::Bool => "a bool",
            Ty::Int => "an int",
            Ty::UInt => "a uint",
            Ty::Double => "a double",
            Ty::String => "a string",
            Ty::Bytes => "bytes",
            Ty::Null => "null",
            Ty::List => "a list",
            Ty::Map(_) => "a map",
            Ty::Type => "a type",
            Ty::Dyn => "a value",
        }
    }

    fn numeric(&self) -> bool {
        matches!(self, Ty::Int | Ty::UInt | Ty::Double)
    }

    /// Known, and not a number.
    fn not_numeric(&self) -> bool {
        !self.numeric() && *self != Ty::Dyn
    }

    fn text_map() -> Ty {
        Ty::Map(Box::new(Ty::String))
    }

    /// Values of two types that can never be compared or combined (numbers go together).
    fn clash(a: &Ty, b: &Ty) -> bool {
        let family = |t: &Ty| match t {
            Ty::Int | Ty::UInt | Ty::Double => Some(0),
            Ty::String => Some(1),
            Ty::Bool => Some(2),
            Ty::Bytes => Some(3),
            Ty::List => Some(4),
            Ty::Map(_) => Some(5),
            // null compares with anything (`x == null`), types with types.
            Ty::Null | Ty::Type | Ty::Dyn => None,
        };
        matches!((family(a), family(b)), (Some(x), Some(y)) if x != y)
    }
}

/// The type of `root.field` for the names the gateway provides.
fn field_type(root: &str, field: &str) -> Ty {
    match (root, field) {
        ("request", "headers" | "query" | "params" | "certificate") => Ty::text_map(),
        ("request", _) => Ty::String,
        ("response", "status") => Ty::Int,
        ("response", "headers") => Ty::text_map(),
        ("context", "variables") => Ty::text_map(),
        ("context", "responses") => Ty::Map(Box::new(Ty::Map(Box::new(Ty::Dyn)))),
        ("context", _) => Ty::String,
        _ => Ty::Dyn,
    }
}

/// Whether `e` is one answer of `context.responses`: `context.responses.NAME` or
/// `context.responses['NAME']` (with `context` not a comprehension's variable).
fn is_call_response(e: &Expr, scopes: &[String]) -> bool {
    let is_responses = |e: &Expr| {
        matches!(e, Expr::Select(s)
            if s.field == "responses"
                && matches!(&s.operand.expr, Expr::Ident(r) if r == "context")
                && !scopes.iter().any(|v| v == "context"))
    };
    match e {
        Expr::Select(s) => is_responses(&s.operand.expr),
        Expr::Call(c) => {
            c.func_name == "_[_]"
                && c.target.is_none()
                && c.args.first().is_some_and(|a| is_responses(&a.expr))
        }
        _ => false,
    }
}

/// The compile-time walk: checks names and bounds, records [`Needs`], and wraps every
/// comprehension's range in the budget's charge.
struct Check<'a> {
    source: &'a str,
    info: &'a cel::common::ast::SourceInfo,
    place: Place,
    /// Variables of the comprehensions around the node.
    scopes: Vec<String>,
    needs: Needs,
    nodes: usize,
    errors: Vec<String>,
    next_id: u64,
}

impl Check<'_> {
    fn at(&self, id: u64) -> String {
        let Some((start, _)) = self.info.offset_for(id) else {
            return String::new();
        };
        let start = start as usize;
        let (mut line, mut col) = (1, 1);
        for c in self.source.chars().take(start) {
            if c == '\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
        }
        format!("{line}:{col}: ")
    }

    fn error(&mut self, id: u64, message: String) {
        let at = self.at(id);
        self.errors.push(format!("{at}{message}"));
    }

    fn walk(&mut self, e: &mut IdedExpr, depth: usize) {
        self.nodes += 1;
        if depth > MAX_DEPTH {
            let message = format!("the expression nests deeper than {MAX_DEPTH} levels");
            self.error(e.id, message);
            return;
        }
        let id = e.id;
        match &mut e.expr {
            Expr::Ident(name) => {
                let name = name.clone();
                self.root(id, &name, None);
            }
            Expr::Select(s) => {
                if let Expr::Ident(root) = &s.operand.expr
                    && !self.scopes.iter().any(|v| v == root)
                {
                    let root = root.clone();
                    let field = s.field.clone();
                    self.nodes += 1;
                    self.root(id, &root, Some(&field));
                } else if let Expr::Select(inner) = &s.operand.expr
                    && let Expr::Ident(root) = &inner.operand.expr
                    && root == "request"
                    && inner.field == "certificate"
                    && !self.scopes.iter().any(|v| v == root)
                {
                    if !CERTIFICATE_FIELDS.contains(&s.field.as_str()) {
                        let message = format!(
                            "unknown field '{}' of request.certificate; known: {}",
                            s.field,
                            CERTIFICATE_FIELDS.join(", ")
                        );
                        self.error(id, message);
                    }
                    self.walk(&mut s.operand, depth + 1);
                } else if is_call_response(&s.operand.expr, &self.scopes) {
                    if !CALL_RESPONSE_FIELDS.contains(&s.field.as_str()) {
                        let message = format!(
                            "unknown field '{}' of a send-request response; known: {}",
                            s.field,
                            CALL_RESPONSE_FIELDS.join(", ")
                        );
                        self.error(id, message);
                    }
                    self.walk(&mut s.operand, depth + 1);
                } else {
                    self.walk(&mut s.operand, depth + 1);
                }
            }
            Expr::Call(call) => {
                let name = call.func_name.clone();
                if name.starts_with(|c: char| c.is_ascii_alphabetic())
                    && !FUNCTIONS.contains(&name.as_str())
                {
                    let message = format!(
                        "unknown function '{name}'; known: {} (and the macros has, all, \
                         exists, exists_one, map, filter)",
                        FUNCTIONS.join(", ")
                    );
                    self.error(id, message);
                }
                if let Some(t) = &mut call.target {
                    self.walk(t, depth + 1);
                }
                for a in &mut call.args {
                    self.walk(a, depth + 1);
                }
            }
            Expr::Comprehension(c) => {
                self.walk(&mut c.iter_range, depth + 1);
                self.walk(&mut c.accu_init, depth + 1);
                let range = std::mem::take(&mut c.iter_range);
                self.next_id += 1;
                c.iter_range = IdedExpr {
                    id: self.next_id,
                    expr: Expr::Call(CallExpr {
                        func_name: CHARGE.to_owned(),
                        target: None,
                        args: vec![range],
                    }),
                };
                let pushed = 2 + usize::from(c.iter_var2.is_some());
                self.scopes.push(c.iter_var.clone());
                self.scopes.extend(c.iter_var2.clone());
                self.scopes.push(c.accu_var.clone());
                self.walk(&mut c.loop_cond, depth + 1);
                self.walk(&mut c.loop_step, depth + 1);
                self.walk(&mut c.result, depth + 1);
                self.scopes.truncate(self.scopes.len() - pushed);
            }
            Expr::List(l) => {
                for el in &mut l.elements {
                    self.walk(el, depth + 1);
                }
            }
            Expr::Map(m) => {
                for entry in &mut m.entries {
                    if let EntryExpr::MapEntry(me) = &mut entry.expr {
                        self.walk(&mut me.key, depth + 1);
                        self.walk(&mut me.value, depth + 1);
                    }
                }
            }
            Expr::Struct(_) => {
                self.error(id, "message types are not available".to_owned());
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }

    /// The type of `e`, refusing operations no value of the known types supports. Runs after
    /// [`Check::walk`] found no error, so names are known.
    fn infer(&mut self, e: &IdedExpr) -> Ty {
        use cel::common::ast::LiteralValue as L;
        match &e.expr {
            Expr::Literal(l) => match l {
                L::Boolean(_) => Ty::Bool,
                L::Bytes(_) => Ty::Bytes,
                L::Double(_) => Ty::Double,
                L::Int(_) => Ty::Int,
                L::Null => Ty::Null,
                L::String(_) => Ty::String,
                L::UInt(_) => Ty::UInt,
            },
            Expr::Ident(name) => {
                if self.scopes.iter().any(|v| v == name) {
                    Ty::Dyn
                } else if TYPES.contains(&name.as_str()) {
                    Ty::Type
                } else {
                    // request, response, context, jwt.
                    Ty::Map(Box::new(Ty::Dyn))
                }
            }
            Expr::Select(s) => {
                if let Expr::Ident(root) = &s.operand.expr
                    && !self.scopes.iter().any(|v| v == root)
                    && !TYPES.contains(&root.as_str())
                {
                    return if s.test {
                        Ty::Bool
                    } else {
                        field_type(root, &s.field)
                    };
                }
                let operand = self.infer(&s.operand);
                if s.test {
                    return Ty::Bool;
                }
                match operand {
                    Ty::Map(v) => *v,
                    Ty::Dyn => Ty::Dyn,
                    other => {
                        self.error(
                            e.id,
                            format!("cannot select field '{}' of {}", s.field, other.name()),
                        );
                        Ty::Dyn
                    }
                }
            }
            Expr::Call(call) => self.infer_call(e.id, call),
            Expr::Comprehension(c) => {
                self.infer(&c.iter_range);
                self.infer(&c.accu_init);
                let pushed = 2 + usize::from(c.iter_var2.is_some());
                self.scopes.push(c.iter_var.clone());
                self.scopes.extend(c.iter_var2.clone());
                self.scopes.push(c.accu_var.clone());
                self.infer(&c.loop_cond);
                self.infer(&c.loop_step);
                self.infer(&c.result);
                self.scopes.truncate(self.scopes.len() - pushed);
                Ty::Dyn
            }
            Expr::List(l) => {
                for el in &l.elements {
                    self.infer(el);
                }
                Ty::List
            }
            Expr::Map(m) => {
                for entry in &m.entries {
                    if let EntryExpr::MapEntry(me) = &entry.expr {
                        self.infer(&me.key);
                        self.infer(&me.value);
                    }
                }
                Ty::Map(Box::new(Ty::Dyn))
            }
            Expr::Struct(_) | Expr::Unspecified => Ty::Dyn,
        }
    }

    fn infer_call(&mut self, id: u64, call: &CallExpr) -> Ty {
        let target = call.target.as_ref().map(|t| self.infer(t));
        let args: Vec<Ty> = call.args.iter().map(|a| self.infer(a)).collect();
        let arg = |i: usize| args.get(i).cloned().unwrap_or(Ty::Dyn);
        let name = call.func_name.as_str();
        match name {
            "_&&_" | "_||_" | "!_" => {
                for a in &args {
                    if !matches!(a, Ty::Bool | Ty::Dyn) {
                        let op = match name {
                            "_&&_" => "&&",
                            "_||_" => "||",
                            _ => "!",
                        };
                        self.error(id, format!("'{op}' needs bools; got {}", a.name()));
                    }
                }
                Ty::Bool
            }
            "_?_:_" => {
                if !matches!(arg(0), Ty::Bool | Ty::Dyn) {
                    let got = arg(0).name();
                    self.error(
                        id,
                        format!("the condition of '?:' must be a bool; got {got}"),
                    );
                }
                if arg(1) == arg(2) { arg(1) } else { Ty::Dyn }
            }
            "_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_" => {
                if Ty::clash(&arg(0), &arg(1)) {
                    let (a, b) = (arg(0).name(), arg(1).name());
                    self.error(id, format!("cannot compare {a} with {b}"));
                }
                Ty::Bool
            }
            "_+_" => {
                let (a, b) = (arg(0), arg(1));
                if Ty::clash(&a, &b) {
                    let (x, y) = (a.name(), b.name());
                    self.error(id, format!("cannot add {x} and {y}"));
                    return Ty::Dyn;
                }
                if matches!(a, Ty::Bool | Ty::Map(_) | Ty::Null) {
                    self.error(id, format!("cannot add {}", a.name()));
                    return Ty::Dyn;
                }
                if a == Ty::Dyn { b } else { a }
            }
            "_-_" | "_*_" | "_/_" | "_%_" | "-_" => {
                for a in &args {
                    if a.not_numeric() {
                        self.error(id, format!("arithmetic needs numbers; got {}", a.name()));
                        return Ty::Dyn;
                    }
                }
                if args.iter().all(|a| *a == arg(0)) {
                    arg(0)
                } else {
                    Ty::Dyn
                }
            }
            "_[_]" => match arg(0) {
                Ty::Map(v) => *v,
                Ty::List | Ty::Dyn => Ty::Dyn,
                other => {
                    self.error(id, format!("cannot index {}", other.name()));
                    Ty::Dyn
                }
            },
            "@in" => Ty::Bool,
            "contains" | "startsWith" | "endsWith" | "matches" => {
                if let Some(t) = &target
                    && !matches!(t, Ty::String | Ty::Dyn)
                {
                    self.error(
                        id,
                        format!("'{name}' is a function of strings; got {}", t.name()),
                    );
                }
                Ty::Bool
            }
            "size" => Ty::Int,
            "int" => Ty::Int,
            "uint" => Ty::UInt,
            "double" => Ty::Double,
            "string" => Ty::String,
            "bytes" => Ty::Bytes,
            "bool" => Ty::Bool,
            "type" => Ty::Type,
            CHARGE => arg(0),
            _ => Ty::Dyn,
        }
    }

    /// A use of a top-level name, with the field selected on it if any.
    fn root(&mut self, id: u64, name: &str, field: Option<&str>) {
        if self.scopes.iter().any(|v| v == name) || (field.is_none() && TYPES.contains(&name)) {
            return;
        }
        let all = u16::MAX;
        let (fields, slot): (&[&str], &mut u16) = match name {
            "request" => (&REQUEST_FIELDS, &mut self.needs.request),
            "context" => (&CONTEXT_FIELDS, &mut self.needs.context),
            "response" if self.place == Place::Response => {
                (&RESPONSE_FIELDS, &mut self.needs.response)
            }
            "response" => {
                self.error(
                    id,
                    "'response' is not available here: only in outbound and on-error".to_owned(),
                );
                return;
            }
            "jwt" => {
                self.needs.jwt = true;
                return;
            }
            _ => {
                let known = match self.place {
                    Place::Request => "request, context, jwt",
                    Place::Response => "request, response, context, jwt",
                };
                self.error(id, format!("unknown name '{name}'; known: {known}"));
                return;
            }
        };
        match field {
            None => *slot = all,
            Some(f) => match bit(fields, f) {
                Some(b) => *slot |= b,
                None => {
                    let message = format!(
                        "unknown field '{f}' of {name}; known: {}",
                        fields.join(", ")
                    );
                    self.error(id, message);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Value {
        map([
            ("method", text("GET")),
            ("path", text("/orders/1")),
            (
                "headers",
                map([("x-tenant", text("acme")), ("accept", text("*/*"))]),
            ),
        ])
    }

    fn vars() -> Vars {
        Vars {
            request: Some(request()),
            ..Vars::default()
        }
    }

    #[test]
    fn evaluates_conditions_and_text() {
        let e = Expression::compile(
            "request.method == 'GET' && request.headers['x-tenant'].startsWith('ac')",
            Place::Request,
        )
        .unwrap();
        assert!(e.eval_bool(vars()).unwrap());
        assert!(e.needs().request("method") && e.needs().request("headers"));
        assert!(!e.needs().request("query") && !e.needs().jwt);
        let t = Expression::compile("'t-' + request.headers['x-tenant']", Place::Request).unwrap();
        assert_eq!(t.eval_text(vars()).unwrap(), "t-acme");
        let n = Expression::compile("size(request.headers) * 2", Place::Request).unwrap();
        assert_eq!(n.eval_text(vars()).unwrap(), "4");
    }

    #[test]
    fn every_listed_function_exists() {
        for (f, call) in [
            ("size", "size('ab') == 2"),
            ("contains", "'ab'.contains('a')"),
            ("startsWith", "'ab'.startsWith('a')"),
            ("endsWith", "'ab'.endsWith('b')"),
            ("matches", "'ab'.matches('^a')"),
            ("int", "int('1') == 1"),
            ("uint", "uint(1) == 1u"),
            ("double", "double(1) == 1.0"),
            ("string", "string(1) == '1'"),
            ("bytes", "bytes('a') == b'a'"),
            ("bool", "bool('true')"),
            ("type", "type(1) == int"),
            ("dyn", "dyn(1) == 1"),
        ] {
            assert!(FUNCTIONS.contains(&f));
            let e = Expression::compile(call, Place::Request).unwrap();
            assert_eq!(e.eval_bool(Vars::default()), Ok(true), "{call}");
        }
        assert_eq!(FUNCTIONS.len(), 13);
    }

    #[test]
    fn names_are_checked_with_positions() {
        let e = Expression::compile("request.heders['a'] == 'b'", Place::Request).unwrap_err();
        assert!(
            e.starts_with("1:8: unknown field 'heders' of request"),
            "{e}"
        );
        let e = Expression::compile("requst.method == 'GET'", Place::Request).unwrap_err();
        assert!(e.contains("unknown name 'requst'"), "{e}");
        let e = Expression::compile("response.status == 200", Place::Request).unwrap_err();
        assert!(e.contains("only in outbound and on-error"), "{e}");
        assert!(Expression::compile("response.status == 200", Place::Response).is_ok());
        let e = Expression::compile("lower(request.method)", Place::Request).unwrap_err();
        assert!(e.contains("unknown function 'lower'"), "{e}");
        let e = Expression::compile("request.method ==", Place::Request).unwrap_err();
        assert!(e.starts_with("1:"), "{e}");
        let e = Expression::compile("context.responses.token.stauts == 200", Place::Request)
            .unwrap_err();
        assert!(e.contains("of a send-request response"), "{e}");
        let e = Expression::compile("context.responses['t'].bodi", Place::Request).unwrap_err();
        assert!(e.contains("of a send-request response"), "{e}");
        let ok = "context.responses['t'].status == 200 && context.responses.t.json.a == 1";
        assert!(Expression::compile(ok, Place::Request).is_ok());
        let e = Expression::compile("request.certificate.subjekt", Place::Request).unwrap_err();
        assert!(e.contains("of request.certificate"), "{e}");
        // Comprehension variables are names too, and may shadow nothing else.
        let ok = "request.headers.exists(h, h.startsWith('x-'))";
        assert!(Expression::compile(ok, Place::Request).is_ok());
        assert!(Expression::compile("jwt.sub == 'a' && has(jwt.scope)", Place::Request).is_ok());
    }

    #[test]
    fn obviously_wrong_types_are_refused() {
        for (source, want) in [
            ("request.method + 1", "cannot add a string and an int"),
            ("!request.path", "'!' needs bools; got a string"),
            (
                "request.method == 200",
                "cannot compare a string with an int",
            ),
            (
                "response.status.startsWith('2')",
                "is a function of strings; got an int",
            ),
            (
                "request.headers['a'] - 1",
                "arithmetic needs numbers; got a string",
            ),
            (
                "request.method.size",
                "cannot select field 'size' of a string",
            ),
            ("request.ip ? 1 : 2", "must be a bool; got a string"),
        ] {
            let e = Expression::compile(source, Place::Response).unwrap_err();
            assert!(e.contains(want), "{source}: {e}");
            assert!(e.starts_with("1:"), "{source}: {e}");
        }
        // Unknown types pass: claims, comprehension variables, indexing a list.
        for ok in [
            "jwt.level + 1 > 2",
            "[1, 2].exists(x, x + 1 == 3)",
            "int(request.headers['n']) + 1 == 2",
            "context.responses.t.json.count * 2 > 1",
            "response.status >= 200 && response.status < 300.0",
        ] {
            assert!(Expression::compile(ok, Place::Response).is_ok(), "{ok}");
        }
        let e = Expression::compile("'x' + request.method", Place::Request).unwrap();
        assert_eq!(e.gives(), Some("a string"));
        assert!(e.expect_bool().is_err() && e.expect_text().is_ok());
        let e = Expression::compile("request.headers", Place::Request).unwrap();
        assert!(e.expect_text().is_err());
        let e = Expression::compile("jwt.admin", Place::Request).unwrap();
        assert_eq!(e.gives(), None);
        assert!(e.expect_bool().is_ok());
    }

    #[test]
    fn sizes_are_bounded_at_compile_time() {
        let long = format!("'{}'", "a".repeat(MAX_SOURCE_BYTES));
        assert!(
            Expression::compile(&long, Place::Request)
                .unwrap_err()
                .contains("bytes long")
        );
        let nested = format!("{}1{}", "(".repeat(60), ")".repeat(60));
        assert!(Expression::compile(&nested, Place::Request).is_err());
        // A long left-nested chain: shallow for the parser, deep as a tree.
        let chain = vec!["1"; 200].join(" + ");
        let e = Expression::compile(&chain, Place::Request).unwrap_err();
        assert!(e.contains("nests deeper"), "{e}");
        // The worst the source limit allows parses without exhausting the parser's stack.
        let worst = vec!["request"; MAX_SOURCE_BYTES / 8].join("+");
        assert!(Expression::compile(&worst[..MAX_SOURCE_BYTES - 1], Place::Request).is_err());
        let selects = format!("request{}", ".a".repeat((MAX_SOURCE_BYTES - 8) / 2));
        assert!(Expression::compile(&selects, Place::Request).is_err());
    }

    #[test]
    fn comprehensions_are_cut_off_by_the_budget() {
        let list = format!("[{}]", vec!["0"; 100].join(","));
        // 100 × 100 × 100 iterations: far past the budget.
        let bomb = format!("{list}.all(a, {list}.all(b, {list}.all(c, a + b + c >= 0)))");
        let e = Expression::compile(&bomb, Place::Request).unwrap();
        let err = e.eval(Vars::default()).unwrap_err();
        assert!(matches!(err, EvalError::Limit(_)), "{err:?}");
        // Absorbed by a logical operator: still the limit.
        let absorbed = format!("{bomb} || true");
        let e = Expression::compile(&absorbed, Place::Request).unwrap();
        assert!(matches!(e.eval(Vars::default()), Err(EvalError::Limit(_))));
        // The budget is per evaluation: a small loop afterwards runs.
        let small = Expression::compile(&format!("{list}.all(a, a == 0)"), Place::Request).unwrap();
        assert_eq!(small.eval_bool(Vars::default()), Ok(true));
        let mapped = format!("{list}.map(a, a + 1).filter(a, a == 1).size() == 100");
        let e = Expression::compile(&mapped, Place::Request).unwrap();
        assert_eq!(e.eval_bool(Vars::default()), Ok(true));
    }

    #[test]
    fn runtime_errors_and_types_are_reported() {
        let e = Expression::compile("request.headers['missing'] == 'x'", Place::Request).unwrap();
        assert!(matches!(e.eval(vars()), Err(EvalError::Failed(_))));
        let e = Expression::compile("request.method", Place::Request).unwrap();
        assert!(matches!(
            e.eval_bool(vars()),
            Err(EvalError::WrongType { .. })
        ));
        let e = Expression::compile("[1, 2]", Place::Request).unwrap();
        assert!(matches!(
            e.eval_text(vars()),
            Err(EvalError::WrongType { .. })
        ));
    }

    #[test]
    fn the_deepest_tree_evaluates_on_a_small_stack() {
        // Just within MAX_DEPTH: the interpreter's recursion must fit a worker thread's stack
        // (2 MiB by default; this test gives it half of that).
        let chain = vec!["1"; MAX_DEPTH - 1].join(" + ");
        let e = Expression::compile(&format!("{chain} > 0"), Place::Request).unwrap();
        let ok = std::thread::Builder::new()
            .stack_size(1024 * 1024)
            .spawn(move || e.eval_bool(Vars::default()))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(ok, Ok(true));
    }
}

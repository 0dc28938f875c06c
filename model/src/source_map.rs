//! Where each node of a YAML file starts, by document path.
//!
//! Validation works on a JSON tree and names a field by its path (`apis[0].operations[1].url-template`);
//! the tree has no positions. A [`SourceMap`] is built once per file from the YAML parser's
//! events and spans and turns such a path back into the line and column an operator's editor
//! jumps to.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser, Span};

/// A position in a file: line and column, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: u32,
    pub column: u32,
}

/// Document path → where its node starts. For a map entry that is where its key starts, which
/// is the line that names the field.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    starts: HashMap<String, Position>,
}

enum Frame {
    /// `path` is `None` below a key that is not a plain scalar: no document path names it.
    Seq { path: Option<String>, next: usize },
    Map {
        path: Option<String>,
        /// `Some(child path)` once a key is read, until its value is.
        value: Option<Option<String>>,
    },
}

impl SourceMap {
    /// Walks the first document of `text`. Never fails: a YAML error ends the walk and the
    /// map keeps what it saw (the caller reports the error itself, from the deserialiser).
    pub fn from_yaml(text: &str) -> SourceMap {
        let mut map = SourceMap::default();
        // An explicit stack: a hostile file's nesting depth must not become ours.
        let mut stack: Vec<Frame> = Vec::new();
        let mut started = false;
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let (is_node, opens) = match &event {
                Event::Scalar(..) | Event::Alias(_) | Event::UnresolvedAlias(_) => (true, false),
                Event::SequenceStart(..) | Event::MappingStart(..) => (true, true),
                Event::SequenceEnd | Event::MappingEnd => {
                    stack.pop();
                    if stack.is_empty() {
                        break;
                    }
                    continue;
                }
                Event::DocumentEnd | Event::StreamEnd => break,
                _ => (false, false),
            };
            if !is_node {
                continue;
            }
            // Which path this node has, if any; a map key is not a node of the tree.
            let path: Option<String> = match stack.last_mut() {
                None => {
                    if started {
                        break;
                    }
                    started = true;
                    Some(String::new())
                }
                Some(Frame::Seq { path, next }) => {
                    let i = *next;
                    *next += 1;
                    path.as_ref().map(|p| format!("{p}[{i}]"))
                }
                Some(Frame::Map { path, value }) => match value.take() {
                    // The node is a key.
                    None => {
                        let child = match (&event, path.as_ref()) {
                            (Event::Scalar(k, ..), Some(p)) => Some(join_key(p, k)),
                            _ => None,
                        };
                        if let Some(c) = &child {
                            map.record(c, &span);
                        }
                        *value = Some(child);
                        if opens {
                            // A collection as a key: walk through it without recording.
                            stack.push(Frame::Seq {
                                path: None,
                                next: 0,
                            });
                        }
                        continue;
                    }
                    Some(child) => child,
                },
            };
            if let Some(p) = &path {
                map.record(p, &span);
            }
            match event {
                Event::SequenceStart(..) => stack.push(Frame::Seq { path, next: 0 }),
                Event::MappingStart(..) => stack.push(Frame::Map { path, value: None }),
                _ => {}
            }
        }
        map
    }

    fn record(&mut self, path: &str, span: &Span) {
        let at = Position {
            line: u32::try_from(span.start.line()).unwrap_or(u32::MAX),
            column: u32::try_from(span.start.col().saturating_add(1)).unwrap_or(u32::MAX),
        };
        self.starts.entry(path.to_owned()).or_insert(at);
    }

    /// Where the node at `path` starts; for a path the file does not spell out (a defaulted
    /// field, a value from a merge key), where its nearest enclosing node does.
    pub fn locate(&self, path: &str) -> Option<Position> {
        let mut path = path;
        loop {
            if let Some(at) = self.starts.get(path) {
                return Some(*at);
            }
            if path.is_empty() {
                return None;
            }
            path = &path[..path.rfind(['.', '[']).unwrap_or(0)];
        }
    }
}

fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: u32, column: u32) -> Option<Position> {
        Some(Position { line, column })
    }

    #[test]
    fn paths_map_to_where_their_nodes_start() {
        let text = "\
apiVersion: outpost/v1
apis:
  - name: orders
    operations:
      - {name: a, method: GET, url-template: \"orders\"}
      - name: b
        url-template: /b
    tags: [x, {y: 1}]
";
        let m = SourceMap::from_yaml(text);
        assert_eq!(m.locate("apiVersion"), at(1, 1));
        assert_eq!(m.locate("apis"), at(2, 1));
        assert_eq!(m.locate("apis[0]"), at(3, 5));
        assert_eq!(m.locate("apis[0].name"), at(3, 5));
        assert_eq!(m.locate("apis[0].operations[0].url-template"), at(5, 32));
        assert_eq!(m.locate("apis[0].operations[1]"), at(6, 9));
        assert_eq!(m.locate("apis[0].operations[1].url-template"), at(7, 9));
        assert_eq!(m.locate("apis[0].tags[1].y"), at(8, 16));
        // Not in the file: the nearest enclosing node.
        assert_eq!(m.locate("apis[0].operations[1].method"), at(6, 9));
        assert_eq!(m.locate("apis[0].path"), at(3, 5));
        assert_eq!(m.locate("nothing.here"), at(1, 1));
    }

    #[test]
    fn odd_and_hostile_input_does_not_panic() {
        for text in [
            "",
            "a: [unclosed",
            "? [complex, key]\n: value\nb: 1\n",
            "a: &x {b: 1}\nc: *x\nd: *nope\n",
            "--- 1\n--- 2\n",
            &"[".repeat(10_000),
            &format!("{}1{}", "[".repeat(2_000), "]".repeat(2_000)),
        ] {
            let m = SourceMap::from_yaml(text);
            let _ = m.locate("a.b[0]");
        }
        let m = SourceMap::from_yaml("? [complex, key]\n: {v: 1}\nb: 1\n");
        assert_eq!(m.locate("b"), at(3, 1));
    }
}

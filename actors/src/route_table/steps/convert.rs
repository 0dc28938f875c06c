//! `json-to-xml` and `xml-to-json`: the settings the gateway needs per request (the conversions
//! themselves are in [`crate::xml_json`]).

use std::sync::Arc;

use outpost_model::policy::{JsonToXml, JsonToXmlApply, XmlToJson, XmlToJsonApply};

use super::{Step, StepCx};

/// Which way a body is converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    JsonToXml,
    XmlToJson,
}

/// `json-to-xml` or `xml-to-json`, compiled.
#[derive(Debug)]
pub struct ConvertStep {
    pub direction: Direction,
    /// Convert whatever the body's `Content-Type` (`apply: always`).
    pub always: bool,
    pub consider_accept_header: bool,
    /// `json-to-xml`: the root element.
    pub root_element: String,
    /// `xml-to-json`: every child element an array.
    pub always_array: bool,
    /// Bodies larger than this are refused.
    pub max_size: u64,
}

impl ConvertStep {
    /// The converted body, or why it cannot be.
    pub fn convert(&self, body: &[u8]) -> Result<Vec<u8>, crate::xml_json::ConvertError> {
        match self.direction {
            Direction::JsonToXml => crate::xml_json::json_to_xml(body, &self.root_element),
            Direction::XmlToJson => crate::xml_json::xml_to_json(body, self.always_array),
        }
    }

    /// The policy's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self.direction {
            Direction::JsonToXml => "json-to-xml",
            Direction::XmlToJson => "xml-to-json",
        }
    }

    /// The `Content-Type` of a converted body.
    pub fn content_type(&self) -> &'static str {
        match self.direction {
            Direction::JsonToXml => "application/xml; charset=utf-8",
            Direction::XmlToJson => "application/json",
        }
    }

    /// Whether a body of this media type (without parameters, any case) is the kind converted
    /// from (`apply: content-type-json` / `content-type-xml`).
    pub fn is_source_type(&self, content_type: &str) -> bool {
        let media = media_type(content_type);
        match self.direction {
            Direction::JsonToXml => is_json(&media),
            Direction::XmlToJson => is_xml(&media),
        }
    }

    /// Whether an `Accept` header value names the kind converted to explicitly (`*/*` and
    /// `application/*` do not; a range with `q=0` refuses it).
    pub fn accept_asks_for_target(&self, accept: &str) -> bool {
        accept.split(',').any(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            !refused
                && match self.direction {
                    Direction::JsonToXml => is_xml(&media),
                    Direction::XmlToJson => is_json(&media),
                }
        })
    }
}

fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn is_json(media: &str) -> bool {
    media == "application/json" || (media.contains('/') && media.ends_with("+json"))
}

fn is_xml(media: &str) -> bool {
    media == "application/xml"
        || media == "text/xml"
        || (media.contains('/') && media.ends_with("+xml"))
}

pub(super) fn json_to_xml(p: &JsonToXml, cx: &mut StepCx<'_>) -> Option<Step> {
    if !outpost_model::validate::is_xml_name(&p.root_element) {
        cx.problem(
            "root-element",
            format!("'{}' is not an XML element name", p.root_element),
        );
        return None;
    }
    Some(Step::Convert(Arc::new(ConvertStep {
        direction: Direction::JsonToXml,
        always: p.apply == JsonToXmlApply::Always,
        consider_accept_header: p.consider_accept_header,
        root_element: p.root_element.clone(),
        always_array: false,
        max_size: p.max_size,
    })))
}

pub(super) fn xml_to_json(p: &XmlToJson, _cx: &mut StepCx<'_>) -> Option<Step> {
    Some(Step::Convert(Arc::new(ConvertStep {
        direction: Direction::XmlToJson,
        always: p.apply == XmlToJsonApply::Always,
        consider_accept_header: p.consider_accept_header,
        root_element: String::new(),
        always_array: p.always_array_child_elements,
        max_size: p.max_size,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(direction: Direction) -> ConvertStep {
        ConvertStep {
            direction,
            always: false,
            consider_accept_header: true,
            root_element: "Document".into(),
            always_array: false,
            max_size: 1024,
        }
    }

    #[test]
    fn media_types_and_accept() {
        let j = step(Direction::JsonToXml);
        assert!(j.is_source_type("Application/JSON; charset=utf-8"));
        assert!(j.is_source_type("application/problem+json"));
        assert!(!j.is_source_type("text/plain"));
        assert!(j.accept_asks_for_target("text/html, application/xml;q=0.9"));
        assert!(!j.accept_asks_for_target("*/*"));
        assert!(!j.accept_asks_for_target("application/xml;q=0"));
        let x = step(Direction::XmlToJson);
        assert!(x.is_source_type("text/xml"));
        assert!(x.is_source_type("application/soap+xml"));
        assert!(x.accept_asks_for_target("application/json"));
        assert!(!x.accept_asks_for_target("application/xml"));
    }
}

//! The body conversions of `json-to-xml` and `xml-to-json` (docs/policies.md, "json-to-xml and
//! xml-to-json", has the mapping with examples).
//!
//! XML is read with quick-xml, a pull parser: no DTD is processed, so no entity can expand or
//! reach outside (a `DOCTYPE` is refused outright), and only the five predefined entities and
//! character references are resolved. JSON is read into [`J`], which keeps the members of an
//! object in their order (XML element order matters; `serde_json::Value` would sort them).
//! Both directions refuse what they cannot map rather than guess, with a [`ConvertError`]
//! naming what is wrong; nesting is bounded ([`MAX_XML_DEPTH`], and serde_json's own 128
//! levels for JSON), so no input can exhaust the stack.

use std::fmt::Write as _;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Deepest element nesting `xml-to-json` converts.
pub const MAX_XML_DEPTH: usize = 64;

/// `xsi:nil="true"` marks a JSON `null`.
const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// Why a body could not be converted.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConvertError {
    #[error("the body is not valid JSON: {0}")]
    Json(String),
    #[error("the body is not well-formed XML: {0}")]
    Xml(String),
    #[error("the body is not UTF-8 text")]
    NotUtf8,
    #[error("the XML declares the encoding '{0}'; only UTF-8 is converted")]
    Encoding(String),
    #[error("the XML has a DOCTYPE, which is not accepted")]
    DocType,
    #[error("the XML nests elements more than {MAX_XML_DEPTH} deep")]
    TooDeep,
    #[error("the JSON has a member with an empty name, which cannot be an XML name")]
    EmptyName,
    #[error("the attribute '{0}' has an object or array value; attributes are scalars")]
    AttributeNotScalar(String),
    #[error("'#text' has an object or array value; text is a scalar")]
    TextNotScalar,
    #[error("the JSON text has the character U+{0:04X}, which XML 1.0 cannot carry")]
    NotXmlChar(u32),
}

/// A JSON value whose objects keep their members' order (and repeated names).
#[derive(Debug, Clone, PartialEq)]
pub enum J {
    Null,
    Bool(bool),
    /// A number, as its JSON text.
    Num(String),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl<'de> Deserialize<'de> for J {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<J, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = J;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<J, E> {
                Ok(J::Null)
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<J, E> {
                Ok(J::Null)
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<J, E> {
                Ok(J::Bool(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<J, E> {
                Ok(J::Num(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<J, E> {
                Ok(J::Num(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<J, E> {
                Ok(J::Num(
                    serde_json::Number::from_f64(v)
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| v.to_string()),
                ))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<J, E> {
                Ok(J::Str(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<J, E> {
                Ok(J::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<J, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = a.next_element()? {
                    items.push(v);
                }
                Ok(J::Arr(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<J, A::Error> {
                let mut members = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, J>()? {
                    members.push((k, v));
                }
                Ok(J::Obj(members))
            }
        }
        d.deserialize_any(V)
    }
}

impl J {
    /// Compact JSON text.
    fn write(&self, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(n),
            J::Str(s) => write_json_string(out, s),
            J::Arr(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out);
                }
                out.push(']');
            }
            J::Obj(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_json_string(out, k);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

fn write_json_string(out: &mut String, s: &str) {
    // A string always serializes.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

// ---------------------------------------------------------------------------------------------
// JSON → XML

/// `json-to-xml`: the JSON `body` as the content of `<root>…</root>`.
pub fn json_to_xml(body: &[u8], root: &str) -> Result<Vec<u8>, ConvertError> {
    let value: J =
        serde_json::from_slice(strip_bom(body)).map_err(|e| ConvertError::Json(e.to_string()))?;
    let mut out = String::with_capacity(body.len() * 2);
    write_element(&mut out, root, &value)?;
    Ok(out.into_bytes())
}

/// A member `name: value`: an array is one element per item (an empty one, one empty
/// element), anything else one element.
fn write_member(out: &mut String, name: &str, value: &J) -> Result<(), ConvertError> {
    match value {
        J::Arr(items) if items.is_empty() => write_element(out, name, &J::Obj(Vec::new())),
        J::Arr(items) => items.iter().try_for_each(|v| write_element(out, name, v)),
        other => write_element(out, name, other),
    }
}

fn write_element(out: &mut String, name: &str, value: &J) -> Result<(), ConvertError> {
    let tag = xml_name(name)?;
    out.push('<');
    out.push_str(&tag);
    match value {
        J::Null => {
            let _ = write!(out, " xsi:nil=\"true\" xmlns:xsi=\"{XSI}\"/>");
            return Ok(());
        }
        J::Bool(_) | J::Num(_) | J::Str(_) => {
            out.push('>');
            write_text(out, value)?;
        }
        // An array in an array: its items are `item` elements.
        J::Arr(items) => {
            out.push('>');
            for v in items {
                write_member(out, "item", v)?;
            }
        }
        J::Obj(members) => {
            for (k, v) in members {
                let Some(attr) = k.strip_prefix('@') else {
                    continue;
                };
                if matches!(v, J::Null) {
                    continue;
                }
                if matches!(v, J::Arr(_) | J::Obj(_)) {
                    return Err(ConvertError::AttributeNotScalar(attr.to_owned()));
                }
                out.push(' ');
                out.push_str(&xml_name(attr)?);
                out.push_str("=\"");
                write_text(out, v)?;
                out.push('"');
            }
            let content = members.iter().filter(|(k, _)| !k.starts_with('@'));
            if content.clone().next().is_none() {
                out.push_str("/>");
                return Ok(());
            }
            out.push('>');
            for (k, v) in content {
                if k == "#text" {
                    if matches!(v, J::Arr(_) | J::Obj(_)) {
                        return Err(ConvertError::TextNotScalar);
                    }
                    write_text(out, v)?;
                } else {
                    write_member(out, k, v)?;
                }
            }
        }
    }
    out.push_str("</");
    out.push_str(&tag);
    out.push('>');
    Ok(())
}

/// A scalar as escaped text (`null`: nothing).
fn write_text(out: &mut String, v: &J) -> Result<(), ConvertError> {
    match v {
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Num(n) => out.push_str(n),
        J::Str(s) => {
            if let Some(c) = s.chars().find(|c| !is_xml_char(*c)) {
                return Err(ConvertError::NotXmlChar(c as u32));
            }
            out.push_str(&quick_xml::escape::escape(s.as_str()));
        }
        J::Null | J::Arr(_) | J::Obj(_) => {}
    }
    Ok(())
}

/// XML 1.0's `Char` production (a Rust `char` is never a surrogate).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// A JSON name as an XML name: as it is when it is one, else each character that cannot be
/// there written `_xHHHH_` (the convention of .NET's `XmlConvert.EncodeName`, which
/// `xml-to-json` decodes); a `_` that would read as such an escape is escaped itself.
pub fn xml_name(name: &str) -> Result<std::borrow::Cow<'_, str>, ConvertError> {
    if name.is_empty() {
        return Err(ConvertError::EmptyName);
    }
    if outpost_model::validate::is_xml_name(name) && !looks_escaped(name) {
        return Ok(name.into());
    }
    let mut out = String::with_capacity(name.len() + 8);
    let colon = name
        .find(':')
        .filter(|&at| at > 0 && at + 1 < name.len() && outpost_model::validate::is_xml_name(name));
    for (i, c) in name.char_indices() {
        let first = i == 0;
        let ok = if first {
            c.is_alphabetic() || c == '_'
        } else if c == ':' {
            colon == Some(i)
        } else {
            c.is_alphanumeric() || matches!(c, '-' | '.' | '_')
        };
        let escape_underscore = c == '_' && escape_at(&name[i..]).is_some();
        if ok && !escape_underscore {
            out.push(c);
        } else if (c as u32) <= 0xFFFF {
            let _ = write!(out, "_x{:04X}_", c as u32);
        } else {
            let _ = write!(out, "_x{:08X}_", c as u32);
        }
    }
    Ok(out.into())
}

/// Whether `s` holds `_xHHHH_` or `_xHHHHHHHH_` anywhere.
fn looks_escaped(s: &str) -> bool {
    s.match_indices("_x")
        .any(|(at, _)| escape_at(&s[at..]).is_some())
}

/// The character and the length of an escape at the start of `s`.
fn escape_at(s: &str) -> Option<(char, usize)> {
    let rest = s.strip_prefix("_x")?;
    for digits in [4, 8] {
        let hex = rest.get(..digits)?;
        if rest.get(digits..digits + 1) == Some("_") && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return u32::from_str_radix(hex, 16)
                .ok()
                .and_then(char::from_u32)
                .map(|c| (c, digits + 3));
        }
    }
    None
}

/// An XML name with its `_xHHHH_` escapes decoded.
fn decode_name(name: &str) -> String {
    if !name.contains("_x") {
        return name.to_owned();
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find("_x") {
        out.push_str(&rest[..at]);
        match escape_at(&rest[at..]) {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[at + len..];
            }
            None => {
                out.push_str("_x");
                rest = &rest[at + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// XML → JSON

/// An element being read.
struct Element {
    name: String,
    attributes: Vec<(String, String)>,
    nil: bool,
    text: String,
    /// Child elements by name, in the order each name first appears.
    children: Vec<(String, Vec<J>)>,
}

impl Element {
    fn open(e: &BytesStart<'_>) -> Result<Element, ConvertError> {
        let name = utf8(e.name().as_ref())?;
        let mut attributes = Vec::new();
        let mut nil = false;
        for a in e.attributes() {
            let a = a.map_err(|err| ConvertError::Xml(err.to_string()))?;
            let key = utf8(a.key.as_ref())?;
            let value = a
                .unescape_value()
                .map_err(|err| ConvertError::Xml(err.to_string()))?
                .into_owned();
            if key.ends_with(":nil") && value == "true" {
                nil = true;
                continue;
            }
            attributes.push((key, value));
        }
        if nil {
            // The declaration that came with the nil mark goes with it.
            attributes.retain(|(k, v)| !(k.starts_with("xmlns:") && v == XSI));
        }
        Ok(Element {
            name: decode_name(&name),
            attributes,
            nil,
            text: String::new(),
            children: Vec::new(),
        })
    }

    fn add_child(&mut self, name: String, value: J) {
        match self.children.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => self.children.push((name, vec![value])),
        }
    }

    fn close(self, always_array: bool) -> J {
        if self.nil && self.children.is_empty() && self.text.trim().is_empty() {
            return J::Null;
        }
        if self.attributes.is_empty() && self.children.is_empty() {
            return if self.text.is_empty() {
                J::Null
            } else {
                J::Str(self.text)
            };
        }
        let mut members: Vec<(String, J)> = self
            .attributes
            .into_iter()
            .map(|(k, v)| (format!("@{}", decode_name(&k)), J::Str(v)))
            .collect();
        // Indentation between child elements is not text.
        if !(self.text.is_empty() || (!self.children.is_empty() && self.text.trim().is_empty())) {
            members.push(("#text".to_owned(), J::Str(self.text)));
        }
        for (name, mut values) in self.children {
            let v = if values.len() == 1 && !always_array {
                values.pop().unwrap_or(J::Null)
            } else {
                J::Arr(values)
            };
            members.push((name, v));
        }
        J::Obj(members)
    }
}

fn utf8(b: &[u8]) -> Result<String, ConvertError> {
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| ConvertError::NotUtf8)
}

fn strip_bom(b: &[u8]) -> &[u8] {
    b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b)
}

/// `xml-to-json`: the XML `body` as `{"root": …}`.
pub fn xml_to_json(body: &[u8], always_array: bool) -> Result<Vec<u8>, ConvertError> {
    let text = std::str::from_utf8(strip_bom(body)).map_err(|_| ConvertError::NotUtf8)?;
    let mut reader = Reader::from_str(text);
    let xml = |e: quick_xml::Error| ConvertError::Xml(e.to_string());
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<(String, J)> = None;
    loop {
        let event = reader.read_event().map_err(xml)?;
        match event {
            Event::Start(_) | Event::Empty(_) if root.is_some() => {
                return Err(ConvertError::Xml(
                    "an element after the root element".to_owned(),
                ));
            }
            Event::Start(e) => {
                if stack.len() >= MAX_XML_DEPTH {
                    return Err(ConvertError::TooDeep);
                }
                stack.push(Element::open(&e)?);
            }
            Event::Empty(e) => {
                let el = Element::open(&e)?;
                close(&mut stack, &mut root, el, always_array);
            }
            Event::End(_) => {
                let Some(el) = stack.pop() else {
                    return Err(ConvertError::Xml("an end tag without its start".to_owned()));
                };
                close(&mut stack, &mut root, el, always_array);
            }
            Event::Text(t) => {
                let s = t
                    .xml10_content()
                    .map_err(|e| ConvertError::Xml(e.to_string()))?;
                push_text(&mut stack, &s)?;
            }
            Event::CData(c) => {
                let s = c
                    .xml10_content()
                    .map_err(|e| ConvertError::Xml(e.to_string()))?;
                push_text(&mut stack, &s)?;
            }
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref().map_err(xml)? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode().map_err(|e| ConvertError::Xml(e.to_string()))?;
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| {
                                ConvertError::Xml(format!("the entity '&{name};' is not defined"))
                            })?
                            .to_owned()
                    }
                };
                push_text(&mut stack, &c)?;
            }
            Event::Decl(d) => {
                if let Some(enc) = d.encoding() {
                    let enc = enc.map_err(|e| ConvertError::Xml(e.to_string()))?;
                    let enc = String::from_utf8_lossy(&enc).into_owned();
                    if !enc.eq_ignore_ascii_case("utf-8") && !enc.eq_ignore_ascii_case("utf8") {
                        return Err(ConvertError::Encoding(enc));
                    }
                }
            }
            Event::DocType(_) => return Err(ConvertError::DocType),
            Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if let Some(open) = stack.last() {
        return Err(ConvertError::Xml(format!(
            "the document ends inside <{}>",
            open.name
        )));
    }
    let Some((name, value)) = root else {
        return Err(ConvertError::Xml("there is no root element".to_owned()));
    };
    let mut out = String::with_capacity(body.len());
    J::Obj(vec![(name, value)]).write(&mut out);
    Ok(out.into_bytes())
}

fn close(stack: &mut [Element], root: &mut Option<(String, J)>, el: Element, always_array: bool) {
    let name = el.name.clone();
    let value = el.close(always_array);
    match stack.last_mut() {
        Some(parent) => parent.add_child(name, value),
        None => *root = Some((name, value)),
    }
}

fn push_text(stack: &mut [Element], s: &str) -> Result<(), ConvertError> {
    match stack.last_mut() {
        Some(el) => {
            el.text.push_str(s);
            Ok(())
        }
        None if s.trim().is_empty() => Ok(()),
        None => Err(ConvertError::Xml(
            "text outside the root element".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_json(xml: &str) -> serde_json::Value {
        let out = xml_to_json(xml.as_bytes(), false).unwrap_or_else(|e| panic!("{e}: {xml}"));
        serde_json::from_slice(&out).unwrap()
    }

    fn to_xml(json: &str) -> String {
        String::from_utf8(json_to_xml(json.as_bytes(), "Document").unwrap()).unwrap()
    }

    #[test]
    fn json_becomes_elements_in_member_order() {
        assert_eq!(
            to_xml(
                r#"{"z": 1, "a": "x<y", "b": true, "n": null, "list": [1, 2], "none": [], "o": {}}"#
            ),
            format!(
                "<Document><z>1</z><a>x&lt;y</a><b>true</b><n xsi:nil=\"true\" xmlns:xsi=\"{XSI}\"/>\
                 <list>1</list><list>2</list><none/><o/></Document>"
            )
        );
        // Attributes, text, nested arrays, a top-level array and scalar.
        assert_eq!(
            to_xml(r##"{"p": {"@id": 7, "@skip": null, "#text": "hi", "q": [[1], []]}}"##),
            "<Document><p id=\"7\">hi<q><item>1</item></q><q></q></p></Document>"
        );
        assert_eq!(to_xml("[1]"), "<Document><item>1</item></Document>");
        assert_eq!(to_xml("\"a&b\""), "<Document>a&amp;b</Document>");
        // Names that are not XML names are escaped, prefixed names kept.
        assert_eq!(
            to_xml(r#"{"first name": 1, "1st": 2, "soap:Body": 3, "a_x0041_": 4}"#),
            "<Document><first_x0020_name>1</first_x0020_name><_x0031_st>2</_x0031_st>\
             <soap:Body>3</soap:Body><a_x005F_x0041_>4</a_x005F_x0041_></Document>"
        );
    }

    #[test]
    fn bad_json_is_refused_with_why() {
        let err = |j: &str| json_to_xml(j.as_bytes(), "Document").unwrap_err();
        assert!(matches!(err("{\"a\": "), ConvertError::Json(_)));
        assert_eq!(err(r#"{"": 1}"#), ConvertError::EmptyName);
        assert_eq!(
            err(r#"{"a": {"@b": [1]}}"#),
            ConvertError::AttributeNotScalar("b".into())
        );
        assert_eq!(
            err(r##"{"a": {"#text": {}}}"##),
            ConvertError::TextNotScalar
        );
        assert_eq!(err(r#"{"a": "\u0001"}"#), ConvertError::NotXmlChar(1));
        // Deeper than serde_json's limit: an error, not a stack overflow.
        let deep = "[".repeat(100_000);
        assert!(matches!(err(&deep), ConvertError::Json(_)));
    }

    #[test]
    fn xml_becomes_members_with_arrays_for_repeats() {
        assert_eq!(
            to_json(
                r#"<?xml version="1.0" encoding="UTF-8"?>
                <!-- c --><order id="7" xmlns:x="urn:x">
                  <item>a</item><x:note>n &amp; &#65;</x:note><item><![CDATA[<b>]]></item>
                  <empty/><nil xsi:nil="true" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/>
                  <t lang="en">hello</t>
                </order>"#
            ),
            serde_json::json!({"order": {
                "@id": "7", "@xmlns:x": "urn:x",
                "item": ["a", "<b>"], "x:note": "n & A", "empty": null, "nil": null,
                "t": {"@lang": "en", "#text": "hello"}
            }})
        );
        let out = xml_to_json(b"<a><b>1</b></a>", true).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"a":{"b":["1"]}}"#);
        // Member order is the document's.
        let out = xml_to_json(b"<a><z>1</z><b>2</b></a>", false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":{"z":"1","b":"2"}}"#
        );
    }

    #[test]
    fn round_trip_of_escaped_names_and_nulls() {
        let json = r#"{"first name":"x","a_x0041_":null,"@at":"1"}"#;
        let xml = json_to_xml(json.as_bytes(), "Document").unwrap();
        let back = xml_to_json(&xml, false).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&back).unwrap(),
            serde_json::json!({"Document": {"@at": "1", "first name": "x", "a_x0041_": null}})
        );
    }

    #[test]
    fn bad_xml_is_refused_with_why() {
        let err = |x: &str| xml_to_json(x.as_bytes(), false).unwrap_err();
        for bad in [
            "<a><b></a>",
            "<a>",
            "<a></a><b/>",
            "text",
            "",
            "<a>&bogus;</a>",
            "<a x='1' x='2'/>",
            "<a>&</a>",
        ] {
            assert!(
                matches!(err(bad), ConvertError::Xml(_)),
                "{bad}: {:?}",
                xml_to_json(bad.as_bytes(), false)
            );
        }
        assert_eq!(
            err(r#"<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>"#),
            ConvertError::DocType
        );
        assert_eq!(
            err(r#"<?xml version="1.0" encoding="ISO-8859-1"?><a/>"#),
            ConvertError::Encoding("ISO-8859-1".into())
        );
        assert_eq!(
            xml_to_json(b"<a>\xff</a>", false).unwrap_err(),
            ConvertError::NotUtf8
        );
        let deep = "<a>".repeat(MAX_XML_DEPTH + 1);
        assert_eq!(err(&deep), ConvertError::TooDeep);
    }
}

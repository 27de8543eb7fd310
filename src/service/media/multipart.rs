//! The `multipart/mixed` bodies of the federation media endpoints (spec: server-server API,
//! content repository): exactly two parts, the JSON metadata (always `{}` today) and then
//! either the media's bytes with their `Content-Type` and `Content-Disposition`, or a
//! `Location` header naming where the bytes are.
//!
//! Writing is split into a head (everything before the bytes) and a tail (the close
//! delimiter), so the server can stream the file between them. Reading works on a complete,
//! size-capped body and slices it without copying the media.

use bytes::Bytes;
use rand::RngExt;

/// The essence of the content type of these bodies.
pub const MULTIPART_MIXED: &str = "multipart/mixed";
/// Most header lines a body part may have.
const MAX_PART_HEADERS: usize = 32;

/// A fresh boundary: 32 random alphanumerics, so it cannot plausibly occur in the media.
pub fn boundary() -> String {
    let mut rng = rand::rng();
    (0..32)
        .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
        .collect()
}

/// The `Content-Type` header of a body with this boundary.
pub fn content_type(boundary: &str) -> String {
    format!("{MULTIPART_MIXED}; boundary={boundary}")
}

/// The metadata part and the opening of the file part, up to the first byte of the media.
/// `content_type` and `disposition` must be valid header values (no CR or LF).
pub fn file_head(boundary: &str, content_type: &str, disposition: &str) -> Vec<u8> {
    format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\n\
         Content-Type: {content_type}\r\nContent-Disposition: {disposition}\r\n\r\n"
    )
    .into_bytes()
}

/// The close delimiter after the media's bytes.
pub fn tail(boundary: &str) -> Vec<u8> {
    format!("\r\n--{boundary}--\r\n").into_bytes()
}

/// What the second part of a body holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    File {
        bytes: Bytes,
        content_type: Option<String>,
        /// The raw `Content-Disposition` value, if any.
        disposition: Option<String>,
    },
    /// The media is at this URL.
    Location(String),
}

/// A parameter of a header value like `type/subtype; name=value; other="quoted"`.
pub fn header_param(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|param| {
        let (key, val) = param.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case(name) {
            return None;
        }
        let val = val.trim();
        let val = val
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(val);
        Some(val.to_owned())
    })
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    memchr::memmem::find(&haystack[from..], needle).map(|i| i + from)
}

/// The header lines of a part starting at `start` (just after its delimiter line) and ending
/// at `end` (the CRLF before the next delimiter), and where its content begins. Lines may end
/// in CRLF or, leniently, in LF alone. A part may end right after its headers (RFC 2046:
/// the CRLF before a delimiter belongs to the delimiter), as a `Location` part does.
fn part_headers(
    body: &[u8],
    start: usize,
    end: usize,
) -> Result<(Vec<(String, String)>, usize), String> {
    let mut headers = Vec::new();
    let mut at = start;
    while at < end {
        let nl = find(&body[..end], b"\n", at).unwrap_or(end);
        let line = &body[at..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        at = (nl + 1).min(end);
        if line.is_empty() {
            return Ok((headers, at));
        }
        if headers.len() == MAX_PART_HEADERS {
            return Err("a body part has too many headers".into());
        }
        let line = std::str::from_utf8(line).map_err(|_| "a part header is not UTF-8")?;
        let (name, value) = line
            .split_once(':')
            .ok_or("a part header line has no colon")?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok((headers, end))
}

/// Reads a federation media body whose `Content-Type` header is `content_type`.
pub fn parse(content_type: &str, body: Bytes) -> Result<Payload, String> {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case(MULTIPART_MIXED) {
        return Err(format!("the answer is {essence:?}, not multipart/mixed"));
    }
    let boundary = header_param(content_type, "boundary")
        .filter(|b| !b.is_empty() && b.len() <= 200)
        .ok_or("the multipart answer has no boundary")?;
    let dash = format!("--{boundary}");
    let delimiter = format!("\r\n--{boundary}");
    // The first delimiter may open the body (no preamble) or follow a preamble.
    let first = if body.starts_with(dash.as_bytes()) {
        0
    } else {
        find(&body, delimiter.as_bytes(), 0).ok_or("the multipart answer has no parts")? + 2
    };
    // The rest of a delimiter line is transport padding.
    let line_end = |from: usize| -> Result<usize, String> {
        Ok(find(&body, b"\n", from).ok_or("a multipart delimiter line does not end")? + 1)
    };
    let meta_start = line_end(first + dash.len())?;
    let meta_end =
        find(&body, delimiter.as_bytes(), meta_start).ok_or("the multipart answer has one part")?;
    let (_, meta_content) = part_headers(&body, meta_start, meta_end)?;
    let metadata: serde_json::Value = serde_json::from_slice(&body[meta_content..meta_end])
        .map_err(|e| format!("the metadata part is not JSON: {e}"))?;
    if !metadata.is_object() {
        return Err("the metadata part is not a JSON object".into());
    }
    let after = meta_end + delimiter.len();
    if body[after..].starts_with(b"--") {
        return Err("the multipart answer has only the metadata part".into());
    }
    let file_start = line_end(after)?;
    // The close delimiter is required: without it the body may have been cut short.
    let file_end = find(&body, delimiter.as_bytes(), file_start)
        .ok_or("the media part has no closing delimiter (truncated answer?)")?;
    let (headers, content) = part_headers(&body, file_start, file_end)?;
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    if let Some(location) = get("location") {
        return Ok(Payload::Location(location));
    }
    Ok(Payload::File {
        bytes: body.slice(content..file_end),
        content_type: get("content-type").filter(|t| !t.is_empty()),
        disposition: get("content-disposition"),
    })
}

/// The file name in a `Content-Disposition` value: `filename*=utf-8''…` (RFC 5987) wins over
/// a plain `filename`.
pub fn disposition_filename(value: &str) -> Option<String> {
    if let Some(ext) = header_param(value, "filename*") {
        let (charset, rest) = ext.split_once('\'')?;
        let (_lang, encoded) = rest.split_once('\'')?;
        if charset.eq_ignore_ascii_case("utf-8") {
            let name = percent_encoding::percent_decode_str(encoded)
                .decode_utf8()
                .ok()?
                .into_owned();
            return Some(name).filter(|n| !n.is_empty());
        }
    }
    header_param(value, "filename")
        .map(|n| n.replace("\\\"", "\"").replace("\\\\", "\\"))
        .filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(boundary: &str, media: &[u8]) -> Bytes {
        let mut out = file_head(boundary, "image/png", "inline; filename=\"cat.png\"");
        out.extend_from_slice(media);
        out.extend_from_slice(&tail(boundary));
        Bytes::from(out)
    }

    #[test]
    fn round_trip() {
        let b = boundary();
        assert_eq!(b.len(), 32);
        // Bytes that look like line ends and dashes survive.
        let media = b"\r\n--\r\n\r\nbinary\0\xff\r\n";
        let parsed = parse(&content_type(&b), body(&b, media)).unwrap();
        assert_eq!(
            parsed,
            Payload::File {
                bytes: Bytes::from_static(media),
                content_type: Some("image/png".into()),
                disposition: Some("inline; filename=\"cat.png\"".into()),
            }
        );
        let empty = parse(&content_type(&b), body(&b, b"")).unwrap();
        assert!(matches!(empty, Payload::File { bytes, .. } if bytes.is_empty()));
    }

    #[test]
    fn location_and_foreign_writers() {
        // A preamble, a quoted boundary, LF-only header lines, headers in any case, and
        // ruma's writer (no closing "--").
        let text = "preamble\r\n--xyz\r\ncontent-type: application/json\n\n{\"a\":1}\r\n--xyz  \r\nLOCATION: https://cdn.example/x\r\n\r\n\r\n--xyz";
        let parsed = parse("Multipart/Mixed; boundary=\"xyz\"", Bytes::from(text)).unwrap();
        assert_eq!(parsed, Payload::Location("https://cdn.example/x".into()));
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let b = "bnd";
        let ct = content_type(b);
        let full = body(b, b"data");
        let cases: Vec<(&str, Bytes)> = vec![
            ("application/json", full.clone()),
            ("multipart/mixed", full.clone()),
            (&ct, Bytes::from_static(b"no parts here")),
            (&ct, full.slice(..full.len() - 9)),
            (
                &ct,
                Bytes::from("--bnd\r\n\r\nnot json\r\n--bnd\r\n\r\nx\r\n--bnd--"),
            ),
            (&ct, Bytes::from("--bnd\r\n\r\n{}\r\n--bnd--\r\n")),
            (
                &ct,
                Bytes::from("--bnd\r\n\r\n{}\r\n--bnd\r\nno colon\r\n\r\nx\r\n--bnd--"),
            ),
        ];
        for (i, (ct, body)) in cases.into_iter().enumerate() {
            assert!(parse(ct, body).is_err(), "case {i} should be refused");
        }
    }

    #[test]
    fn filenames() {
        assert_eq!(
            disposition_filename("inline; filename=\"cat.png\"").as_deref(),
            Some("cat.png")
        );
        assert_eq!(
            disposition_filename("attachment; filename*=utf-8''na%C3%AFve%20x.txt").as_deref(),
            Some("naïve x.txt")
        );
        assert_eq!(
            disposition_filename("attachment; filename=a.txt; filename*=UTF-8''b.txt").as_deref(),
            Some("b.txt")
        );
        assert_eq!(disposition_filename("attachment"), None);
        assert_eq!(disposition_filename("inline; filename=\"\""), None);
    }
}

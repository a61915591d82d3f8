//! RFC 8785 JSON Canonicalization Scheme (JCS): the one byte form of JSON that wormvault hashes.
//!
//! Every leaf hash and every manifest hash is computed over JCS bytes, so an independent
//! verifier can rebuild them with any JCS implementation. The rules (RFC 8785 §3.2):
//!
//! - no whitespace between tokens;
//! - object members sorted by their names compared as UTF-16 code units;
//! - strings: `"` and `\` escaped, control characters below U+0020 as `\b \t \n \f \r` or
//!   `\u00XX` (lower-case hex), every other character written as itself in UTF-8;
//! - numbers: the ECMAScript `Number.prototype.toString` form of the IEEE 754 double.
//!
//! Canonicalization must never *alter* a record. A number that an IEEE 754 double cannot
//! hold exactly (an integer above 2^53, a decimal with more than 17 significant digits,
//! `1e400`) would come out different from what the upstream sent, so it is refused with an
//! error naming its path; the upstream should send such values as strings. Duplicate member
//! names and lone UTF-16 surrogates are refused for the same reason (I-JSON, RFC 7493).

use std::cmp::Ordering;
use std::fmt::Write as _;

/// Nesting deeper than this is refused, which keeps the recursive parser stack-safe.
pub const MAX_DEPTH: usize = 128;

/// Why a JSON value has no canonical form that equals it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct CanonicalError {
    /// JSONPath-like location, e.g. `payload.legs[2].qty`.
    pub path: String,
    pub reason: String,
}

/// Canonicalizes one JSON text (which must already be syntactically valid JSON, e.g. a
/// `serde_json::value::RawValue`) and appends the JCS bytes to `out`. `root` names the value
/// in error paths.
pub fn canonicalize_into(json: &str, root: &str, out: &mut String) -> Result<(), CanonicalError> {
    let mut p = Parser {
        s: json.as_bytes(),
        i: 0,
        path: vec![Seg::Key(root.to_owned())],
    };
    p.ws();
    p.value(out, 0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("trailing characters after the JSON value"));
    }
    Ok(())
}

/// Canonicalizes a JSON text into a new string.
pub fn canonicalize(json: &str) -> Result<String, CanonicalError> {
    let mut out = String::with_capacity(json.len());
    canonicalize_into(json, "$", &mut out)?;
    Ok(out)
}

/// Canonical bytes of any serializable value (used for manifests and other documents we
/// write ourselves; their numbers are integers well inside the exact range).
pub fn to_canonical_vec<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let text = serde_json::to_string(value).expect("our documents serialize");
    canonicalize(&text)
        .expect("our documents have a canonical form")
        .into_bytes()
}

/// Appends `s` as a JCS string literal.
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            0x08 => Some("\\b"),
            0x09 => Some("\\t"),
            0x0a => Some("\\n"),
            0x0c => Some("\\f"),
            0x0d => Some("\\r"),
            0x00..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => {
                let _ = write!(out, "\\u{:04x}", b);
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Compares member names as RFC 8785 requires: by UTF-16 code units.
pub fn cmp_utf16(a: &str, b: &str) -> Ordering {
    if a.is_ascii() && b.is_ascii() {
        return a.as_bytes().cmp(b.as_bytes());
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

/// The ECMAScript `Number.prototype.toString` form of a finite double.
pub fn format_number(x: f64) -> String {
    debug_assert!(x.is_finite());
    if x == 0.0 {
        return "0".to_owned();
    }
    let (neg, digits, n) = shortest_digits(x);
    let k = digits.len() as i32;
    let mut out = String::with_capacity(24);
    if neg {
        out.push('-');
    }
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        let e = n - 1;
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if e < 0 { '-' } else { '+' });
        let _ = write!(out, "{}", e.abs());
    }
    out
}

/// The shortest round-trip decimal digits of `x` (no leading or trailing zeros) and `n`, the
/// position of the decimal point: `x = 0.d1d2... × 10^n`.
fn shortest_digits(x: f64) -> (bool, String, i32) {
    let mut buf = ryu::Buffer::new();
    let text = buf.format_finite(x);
    let dec = Decimal::parse(text).expect("ryu prints a decimal number");
    (dec.neg, dec.digits, dec.point)
}

/// A decimal number as sign, significant digits and point position (value =
/// 0.`digits` × 10^`point`); zero has no digits. Two decimals are numerically equal exactly
/// when their normal forms are equal.
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    neg: bool,
    digits: String,
    point: i32,
}

impl Decimal {
    /// Parses a JSON number literal (or ryu output) into its normal form.
    fn parse(text: &str) -> Option<Decimal> {
        let (neg, rest) = match text.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, text),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
            None => (rest, 0),
        };
        let (int, frac) = match mantissa.find('.') {
            Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
            None => (mantissa, ""),
        };
        let mut digits: String = String::with_capacity(int.len() + frac.len());
        digits.push_str(int);
        digits.push_str(frac);
        let lead = digits.bytes().take_while(|&c| c == b'0').count();
        let mut point = int.len() as i64 - lead as i64 + exp;
        let digits = digits[lead..].trim_end_matches('0').to_owned();
        if digits.is_empty() {
            return Some(Decimal {
                neg: false,
                digits,
                point: 0,
            });
        }
        point = point.clamp(i64::from(i32::MIN), i64::from(i32::MAX));
        Some(Decimal {
            neg,
            digits,
            point: point as i32,
        })
    }
}

enum Seg {
    Key(String),
    Index(usize),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    path: Vec<Seg>,
}

impl Parser<'_> {
    fn err(&self, reason: impl Into<String>) -> CanonicalError {
        let mut path = String::new();
        for (n, seg) in self.path.iter().enumerate() {
            match seg {
                Seg::Key(k) if n == 0 => path.push_str(k),
                Seg::Key(k) => {
                    path.push('.');
                    path.push_str(k);
                }
                Seg::Index(i) => {
                    let _ = write!(path, "[{i}]");
                }
            }
        }
        CanonicalError {
            path,
            reason: reason.into(),
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), CanonicalError> {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(format!("expected `{}`", c as char)))
        }
    }

    fn value(&mut self, out: &mut String, depth: usize) -> Result<(), CanonicalError> {
        if depth > MAX_DEPTH {
            return Err(self.err(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        match self.s.get(self.i) {
            Some(b'{') => self.object(out, depth),
            Some(b'[') => self.array(out, depth),
            Some(b'"') => {
                let s = self.string()?;
                write_string(out, &s);
                Ok(())
            }
            Some(b't') => self.literal(out, "true"),
            Some(b'f') => self.literal(out, "false"),
            Some(b'n') => self.literal(out, "null"),
            Some(b'-' | b'0'..=b'9') => self.number(out),
            _ => Err(self.err("expected a JSON value")),
        }
    }

    fn literal(&mut self, out: &mut String, word: &str) -> Result<(), CanonicalError> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            out.push_str(word);
            Ok(())
        } else {
            Err(self.err("expected a JSON value"))
        }
    }

    fn number(&mut self, out: &mut String) -> Result<(), CanonicalError> {
        let start = self.i;
        while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') = self.s.get(self.i) {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).expect("ASCII");
        let x: f64 = text
            .parse()
            .map_err(|_| self.err(format!("`{text}` is not a number")))?;
        if !x.is_finite() {
            return Err(self.err(format!(
                "the number {text} is outside the range of an IEEE 754 double; send it as a string"
            )));
        }
        let canonical = format_number(x);
        if Decimal::parse(text) != Decimal::parse(&canonical) {
            return Err(self.err(format!(
                "the number {text} is not exactly representable as an IEEE 754 double and \
                 canonicalization would change it to {canonical}; send it as a string"
            )));
        }
        out.push_str(&canonical);
        Ok(())
    }

    /// Parses a string literal, decoding escapes. Fast path: no backslash.
    fn string(&mut self) -> Result<std::borrow::Cow<'_, str>, CanonicalError> {
        self.expect(b'"')?;
        let start = self.i;
        let rest = &self.s[start..];
        let end =
            memchr::memchr2(b'"', b'\\', rest).ok_or_else(|| self.err("unterminated string"))?;
        if rest[end] == b'"' {
            self.i = start + end + 1;
            let s = std::str::from_utf8(&self.s[start..start + end])
                .map_err(|_| self.err("string is not valid UTF-8"))?;
            return Ok(std::borrow::Cow::Borrowed(s));
        }
        let mut buf: Vec<u8> = Vec::with_capacity(rest.len().min(64));
        loop {
            let b = *self
                .s
                .get(self.i)
                .ok_or_else(|| self.err("unterminated string"))?;
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let e = *self
                        .s
                        .get(self.i)
                        .ok_or_else(|| self.err("unterminated escape"))?;
                    self.i += 1;
                    let c: char = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            if (0xD800..0xDC00).contains(&hi) {
                                if self.s.get(self.i..self.i + 2) != Some(b"\\u") {
                                    return Err(self.err("lone UTF-16 surrogate in a \\u escape"));
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("lone UTF-16 surrogate in a \\u escape"));
                                }
                                let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                                char::from_u32(cp).expect("valid surrogate pair")
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return Err(self.err("lone UTF-16 surrogate in a \\u escape"));
                            } else {
                                char::from_u32(hi).expect("not a surrogate")
                            }
                        }
                        _ => return Err(self.err("invalid escape in string")),
                    };
                    let mut tmp = [0u8; 4];
                    buf.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
                }
                _ => buf.push(b),
            }
        }
        String::from_utf8(buf)
            .map(std::borrow::Cow::Owned)
            .map_err(|_| self.err("string is not valid UTF-8"))
    }

    fn hex4(&mut self) -> Result<u32, CanonicalError> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .ok_or_else(|| self.err("short \\u escape"))?;
        let h = std::str::from_utf8(h).map_err(|_| self.err("bad \\u escape"))?;
        let v = u32::from_str_radix(h, 16).map_err(|_| self.err("bad \\u escape"))?;
        self.i += 4;
        Ok(v)
    }

    fn array(&mut self, out: &mut String, depth: usize) -> Result<(), CanonicalError> {
        self.expect(b'[')?;
        out.push('[');
        self.ws();
        if self.s.get(self.i) == Some(&b']') {
            self.i += 1;
            out.push(']');
            return Ok(());
        }
        let mut idx = 0;
        loop {
            if idx > 0 {
                out.push(',');
            }
            self.path.push(Seg::Index(idx));
            self.ws();
            self.value(out, depth + 1)?;
            self.path.pop();
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    out.push(']');
                    return Ok(());
                }
                _ => return Err(self.err("expected `,` or `]`")),
            }
            idx += 1;
        }
    }

    fn object(&mut self, out: &mut String, depth: usize) -> Result<(), CanonicalError> {
        self.expect(b'{')?;
        self.ws();
        let mut members: Vec<(String, String)> = Vec::new();
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
            out.push_str("{}");
            return Ok(());
        }
        loop {
            self.ws();
            let key = self.string()?.into_owned();
            self.ws();
            self.expect(b':')?;
            self.ws();
            self.path.push(Seg::Key(key.clone()));
            let mut v = String::new();
            self.value(&mut v, depth + 1)?;
            self.path.pop();
            members.push((key, v));
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(self.err("expected `,` or `}`")),
            }
        }
        members.sort_by(|a, b| cmp_utf16(&a.0, &b.0));
        if let Some(w) = members.windows(2).find(|w| w[0].0 == w[1].0) {
            let dup = w[0].0.clone();
            return Err(self.err(format!(
                "the member name {dup:?} appears more than once; a record must say one thing"
            )));
        }
        out.push('{');
        for (n, (k, v)) in members.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            write_string(out, k);
            out.push(':');
            out.push_str(v);
        }
        out.push('}');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8785_number_examples() {
        // RFC 8785 Appendix B: IEEE 754 bit patterns and their canonical text.
        let cases: &[(u64, &str)] = &[
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for &(bits, want) in cases {
            assert_eq!(
                format_number(f64::from_bits(bits)),
                want,
                "bits {bits:016x}"
            );
        }
    }

    #[test]
    fn rfc8785_sorting_and_strings() {
        // RFC 8785 §3.2.3: sorting by UTF-16 code units.
        let input = r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#;
        let out = canonicalize(input).unwrap();
        let keys: Vec<String> = serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(
            out.find("\\r").unwrap(),
            2,
            "carriage return sorts first: {out}"
        );
        let order: Vec<usize> = [
            "\r",
            "1",
            "\u{80}",
            "\u{f6}",
            "\u{20ac}",
            "\u{1f600}",
            "\u{fb33}",
        ]
        .iter()
        .map(|k| {
            out.find(&format!("\"{}\"", k.replace('\r', "\\r")))
                .unwrap()
        })
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{out}");
        assert_eq!(keys.len(), 7);
        // §3.2.2.2 string escaping example.
        assert_eq!(
            canonicalize(r#""\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/""#).unwrap(),
            "\"€$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\""
        );
    }

    #[test]
    fn rfc8785_structure_example() {
        let input = r#"{
          "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        // 333333333.33333329 is not exactly a double: wormvault refuses it instead of
        // rounding; the rest of the RFC example canonicalizes as published.
        let err = canonicalize(input).unwrap_err();
        assert_eq!(err.path, "$.numbers[0]");
        let input = input.replace("333333333.33333329", "333333333.3333333");
        assert_eq!(
            canonicalize(&input).unwrap(),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    #[test]
    fn refuses_values_it_would_alter() {
        let e = canonicalize(r#"{"order":{"qty":12345678901234567890}}"#).unwrap_err();
        assert_eq!(e.path, "$.order.qty");
        assert!(e.reason.contains("send it as a string"), "{e}");
        assert!(canonicalize("1e400").is_err());
        assert!(
            canonicalize(r#"{"a":1,"a":2}"#)
                .unwrap_err()
                .reason
                .contains("more than once")
        );
        assert!(
            canonicalize(r#"["\ud800"]"#)
                .unwrap_err()
                .reason
                .contains("surrogate")
        );
        assert_eq!(canonicalize("9007199254740993").unwrap_err().path, "$");
        // Different spellings of the same value are the same canonical text.
        assert_eq!(
            canonicalize("[1.0, 1e0, 10e-1, 0.1e1, -0, -0.0]").unwrap(),
            "[1,1,1,1,0,0]"
        );
        assert_eq!(
            canonicalize("9007199254740992").unwrap(),
            "9007199254740992"
        );
    }

    #[test]
    fn depth_is_bounded() {
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        assert!(
            canonicalize(&deep)
                .unwrap_err()
                .reason
                .contains("nested deeper")
        );
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert_eq!(canonicalize(&ok).unwrap(), ok);
    }
}

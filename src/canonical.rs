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

/// Canonicalizes one JSON text and appends the JCS bytes to `out`. `root` names the value
/// in error paths. The parser is strict: what is not JSON (RFC 8259) is refused, so it may
/// be the first to read a text.
pub fn canonicalize_into(json: &str, root: &str, out: &mut String) -> Result<(), CanonicalError> {
    with_parser(json, 0, root, MAX_DEPTH, |p| p.run(out))
}

/// Canonicalizes the one JSON value that starts at byte `start` of `src` (no whitespace
/// before it), nested at most `max_depth` levels below it, and appends its JCS bytes to
/// `out`. Returns where the value ends; what follows is not looked at. On an error, `out` may
/// hold part of the value.
pub fn canonicalize_value_at(
    src: &str,
    start: usize,
    root: &str,
    max_depth: usize,
    out: &mut String,
) -> Result<usize, CanonicalError> {
    with_parser(src, start, root, max_depth, |p| {
        p.value(out, 0)?;
        Ok(p.i)
    })
}

fn with_parser<T>(
    src: &str,
    start: usize,
    root: &str,
    max_depth: usize,
    f: impl FnOnce(&mut Parser<'_, '_>) -> Result<T, CanonicalError>,
) -> Result<T, CanonicalError> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.take();
        let result = f(&mut Parser {
            src,
            i: start,
            max_depth,
            scratch: &mut scratch,
        });
        SCRATCH.set(scratch);
        result.map_err(|mut e| {
            e.path.insert_str(0, root);
            e
        })
    })
}

/// Where the first byte of `b` that ends or interrupts a string's plain text is: a quote, a
/// backslash, or a control character. These are the bytes JSON allows in a string only
/// escaped and the bytes JCS escapes, so the one scan serves reading and writing strings.
#[inline]
pub(crate) fn find_special(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 8 <= b.len() {
        let hits = special_bytes(u64::from_le_bytes(
            b[i..i + 8].try_into().expect("eight bytes"),
        ));
        if hits != 0 {
            // The lowest flagged byte is exact: only bytes above a match can be flagged
            // falsely (by the borrow out of it).
            return Some(i + hits.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    b[i..]
        .iter()
        .position(|&c| c < 0x20 || c == b'"' || c == b'\\')
        .map(|n| i + n)
}

/// Whether a plain decimal (no sign, no exponent) is its own canonical form: at most 15
/// significant digits (so the nearest double's shortest form is this decimal again), no
/// trailing zero after the point, and between 1e-6 and 1e21 (where ECMAScript writes no
/// exponent).
fn is_own_canonical_decimal(d: &[u8]) -> bool {
    let Some(dot) = d.iter().position(|&c| c == b'.') else {
        return false;
    };
    let (int, frac) = (&d[..dot], &d[dot + 1..]);
    if frac.is_empty()
        || frac.last() == Some(&b'0')
        || !int.iter().chain(frac).all(u8::is_ascii_digit)
    {
        return false;
    }
    let significant = if int == b"0" {
        let zeros = frac.iter().take_while(|&&c| c == b'0').count();
        if zeros > 5 {
            return false;
        }
        frac.len() - zeros
    } else {
        if int.is_empty() || int[0] == b'0' {
            return false;
        }
        int.len() + frac.len()
    };
    significant <= 15
}

/// Whether `t` is a number as JSON writes one: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]?
/// [0-9]+)?`.
fn is_json_number(t: &[u8]) -> bool {
    let digits = |t: &[u8], at: usize| t[at..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = usize::from(t.first() == Some(&b'-'));
    match t.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i += digits(t, i),
        _ => return false,
    }
    if t.get(i) == Some(&b'.') {
        let n = digits(t, i + 1);
        if n == 0 {
            return false;
        }
        i += 1 + n;
    }
    if let Some(b'e' | b'E') = t.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = t.get(i) {
            i += 1;
        }
        let n = digits(t, i);
        if n == 0 {
            return false;
        }
        i += n;
    }
    i == t.len()
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
    while let Some(n) = find_special(&bytes[start..]) {
        let i = start + n;
        out.push_str(&s[start..i]);
        match bytes[i] {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x08 => out.push_str("\\b"),
            0x09 => out.push_str("\\t"),
            0x0a => out.push_str("\\n"),
            0x0c => out.push_str("\\f"),
            0x0d => out.push_str("\\r"),
            b => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// True if `s` is its own JCS string content: nothing in it needs an escape.
pub fn needs_no_escape(s: &str) -> bool {
    find_special(s.as_bytes()).is_none()
}

/// The high bit of each byte of `w` (little-endian) that may be below 0x20, `"` or `\\`:
/// zero exactly when none is (bytes of 0x80 and above never match), and the lowest bit set,
/// if any, marks the first such byte.
#[inline]
fn special_bytes(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    below(w, 0x20) | zero(w ^ (ONES * b'"' as u64)) | zero(w ^ (ONES * b'\\' as u64))
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
    let mut out = String::with_capacity(24);
    format_number_into(x, &mut out);
    out
}

/// Appends the ECMAScript `Number.prototype.toString` form of a finite double.
pub fn format_number_into(x: f64, out: &mut String) {
    debug_assert!(x.is_finite());
    if x == 0.0 {
        out.push('0');
        return;
    }
    let mut buf = ryu::Buffer::new();
    let dec = Decimal::parse(buf.format_finite(x).as_bytes()).expect("ryu prints a short decimal");
    let digits = dec.digits();
    let (k, n) = (digits.len() as i32, dec.point);
    let digits = std::str::from_utf8(digits).expect("ASCII digits");
    if dec.neg {
        out.push('-');
    }
    if k <= n && n <= 21 {
        out.push_str(digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(digits);
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
}

/// Most significant digits a double's shortest decimal form can have.
const MAX_DIGITS: usize = 17;

/// A decimal number in normal form: sign, significant digits (no leading or trailing zeros)
/// and point position (value = 0.`digits` × 10^`point`); zero has no digits and no sign.
/// Two decimals are numerically equal exactly when their normal forms are equal. Only numbers
/// with at most [`MAX_DIGITS`] significant digits are represented, without allocating.
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    neg: bool,
    len: u8,
    buf: [u8; MAX_DIGITS],
    point: i32,
}

impl Decimal {
    fn digits(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    /// Parses a JSON number literal (or ryu output); `None` if it has more than
    /// [`MAX_DIGITS`] significant digits or is not a number.
    fn parse(text: &[u8]) -> Option<Decimal> {
        let (neg, rest) = match text.split_first() {
            Some((b'-', r)) => (true, r),
            _ => (false, text),
        };
        let e_at = rest.iter().position(|&c| c == b'e' || c == b'E');
        let (mantissa, exp) = match e_at {
            Some(i) => {
                let e = std::str::from_utf8(&rest[i + 1..])
                    .ok()?
                    .parse::<i64>()
                    .ok()?;
                (&rest[..i], e)
            }
            None => (rest, 0),
        };
        let dot = mantissa.iter().position(|&c| c == b'.');
        let int_len = dot.unwrap_or(mantissa.len()) as i64;
        let mut d = Decimal {
            neg,
            len: 0,
            buf: [0; MAX_DIGITS],
            point: 0,
        };
        let mut leading = true;
        let mut seen_int = 0i64; // integer-part digits consumed (including leading zeros)
        let mut first_sig_pos: Option<i64> = None;
        let mut pending_zeros = 0usize;
        for &c in mantissa {
            if c == b'.' {
                continue;
            }
            if !c.is_ascii_digit() {
                return None;
            }
            let pos = seen_int;
            seen_int += 1;
            if leading && c == b'0' {
                continue;
            }
            if leading {
                leading = false;
                first_sig_pos = Some(pos);
            }
            if c == b'0' {
                pending_zeros += 1;
                continue;
            }
            if d.len as usize + pending_zeros + 1 > MAX_DIGITS {
                return None;
            }
            for _ in 0..pending_zeros {
                d.buf[d.len as usize] = b'0';
                d.len += 1;
            }
            pending_zeros = 0;
            d.buf[d.len as usize] = c;
            d.len += 1;
        }
        let Some(first) = first_sig_pos else {
            return Some(Decimal {
                neg: false,
                len: 0,
                buf: [0; MAX_DIGITS],
                point: 0,
            });
        };
        let point = int_len - first + exp;
        d.point = i32::try_from(point).ok()?;
        Some(d)
    }
}

/// Reusable buffers of the parser, one frame per nesting depth, kept per thread so that
/// canonicalizing an event allocates nothing in the steady state.
#[derive(Default)]
struct Scratch {
    frames: Vec<Frame>,
}

#[derive(Default)]
struct Frame {
    /// The serialized values of the object's members, back to back.
    values: String,
    members: Vec<Member>,
}

struct Member {
    key: Key,
    /// The name's first eight bytes, big-endian, zero-padded: names whose prefixes differ
    /// are in the prefixes' order, so most comparisons in a sort need not read the names.
    prefix: u64,
    /// Where the member's canonical value is: in the input (a string without escapes is
    /// its own canonical form, quotes included) or in its object's buffer.
    value: std::ops::Range<usize>,
    value_in_input: bool,
}

fn name_prefix(name: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    let n = name.len().min(8);
    word[..n].copy_from_slice(&name[..n]);
    u64::from_be_bytes(word)
}

/// A member name: a slice of the input (no escapes) or a decoded copy.
enum Key {
    Raw(std::ops::Range<usize>),
    Decoded(String),
}

thread_local! {
    static SCRATCH: std::cell::Cell<Scratch> = std::cell::Cell::new(Scratch::default());
}

fn key_of<'k>(src: &'k str, key: &'k Key) -> &'k str {
    match key {
        Key::Raw(r) => &src[r.clone()],
        Key::Decoded(s) => s,
    }
}

struct Parser<'a, 's> {
    src: &'a str,
    i: usize,
    /// Nesting deeper than this is refused.
    max_depth: usize,
    scratch: &'s mut Scratch,
}

impl Parser<'_, '_> {
    fn run(&mut self, out: &mut String) -> Result<(), CanonicalError> {
        self.ws();
        self.value(out, 0)?;
        self.ws();
        if self.i != self.src.len() {
            return Err(self.err("trailing characters after the JSON value"));
        }
        Ok(())
    }

    fn key_str<'k>(&'k self, key: &'k Key) -> &'k str {
        key_of(self.src, key)
    }

    /// An error at the value being read. Its path is empty here: each enclosing array and
    /// object puts its step in front as the error leaves it, and the root name goes first,
    /// so reading that succeeds keeps no path at all.
    fn err(&self, reason: impl Into<String>) -> CanonicalError {
        CanonicalError {
            path: String::new(),
            reason: reason.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), CanonicalError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(format!("expected `{}`", c as char)))
        }
    }

    #[inline]
    fn value(&mut self, out: &mut String, depth: usize) -> Result<(), CanonicalError> {
        if let Some(r) = self.value_or_input(out, depth)? {
            out.push_str(&self.src[r]);
        }
        Ok(())
    }

    /// Reads a value and appends its canonical form to `out`, or, when the input already
    /// holds it in canonical form, leaves `out` alone and returns where it is in the input.
    fn value_or_input(
        &mut self,
        out: &mut String,
        depth: usize,
    ) -> Result<Option<std::ops::Range<usize>>, CanonicalError> {
        if depth > self.max_depth {
            return Err(self.err(format!("nested deeper than {} levels", self.max_depth)));
        }
        match self.peek() {
            Some(b'{') => self.object(out, depth),
            Some(b'[') => self.array(out, depth),
            Some(b'"') => match self.string()? {
                // A JSON string without escapes holds no quote, backslash or control
                // character: it is already in canonical form, quotes and all.
                Key::Raw(r) => return Ok(Some(r.start - 1..r.end + 1)),
                Key::Decoded(s) => {
                    write_string(out, &s);
                    Ok(())
                }
            },
            Some(b't') => self.literal(out, "true"),
            Some(b'f') => self.literal(out, "false"),
            Some(b'n') => self.literal(out, "null"),
            Some(b'-' | b'0'..=b'9') => self.number(out),
            _ => Err(self.err("expected a JSON value")),
        }
        .map(|()| None)
    }

    fn literal(&mut self, out: &mut String, word: &str) -> Result<(), CanonicalError> {
        if self.src.as_bytes()[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            out.push_str(word);
            Ok(())
        } else {
            Err(self.err("expected a JSON value"))
        }
    }

    fn number(&mut self, out: &mut String) -> Result<(), CanonicalError> {
        let start = self.i;
        while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        let text = &self.src[start..self.i];
        if !is_json_number(text.as_bytes()) {
            return Err(self.err(format!("`{text}` is not a JSON number")));
        }
        // Fast path: a plain integer of at most 15 digits is its own canonical form.
        let digits = text.strip_prefix('-').unwrap_or(text);
        if !digits.is_empty()
            && digits.len() <= 15
            && digits.bytes().all(|c| c.is_ascii_digit())
            && (digits.len() == 1 || !digits.starts_with('0'))
        {
            out.push_str(if digits == "0" { "0" } else { text });
            return Ok(());
        }
        if is_own_canonical_decimal(digits.as_bytes()) {
            out.push_str(text);
            return Ok(());
        }
        let x: f64 = text
            .parse()
            .map_err(|_| self.err(format!("`{text}` is not a number")))?;
        if !x.is_finite() {
            return Err(self.err(format!(
                "the number {text} is outside the range of an IEEE 754 double; send it as a string"
            )));
        }
        let at = out.len();
        format_number_into(x, out);
        let exact = match Decimal::parse(text.as_bytes()) {
            Some(d) => Decimal::parse(&out.as_bytes()[at..]) == Some(d),
            None => false,
        };
        if !exact {
            let canonical = out[at..].to_owned();
            out.truncate(at);
            return Err(self.err(format!(
                "the number {text} is not exactly representable as an IEEE 754 double and \
                 canonicalization would change it to {canonical}; send it as a string"
            )));
        }
        Ok(())
    }

    /// Parses a string literal. Without escapes it is returned as a range of the input;
    /// otherwise decoded.
    fn string(&mut self) -> Result<Key, CanonicalError> {
        self.expect(b'"')?;
        let start = self.i;
        let rest = &self.src.as_bytes()[start..];
        let end = find_special(rest).ok_or_else(|| self.err("unterminated string"))?;
        match rest[end] {
            b'"' => {
                self.i = start + end + 1;
                return Ok(Key::Raw(start..start + end));
            }
            b'\\' => {}
            _ => return Err(self.err("control character in a string (JSON needs it escaped)")),
        }
        let mut buf = String::with_capacity(end + 16);
        buf.push_str(&self.src[start..start + end]);
        self.i = start + end;
        loop {
            let b = self.peek().ok_or_else(|| self.err("unterminated string"))?;
            match b {
                b'"' => {
                    self.i += 1;
                    break;
                }
                b'\\' => {
                    self.i += 1;
                    let e = self.peek().ok_or_else(|| self.err("unterminated escape"))?;
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
                                if self.src.as_bytes().get(self.i..self.i + 2) != Some(b"\\u") {
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
                    buf.push(c);
                }
                b if b < 0x20 => {
                    return Err(self.err("control character in a string (JSON needs it escaped)"));
                }
                _ => {
                    // Copy the run up to the next quote, backslash or control character.
                    let rest = &self.src.as_bytes()[self.i..];
                    let n = find_special(rest).ok_or_else(|| self.err("unterminated string"))?;
                    buf.push_str(&self.src[self.i..self.i + n]);
                    self.i += n;
                }
            }
        }
        Ok(Key::Decoded(buf))
    }

    fn hex4(&mut self) -> Result<u32, CanonicalError> {
        let h = self
            .src
            .get(self.i..self.i + 4)
            .ok_or_else(|| self.err("short \\u escape"))?;
        if !h.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(self.err("bad \\u escape"));
        }
        let v = u32::from_str_radix(h, 16).map_err(|_| self.err("bad \\u escape"))?;
        self.i += 4;
        Ok(v)
    }

    fn array(&mut self, out: &mut String, depth: usize) -> Result<(), CanonicalError> {
        self.expect(b'[')?;
        out.push('[');
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            out.push(']');
            return Ok(());
        }
        let mut idx = 0;
        loop {
            if idx > 0 {
                out.push(',');
            }
            self.ws();
            self.value(out, depth + 1).map_err(|mut e| {
                e.path.insert_str(0, &format!("[{idx}]"));
                e
            })?;
            self.ws();
            match self.peek() {
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
        if self.peek() == Some(b'}') {
            self.i += 1;
            out.push_str("{}");
            return Ok(());
        }
        if self.scratch.frames.len() <= depth {
            self.scratch.frames.resize_with(depth + 1, Frame::default);
        }
        let mut frame = std::mem::take(&mut self.scratch.frames[depth]);
        frame.values.clear();
        frame.members.clear();
        let result = self.members(&mut frame, depth);
        if result.is_ok() {
            self.emit(&frame, out);
        }
        self.scratch.frames[depth] = frame;
        result
    }

    fn members(&mut self, frame: &mut Frame, depth: usize) -> Result<(), CanonicalError> {
        loop {
            self.ws();
            let key = self.string()?;
            self.ws();
            self.expect(b':')?;
            self.ws();
            let start = frame.values.len();
            // A value already in canonical form in the input is emitted from there.
            let (value, value_in_input) = match self.value_or_input(&mut frame.values, depth + 1) {
                Ok(Some(in_input)) => (in_input, true),
                Ok(None) => (start..frame.values.len(), false),
                Err(mut e) => {
                    e.path.insert_str(0, &format!(".{}", self.key_str(&key)));
                    return Err(e);
                }
            };
            frame.members.push(Member {
                prefix: name_prefix(self.key_str(&key).as_bytes()),
                key,
                value,
                value_in_input,
            });
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(self.err("expected `,` or `}`")),
            }
        }
        let src = self.src;
        // UTF-8 byte order is UTF-16 order unless a name holds a character outside the Basic
        // Multilingual Plane (a 4-byte UTF-8 sequence, lead byte 0xF0 or above).
        let astral = frame
            .members
            .iter()
            .any(|m| key_of(src, &m.key).bytes().any(|b| b >= 0xF0));
        if astral {
            frame
                .members
                .sort_by(|a, b| cmp_utf16(key_of(src, &a.key), key_of(src, &b.key)));
        } else {
            frame.members.sort_by(|a, b| {
                a.prefix.cmp(&b.prefix).then_with(|| {
                    key_of(src, &a.key)
                        .as_bytes()
                        .cmp(key_of(src, &b.key).as_bytes())
                })
            });
        }
        if let Some(w) = frame.members.windows(2).find(|w| {
            w[0].prefix == w[1].prefix && key_of(src, &w[0].key) == key_of(src, &w[1].key)
        }) {
            let dup = key_of(src, &w[0].key).to_owned();
            return Err(self.err(format!(
                "the member name {dup:?} appears more than once; a record must say one thing"
            )));
        }
        Ok(())
    }

    fn emit(&self, frame: &Frame, out: &mut String) {
        out.push('{');
        for (n, m) in frame.members.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            match &m.key {
                Key::Raw(r) => out.push_str(&self.src[r.start - 1..r.end + 1]),
                Key::Decoded(s) => write_string(out, s),
            }
            out.push(':');
            out.push_str(if m.value_in_input {
                &self.src[m.value.clone()]
            } else {
                &frame.values[m.value.clone()]
            });
        }
        out.push('}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-at-a-time check agrees with the byte-by-byte rule for every byte value at
    /// every position of strings of every length up to 20.
    #[test]
    fn needs_no_escape_agrees_with_the_rule() {
        let plain = |b: u8| b >= 0x20 && b != b'"' && b != b'\\';
        for len in 1..=20usize {
            for at in 0..len {
                for b in 0u8..0x80 {
                    let mut text = vec![b'x'; len];
                    text[at] = b;
                    let s = std::str::from_utf8(&text).unwrap();
                    assert_eq!(needs_no_escape(s), plain(b), "{len} {at} {b:#x}");
                }
            }
        }
        assert!(needs_no_escape(""));
        assert!(needs_no_escape("\u{e9}t\u{e9} \u{1F600}"));
    }

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

    /// Names that share their first eight bytes, or differ only by a trailing NUL (which
    /// pads like nothing at all), still sort by all their bytes, and a repeated long name is
    /// still found.
    #[test]
    fn names_sharing_a_prefix_sort_by_all_their_bytes() {
        let input =
            r#"{"abcdefghi":1,"abcdefgh\u0000":2,"ab\u0000":3,"abcdefgh":4,"ab":5,"abcdefgha":6}"#;
        assert_eq!(
            canonicalize(input).unwrap(),
            r#"{"ab":5,"ab\u0000":3,"abcdefgh":4,"abcdefgh\u0000":2,"abcdefgha":6,"abcdefghi":1}"#
        );
        let repeated = r#"{"abcdefgh_x":1,"abcdefgh_y":2,"abcdefgh_x":3}"#;
        let e = canonicalize(repeated).unwrap_err();
        assert!(e.reason.contains("abcdefgh_x"), "{e}");
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

    /// `find_special` finds the first byte a string holds only escaped, wherever two bytes
    /// next to each other (specials, their neighbours, bytes with the high bit) fall in or
    /// across an eight-byte word; a borrow out of one match must not hide or move it.
    #[test]
    fn find_special_finds_the_first_special_byte() {
        let rule = |b: &[u8]| b.iter().position(|&c| c < 0x20 || c == b'"' || c == b'\\');
        let bytes: Vec<u8> = (0..=0x23)
            .chain(0x5b..=0x5d)
            .chain([0x7f, 0x80, 0x81, 0xdc, 0xff])
            .collect();
        for len in [7, 8, 9, 16, 17] {
            for at in 0..len - 1 {
                for &x in &bytes {
                    for &y in &bytes {
                        let mut b = vec![b'a'; len];
                        b[at] = x;
                        b[at + 1] = y;
                        assert_eq!(find_special(&b), rule(&b), "{b:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn string_escaping_finds_every_special_byte_at_every_position() {
        // Each byte that must be escaped, alone and next to multi-byte characters, at every
        // offset of a string long enough to take the eight-bytes-at-a-time path.
        let specials = (0u8..0x20).chain([b'"', b'\\']).map(char::from);
        for special in specials {
            for at in 0..19 {
                let mut s: String = "abcdéfgh€ijklmnopq".chars().collect();
                let at = s.char_indices().nth(at).map_or(s.len(), |(i, _)| i);
                s.insert(at, special);
                let mut out = String::new();
                write_string(&mut out, &s);
                assert_eq!(out, serde_json::to_string(&s).unwrap(), "{s:?}");
            }
        }
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
        let e = canonicalize(r#"{"a":[1,{"b":[{"c":[2,3,1e999]}]}]}"#).unwrap_err();
        assert_eq!(e.path, "$.a[1].b[0].c[2]");
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

    /// Decimals written as they are (the fast path) are exactly what the double's ECMAScript
    /// form is, for every shape the fast path takes and the edges it leaves to the slow one.
    #[test]
    fn plain_decimals_are_their_own_canonical_form() {
        let mut rng = crate::bench::Rng::new(5);
        let mut texts: Vec<String> = [
            "0.1",
            "0.000001",
            "0.0000012",
            "0.0000001",
            "123456789012345.5",
            "12345678901234.5",
            "999999999999999.9",
            "1.5",
            "-2.25",
            "0.30000000000000004",
            "100.0",
            "0.10",
            "4.35",
            "0.3",
            "9007199254740.993",
            "1e2",
            "0.5e1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for _ in 0..20_000 {
            let int = match rng.below(3) {
                0 => "0".to_string(),
                _ => {
                    let len = 1 + rng.below(12) as u32;
                    (1 + rng.below(10u64.pow(len))).to_string()
                }
            };
            let zeros = "0".repeat(rng.below(8) as usize);
            let len = 1 + rng.below(10) as u32;
            let frac = rng.below(10u64.pow(len));
            let sign = if rng.below(4) == 0 { "-" } else { "" };
            texts.push(format!("{sign}{int}.{zeros}{frac}"));
        }
        let mut fast = 0;
        for t in &texts {
            if is_own_canonical_decimal(t.trim_start_matches('-').as_bytes()) {
                let x: f64 = t.parse().unwrap();
                assert_eq!(canonicalize(t).unwrap(), format_number(x), "{t}");
                fast += 1;
            }
        }
        assert!(fast > texts.len() / 3, "{fast} of {}", texts.len());
        for edge in [
            "0.0000001",
            "0.10",
            "100.0",
            "1234567890123456.5",
            "1e2",
            "0.5e1",
        ] {
            assert!(!is_own_canonical_decimal(edge.as_bytes()), "{edge}");
        }
    }

    /// The parser is strict: it refuses every text here that is not JSON (serde_json agrees),
    /// since it may be the first to read a payload.
    #[test]
    fn refuses_what_is_not_json() {
        for bad in [
            "01",
            "-01",
            "1.",
            ".5",
            "+1",
            "1e",
            "1e+",
            "-",
            "--1",
            "1.e5",
            "0x10",
            "1_000",
            "\"\\u12G4\"",
            "\"\\u+123\"",
            "\"\\x41\"",
            "\"a\u{1}b\"",
            "\"a\tb\"",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{'a':1}",
            "tru",
            "nul",
            "[1 2]",
            "{\"a\":}",
        ] {
            assert!(
                serde_json::from_str::<serde_json::Value>(bad).is_err(),
                "serde_json reads {bad}"
            );
            assert!(canonicalize(bad).is_err(), "canonicalized {bad}");
        }
        for good in [
            "0",
            "-0",
            "1e5",
            "1E+5",
            "1.5e-3",
            "\"\\u00e9\\/\"",
            "[ 1 , 2 ]",
        ] {
            assert!(canonicalize(good).is_ok(), "{good}");
        }
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
        // Scalars count as a level too, strings included (they take a shorter path as
        // object members): a value at depth MAX_DEPTH is read, one deeper is refused.
        let nested =
            |levels: usize, value: &str| "{\"a\":".repeat(levels) + value + &"}".repeat(levels);
        for value in ["\"text\"", "\"esc\\n\"", "12", "true"] {
            let at_limit = nested(MAX_DEPTH, value);
            assert!(canonicalize(&at_limit).is_ok(), "{value}");
            let e = canonicalize(&nested(MAX_DEPTH + 1, value)).unwrap_err();
            assert!(e.reason.contains("nested deeper"), "{value}: {e}");
        }
    }

    /// A reference canonicalizer over `serde_json::Value`, for differential testing of the
    /// streaming parser (sorting, escaping, nesting); numbers go through `format_number`,
    /// which the RFC table above pins.
    fn reference(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Null => out.push_str("null"),
            serde_json::Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            serde_json::Value::Number(n) => out.push_str(&format_number(n.as_f64().unwrap())),
            serde_json::Value::String(s) => write_string(out, s),
            serde_json::Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    reference(x, out);
                }
                out.push(']');
            }
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort_by(|a, b| cmp_utf16(a, b));
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(out, k);
                    out.push(':');
                    reference(&m[k.as_str()], out);
                }
                out.push('}');
            }
        }
    }

    #[test]
    fn agrees_with_a_reference_on_generated_documents() {
        let mut rng = crate::bench::Rng::new(99);
        let keys = [
            "a",
            "b",
            "\u{e9}",
            "\u{1f600}",
            "\u{fb33}",
            "z\"q",
            "tab\t",
            "",
            "A",
            "10",
            "9",
        ];
        let strings = [
            "x",
            "line\nbreak",
            "quote\"back\\slash",
            "\u{1}ctl",
            "caf\u{e9}",
            "\u{1f600}",
            "/",
            "",
        ];
        fn document(
            rng: &mut crate::bench::Rng,
            depth: u32,
            keys: &[&str],
            strings: &[&str],
        ) -> serde_json::Value {
            match rng.below(if depth > 3 { 4 } else { 6 }) {
                0 => serde_json::Value::Null,
                1 => serde_json::json!(rng.below(2) == 0),
                2 => match rng.below(3) {
                    0 => serde_json::json!(rng.below(1 << 40) as i64 - (1 << 39)),
                    1 => serde_json::json!(rng.below(1_000_000) as f64 / 64.0),
                    _ => serde_json::json!(f64::from_bits(rng.next_u64() & 0x7fef_ffff_ffff_ffff)),
                },
                3 => serde_json::json!(strings[rng.below(strings.len() as u64) as usize]),
                4 => serde_json::Value::Array(
                    (0..rng.below(4))
                        .map(|_| document(rng, depth + 1, keys, strings))
                        .collect(),
                ),
                _ => {
                    let mut m = serde_json::Map::new();
                    for _ in 0..rng.below(6) {
                        m.insert(
                            keys[rng.below(keys.len() as u64) as usize].to_owned(),
                            document(rng, depth + 1, keys, strings),
                        );
                    }
                    serde_json::Value::Object(m)
                }
            }
        }
        for _ in 0..3000 {
            let v = document(&mut rng, 0, &keys, &strings);
            let mut want = String::new();
            reference(&v, &mut want);
            // Both the compact and a spaced-out spelling canonicalize to the reference.
            assert_eq!(canonicalize(&v.to_string()).unwrap(), want, "{v}");
            let spaced = serde_json::to_string_pretty(&v).unwrap();
            assert_eq!(canonicalize(&spaced).unwrap(), want);
            assert_eq!(canonicalize(&want).unwrap(), want, "a fixed point");
        }
    }
}

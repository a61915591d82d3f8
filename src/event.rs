//! The event of wire contract v1: typed parsing, validation, and canonical bytes.
//!
//! An ordinary event is read in one pass: the envelope in place (fields borrowed from the
//! input) and the payload canonicalized as it is read (`fast`). Anything unusual goes to the
//! typed `serde` path (borrowed fields, the payload kept as a raw JSON slice and canonicalized
//! after), which reads it or words the refusal; a generic `serde_json::Value` would halve
//! throughput. Every refusal names the field and says why in words an upstream developer can
//! act on, and one bad event never affects another: parsing is per event, and nothing here
//! panics on input.
//!
//! The **canonical record** is the RFC 8785 (JCS) form of the stored event:
//!
//! ```text
//! {"action":…,"actor":{"id":…,"role":…?,"type":…},"correlation_id":…?,"event_id":…,
//!  "ingested_at":…,"occurred_at":…,"origin":{"device":…?,"ip":…?}?,"payload":{…},
//!  "retention_class":…,"source":…,"subject":{"id":…,"type":…}}
//! ```
//!
//! (`?` = omitted when absent; timestamps as `YYYY-MM-DDTHH:MM:SS.ffffffZ`; `retention_class`
//! is the resolved class.) Its bytes are the Merkle leaf's input. The **content digest** used
//! for idempotency is SHA-256 of the same form *without* `ingested_at` and with
//! `retention_class` as submitted (omitted when not submitted): what the upstream said, not
//! what we added.

use crate::retention::ClassName;
use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::Digest as _;

use crate::canonical::{self, write_string};
use crate::index::{Fingerprint, fingerprint};
use crate::merkle::{self, Hash};
use crate::retention::RetentionPolicy;
use crate::timestamp::{Day, Timestamp, TimestampError};

/// Who acted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActorType {
    User,
    System,
    Service,
}

impl ActorType {
    pub const ALL: [ActorType; 3] = [ActorType::User, ActorType::System, ActorType::Service];

    pub fn as_str(self) -> &'static str {
        match self {
            ActorType::User => "USER",
            ActorType::System => "SYSTEM",
            ActorType::Service => "SERVICE",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// Through which channel the event reached the firm's systems.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Fix,
    Ui,
    Api,
    System,
}

impl Source {
    pub const ALL: [Source; 4] = [Source::Fix, Source::Ui, Source::Api, Source::System];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Fix => "FIX",
            Source::Ui => "UI",
            Source::Api => "API",
            Source::System => "SYSTEM",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor<'a> {
    pub kind: ActorType,
    pub id: Cow<'a, str>,
    pub role: Option<Cow<'a, str>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject<'a> {
    pub kind: Cow<'a, str>,
    pub id: Cow<'a, str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin<'a> {
    pub ip: Option<Cow<'a, str>>,
    pub device: Option<Cow<'a, str>>,
}

/// A validated event as the upstream submitted it. Its text fields borrow from the input
/// where they can (they are copied once, into the [`Record`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event<'a> {
    pub event_id: Cow<'a, str>,
    pub occurred_at: Timestamp,
    pub actor: Actor<'a>,
    pub action: Cow<'a, str>,
    pub subject: Subject<'a>,
    pub origin: Option<Origin<'a>>,
    pub source: Source,
    /// As submitted; the resolved class lives in [`Record`].
    pub retention_class: Option<Cow<'a, str>>,
    pub correlation_id: Option<Cow<'a, str>>,
    /// The payload object in canonical (JCS) form.
    pub payload: String,
}

/// Limits applied while parsing.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest accepted event, in bytes of its JSON text.
    pub max_event_bytes: usize,
    /// Latest accepted `occurred_at` (now plus the allowed clock skew).
    pub latest_occurred_at: Timestamp,
}

/// What kind of problem an event had; the stable, low-cardinality code used in responses and
/// metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectKind {
    /// Not parseable as JSON (truncated, garbage, trailing characters).
    Malformed,
    InvalidUtf8,
    TooLarge,
    MissingField,
    UnknownField,
    WrongType,
    /// A value of the right type that the contract does not allow.
    InvalidValue,
    InvalidTimestamp,
    InvalidEventId,
    PayloadNotObject,
    /// The same `event_id` was archived before with different content.
    Conflict,
}

impl RejectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::Malformed => "malformed",
            RejectKind::InvalidUtf8 => "invalid_utf8",
            RejectKind::TooLarge => "too_large",
            RejectKind::MissingField => "missing_field",
            RejectKind::UnknownField => "unknown_field",
            RejectKind::WrongType => "wrong_type",
            RejectKind::InvalidValue => "invalid_value",
            RejectKind::InvalidTimestamp => "invalid_timestamp",
            RejectKind::InvalidEventId => "invalid_event_id",
            RejectKind::PayloadNotObject => "payload_not_object",
            RejectKind::Conflict => "conflict",
        }
    }
}

/// Why one event was refused: the field (a dotted path, `None` for the event as a whole) and
/// a sentence. The caller adds the event's position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct EventError {
    pub kind: RejectKind,
    pub field: Option<String>,
    pub reason: String,
    /// The event's `event_id` when it could be read.
    pub event_id: Option<String>,
}

impl EventError {
    fn new(kind: RejectKind, field: Option<&str>, reason: impl Into<String>) -> Self {
        EventError {
            kind,
            field: field.map(str::to_owned),
            reason: reason.into(),
            event_id: None,
        }
    }

    fn field(kind: RejectKind, field: &str, reason: impl Into<String>) -> Self {
        Self::new(kind, Some(field), reason)
    }
}

/// The serde parse of an event's envelope into the wire struct, the payload kept raw, and
/// nothing else: no validation, no canonical form. It is what DESIGN.md's ceiling counts as
/// parsing, for [`crate::bench::ceiling_pipeline`]; the archive's own parse is
/// [`parse_event`]. Returns the `event_id`, if the line parses and has one.
pub fn envelope_event_id(line: &str) -> Option<Cow<'_, str>> {
    serde_json::from_str::<WireEvent>(line).ok()?.event_id
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEvent<'a> {
    #[serde(borrow, default)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    occurred_at: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    actor: Option<WireActor<'a>>,
    #[serde(borrow, default)]
    action: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    subject: Option<WireSubject<'a>>,
    #[serde(borrow, default)]
    origin: Option<WireOrigin<'a>>,
    #[serde(borrow, default)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    retention_class: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    correlation_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireActor<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSubject<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireOrigin<'a> {
    #[serde(borrow, default)]
    ip: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    device: Option<Cow<'a, str>>,
}

/// Largest `event_id` and `correlation_id`, in characters.
pub const MAX_ID_LEN: usize = 128;
/// Largest free-text identifier (actor id, subject id, role, device), in bytes.
pub const MAX_TEXT_LEN: usize = 256;

/// Parses and validates one event from its JSON text.
pub fn parse_event<'a>(bytes: &'a [u8], limits: &Limits) -> Result<Event<'a>, EventError> {
    parse_with(bytes, limits, true)
}

/// An event accepted by the parser and given its retention class: what the import and the
/// daemon do with each event they read, before idempotency and batching.
pub struct Admissible {
    pub record: Record,
    /// Set when an explicit retention class was lengthened by the rules.
    pub note: Option<String>,
}

/// Parses one event, resolves its retention class and makes it a record ingested at
/// `ingested_at`. An unknown explicit class is refused as an invalid `retention_class`.
pub fn parse_record(
    bytes: &[u8],
    limits: &Limits,
    retention: &RetentionPolicy,
    ingested_at: Timestamp,
) -> Result<Admissible, EventError> {
    let event = parse_event(bytes, limits)?;
    match retention.resolve(
        &event.action,
        event.retention_class.as_deref(),
        event.occurred_at,
    ) {
        Err(reason) => Err(EventError {
            kind: RejectKind::InvalidValue,
            field: Some("retention_class".into()),
            reason,
            event_id: Some(event.event_id.into_owned()),
        }),
        Ok(res) => Ok(Admissible {
            record: Record::new(event, ingested_at, res.class),
            note: res.note,
        }),
    }
}

/// [`parse_event`], with or without trying the one-pass reader first.
fn parse_with<'a>(
    bytes: &'a [u8],
    limits: &Limits,
    one_pass: bool,
) -> Result<Event<'a>, EventError> {
    parse_inner(bytes, limits, one_pass).map_err(|mut e| {
        if e.event_id.is_none() {
            e.event_id = sniff_event_id(bytes);
        }
        e
    })
}

fn parse_inner<'a>(
    bytes: &'a [u8],
    limits: &Limits,
    one_pass: bool,
) -> Result<Event<'a>, EventError> {
    use RejectKind::*;
    if bytes.len() > limits.max_event_bytes {
        return Err(EventError::new(
            TooLarge,
            None,
            format!(
                "the event is {} bytes; the limit is {} bytes",
                bytes.len(),
                limits.max_event_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        EventError::new(
            InvalidUtf8,
            None,
            format!("invalid UTF-8 at byte {} of the event", e.valid_up_to()),
        )
    })?;
    if text.trim().is_empty() {
        return Err(EventError::new(Malformed, None, "empty event"));
    }
    if let Some((wire, payload)) = one_pass.then(|| fast::parse(text)).flatten() {
        return finish(wire, Some(PayloadIn::Canonical(payload)), limits);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let mut wire = match WireEvent::deserialize(&mut de) {
        Ok(wire) => wire,
        // Parse again, tracking the path, only to say precisely where the problem is.
        Err(plain) => {
            let mut de = serde_json::Deserializer::from_str(text);
            return Err(
                match serde_path_to_error::deserialize::<_, WireEvent<'_>>(&mut de) {
                    Err(tracked) => map_serde_error(tracked),
                    Ok(_) => EventError::new(
                        Malformed,
                        None,
                        format!("not valid JSON: {}", strip_position(&plain)),
                    ),
                },
            );
        }
    };
    de.end()
        .map_err(|e| EventError::new(Malformed, None, strip_position(&e)))?;
    let payload = wire.payload.take().map(PayloadIn::Raw);
    finish(wire, payload, limits)
}

/// One pass over an event in the common case: the envelope read in place and the payload
/// canonicalized as it is read, where `serde` would first scan the payload to find its end
/// and the canonicalizer would then read it again.
///
/// It gives up ([`None`]) at anything unusual: a member it does not know or has seen, an
/// escape in a name or a text field, a value of an unexpected type, a payload that is not an
/// object or has no canonical form, deep nesting, bytes after the event. The `serde` path
/// then reads the event and words the refusal. So this path only ever accepts what that one
/// accepts, and reads it the same way; a test compares the two on valid, invalid and mutated
/// events.
mod fast {
    use super::{WireActor, WireEvent, WireOrigin, WireSubject};
    use crate::canonical;
    use std::borrow::Cow;

    /// Payload nesting this path takes on; deeper payloads go to `serde`, whose recursion
    /// limit (128 containers in all) words that refusal.
    const MAX_PAYLOAD_DEPTH: usize = 100;

    struct Reader<'a> {
        text: &'a str,
        i: usize,
    }

    impl<'a> Reader<'a> {
        fn ws(&mut self) {
            let b = self.text.as_bytes();
            while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(self.i) {
                self.i += 1;
            }
        }

        fn peek(&self) -> Option<u8> {
            self.text.as_bytes().get(self.i).copied()
        }

        fn eat(&mut self, c: u8) -> Option<()> {
            self.ws();
            (self.peek()? == c).then(|| self.i += 1)
        }

        /// A string without escapes or control characters.
        fn plain_string(&mut self) -> Option<&'a str> {
            self.ws();
            if self.peek()? != b'"' {
                return None;
            }
            let start = self.i + 1;
            let rest = &self.text.as_bytes()[start..];
            let len = canonical::find_special(rest)?;
            if rest[len] != b'"' {
                return None;
            }
            self.i = start + len + 1;
            Some(&self.text[start..start + len])
        }

        /// A text value or `null`.
        fn text_or_null(&mut self) -> Option<Option<Cow<'a, str>>> {
            self.ws();
            if self.peek()? == b'n' {
                return self.null().map(|_| None);
            }
            self.plain_string().map(|s| Some(Cow::Borrowed(s)))
        }

        fn null(&mut self) -> Option<()> {
            self.text[self.i..].starts_with("null").then(|| self.i += 4)
        }

        /// An object whose members are texts or `null` (`actor`, `subject`, `origin`), or
        /// `null`. `set` stores a member by name in `T`, once (it is handed the bit set of
        /// members seen), and refuses a name it does not know.
        fn object<T: Default>(
            &mut self,
            set: impl Fn(&mut T, &mut u32, &str, Option<Cow<'a, str>>) -> Option<()>,
        ) -> Option<Option<T>> {
            self.ws();
            if self.peek()? == b'n' {
                return self.null().map(|_| None);
            }
            let (mut value, mut seen) = (T::default(), 0u32);
            self.members(|r, name| {
                let v = r.text_or_null()?;
                set(&mut value, &mut seen, name, v)
            })?;
            Some(Some(value))
        }

        /// An object: `member` reads each member's value, given its name (names without
        /// escapes only).
        fn members(
            &mut self,
            mut member: impl FnMut(&mut Self, &'a str) -> Option<()>,
        ) -> Option<()> {
            self.eat(b'{')?;
            self.ws();
            if self.peek()? == b'}' {
                self.i += 1;
                return Some(());
            }
            loop {
                let name = self.plain_string()?;
                self.eat(b':')?;
                member(self, name)?;
                self.ws();
                match self.peek()? {
                    b',' => self.i += 1,
                    b'}' => {
                        self.i += 1;
                        return Some(());
                    }
                    _ => return None,
                }
            }
        }
    }

    /// Stores `value` in `slot` once; a member seen twice gives up.
    fn once<T>(slot: &mut Option<T>, seen: &mut u32, bit: u32, value: Option<T>) -> Option<()> {
        if *seen & bit != 0 {
            return None;
        }
        *seen |= bit;
        *slot = value;
        Some(())
    }

    /// The envelope and the payload in canonical form, or `None` to read it with `serde`.
    pub(super) fn parse(text: &str) -> Option<(WireEvent<'_>, String)> {
        let mut r = Reader { text, i: 0 };
        let mut w = WireEvent::default();
        let mut payload: Option<String> = None;
        let mut seen = 0u32;
        // An empty object has no payload, so it goes to `serde` at the end like any event
        // without one.
        r.members(|r, name| {
            match name {
                "event_id" => once(&mut w.event_id, &mut seen, 1, r.text_or_null()?)?,
                "occurred_at" => once(&mut w.occurred_at, &mut seen, 2, r.text_or_null()?)?,
                "action" => once(&mut w.action, &mut seen, 4, r.text_or_null()?)?,
                "source" => once(&mut w.source, &mut seen, 8, r.text_or_null()?)?,
                "retention_class" => {
                    once(&mut w.retention_class, &mut seen, 16, r.text_or_null()?)?
                }
                "correlation_id" => once(&mut w.correlation_id, &mut seen, 32, r.text_or_null()?)?,
                "actor" => {
                    let a = r.object(|a: &mut WireActor<'_>, seen, k, v| match k {
                        "type" => once(&mut a.kind, seen, 1, v),
                        "id" => once(&mut a.id, seen, 2, v),
                        "role" => once(&mut a.role, seen, 4, v),
                        _ => None,
                    })?;
                    once(&mut w.actor, &mut seen, 64, a)?
                }
                "subject" => {
                    let s = r.object(|s: &mut WireSubject<'_>, seen, k, v| match k {
                        "type" => once(&mut s.kind, seen, 1, v),
                        "id" => once(&mut s.id, seen, 2, v),
                        _ => None,
                    })?;
                    once(&mut w.subject, &mut seen, 128, s)?
                }
                "origin" => {
                    let o = r.object(|o: &mut WireOrigin<'_>, seen, k, v| match k {
                        "ip" => once(&mut o.ip, seen, 1, v),
                        "device" => once(&mut o.device, seen, 2, v),
                        _ => None,
                    })?;
                    once(&mut w.origin, &mut seen, 256, o)?
                }
                "payload" => {
                    r.ws();
                    if r.peek()? != b'{' || seen & 512 != 0 {
                        return None;
                    }
                    seen |= 512;
                    let mut out = String::with_capacity(text.len() - r.i);
                    r.i = canonical::canonicalize_value_at(
                        text,
                        r.i,
                        "payload",
                        MAX_PAYLOAD_DEPTH,
                        &mut out,
                    )
                    .ok()?;
                    payload = Some(out);
                }
                _ => return None,
            }
            Some(())
        })?;
        r.ws();
        if r.i != text.len() {
            return None;
        }
        Some((w, payload?))
    }
}

/// The payload as read: raw JSON text, or already in canonical form.
enum PayloadIn<'a> {
    Raw(&'a RawValue),
    Canonical(String),
}

/// Validates what was read; every refusal after the `event_id` names it.
fn finish<'a>(
    mut wire: WireEvent<'a>,
    payload: Option<PayloadIn<'a>>,
    limits: &Limits,
) -> Result<Event<'a>, EventError> {
    let event_id = required(wire.event_id.take(), "event_id")?;
    check_id(&event_id, "event_id", RejectKind::InvalidEventId)?;
    build(wire, &event_id, payload, limits).map_err(|mut e| {
        e.event_id = Some(event_id.to_string());
        e
    })
}

fn build<'a>(
    wire: WireEvent<'a>,
    event_id: &Cow<'a, str>,
    payload: Option<PayloadIn<'a>>,
    limits: &Limits,
) -> Result<Event<'a>, EventError> {
    use RejectKind::*;
    let occurred_raw = required(wire.occurred_at, "occurred_at")?;
    let occurred_at = Timestamp::parse_rfc3339(&occurred_raw).map_err(|e: TimestampError| {
        EventError::field(InvalidTimestamp, "occurred_at", e.to_string())
    })?;
    if occurred_at < Timestamp::UNIX_EPOCH {
        return Err(EventError::field(
            InvalidTimestamp,
            "occurred_at",
            "is before 1970-01-01T00:00:00Z",
        ));
    }
    if occurred_at > limits.latest_occurred_at {
        return Err(EventError::field(
            InvalidTimestamp,
            "occurred_at",
            format!(
                "{occurred_at} is in the future (later than {}, which allows for clock skew)",
                limits.latest_occurred_at
            ),
        ));
    }

    let wa = wire.actor.ok_or_else(|| missing("actor"))?;
    let kind_raw = required(wa.kind, "actor.type")?;
    let kind = ActorType::parse(&kind_raw).ok_or_else(|| {
        EventError::field(
            InvalidValue,
            "actor.type",
            format!("must be one of USER, SYSTEM, SERVICE (got {kind_raw:?})"),
        )
    })?;
    let actor = Actor {
        kind,
        id: text_field(required(wa.id, "actor.id")?, "actor.id")?,
        role: wa.role.map(|r| text_field(r, "actor.role")).transpose()?,
    };

    let action = required(wire.action, "action")?;
    check_id(&action, "action", InvalidValue)?;

    let ws = wire.subject.ok_or_else(|| missing("subject"))?;
    let subject = Subject {
        kind: {
            let k = required(ws.kind, "subject.type")?;
            check_id(&k, "subject.type", InvalidValue)?;
            k
        },
        id: text_field(required(ws.id, "subject.id")?, "subject.id")?,
    };

    let origin = match wire.origin {
        None => None,
        Some(o) => {
            let ip =
                o.ip.map(|ip| match ip.parse::<std::net::IpAddr>() {
                    Ok(_) => Ok(ip),
                    Err(_) => Err(EventError::field(
                        InvalidValue,
                        "origin.ip",
                        format!("{ip:?} is not an IPv4 or IPv6 address"),
                    )),
                })
                .transpose()?;
            let device = o
                .device
                .map(|d| text_field(d, "origin.device"))
                .transpose()?;
            if ip.is_none() && device.is_none() {
                return Err(EventError::field(
                    MissingField,
                    "origin",
                    "must name at least one of `ip` and `device`",
                ));
            }
            Some(Origin { ip, device })
        }
    };
    if actor.kind == ActorType::User && origin.is_none() {
        return Err(EventError::field(
            MissingField,
            "origin",
            "is required when actor.type is USER (where the person acted from)",
        ));
    }

    let source_raw = required(wire.source, "source")?;
    let source = Source::parse(&source_raw).ok_or_else(|| {
        EventError::field(
            InvalidValue,
            "source",
            format!("must be one of FIX, UI, API, SYSTEM (got {source_raw:?})"),
        )
    })?;

    let retention_class = wire
        .retention_class
        .map(|c| {
            if c.is_empty() {
                Err(EventError::field(
                    InvalidValue,
                    "retention_class",
                    "must not be empty when present",
                ))
            } else {
                Ok(c)
            }
        })
        .transpose()?;
    let correlation_id = wire
        .correlation_id
        .map(|c| check_id(&c, "correlation_id", InvalidValue).map(|_| c))
        .transpose()?;

    let payload = match payload.ok_or_else(|| missing("payload"))? {
        PayloadIn::Canonical(payload) => payload,
        PayloadIn::Raw(raw) => canonical_payload(raw.get())?,
    };
    Ok(Event {
        // Borrowed (a pointer copied) unless the id was written with escapes.
        event_id: event_id.clone(),
        occurred_at,
        actor,
        action,
        subject,
        origin,
        source,
        retention_class,
        correlation_id,
        payload,
    })
}

/// The canonical form of a payload read by `serde` (the one-pass reader canonicalizes as it
/// reads).
fn canonical_payload(raw: &str) -> Result<String, EventError> {
    use RejectKind::*;
    if !raw.starts_with('{') {
        let got = match raw.as_bytes()[0] {
            b'[' => "an array",
            b'"' => "a string",
            b'n' => "null",
            b't' | b'f' => "a boolean",
            _ => "a number",
        };
        return Err(EventError::field(
            PayloadNotObject,
            "payload",
            format!("must be a JSON object (got {got})"),
        ));
    }
    let mut payload = String::with_capacity(raw.len());
    canonical::canonicalize_into(raw, "payload", &mut payload)
        .map_err(|e| EventError::field(InvalidValue, &e.path, e.reason))?;
    Ok(payload)
}

fn missing(field: &str) -> EventError {
    EventError::field(
        RejectKind::MissingField,
        field,
        "is required (missing or null)",
    )
}

fn required<'a>(v: Option<Cow<'a, str>>, field: &str) -> Result<Cow<'a, str>, EventError> {
    v.ok_or_else(|| missing(field))
}

/// Identifiers: 1-128 visible ASCII characters (0x21-0x7E), no spaces.
fn check_id(s: &str, field: &str, kind: RejectKind) -> Result<(), EventError> {
    if s.is_empty() {
        return Err(EventError::field(kind, field, "must not be empty"));
    }
    if s.len() > MAX_ID_LEN {
        return Err(EventError::field(
            kind,
            field,
            format!(
                "is {} characters long; at most {MAX_ID_LEN} are allowed",
                s.len()
            ),
        ));
    }
    // Bytes, not characters: every byte before the first one outside the range is ASCII, so
    // that byte starts the character to name, at the same position.
    if let Some((i, c)) = s
        .bytes()
        .position(|b| !(0x21..=0x7e).contains(&b))
        .map(|i| (i, s[i..].chars().next().expect("a character starts here")))
    {
        return Err(EventError::field(
            kind,
            field,
            format!(
                "has {c:?} at position {i}; only visible ASCII characters (no spaces) are allowed"
            ),
        ));
    }
    Ok(())
}

/// Free-text identifiers: 1-256 bytes of UTF-8 without control characters.
fn text_field<'a>(s: Cow<'a, str>, field: &str) -> Result<Cow<'a, str>, EventError> {
    use RejectKind::InvalidValue;
    if s.trim().is_empty() {
        return Err(EventError::field(
            InvalidValue,
            field,
            "must not be empty or blank",
        ));
    }
    if s.len() > MAX_TEXT_LEN {
        return Err(EventError::field(
            InvalidValue,
            field,
            format!(
                "is {} bytes long; at most {MAX_TEXT_LEN} are allowed",
                s.len()
            ),
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(EventError::field(
            InvalidValue,
            field,
            format!("contains the control character {c:?}"),
        ));
    }
    Ok(s)
}

fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => format!("{} (column {})", &text[..i], e.column()),
        None => text,
    }
}

fn map_serde_error(e: serde_path_to_error::Error<serde_json::Error>) -> EventError {
    use RejectKind::*;
    let path = e.path().to_string();
    let inner = e.inner();
    let msg = strip_position(inner);
    let field = (path != "." && !path.is_empty()).then_some(path);
    match inner.classify() {
        serde_json::error::Category::Data => {
            if let Some(rest) = msg.strip_prefix("unknown field `") {
                let name = rest.split('`').next().unwrap_or_default();
                let full = match &field {
                    Some(p) if !p.ends_with(name) => format!("{p}.{name}"),
                    Some(p) => p.clone(),
                    None => name.to_owned(),
                };
                let allowed = rest.split_once("expected ").map(|x| x.1).unwrap_or("");
                let allowed = allowed.split(" (column").next().unwrap_or(allowed);
                return EventError::new(
                    UnknownField,
                    Some(&full),
                    format!(
                        "is not a field of the contract (allowed here: {allowed}); put extra data in `payload`"
                    ),
                );
            }
            if msg.starts_with("invalid type") {
                let reason = msg.replacen("invalid type: ", "wrong type: got ", 1);
                return EventError {
                    kind: WrongType,
                    field,
                    reason,
                    event_id: None,
                };
            }
            EventError {
                kind: Malformed,
                field,
                reason: msg,
                event_id: None,
            }
        }
        _ => EventError {
            kind: Malformed,
            field: None,
            reason: format!("not valid JSON: {msg}"),
            event_id: None,
        },
    }
}

/// Finds a plausible `event_id` in a broken event, so that its rejection can name it.
fn sniff_event_id(bytes: &[u8]) -> Option<String> {
    let window = &bytes[..bytes.len().min(64 * 1024)];
    let at = memchr::memmem::find(window, b"\"event_id\"")?;
    let mut rest = &window[at + 10..];
    while let [b' ' | b'\t' | b'\r' | b'\n', tail @ ..] = rest {
        rest = tail;
    }
    let [b':', tail @ ..] = rest else { return None };
    rest = tail;
    while let [b' ' | b'\t' | b'\r' | b'\n', tail @ ..] = rest {
        rest = tail;
    }
    let [b'"', tail @ ..] = rest else { return None };
    let end = tail.iter().take(MAX_ID_LEN + 1).position(|&b| b == b'"')?;
    let id = &tail[..end];
    (!id.is_empty() && id.iter().all(|b| (0x21..=0x7e).contains(b) && *b != b'\\'))
        .then(|| String::from_utf8_lossy(id).into_owned())
}

/// An accepted event with everything the archive adds: when it was ingested, its resolved
/// retention class, its canonical bytes and its content digest.
///
/// A record is kept compactly, because batches hold many of them until they are sealed: one
/// buffer, the canonical record, and where in it each field's text lies. A field whose JSON
/// form has escapes (a quote, a backslash or a control character in free text) is kept
/// decoded beside it. Every typed column of a segment is read back from here
/// ([`Record::view`]).
#[derive(Clone, Debug)]
pub struct Record {
    pub occurred_at: Timestamp,
    pub ingested_at: Timestamp,
    pub retention_class: ClassName,
    /// SHA-256 of the submitted content, for idempotency.
    pub digest: Hash,
    /// The `event_id`'s fingerprint in the idempotency index, computed once here (on a parse
    /// thread) for the sequencer, the batch and the seal that each need it.
    pub fingerprint: Fingerprint,
    /// The canonical record (see the module docs): the leaf's input. Leaves themselves are
    /// hashed when a batch is sealed, two at a time where the CPU allows
    /// ([`merkle::extend_leaf_hashes`]); [`Record::leaf`] gives one.
    canonical: String,
    fields: FieldSpans,
}

/// The text fields of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    EventId,
    ActorId,
    ActorRole,
    Action,
    SubjectType,
    SubjectId,
    OriginIp,
    OriginDevice,
    CorrelationId,
    Payload,
}

const FIELDS: usize = 10;

/// Where a record's fields lie in its canonical bytes.
#[derive(Clone, Debug)]
struct FieldSpans {
    /// Byte range of each field's text in the canonical record (between the quotes of a
    /// string; the whole object for the payload). `ABSENT` for a missing optional field.
    /// Offsets fit in 32 bits: events are at most 64 MiB (`events.max_event_bytes`).
    spans: [(u32, u32); FIELDS],
    actor_type: ActorType,
    source: Source,
    /// Fields whose canonical text has escapes, decoded; their span is `ESCAPED`. Usually
    /// empty, which allocates nothing.
    escaped: Vec<(Field, Box<str>)>,
}

const ABSENT: (u32, u32) = (u32::MAX, 0);
const ESCAPED: (u32, u32) = (u32::MAX, 1);

impl Record {
    pub fn new(event: Event, ingested_at: Timestamp, retention_class: ClassName) -> Record {
        let mut stored = String::with_capacity(event.payload.len() + 448);
        let spans = write_view_spans(
            &event.view(Some(ingested_at), Some(&retention_class)),
            &mut stored,
        );
        // The submitted form is the stored one without `ingested_at` and with the submitted
        // `retention_class` (or none): hash it from the pieces instead of writing it again.
        let (ingested, class) = (
            spans.ingested_at.clone().expect("written"),
            spans.retention_class.clone().expect("written"),
        );
        let mut submitted_class = String::new();
        if let Some(c) = &event.retention_class {
            submitted_class.push_str(",\"retention_class\":");
            write_string(&mut submitted_class, c);
        }
        let mut h = sha2::Sha256::new();
        h.update(&stored.as_bytes()[..ingested.start]);
        h.update(&stored.as_bytes()[ingested.end..class.start]);
        h.update(submitted_class.as_bytes());
        h.update(&stored.as_bytes()[class.end..]);
        let digest: Hash = h.finalize().into();
        Record::compact(&event, ingested_at, retention_class, stored, &spans, digest)
    }

    /// Keeps `event` as `canonical` (its canonical record, written with `spans`) and where its
    /// fields lie in it.
    fn compact(
        event: &Event,
        ingested_at: Timestamp,
        retention_class: ClassName,
        canonical: String,
        spans: &Spans,
        digest: Hash,
    ) -> Record {
        let view = event.view(None, None);
        let mut fields = FieldSpans {
            spans: [ABSENT; FIELDS],
            actor_type: event.actor.kind,
            source: event.source,
            escaped: Vec::new(),
        };
        let offset = |at: usize| u32::try_from(at).expect("events are at most 64 MiB");
        for (field, literal) in Field::ALL.into_iter().zip(&spans.fields) {
            let i = field as usize;
            let (Some(r), Some(text)) = (literal, field.of(&view)) else {
                continue;
            };
            if field == Field::Payload {
                fields.spans[i] = (offset(r.start), offset(r.end));
            } else if r.len() == text.len() + 2 {
                // Written as it is, between quotes.
                fields.spans[i] = (offset(r.start) + 1, offset(r.end) - 1);
            } else {
                fields.spans[i] = ESCAPED;
                fields.escaped.push((field, Box::from(text)));
            }
        }
        Record {
            occurred_at: event.occurred_at,
            ingested_at,
            retention_class,
            digest,
            fingerprint: fingerprint(&event.event_id),
            canonical,
            fields,
        }
    }

    /// The canonical record's bytes.
    pub fn canonical(&self) -> &[u8] {
        self.canonical.as_bytes()
    }

    fn field(&self, f: Field) -> Option<&str> {
        match self.fields.spans[f as usize] {
            ABSENT => None,
            ESCAPED => self
                .fields
                .escaped
                .iter()
                .find(|(g, _)| *g == f)
                .map(|(_, text)| &**text),
            (start, end) => Some(&self.canonical[start as usize..end as usize]),
        }
    }

    /// The length of a field's text (0 when absent), from the record's own layout alone:
    /// without reading its canonical bytes.
    pub fn field_len(&self, f: Field) -> usize {
        match self.fields.spans[f as usize] {
            ABSENT => 0,
            ESCAPED => self.field(f).map_or(0, str::len),
            (start, end) => (end - start) as usize,
        }
    }

    fn required(&self, f: Field) -> &str {
        self.field(f).expect("a required field is always kept")
    }

    pub fn event_id(&self) -> &str {
        self.required(Field::EventId)
    }

    /// The record's fields, borrowed, with the ingest time and the resolved class.
    pub fn view(&self) -> RecordView<'_> {
        RecordView {
            event_id: self.event_id(),
            occurred_at: self.occurred_at,
            ingested_at: Some(self.ingested_at),
            actor_type: self.fields.actor_type.as_str(),
            actor_id: self.required(Field::ActorId),
            actor_role: self.field(Field::ActorRole),
            action: self.required(Field::Action),
            subject_type: self.required(Field::SubjectType),
            subject_id: self.required(Field::SubjectId),
            origin_ip: self.field(Field::OriginIp),
            origin_device: self.field(Field::OriginDevice),
            source: self.fields.source.as_str(),
            retention_class: Some(&self.retention_class),
            correlation_id: self.field(Field::CorrelationId),
            payload: self.required(Field::Payload),
        }
    }

    /// The record's Merkle leaf, `SHA-256(0x00 ‖ canonical)`.
    pub fn leaf(&self) -> Hash {
        merkle::leaf_hash(self.canonical())
    }

    /// Rebuilds a record from its canonical bytes (as kept in the spool or a segment) and its
    /// content digest. The bytes must be exactly the canonical record that [`Record::new`]
    /// writes for the event they describe; anything else is refused.
    pub fn from_canonical(canonical: Vec<u8>, digest: Hash) -> Result<Record, String> {
        let text = std::str::from_utf8(&canonical)
            .map_err(|e| format!("canonical record is not UTF-8: {e}"))?;
        let s: StoredRecord<'_> =
            serde_json::from_str(text).map_err(|e| format!("not a canonical record: {e}"))?;
        let ts =
            |t: &str, what: &str| Timestamp::parse_rfc3339(t).map_err(|e| format!("{what} {e}"));
        let event = Event {
            event_id: s.event_id,
            occurred_at: ts(&s.occurred_at, "occurred_at")?,
            actor: Actor {
                kind: ActorType::parse(&s.actor.kind).ok_or("unknown actor.type")?,
                id: s.actor.id,
                role: s.actor.role,
            },
            action: s.action,
            subject: Subject {
                kind: s.subject.kind,
                id: s.subject.id,
            },
            origin: s.origin.map(|o| Origin {
                ip: o.ip,
                device: o.device,
            }),
            source: Source::parse(&s.source).ok_or("unknown source")?,
            retention_class: None,
            correlation_id: s.correlation_id,
            payload: s.payload.get().to_owned(),
        };
        let ingested_at = ts(&s.ingested_at, "ingested_at")?;
        let class = ClassName::new(&s.retention_class);
        let mut again = String::with_capacity(canonical.len());
        let spans = write_view_spans(&event.view(Some(ingested_at), Some(&class)), &mut again);
        if again.as_bytes() != canonical.as_slice() {
            return Err("bytes are not the canonical form of the record they describe".into());
        }
        Ok(Record::compact(
            &event,
            ingested_at,
            class,
            again,
            &spans,
            digest,
        ))
    }

    /// Bytes this record holds in memory, roughly (its canonical bytes, and the record and
    /// its allocation overheads); used for batch size limits.
    pub fn weight(&self) -> usize {
        self.canonical.len() + 256
    }
}

/// The canonical record's layout, for reading it back.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRecord<'a> {
    #[serde(borrow)]
    action: Cow<'a, str>,
    #[serde(borrow)]
    actor: StoredActor<'a>,
    #[serde(borrow, default)]
    correlation_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    ingested_at: Cow<'a, str>,
    #[serde(borrow)]
    occurred_at: Cow<'a, str>,
    #[serde(borrow, default)]
    origin: Option<WireOrigin<'a>>,
    #[serde(borrow)]
    payload: &'a RawValue,
    #[serde(borrow)]
    retention_class: Cow<'a, str>,
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(borrow)]
    subject: StoredSubject<'a>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredActor<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredSubject<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
}

/// The fields of a canonical record, borrowed: from an [`Event`], or from a segment's columns.
#[derive(Clone, Copy, Debug)]
pub struct RecordView<'a> {
    pub event_id: &'a str,
    pub occurred_at: Timestamp,
    /// Absent in the submitted form used for the content digest.
    pub ingested_at: Option<Timestamp>,
    pub actor_type: &'a str,
    pub actor_id: &'a str,
    pub actor_role: Option<&'a str>,
    pub action: &'a str,
    pub subject_type: &'a str,
    pub subject_id: &'a str,
    pub origin_ip: Option<&'a str>,
    pub origin_device: Option<&'a str>,
    pub source: &'a str,
    pub retention_class: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    /// The payload in canonical (JCS) form.
    pub payload: &'a str,
}

impl Event<'_> {
    /// This event as a record view, with what the archive adds.
    pub fn view<'a>(
        &'a self,
        ingested_at: Option<Timestamp>,
        class: Option<&'a str>,
    ) -> RecordView<'a> {
        RecordView {
            event_id: &self.event_id,
            occurred_at: self.occurred_at,
            ingested_at,
            actor_type: self.actor.kind.as_str(),
            actor_id: &self.actor.id,
            actor_role: self.actor.role.as_deref(),
            action: &self.action,
            subject_type: &self.subject.kind,
            subject_id: &self.subject.id,
            origin_ip: self.origin.as_ref().and_then(|o| o.ip.as_deref()),
            origin_device: self.origin.as_ref().and_then(|o| o.device.as_deref()),
            source: self.source.as_str(),
            retention_class: class,
            correlation_id: self.correlation_id.as_deref(),
            payload: &self.payload,
        }
    }
}

/// Writes the JCS form of an event. Keys are emitted in RFC 8785 order (all ASCII, so byte
/// order); a test checks the output is a fixed point of [`canonical::canonicalize`].
pub fn write_canonical(
    e: &Event,
    ingested_at: Option<Timestamp>,
    class: Option<&str>,
    out: &mut String,
) {
    write_view(&e.view(ingested_at, class), out);
}

/// Where things were written: the members the content digest leaves out or replaces, as
/// byte ranges including their leading comma, and each string field's literal (quotes
/// included; the payload's whole text), by [`Field`].
struct Spans {
    ingested_at: Option<std::ops::Range<usize>>,
    retention_class: Option<std::ops::Range<usize>>,
    fields: [Option<std::ops::Range<usize>>; FIELDS],
}

impl Field {
    const ALL: [Field; FIELDS] = [
        Field::EventId,
        Field::ActorId,
        Field::ActorRole,
        Field::Action,
        Field::SubjectType,
        Field::SubjectId,
        Field::OriginIp,
        Field::OriginDevice,
        Field::CorrelationId,
        Field::Payload,
    ];

    /// This field's text in a view.
    fn of<'a>(self, v: &RecordView<'a>) -> Option<&'a str> {
        match self {
            Field::EventId => Some(v.event_id),
            Field::ActorId => Some(v.actor_id),
            Field::ActorRole => v.actor_role,
            Field::Action => Some(v.action),
            Field::SubjectType => Some(v.subject_type),
            Field::SubjectId => Some(v.subject_id),
            Field::OriginIp => v.origin_ip,
            Field::OriginDevice => v.origin_device,
            Field::CorrelationId => v.correlation_id,
            Field::Payload => Some(v.payload),
        }
    }
}

/// Writes the JCS form of a record view.
pub fn write_view(v: &RecordView<'_>, out: &mut String) {
    write_view_spans(v, out);
}

/// Whether `canonical` is exactly the JCS form of the view: what [`write_view`] would write,
/// compared as it goes instead of written. For many rows, [`ViewChecker`] is cheaper.
pub fn view_matches(v: &RecordView<'_>, canonical: &[u8]) -> bool {
    ViewChecker::default().matches(v, canonical)
}

/// Checks rows' typed columns against their canonical bytes (a full sweep checks every row
/// this way), keeping across rows what does not change from row to row.
#[derive(Default)]
pub struct ViewChecker {
    /// For the rare string that needs escapes.
    escaped: String,
    /// The last two days seen and their `YYYY-MM-DD`: a segment's `ingested_at` and
    /// `occurred_at` each take one of a few days.
    days: [Option<(Day, [u8; 10])>; 2],
    /// The entry of `days` to replace next.
    next_day: usize,
}

impl ViewChecker {
    /// Whether `canonical` is exactly what [`write_view`] would write for `v`.
    pub fn matches(&mut self, v: &RecordView<'_>, canonical: &[u8]) -> bool {
        let mut m = Matcher {
            expected: canonical,
            pos: 0,
            ok: true,
            kept: self,
        };
        write_view_spans(v, &mut m);
        m.ok && m.pos == canonical.len()
    }
}

/// Where the JCS serializer of a record goes: a string, or a comparison with given bytes.
trait JsonSink {
    /// Bytes written as they are.
    fn raw(&mut self, s: &str);
    /// A JCS string literal.
    fn string(&mut self, s: &str);
    /// A timestamp's text (without quotes).
    fn timestamp(&mut self, t: Timestamp);
    /// How many bytes were written so far.
    fn pos(&self) -> usize;
}

impl JsonSink for String {
    fn raw(&mut self, s: &str) {
        self.push_str(s);
    }
    fn string(&mut self, s: &str) {
        write_string(self, s);
    }
    fn timestamp(&mut self, t: Timestamp) {
        t.write_to(self);
    }
    fn pos(&self) -> usize {
        self.len()
    }
}

/// Compares what would be written with `expected`, without writing it.
struct Matcher<'a> {
    expected: &'a [u8],
    pos: usize,
    ok: bool,
    kept: &'a mut ViewChecker,
}

impl Matcher<'_> {
    fn bytes(&mut self, b: &[u8]) {
        if self.ok && self.expected.get(self.pos..self.pos + b.len()) == Some(b) {
            self.pos += b.len();
        } else {
            self.ok = false;
        }
    }
}

impl JsonSink for Matcher<'_> {
    fn raw(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn string(&mut self, s: &str) {
        if !self.ok {
            return;
        }
        if crate::canonical::needs_no_escape(s) {
            // `"s"` at `pos`: the quotes, then the text.
            let (start, end) = (self.pos + 1, self.pos + 1 + s.len());
            if self.expected.get(self.pos) == Some(&b'"')
                && self.expected.get(end) == Some(&b'"')
                && &self.expected[start..end] == s.as_bytes()
            {
                self.pos = end + 1;
            } else {
                self.ok = false;
            }
        } else {
            let mut escaped = std::mem::take(&mut self.kept.escaped);
            escaped.clear();
            write_string(&mut escaped, s);
            self.bytes(escaped.as_bytes());
            self.kept.escaped = escaped;
        }
    }
    fn timestamp(&mut self, t: Timestamp) {
        if !self.ok {
            return;
        }
        // Beyond four-digit years the text wraps: 10,000 years later would read the same.
        if !t.has_four_digit_year() {
            self.ok = false;
            return;
        }
        let day = t.day();
        let k = &mut *self.kept;
        let date = match k.days.iter().flatten().find(|(d, _)| *d == day) {
            Some((_, date)) => *date,
            None => {
                let date = t.date_text();
                k.days[k.next_day] = Some((day, date));
                k.next_day ^= 1;
                date
            }
        };
        self.bytes(&date);
        self.bytes(&t.time_of_day_text());
    }
    fn pos(&self) -> usize {
        self.pos
    }
}

fn write_view_spans(v: &RecordView<'_>, out: &mut impl JsonSink) -> Spans {
    let mut spans = Spans {
        ingested_at: None,
        retention_class: None,
        fields: Default::default(),
    };
    fn string<S: JsonSink>(out: &mut S, spans: &mut Spans, f: Field, s: &str) {
        let start = out.pos();
        out.string(s);
        spans.fields[f as usize] = Some(start..out.pos());
    }
    out.raw("{\"action\":");
    string(out, &mut spans, Field::Action, v.action);
    out.raw(",\"actor\":{\"id\":");
    string(out, &mut spans, Field::ActorId, v.actor_id);
    if let Some(role) = v.actor_role {
        out.raw(",\"role\":");
        string(out, &mut spans, Field::ActorRole, role);
    }
    out.raw(",\"type\":");
    out.string(v.actor_type);
    out.raw("}");
    if let Some(c) = v.correlation_id {
        out.raw(",\"correlation_id\":");
        string(out, &mut spans, Field::CorrelationId, c);
    }
    out.raw(",\"event_id\":");
    string(out, &mut spans, Field::EventId, v.event_id);
    let ingested_at = v.ingested_at.map(|t| {
        let start = out.pos();
        out.raw(",\"ingested_at\":\"");
        out.timestamp(t);
        out.raw("\"");
        start..out.pos()
    });
    out.raw(",\"occurred_at\":\"");
    out.timestamp(v.occurred_at);
    out.raw("\"");
    if v.origin_ip.is_some() || v.origin_device.is_some() {
        out.raw(",\"origin\":{");
        if let Some(d) = v.origin_device {
            out.raw("\"device\":");
            string(out, &mut spans, Field::OriginDevice, d);
        }
        if let Some(ip) = v.origin_ip {
            if v.origin_device.is_some() {
                out.raw(",");
            }
            out.raw("\"ip\":");
            string(out, &mut spans, Field::OriginIp, ip);
        }
        out.raw("}");
    }
    out.raw(",\"payload\":");
    let payload_at = out.pos();
    out.raw(v.payload);
    let payload = payload_at..out.pos();
    let retention_class = v.retention_class.map(|c| {
        let start = out.pos();
        out.raw(",\"retention_class\":");
        out.string(c);
        start..out.pos()
    });
    out.raw(",\"source\":");
    out.string(v.source);
    out.raw(",\"subject\":{\"id\":");
    string(out, &mut spans, Field::SubjectId, v.subject_id);
    out.raw(",\"type\":");
    string(out, &mut spans, Field::SubjectType, v.subject_type);
    out.raw("}}");
    spans.ingested_at = ingested_at;
    spans.retention_class = retention_class;
    spans.fields[Field::Payload as usize] = Some(payload);
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparing_in_place_agrees_with_writing() {
        let limits = limits();
        for json in [
            GOOD.to_owned(),
            with(|m| {
                m.insert("actor".into(), serde_json::json!({"type": "SERVICE", "id": "a\"b\\cd\u{e9} long enough to span words"}));
                m.remove("origin");
                m.remove("correlation_id");
            }),
        ] {
            let e = parse_event(json.as_bytes(), &limits).unwrap();
            let at = Timestamp::parse_rfc3339("2026-11-20T23:59:59.999999Z").unwrap();
            let v = e.view(Some(at), Some("sec-17a-4-a"));
            let mut text = String::new();
            write_view(&v, &mut text);
            let bytes = text.as_bytes();
            assert!(view_matches(&v, bytes), "{text}");
            // Any change, a missing byte or an extra one is a mismatch.
            for i in 0..bytes.len() {
                let mut changed = bytes.to_vec();
                changed[i] ^= 0x20;
                assert!(!view_matches(&v, &changed), "byte {i} of {text}");
            }
            assert!(!view_matches(&v, &bytes[..bytes.len() - 1]));
            assert!(!view_matches(&v, &[bytes, b" "].concat()));
            // A timestamp column 10,000 years off (25 Gregorian cycles of 146,097 days)
            // would write the same text, year wrapped; it is a mismatch.
            let days = 25 * 146_097 * 86_400 * 1_000_000i64;
            for shifted in [at.plus_micros(days), at.plus_micros(-days)] {
                assert_eq!(shifted.date_text(), at.date_text());
                let mut w = v;
                w.ingested_at = Some(shifted);
                assert!(!view_matches(&w, bytes), "{shifted:?}");
            }
        }
    }

    /// One checker over many rows: the days it keeps from earlier rows never make a later
    /// row match wrongly, whichever days its timestamps fall on.
    #[test]
    fn a_checker_kept_across_rows_agrees_with_writing() {
        let e = parse_event(GOOD.as_bytes(), &limits()).unwrap();
        let mut checker = ViewChecker::default();
        let start = Timestamp::parse_rfc3339("2026-11-18T22:00:00.000001Z").unwrap();
        for i in 0..200i64 {
            // Ingestion times walk over four days, in and out of the kept ones.
            let at = start.plus_micros((i * 7 % 23) * 3_600_000_000 * 4 + i);
            let v = e.view(Some(at), Some("sec-17a-4-a"));
            let mut text = String::new();
            write_view(&v, &mut text);
            assert!(checker.matches(&v, text.as_bytes()), "{text}");
            let other = start.plus_micros(((i + 5) * 7 % 23) * 3_600_000_000 * 4 + i);
            if other.day() != at.day() {
                let mut wrong = String::new();
                write_view(&e.view(Some(other), Some("sec-17a-4-a")), &mut wrong);
                assert!(!checker.matches(&v, wrong.as_bytes()), "{wrong}");
            }
        }
    }

    /// The one-pass reader gives up or reads exactly what the `serde` path reads, and refuses
    /// what it refuses: compared on generated events, hand-picked edge cases, and thousands
    /// of random mutations of them (bytes deleted, inserted, replaced, spans repeated).
    #[test]
    fn the_one_pass_reader_agrees_with_serde() {
        let limits = limits();
        let mut rng = crate::bench::Rng::new(11);
        let start = Day::parse("2026-11-02").unwrap();
        let mut bases: Vec<String> = vec![GOOD.into()];
        for i in 0..200 {
            let mut line = String::new();
            crate::bench::event_json(&mut rng, i, start, 3, &mut line);
            bases.push(line);
        }
        let g = |patch: &str| GOOD.replacen("\"source\":\"UI\"", patch, 1);
        let deep = |n: usize| {
            GOOD.replacen(
                "\"b\":[true,null]",
                &format!("\"b\":{}1{}", "[".repeat(n), "]".repeat(n)),
                1,
            )
        };
        let edge: Vec<String> = vec![
            format!(" \t\r\n{GOOD}\n "),
            GOOD.replace(':', " : ").replace(',', " ,\n"),
            g("\"source\":\"UI\",\"source\":\"UI\""),
            g("\"source\":\"UI\",\"extra\":1"),
            g("\"source\":null"),
            g("\"source\":\"U\\u0049\""),
            g("\"sour\\u0063e\":\"UI\""),
            g("\"source\":\"UI\",\"correlation_id\":null"),
            g("\"source\":\"UI\",\"retention_class\":\"finra-4511\""),
            g("\"source\":\"UI\",\"retention_class\":\"\""),
            g("\"source\":\"UI\",\"origin\":null"),
            g("\"source\":\"UI\",\"origin\":{}"),
            g("\"source\":\"U\u{1}I\""),
            g("\"source\":7"),
            format!("{GOOD}x"),
            format!("{GOOD}{{}}"),
            GOOD.replacen("\"role\":\"trader\"", "\"role\":null", 1),
            GOOD.replacen("\"role\":\"trader\"", "\"role\":\"a\\\"b\"", 1),
            GOOD.replacen(
                "\"role\":\"trader\"",
                "\"role\":\"trader\",\"role\":\"x\"",
                1,
            ),
            GOOD.replacen("\"id\":\"jdoe\"", "\"id\":\"jdoé\"", 1),
            GOOD.replacen("101.25", "1.0e2", 1),
            GOOD.replacen("101.25", "01", 1),
            GOOD.replacen("101.25", "1.", 1),
            GOOD.replacen("101.25", ".5", 1),
            GOOD.replacen("101.25", "+1", 1),
            GOOD.replacen("101.25", "1e", 1),
            GOOD.replacen("101.25", "-0", 1),
            GOOD.replacen("101.25", "9007199254740993", 1),
            GOOD.replacen("101.25", "\"\\u12G4\"", 1),
            GOOD.replacen("101.25", "\"\\ud800\"", 1),
            GOOD.replacen("101.25", "\"a\u{7}b\"", 1),
            GOOD.replacen("101.25", "\"a\\/b\\u00e9\"", 1),
            GOOD.replacen("101.25", "{\"k\":1,\"k\":2}", 1),
            GOOD.replacen("101.25", "nul", 1),
            GOOD.replacen("101.25", "truex", 1),
            GOOD.replacen("\"payload\":{", "\"payload\":[{", 1)
                .replacen("}}", "}]}", 1),
            GOOD.replacen(
                "\"payload\":{\"qty\":100,\"px\":101.25,\"b\":[true,null]}",
                "\"payload\":null",
                1,
            ),
            deep(90),
            deep(126),
            deep(127),
            deep(200),
            "{}".into(),
            "[]".into(),
            "null".into(),
        ];
        let mut corpus: Vec<String> = bases.iter().chain(&edge).cloned().collect();
        const BYTES: &[u8] = b"{}[]\":,\\ ntrfuel0123456789.-+eEa\x01";
        for base in bases.iter().take(20).chain(&edge) {
            for _ in 0..300 {
                let mut b = base.clone().into_bytes();
                let at = rng.below(b.len() as u64 + 1) as usize;
                match rng.below(4) {
                    0 if at < b.len() => {
                        b.remove(at);
                    }
                    1 => b.insert(at, *rng.pick(BYTES)),
                    2 if at < b.len() => b[at] = *rng.pick(BYTES),
                    _ => {
                        let end = (at + 1 + rng.below(24) as usize).min(b.len());
                        let span = b[at..end].to_vec();
                        b.splice(at..at, span);
                    }
                }
                if let Ok(text) = String::from_utf8(b) {
                    corpus.push(text);
                }
            }
        }
        let (mut one_pass, mut accepted) = (0, 0);
        for text in &corpus {
            let both = parse_with(text.as_bytes(), &limits, true);
            assert_eq!(both, parse_with(text.as_bytes(), &limits, false), "{text}");
            if fast::parse(text).is_some() {
                one_pass += 1;
                assert!(
                    serde_json::from_str::<serde_json::Value>(text).is_ok(),
                    "the one-pass reader read what is not JSON: {text}"
                );
            }
            accepted += usize::from(both.is_ok());
        }
        // Both kinds of input are well represented, and ordinary events take the one pass.
        assert!(bases.iter().all(|b| fast::parse(b).is_some()));
        assert!(
            one_pass > corpus.len() / 10,
            "{one_pass} of {}",
            corpus.len()
        );
        assert!(
            accepted < corpus.len() * 3 / 4,
            "{accepted} of {}",
            corpus.len()
        );
    }

    fn limits() -> Limits {
        Limits {
            max_event_bytes: 1 << 20,
            latest_occurred_at: Timestamp::parse_rfc3339("2026-11-22T00:00:00Z").unwrap(),
        }
    }

    const GOOD: &str = r#"{"event_id":"e-1","occurred_at":"2026-11-20T09:03:11.123456-05:00",
        "actor":{"type":"USER","id":"jdoe","role":"trader"},"action":"trade.amend",
        "subject":{"type":"trade","id":"T-1001"},"origin":{"ip":"10.2.3.4","device":"ws-114"},
        "source":"UI","correlation_id":"c-9","payload":{"qty":100,"px":101.25,"b":[true,null]}}"#;

    fn err(json: &str) -> EventError {
        parse_event(json.as_bytes(), &limits()).unwrap_err()
    }

    fn with(patch: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> String {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        patch(v.as_object_mut().unwrap());
        v.to_string()
    }

    #[test]
    fn parses_the_contract_example() {
        let e = parse_event(GOOD.as_bytes(), &limits()).unwrap();
        assert_eq!(e.event_id, "e-1");
        assert_eq!(e.occurred_at.to_string(), "2026-11-20T14:03:11.123456Z");
        assert_eq!(e.actor.kind, ActorType::User);
        assert_eq!(e.payload, r#"{"b":[true,null],"px":101.25,"qty":100}"#);
    }

    #[test]
    fn canonical_record_is_a_jcs_fixed_point_and_digest_ignores_ingest() {
        let e = parse_event(GOOD.as_bytes(), &limits()).unwrap();
        let t1 = Timestamp::parse_rfc3339("2026-11-21T00:00:00Z").unwrap();
        let r1 = Record::new(e.clone(), t1, "sec-17a-4-a".into());
        let text = std::str::from_utf8(r1.canonical()).unwrap();
        assert_eq!(canonical::canonicalize(text).unwrap(), text);
        assert!(text.contains(r#""ingested_at":"2026-11-21T00:00:00.000000Z""#));
        let r2 = Record::new(e.clone(), t1.plus_micros(5), "finra-4511".into());
        assert_eq!(
            r1.digest, r2.digest,
            "the digest covers what was submitted only"
        );
        // The digest, computed from pieces, equals its definition: SHA-256 of the JCS of the
        // submitted form, with and without a submitted class.
        for class in [None, Some("finra-4511")] {
            let mut e = e.clone();
            e.retention_class = class.map(Cow::Borrowed);
            let mut submitted = String::new();
            write_canonical(&e, None, class, &mut submitted);
            assert_eq!(canonical::canonicalize(&submitted).unwrap(), submitted);
            assert_eq!(
                Record::new(e, t1, "sec-17a-4-a".into()).digest,
                merkle::sha256(submitted.as_bytes())
            );
        }
        assert_ne!(r1.leaf(), r2.leaf());
        // Reordered keys and whitespace are the same content.
        let reordered: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        let reordered = reordered.to_string();
        let e2 = parse_event(reordered.as_bytes(), &limits()).unwrap();
        assert_eq!(Record::new(e2, t1, "sec-17a-4-a".into()).digest, r1.digest);
        // Minimal events (no optional fields) are fixed points too.
        let minimal = r#"{"event_id":"m","occurred_at":"2026-11-20T00:00:00Z","actor":{"type":"SYSTEM","id":"batch"},
            "action":"eod.run","subject":{"type":"job","id":"j"},"source":"SYSTEM","payload":{}}"#;
        let m = Record::new(
            parse_event(minimal.as_bytes(), &limits()).unwrap(),
            t1,
            "x".into(),
        );
        let text = std::str::from_utf8(m.canonical()).unwrap();
        assert_eq!(canonical::canonicalize(text).unwrap(), text);
        // Records come back from their canonical bytes, and only from those.
        for r in [&r1, &m] {
            let back = Record::from_canonical(r.canonical().to_vec(), r.digest).unwrap();
            assert_eq!(
                (back.event_id(), back.leaf(), back.ingested_at),
                (r.event_id(), r.leaf(), r.ingested_at)
            );
            assert_eq!(back.canonical(), r.canonical());
            assert_eq!(format!("{:?}", back.view()), format!("{:?}", r.view()));
        }
        let spaced = String::from_utf8(r1.canonical().to_vec())
            .unwrap()
            .replacen(",", ", ", 1);
        assert!(Record::from_canonical(spaced.into_bytes(), r1.digest).is_err());
    }

    /// A record keeps its fields as places in its canonical bytes, or decoded beside them
    /// when their JSON form has escapes (text fields refuse control characters, so only
    /// quotes and backslashes are escaped); either way its view is the event's.
    #[test]
    fn a_record_gives_back_every_field_with_or_without_escapes() {
        let t = Timestamp::parse_rfc3339("2026-11-21T00:00:00Z").unwrap();
        let plain = parse_event(GOOD.as_bytes(), &limits()).unwrap();
        let tricky = with(|m| {
            m["actor"]["id"] = "a\"quote\\back".into();
            m["actor"]["role"] = "say \"hi\"".into();
            m["subject"]["id"] = "naïve é".into();
            m["origin"]["device"] = "C:\\ws".into();
            m["correlation_id"] = "c-1".into();
        });
        let tricky = parse_event(tricky.as_bytes(), &limits()).unwrap();
        let minimal = r#"{"event_id":"m","occurred_at":"2026-11-20T00:00:00Z","actor":{"type":"SYSTEM","id":"batch"},
            "action":"eod.run","subject":{"type":"job","id":"j"},"source":"SYSTEM","payload":{}}"#;
        let minimal = parse_event(minimal.as_bytes(), &limits()).unwrap();
        for e in [plain, tricky, minimal] {
            let r = Record::new(e.clone(), t, "finra-4511".into());
            let expected = e.view(Some(t), Some("finra-4511"));
            assert_eq!(format!("{:?}", r.view()), format!("{expected:?}"));
            assert_eq!(r.event_id(), e.event_id);
            assert_eq!(r.occurred_at, e.occurred_at);
            assert!(view_matches(&r.view(), r.canonical()));
            let back = Record::from_canonical(r.canonical().to_vec(), r.digest).unwrap();
            assert_eq!(format!("{:?}", back.view()), format!("{expected:?}"));
        }
    }

    #[test]
    fn every_refusal_names_its_field() {
        use RejectKind::*;
        let cases: Vec<(String, RejectKind, Option<&str>)> = vec![
            (
                with(|m| {
                    m.remove("action");
                }),
                MissingField,
                Some("action"),
            ),
            (
                with(|m| {
                    m.insert("action".into(), serde_json::Value::Null);
                }),
                MissingField,
                Some("action"),
            ),
            (
                with(|m| {
                    m.insert("extra".into(), 1.into());
                }),
                UnknownField,
                Some("extra"),
            ),
            (
                with(|m| {
                    m["actor"]["nick"] = "x".into();
                }),
                UnknownField,
                Some("actor.nick"),
            ),
            (
                with(|m| {
                    m.insert("action".into(), 5.into());
                }),
                WrongType,
                Some("action"),
            ),
            (
                with(|m| {
                    m["actor"]["type"] = "user".into();
                }),
                InvalidValue,
                Some("actor.type"),
            ),
            (
                with(|m| {
                    m.insert("source".into(), "EMAIL".into());
                }),
                InvalidValue,
                Some("source"),
            ),
            (
                with(|m| {
                    m.insert("occurred_at".into(), "2026-11-20T14:03:11".into());
                }),
                InvalidTimestamp,
                Some("occurred_at"),
            ),
            (
                with(|m| {
                    m.insert("occurred_at".into(), "2031-01-01T00:00:00Z".into());
                }),
                InvalidTimestamp,
                Some("occurred_at"),
            ),
            (
                with(|m| {
                    m.insert("occurred_at".into(), "1969-01-01T00:00:00Z".into());
                }),
                InvalidTimestamp,
                Some("occurred_at"),
            ),
            (
                with(|m| {
                    m.insert("event_id".into(), "".into());
                }),
                InvalidEventId,
                Some("event_id"),
            ),
            (
                with(|m| {
                    m.insert("event_id".into(), "a b".into());
                }),
                InvalidEventId,
                Some("event_id"),
            ),
            (
                with(|m| {
                    m.insert("event_id".into(), "x".repeat(129).into());
                }),
                InvalidEventId,
                Some("event_id"),
            ),
            (
                with(|m| {
                    m.insert("payload".into(), serde_json::json!([1]));
                }),
                PayloadNotObject,
                Some("payload"),
            ),
            (
                with(|m| {
                    m.remove("origin");
                }),
                MissingField,
                Some("origin"),
            ),
            (
                with(|m| {
                    m["origin"]["ip"] = "10.2.3".into();
                }),
                InvalidValue,
                Some("origin.ip"),
            ),
            (
                with(|m| {
                    m["subject"]["id"] = "a\u{7}b".into();
                }),
                InvalidValue,
                Some("subject.id"),
            ),
            (
                r#"{"event_id":"t-1","occurred_at":"#.to_owned(),
                Malformed,
                None,
            ),
            (format!("{} x", GOOD), Malformed, None),
        ];
        for (json, kind, field) in cases {
            let e = err(&json);
            assert_eq!(
                (e.kind, e.field.as_deref()),
                (kind, field),
                "{json}\n=> {e}"
            );
            assert!(!e.reason.is_empty());
        }
        let big = with(|m| {
            m["payload"]["blob"] = "x".repeat(2 << 20).into();
        });
        assert_eq!(err(&big).kind, TooLarge);
        assert_eq!(err(&big).event_id.as_deref(), Some("e-1"));
        let mut bad = GOOD.as_bytes().to_vec();
        bad[40] = 0xff;
        let e = parse_event(&bad, &limits()).unwrap_err();
        assert_eq!(e.kind, InvalidUtf8);
        assert_eq!(e.event_id.as_deref(), Some("e-1"));
        let e = err(&with(|m| {
            m["payload"]["qty"] = serde_json::Value::Number(serde_json::Number::from(u64::MAX));
        }));
        assert_eq!(e.field.as_deref(), Some("payload.qty"));
    }

    /// An identifier's first character outside visible ASCII is named with its byte
    /// position, whether it is a space, a control character or a multi-byte character.
    #[test]
    fn identifiers_name_their_first_invisible_or_non_ascii_character() {
        let reason = |s: &str| {
            check_id(s, "event_id", RejectKind::InvalidEventId)
                .unwrap_err()
                .reason
        };
        assert!(check_id("A-1_x.y:z/~!", "event_id", RejectKind::InvalidEventId).is_ok());
        assert!(reason("ab cd").starts_with("has ' ' at position 2;"));
        assert!(reason("abcd\u{7f}").starts_with("has '\\u{7f}' at position 4;"));
        assert!(reason("ab\u{e9}\u{1f600}").starts_with("has '\u{e9}' at position 2;"));
        assert!(reason("a\u{1f600}").starts_with("has '\u{1f600}' at position 1;"));
    }

    #[test]
    fn rejected_events_still_name_their_event_id() {
        let e = err(&with(|m| {
            m["actor"]["type"] = "robot".into();
        }));
        assert_eq!(e.event_id.as_deref(), Some("e-1"));
        assert!(e.reason.contains("USER, SYSTEM, SERVICE"), "{e}");
        let e = err(r#"{"event_id": "t-9", "occurred_at": 12"#);
        assert_eq!(e.event_id.as_deref(), Some("t-9"));
    }
}

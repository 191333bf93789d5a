//! Time as the master shows and stores it: whole seconds, RFC 3339 UTC.

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// `t` as RFC 3339 text.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    // RFC 3339 formatting of a UTC time cannot fail for years 0..=9999.
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Parse RFC 3339 text.
pub(crate) fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// `t` truncated to whole seconds (certificates carry whole seconds, and
/// the inventory and the tables show no sub-second noise).
pub(crate) fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

/// Now, to whole seconds.
pub(crate) fn now() -> OffsetDateTime {
    whole_seconds(OffsetDateTime::now_utc())
}

/// An RFC 3339 time from a peer, re-rendered in UTC to whole seconds (as
/// the tables show it); text that does not parse is shown as it came.
pub(crate) fn to_seconds(t: &str) -> String {
    match parse_rfc3339(t) {
        Some(t) => rfc3339(whole_seconds(t.to_offset(UtcOffset::UTC))),
        None => t.to_owned(),
    }
}

/// Whole days from now until `t` (negative once past).
pub(crate) fn days_left(t: OffsetDateTime) -> i64 {
    (t - OffsetDateTime::now_utc()).whole_days()
}

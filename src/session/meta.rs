//! Meta commands (`mg`, `ms`, `md`, `ma`, `mn`, `me`) on a text connection.

use crate::protocol::text;
use crate::session::Shared;
use bytes::BytesMut;

/// What a meta command consumed.
pub enum Step {
    Done { consumed: usize, mutated: bool },
    NeedMore,
    Swallow { consumed: usize, swallow: usize },
}

/// Execute the meta command `m<cmd>` whose line ends at `next` in `input`.
pub fn execute(
    _shared: &Shared,
    cmd: u8,
    _line: &[u8],
    _input: &BytesMut,
    next: usize,
    out: &mut BytesMut,
) -> Step {
    match cmd {
        b'n' => text::put_line(out, b"MN"),
        _ => text::put_error(out, text::TextError::Error),
    }
    Step::Done {
        consumed: next,
        mutated: false,
    }
}

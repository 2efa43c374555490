//! The byte-level recogniser: a pushdown automaton over the compiled [`Schema`]. A parse
//! *thread* is a stack of [`Frame`]s; `anyOf` (and type lists) fork threads at the first
//! byte of a value, and threads that disagree with a byte die. Every state a thread can
//! reach can still be completed to a valid document: a byte is only accepted when some
//! continuation exists (keys must stay a prefix of an allowed name, `}` waits for the
//! required properties, nesting that would not fit under the depth limit is refused up
//! front, and so on).

use super::schema::{Node, NodeId, Object, Schema};

/// Digits allowed in a number's integer part, fraction and exponent: enough for any i64
/// and any f64 a model would write, and no endless `99999…` loops.
const INT_DIGITS: u8 = 18;
const FRAC_DIGITS: u8 = 18;
const EXP_DIGITS: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest run of whitespace outside strings.
    pub max_ws: u8,
    /// Deepest nesting of objects/arrays.
    pub max_depth: u8,
}

/// Where a UTF-8 sequence stands: continuation bytes still due and the range of the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Utf8 {
    pub need: u8,
    pub lo: u8,
    pub hi: u8,
}

pub(crate) const UTF8_DONE: Utf8 = Utf8 { need: 0, lo: 0x80, hi: 0xBF };

enum Chr {
    Invalid,
    /// The first byte of a character.
    Started,
    Continued,
}

impl Utf8 {
    /// One byte of string content (the caller has handled `"` and `\`).
    fn step(&mut self, b: u8) -> Chr {
        if self.need > 0 {
            if !(self.lo..=self.hi).contains(&b) {
                return Chr::Invalid;
            }
            *self = Utf8 { need: self.need - 1, ..UTF8_DONE };
            return Chr::Continued;
        }
        let (need, lo, hi) = match b {
            0x20..=0x7F => (0, 0x80, 0xBF),
            0xC2..=0xDF => (1, 0x80, 0xBF),
            0xE0 => (2, 0xA0, 0xBF),
            0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
            0xED => (2, 0x80, 0x9F), // no UTF-16 surrogates
            0xF0 => (3, 0x90, 0xBF),
            0xF1..=0xF3 => (3, 0x80, 0xBF),
            0xF4 => (3, 0x80, 0x8F),
            _ => return Chr::Invalid, // control characters, stray continuations, overlongs
        };
        *self = Utf8 { need, lo, hi };
        Chr::Started
    }
}

/// Inside a string: escapes, including `\uXXXX` surrogate pairs (a lone surrogate is not
/// valid JSON text for serde_json and most parsers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Esc {
    No,
    Backslash,
    /// `n` hex digits read of a `\u` escape; `low` = this is the second half of a pair.
    Hex { n: u8, d0: u8, high: bool, low: bool },
    PairBackslash,
    PairU,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Num {
    Start,
    Minus,
    Zero,
    Int(u8),
    Dot,
    Frac(u8),
    ExpStart,
    ExpSign,
    Exp(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ObjSt {
    Start,
    /// Reading a key: `names[lo..hi]` still match its `pos` bytes; `free` = it may still be
    /// an additional property (no escapes in those); `esc` = the last byte began an escape.
    Key { lo: u16, hi: u16, pos: u16, free: bool, esc: bool, utf8: Utf8 },
    /// Key read; `prop` = its index in `names`, or NONE for an additional property.
    Colon { prop: u16 },
    AfterValue,
    Comma,
}

const NONE: u16 = u16::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame {
    /// Below the document: only trailing whitespace.
    End { ws: u8 },
    /// A value is due (after optional whitespace); `depth` = containers around it.
    Val { node: NodeId, depth: u8, ws: u8 },
    Lit { node: NodeId, lo: u32, hi: u32, pos: u32 },
    Num { integer: bool, st: Num },
    Str { node: NodeId, len: u32, esc: Esc, utf8: Utf8 },
    Obj { node: NodeId, depth: u8, ws: u8, seen: u128, st: ObjSt },
    Arr { node: NodeId, depth: u8, ws: u8, count: u32, started: bool },
}

pub(crate) type Thread = Vec<Frame>;

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Count one whitespace byte against the limit.
fn ws_step(ws: &mut u8, limits: &Limits) -> bool {
    *ws += 1;
    *ws <= limits.max_ws
}

pub(crate) struct Machine<'a> {
    pub s: &'a Schema,
    pub limits: Limits,
}

impl Machine<'_> {
    pub fn start(&self) -> Thread {
        vec![Frame::End { ws: 0 }, Frame::Val { node: self.s.root, depth: 0, ws: 0 }]
    }

    pub(crate) fn fits(&self, depth: u8, node: NodeId) -> bool {
        (depth as u32).saturating_add(self.s.min_depth[node as usize]) <= self.limits.max_depth as u32
    }

    fn lits(&self, node: NodeId) -> &[Vec<u8>] {
        match &self.s.nodes[node as usize] {
            Node::Literal(l) => l,
            _ => unreachable!("literal frame on a non-literal node"),
        }
    }

    pub(crate) fn object(&self, node: NodeId) -> &Object {
        match &self.s.nodes[node as usize] {
            Node::Object(o) => o,
            _ => unreachable!("object frame on a non-object node"),
        }
    }

    /// Could the thread end here (the bytes so far are a complete document)?
    pub fn can_finish(&self, t: &Thread) -> bool {
        match t.as_slice() {
            [Frame::End { .. }] => true,
            [Frame::End { .. }, Frame::Num { st, .. }] => matches!(st, Num::Zero | Num::Int(_) | Num::Frac(_) | Num::Exp(_)),
            [Frame::End { .. }, Frame::Lit { node, lo, hi, pos }] => lo < hi && self.lits(*node)[*lo as usize].len() == *pos as usize,
            _ => false,
        }
    }

    /// Feed byte `b` to thread `t`. Returns whether `t` survives; other surviving
    /// alternatives (from `anyOf`) are pushed onto `forks`, already past `b`.
    pub fn step(&self, t: &mut Thread, b: u8, forks: &mut Vec<Thread>) -> bool {
        loop {
            let Some(top) = t.last_mut() else { return false };
            match top {
                Frame::End { ws } => return is_ws(b) && ws_step(ws, &self.limits),
                Frame::Val { node, depth, ws } => {
                    if is_ws(b) {
                        return ws_step(ws, &self.limits);
                    }
                    let (node, depth) = (*node, *depth);
                    let mut primary = None;
                    for &leaf in &self.s.leaves[node as usize] {
                        if !self.fits(depth, leaf) || !self.starts(leaf, b) {
                            continue;
                        }
                        if primary.is_none() {
                            primary = Some(leaf);
                        } else {
                            let mut f = t.clone();
                            if self.begin(&mut f, leaf, depth, b) {
                                forks.push(f);
                            }
                        }
                    }
                    return primary.is_some_and(|leaf| self.begin(t, leaf, depth, b));
                }
                Frame::Lit { node, lo, hi, pos } => {
                    let lits = self.lits(*node);
                    let (nlo, nhi) = narrow(lits, *lo, *hi, *pos as usize, b);
                    if nlo < nhi {
                        let p = *pos as usize + 1;
                        if nhi - nlo == 1 && lits[nlo as usize].len() == p {
                            t.pop(); // fully matched and nothing longer: done
                        } else {
                            (*lo, *hi, *pos) = (nlo, nhi, p as u32);
                        }
                        return true;
                    }
                    if *lo < *hi && lits[*lo as usize].len() == *pos as usize {
                        t.pop(); // a complete number literal ended by what follows it
                        continue;
                    }
                    return false;
                }
                Frame::Num { integer, st } => match num_step(*st, *integer, b) {
                    Some(next) => {
                        *st = next;
                        return true;
                    }
                    None if matches!(st, Num::Zero | Num::Int(_) | Num::Frac(_) | Num::Exp(_)) => {
                        t.pop();
                        continue;
                    }
                    None => return false,
                },
                Frame::Str { node, len, esc, utf8 } => {
                    let Node::String { min, max } = self.s.nodes[*node as usize] else { unreachable!() };
                    return match str_step(len, esc, utf8, min, max, b) {
                        StrStep::Reject => false,
                        StrStep::Ok => true,
                        StrStep::Close => {
                            t.pop();
                            true
                        }
                    };
                }
                Frame::Obj { .. } => return self.obj_step(t, b),
                Frame::Arr { node, depth, ws, count, started } => {
                    let (node, depth) = (*node, *depth);
                    let Node::Array { min, .. } = self.s.nodes[node as usize] else { unreachable!() };
                    if is_ws(b) {
                        return ws_step(ws, &self.limits);
                    }
                    if b == b']' {
                        if *count < min {
                            return false;
                        }
                        t.pop();
                        return true;
                    }
                    if *started && b != b',' {
                        return false;
                    }
                    let Some(item) = self.s.item(node, *count).filter(|&i| self.fits(depth, i)) else { return false };
                    *count += 1;
                    *ws = 0;
                    let first = !*started;
                    *started = true;
                    t.push(Frame::Val { node: item, depth, ws: 0 });
                    if !first {
                        return true; // the `,`
                    }
                    continue; // `b` starts the first item
                }
            }
        }
    }

    fn starts(&self, leaf: NodeId, b: u8) -> bool {
        match &self.s.nodes[leaf as usize] {
            Node::Literal(lits) => lits.iter().any(|l| l.first() == Some(&b)),
            Node::Number { .. } => b == b'-' || b.is_ascii_digit(),
            Node::String { .. } => b == b'"',
            Node::Object(_) => b == b'{',
            Node::Array { .. } => b == b'[',
            Node::AnyOf(_) => false,
        }
    }

    /// Replace the `Val` on top of `t` with `leaf`'s frame, past its first byte `b`.
    fn begin(&self, t: &mut Thread, leaf: NodeId, depth: u8, b: u8) -> bool {
        let frame = match &self.s.nodes[leaf as usize] {
            Node::Literal(lits) => Frame::Lit { node: leaf, lo: 0, hi: lits.len() as u32, pos: 0 },
            Node::Number { integer } => Frame::Num { integer: *integer, st: Num::Start },
            Node::String { .. } => Frame::Str { node: leaf, len: 0, esc: Esc::No, utf8: UTF8_DONE },
            Node::Object(_) => Frame::Obj { node: leaf, depth: depth + 1, ws: 0, seen: 0, st: ObjSt::Start },
            Node::Array { .. } => Frame::Arr { node: leaf, depth: depth + 1, ws: 0, count: 0, started: false },
            Node::AnyOf(_) => return false,
        };
        *t.last_mut().expect("a Val frame") = frame;
        match frame {
            Frame::Lit { .. } | Frame::Num { .. } => self.step(t, b, &mut Vec::new()),
            _ => true, // the opening `"`, `{` or `[`
        }
    }

    fn name_ok(&self, o: &Object, i: usize, seen: u128, depth: u8) -> bool {
        seen & (1 << i) == 0 && self.fits(depth, o.props[i])
    }

    fn free_ok(&self, o: &Object, depth: u8) -> bool {
        o.additional.is_some_and(|a| self.fits(depth, a))
    }

    fn can_add_key(&self, o: &Object, seen: u128, depth: u8) -> bool {
        self.free_ok(o, depth) || (0..o.names.len()).any(|i| self.name_ok(o, i, seen, depth))
    }

    fn obj_step(&self, t: &mut Thread, b: u8) -> bool {
        let Some(Frame::Obj { node, depth, ws, seen, st }) = t.last_mut() else { unreachable!() };
        let (node, depth) = (*node, *depth);
        let o = self.object(node);
        if !matches!(st, ObjSt::Key { .. }) && is_ws(b) {
            return ws_step(ws, &self.limits);
        }
        *ws = 0;
        let done = |seen: u128| o.required.iter().enumerate().all(|(i, r)| !r || seen & (1 << i) != 0);
        let new_key = ObjSt::Key { lo: 0, hi: o.names.len() as u16, pos: 0, free: self.free_ok(o, depth), esc: false, utf8: UTF8_DONE };
        match (*st, b) {
            (ObjSt::Start | ObjSt::AfterValue, b'}') if done(*seen) => {
                t.pop();
                true
            }
            (ObjSt::Start | ObjSt::Comma, b'"') if self.can_add_key(o, *seen, depth) => {
                *st = new_key;
                true
            }
            (ObjSt::AfterValue, b',') if self.can_add_key(o, *seen, depth) => {
                *st = ObjSt::Comma;
                true
            }
            (ObjSt::Colon { prop }, b':') => {
                let child = if prop == NONE { o.additional.expect("checked at the key") } else { o.props[prop as usize] };
                *st = ObjSt::AfterValue;
                t.push(Frame::Val { node: child, depth, ws: 0 });
                true
            }
            (ObjSt::Key { lo, hi, pos, free, esc: false, utf8 }, b'"') if utf8.need == 0 => {
                let exact = lo < hi && o.names[lo as usize].len() == pos as usize;
                if exact {
                    // A free key spelling a listed name *is* that name: never a duplicate.
                    if !self.name_ok(o, lo as usize, *seen, depth) {
                        return false;
                    }
                    *seen |= 1 << lo;
                    *st = ObjSt::Colon { prop: lo };
                    true
                } else if free {
                    *st = ObjSt::Colon { prop: NONE };
                    true
                } else {
                    false
                }
            }
            (ObjSt::Key { lo, hi, pos, free, esc, mut utf8 }, _) => {
                // Listed names are matched byte for byte (escapes included); free keys have none.
                let free = free && b != b'\\' && !matches!(utf8.step(b), Chr::Invalid);
                let (nlo, nhi) = narrow(&o.names, lo as u32, hi as u32, pos as usize, b);
                let named = (nlo..nhi).any(|i| self.name_ok(o, i as usize, *seen, depth));
                if !named && !free {
                    return false;
                }
                let esc = !esc && b == b'\\';
                // Once no listed name matches, the position no longer matters: keep states equal.
                let pos = if nlo < nhi { pos + 1 } else { 0 };
                *st = ObjSt::Key { lo: nlo as u16, hi: nhi as u16, pos, free, esc, utf8 };
                true
            }
            _ => false,
        }
    }
}

/// The sub-range of the sorted `lits[lo..hi]` (which share their first `pos` bytes) whose
/// byte `pos` is `b`.
pub(crate) fn narrow(lits: &[Vec<u8>], lo: u32, hi: u32, pos: usize, b: u8) -> (u32, u32) {
    let r = &lits[lo as usize..hi as usize];
    let start = r.partition_point(|l| l.get(pos).is_none_or(|&c| c < b));
    let end = start + r[start..].partition_point(|l| l[pos] == b);
    (lo + start as u32, lo + end as u32)
}

fn num_step(st: Num, integer: bool, b: u8) -> Option<Num> {
    let digit = b.is_ascii_digit();
    let exp = (b == b'e' || b == b'E') && !integer;
    Some(match st {
        Num::Start if b == b'-' => Num::Minus,
        Num::Start | Num::Minus if b == b'0' => Num::Zero,
        Num::Start | Num::Minus if digit => Num::Int(1),
        Num::Int(n) if digit && n < INT_DIGITS => Num::Int(n + 1),
        Num::Zero | Num::Int(_) if b == b'.' && !integer => Num::Dot,
        Num::Zero | Num::Int(_) | Num::Frac(_) if exp => Num::ExpStart,
        Num::Dot if digit => Num::Frac(1),
        Num::Frac(n) if digit && n < FRAC_DIGITS => Num::Frac(n + 1),
        Num::ExpStart if b == b'+' || b == b'-' => Num::ExpSign,
        Num::ExpStart | Num::ExpSign if digit => Num::Exp(1),
        Num::Exp(n) if digit && n < EXP_DIGITS => Num::Exp(n + 1),
        _ => return None,
    })
}

enum StrStep {
    Reject,
    Ok,
    Close,
}

fn str_step(len: &mut u32, esc: &mut Esc, utf8: &mut Utf8, min: u32, max: u32, b: u8) -> StrStep {
    let hex = (b as char).to_digit(16).map(|d| d as u8);
    let next = match (*esc, hex) {
        (Esc::No, _) => None,
        (Esc::Backslash, _) if b"\"\\/bfnrt".contains(&b) => Some(Esc::No),
        (Esc::Backslash, _) if b == b'u' => Some(Esc::Hex { n: 0, d0: 0, high: false, low: false }),
        (Esc::PairBackslash, _) if b == b'\\' => Some(Esc::PairU),
        (Esc::PairU, _) if b == b'u' => Some(Esc::Hex { n: 0, d0: 0, high: false, low: true }),
        (Esc::Hex { n, d0, high, low }, Some(d)) => match n {
            0 if low && d != 0xD => return StrStep::Reject,
            0 => Some(Esc::Hex { n: 1, d0: d, high, low }),
            // Second digit decides: D8-DB = high surrogate, DC-DF = low (only after a high).
            1 if low && d < 0xC => return StrStep::Reject,
            1 if !low && d0 == 0xD && d >= 0xC => return StrStep::Reject,
            1 => Some(Esc::Hex { n: 2, d0, high: !low && d0 == 0xD && d >= 8, low }),
            2 => Some(Esc::Hex { n: 3, d0, high, low }),
            _ if high => Some(Esc::PairBackslash),
            _ => Some(Esc::No),
        },
        _ => return StrStep::Reject,
    };
    if let Some(e) = next {
        *esc = e;
        return StrStep::Ok;
    }
    if utf8.need == 0 {
        match b {
            b'"' => return if *len >= min { StrStep::Close } else { StrStep::Reject },
            b'\\' if *len < max => {
                *len += 1;
                *esc = Esc::Backslash;
                return StrStep::Ok;
            }
            _ => {}
        }
    }
    match utf8.step(b) {
        Chr::Invalid => StrStep::Reject,
        Chr::Continued => StrStep::Ok,
        Chr::Started if *len < max => {
            *len += 1;
            StrStep::Ok
        }
        Chr::Started => StrStep::Reject,
    }
}

impl Schema {
    /// Whether `bytes` (no surrounding whitespace) is a complete instance of the root node.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        let m = Machine { s: self, limits: Limits { max_ws: 0, max_depth: u8::MAX } };
        let mut threads = vec![m.start()];
        feed(&m, &mut threads, bytes, usize::MAX) && threads.iter().any(|t| m.can_finish(t))
    }
}

/// Feed `bytes` to every thread (forking, dropping dead ones). False (and `threads`
/// meaningless) if none survives. At most `max_threads` are kept, the earliest first: any
/// subset of live threads is still sound, dropping only makes the language smaller.
pub(crate) fn feed(m: &Machine, threads: &mut Vec<Thread>, bytes: &[u8], max_threads: usize) -> bool {
    let mut forks = Vec::new();
    for &b in bytes {
        threads.retain_mut(|t| m.step(t, b, &mut forks));
        if !forks.is_empty() {
            threads.append(&mut forks);
            let mut i = 1;
            while i < threads.len() {
                if threads[..i].contains(&threads[i]) {
                    threads.remove(i);
                } else {
                    i += 1;
                }
            }
            threads.truncate(max_threads);
        }
        if threads.is_empty() {
            return false;
        }
    }
    true
}
